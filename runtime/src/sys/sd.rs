//! The systemd service protocols molt speaks, without libsystemd: socket
//! activation (`LISTEN_PID`, `LISTEN_FDS`, descriptors from 3) and readiness
//! notification (`NOTIFY_SOCKET`, a datagram such as `READY=1`).

use std::os::fd::{FromRawFd, OwnedFd};

/// The first descriptor systemd passes.
const LISTEN_FDS_START: i32 = 3;

/// The listening sockets systemd passed to this process, if it did (and
/// they are this process's: `LISTEN_PID` is its pid). Each is made
/// close-on-exec, so a process molt starts does not inherit it unasked.
pub fn listen_fds() -> Result<Vec<OwnedFd>, String> {
    let Ok(pid) = std::env::var("LISTEN_PID") else { return Ok(Vec::new()) };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n = std::env::var("LISTEN_FDS").unwrap_or_default();
    let n: i32 = n.trim().parse().map_err(|_| format!("LISTEN_FDS={n:?} is not a number"))?;
    if !(0..=1024).contains(&n) {
        return Err(format!("LISTEN_FDS={n} is out of range"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
        // SAFETY: by the socket activation protocol, descriptors 3 ..
        // 3 + LISTEN_FDS are open and handed to this process (LISTEN_PID
        // is ours), and nothing else in molt owns them: each is taken once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| format!("descriptor {fd} of LISTEN_FDS: {e}"))?;
        out.push(owned);
    }
    Ok(out)
}

/// Send `state` (e.g. `READY=1\nMAINPID=123`) to the service manager, if
/// `NOTIFY_SOCKET` names one; whether it was sent.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(true)
}
