//! # ekilibri
//!
//! A thread-per-core HTTP/1.1 load balancer on glommio (io_uring). One
//! executor is pinned per CPU; each binds the listen address with
//! SO_REUSEPORT, accepts on its own, and proxies requests to backends over
//! its own keep-alive pool. A separate health executor probes the backends
//! and broadcasts immutable health snapshots to the workers. Nothing on the
//! request path takes a lock shared across cores.
//!
//! ## Layout
//!
//! - [`config`]: the TOML file (compatible with the original Ekilibri),
//!   validated into an immutable [`config::Config`].
//! - [`error`]: error enums; every proxy error knows its status code.
//! - [`runtime`]: binds sockets, creates the channels, starts the pinned
//!   workers and the health executor, handles signals and shutdown.
//! - [`worker`]: a worker's accept loop and core-local state (snapshot,
//!   balancer, pool, counters, drain).
//! - [`connection`]: one client connection's keep-alive loop and timeouts.
//! - [`http`]: request and response head parsing and rewriting, chunked
//!   decoding, canned responses. Pure functions, no I/O.
//! - [`proxy`]: forward one request, relay one response, decide retries.
//! - [`retry`]: the per-worker retry budget and the backoff delay.
//! - [`backend`]: backend identity and the core-local connection pool.
//! - [`balancer`]: one strategy per file behind the [`balancer::Balancer`] trait.
//! - [`health`]: the snapshot type, and the health executor ([`health::checker`])
//!   with active checks, passive failure reports and thresholds.
//! - [`admin`]: the admin listener (metrics, JSON API, reload), served by
//!   the health executor.
//! - [`cluster`]: cluster mode: the etcd registry's data model and the etcd
//!   client thread; [`health::registry`] applies it on the health executor.
//! - [`metrics`]: core-local request counters, summed and rendered on scrape.
//! - [`access_log`]: per-request log lines, batched off the workers.
//! - [`buffer`]: the read buffer heads are parsed from in place.
//! - [`channel`]: re-polling waits on glommio shared channels (control path).
//! - [`envcheck`]: pre-start host checks (kernel, io_uring, rlimits, CPUs); [`sdnotify`]: systemd `READY=1`/`STOPPING=1`.

#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod backend;
pub mod balancer;
pub mod buffer;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod envcheck;
pub mod error;
pub mod health;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod runtime;
pub mod sdnotify;
pub mod worker;
