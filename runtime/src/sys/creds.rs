//! Who is at the other end of a local socket.

use std::os::unix::net::UnixStream;

/// The peer of a connected Unix socket: (uid, pid), from `SO_PEERCRED`.
pub fn peer(stream: &UnixStream) -> std::io::Result<(u32, i32)> {
    let cred = rustix::net::sockopt::socket_peercred(stream).map_err(std::io::Error::from)?;
    Ok((cred.uid.as_raw(), cred.pid.as_raw_nonzero().get()))
}
