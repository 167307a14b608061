//! Shared channels between executors, each end owned by one task that
//! awaits nothing else.
//!
//! [`forward`] turns a connected receiver into a core-local [`Inbox`]: its
//! task awaits `recv()` and nothing else, so glommio polls that receive only
//! when the channel itself wakes it, and every waker it registers is drained
//! by an arriving item. [`Outbox`] is the mirror for sending: core-local
//! pushes (which may replace an older queued item of the same kind) and one
//! task that awaits `send()` alone, so a stalled peer costs one waker, not
//! one per attempt, and never blocks the code that pushed.

use std::future::Future;
use std::time::Duration;

use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

use super::local::Queue;

/// How often a pending connect is polled again (startup only).
const CONNECT_REPOLL: Duration = Duration::from_millis(20);

/// Core-local end of a forwarded shared channel: see [`forward`].
pub type Inbox<T> = Queue<T>;

/// Awaits a shared-channel connect, polling it again every
/// [`CONNECT_REPOLL`]. glommio parks a connect's waker in a list that its
/// reactor drains (and wakes) on every pass, but the peer's connection does
/// not wake a sleeping executor, so a connect can otherwise wait forever.
/// Re-polling it is safe precisely because that list is drained each pass;
/// never do this with `recv()` or `send()`.
async fn connect_with_repoll<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        let r = futures_lite::future::or(async { Some(fut.as_mut().await) }, async {
            glommio::timer::sleep(CONNECT_REPOLL).await;
            None
        })
        .await;
        if let Some(v) = r {
            return v;
        }
    }
}

/// Connects the sending end of a shared channel (once, at startup).
pub async fn connect_sender<T: Send + 'static>(s: SharedSender<T>) -> ConnectedSender<T> {
    connect_with_repoll(s.connect()).await
}

/// Connects the receiving end of a shared channel (once, at startup).
pub async fn connect_receiver<T: Send + 'static>(r: SharedReceiver<T>) -> ConnectedReceiver<T> {
    connect_with_repoll(r.connect()).await
}

/// Moves every item of `rx` into a core-local [`Inbox`], closing it when the
/// sender is gone. The returned task is the only poller of `rx.recv()`;
/// cancel it to stop forwarding.
pub fn forward<T: Send + 'static>(rx: ConnectedReceiver<T>) -> (Inbox<T>, glommio::Task<()>) {
    let inbox = Inbox::new();
    let task = glommio::spawn_local({
        let inbox = inbox.clone();
        async move {
            while let Some(item) = rx.recv().await {
                inbox.push(item);
            }
            inbox.close();
        }
    });
    (inbox, task)
}

/// Core-local sending end of a shared channel: pushes never wait; one task
/// sends in order, waiting for room when the peer is slow.
pub struct Outbox<T> {
    queue: Queue<T>,
    task: glommio::Task<()>,
}

impl<T: Send + 'static> Outbox<T> {
    /// Starts the sending task for `tx`.
    pub fn new(tx: ConnectedSender<T>) -> Self {
        let queue = Queue::new();
        let task = glommio::spawn_local({
            let queue = queue.clone();
            async move {
                while let Some(item) = queue.recv().await {
                    if tx.send(item).await.is_err() {
                        // The receiver is gone (its executor exited).
                        break;
                    }
                }
            }
        });
        Outbox { queue, task }
    }

    /// Queues `item`.
    pub fn push(&self, item: T) {
        self.queue.push(item);
    }

    /// Queues `item` in place of a queued one for which `same` holds (a
    /// newer snapshot supersedes an unsent older one).
    pub fn push_replacing(&self, item: T, same: impl Fn(&T) -> bool) {
        self.queue.push_replacing(item, same);
    }

    /// Queues `item` in place of a queued one for which `same` holds,
    /// unless an item for which `barrier` holds is queued after that one
    /// (then at the back): see [`Queue::push_replacing_before`].
    pub fn push_replacing_before(
        &self,
        item: T,
        same: impl Fn(&T) -> bool,
        barrier: impl Fn(&T) -> bool,
    ) {
        self.queue.push_replacing_before(item, same, barrier);
    }

    /// True when a queued, unsent item matches.
    pub fn has_queued(&self, pred: impl Fn(&T) -> bool) -> bool {
        self.queue.contains(pred)
    }

    /// Sends what is queued, then stops.
    pub async fn close(self) {
        self.queue.close();
        self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::LocalExecutorBuilder;
    use glommio::channels::shared_channel;

    /// The 14-minute crash in miniature: a control receive that is polled
    /// again and again without a message (here by racing it against an
    /// immediately ready wake-up 50 000 times) must not accumulate wakers.
    /// glommio's own `recv()` polled this way overflows the task's 16-bit
    /// reference count after ~32 767 polls and panics.
    #[test]
    fn spurious_polls_of_a_forwarded_receive_leak_nothing() {
        let (tx, rx) = shared_channel::new_bounded::<u32>(4);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let receiver = LocalExecutorBuilder::default()
            .name("test-rx")
            .spawn(move || async move {
                let rx = connect_receiver(rx).await;
                let (inbox, _task) = forward(rx);
                let mut spurious = 0u32;
                while spurious < 50_000 {
                    let got = futures_lite::future::or(async { inbox.recv().await }, async {
                        futures_lite::future::yield_now().await;
                        None
                    })
                    .await;
                    assert!(got.is_none(), "nothing was sent yet");
                    spurious += 1;
                }
                go_tx.send(()).unwrap();
                let mut seen = Vec::new();
                while let Some(v) = inbox.recv().await {
                    seen.push(v);
                }
                seen
            })
            .unwrap();
        let sender = LocalExecutorBuilder::default()
            .name("test-tx")
            .spawn(move || async move {
                let tx = connect_sender(tx).await;
                // Blocking is fine here: this executor runs nothing else.
                go_rx.recv().unwrap();
                let out = Outbox::new(tx);
                for i in 0..100 {
                    out.push(i);
                }
                out.close().await;
            })
            .unwrap();
        sender.join().unwrap();
        assert_eq!(receiver.join().unwrap(), (0..100).collect::<Vec<_>>());
    }
}
