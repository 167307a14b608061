//! # ekilibri
//!
//! A thread-per-core HTTP/1.1 load balancer on glommio (io_uring). One
//! executor is pinned per CPU; each binds the listen address with
//! SO_REUSEPORT, accepts on its own, and proxies requests to backends over
//! its own keep-alive pool. A separate control executor owns health,
//! reloads, registrations and the admin API, and broadcasts immutable
//! snapshots to the workers. Nothing on the request path takes a lock
//! shared across cores.
//!
//! ## Layout
//!
//! Dependencies point down this list: a module uses only those below it.
//!
//! - [`runtime`]: binds sockets, creates the channels, starts the pinned
//!   workers and the control executor, signals, liveness watchdog, exit
//!   (fail fast on any panic).
//! - [`control`]: the control executor: links to the workers, probe
//!   scheduling, breaker and TTL timers, registrations and the etcd
//!   follower, reloads, and the handle the admin API calls.
//! - [`admin`]: the admin listener (metrics, JSON API, reload), talking to
//!   the control executor only through its [`admin::Api`] trait.
//! - [`cluster`]: cluster mode: the etcd registry's data model and the etcd
//!   client thread.
//! - [`worker`]: a worker's accept loop, its control-message loop
//!   (snapshots, configs, scrapes, heartbeats, shutdown) and the drain
//!   registry of open client connections. Owns the worker's [`context`].
//! - [`connection`]: one client connection's keep-alive loop and timeouts;
//!   tells the worker's drain registry when it idles.
//! - [`proxy`]: forward one request, relay one response, decide retries;
//!   one client request's exchange travels as one value.
//! - [`context`]: what the request path needs from its worker: config and
//!   snapshot, balancer pick, keep-alive pool, passive reports, connection
//!   slots, breaker trials, retry budget, counters, metrics, access-log
//!   buffer. Knows nothing of connections, proxying or the accept loop.
//! - [`retry`]: the per-worker retry budget and the backoff delay.
//! - [`balancer`]: one strategy per file behind the [`balancer::Balancer`] trait;
//!   [`balancer::Selector::select`] decides the candidates for all of them.
//! - [`health`]: the health state machine (thresholds, passive failures,
//!   breakers), what a check is, and the [`health::Snapshot`] workers route
//!   by. Knows nothing of admin, etcd or config files.
//! - [`messages`]: what crosses cores between control and workers.
//! - [`channel`]: cross-thread waits that cannot leak wakers (forwarding
//!   links over glommio shared channels, core-local queues, thread bridges).
//! - [`liveness`]: heartbeat stamps of every executor.
//! - [`backend`]: backend identity and the core-local connection pool.
//! - [`http`]: request and response head parsing and rewriting (one
//!   framing-header scan for both), chunked decoding, canned responses, the
//!   one reason-phrase table. Pure functions, no I/O.
//! - [`metrics`]: core-local request counters, summed and rendered on scrape
//!   (labelled by backend address, pruned with the backend set), plus
//!   process and build metrics read on scrape.
//! - [`access_log`]: per-request log lines, batched off the workers.
//! - [`buffer`]: the read buffer heads are parsed from in place.
//! - [`io_now`]: reads and vectored sends on a glommio stream that never
//!   wait (the pool's syscall-free check, one `sendmsg` per response).
//! - [`request_id`]: request ids (`X-Request-Id`, `$request_id`), made per
//!   worker into a reused inline buffer.
//! - [`stash`]: a worker's spare client-request buffers, which idle
//!   client connections give back so they hold none while they wait, and
//!   the adaptive bounded free list behind it and the pool's spare backend
//!   read buffers.
//! - [`config`]: the TOML file (compatible with the original Ekilibri),
//!   validated into an immutable [`config::Config`].
//! - [`error`]: error enums; every proxy error knows its status code.
//! - [`envcheck`]: pre-start host checks (kernel, io_uring, rlimits, CPUs);
//!   [`sdnotify`]: systemd `READY=1`/`STOPPING=1`/`WATCHDOG=1`; [`fault`]:
//!   test-only fault injection (debug builds); [`uring`]: extra io_uring
//!   setup flags for glommio's rings (`COOP_TASKRUN`, `SINGLE_ISSUER`);
//!   [`upgrade`]: SIGUSR2 binary upgrade, handing the listening sockets to
//!   a new process.

#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod backend;
pub mod balancer;
pub mod buffer;
pub mod channel;
pub mod cidr;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod context;
pub mod control;
pub mod envcheck;
pub mod error;
pub mod fault;
pub mod health;
pub mod http;
pub mod io_now;
pub mod liveness;
pub mod messages;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod request_id;
pub mod retry;
pub mod route;
pub mod runtime;
pub mod sdnotify;
pub mod stash;
pub mod upgrade;
pub mod uring;
pub mod worker;
