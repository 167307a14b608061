//! A real single-node etcd for the tests that need one (cluster mode, own
//! addresses in etcd entries): free loopback ports, its own data directory,
//! plain or TLS client URLs, and etcdctl helpers.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ProcGuard, closed_port, unique_temp_path};

/// Longest wait for a fresh etcd to answer `endpoint health`.
pub const ETCD_READY: Duration = Duration::from_secs(15);

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A real single-node etcd on free loopback ports (data directory and log
/// removed on drop; the log is printed when a test panics).
pub struct Etcd {
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub guard: Option<ProcGuard>,
    /// `http` or `https` (client URLs; peers always talk http on loopback).
    pub scheme: &'static str,
    /// Extra server flags (TLS files).
    pub extra: Vec<String>,
    /// Extra etcdctl flags (CA, client certificate, user).
    pub ctl_extra: Vec<String>,
}

impl Etcd {
    /// Starts etcd on free loopback ports with a fresh data directory and
    /// waits until it answers `endpoint health`.
    pub fn start() -> Etcd {
        Etcd::start_with("http", Vec::new(), Vec::new())
    }

    /// Like [`Etcd::start`] with a scheme and extra server / etcdctl flags.
    pub fn start_with(scheme: &'static str, extra: Vec<String>, ctl_extra: Vec<String>) -> Etcd {
        let client_port = closed_port();
        let mut peer_port = closed_port();
        while peer_port == client_port {
            peer_port = closed_port();
        }
        let dir = unique_temp_path("-etcd");
        let log = dir.with_extension("log");
        let mut etcd = Etcd {
            client_port,
            peer_port,
            dir,
            log,
            guard: None,
            scheme,
            extra,
            ctl_extra,
        };
        etcd.spawn();
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.client_port)
    }

    /// (Re)starts the process on this data directory and these ports.
    pub fn spawn(&mut self) {
        assert!(self.guard.is_none(), "etcd is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the etcd log file");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "the cluster tests need a real etcd: `etcd` is not in PATH \
                 (install Debian's etcd-server and etcd-client packages, as .ci/run does)"
            ),
            Err(e) => panic!("spawn etcd: {e}"),
        };
        self.guard = Some(ProcGuard::new("etcd", child));
        let deadline = Instant::now() + ETCD_READY;
        loop {
            if let Some(status) = self.guard.as_mut().unwrap().try_wait() {
                panic!(
                    "etcd exited ({status}) while starting; log:\n{}",
                    self.log_tail()
                );
            }
            let out = self.ctl_output(&["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd on {} not healthy within {ETCD_READY:?}: {}\nlog:\n{}",
                    self.endpoint(),
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (no goodbye to the clients) and reap.
    pub fn kill(&mut self) {
        let guard = self.guard.take().expect("etcd is not running");
        drop(guard);
    }

    pub fn log_tail(&self) -> String {
        last_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }

    pub fn ctl_output(&self, args: &[&str]) -> Output {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(&self.ctl_extra)
            .args(args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "the cluster tests need `etcdctl` in PATH \
                 (Debian package etcd-client, installed by .ci/run)"
            ),
            Err(e) => panic!("run etcdctl: {e}"),
        }
    }

    /// Runs etcdctl, which must succeed; returns its stdout.
    #[track_caller]
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `put` by another writer; returns the store's revision after it.
    #[track_caller]
    pub fn put(&self, key: &str, value: &str) -> u64 {
        let out = self.ctl(&["put", key, value, "-w", "json"]);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("etcdctl put -w json: {e}: {out:?}"));
        v["header"]["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("no revision in {v}"))
    }

    /// `del`; returns how many keys were deleted.
    #[track_caller]
    pub fn del(&self, key: &str) -> u64 {
        let out = self.ctl(&["del", key]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("etcdctl del output {out:?}"))
    }

    /// The key's stored entry (`kvs[0]` of `get -w json`), if any.
    #[track_caller]
    pub fn get(&self, key: &str) -> Option<Value> {
        let out = self.ctl(&["get", key, "-w", "json"]);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("etcdctl get -w json: {e}: {out:?}"));
        v["kvs"].as_array().and_then(|kvs| kvs.first().cloned())
    }

    /// The key's value decoded (etcdctl's JSON output has it in base64).
    #[track_caller]
    pub fn get_value(&self, key: &str) -> Option<Value> {
        self.get(key)?;
        let out = self.ctl(&["get", key, "--print-value-only"]);
        let text = out.trim();
        Some(
            serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("value of {key} is not JSON ({e}): {text:?}")),
        )
    }

    #[track_caller]
    pub fn compact(&self, revision: u64) {
        self.ctl(&["compact", &revision.to_string()]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.guard.take();
        let _ = std::fs::remove_dir_all(&self.dir);
        if thread::panicking() {
            eprintln!("etcd log ({}):\n{}", self.log.display(), self.log_tail());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
