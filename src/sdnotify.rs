//! systemd notifications (`sd_notify(3)`: readiness, reloads, status,
//! watchdog), without libsystemd.
//!
//! With `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET`
//! (a path, or an abstract name written with a leading `@`) and waits for
//! `READY=1` before it considers the service started. Outside systemd the
//! variable is unset and every call here does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;

use tracing::debug;

/// The service is up: every worker is accepting.
pub const READY: &str = "READY=1";
/// The service is shutting down (draining).
pub const STOPPING: &str = "STOPPING=1";
/// The service is reloading its configuration; send [`READY`] when done.
pub const RELOADING: &str = "RELOADING=1";

/// The systemd watchdog period (`WatchdogSec=`), when systemd asked this
/// process for keep-alives: `WATCHDOG_USEC` is set and `WATCHDOG_PID`, if
/// set, is our pid.
pub fn watchdog_period() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// Sends `state` (one or more `KEY=value` lines) to `$NOTIFY_SOCKET`.
/// A no-op when the variable is unset; failures are logged at debug level
/// and otherwise ignored, like `sd_notify(0, state)`.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Some(socket) = socket.to_str() else {
        debug!("NOTIFY_SOCKET is not valid UTF-8; not notifying systemd");
        return;
    };
    if let Err(e) = notify_to(socket, state) {
        debug!(socket, state, "cannot notify systemd: {e}");
    }
}

/// Tells systemd the service is ready ([`READY`]).
pub fn ready() {
    notify(READY);
}

/// Tells systemd the service is stopping ([`STOPPING`]).
pub fn stopping() {
    notify(STOPPING);
}

/// Tells systemd a reload started ([`RELOADING`] with the `MONOTONIC_USEC`
/// timestamp systemd 253+ requires for `Type=notify-reload`). Call
/// [`ready`] when the reload is done.
pub fn reloading() {
    notify(&format!("{RELOADING}\nMONOTONIC_USEC={}", monotonic_usec()));
}

/// Tells systemd a one-line status (`STATUS=`, shown by `systemctl
/// status`), such as why a reload was refused.
pub fn status(text: &str) {
    notify(&status_line(text));
}

/// `STATUS=text` with line breaks turned into spaces (a newline would start
/// another assignment).
fn status_line(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

/// Sends `state` to the datagram socket `socket`: a filesystem path, or an
/// abstract socket name when it starts with `@`.
pub fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let sent = if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?
    } else if socket.starts_with('/') {
        sock.send_to(state.as_bytes(), socket)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "NOTIFY_SOCKET `{socket}` is neither an absolute path nor an abstract name (@...)"
            ),
        ));
    };
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to NOTIFY_SOCKET",
        ));
    }
    Ok(())
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("ekilibri-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), READY).unwrap();
        assert_eq!(recv(&server), "READY=1");
        notify_to(path.to_str().unwrap(), STOPPING).unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ekilibri-sdnotify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), RELOADING).unwrap();
        assert_eq!(recv(&server), "RELOADING=1");
    }

    #[test]
    fn status_is_one_assignment() {
        assert_eq!(
            status_line("reload refused: `ring_depth`\nchanged"),
            "STATUS=reload refused: `ring_depth` changed"
        );
    }

    #[test]
    fn rejects_relative_socket_names() {
        let e = notify_to("relative/path", READY).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn missing_socket_is_an_error_not_a_panic() {
        assert!(notify_to("/nonexistent/ekilibri/notify.sock", READY).is_err());
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_usec() > a);
    }
}
