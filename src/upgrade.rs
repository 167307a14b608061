//! Binary upgrade without refusing a connection (SIGUSR2, nginx's signal).
//!
//! The running process keeps a duplicate of every listening socket (each
//! worker's `SO_REUSEPORT` socket and the admin socket). On SIGUSR2 it
//! starts the binary at the same path with the same arguments, passing
//! those descriptors (close-on-exec cleared, numbers in the
//! `EKILIBRI_UPGRADE` environment variable) and the write end of a pipe.
//! The new process validates its configuration, binds nothing, starts its
//! workers on the inherited sockets and writes `ready` to the pipe; only
//! then does the old one stop accepting and drain (each in-flight or next
//! request on a kept-alive connection is answered with `Connection: close`),
//! and exit 0. The sockets are the same kernel objects in both processes,
//! so connections queued on them are accepted by the new process: none is
//! refused or reset. If the new process fails (bad configuration, crash,
//! not ready within [`READY_TIMEOUT`]), the old one logs why, stops it, and
//! keeps serving; another SIGUSR2 may try again.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that tells a process it takes over from another:
/// `listen=FD,FD,...;admin=FD;ready=FD` (`admin=` may be empty).
pub const ENV: &str = "EKILIBRI_UPGRADE";
/// How long the new process may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Sockets and the readiness pipe handed over by the previous process.
#[derive(Debug)]
pub struct Inherited {
    /// One listening socket per worker, in worker order.
    pub listeners: Vec<OwnedFd>,
    /// The admin listening socket, when the previous process had one.
    pub admin: Option<OwnedFd>,
    ready: Option<OwnedFd>,
}

fn parse_fds(list: &str) -> Result<Vec<RawFd>, String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<RawFd>()
                .map_err(|_| format!("bad descriptor `{s}`"))
        })
        .collect()
}

/// True when `fd` is a listening TCP socket.
fn is_listening_socket(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `v`; `len` says so.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && v == 1
}

/// Takes ownership of a descriptor named in the environment, marking it
/// close-on-exec again so it is not leaked to anything this process starts.
fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: the previous process opened `fd` for us and nothing else in
    // this process owns it (it was named only in ENV, read once).
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        OwnedFd::from_raw_fd(fd)
    }
}

/// The hand-over this process was started with, if any (read once: the
/// variable is removed so nothing this process starts inherits it).
pub fn take_inherited() -> Result<Option<Inherited>, String> {
    let Some(spec) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    // SAFETY: called at startup from the main thread, before any other
    // thread that could read the environment is started.
    unsafe { std::env::remove_var(ENV) };
    let spec = spec
        .into_string()
        .map_err(|_| format!("{ENV} is not valid UTF-8"))?;
    let (mut listen, mut admin, mut ready) = (Vec::new(), None, None);
    for part in spec.split(';') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{ENV}: `{part}` is not key=value"))?;
        match key {
            "listen" => listen = parse_fds(value)?,
            "admin" => admin = parse_fds(value)?.first().copied(),
            "ready" => ready = parse_fds(value)?.first().copied(),
            _ => return Err(format!("{ENV}: unknown key `{key}`")),
        }
    }
    if listen.is_empty() {
        return Err(format!("{ENV}: no listening sockets"));
    }
    for &fd in listen.iter().chain(admin.iter()) {
        if !is_listening_socket(fd) {
            return Err(format!("{ENV}: descriptor {fd} is not a listening socket"));
        }
    }
    Ok(Some(Inherited {
        listeners: listen.into_iter().map(adopt).collect(),
        admin: admin.map(adopt),
        ready: ready.map(adopt),
    }))
}

impl Inherited {
    /// Tells the previous process this one serves (it then drains and
    /// exits).
    pub fn announce_ready(&mut self) {
        if let Some(fd) = self.ready.take() {
            let mut f = std::fs::File::from(fd);
            let _ = f.write_all(b"ready\n");
        }
    }
}

/// What the running process needs to start its successor.
pub struct Handover {
    exe: PathBuf,
    args: Vec<OsString>,
    listeners: Vec<OwnedFd>,
    admin: Option<OwnedFd>,
}

impl Handover {
    /// Keeps duplicates of the listening sockets and the command line.
    pub fn new(listeners: &[OwnedFd], admin: Option<&OwnedFd>) -> std::io::Result<Self> {
        Ok(Handover {
            // The path as started: a package upgrade replaces the file there.
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
            listeners: listeners
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<std::io::Result<_>>()?,
            admin: admin.map(OwnedFd::try_clone).transpose()?,
        })
    }

    /// The binary that SIGUSR2 starts.
    pub fn exe(&self) -> &std::path::Path {
        &self.exe
    }

    /// Starts the new process and waits until it reports ready; its pid.
    /// On failure the new process is stopped and the reason returned.
    pub fn start_successor(&self, timeout: Duration) -> Result<u32, String> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills both descriptors on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let listen: Vec<RawFd> = self.listeners.iter().map(AsRawFd::as_raw_fd).collect();
        let admin = self.admin.as_ref().map(AsRawFd::as_raw_fd);
        let ready = wr.as_raw_fd();
        let spec = format!(
            "listen={};admin={};ready={ready}",
            listen
                .iter()
                .map(RawFd::to_string)
                .collect::<Vec<_>>()
                .join(","),
            admin.map(|a| a.to_string()).unwrap_or_default()
        );
        let mut inherit: Vec<RawFd> = listen.clone();
        inherit.extend(admin);
        inherit.push(ready);
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args).env(ENV, spec).stdin(Stdio::null());
        // SAFETY: only async-signal-safe fcntl calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        drop(wr);
        match wait_ready(&mut child, rd, timeout) {
            Ok(()) => Ok(child.id()),
            Err(why) => {
                stop(&mut child);
                Err(why)
            }
        }
    }
}

/// Reads the pipe until `ready`, the child's exit, or `timeout`.
fn wait_ready(child: &mut Child, rd: OwnedFd, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut pipe = std::fs::File::from(rd);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the new process did not report ready within {timeout:?}"
            ));
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(200) as libc::c_int;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            let mut buf = [0u8; 64];
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // The child closed the pipe without saying ready.
                    let status = child
                        .wait_timeout_ms(2000)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "still running".into());
                    return Err(format!(
                        "the new process stopped before it was ready ({status})"
                    ));
                }
                Ok(k) => {
                    got.extend_from_slice(&buf[..k]);
                    if got.starts_with(b"ready") {
                        return Ok(());
                    }
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new process exited before it was ready ({status})"
            ));
        }
    }
}

trait WaitTimeout {
    fn wait_timeout_ms(&mut self, ms: u64) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout_ms(&mut self, ms: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            if let Ok(Some(s)) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops a failed successor: SIGTERM, then SIGKILL after 5 s.
fn stop(child: &mut Child) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if child.wait_timeout_ms(5000).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_lists() {
        assert_eq!(parse_fds("3,4,5"), Ok(vec![3, 4, 5]));
        assert_eq!(parse_fds(""), Ok(vec![]));
        assert!(parse_fds("3,x").is_err());
    }

    #[test]
    fn only_listening_sockets_are_taken() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_listening_socket(l.as_raw_fd()));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_listening_socket(f.as_raw_fd()));
    }
}
