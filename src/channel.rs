//! Waiting on glommio shared channels without trusting a single wake-up.
//!
//! glommio's shared-channel `connect()` parks a waker that the reactor only
//! re-checks when its executor is awake; if the executor is asleep with
//! nothing else to do when the peer connects, it can sleep forever (seen as
//! balancers that never finished starting when many started at once).
//! [`repoll`] races such a future against a short timer and polls it again on
//! every tick, so a missed wake-up costs at most one period. It is used only
//! on the control path (connect, snapshots, reports), never per request.

use std::future::Future;
use std::time::Duration;

/// How often a cross-executor wait is re-polled.
pub const REPOLL: Duration = Duration::from_millis(50);

/// Awaits `fut`, polling it again at least every [`REPOLL`].
pub async fn repoll<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        let r = futures_lite::future::or(async { Some(fut.as_mut().await) }, async {
            glommio::timer::sleep(REPOLL).await;
            None
        })
        .await;
        if let Some(v) = r {
            return v;
        }
    }
}
