//! Listening sockets with `SO_REUSEPORT`.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, SocketType, bind, listen, socket, sockopt};

/// A non-blocking listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`
/// set, so each worker can bind the same address.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd: OwnedFd = socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    bind(&fd, &addr)?;
    listen(&fd, 1024)?;
    let l = TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Fail when another socket already listens on `addr`: a bind without
/// `SO_REUSEPORT` (with `SO_REUSEADDR`, so connections in TIME_WAIT from an
/// earlier run do not count) is refused exactly when a listener holds the
/// address. molt never joins another process's `SO_REUSEPORT` group: the
/// kernel would split connections between the two without a word.
pub fn ensure_unserved(addr: SocketAddr) -> std::io::Result<()> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd: OwnedFd = socket(family, SocketType::STREAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    match bind(&fd, &addr) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ADDRINUSE) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "the address is already served by another process (or listener); molt does not share a listening address: stop the other, or choose another address",
        )),
        Err(e) => Err(e.into()),
    }
}
