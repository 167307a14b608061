//! Checks that the host can run the balancer, before any executor starts.
//!
//! glommio fails late and obscurely when the environment is wrong: a worker
//! thread panics, or the kernel returns `EPERM` from a ring setup deep inside
//! an executor. [`check`] looks at the same things up front and turns each
//! problem into one line that says what is wrong and how to fix it:
//!
//! - the kernel release (glommio needs Linux 5.8 or newer);
//! - `kernel.io_uring_disabled` (Linux 6.6+), and a real `io_uring_setup(2)`
//!   probe, which catches seccomp filters in containers;
//! - `RLIMIT_MEMLOCK` against glommio's 512 KiB floor and the memory it pins
//!   to register its I/O buffers;
//! - `RLIMIT_NOFILE` against what the configured pools and clients may use;
//! - the CPUs this process may run on against `workers`.
//!
//! Gathering the facts ([`Facts::gather`]) is separate from judging them
//! ([`evaluate`]), so the judgement is a pure function the unit tests drive.

use std::fmt;

use crate::config::Config;

/// Oldest kernel glommio 0.9 supports.
pub const MIN_KERNEL: KernelVersion = KernelVersion {
    major: 5,
    minor: 8,
    patch: 0,
};

/// glommio 0.9 refuses to create an executor when `RLIMIT_MEMLOCK` is below
/// this (`Reactor::new`). Measured with the real binary under
/// `prlimit --memlock=N:N`: it starts at 512 KiB and every worker panics at
/// 511 KiB, for 1 or 2 workers, as root and as an unprivileged user. The
/// floor is per process, not per executor.
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// Locked memory one executor needs when the process lacks `CAP_IPC_LOCK`:
/// glommio registers its I/O buffer arena (the runtime asks for 64 KiB,
/// `IO_MEMORY`) with each of its three rings, 192 KiB per executor shown
/// as `VmPin` (measured: 576 KiB for 2 workers + the control executor,
/// `VmLck` 0), and ring memory is charged on top. Measured unprivileged on
/// Linux 6.18: 2 executors start clean at 512 KiB, 3 need 736 KiB (704 KiB
/// skips one registration; 512 KiB left a worker unable to start).
pub const MEMLOCK_PER_EXECUTOR: u64 = 256 * 1024;

/// File descriptors kept for client connections per worker in the
/// `RLIMIT_NOFILE` estimate (each may also hold a backend connection that is
/// not yet back in the idle pool).
pub const CLIENT_FDS_PER_WORKER: u64 = 1024;

/// Descriptors per executor besides connections: three rings, an eventfd,
/// a listen socket, with room to spare (measured: 5 per worker).
pub const FDS_PER_EXECUTOR: u64 = 8;

/// Descriptors for the rest of the process: stdio, logs, the admin listener,
/// health checks in flight.
pub const BASE_FDS: u64 = 64;

/// Linux capability bits (`include/uapi/linux/capability.h`).
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;

/// The outcome of the checks: one line per problem.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Problems that stop the balancer from running: it refuses to start.
    pub errors: Vec<String>,
    /// Problems that degrade it: logged, the balancer starts anyway.
    pub warnings: Vec<String>,
}

impl Report {
    /// True when there is no error (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A kernel version, as `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch level (0 when the release has none).
    pub patch: u32,
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses a `uname -r` release such as `5.15.0-91-generic`, `6.1.0+` or
/// `4.19`: the leading `major.minor[.patch]`, each part its leading digits.
pub fn parse_kernel_release(release: &str) -> Option<KernelVersion> {
    fn leading_number(s: &str) -> Option<u32> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    }
    let mut parts = release.trim().splitn(3, '.');
    let major = leading_number(parts.next()?)?;
    let minor_part = parts.next()?;
    let minor = leading_number(minor_part)?;
    // "5.10-rc1" has no patch; "5.10.3-foo" has 3.
    let patch = if minor_part.chars().all(|c| c.is_ascii_digit()) {
        parts.next().and_then(leading_number).unwrap_or(0)
    } else {
        0
    };
    Some(KernelVersion {
        major,
        minor,
        patch,
    })
}

/// What the configuration asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Request workers (one pinned executor each).
    pub workers: usize,
    /// Backends.
    pub servers: usize,
    /// Idle connections kept per backend per worker (the largest of the
    /// pools', so the estimate is an upper bound).
    pub pool_size: usize,
}

impl Needs {
    /// The parts of `config` the checks look at.
    pub fn from_config(config: &Config) -> Needs {
        Needs {
            workers: config.workers,
            servers: config.pools.iter().map(|p| p.servers.len()).sum(),
            pool_size: config.pools.iter().map(|p| p.pool_size).max().unwrap_or(0),
        }
    }

    /// glommio executors: the workers plus the health executor.
    pub fn executors(&self) -> u64 {
        self.workers as u64 + 1
    }

    /// Estimated file descriptors: per worker its idle pool
    /// (`pool_size x servers`) and [`CLIENT_FDS_PER_WORKER`], plus
    /// [`FDS_PER_EXECUTOR`] per executor and [`BASE_FDS`].
    pub fn fd_estimate(&self) -> u64 {
        let per_worker = (self.pool_size as u64)
            .saturating_mul(self.servers as u64)
            .saturating_add(CLIENT_FDS_PER_WORKER);
        (self.workers as u64)
            .saturating_mul(per_worker)
            .saturating_add(self.spare_fds())
    }

    /// The part of [`Needs::fd_estimate`] that is not connections.
    pub fn spare_fds(&self) -> u64 {
        self.executors() * FDS_PER_EXECUTOR + BASE_FDS
    }

    /// `RLIMIT_MEMLOCK` (bytes) under which glommio can register its I/O
    /// buffers for every executor, when the process lacks `CAP_IPC_LOCK`.
    pub fn memlock_for_buffers(&self) -> u64 {
        self.executors().saturating_mul(MEMLOCK_PER_EXECUTOR)
    }
}

/// The host facts the checks judge. `None` means unknown or not applicable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `uname` release string.
    pub kernel_release: Option<String>,
    /// `/proc/sys/kernel/io_uring_disabled` (absent before Linux 6.6).
    pub io_uring_disabled: Option<u32>,
    /// `/proc/sys/kernel/io_uring_group` (-1: no group).
    pub io_uring_group: Option<i64>,
    /// The process's real, effective or a supplementary group is `io_uring_group`.
    pub in_io_uring_group: bool,
    /// `CAP_SYS_ADMIN` is in the effective set.
    pub cap_sys_admin: bool,
    /// `CAP_IPC_LOCK` is in the effective set (locked memory is not charged).
    pub cap_ipc_lock: bool,
    /// Result of a real `io_uring_setup(2)`: `Err(errno)` on failure.
    pub io_uring_probe: Result<(), i32>,
    /// Soft `RLIMIT_MEMLOCK` in bytes; `None` is unlimited.
    pub memlock: Option<u64>,
    /// Soft `RLIMIT_NOFILE`; `None` is unlimited.
    pub nofile: Option<u64>,
    /// Hard `RLIMIT_NOFILE`; `None` is unlimited.
    pub nofile_hard: Option<u64>,
    /// CPUs in this process's affinity mask.
    pub cpus: Option<usize>,
}

impl Facts {
    /// Reads the facts from the running process and kernel.
    pub fn gather() -> Facts {
        let caps = effective_capabilities();
        let group = read_proc_number("/proc/sys/kernel/io_uring_group");
        // Soft and hard limits, `None` for unlimited. A closure so the
        // resource type is whatever this libc's getrlimit takes.
        let rlimit = |resource| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we pass.
            if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
                return (None, None);
            }
            let f = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
            (f(lim.rlim_cur), f(lim.rlim_max))
        };
        let (memlock, _) = rlimit(libc::RLIMIT_MEMLOCK);
        let (nofile, nofile_hard) = rlimit(libc::RLIMIT_NOFILE);
        Facts {
            kernel_release: kernel_release(),
            io_uring_disabled: read_proc_number("/proc/sys/kernel/io_uring_disabled")
                .and_then(|v| u32::try_from(v).ok()),
            io_uring_group: group,
            in_io_uring_group: group
                .and_then(|g| libc::gid_t::try_from(g).ok())
                .is_some_and(in_group),
            cap_sys_admin: caps.is_some_and(|c| c & (1 << CAP_SYS_ADMIN) != 0),
            cap_ipc_lock: caps.is_some_and(|c| c & (1 << CAP_IPC_LOCK) != 0),
            io_uring_probe: probe_io_uring(),
            memlock,
            nofile,
            nofile_hard,
            cpus: core_affinity::get_core_ids().map(|ids| ids.len()),
        }
    }
}

/// Runs every check for `config` on this host.
pub fn check(config: &Config) -> Report {
    evaluate(&Needs::from_config(config), &Facts::gather())
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// Judges `facts` against `needs`. Pure: the unit tests call it directly.
pub fn evaluate(needs: &Needs, facts: &Facts) -> Report {
    let mut r = Report::default();

    match facts.kernel_release.as_deref() {
        None => r
            .warnings
            .push(format!("cannot read the kernel release (uname); ekilibri needs Linux {MIN_KERNEL} or newer")),
        Some(rel) => match parse_kernel_release(rel) {
            None => r.warnings.push(format!(
                "cannot parse the kernel release `{rel}`; ekilibri needs Linux {MIN_KERNEL} or newer"
            )),
            Some(v) if v < MIN_KERNEL => r.errors.push(format!(
                "kernel {rel} is too old: ekilibri needs Linux {}.{} or newer for the io_uring features glommio uses; upgrade the kernel",
                MIN_KERNEL.major, MIN_KERNEL.minor
            )),
            Some(_) => {}
        },
    }

    let mut io_uring_blocked = false;
    match facts.io_uring_disabled {
        Some(2) => {
            io_uring_blocked = true;
            r.errors.push(
                "io_uring is disabled for every process (sysctl kernel.io_uring_disabled = 2); \
                 enable it with `sysctl -w kernel.io_uring_disabled=0` and persist that in /etc/sysctl.d/"
                    .into(),
            );
        }
        Some(1) if !facts.cap_sys_admin && !facts.in_io_uring_group => {
            io_uring_blocked = true;
            let group = match facts.io_uring_group {
                Some(g) if g >= 0 => format!("group {g} (kernel.io_uring_group)"),
                _ => "the group named by kernel.io_uring_group (none is set: -1)".into(),
            };
            r.errors.push(format!(
                "io_uring is restricted (sysctl kernel.io_uring_disabled = 1): only processes with CAP_SYS_ADMIN \
                 or in {group} may create rings, and this process has neither; add the service user to that group \
                 (systemd SupplementaryGroups=, after `sysctl -w kernel.io_uring_group=GID`) or set \
                 `sysctl -w kernel.io_uring_disabled=0`"
            ));
        }
        _ => {}
    }
    if let Err(errno) = facts.io_uring_probe
        && !io_uring_blocked
    {
        r.errors.push(probe_message(errno));
    }

    match facts.memlock {
        Some(limit) if limit < GLOMMIO_MIN_MEMLOCK => r.errors.push(format!(
            "RLIMIT_MEMLOCK is {} KiB, below the {} KiB glommio needs to create its io_uring executors \
             (it refuses to start); set LimitMEMLOCK=infinity (systemd), `ulimit -l unlimited` or a memlock \
             line in /etc/security/limits.conf, or at least {} KiB so it can also register its I/O buffers \
             for {} executors",
            kib(limit),
            kib(GLOMMIO_MIN_MEMLOCK),
            kib(needs.memlock_for_buffers().max(GLOMMIO_MIN_MEMLOCK)),
            needs.executors()
        )),
        Some(limit) if !facts.cap_ipc_lock && limit < needs.memlock_for_buffers() => {
            r.warnings.push(format!(
                "RLIMIT_MEMLOCK is {} KiB, below the about {} KiB that {} executors lock (each registers its 64 KiB \
                 I/O buffer with its 3 rings, plus ring memory); glommio then logs `registering buffers ... Skipping` \
                 and runs without some registered buffers (the proxy does not need them), and far below it an executor \
                 may fail to start; set LimitMEMLOCK=infinity (systemd) or `ulimit -l unlimited` for a clean start",
                kib(limit),
                kib(needs.memlock_for_buffers()),
                needs.executors()
            ))
        }
        _ => {}
    }

    let need_fds = needs.fd_estimate();
    if let Some(soft) = facts.nofile
        && soft < need_fds
    {
        let hard = match facts.nofile_hard {
            Some(h) => h.to_string(),
            None => "unlimited".into(),
        };
        r.warnings.push(format!(
            "RLIMIT_NOFILE is {soft} but this configuration may need about {need_fds} file descriptors \
             ({} workers x ({} pooled connections x {} servers + {CLIENT_FDS_PER_WORKER} client connections) \
             + {} spare); beyond it clients get 503 (max_client_connections) and connects fail with EMFILE; \
             raise it: systemd LimitNOFILE=1048576, shell `ulimit -n {need_fds}` (hard limit {hard})",
            needs.workers,
            needs.pool_size,
            needs.servers,
            needs.spare_fds(),
        ));
    }

    match facts.cpus {
        None => r.warnings.push(format!(
            "cannot read this process's CPU affinity (sched_getaffinity); make sure at least {} CPUs are available for the {} workers",
            needs.workers, needs.workers
        )),
        Some(cpus) if needs.workers > cpus => r.errors.push(format!(
            "workers = {} but this process may run on only {cpus} CPUs (sched_getaffinity); thread-per-core pins one \
             worker per CPU: set workers = {cpus} or fewer (or --workers {cpus}), or allow more CPUs \
             (taskset, systemd CPUAffinity=, the cgroup cpuset)",
            needs.workers
        )),
        Some(_) => {}
    }

    r
}

/// The one-line explanation of a failed `io_uring_setup(2)`.
fn probe_message(errno: i32) -> String {
    match errno {
        libc::ENOSYS => "io_uring_setup(2) failed with ENOSYS: the kernel is built without io_uring \
             (CONFIG_IO_URING) or a seccomp filter hides it; use a kernel with io_uring, or allow io_uring_setup, \
             io_uring_enter and io_uring_register in the container's seccomp profile"
            .into(),
        libc::EPERM => "io_uring_setup(2) failed with EPERM: io_uring is blocked, most likely by a seccomp filter \
             (the default Docker, containerd and Podman profiles deny it) or a security module; run with a seccomp \
             profile that allows io_uring_setup, io_uring_enter and io_uring_register \
             (e.g. docker run --security-opt seccomp=PROFILE.json)"
            .into(),
        libc::ENOMEM => "io_uring_setup(2) failed with ENOMEM: the ring could not be allocated; before Linux 5.12 \
             ring memory counts against RLIMIT_MEMLOCK: set LimitMEMLOCK=infinity (systemd) or `ulimit -l unlimited`"
            .into(),
        e => format!(
            "io_uring_setup(2) failed: {}; ekilibri cannot run without io_uring",
            std::io::Error::from_raw_os_error(e)
        ),
    }
}

/// `struct io_uring_params` is 120 bytes (`include/uapi/linux/io_uring.h`);
/// a zeroed one asks for a default ring.
#[repr(C, align(8))]
struct IoUringParams([u8; 120]);

/// Creates and closes a one-entry ring: the only reliable way to learn
/// whether seccomp, a security module or a sysctl forbids io_uring.
fn probe_io_uring() -> Result<(), i32> {
    let mut params = IoUringParams([0; 120]);
    // SAFETY: io_uring_setup reads and writes exactly one io_uring_params,
    // which `params` is (same size, 8-byte aligned, zeroed).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1 as libc::c_uint,
            &mut params as *mut IoUringParams,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    // SAFETY: `fd` is the ring descriptor just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn kernel_release() -> Option<String> {
    // SAFETY: uname fills the zeroed struct we pass.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates `release`, which lives as long as `u`.
    let c = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(c.to_string_lossy().into_owned())
}

fn read_proc_number(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The effective capability set (`CapEff` in /proc/self/status).
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

fn in_group(gid: libc::gid_t) -> bool {
    // SAFETY: getgid/getegid cannot fail; getgroups writes at most `n` ids.
    unsafe {
        if libc::getgid() == gid || libc::getegid() == gid {
            return true;
        }
        let n = libc::getgroups(0, std::ptr::null_mut());
        if n <= 0 {
            return false;
        }
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let n = libc::getgroups(n, groups.as_mut_ptr());
        n > 0 && groups[..n as usize].contains(&gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion {
            major,
            minor,
            patch,
        }
    }

    /// A host where every check passes for [`needs`].
    fn good_host() -> Facts {
        Facts {
            kernel_release: Some("6.1.0-18-amd64".into()),
            io_uring_disabled: Some(0),
            io_uring_group: Some(-1),
            in_io_uring_group: false,
            cap_sys_admin: false,
            cap_ipc_lock: false,
            io_uring_probe: Ok(()),
            memlock: None,
            nofile: Some(1 << 20),
            nofile_hard: Some(1 << 20),
            cpus: Some(4),
        }
    }

    fn needs() -> Needs {
        Needs {
            workers: 2,
            servers: 3,
            pool_size: 64,
        }
    }

    fn one_error(r: &Report) -> &str {
        assert_eq!(r.errors.len(), 1, "expected one error: {r:?}");
        &r.errors[0]
    }

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_kernel_release("5.15.0-91-generic"), Some(v(5, 15, 0)));
        assert_eq!(parse_kernel_release("6.18.44-fc-v657"), Some(v(6, 18, 44)));
        assert_eq!(parse_kernel_release("6.1.0+"), Some(v(6, 1, 0)));
        assert_eq!(parse_kernel_release("4.19"), Some(v(4, 19, 0)));
        assert_eq!(parse_kernel_release("5.10-rc1"), Some(v(5, 10, 0)));
        assert_eq!(parse_kernel_release("5.8.0"), Some(v(5, 8, 0)));
        assert_eq!(
            parse_kernel_release(" 3.10.0-1160.el7.x86_64\n"),
            Some(v(3, 10, 0))
        );
        assert_eq!(parse_kernel_release(""), None);
        assert_eq!(parse_kernel_release("linux"), None);
        assert_eq!(parse_kernel_release("6"), None);
    }

    #[test]
    fn kernel_versions_compare_numerically() {
        assert!(v(5, 7, 19) < MIN_KERNEL);
        assert!(v(4, 19, 300) < MIN_KERNEL);
        assert!(v(5, 8, 0) >= MIN_KERNEL);
        assert!(v(5, 10, 0) > MIN_KERNEL, "10 > 8 numerically, not as text");
        assert!(v(6, 0, 0) > v(5, 19, 9));
    }

    #[test]
    fn old_kernel_is_an_error_naming_it() {
        let mut f = good_host();
        f.kernel_release = Some("5.4.0-150-generic".into());
        let r = evaluate(&needs(), &f);
        let e = one_error(&r);
        assert!(e.contains("5.4.0-150-generic") && e.contains("5.8"), "{e}");
        f.kernel_release = Some("5.8.0".into());
        assert!(evaluate(&needs(), &f).is_ok());
    }

    #[test]
    fn unparsable_kernel_is_a_warning() {
        let mut f = good_host();
        f.kernel_release = Some("weird".into());
        let r = evaluate(&needs(), &f);
        assert!(r.is_ok());
        assert!(r.warnings[0].contains("weird"), "{r:?}");
    }

    #[test]
    fn good_host_passes_cleanly() {
        assert_eq!(evaluate(&needs(), &good_host()), Report::default());
    }

    #[test]
    fn fd_estimate_counts_pools_clients_and_spare() {
        // 2 x (64 x 3 + 1024) + 3 x 8 + 64
        assert_eq!(needs().fd_estimate(), 2 * (192 + 1024) + 24 + 64);
        let one = Needs {
            workers: 1,
            servers: 1,
            pool_size: 1,
        };
        assert_eq!(one.fd_estimate(), 1025 + 16 + 64);
        let huge = Needs {
            workers: 1024,
            servers: usize::MAX,
            pool_size: usize::MAX,
        };
        assert_eq!(
            huge.fd_estimate(),
            u64::MAX,
            "saturates instead of overflowing"
        );
    }

    #[test]
    fn low_nofile_warns_with_the_number_and_the_fix() {
        let mut f = good_host();
        f.nofile = Some(64);
        f.nofile_hard = Some(4096);
        let r = evaluate(&needs(), &f);
        assert!(r.is_ok());
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        let w = &r.warnings[0];
        let need = needs().fd_estimate().to_string();
        for s in [
            "RLIMIT_NOFILE is 64",
            &need,
            "LimitNOFILE=",
            "ulimit -n",
            "4096",
            "+ 88 spare",
        ] {
            assert!(w.contains(s), "{s:?} missing from {w}");
        }
        f.nofile = Some(needs().fd_estimate());
        assert!(evaluate(&needs(), &f).warnings.is_empty());
        f.nofile = None;
        assert!(evaluate(&needs(), &f).warnings.is_empty());
    }

    #[test]
    fn memlock_below_glommio_floor_is_an_error() {
        let mut f = good_host();
        f.memlock = Some(64 * 1024);
        f.cap_ipc_lock = true;
        let r = evaluate(&needs(), &f);
        let e = one_error(&r);
        for s in [
            "RLIMIT_MEMLOCK is 64 KiB",
            "512 KiB",
            "LimitMEMLOCK=infinity",
            "768 KiB",
            "3 executors",
        ] {
            assert!(e.contains(s), "{s:?} missing from {e}");
        }
        f.memlock = Some(GLOMMIO_MIN_MEMLOCK - 1);
        assert!(!evaluate(&needs(), &f).is_ok());
        f.memlock = Some(GLOMMIO_MIN_MEMLOCK);
        assert_eq!(
            evaluate(&needs(), &f),
            Report::default(),
            "CAP_IPC_LOCK: floor is enough"
        );
    }

    #[test]
    fn memlock_too_low_for_buffers_warns_without_cap_ipc_lock() {
        let mut f = good_host();
        f.memlock = Some(640 * 1024);
        let r = evaluate(&needs(), &f);
        assert!(r.is_ok());
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert!(r.warnings[0].contains("640 KiB") && r.warnings[0].contains("768 KiB"));
        // The common 8 MiB default is plenty: no warning.
        f.memlock = Some(8 << 20);
        assert!(evaluate(&needs(), &f).warnings.is_empty());
        f.memlock = Some(needs().memlock_for_buffers());
        assert!(evaluate(&needs(), &f).warnings.is_empty());
    }

    #[test]
    fn io_uring_disabled_2_is_an_error_and_hides_the_probe() {
        let mut f = good_host();
        f.io_uring_disabled = Some(2);
        f.io_uring_probe = Err(libc::EPERM);
        f.cap_sys_admin = true;
        let e = one_error(&evaluate(&needs(), &f)).to_string();
        assert!(
            e.contains("io_uring_disabled = 2") && e.contains("sysctl -w"),
            "{e}"
        );
    }

    #[test]
    fn io_uring_disabled_1_depends_on_privilege_or_group() {
        let mut f = good_host();
        f.io_uring_disabled = Some(1);
        f.io_uring_probe = Err(libc::EPERM);
        let e = one_error(&evaluate(&needs(), &f)).to_string();
        assert!(
            e.contains("io_uring_disabled = 1") && e.contains("none is set"),
            "{e}"
        );
        f.io_uring_group = Some(990);
        let e = one_error(&evaluate(&needs(), &f)).to_string();
        assert!(
            e.contains("group 990") && e.contains("SupplementaryGroups="),
            "{e}"
        );
        // Allowed: the setting is not the problem, the probe decides.
        f.in_io_uring_group = true;
        f.io_uring_probe = Ok(());
        assert!(evaluate(&needs(), &f).is_ok());
        f.in_io_uring_group = false;
        f.cap_sys_admin = true;
        assert!(evaluate(&needs(), &f).is_ok());
    }

    #[test]
    fn probe_failures_name_the_cause() {
        for (errno, needle) in [
            (libc::ENOSYS, "ENOSYS"),
            (libc::EPERM, "seccomp"),
            (libc::ENOMEM, "RLIMIT_MEMLOCK"),
            (libc::EINVAL, "Invalid argument"),
        ] {
            let mut f = good_host();
            f.io_uring_probe = Err(errno);
            let e = one_error(&evaluate(&needs(), &f)).to_string();
            assert!(e.contains(needle) && e.contains("io_uring_setup"), "{e}");
        }
    }

    #[test]
    fn more_workers_than_cpus_is_an_error_naming_both() {
        let mut f = good_host();
        f.cpus = Some(2);
        let n = Needs {
            workers: 64,
            ..needs()
        };
        let e = one_error(&evaluate(&n, &f)).to_string();
        assert!(
            e.contains("workers = 64") && e.contains("only 2 CPUs"),
            "{e}"
        );
        f.cpus = Some(64);
        assert!(evaluate(&n, &f).is_ok());
        f.cpus = None;
        assert!(evaluate(&n, &f).is_ok());
    }

    #[test]
    fn cap_eff_parses() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).unwrap();
        assert!(caps & (1 << CAP_IPC_LOCK) != 0 && caps & (1 << CAP_SYS_ADMIN) != 0);
        assert_eq!(
            parse_cap_eff("CapEff:\t0000000000004000\n"),
            Some(1 << CAP_IPC_LOCK)
        );
        assert_eq!(parse_cap_eff("nothing"), None);
    }

    #[test]
    fn gather_reads_this_host() {
        // Smoke test on the real host: every fact readable on Linux is read.
        let f = Facts::gather();
        assert!(
            f.kernel_release
                .as_deref()
                .and_then(parse_kernel_release)
                .is_some(),
            "{f:?}"
        );
        assert!(f.cpus.is_some_and(|n| n >= 1), "{f:?}");
        assert!(f.nofile.is_none_or(|n| n > 0), "{f:?}");
    }
}
