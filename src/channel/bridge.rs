//! From plain threads (the signal thread, the etcd client) to an executor.
//!
//! A [`Sender`] puts the item on a std queue and writes one byte to a
//! socket pair; the executor's [`Receiver`] awaits that socket through
//! io_uring, then drains the queue. No timer, no polling: an idle control
//! executor sleeps until something arrives. Bytes pile up at most to the
//! socket's buffer; when it is full a wake-up is already pending, so the
//! write is skipped.

use std::io::{ErrorKind, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, mpsc};

use futures_lite::AsyncReadExt;

/// The thread side of a bridge. Cloneable; `Send`.
pub struct Sender<T> {
    queue: mpsc::Sender<T>,
    bell: Arc<StdUnixStream>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            queue: self.queue.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bridge::Sender")
    }
}

impl<T> Sender<T> {
    /// Sends `item`; `Err(item)` when the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.queue.send(item).map_err(|e| e.0)?;
        match (&*self.bell).write(&[1]) {
            Ok(_) => Ok(()),
            // Full: the receiver has wake-ups pending already.
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            // Gone: the item is queued for nobody; report it like mpsc.
            Err(_) => Ok(()),
        }
    }
}

/// The executor side of a bridge, not yet bound to an executor (`Send`):
/// move it into the executor that awaits it and [`Receiver::attach`] it
/// there.
pub struct Receiver<T> {
    queue: mpsc::Receiver<T>,
    bell: StdUnixStream,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bridge::Receiver")
    }
}

/// A new bridge.
pub fn channel<T>() -> std::io::Result<(Sender<T>, Receiver<T>)> {
    let (a, b) = StdUnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        Sender {
            queue: tx,
            bell: Arc::new(a),
        },
        Receiver { queue: rx, bell: b },
    ))
}

impl<T> Receiver<T> {
    /// Binds the receiver to the current glommio executor.
    pub fn attach(self) -> Attached<T> {
        // SAFETY: `bell` is a valid, owned, connected Unix socket; its
        // ownership moves to the glommio stream.
        let bell = unsafe { glommio::net::UnixStream::from_raw_fd(self.bell.into_raw_fd()) };
        Attached {
            queue: self.queue,
            bell,
        }
    }
}

/// A bridge receiver bound to the executor it was attached on.
pub struct Attached<T> {
    queue: mpsc::Receiver<T>,
    bell: glommio::net::UnixStream,
}

impl<T> Attached<T> {
    /// An item if one is queued now (never waits).
    pub fn try_recv(&self) -> Option<T> {
        self.queue.try_recv().ok()
    }

    /// The next item; `None` once every sender is gone and the queue is
    /// empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.queue.try_recv() {
                Ok(item) => return Some(item),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            let mut buf = [0u8; 64];
            match self.bell.read(&mut buf).await {
                // Every sender dropped its end of the socket: drain, then end.
                Ok(0) | Err(_) => return self.queue.try_recv().ok(),
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;

    #[test]
    fn wakes_an_idle_executor_and_ends_when_senders_are_gone() {
        let (tx, rx) = channel::<u32>().unwrap();
        let ex = LocalExecutorBuilder::default()
            .spawn(move || async move {
                let mut rx = rx.attach();
                let mut got = Vec::new();
                while let Some(v) = rx.recv().await {
                    got.push(v);
                }
                got
            })
            .unwrap();
        let t = std::thread::spawn(move || {
            for i in 0..1000 {
                tx.send(i).unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        });
        t.join().unwrap();
        assert_eq!(ex.join().unwrap(), (0..1000).collect::<Vec<_>>());
    }
}
