//! What a health check is: an HTTP `GET` expecting a 2xx, or a TCP
//! connect. When to run one is the control executor's business
//! ([`crate::control`]).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

/// A TCP check: healthy when a connection opens in time.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    TcpStream::connect_timeout(addr, timeout)
        .await
        .map(|_| ())
        .map_err(io::Error::from)
}

/// One active check: connect, send `GET path`, expect a 2xx status line.
pub async fn probe(
    addr: SocketAddr,
    request: &[u8],
    connect_timeout: Duration,
    total_timeout: Duration,
) -> io::Result<()> {
    let check = async {
        let mut s = TcpStream::connect_timeout(addr, connect_timeout)
            .await
            .map_err(io::Error::from)?;
        s.set_read_timeout(Some(total_timeout))
            .map_err(io::Error::from)?;
        s.write_all(request).await?;
        let mut buf = [0u8; 256];
        let mut n = 0;
        while n < 12 || !buf[..n].contains(&b'\n') {
            if n == buf.len() {
                break;
            }
            let r = s.read(&mut buf[n..]).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = &buf[..n];
        if line.len() >= 12 && line.starts_with(b"HTTP/1.") && line[9] == b'2' {
            Ok(())
        } else if line.len() >= 12 && line.starts_with(b"HTTP/1.") {
            Err(io::Error::other(format!(
                "status {}",
                String::from_utf8_lossy(&line[9..12])
            )))
        } else {
            Err(io::Error::other("not an HTTP response"))
        }
    };
    let deadline = async {
        glommio::timer::sleep(total_timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "health check timed out",
        ))
    };
    futures_lite::future::or(check, deadline).await
}
