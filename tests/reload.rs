//! Reloads never lie: every key is applied live or the reload is refused
//! naming it (`POST /reload` answers 400, SIGHUP logs it, systemd gets it as
//! `STATUS=`), access log changes apply to the next request, and
//! `/metrics` counts the outcomes. Real binaries over loopback.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Deadline of every poll in this file.
const WAIT: Duration = Duration::from_secs(10);

fn write_config(lb: &Balancer, cfg: &Config) {
    std::fs::write(&lb.config.path, cfg.to_toml()).expect("rewrite the config file");
}

/// `POST /reload`: the status and the JSON answer, once every worker
/// holds the outcome.
fn post_reload(admin: u16) -> (u16, Value) {
    let r = one_request(admin, "POST", "/reload", &[], b"");
    let v = json_of(&r);
    workers_caught_up(admin);
    (r.status, v)
}

/// Returns once every worker has applied what the control executor queued
/// before this call: a scrape travels the same ordered channel as a new
/// configuration, so a worker that answers it has applied that first.
fn workers_caught_up(admin: u16) {
    assert_eq!(http_get(admin, "/metrics").status, 200);
}

const SUCCESS: &str = "lb_config_reloads_total{result=\"success\"}";
const FAILURE: &str = "lb_config_reloads_total{result=\"failure\"}";
const LAST_OK: &str = "lb_config_last_reload_success_timestamp_seconds";

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

#[track_caller]
fn wait_line_with(path: &Path, needle: &str) -> String {
    poll_until(WAIT, || {
        lines_of(path).into_iter().find(|l| l.contains(needle))
    })
    .unwrap_or_else(|| {
        panic!(
            "no line with {needle:?} in {}: {:?}",
            path.display(),
            lines_of(path)
        )
    })
}

fn quoted(p: &Path) -> String {
    format!("\"{}\"", path_str(p))
}

#[test]
fn access_log_changes_apply_on_reload() {
    let a = spawn_backend();
    let first = TempFile {
        path: unique_temp_path(".log"),
    };
    let second = TempFile {
        path: unique_temp_path(".log"),
    };
    let off = Config::for_backends(std::slice::from_ref(&a))
        .with("access_log_path", &quoted(&first.path));
    let lb = spawn_balancer(&off, &[]);
    let admin = admin_port(&lb);
    assert_eq!(http_get(lb.port, "/while-off").status, 404);

    // Off -> json: the file is opened and the next request is logged.
    let json = off.clone().with("access_log", "\"json\"");
    write_config(&lb, &json);
    let (status, v) = post_reload(admin);
    assert_eq!(status, 200, "{v}");
    assert_eq!(http_get(lb.port, "/as-json").status, 404);
    let line = wait_line_with(&first.path, "/as-json");
    let v: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["request"], "GET /as-json HTTP/1.1");

    // Another path and another format, by SIGHUP this time.
    let combined = json
        .clone()
        .with("access_log", "\"combined\"")
        .with("access_log_path", &quoted(&second.path));
    write_config(&lb, &combined);
    lb.guard.signal("HUP");
    poll_until(WAIT, || (metric(admin, SUCCESS) == Some(2.0)).then_some(()))
        .expect("the SIGHUP reload was not counted");
    workers_caught_up(admin);
    assert_eq!(http_get(lb.port, "/as-combined").status, 404);
    let line = wait_line_with(&second.path, "/as-combined");
    assert!(
        line.starts_with("127.0.0.1 - - [") && line.contains("\"GET /as-combined HTTP/1.1\" 404 "),
        "{line}"
    );

    // Back off: nothing more is written anywhere.
    write_config(&lb, &off);
    assert_eq!(post_reload(admin).0, 200);
    assert_eq!(http_get(lb.port, "/off-again").status, 404);
    std::thread::sleep(Duration::from_millis(500));
    for p in [&first.path, &second.path] {
        let lines = lines_of(p);
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("/off-again") || l.contains("/while-off")),
            "{lines:?}"
        );
    }
    assert!(
        lines_of(&first.path)
            .iter()
            .all(|l| !l.contains("/as-combined"))
    );
}

#[test]
fn restart_only_keys_refuse_the_reload_naming_the_key() {
    let a = spawn_backend();
    let b = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&a));
    let lb = spawn_balancer(&cfg, &[]);
    let admin = admin_port(&lb);
    assert_eq!(metric(admin, SUCCESS), Some(0.0));
    assert_eq!(metric(admin, FAILURE), Some(0.0));
    let started = metric(admin, LAST_OK).expect("last reload timestamp");
    assert!(started > 1.0e9, "{started}");

    let mut failures = 0.0;
    for (key, value) in [
        ("listen_backlog", "128"),
        ("pin_workers", "false"),
        ("ring_depth", "256"),
        ("spin_before_park", "10"),
    ] {
        // A backend change rides along: it must not apply either.
        let changed = cfg
            .clone()
            .with(key, value)
            .with("servers", &servers_list(&[a.port, b.port]));
        write_config(&lb, &changed);
        let (status, v) = post_reload(admin);
        assert_eq!(status, 400, "{key}: {v}");
        assert_eq!(v["reloaded"], false, "{key}: {v}");
        let err = v["error"].as_str().unwrap_or("");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        failures += 1.0;
        assert_eq!(metric(admin, FAILURE), Some(failures), "{key}");

        // SIGHUP logs the same refusal.
        lb.guard.signal("HUP");
        let line = poll_until(WAIT, || {
            lb.stderr
                .snapshot()
                .into_iter()
                .map(|l| strip_ansi(&l))
                .filter(|l| l.contains("reload refused") && l.contains(&format!("`{key}`")))
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no SIGHUP refusal naming {key}:\n{}", lb.stderr.joined()));
        assert!(line.contains("restart"), "{line}");
        failures += 1.0;
        poll_until(WAIT, || {
            (metric(admin, FAILURE) == Some(failures)).then_some(())
        })
        .unwrap_or_else(|| panic!("{key}: the SIGHUP refusal was not counted"));
        for _ in 0..6 {
            assert_eq!(http_get(lb.port, "/").backend_port(), a.port, "{key}");
        }
    }
    assert_eq!(metric(admin, SUCCESS), Some(0.0));
    assert_eq!(metric(admin, LAST_OK), Some(started));

    // The original file reloads fine and moves the timestamp.
    std::thread::sleep(Duration::from_millis(20));
    write_config(&lb, &cfg);
    assert_eq!(post_reload(admin).0, 200);
    assert_eq!(metric(admin, SUCCESS), Some(1.0));
    assert!(metric(admin, LAST_OK).unwrap_or(0.0) > started);
}

#[test]
fn unopenable_access_log_path_refuses_the_reload() {
    let a = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&a));
    let lb = spawn_balancer(&cfg, &[]);
    let admin = admin_port(&lb);
    // A directory where the file should be: the file cannot be opened.
    let dir = unique_temp_path(".dir");
    std::fs::create_dir_all(&dir).unwrap();
    // A directory that does not exist: the file fails validation.
    let missing = "/nonexistent-ekilibri-dir/access.log";
    for (path, needle) in [
        (path_str(&dir), "cannot open"),
        (missing.to_string(), "does not exist"),
    ] {
        let broken = cfg
            .clone()
            .with("access_log", "\"json\"")
            .with("access_log_path", &format!("\"{path}\""));
        write_config(&lb, &broken);
        let (status, v) = post_reload(admin);
        assert_eq!(status, 400, "{v}");
        let err = v["error"].as_str().unwrap_or("");
        assert!(
            err.contains("`access_log_path`") && err.contains(needle),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(metric(admin, FAILURE), Some(2.0));
    // Still off: nothing on stdout.
    assert_eq!(http_get(lb.port, "/").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lb.stdout.snapshot().is_empty(),
        "{:?}",
        lb.stdout.snapshot()
    );
}

/// A refused SIGHUP reload tells systemd why (`STATUS=`) and ends the
/// reload with `READY=1`; an applied one says so too.
#[test]
fn sighup_sends_the_outcome_to_systemd_as_status() {
    let dir = unique_temp_path(".notify");
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1024];
    let mut recv = || -> String {
        match sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => format!("<nothing: {e}>"),
        }
    };
    let a = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&a)).with("admin_listen", "\"\"");
    let lb = spawn_balancer_with(
        &cfg.to_toml(),
        &[],
        &[("NOTIFY_SOCKET", path_str(&sock_path).as_str())],
        &[],
    );
    assert_eq!(recv(), "READY=1");

    write_config(&lb, &cfg.clone().with("ring_depth", "512"));
    lb.guard.signal("HUP");
    assert!(recv().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    let status = recv();
    assert!(
        status.starts_with("STATUS=reload refused") && status.contains("`ring_depth`"),
        "{status}"
    );
    assert!(!status.contains('\n'), "{status:?}");
    assert_eq!(recv(), "READY=1");

    write_config(&lb, &cfg);
    lb.guard.signal("HUP");
    assert!(recv().starts_with("RELOADING=1"));
    let status = recv();
    assert!(
        status.starts_with("STATUS=configuration reloaded"),
        "{status}"
    );
    assert_eq!(recv(), "READY=1");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests in flight to the only backend, from `/stats/detail`.
fn inflight(admin: u16) -> u64 {
    let v = json_of(&http_get(admin, "/stats/detail"));
    v[0]["inflight"].as_u64().unwrap_or(0)
}

/// Holds the only `max_connections` slot with a slow request and sends a
/// second one: its status (503 when no slot is free and nothing may queue).
fn second_while_one_is_busy(lb_port: u16, admin: u16) -> u16 {
    let slow = std::thread::spawn(move || http_get(lb_port, "/sleep?ms=1500").status);
    poll_until(WAIT, || (inflight(admin) == 1).then_some(()))
        .expect("the slow request never got in flight");
    let status = http_get(lb_port, "/").status;
    assert_eq!(slow.join().expect("slow request"), 200);
    status
}

#[test]
fn max_connections_change_applies_on_reload() {
    let a = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&a))
        .with("workers", "1")
        .with("max_connections", "1")
        .with("queue_size", "0");
    let lb = spawn_balancer(&cfg, &[]);
    let admin = admin_port(&lb);
    assert_eq!(second_while_one_is_busy(lb.port, admin), 503);
    write_config(&lb, &cfg.clone().with("max_connections", "2"));
    assert_eq!(post_reload(admin).0, 200);
    assert_eq!(
        second_while_one_is_busy(lb.port, admin),
        200,
        "max_connections = 2 after the reload still allowed one request"
    );
}
