//! Test-only fault injection: make an executor panic or stall on purpose.
//!
//! Debug builds read `EKILIBRI_TEST_FAULT` (release builds ignore it and
//! compile this to nothing), so the integration tests can show that a
//! panicking executor ends the process and a stalled one turns `/health`
//! to 503. Format: `ACTION:EXECUTOR:AFTER_MS[:FOR_MS]`, where ACTION is
//! `panic` or `stall`, EXECUTOR is `control` or `w<N>`, e.g.
//! `panic:w0:300` or `stall:w1:500:3000`.

use std::time::Duration;

/// What to do, to whom, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Panic (true) or block the executor's thread (false).
    pub panic: bool,
    /// `control` or `w<N>`.
    pub executor: String,
    /// Delay after the executor starts.
    pub after: Duration,
    /// How long a stall lasts.
    pub stall: Duration,
}

/// Parses a fault specification.
pub fn parse(spec: &str) -> Option<Fault> {
    let mut it = spec.split(':');
    let panic = match it.next()? {
        "panic" => true,
        "stall" => false,
        _ => return None,
    };
    let executor = it.next()?.to_string();
    let after = Duration::from_millis(it.next()?.parse().ok()?);
    let stall = Duration::from_millis(it.next().map_or(Some(0), |v| v.parse().ok())?);
    Some(Fault {
        panic,
        executor,
        after,
        stall,
    })
}

/// Starts the configured fault on the current executor if it names
/// `executor`. Does nothing in release builds.
pub fn arm(executor: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(f) = std::env::var("EKILIBRI_TEST_FAULT")
        .ok()
        .and_then(|s| parse(&s))
    else {
        return;
    };
    if f.executor != executor {
        return;
    }
    glommio::spawn_local(async move {
        glommio::timer::sleep(f.after).await;
        if f.panic {
            panic!("test fault injected by EKILIBRI_TEST_FAULT");
        }
        // Blocks the whole executor, as a hung syscall or a busy loop would.
        std::thread::sleep(f.stall);
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            parse("stall:w1:500:3000"),
            Some(Fault {
                panic: false,
                executor: "w1".into(),
                after: Duration::from_millis(500),
                stall: Duration::from_millis(3000)
            })
        );
        assert!(parse("panic:control:0").is_some_and(|f| f.panic));
        assert!(parse("explode:w0:1").is_none());
        assert!(parse("panic:w0").is_none());
    }
}
