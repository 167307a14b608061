//! Core-local queues and one-shot waits with a single waker slot.
//!
//! Polling any of these futures again without a wake-up only replaces the
//! stored waker, so they are safe to race against timers (`or`), unlike
//! glommio's shared-channel futures.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// One waiting task's waker; a newer registration replaces the older one.
#[derive(Default)]
struct Slot(RefCell<Option<Waker>>);

impl Slot {
    fn register(&self, cx: &Context<'_>) {
        let mut w = self.0.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
    }

    fn wake(&self) {
        if let Some(w) = self.0.borrow_mut().take() {
            w.wake();
        }
    }
}

struct QueueInner<T> {
    items: RefCell<VecDeque<T>>,
    closed: Cell<bool>,
    waiter: Slot,
}

/// A core-local, unbounded FIFO with one consumer. The producers (core-local
/// tasks) bound what they put in; [`Queue::recv`] yields `None` once the
/// queue is closed and empty.
pub struct Queue<T>(Rc<QueueInner<T>>);

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue(self.0.clone())
    }
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue(Rc::new(QueueInner {
            items: RefCell::new(VecDeque::new()),
            closed: Cell::new(false),
            waiter: Slot::default(),
        }))
    }
}

impl<T> Queue<T> {
    /// An empty, open queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `item` and wakes the consumer.
    pub fn push(&self, item: T) {
        self.0.items.borrow_mut().push_back(item);
        self.0.waiter.wake();
    }

    /// Replaces the last queued item for which `same` is true, or appends.
    /// Used to keep one pending snapshot instead of a backlog of them.
    pub fn push_replacing(&self, item: T, same: impl Fn(&T) -> bool) {
        self.push_replacing_before(item, same, |_| false);
    }

    /// Like [`Queue::push_replacing`], but an item for which `barrier`
    /// holds, queued after the one `item` would replace, keeps its place
    /// after it: `item` is queued at the back instead (what follows the
    /// barrier must not overtake it).
    pub fn push_replacing_before(
        &self,
        item: T,
        same: impl Fn(&T) -> bool,
        barrier: impl Fn(&T) -> bool,
    ) {
        {
            let mut items = self.0.items.borrow_mut();
            for slot in items.iter_mut().rev() {
                if barrier(slot) {
                    break;
                }
                if same(slot) {
                    *slot = item;
                    return;
                }
            }
            items.push_back(item);
        }
        self.0.waiter.wake();
    }

    /// True when some queued item matches.
    pub fn contains(&self, pred: impl Fn(&T) -> bool) -> bool {
        self.0.items.borrow().iter().any(pred)
    }

    /// Takes everything queued now.
    pub fn drain(&self) -> Vec<T> {
        self.0.items.borrow_mut().drain(..).collect()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.0.items.borrow().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.0.items.borrow().is_empty()
    }

    /// No more items will come; the consumer sees `None` after the rest.
    pub fn close(&self) {
        self.0.closed.set(true);
        self.0.waiter.wake();
    }

    /// The next item, or `None` once closed and empty.
    pub fn recv(&self) -> QueueRecv<'_, T> {
        QueueRecv(self)
    }
}

/// Future of [`Queue::recv`].
pub struct QueueRecv<'a, T>(&'a Queue<T>);

impl<T> Future for QueueRecv<'_, T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let q = &self.0.0;
        if let Some(item) = q.items.borrow_mut().pop_front() {
            return Poll::Ready(Some(item));
        }
        if q.closed.get() {
            return Poll::Ready(None);
        }
        q.waiter.register(cx);
        Poll::Pending
    }
}

struct GatherInner<T> {
    items: RefCell<Vec<T>>,
    want: usize,
    waiter: Slot,
}

/// Collects `want` answers (one per worker) for one request; the asker
/// awaits [`Gather::wait`], usually raced against a deadline.
pub struct Gather<T>(Rc<GatherInner<T>>);

impl<T> Clone for Gather<T> {
    fn clone(&self) -> Self {
        Gather(self.0.clone())
    }
}

impl<T> Gather<T> {
    /// Waits for `want` answers.
    pub fn new(want: usize) -> Self {
        Gather(Rc::new(GatherInner {
            items: RefCell::new(Vec::with_capacity(want)),
            want,
            waiter: Slot::default(),
        }))
    }

    /// Adds one answer; wakes the asker once all are in.
    pub fn add(&self, item: T) {
        let done = {
            let mut items = self.0.items.borrow_mut();
            items.push(item);
            items.len() >= self.0.want
        };
        if done {
            self.0.waiter.wake();
        }
    }

    /// Completes once every answer is in.
    pub fn wait(&self) -> GatherWait<'_, T> {
        GatherWait(self)
    }

    /// The answers received so far.
    pub fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.items.borrow_mut())
    }
}

/// Future of [`Gather::wait`].
pub struct GatherWait<'a, T>(&'a Gather<T>);

impl<T> Future for GatherWait<'_, T> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let g = &self.0.0;
        if g.items.borrow().len() >= g.want {
            return Poll::Ready(());
        }
        g.waiter.register(cx);
        Poll::Pending
    }
}

/// A core-local edge: [`Notify::notify`] wakes the one task in
/// [`Notify::notified`] (or the next one to call it).
#[derive(Clone, Default)]
pub struct Notify(Rc<(Cell<bool>, Slot)>);

impl Notify {
    /// A notify with no pending edge.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an edge and wakes the waiter.
    pub fn notify(&self) {
        self.0.0.set(true);
        self.0.1.wake();
    }

    /// Completes at the next edge (or at once if one is pending), consuming it.
    pub fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

/// Future of [`Notify::notified`].
pub struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let n = &self.0.0;
        if n.0.replace(false) {
            return Poll::Ready(());
        }
        n.1.register(cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn queue_orders_replaces_and_closes() {
        future::block_on(async {
            let q = Queue::new();
            q.push(1);
            q.push_replacing(2, |i| *i >= 10);
            q.push_replacing(11, |i| *i >= 10);
            q.push_replacing(12, |i| *i >= 10);
            assert_eq!(q.len(), 3);
            assert_eq!(q.recv().await, Some(1));
            assert_eq!(q.recv().await, Some(2));
            assert_eq!(q.recv().await, Some(12));
            q.close();
            assert_eq!(q.recv().await, None);
        });
    }

    #[test]
    fn a_replacement_never_overtakes_a_barrier() {
        future::block_on(async {
            // Snapshots (>= 10) replace snapshots, but never jump over a
            // config (< 0) queued after the one they would replace.
            let q = Queue::new();
            let (same, barrier) = (|i: &i32| *i >= 10, |i: &i32| *i < 0);
            q.push_replacing_before(10, same, barrier);
            q.push_replacing_before(-1, |i| *i < 0, |i| *i >= 10);
            q.push_replacing_before(11, same, barrier);
            q.push_replacing_before(12, same, barrier);
            assert_eq!(q.len(), 3);
            for want in [10, -1, 12] {
                assert_eq!(q.recv().await, Some(want));
            }
        });
    }

    #[test]
    fn repolling_keeps_one_waker() {
        // Polling a pending wait a million times must not accumulate state.
        let q: Queue<u32> = Queue::new();
        let g: Gather<u32> = Gather::new(2);
        let n = Notify::new();
        let waker =
            futures_lite::future::block_on(future::poll_fn(|cx| Poll::Ready(cx.waker().clone())));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..1_000_000 {
            assert!(Pin::new(&mut q.recv()).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut g.wait()).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut n.notified()).poll(&mut cx).is_pending());
        }
        g.add(1);
        g.add(2);
        assert!(Pin::new(&mut g.wait()).poll(&mut cx).is_ready());
        assert_eq!(g.take(), vec![1, 2]);
        n.notify();
        assert!(Pin::new(&mut n.notified()).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut n.notified()).poll(&mut cx).is_pending());
    }
}
