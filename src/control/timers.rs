//! The control executor's clock: heartbeats to the workers, breakers that
//! half-open, TTL registrations that expire.
//!
//! One task sleeps until the earliest of those deadlines, or until
//! [`super::plane::Plane::timers`] says a deadline changed (a breaker
//! opened, a TTL was set); nothing is polled on a fixed short period.

use std::rc::Rc;
use std::time::Instant;

use super::plane::Plane;
use crate::liveness::HEARTBEAT_EVERY;
use crate::messages::ToWorker;

/// Runs until cancelled.
pub async fn run(plane: Rc<Plane>) {
    let mut next_beat = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_beat {
            plane.liveness.beat_control();
            plane.links.broadcast(|| ToWorker::Ping);
            next_beat = now + HEARTBEAT_EVERY;
        }
        if plane.book.borrow_mut().tick(now) {
            plane.publish();
        }
        plane.expire_registrations();
        let mut deadline = next_beat;
        if let Some(d) = plane.book.borrow().next_breaker_deadline() {
            deadline = deadline.min(d);
        }
        if let Some(d) = plane.next_expiry() {
            deadline = deadline.min(d);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        futures_lite::future::or(glommio::timer::sleep(wait), plane.timers.notified()).await;
    }
}
