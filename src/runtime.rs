//! Starting and stopping the process: listen sockets, channels, the pinned
//! workers, the control executor, signals, liveness and exit.
//!
//! ```text
//!   signals thread --(bridge: HUP, USR1, TERM)----+
//!                                                 v
//!   +------------------+  ToWorker (snapshot, config,   +----------------+
//!   | control executor | ---- scrape, ping, shutdown) -> | worker 0 (cpu0)|
//!   |  (unpinned):     | <-- FromWorker (reports, ------ | accept, proxy  |
//!   |  health, admin,  |      metrics)                   +----------------+
//!   |  reload, etcd    | ------------------------------> | worker 1 (cpu1)|
//!   +------------------+ <------------------------------ | ...            |
//!           ^  one SPSC shared channel each way per worker +--------------+
//!   watchdog thread: WATCHDOG=1 to systemd while every executor answers
//! ```
//!
//! Each worker gets its own listen socket, bound here with SO_REUSEPORT to
//! the same address (the first bind resolves port 0, the others reuse the
//! real port), so the kernel spreads connections across workers.
//!
//! Fail fast: [`install_panic_hook`] makes a panic on any thread log one
//! line and end the process with [`EXIT_PANIC`]; an executor that returns
//! before shutdown was asked for ends it with an error. Nothing lingers
//! half-alive, so a supervisor (systemd `Restart=on-failure`) restarts it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendId};
use crate::channel::bridge;
use crate::config::Config;
use crate::control::{self, ControlParts, Signal};
use crate::liveness::Liveness;
use crate::worker::{self, WorkerParts};

/// How long a process taking over (SIGUSR2) waits for its first read of
/// the etcd registry before giving up (the old process keeps serving).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit status after a panic on any thread (EX_SOFTWARE).
pub const EXIT_PANIC: i32 = 70;

/// Makes every panic, on any thread, log one line naming the thread and
/// the panic and end the process with [`EXIT_PANIC`] at once. A process
/// with a dead executor cannot do its job (its listen sockets, health
/// checks or signal handling are gone); exiting lets the supervisor start
/// a whole one. Install it first thing in `main`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        error!(
            thread = name,
            "panic: {what}{at}; exiting (status {EXIT_PANIC})"
        );
        std::process::exit(EXIT_PANIC);
    }));
}

/// Why the runtime could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (`{key}`): {source}{}", port_hint(.key, *.addr))]
    Bind {
        /// The config key that gave the address.
        key: &'static str,
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
    /// The sockets handed over by a running instance (SIGUSR2) do not fit
    /// this configuration.
    #[error("cannot take over from the running instance: {0}")]
    Upgrade(String),
    /// The access log file could not be opened.
    #[error("cannot open access_log_path `{path}`: {source}")]
    AccessLog {
        /// The configured path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An executor stopped without being asked to.
    #[error("executor {0} stopped unexpectedly")]
    ExecutorDied(String),
}

/// A hint for a port other software is known to take by default.
fn port_hint(key: &str, addr: SocketAddr) -> String {
    if addr.port() == 9090 {
        format!(
            "; 9090 is also Prometheus's default port: if a Prometheus server runs here, set `{key}` to another port"
        )
    } else {
        String::new()
    }
}

/// Memory glommio registers with io_uring per executor for storage DMA
/// buffers (default 10 MiB). We do no file I/O, so the minimum glommio
/// accepts is enough; this is most of the difference in resident memory.
const IO_MEMORY: usize = 64 * 1024;

/// Longest wait at exit for the access log writer to write the last lines
/// (a stuck disk must not hold up the exit for long).
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);

/// Capacity of each control -> worker channel (the control side coalesces,
/// so a handful would do).
const CONTROL_CAPACITY: usize = 64;
/// Capacity of each worker -> control report channel; reports beyond it are
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
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn spawn_signal_thread(
    set: libc::sigset_t,
    stopping: Arc<AtomicBool>,
    to_control: bridge::Sender<Signal>,
    upgrade: mpsc::Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
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
                        let _ = to_control.send(Signal::Reload);
                    }
                    libc::SIGUSR2 => {
                        let _ = upgrade.send(());
                    }
                    libc::SIGUSR1 => {
                        info!("SIGUSR1 received: reopening the access log");
                        let _ = to_control.send(Signal::ReopenLogs);
                    }
                    _ if stopping.load(Ordering::Relaxed) => {
                        warn!("second termination signal: exiting without waiting for the drain");
                        std::process::exit(1);
                    }
                    _ => {
                        info!(
                            signal = sig,
                            "shutting down: no new connections, draining in-flight requests"
                        );
                        stopping.store(true, Ordering::Relaxed);
                        crate::sdnotify::stopping();
                        let _ = to_control.send(Signal::Terminate);
                    }
                }
            }
        })
        .map(|_| ())
}

/// Runs binary upgrades (SIGUSR2), one at a time: starts the new process
/// with the listening sockets and, once it reports ready, tells the control
/// executor to hand over (drain softly and exit 0). A failed attempt is
/// logged and the running instance keeps serving.
fn spawn_upgrade_thread(
    handover: crate::upgrade::Handover,
    requests: mpsc::Receiver<()>,
    stopping: Arc<AtomicBool>,
    to_control: bridge::Sender<Signal>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ekilibri-upgrade".into())
        .spawn(move || {
            while requests.recv().is_ok() {
                if stopping.load(Ordering::Relaxed) {
                    continue;
                }
                info!(
                    binary = %handover.exe().display(),
                    "SIGUSR2 received: starting the new binary with the listening sockets"
                );
                match handover.start_successor(crate::upgrade::READY_TIMEOUT) {
                    Ok(pid) => {
                        info!(
                            new_pid = pid,
                            "upgrade: the new process serves; draining and exiting"
                        );
                        stopping.store(true, Ordering::Relaxed);
                        let _ = to_control.send(Signal::Handover);
                        return;
                    }
                    Err(why) => {
                        error!("upgrade failed, this instance keeps serving: {why}");
                        // Coalesce signals that arrived during the attempt.
                        while requests.try_recv().is_ok() {}
                    }
                }
            }
        })
        .map(|_| ())
}

/// The address a listening socket is bound to.
fn bound_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    socket2::SockRef::from(fd)
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
}

/// Sends systemd `WATCHDOG=1` every half `WatchdogSec=` while every
/// executor answers its heartbeats; withholds it (so systemd restarts the
/// unit) while one does not.
fn spawn_watchdog_thread(liveness: Arc<Liveness>) -> std::io::Result<()> {
    let Some(period) = crate::sdnotify::watchdog_period() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("ekilibri-watchdog".into())
        .spawn(move || {
            let mut withheld = false;
            loop {
                std::thread::sleep(period / 2);
                let stalled = liveness.stalled();
                if stalled.is_empty() {
                    crate::sdnotify::notify("WATCHDOG=1");
                    withheld = false;
                } else if !withheld {
                    let names: Vec<&str> = stalled.iter().map(|(n, _)| n.as_str()).collect();
                    error!(
                        "withholding the systemd watchdog: {} not answering",
                        names.join(", ")
                    );
                    withheld = true;
                }
            }
        })
        .map(|_| ())
}

/// Which executor ended, and whether that was its own doing.
struct Exited {
    name: String,
}

/// Runs the balancer until a termination signal and the drain that follows.
/// `config_path` is re-read on SIGHUP and `POST /reload`.
pub fn run(config: Config, config_path: &Path) -> Result<(), RuntimeError> {
    let config = Arc::new(config);
    let n = config.workers;

    // A process started by SIGUSR2 takes the running instance's sockets
    // and binds nothing; an ordinary start binds, after checking that no
    // other process listens there.
    let mut inherited = crate::upgrade::take_inherited().map_err(RuntimeError::Upgrade)?;
    let (listeners, local) = match inherited.as_mut() {
        Some(inh) => {
            let fds = std::mem::take(&mut inh.listeners);
            if fds.len() != n {
                return Err(RuntimeError::Upgrade(format!(
                    "it has {} workers and this configuration {n}; change `workers` with a restart",
                    fds.len()
                )));
            }
            let local = bound_addr(&fds[0]).unwrap_or(config.listen);
            if config.listen.port() != 0 && local != config.listen {
                return Err(RuntimeError::Upgrade(format!(
                    "it listens on {local} and this configuration on {}; change `listen` with a restart",
                    config.listen
                )));
            }
            (fds, local)
        }
        None => {
            if config.listen.port() != 0 {
                ensure_port_free(config.listen).map_err(|source| RuntimeError::Bind {
                    key: "listen",
                    addr: config.listen,
                    source,
                })?;
            }
            let first = bind_listener(config.listen, config.listen_backlog).map_err(|source| {
                RuntimeError::Bind {
                    key: "listen",
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
                let s = bind_listener(local, config.listen_backlog).map_err(|source| {
                    RuntimeError::Bind {
                        key: "listen",
                        addr: local,
                        source,
                    }
                })?;
                listeners.push(s.into());
            }
            (listeners, local)
        }
    };

    let backends: Vec<Arc<Backend>> = config
        .pools
        .iter()
        .flat_map(|p| {
            let pool: Arc<str> = p.name.as_str().into();
            p.servers.iter().map(move |s| (pool.clone(), s))
        })
        .enumerate()
        .map(|(i, (pool, s))| {
            Arc::new(Backend::in_pool(
                pool,
                BackendId(i as u32),
                s.name.clone(),
                s.addr,
                s.weight,
            ))
        })
        .collect();

    let inherited_admin = inherited.as_mut().map(|i| i.admin.take());
    let admin: Option<(OwnedFd, SocketAddr)> = match (config.admin_listen, inherited_admin) {
        (None, None | Some(None)) => None,
        (Some(addr), None) => {
            let s = bind_admin(addr).map_err(|source| RuntimeError::Bind {
                key: "admin_listen",
                addr,
                source,
            })?;
            let local = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
            Some((s.into(), local))
        }
        (Some(addr), Some(Some(fd))) => {
            let local = bound_addr(&fd).unwrap_or(addr);
            if addr.port() != 0 && local != addr {
                return Err(RuntimeError::Upgrade(format!(
                    "its admin API is on {local} and this configuration's on {addr}; change `admin_listen` with a restart"
                )));
            }
            Some((fd, local))
        }
        (None, Some(Some(_))) | (Some(_), Some(None)) => {
            return Err(RuntimeError::Upgrade(
                "`admin_listen` was turned on or off; change it with a restart".into(),
            ));
        }
    };
    let admin_addr = admin.as_ref().map(|(_, a)| *a);

    // Ring setup flags for every executor created below.
    let mut ring_flags = config.ring_setup_flags;
    if config.spin_before_park.is_some() && ring_flags & crate::uring::COOP_TASKRUN != 0 {
        // Spinning reads the completion queues without entering the kernel,
        // where COOP_TASKRUN completions would wait: it would spin blind.
        warn!("spin_before_park is set: io_uring COOP_TASKRUN is left off");
        ring_flags &= !crate::uring::COOP_TASKRUN;
    }
    crate::uring::request(ring_flags);

    let sigset = block_signals();
    let stopping = Arc::new(AtomicBool::new(false));
    let executor_error = |name: &str, e: std::io::Error| RuntimeError::Executor {
        name: name.into(),
        message: e.to_string(),
    };
    let (signal_tx, signal_rx) =
        bridge::channel().map_err(|e| executor_error("ekilibri-signals", e))?;
    let (upgrade_tx, upgrade_rx) = mpsc::channel();
    let handover = crate::upgrade::Handover::new(&listeners, admin.as_ref().map(|(fd, _)| fd))
        .map_err(|e| executor_error("ekilibri-upgrade", e))?;
    spawn_upgrade_thread(handover, upgrade_rx, stopping.clone(), signal_tx.clone())
        .map_err(|e| executor_error("ekilibri-upgrade", e))?;
    spawn_signal_thread(sigset, stopping.clone(), signal_tx, upgrade_tx)
        .map_err(|e| executor_error("ekilibri-signals", e))?;
    let liveness = Arc::new(Liveness::new(n));
    spawn_watchdog_thread(liveness.clone()).map_err(|e| executor_error("ekilibri-watchdog", e))?;
    // The writer thread runs even with the log off: a reload may turn it on.
    let access_sink = if config.access_log.is_on() {
        config
            .access_log_path
            .open()
            .map_err(|source| RuntimeError::AccessLog {
                path: config.access_log_path.to_string(),
                source,
            })?
    } else {
        crate::access_log::Sink::Stdout
    };
    let access = crate::access_log::Writer::start(access_sink)
        .map_err(|e| executor_error("ekilibri-access", e))?;

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
        Some(c) => {
            Some(crate::cluster::spawn(c.clone()).map_err(|e| executor_error("ekilibri-etcd", e))?)
        }
        None => None,
    };

    // Every executor says when it ends; the main thread decides whether that
    // was a shutdown or a failure.
    let (exit_tx, exit_rx) = mpsc::channel::<Exited>();
    let synced = Arc::new(AtomicBool::new(false));
    let control_name = "ekilibri-control";
    let parts = ControlParts {
        config: config.clone(),
        config_path: config_path.to_path_buf(),
        backends,
        to_workers,
        from_workers,
        signals: signal_rx,
        admin: admin.map(|(fd, _)| fd),
        cluster,
        liveness: liveness.clone(),
        synced: synced.clone(),
        access: access.clone(),
        own: crate::config::OwnAddresses {
            listen: Some(local),
            admin: admin_addr,
        },
    };
    let exit = exit_tx.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(control_name)
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            control::run(parts).await;
            let _ = exit.send(Exited {
                name: control_name.into(),
            });
        })
        .map_err(|e| RuntimeError::Executor {
            name: control_name.into(),
            message: e.to_string(),
        })?;

    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![0]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
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
            access: access.clone(),
            ready: ready_tx.clone(),
            liveness: liveness.clone(),
            // Taking over: accept only once the pool is ready (the old
            // process serves meanwhile).
            accept_now: inherited.is_none(),
        };
        let exit = exit_tx.clone();
        let exit_name = name.clone();
        builder
            .spawn(move || async move {
                worker::run(parts).await;
                let _ = exit.send(Exited { name: exit_name });
            })
            .map_err(|e| RuntimeError::Executor {
                name: name.clone(),
                message: e.to_string(),
            })?;
    }
    drop(exit_tx);
    drop(ready_tx);
    let mut ready = 0;
    while ready < n {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => ready += 1,
            Err(_) => break,
        }
    }
    if ready == n {
        let pools: Vec<String> = config
            .pools
            .iter()
            .map(|p| {
                let names: Vec<&str> = p.servers.iter().map(|s| s.name.as_str()).collect();
                format!(
                    "pool {} strategy {:?} backends [{}]",
                    p.name,
                    p.strategy,
                    names.join(", ")
                )
            })
            .collect();
        info!(
            "ekilibri listening on {local} with {n} workers, {}",
            pools.join("; ")
        );
        if let Some(a) = admin_addr {
            info!("admin API (metrics, servers, reload) at http://{a}/");
        }
        let (with, without) = crate::uring::rings();
        info!(
            "io_uring setup flags {}: {with} rings with them, {without} without (kernel refused)",
            crate::uring::describe(ring_flags)
        );
        match inherited.as_mut() {
            None => crate::sdnotify::ready(),
            Some(inh) => {
                // Taking over: the backend pool must be complete first (in
                // cluster mode, read from etcd), then the old process may go.
                let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
                while !synced.load(Ordering::Relaxed) {
                    if std::time::Instant::now() >= deadline {
                        return Err(RuntimeError::Upgrade(format!(
                            "the backend pool was not read from etcd and checked within {SYNC_TIMEOUT:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                inh.announce_ready();
                info!("took over from the previous process; it drains and exits");
                crate::sdnotify::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
            }
        }
    } else {
        return Err(RuntimeError::ExecutorDied(format!(
            "{} of {n} workers did not start",
            n - ready
        )));
    }

    // Wait for every executor (the control executor and n workers) to end.
    // One that ends before a termination signal is a failure: exit non-zero
    // rather than run without it.
    for _ in 0..=n {
        match exit_rx.recv() {
            Ok(e) if !stopping.load(Ordering::Relaxed) => {
                error!(executor = %e.name, "executor stopped without a shutdown; exiting");
                return Err(RuntimeError::ExecutorDied(e.name));
            }
            Ok(_) => {}
            // Every sender is gone without a message: an executor thread
            // ended abnormally (a panic normally exits in the hook first).
            Err(_) => return Err(RuntimeError::ExecutorDied("unknown".into())),
        }
    }
    // The workers handed over their last lines before they ended.
    access.flush(ACCESS_LOG_FLUSH);
    info!("shutdown complete");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_error_names_the_key_and_the_prometheus_port() {
        let e = RuntimeError::Bind {
            key: "admin_listen",
            addr: "127.0.0.1:9090".parse().expect("literal address"),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let m = e.to_string();
        assert!(
            m.starts_with("cannot listen on 127.0.0.1:9090 (`admin_listen`): "),
            "{m}"
        );
        assert!(
            m.contains("Prometheus's default port")
                && m.ends_with("set `admin_listen` to another port"),
            "{m}"
        );
        let e = RuntimeError::Bind {
            key: "listen",
            addr: "127.0.0.1:8080".parse().expect("literal address"),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert!(!e.to_string().contains("Prometheus"), "{e}");
    }

    #[test]
    fn memlock_estimate_covers_the_registered_buffers() {
        // Each executor registers IO_MEMORY with its three rings.
        assert!(crate::envcheck::MEMLOCK_PER_EXECUTOR >= 3 * IO_MEMORY as u64);
    }
}
