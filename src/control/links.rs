//! The control executor's end of every worker's two channels.
//!
//! Sending: one [`Outbox`] per worker; a newer snapshot, config, ping or
//! scrape replaces an unsent older one, so a stalled worker costs a few
//! queued messages, never a backlog. Receiving: one forwarding task per
//! worker ([`crate::channel::link::forward`]); metrics answers complete the
//! scrape that asked for them ([`Gather`]), so a scrape waits for exactly
//! its answers instead of polling.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use crate::channel::Outbox;
use crate::channel::local::Gather;
use crate::messages::ToWorker;
use crate::metrics::MetricsSnapshot;

/// Longest a scrape waits for the workers' answers.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Outboxes to the workers and the scrapes waiting for their answers.
pub struct Links {
    outboxes: RefCell<Vec<Outbox<ToWorker>>>,
    scrapes: RefCell<HashMap<u64, Gather<MetricsSnapshot>>>,
    next_scrape: Cell<u64>,
    workers: usize,
}

impl Links {
    /// Links over connected outboxes, one per worker in worker order.
    pub fn new(outboxes: Vec<Outbox<ToWorker>>) -> Self {
        Links {
            workers: outboxes.len(),
            outboxes: RefCell::new(outboxes),
            scrapes: RefCell::new(HashMap::new()),
            next_scrape: Cell::new(0),
        }
    }

    /// Number of request workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues `make()` for every worker, replacing an unsent message it
    /// supersedes.
    pub fn broadcast(&self, make: impl Fn() -> ToWorker) {
        for o in self.outboxes.borrow().iter() {
            let msg = make();
            if matches!(msg, ToWorker::Shutdown | ToWorker::Handover) {
                o.push(msg);
            } else {
                // A snapshot never overtakes a queued config, nor a config
                // a snapshot: a reload sends the new pools' backends before
                // the config that routes to them, and drops the removed
                // ones only after it.
                o.push_replacing_before(
                    msg,
                    |queued| make().supersedes(queued),
                    |queued| make().ordered_after(queued),
                );
            }
        }
    }

    /// Asks every worker for its metrics and waits for the answers (at most
    /// `SCRAPE_TIMEOUT`; a worker that does not answer is left out).
    pub async fn scrape(&self) -> Vec<MetricsSnapshot> {
        let seq = self.next_scrape.get();
        self.next_scrape.set(seq.wrapping_add(1));
        let gather = Gather::new(self.workers);
        self.scrapes.borrow_mut().insert(seq, gather.clone());
        self.broadcast(|| ToWorker::Scrape(seq));
        futures_lite::future::or(gather.wait(), glommio::timer::sleep(SCRAPE_TIMEOUT)).await;
        self.scrapes.borrow_mut().remove(&seq);
        gather.take()
    }

    /// A worker's answer to scrape `seq` (late answers are dropped).
    pub fn on_metrics(&self, seq: u64, snap: MetricsSnapshot) {
        if let Some(g) = self.scrapes.borrow().get(&seq) {
            g.add(snap);
        }
    }

    /// Scrapes waiting for answers (bounded by the admin connection cap).
    pub fn pending_scrapes(&self) -> usize {
        self.scrapes.borrow().len()
    }

    /// Tells every worker to shut down and waits until each message is
    /// handed to its channel, the worker is gone, or `limit` passed (a
    /// stalled worker must not hold the shutdown of the others).
    pub async fn shutdown(&self, limit: Duration, handover: bool) {
        let outboxes = std::mem::take(&mut *self.outboxes.borrow_mut());
        for o in &outboxes {
            o.push(if handover {
                ToWorker::Handover
            } else {
                ToWorker::Shutdown
            });
        }
        let all = async {
            for o in outboxes {
                o.close().await;
            }
        };
        futures_lite::future::or(all, glommio::timer::sleep(limit)).await;
    }
}
