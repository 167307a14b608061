//! I/O on a glommio stream that never waits: a read that reports what is
//! there already, and a vectored send.
//!
//! Both exist to save syscalls and copies on the request path. A read that
//! returns at once lets the body relay gather what a backend has already
//! sent before writing it on, and lets the pool check a connection without
//! a `MSG_PEEK`; a vectored send puts a response head and its body on the
//! wire in one `sendmsg` without first copying the body behind the head.
//! This module knows sockets and glommio's stream, nothing of HTTP.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

/// Polls one read of `stream` into `buf` with a waker that does nothing:
/// `None` when nothing can be read now (the stream stays armed as before),
/// else what the read returned (0 at end of stream).
///
/// glommio's stream reads without a syscall while the readiness poll it
/// armed after a short read is pending, and tries a non-blocking `recv`
/// otherwise. The stream's read timeout is lifted for the call: glommio
/// would otherwise arm its timer with this do-nothing waker and keep it for
/// the real read that follows, which could then never time out.
pub fn read_now(stream: &mut TcpStream, buf: &mut [u8]) -> Option<io::Result<usize>> {
    let timeout = stream.read_timeout();
    let _ = stream.set_read_timeout(None);
    let mut cx = Context::from_waker(Waker::noop());
    let r = Pin::new(&mut *stream).poll_read(&mut cx, buf);
    let _ = stream.set_read_timeout(timeout);
    match r {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// Writes `first` then `second` to `stream`, both in one `sendmsg` when the
/// socket takes them at once (the usual case), and whatever it did not take
/// through glommio's write (with its write timeout) otherwise.
pub async fn write_all2(stream: &mut TcpStream, first: &[u8], second: &[u8]) -> io::Result<()> {
    if second.is_empty() {
        return stream.write_all(first).await;
    }
    if first.is_empty() {
        return stream.write_all(second).await;
    }
    let sent = match send_now(stream, &[IoSlice::new(first), IoSlice::new(second)]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent < first.len() {
        stream.write_all(&first[sent..]).await?;
        stream.write_all(second).await
    } else {
        stream.write_all(&second[sent - first.len()..]).await
    }
}

/// One non-blocking `sendmsg` of `parts`; the bytes the socket took.
fn send_now(stream: &TcpStream, parts: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; sendmsg only
    // reads through the pointer.
    msg.msg_iov = parts.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = parts.len() as _;
    loop {
        // SAFETY: `msg` points at `parts`, which outlive the call; the fd is
        // owned by `stream` and open.
        let r = unsafe {
            libc::sendmsg(
                stream.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::AsyncReadExt;
    use glommio::LocalExecutorBuilder;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[test]
    fn vectored_sends_arrive_whole_and_in_order_even_when_the_socket_is_full() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Let the sender fill the socket buffers first.
            std::thread::sleep(Duration::from_millis(200));
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            all
        });
        let expect: Vec<u8> = (0..40u32)
            .flat_map(|i| {
                let mut v = format!("head{i}:").into_bytes();
                v.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 100_000));
                v
            })
            .collect();
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                for i in 0..40u32 {
                    let head = format!("head{i}:").into_bytes();
                    let body = vec![b'a' + (i % 26) as u8; 100_000];
                    write_all2(&mut s, &head, &body).await.unwrap();
                }
                write_all2(&mut s, b"", b"").await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(reader.join().unwrap() == expect);
    }

    #[test]
    fn read_now_reports_nothing_then_data_and_keeps_the_read_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            rx.recv().unwrap();
            s.write_all(b"hi").unwrap();
            rx.recv().unwrap();
        });
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf = [0u8; 8];
                assert!(read_now(&mut s, &mut buf).is_none());
                tx.send(()).unwrap();
                glommio::timer::sleep(Duration::from_millis(50)).await;
                assert_eq!(read_now(&mut s, &mut buf).unwrap().unwrap(), 2);
                assert!(read_now(&mut s, &mut buf).is_none());
                // The waiting read after a `None` still times out.
                let r = glommio::timer::timeout(Duration::from_secs(3), async {
                    Ok(s.read(&mut buf).await)
                })
                .await
                .expect("the read hung: its timeout was lost");
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
                tx.send(()).unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        peer.join().unwrap();
    }
}
