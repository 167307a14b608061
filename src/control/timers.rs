//! The control executor's clock: heartbeats to the workers, breakers that
//! half-open, TTL registrations that expire, and returning freed memory to
//! the kernel.
//!
//! One task sleeps until the earliest of those deadlines, or until
//! the plane's `timers` notifier says a deadline changed (a breaker
//! opened, a TTL was set); nothing is polled on a fixed short period.

use std::rc::Rc;
use std::time::Instant;

use super::plane::Plane;
use crate::liveness::HEARTBEAT_EVERY;
use crate::messages::ToWorker;

/// How often freed heap memory is handed back to the kernel. glibc keeps
/// what a burst freed (read buffers of requests that were in flight) in its
/// arenas; `malloc_trim` returns the free pages, so the resident size
/// follows what is in use rather than the highest burst. It walks each
/// arena once, a few microseconds on a heap this size.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs until cancelled.
pub async fn run(plane: Rc<Plane>) {
    let mut next_beat = Instant::now();
    let mut next_trim = Instant::now() + TRIM_EVERY;
    loop {
        let now = Instant::now();
        if now >= next_trim {
            trim_heap();
            next_trim = now + TRIM_EVERY;
        }
        if now >= next_beat {
            plane.liveness.beat_control();
            plane.links.broadcast(|| ToWorker::Ping);
            next_beat = now + HEARTBEAT_EVERY;
        }
        if plane.book.borrow_mut().tick(now) {
            plane.publish();
        }
        plane.expire_registrations();
        let mut deadline = next_beat.min(next_trim);
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
