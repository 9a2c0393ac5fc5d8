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
