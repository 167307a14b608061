//! Starting and stopping the process: listen sockets, channels, the pinned
//! workers, the health executor, and signal-driven shutdown.
//!
//! ```text
//!            SIGINT/SIGTERM -> signal thread -> shutdown flag
//!                                                   |
//!   +----------------+  Control (snapshot, shutdown) |   +----------------+
//!   | health executor| ------------------------------+-> | worker 0 (cpu0)|
//!   |  (unpinned)    | <-------- Report (failures) ----- | accept, proxy  |
//!   +----------------+  one SPSC shared channel each way +----------------+
//!            ^  |                                        | worker 1 (cpu1)|
//!            |  +--------------------------------------> | ...            |
//!            +------------------------------------------ +----------------+
//! ```
//!
//! Each worker gets its own listen socket, bound here with SO_REUSEPORT to
//! the same address (the first bind resolves port 0, the others reuse the
//! real port), so the kernel spreads connections across workers.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendId};
use crate::config::Config;
use crate::health::checker::{self, HealthParts};
use crate::worker::{self, WorkerParts};

/// Why the runtime could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An executor thread could not be started.
    #[error("cannot start executor {name}: {message}")]
    Executor {
        /// Executor name.
        name: String,
        /// The error.
        message: String,
    },
    /// A worker stopped without being asked to.
    #[error("worker {0} stopped unexpectedly")]
    WorkerDied(usize),
}

/// Memory glommio registers with io_uring per executor for storage DMA
/// buffers (default 10 MiB). We do no file I/O, so the minimum glommio
/// accepts is enough; this is most of the difference in resident memory.
const IO_MEMORY: usize = 64 * 1024;

/// Capacity of each health -> worker control channel.
const CONTROL_CAPACITY: usize = 64;
/// Capacity of each worker -> health report channel; reports beyond it are
/// dropped (the backend is already being reported as failing).
const REPORT_CAPACITY: usize = 1024;

/// Creates a listening socket with SO_REUSEPORT and the configured backlog.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s)
}

/// Refuses to start on an address another process already listens on.
/// SO_REUSEPORT would otherwise let a second instance (or a stale one) bind
/// the same port silently and take a share of the traffic: a probe bound
/// *without* SO_REUSEPORT fails with `EADDRINUSE` exactly then.
fn ensure_port_free(addr: SocketAddr) -> std::io::Result<()> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let probe = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                e.kind(),
                "address already in use: another process (another ekilibri?) is listening there",
            )
        } else {
            e
        }
    })
}

/// Creates the admin listening socket (no SO_REUSEPORT: one owner).
fn bind_admin(addr: SocketAddr) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s)
}

/// Blocks the signals the signal thread handles, in the calling thread and
/// every thread it spawns afterwards.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn spawn_signal_thread(set: libc::sigset_t, shutdown: Arc<AtomicBool>, reload: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("ekilibri-signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid, initialised signal set.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                match sig {
                    libc::SIGHUP => {
                        info!("SIGHUP received: reloading the configuration");
                        crate::sdnotify::reloading();
                        reload.store(true, Ordering::Relaxed);
                    }
                    _ if shutdown.load(Ordering::Relaxed) => {
                        warn!("second termination signal: exiting without waiting for the drain");
                        std::process::exit(1);
                    }
                    _ => {
                        info!(
                            signal = sig,
                            "shutting down: no new connections, draining in-flight requests"
                        );
                        shutdown.store(true, Ordering::Relaxed);
                        crate::sdnotify::stopping();
                    }
                }
            }
        });
}

/// Runs the balancer until a termination signal and the drain that follows.
/// `config_path` is re-read on SIGHUP and `POST /reload`.
pub fn run(config: Config, config_path: &Path) -> Result<(), RuntimeError> {
    let config = Arc::new(config);
    let n = config.workers;

    if config.listen.port() != 0 {
        ensure_port_free(config.listen).map_err(|source| RuntimeError::Bind {
            addr: config.listen,
            source,
        })?;
    }
    let first = bind_listener(config.listen, config.listen_backlog).map_err(|source| {
        RuntimeError::Bind {
            addr: config.listen,
            source,
        }
    })?;
    let local = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(config.listen);
    let mut listeners: Vec<OwnedFd> = vec![first.into()];
    for _ in 1..n {
        let s =
            bind_listener(local, config.listen_backlog).map_err(|source| RuntimeError::Bind {
                addr: local,
                source,
            })?;
        listeners.push(s.into());
    }

    let backends: Vec<Arc<Backend>> = config
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Arc::new(Backend::new(
                BackendId(i as u32),
                s.name.clone(),
                s.addr,
                s.weight,
            ))
        })
        .collect();

    let admin: Option<(OwnedFd, SocketAddr)> = match config.admin_listen {
        None => None,
        Some(addr) => {
            let s = bind_admin(addr).map_err(|source| RuntimeError::Bind { addr, source })?;
            let local = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
            Some((s.into(), local))
        }
    };
    let admin_addr = admin.as_ref().map(|(_, a)| *a);

    let sigset = block_signals();
    let shutdown = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    spawn_signal_thread(sigset, shutdown.clone(), reload.clone());
    let access_tx =
        (config.access_log != crate::access_log::Format::Off).then(crate::access_log::start);

    let mut to_workers = Vec::with_capacity(n);
    let mut from_workers = Vec::with_capacity(n);
    let mut worker_ends = Vec::with_capacity(n);
    for _ in 0..n {
        let (ctl_tx, ctl_rx) = shared_channel::new_bounded(CONTROL_CAPACITY);
        let (rep_tx, rep_rx) = shared_channel::new_bounded(REPORT_CAPACITY);
        to_workers.push(ctl_tx);
        from_workers.push(rep_rx);
        worker_ends.push((ctl_rx, rep_tx));
    }

    // Started after the signal mask is set, so the etcd thread inherits it.
    let cluster = match &config.cluster {
        Some(c) => Some(
            crate::cluster::spawn(c.clone()).map_err(|e| RuntimeError::Executor {
                name: "ekilibri-etcd".into(),
                message: e.to_string(),
            })?,
        ),
        None => None,
    };

    let health = LocalExecutorBuilder::new(Placement::Unbound)
        .name("ekilibri-health")
        .io_memory(IO_MEMORY)
        .spawn({
            let parts = HealthParts {
                config: config.clone(),
                config_path: config_path.to_path_buf(),
                backends,
                to_workers,
                from_workers,
                shutdown: shutdown.clone(),
                reload,
                admin: admin.map(|(fd, _)| fd),
                cluster,
            };
            move || checker::run(parts)
        })
        .map_err(|e| RuntimeError::Executor {
            name: "ekilibri-health".into(),
            message: e.to_string(),
        })?;

    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![0]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::with_capacity(n);
    for (id, ((control, reports), listener)) in worker_ends.into_iter().zip(listeners).enumerate() {
        let name = format!("ekilibri-w{id}");
        let cpu = cpus[id % cpus.len()];
        let placement = if config.pin_workers {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&name)
            .io_memory(IO_MEMORY);
        builder = builder.ring_depth(config.ring_depth);
        if let Some(spin) = config.spin_before_park {
            builder = builder.spin_before_park(spin);
        }
        let parts = WorkerParts {
            id,
            config: config.clone(),
            listener,
            control,
            reports,
            access_tx: access_tx.clone(),
            ready: ready_tx.clone(),
        };
        let h = builder
            .spawn(move || worker::run(parts))
            .map_err(|e| RuntimeError::Executor {
                name: name.clone(),
                message: e.to_string(),
            })?;
        handles.push(h);
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < n {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => ready += 1,
            Err(_) => break,
        }
    }
    if ready == n {
        info!(
            "ekilibri listening on {local} with {n} workers, strategy {:?}, backends [{}]",
            config.strategy,
            config
                .servers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(a) = admin_addr {
            info!("admin API (metrics, servers, reload) at http://{a}/");
        }
        crate::sdnotify::ready();
    }

    let mut result = Ok(());
    for (id, h) in handles.into_iter().enumerate() {
        if h.join().is_err() {
            error!(worker = id, "worker panicked");
            result = Err(RuntimeError::WorkerDied(id));
            shutdown.store(true, Ordering::Relaxed);
        }
    }
    if !shutdown.load(Ordering::Relaxed) && result.is_ok() {
        result = Err(RuntimeError::WorkerDied(0));
        shutdown.store(true, Ordering::Relaxed);
    }
    let _ = health.join();
    if result.is_ok() {
        info!("shutdown complete");
    }
    result
}
