//! Frames with file descriptors over a Unix stream socket (`SCM_RIGHTS`):
//! how a binary upgrade hands the very listening sockets, the state file and
//! the run dir's lock to the new process.
//!
//! A frame is a 4-byte little-endian length and that many bytes; the
//! descriptors travel with the frame's first bytes, in one `sendmsg`.
//! Received descriptors are close-on-exec.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
    recvmsg, sendmsg,
};

/// The most descriptors one frame carries (the kernel's `SCM_MAX_FD` is 253).
pub const MAX_FDS: usize = 250;

/// Send `body` as one frame with `fds` attached.
pub fn send(sock: &UnixStream, body: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::other(format!("{} descriptors in one frame (at most {MAX_FDS})", fds.len())));
    }
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame over 4 GiB"))?;
    let head = len.to_le_bytes();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("the descriptors do not fit the control buffer"));
    }
    let iov = [IoSlice::new(&head), IoSlice::new(body)];
    let total = head.len() + body.len();
    let sent = sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)?;
    if sent < total {
        // The descriptors went with the first bytes; the rest is plain data.
        let rest: Vec<u8> = head.iter().chain(body).copied().skip(sent).collect();
        (&*sock).write_all(&rest)?;
    }
    Ok(())
}

/// Receive one frame (at most `max` bytes of body) and the descriptors that
/// came with it. The socket's read timeout bounds each read.
pub fn recv(sock: &UnixStream, max: usize) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut fds = Vec::new();
    let got = {
        let mut iov = [IoSliceMut::new(&mut head)];
        let r = recvmsg(sock.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC | RecvFlags::WAITALL)?;
        r.bytes
    };
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the connection"));
    }
    if got < head.len() {
        (&*sock).read_exact(&mut head[got..])?;
    }
    let len = u32::from_le_bytes(head) as usize;
    if len > max {
        return Err(std::io::Error::other(format!("a frame of {len} bytes (at most {max})")));
    }
    let mut body = vec![0u8; len];
    (&*sock).read_exact(&mut body)?;
    Ok((body, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_listening_socket_crosses_and_keeps_its_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // A connection waits in the accept queue before the socket moves.
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, b"listeners", &[l.as_fd()]).unwrap();
        drop(l);
        let (body, fds) = recv(&b, 1024).unwrap();
        assert_eq!(body, b"listeners");
        assert_eq!(fds.len(), 1);
        let flags = rustix::io::fcntl_getfd(&fds[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC), "received descriptors are close-on-exec");
        let moved = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(moved.local_addr().unwrap(), addr);
        let (mut s, _) = moved.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
    }

    #[test]
    fn frames_without_descriptors_and_a_short_peer() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, br#"{"type":"ready"}"#, &[]).unwrap();
        let (body, fds) = recv(&b, 1024).unwrap();
        assert_eq!((body.as_slice(), fds.len()), (&br#"{"type":"ready"}"#[..], 0));
        // Too large a frame is refused, not allocated.
        send(&a, &[7u8; 2048], &[]).unwrap();
        let e = recv(&b, 1024).unwrap_err();
        assert!(e.to_string().contains("2048 bytes"), "{e}");
        // A peer that goes away mid-frame is an error, never a short frame.
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&100u32.to_le_bytes()).unwrap();
        (&a).write_all(b"short").unwrap();
        drop(a);
        assert!(recv(&b, 1024).is_err());
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert_eq!(recv(&b, 1024).unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(b.as_raw_fd() >= 0);
    }
}
