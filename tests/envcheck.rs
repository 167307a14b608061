//! The environment checks seen from outside: the real binary, `--check` and
//! a normal start, on this host with limits lowered in the child only.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ekilibri");

/// A configuration file in the temp directory, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    /// A valid file: one (unreachable) backend and a free port; nothing is
    /// bound since every test stops before the runtime.
    fn new(name: &str, extra: &str) -> TempConfig {
        let path = std::env::temp_dir().join(format!(
            "ekilibri-envcheck-{}-{name}.toml",
            std::process::id()
        ));
        let text = format!("servers = [\"127.0.0.1:9\"]\nlisten = \"127.0.0.1:0\"\n{extra}\n");
        std::fs::write(&path, text).expect("write temp config");
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Which soft and hard limit to lower in the child before exec.
#[derive(Clone, Copy)]
enum Limit {
    None,
    Memlock(u64),
    Nofile(u64),
}

/// Runs the binary to completion with `args`, lowering `limit` in the child.
fn run(args: &[&str], limit: Limit) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "warn");
    if let Limit::Memlock(v) | Limit::Nofile(v) = limit {
        let resource = match limit {
            Limit::Memlock(_) => libc::RLIMIT_MEMLOCK,
            _ => libc::RLIMIT_NOFILE,
        };
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                if libc::setrlimit(resource, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    // A normal start that passes its checks would run forever: bound it.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ekilibri");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "ekilibri {args:?} still running after 20 s (expected it to exit); stderr:\n{}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// CPUs in this process's affinity mask (what the child inherits).
fn affinity_cpus() -> usize {
    // SAFETY: sched_getaffinity fills the zeroed set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        libc::CPU_COUNT(&set) as usize
    }
}

fn assert_no_panic(stderr: &str) {
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "stderr shows a panic:\n{stderr}"
    );
}

#[test]
fn this_host_passes_check() {
    let cfg = TempConfig::new("ok", "workers = 1");
    let out = run(&["-f", cfg.0.to_str().unwrap(), "--check"], Limit::None);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "--check failed on this host; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(
        text(&out.stdout).contains(": ok: "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn more_workers_than_cpus_is_refused_naming_both_counts() {
    let cpus = affinity_cpus();
    let workers = 64.max(cpus + 1);
    let cfg = TempConfig::new("cpus", &format!("workers = {workers}"));
    let path = cfg.0.to_str().unwrap();
    for args in [&["-f", path, "--check"][..], &["-f", path][..]] {
        let out = run(args, Limit::None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}; stderr:\n{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("ekilibri: error:") && l.contains("CPU"))
            .unwrap_or_else(|| panic!("{args:?}: no CPU error line in:\n{stderr}"));
        assert!(
            line.contains(&format!("workers = {workers}"))
                && line.contains(&format!("only {cpus} CPUs")),
            "{args:?}: the error should name {workers} workers and {cpus} CPUs: {line}"
        );
        assert!(out.stdout.is_empty(), "no ok summary on error");
        assert_no_panic(&stderr);
    }
    // The command line override is checked too.
    let cfg = TempConfig::new("cpus-flag", "workers = 1");
    let n = (cpus + 1).to_string();
    let out = run(
        &["-f", cfg.0.to_str().unwrap(), "--check", "--workers", &n],
        Limit::None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("workers = {n}")));
}

#[test]
fn tiny_memlock_is_refused_with_the_limit_needed() {
    let cfg = TempConfig::new("memlock", "workers = 1");
    let path = cfg.0.to_str().unwrap();
    // --check, and a normal start: both refuse before any executor starts
    // (without the check, glommio's workers would panic instead).
    for args in [&["-f", path, "--check"][..], &["-f", path][..]] {
        let out = run(args, Limit::Memlock(64 * 1024));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}; stderr:\n{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("ekilibri: error: RLIMIT_MEMLOCK"))
            .unwrap_or_else(|| panic!("{args:?}: no memlock error line in:\n{stderr}"));
        for needle in ["64 KiB", "512 KiB", "LimitMEMLOCK=infinity", "ulimit -l"] {
            assert!(line.contains(needle), "{needle:?} missing from: {line}");
        }
        assert_no_panic(&stderr);
    }
}

#[test]
fn memlock_at_glommio_floor_passes() {
    let cfg = TempConfig::new("memlock-floor", "workers = 1");
    let out = run(
        &["-f", cfg.0.to_str().unwrap(), "--check"],
        Limit::Memlock(512 * 1024),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(!stderr.contains("error:"), "{stderr}");
}

#[test]
fn low_nofile_is_a_warning_with_limitnofile_advice() {
    let cfg = TempConfig::new("nofile", "workers = 1\npool_size = 8");
    let out = run(
        &["-f", cfg.0.to_str().unwrap(), "--check"],
        Limit::Nofile(64),
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning only; stderr:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ekilibri: warning: RLIMIT_NOFILE is 64"))
        .unwrap_or_else(|| panic!("no RLIMIT_NOFILE warning in:\n{stderr}"));
    // 1 x (8 x 1 + 1024) + 2 x 8 + 64
    for needle in ["1112", "LimitNOFILE=", "ulimit -n"] {
        assert!(line.contains(needle), "{needle:?} missing from: {line}");
    }
    assert!(
        text(&out.stdout).contains(": ok: "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn version_prints_the_version_and_git_revision() {
    let out = run(&["--version"], Limit::None);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    let line = stdout.trim();
    let expected_prefix = format!("ekilibri {} (", env!("CARGO_PKG_VERSION"));
    let rev = line
        .strip_prefix(&expected_prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("expected `{expected_prefix}REV)`, got {line:?}"));
    let rev = rev.strip_prefix("git ").unwrap_or(rev);
    assert!(
        rev.len() >= 7 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a git revision: {rev:?} in {line:?}"
    );
    // The revision names a commit of this repository.
    let git = Command::new("git")
        .args(["cat-file", "-t", rev])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    assert_eq!(
        text(&git.stdout).trim(),
        "commit",
        "{rev} is not a commit here: {}",
        text(&git.stderr)
    );
}
