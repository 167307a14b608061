//! What an operator meets around the proxy itself: the balancer refusing
//! its own addresses as backends (admin API, cluster entries), the
//! unauthenticated readiness check, HEAD and 405 on the admin API, the
//! shipped configuration and man page against the README, shell
//! completions, bind and `RUST_LOG` errors, and the locked-memory warning.
//!
//! Every test starts the real binary and talks over loopback sockets, or
//! reads the files the package installs.

mod common;

use common::etcd::Etcd;
use common::*;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A valid admin token (at least 16 printable characters).
const TOKEN: &str = "0123456789abcdef0123";
/// Deadline of every poll in this file.
const WAIT: Duration = Duration::from_secs(5);

/// A file of this repository.
fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// One admin call on a fresh connection, with the token when given.
fn admin(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Connection", "close")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    if body.is_empty() && !matches!(method, "GET" | "HEAD") {
        headers.push(("Content-Length", "0"));
    }
    one_request(port, method, path, &headers, body)
}

/// The `"error"` member of an admin error answer.
#[track_caller]
fn error_of(r: &Response) -> String {
    json_of(r)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error member in {:?}", r.body_str()))
        .to_string()
}

/// The addresses of every backend the admin API lists.
fn server_addresses(admin_port: u16, token: Option<&str>) -> BTreeSet<String> {
    let r = admin(admin_port, "GET", "/servers", token, b"");
    assert_eq!(r.status, 200, "{r:?}");
    json_of(&r)
        .as_array()
        .expect("GET /servers is an array")
        .iter()
        .map(|s| s["address"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Starts `ekilibri -f <toml>` whose listen line the common helper cannot
/// read (a wildcard listen address): waits until `admin` accepts.
fn spawn_on_fixed_ports(toml: &str, admin: u16) -> (ProcGuard, TempFile, TempFile) {
    let config = write_temp_file(toml, ".toml");
    let log = write_temp_file("", ".log");
    let err = std::fs::File::create(&log.path).expect("create the log file");
    let child = Command::new(BALANCER_BIN)
        .arg("-f")
        .arg(&config.path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn ekilibri");
    let mut guard = ProcGuard::new("ekilibri", child);
    let up = poll_until(READY_TIMEOUT, || {
        if let Some(status) = guard.try_wait() {
            panic!(
                "ekilibri exited ({status}):\n{}",
                std::fs::read_to_string(&log.path).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", admin))
            .ok()
            .map(|_| ())
    });
    assert!(
        up.is_some(),
        "admin port {admin} not open:\n{}",
        std::fs::read_to_string(&log.path).unwrap_or_default()
    );
    (guard, config, log)
}

// ---------------------------------------------------------------------------
// Issue 13 defect 11: its own addresses as backends
// ---------------------------------------------------------------------------

#[test]
fn admin_api_refuses_the_balancers_own_addresses() {
    let backend = spawn_backend();
    let lb = spawn_balancer(
        &Config::for_backends(std::slice::from_ref(&backend)).with("workers", "1"),
        &[],
    );
    let port = admin_port(&lb);
    let before = server_addresses(port, None);
    let cases = [
        (format!("127.0.0.1:{port}"), "admin_listen"),
        (format!("localhost:{port}"), "admin_listen"),
        (format!("[::ffff:127.0.0.1]:{port}"), "admin_listen"),
        (format!("127.0.0.1:{}", lb.port), "listen"),
        (format!("localhost:{}", lb.port), "listen"),
    ];
    for (address, key) in &cases {
        let body = format!(r#"{{"address": "{address}"}}"#);
        let r = admin(port, "POST", "/servers", None, body.as_bytes());
        assert_eq!(r.status, 400, "POST {address}: {r:?}");
        let e = error_of(&r);
        assert!(
            e.contains(&format!("own `{key}` address")) && e.contains("another server"),
            "POST {address}: {e}"
        );
    }
    for target in [
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", lb.port),
    ] {
        let r = admin(port, "PUT", &format!("/servers/{target}"), None, b"");
        assert_eq!(r.status, 400, "PUT {target}: {r:?}");
        assert!(error_of(&r).contains("own `"), "PUT {target}: {r:?}");
    }
    assert_eq!(server_addresses(port, None), before, "nothing was added");
    // The proxy port still proxies, and the admin port is still only admin.
    assert_eq!(http_get(lb.port, "/").status, 200);
    assert_eq!(admin(port, "GET", "/", None, b"").status, 404);
}

#[test]
fn wildcard_listener_is_refused_through_any_local_address() {
    let backend = spawn_backend();
    let listen = closed_port();
    let admin_p = closed_port();
    let toml = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("listen", &format!("\"[::]:{listen}\""))
        .with("admin_listen", &format!("\"127.0.0.1:{admin_p}\""))
        .to_toml();
    let (_guard, _config, _log) = spawn_on_fixed_ports(&toml, admin_p);
    for address in [
        format!("127.0.0.1:{listen}"),
        format!("[::1]:{listen}"),
        format!("localhost:{listen}"),
        format!("0.0.0.0:{listen}"),
    ] {
        let body = format!(r#"{{"address": "{address}"}}"#);
        let r = admin(admin_p, "POST", "/servers", None, body.as_bytes());
        assert_eq!(r.status, 400, "POST {address}: {r:?}");
        assert!(error_of(&r).contains("own `listen` address"), "{r:?}");
    }
    // Another port on the same host is a server like any other.
    let other = closed_port();
    let body = format!(r#"{{"address": "127.0.0.1:{other}"}}"#);
    let r = admin(admin_p, "POST", "/servers", None, body.as_bytes());
    assert_eq!(r.status, 201, "{r:?}");
}

#[test]
fn cluster_entries_naming_the_balancer_are_ignored_with_a_warning() {
    let etcd = Etcd::start();
    let backend = spawn_backend();
    let prefix = format!("/ekilibri/operator-{}/", std::process::id());
    let toml = format!(
        "{}\n[cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\ntimeout = 1000\n",
        Config::new(&[]).with("workers", "1").to_toml(),
        etcd.endpoint()
    );
    let lb = spawn_balancer_toml(&toml, &[]);
    let port = admin_port(&lb);
    // Through the admin API: refused before anything is written to etcd.
    let own = format!("127.0.0.1:{port}");
    let body = format!(r#"{{"address": "{own}"}}"#);
    let r = admin(port, "POST", "/servers", None, body.as_bytes());
    assert_eq!(r.status, 400, "{r:?}");
    let key = |addr: &str| format!("{prefix}servers/{addr}");
    let out = etcd.ctl(&["get", &key(&own), "--print-value-only"]);
    assert!(out.trim().is_empty(), "written to etcd: {out:?}");
    // Written by another writer: ignored, like an invalid value.
    for addr in [own.clone(), format!("127.0.0.1:{}", lb.port)] {
        etcd.put(&key(&addr), &format!(r#"{{"address":"{addr}"}}"#));
    }
    let good = backend.addr();
    etcd.put(&key(&good), &format!(r#"{{"address":"{good}"}}"#));
    let listed = poll_until(WAIT, || {
        let s = server_addresses(port, None);
        s.contains(&good).then_some(s)
    })
    .unwrap_or_else(|| panic!("{good} never applied:\n{}", lb.stderr.joined()));
    assert_eq!(listed, BTreeSet::from([good]), "own addresses applied");
    let log = strip_ansi(&lb.stderr.joined());
    for k in ["own `admin_listen` address", "own `listen` address"] {
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("ignoring") && l.contains(k)),
            "no warning naming {k}:\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------
// Issue 14: readiness, HEAD, 405 with Allow
// ---------------------------------------------------------------------------

#[test]
fn ready_needs_no_token_and_follows_the_backends() {
    let mut backend = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("admin_token", &format!("\"{TOKEN}\""))
        .with("health_check_interval", "100");
    let lb = spawn_balancer(&cfg, &[]);
    let port = admin_port(&lb);
    let r = admin(port, "GET", "/ready", None, b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "ready\n");
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    r.assert_complete_with_length();
    // A query string changes nothing; a wrong token does not matter either.
    let r = admin(port, "GET", "/ready?verbose=1", Some("wrong"), b"");
    assert_eq!(r.status, 200, "{r:?}");
    // Everything else still needs the token.
    assert_eq!(admin(port, "GET", "/health", None, b"").status, 401);
    assert_eq!(admin(port, "GET", "/health", Some(TOKEN), b"").status, 200);

    // The only backend goes away: not ready, and still nothing revealed.
    backend.guard.signal("KILL");
    let _ = backend.guard.wait_timeout(WAIT);
    let r = poll_until(WAIT, || {
        let r = admin(port, "GET", "/ready", None, b"");
        (r.status == 503).then_some(r)
    })
    .expect("/ready never answered 503 with every backend down");
    assert_eq!(r.body_str(), "not ready\n");
}

#[test]
fn ready_is_503_while_no_backend_is_up() {
    let lb = spawn_balancer(
        &Config::new(&[closed_port()])
            .with("workers", "1")
            .with("health_check_interval", "100"),
        &[],
    );
    let port = admin_port(&lb);
    let r = poll_until(WAIT, || {
        let r = admin(port, "GET", "/ready", None, b"");
        (r.status == 503).then_some(r)
    })
    .expect("/ready never answered 503");
    assert_eq!(r.body_str(), "not ready\n");
    // A server registered and checked healthy makes it ready.
    let backend = spawn_backend();
    let body = format!(r#"{{"address": "{}"}}"#, backend.addr());
    assert_eq!(
        admin(port, "POST", "/servers", None, body.as_bytes()).status,
        201
    );
    poll_until(WAIT, || {
        (admin(port, "GET", "/ready", None, b"").status == 200).then_some(())
    })
    .expect("/ready never answered 200 once a backend was up");
}

/// Sends `HEAD path` and returns the response and what followed it before
/// the server closed (must be nothing).
fn head(port: u16, path: &str, token: Option<&str>) -> (Response, Vec<u8>) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Connection", "close")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let mut c = Conn::connect(port);
    c.send(&build_request("HEAD", path, &headers, b""));
    let r = c.read_response_for("HEAD");
    match c.wait_closed(WAIT) {
        CloseState::Closed(rest) => (r, rest),
        CloseState::Open(rest) => panic!("HEAD {path}: connection left open after {rest:?}"),
    }
}

#[test]
fn head_answers_every_get_route_without_a_body() {
    let backend = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&backend))
        .with("workers", "1")
        .with("admin_token", &format!("\"{TOKEN}\""));
    let lb = spawn_balancer(&cfg, &[]);
    let port = admin_port(&lb);
    for path in [
        "/metrics",
        "/health",
        "/ready",
        "/servers",
        "/servers/0",
        "/servers/99",
        "/stats",
        "/stats/detail",
    ] {
        let get = admin(port, "GET", path, Some(TOKEN), b"");
        let (h, rest) = head(port, path, Some(TOKEN));
        assert!(rest.is_empty(), "HEAD {path} sent a body: {rest:?}");
        assert_eq!(h.status, get.status, "HEAD {path}: {h:?} vs GET {get:?}");
        assert_eq!(
            h.header("Content-Type"),
            get.header("Content-Type"),
            "{path}"
        );
        let length = h
            .content_length()
            .unwrap_or_else(|| panic!("HEAD {path} without Content-Length: {h:?}"));
        // Counters may move between the two calls; these bodies do not.
        if !matches!(path, "/metrics" | "/servers" | "/stats" | "/stats/detail") {
            assert_eq!(length, get.body.len(), "HEAD {path} Content-Length");
        }
    }
    // HEAD needs the token like GET.
    let (h, rest) = head(port, "/servers", None);
    assert_eq!(h.status, 401, "{h:?}");
    assert!(rest.is_empty());
}

#[test]
fn method_not_allowed_names_the_routes_methods() {
    let backend = spawn_backend();
    let lb = spawn_balancer(
        &Config::for_backends(std::slice::from_ref(&backend)).with("workers", "1"),
        &[],
    );
    let port = admin_port(&lb);
    for (method, path, allow) in [
        ("DELETE", "/metrics", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
        ("POST", "/ready", "GET, HEAD"),
        ("PUT", "/stats", "GET, HEAD"),
        ("DELETE", "/stats/detail", "GET, HEAD"),
        ("PATCH", "/servers", "GET, HEAD, POST"),
        ("GET", "/reload", "POST"),
        ("HEAD", "/reload", "POST"),
        ("POST", "/servers/0", "GET, HEAD, PUT, DELETE"),
        ("PATCH", "/servers/127.0.0.1:1", "GET, HEAD, PUT, DELETE"),
    ] {
        let r = if method == "HEAD" {
            head(port, path, None).0
        } else {
            admin(port, method, path, None, b"")
        };
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert_eq!(r.header("Allow"), Some(allow), "{method} {path}: {r:?}");
        if method != "HEAD" {
            assert!(error_of(&r).contains(allow), "{method} {path}: {r:?}");
        }
    }
    // Unknown paths stay 404, without Allow.
    let r = admin(port, "DELETE", "/nope", None, b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Allow"), None);
}

// ---------------------------------------------------------------------------
// Issue 14: the shipped configuration, the README and the binary agree
// ---------------------------------------------------------------------------

/// Keys of the README's configuration table (`cluster.x` for the
/// `[cluster]` table), one per key even where a row names two.
fn readme_keys() -> BTreeSet<String> {
    let readme = read_repo_file("README.md");
    let start = readme
        .find("| key | default | meaning |")
        .expect("README has the configuration table");
    let mut keys = BTreeSet::new();
    for line in readme[start..].lines().skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let first = line.split('|').nth(1).unwrap_or_default();
        for part in first.split('/') {
            let k = part.trim().trim_matches('`');
            assert!(
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || "_.".contains(c)),
                "odd key cell {first:?} in: {line}"
            );
            keys.insert(k.to_string());
        }
    }
    keys
}

/// Keys the shipped file sets or shows commented out (`# key = default`),
/// `cluster.x` after its `[cluster]` line; an example `[pools.NAME]` or
/// `[[routes]]` table counts as `pools` or `routes` (its keys are a pool's
/// or a route's, not top-level ones).
fn shipped_keys() -> BTreeSet<String> {
    let text = read_repo_file("ekilibri.toml");
    let mut keys = BTreeSet::new();
    let mut table = "";
    let mut in_example = false;
    for line in text.lines() {
        let l = line.trim_start_matches('#').trim();
        if l == "[cluster]" {
            table = "cluster.";
            in_example = false;
            continue;
        }
        if l.starts_with("[pools.") || l == "[[routes]]" {
            keys.insert(if l == "[[routes]]" { "routes" } else { "pools" }.to_string());
            in_example = true;
            continue;
        }
        if l.is_empty() || line.starts_with("# ----") {
            in_example = false;
        }
        if in_example {
            continue;
        }
        if let Some((k, _)) = l.split_once(" = ")
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(format!("{table}{k}"));
        }
    }
    keys
}

/// The keys the binary accepts, from its own unknown-key error.
fn binary_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for (table, toml) in [
        ("", "servers = [\"127.0.0.1:1\"]\nnot_a_key = 1\n"),
        (
            "cluster.",
            "servers = [\"127.0.0.1:1\"]\n[cluster]\nnot_a_key = 1\n",
        ),
    ] {
        let file = write_temp_file(toml, ".toml");
        let r = run_balancer_to_exit(
            &["-f".as_ref(), file.path.as_os_str(), "--check".as_ref()],
            WAIT,
        );
        let list = r
            .stderr
            .split_once("expected one of ")
            .unwrap_or_else(|| panic!("no key list in: {}", r.stderr))
            .1;
        for k in list.split(", ") {
            let k = k.trim().trim_matches('`');
            if k != "cluster" {
                keys.insert(format!("{table}{k}"));
            }
        }
    }
    keys
}

#[test]
fn shipped_config_documents_every_key_and_passes_check() {
    let readme = readme_keys();
    let shipped = shipped_keys();
    let binary = binary_keys();
    assert!(binary.len() >= 48, "{binary:?}");
    let missing = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
        a.difference(b).cloned().collect()
    };
    assert_eq!(
        missing(&binary, &shipped),
        Vec::<String>::new(),
        "keys missing from ekilibri.toml"
    );
    assert_eq!(
        missing(&binary, &readme),
        Vec::<String>::new(),
        "keys missing from the README table"
    );
    assert_eq!(
        missing(&shipped, &binary),
        Vec::<String>::new(),
        "ekilibri.toml shows unknown keys"
    );
    assert_eq!(
        missing(&readme, &binary),
        Vec::<String>::new(),
        "the README shows unknown keys"
    );
    let text = read_repo_file("ekilibri.toml");
    assert!(
        text.contains("# admin_listen = \"127.0.0.1:9090\"")
            && text.contains("127.0.0.1:9090 by default"),
        "ekilibri.toml must say the admin API opens on 127.0.0.1:9090 by default"
    );
    shipped_config_passes_check();
}

/// The shipped file passes `--check` as it is and with every commented
/// default uncommented.
fn shipped_config_passes_check() {
    let path = repo_file("ekilibri.toml");
    let r = run_balancer_to_exit(&["-f".as_ref(), path.as_os_str(), "--check".as_ref()], WAIT);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(r.stdout.contains(": ok: "), "{}", r.stdout);
    // Each commented default is a valid value (`workers` depends on the
    // host's CPUs, TLS files on files that exist).
    let mut uncommented = String::new();
    for line in read_repo_file("ekilibri.toml").lines() {
        let l = line.strip_prefix("# ").unwrap_or(line);
        let key = l.split(" = ").next().unwrap_or_default();
        let shown = l == "[cluster]"
            || (l.contains(" = ") && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        if shown && !["workers", "ca_file", "cert_file", "key_file"].contains(&key) {
            uncommented.push_str(l);
        } else {
            uncommented.push_str(line);
        }
        uncommented.push('\n');
    }
    let file = write_temp_file(&uncommented, ".toml");
    let r = run_balancer_to_exit(
        &["-f".as_ref(), file.path.as_os_str(), "--check".as_ref()],
        WAIT,
    );
    assert_eq!(r.status.code(), Some(0), "{}\n{uncommented}", r.stderr);
}

// ---------------------------------------------------------------------------
// Issue 14: man page, completions, package
// ---------------------------------------------------------------------------

#[test]
fn man_page_covers_admin_metrics_logs_signals_and_exit_statuses() {
    let man = read_repo_file("tools/man/ekilibri.1");
    let sections: Vec<&str> = man
        .lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|s| s.trim_matches('"'))
        .collect();
    for s in ["ADMIN API", "METRICS", "LOGS", "SIGNALS", "EXIT STATUS"] {
        assert!(sections.contains(&s), "no section {s} in {sections:?}");
    }
    let section = |name: &str| -> String {
        let start = man
            .find(&format!(".SH \"{name}\""))
            .or_else(|| man.find(&format!(".SH {name}\n")))
            .unwrap_or_else(|| panic!("no {name}"));
        let rest = &man[start + 4..];
        rest[..rest.find("\n.SH ").unwrap_or(rest.len())].to_string()
    };
    let signals = section("SIGNALS");
    for s in ["SIGHUP", "SIGTERM", "SIGINT", "second"] {
        assert!(signals.contains(s), "SIGNALS lacks {s}:\n{signals}");
    }
    let exit = section("EXIT STATUS");
    for s in ["0", "1", "2", "70"] {
        assert!(
            exit.lines()
                .any(|l| l.trim() == format!(".B {s}") || l.trim() == format!(".TP\n.B {s}")),
            "EXIT STATUS lacks {s}:\n{exit}"
        );
    }
    let admin = section("ADMIN API");
    for s in [
        "/ready",
        "/health",
        "/metrics",
        "/servers",
        "/reload",
        "admin_token",
        "9090",
    ] {
        assert!(admin.contains(s), "ADMIN API lacks {s}:\n{admin}");
    }
    assert!(section("LOGS").contains("RUST_LOG"));
    if Command::new("groff").arg("--version").output().is_ok() {
        let mut child = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run groff");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(man.as_bytes())
            .expect("write to groff");
        let out = child.wait_with_output().expect("groff output");
        assert!(
            out.stderr.is_empty(),
            "groff warnings: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn completions_are_generated_and_packaged() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ekilibri"),
        ("fish", "complete -c ekilibri"),
    ] {
        let out = Command::new(BALANCER_BIN)
            .args(["--completions", shell])
            .output()
            .expect("run ekilibri --completions");
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: no {marker:?} in:\n{text}");
        for option in ["--file", "--check", "--workers"] {
            assert!(
                text.contains(option.trim_start_matches('-')),
                "{shell}: no {option}"
            );
        }
    }
    // Not in --help: it is for packaging.
    let help = Command::new(BALANCER_BIN)
        .arg("--help")
        .output()
        .expect("--help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains("--completions"));
    // The package installs them and its check looks for them.
    let cargo = read_repo_file("Cargo.toml");
    let check = read_repo_file("tools/package/check-deb.sh");
    for path in [
        "usr/share/bash-completion/completions/ekilibri",
        "usr/share/zsh/vendor-completions/_ekilibri",
        "usr/share/fish/vendor_completions.d/ekilibri.fish",
    ] {
        assert!(
            cargo.contains(&format!("\"{path}\"")),
            "Cargo.toml deb assets lack {path}"
        );
        assert!(
            check.contains(&format!("./{path}")),
            "check-deb.sh does not check {path}"
        );
    }
}

// ---------------------------------------------------------------------------
// Issue 14: startup errors and warnings
// ---------------------------------------------------------------------------

#[test]
fn a_busy_port_names_its_key() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    for (key, listen, admin_listen) in [
        (
            "admin_listen",
            "127.0.0.1:0".to_string(),
            format!("127.0.0.1:{busy_port}"),
        ),
        (
            "listen",
            format!("127.0.0.1:{busy_port}"),
            "127.0.0.1:0".to_string(),
        ),
    ] {
        let toml = Config::new(&[closed_port()])
            .with("workers", "1")
            .with("listen", &format!("\"{listen}\""))
            .with("admin_listen", &format!("\"{admin_listen}\""))
            .to_toml();
        let file = write_temp_file(&toml, ".toml");
        let r = run_balancer_to_exit(&["-f".as_ref(), file.path.as_os_str()], WAIT);
        assert_eq!(r.status.code(), Some(1), "{key}: {}", r.stderr);
        let line = r
            .stderr
            .lines()
            .find(|l| l.starts_with("ekilibri: error: cannot listen on"))
            .unwrap_or_else(|| panic!("{key}: no bind error in:\n{}", r.stderr));
        assert!(
            line.contains(&format!("127.0.0.1:{busy_port} (`{key}`)")),
            "{key}: {line}"
        );
        assert!(!line.contains("Prometheus"), "{key}: {line}");
    }
    drop(busy);
}

/// `ekilibri -f <good file> --check` with these environment variables and
/// this command prefix.
fn check_with(env: &[(&str, &str)], prefix: &[&str], toml: &str) -> (Option<i32>, String) {
    let file = write_temp_file(toml, ".toml");
    let mut cmd = balancer_command(prefix);
    let out = cmd
        .arg("-f")
        .arg(&file.path)
        .arg("--check")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run ekilibri --check");
    (
        out.status.code(),
        strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_rust_log_that_does_not_parse_is_named() {
    let toml = Config::new(&[closed_port()]).with("workers", "1").to_toml();
    let (code, err) = check_with(&[("RUST_LOG", "info,ekilibri=loud")], &[], &toml);
    assert_eq!(code, Some(0), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("RUST_LOG"))
        .unwrap_or_else(|| panic!("no RUST_LOG warning in:\n{err}"));
    assert!(
        line.contains("WARN")
            && line.contains("`info,ekilibri=loud` does not parse")
            && line.contains("`info`"),
        "{line}"
    );
    for fine in ["debug", "info,access=off", "ekilibri=warn"] {
        let (code, err) = check_with(&[("RUST_LOG", fine)], &[], &toml);
        assert_eq!(code, Some(0), "{err}");
        assert!(!err.contains("RUST_LOG"), "{fine}: {err}");
    }
}

/// Whether a command runs here (for the optional tools a test uses).
fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn memlock_warning_matches_what_the_executors_lock() {
    if !have("prlimit", "--version") || !have("setpriv", "--version") {
        eprintln!("SKIPPED: needs prlimit and setpriv (util-linux)");
        return;
    }
    // Without CAP_IPC_LOCK the limit applies: drop it where this process
    // has it (root).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let no_ipc_lock: &[&str] = if cap_eff & (1 << 14) != 0 {
        &["setpriv", "--bounding-set=-ipc_lock", "--"]
    } else {
        &[]
    };
    let toml = Config::new(&[closed_port()]).with("workers", "1").to_toml();
    let run = |limit_kib: u64| {
        let lim = format!("--memlock={}:{}", limit_kib * 1024, limit_kib * 1024);
        let mut prefix = vec!["prlimit", lim.as_str()];
        prefix.extend_from_slice(no_ipc_lock);
        check_with(&[("RUST_LOG", "info")], &prefix, &toml)
    };
    // 8 MiB, a common default, is far more than 2 executors lock.
    let (code, err) = run(8192);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("RLIMIT_MEMLOCK"), "8 MiB warned:\n{err}");
    // 1 worker + the control executor: 2 x 256 KiB.
    let (code, err) = run(511);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("at least 512 KiB"), "{err}");
    let (code, err) = run(512);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("RLIMIT_MEMLOCK"), "512 KiB warned:\n{err}");
}

#[test]
fn bench_readme_says_what_no_pin_workers_does() {
    let bench = read_repo_file("tools/bench/bench.py");
    // The harness: without pin CPUs ekilibri's config says pin_workers = false.
    assert!(
        bench.contains("pin_workers = {'true' if pin_cpus else 'false'}")
            && bench.contains("pin_cpus=None if a.no_pin_workers"),
        "bench.py changed: re-read it against tools/bench/README.md"
    );
    let readme = read_repo_file("tools/bench/README.md");
    assert!(
        !readme.contains("ekilibri always pins"),
        "README still says ekilibri always pins"
    );
    let para = readme
        .split("\n\n")
        .find(|p| p.contains("--no-pin-workers"))
        .expect("README explains --no-pin-workers");
    assert!(
        para.contains("pin_workers = false") && para.contains("every contender"),
        "{para}"
    );
}
