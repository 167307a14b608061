//! Waiting across threads without leaking wakers.
//!
//! glommio's shared-channel `recv()` and `send()` push one clone of the
//! polling task's waker onto the reactor's list every time they are polled
//! while pending, and the reactor drains only as many as items (or free
//! slots) appear. A receive polled by anything but its own wake-up (a retry
//! timer, an `or` against a shutdown future) therefore grows that list and
//! the task's 16-bit reference count until glommio panics (~32 767 polls:
//! 14 minutes at 40 re-polls a second). This module is the only place that
//! touches those futures, and it awaits each of them alone:
//!
//! - [`link`]: one task per receiving channel that only awaits `recv()` and
//!   forwards into a core-local [`Inbox`]; one task per sending channel that
//!   only awaits `send()` from a core-local, coalescing [`Outbox`].
//! - [`local`]: core-local queues and one-shot waits that keep a single
//!   waker slot, so they may be raced against timers freely.
//! - [`bridge`]: plain threads (signals, etcd client) to an executor: a
//!   queue plus a socket doorbell the executor awaits, no polling.
//!
//! Connecting a shared channel is the one wait that needs a timer: glommio
//! may miss the peer's connection while the executor sleeps, and its
//! connection wakers are drained on every reactor pass, so re-polling a
//! connect leaks nothing ([`link::connect_sender`], [`link::connect_receiver`]).

pub mod bridge;
pub mod link;
pub mod local;

pub use link::{Inbox, Outbox};
