//! Which executors are alive: one heartbeat stamp per executor.
//!
//! The control executor stamps its own slot on every timer pass and sends
//! every worker a [`crate::messages::ToWorker::Ping`] each
//! [`HEARTBEAT_EVERY`]; a worker stamps its slot when it handles the ping,
//! which proves its event loop runs. Admin `GET /health` answers 503 naming
//! any executor whose stamp is older than [`STALE_AFTER`], and the systemd
//! watchdog thread sends `WATCHDOG=1` only while none is. Stamps are relaxed
//! atomics written a few times a second, never on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the control executor pings the workers.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
/// An executor that has not answered for this long is reported stalled
/// (four missed heartbeats: a busy worker still answers well within it).
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// Heartbeat stamps of the control executor (slot 0) and the workers.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    names: Vec<String>,
    /// Milliseconds since `start` of each executor's last heartbeat.
    stamps: Vec<AtomicU64>,
}

impl Liveness {
    /// A board for the control executor and `workers` workers, all fresh.
    pub fn new(workers: usize) -> Self {
        let mut names = vec!["ekilibri-control".to_string()];
        names.extend((0..workers).map(|i| format!("ekilibri-w{i}")));
        Liveness {
            start: Instant::now(),
            stamps: names.iter().map(|_| AtomicU64::new(0)).collect(),
            names,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The control executor is alive.
    pub fn beat_control(&self) {
        self.stamps[0].store(self.now_ms(), Ordering::Relaxed);
    }

    /// Worker `id` answered a heartbeat.
    pub fn beat_worker(&self, id: usize) {
        if let Some(s) = self.stamps.get(id + 1) {
            s.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Executors that have not answered within [`STALE_AFTER`], with how
    /// long ago they last did.
    pub fn stalled(&self) -> Vec<(String, Duration)> {
        let now = self.now_ms();
        let limit = STALE_AFTER.as_millis() as u64;
        self.names
            .iter()
            .zip(&self.stamps)
            .filter_map(|(name, s)| {
                let age = now.saturating_sub(s.load(Ordering::Relaxed));
                (age > limit).then(|| (name.clone(), Duration::from_millis(age)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_slots_are_named() {
        let l = Liveness::new(2);
        assert!(l.stalled().is_empty());
        // Pretend three seconds passed with only worker 1 answering.
        let l = Liveness {
            start: Instant::now() - Duration::from_secs(3),
            ..l
        };
        l.beat_worker(1);
        let names: Vec<String> = l.stalled().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["ekilibri-control", "ekilibri-w0"]);
        l.beat_control();
        l.beat_worker(0);
        l.beat_worker(99); // out of range: ignored
        assert!(l.stalled().is_empty());
    }
}
