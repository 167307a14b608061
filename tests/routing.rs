//! Pools and routes: `[[routes]]` send requests to `[pools.NAME]` by Host
//! (exact or `*.suffix`, any case, any `:port`) and raw path prefix, first
//! match wins, everything else goes to the default pool (the top-level
//! keys). Each pool keeps its own strategy, health checks and timeouts, and
//! a reload adds, changes and removes pools and routes under traffic.
//! Real binaries over loopback; which pool served a request is read from
//! the answering backend's `X-Backend-Port`.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Deadline of every poll in this file.
const WAIT: Duration = Duration::from_secs(10);

/// `top`'s keys followed by `tables` (`[pools.X]` and `[[routes]]`): TOML
/// needs the top-level keys first.
fn with_tables(top: &Config, tables: &str) -> String {
    format!("{}\n{tables}", top.to_toml())
}

/// A `[pools.NAME]` table with these backends and extra `key = value` lines.
fn pool(name: &str, ports: &[u16], extra: &str) -> String {
    format!(
        "[pools.{name}]\nservers = {}\n{extra}\n",
        servers_list(ports)
    )
}

/// A `[[routes]]` entry; `host` and `path_prefix` are left out when `None`.
fn route(host: Option<&str>, path_prefix: Option<&str>, pool: &str) -> String {
    let mut s = String::from("[[routes]]\n");
    if let Some(h) = host {
        s.push_str(&format!("host = \"{h}\"\n"));
    }
    if let Some(p) = path_prefix {
        s.push_str(&format!("path_prefix = \"{p}\"\n"));
    }
    s.push_str(&format!("pool = \"{pool}\"\n"));
    s
}

/// `GET target` with this `Host` on a keep-alive connection: the status
/// and the port of the backend that answered.
#[track_caller]
fn get_on(c: &mut Conn, host: &str, target: &str) -> (u16, u16) {
    let r = c.request("GET", target, &[("Host", host)], b"");
    (r.status, r.backend_port())
}

/// The backend that served `GET target` with `Host: host` (any status the
/// backend gave: routing is what is checked).
#[track_caller]
fn served_by(c: &mut Conn, host: &str, target: &str) -> u16 {
    get_on(c, host, target).1
}

/// Checks every `(host, target, backend)` case on one keep-alive
/// connection (each request is routed on its own) and on a fresh one.
#[track_caller]
fn assert_routes(lb: &Balancer, cases: &[(&str, &str, u16)]) {
    let mut c = lb.connect();
    for &(host, target, want) in cases {
        let got = served_by(&mut c, host, target);
        assert_eq!(got, want, "Host: {host:?}, target {target:?}");
        let mut fresh = lb.connect();
        let got = served_by(&mut fresh, host, target);
        assert_eq!(
            got, want,
            "Host: {host:?}, target {target:?} (new connection)"
        );
    }
}

#[test]
fn exact_host_routes_to_its_pool_and_other_hosts_to_the_default() {
    let d = spawn_backend();
    let api = spawn_backend();
    let top = Config::for_backends(std::slice::from_ref(&d));
    // The route's host is written in mixed case: matching ignores case on
    // both sides.
    let toml = with_tables(
        &top,
        &(pool("api", &[api.port], "") + &route(Some("Api.Example.com"), None, "api")),
    );
    let lb = spawn_balancer_toml(&toml, &[]);
    assert_routes(
        &lb,
        &[
            ("api.example.com", "/", api.port),
            ("www.example.com", "/", d.port),
            ("API.EXAMPLE.COM", "/", api.port),
            ("api.example.com:8080", "/", api.port),
            ("Api.Example.Com:443", "/x?y=1", api.port),
            ("127.0.0.1", "/", d.port),
            // Neither a longer nor a shorter name is the same host.
            ("xapi.example.com", "/", d.port),
            ("api.example.com.evil.test", "/", d.port),
            ("example.com", "/", d.port),
            ("a.api.example.com", "/", d.port),
        ],
    );
    // The body is the backend's own, not a balancer answer.
    let mut c = lb.connect();
    let r = c.request("GET", "/", &[("Host", "api.example.com")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(root_body_port(&r), api.port);
}

#[test]
fn wildcard_host_matches_one_or_more_labels_but_not_the_bare_suffix() {
    let d = spawn_backend();
    let w = spawn_backend();
    let top = Config::for_backends(std::slice::from_ref(&d));
    let toml = with_tables(
        &top,
        &(pool("wild", &[w.port], "") + &route(Some("*.example.com"), None, "wild")),
    );
    let lb = spawn_balancer_toml(&toml, &[]);
    assert_routes(
        &lb,
        &[
            ("a.example.com", "/", w.port),
            ("a.b.example.com", "/", w.port),
            ("A.Example.COM:8443", "/", w.port),
            ("www.EXAMPLE.com", "/", w.port),
            ("example.com", "/", d.port),
            ("example.com:80", "/", d.port),
            // The suffix is matched on a label boundary.
            ("badexample.com", "/", d.port),
            ("a.example.com.org", "/", d.port),
            ("a.example.co", "/", d.port),
            ("other.test", "/", d.port),
        ],
    );
}

#[test]
fn path_prefixes_match_the_raw_path_and_the_first_matching_route_wins() {
    let d = spawn_backend();
    let v1 = spawn_backend();
    let stat = spawn_backend();
    let api = spawn_backend();
    let v2 = spawn_backend();
    let top = Config::for_backends(std::slice::from_ref(&d));
    let tables = [
        pool("v1", &[v1.port], ""),
        pool("stat", &[stat.port], ""),
        pool("api", &[api.port], ""),
        pool("v2", &[v2.port], ""),
        route(Some("api.example.com"), Some("/v1/"), "v1"),
        route(None, Some("/static/"), "stat"),
        route(Some("api.example.com"), None, "api"),
        // Listed after the broader host-only route above: never reached.
        route(Some("api.example.com"), Some("/v2/"), "v2"),
    ]
    .concat();
    let lb = spawn_balancer_toml(&with_tables(&top, &tables), &[]);
    assert_routes(
        &lb,
        &[
            ("api.example.com", "/v1/users", v1.port),
            ("api.example.com", "/v1/", v1.port),
            ("api.example.com:8080", "/v1/x?y=1", v1.port),
            // A prefix is bytes: no trailing slash, other case: no match.
            ("api.example.com", "/v1", api.port),
            ("api.example.com", "/V1/x", api.port),
            ("api.example.com", "/v1x/", api.port),
            // The query is not part of the path.
            ("api.example.com", "/x?next=/v1/", api.port),
            ("api.example.com", "/?/v1/", api.port),
            ("cdn.test", "/find?q=rust", d.port),
            // A route without host matches any host, in its place in the
            // list: before the host-only route for api.example.com.
            ("api.example.com", "/static/app.js", stat.port),
            ("cdn.test", "/static/app.js?v=3", stat.port),
            ("cdn.test", "/static", d.port),
            ("cdn.test", "/x?/static/", d.port),
            // The host of a host+prefix route is still required.
            ("www.example.com", "/v1/users", d.port),
            // First match wins: /v2/ is taken by the host-only route.
            ("api.example.com", "/v2/", api.port),
            ("api.example.com", "/v2/x", api.port),
        ],
    );
}

#[test]
fn absolute_form_target_routes_by_its_authority() {
    let d = spawn_backend();
    let v1 = spawn_backend();
    let top = Config::for_backends(std::slice::from_ref(&d));
    let toml = with_tables(
        &top,
        &(pool("v1", &[v1.port], "") + &route(Some("api.example.com"), Some("/v1/"), "v1")),
    );
    let lb = spawn_balancer_toml(&toml, &[]);
    let mut c = lb.connect();
    // The authority wins over a Host header that says something else.
    for (target, host, want) in [
        ("http://api.example.com/v1/x", "other.test", v1.port),
        (
            "http://API.example.com:8080/v1/x?q=1",
            "other.test",
            v1.port,
        ),
        ("http://api.example.com/v2/x", "api.example.com", d.port),
        ("http://other.test/v1/x", "api.example.com", d.port),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.backend_port(), want, "{target} with Host: {host}: {r:?}");
    }
    // HTTP/1.0 needs no Host: the authority alone routes it, and without
    // one the request goes to the default pool.
    for (target, want) in [("http://api.example.com/v1/y", v1.port), ("/v1/y", d.port)] {
        let mut c = lb.connect();
        c.send(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.backend_port(), want, "HTTP/1.0 {target}: {r:?}");
    }
}

/// A loopback server that answers every request `200` with an empty body,
/// its own port in `X-Backend-Port`, and closes: a backend that passes any
/// health check path.
fn always_ok_server() -> ThreadedServer {
    let port = Arc::new(AtomicU16::new(0));
    let p = port.clone();
    let server = ThreadedServer::start(move |mut s, _, _| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if read_request_head(&mut s, &mut Vec::new()) {
            let reply = format!(
                "HTTP/1.1 200 OK\r\nX-Backend-Port: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                p.load(Ordering::SeqCst)
            );
            let _ = s.write_all(reply.as_bytes());
        }
        let _ = s.shutdown(Shutdown::Both);
    });
    port.store(server.port, Ordering::SeqCst);
    server
}

/// Pool `a` rotates over x and y; pool `b` checks `/status/500`, so the
/// very same x is down in `b` and stays up in `a`.
#[test]
fn each_pool_has_its_own_strategy_and_health() {
    let d = spawn_backend();
    let x = spawn_backend();
    let y = spawn_backend();
    let ok = always_ok_server();
    let top = Config::for_backends(std::slice::from_ref(&d))
        .with("workers", "1")
        .with("health_check_interval", "100");
    let tables = [
        pool("a", &[x.port, y.port], "strategy = \"RoundRobin\""),
        pool(
            "b",
            &[x.port, ok.port],
            "health_check_path = \"/status/500\"",
        ),
        route(Some("a.test"), None, "a"),
        route(Some("b.test"), None, "b"),
    ]
    .concat();
    let lb = spawn_balancer_toml(&with_tables(&top, &tables), &[]);
    let mut c = lb.connect();
    // Once x's check in `b` has failed, `b` only uses the other server.
    poll_until(WAIT, || {
        (0..4)
            .all(|_| served_by(&mut c, "b.test", "/") == ok.port)
            .then_some(())
    })
    .expect("x was never taken out of pool b");
    for i in 0..10 {
        assert_eq!(served_by(&mut c, "b.test", "/"), ok.port, "request {i}");
    }
    // In `a`, x is healthy and the rotation is exact, also with requests
    // for other pools in between.
    let seq: Vec<u16> = (0..12)
        .map(|i| {
            if i % 3 == 0 {
                assert_eq!(served_by(&mut c, "b.test", "/"), ok.port);
            }
            let (status, port) = get_on(&mut c, "a.test", "/");
            assert_eq!(status, 200);
            port
        })
        .collect();
    assert!(
        [x.port, y.port].contains(&seq[0]) && seq[0] != seq[1],
        "{seq:?}"
    );
    for (i, p) in seq.iter().enumerate() {
        assert_eq!(*p, seq[i % 2], "pool a does not alternate: {seq:?}");
    }
    // The default pool is untouched by either.
    assert_eq!(served_by(&mut c, "other.test", "/"), d.port);
}

#[test]
fn each_pool_has_its_own_read_timeout() {
    let b = spawn_backend();
    // One backend in three pools: only the pool's settings differ.
    let top = Config::for_backends(std::slice::from_ref(&b))
        .with("read_timeout", "2000")
        .with("workers", "1");
    let tables = [
        pool("strict", &[b.port], "read_timeout = 200\nretries = 0"),
        pool("inherits", &[b.port], ""),
        route(Some("strict.test"), None, "strict"),
        route(Some("inherits.test"), None, "inherits"),
    ]
    .concat();
    let lb = spawn_balancer_toml(&with_tables(&top, &tables), &[]);
    let timed = |host: &str| {
        let started = Instant::now();
        let r = one_request(lb.port, "GET", "/sleep?ms=600", &[("Host", host)], b"");
        (r.status, started.elapsed())
    };
    // The default pool first, so that its backend connection (same
    // address) sits idle in the worker's keep-alive pool.
    let (status, took) = timed("other.test");
    assert_eq!(status, 200, "default pool (read_timeout 2000)");
    assert!(took >= Duration::from_millis(600), "{took:?}");
    let (status, took) = timed("strict.test");
    assert_eq!(status, 504, "strict pool (read_timeout 200)");
    assert!(took < Duration::from_millis(550), "504 after {took:?}");
    // A pool without `read_timeout` inherits the top level's 2000.
    assert_eq!(timed("inherits.test").0, 200, "inheriting pool");
    assert_eq!(timed("strict.test").0, 504, "strict pool, again");
    assert_eq!(timed("other.test").0, 200, "default pool, again");
}

// ---------------------------------------------------------------------------
// Reload under traffic
// ---------------------------------------------------------------------------

/// `GET target` with `Host: host` and `Connection: close` on a fresh
/// connection; the status and the backend, or what went wrong.
fn try_get(port: u16, host: &str, target: &str) -> Result<(u16, u16), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(8)));
    let req = build_request(
        "GET",
        target,
        &[("Host", host), ("Connection", "close")],
        b"",
    );
    s.write_all(&req).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let end = find(&raw, b"\r\n\r\n")
        .ok_or_else(|| format!("no head in {:?}", String::from_utf8_lossy(&raw)))?;
    let (_, status, _, headers) = parse_head(&raw[..end + 4]);
    let backend = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("X-Backend-Port"))
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| format!("{status} without X-Backend-Port"))?;
    Ok((status, backend))
}

/// One request of the background traffic.
struct Sent {
    host: &'static str,
    started: Instant,
    ended: Instant,
    result: Result<(u16, u16), String>,
}

/// Sends requests alternately for `api.example.com` and `other.test`,
/// over fresh connections (`keep_alive` false) or one kept-alive one,
/// until `stop` (or 4000 requests), recording each.
fn traffic(
    port: u16,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut conn = keep_alive.then(|| Conn::connect(port));
        for i in 0..4000 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let host = if i % 2 == 0 {
                "api.example.com"
            } else {
                "other.test"
            };
            let started = Instant::now();
            let result = match &mut conn {
                None => try_get(port, host, "/"),
                Some(c) => {
                    // A panic here (the connection closed or hung) fails
                    // the test through `join`.
                    let r = c.request("GET", "/", &[("Host", host)], b"");
                    Ok((r.status, r.backend_port()))
                }
            };
            log.lock().unwrap().push(Sent {
                host,
                started,
                ended: Instant::now(),
                result,
            });
        }
    })
}

/// Returns once every worker has applied what the control executor queued
/// before: a scrape travels the same ordered channel as a configuration.
fn workers_caught_up(admin: u16) {
    assert_eq!(http_get(admin, "/metrics").status, 200);
}

/// `POST /reload`: the status and the answer, once every worker has it.
fn post_reload(admin: u16) -> (u16, String) {
    let r = one_request(admin, "POST", "/reload", &[], b"");
    workers_caught_up(admin);
    (r.status, r.body_str())
}

#[test]
fn reload_adds_changes_and_removes_pools_and_routes_under_traffic() {
    let d = spawn_backend();
    let a = spawn_backend();
    let b = spawn_backend();
    let top = Config::for_backends(std::slice::from_ref(&d)).with("workers", "2");
    let r_api = |p: &str| route(Some("api.example.com"), None, p);
    // What `api.example.com` must reach in each phase, and the file.
    let phases: Vec<(&str, u16, String)> = vec![
        ("start: no pools", d.port, top.to_toml()),
        (
            "pool a and a route to it added",
            a.port,
            with_tables(&top, &(pool("a", &[a.port], "") + &r_api("a"))),
        ),
        (
            "pool b added, the route moved to it",
            b.port,
            with_tables(
                &top,
                &(pool("a", &[a.port], "") + &pool("b", &[b.port], "") + &r_api("b")),
            ),
        ),
        (
            "pool a removed (b moves up in the list)",
            b.port,
            with_tables(&top, &(pool("b", &[b.port], "") + &r_api("b"))),
        ),
        ("route and pool b removed", d.port, top.to_toml()),
    ];
    let lb = spawn_balancer_toml(&phases[0].2, &[]);
    let admin = admin_port(&lb);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let threads = [
        traffic(lb.port, false, stop.clone(), log.clone()),
        traffic(lb.port, true, stop.clone(), log.clone()),
    ];
    // (phase, in force from, until the next file was written)
    let mut windows: Vec<(usize, Instant, Instant)> = Vec::new();
    let mut from = Instant::now();
    for (i, (what, want, toml)) in phases.iter().enumerate() {
        if i > 0 {
            std::fs::write(&lb.config.path, toml).expect("rewrite the config file");
            if i == phases.len() - 1 {
                // The last change by SIGHUP.
                lb.guard.signal("HUP");
                poll_until(WAIT, || {
                    (metric(admin, "lb_config_reloads_total{result=\"success\"}") == Some(i as f64))
                        .then_some(())
                })
                .unwrap_or_else(|| panic!("{what}: SIGHUP reload not applied"));
                workers_caught_up(admin);
            } else {
                let (status, body) = post_reload(admin);
                assert_eq!(status, 200, "{what}: {body}");
            }
            from = Instant::now();
        }
        // Applied at once, on every worker.
        let mut c = lb.connect();
        for _ in 0..4 {
            assert_eq!(served_by(&mut c, "api.example.com", "/"), *want, "{what}");
            assert_eq!(served_by(&mut c, "other.test", "/"), d.port, "{what}");
        }
        // Let the background traffic cross this phase before the next.
        poll_until(WAIT, || {
            let n = log
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.started >= from)
                .count();
            (n >= 12).then_some(())
        })
        .unwrap_or_else(|| panic!("{what}: the traffic stalled"));
        windows.push((i, from, Instant::now()));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("keep-alive traffic failed");
    }
    let log = log.lock().unwrap();
    let failed: Vec<&String> = log.iter().filter_map(|s| s.result.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed requests: {failed:?}",
        failed.len()
    );
    let mut checked = 0;
    for s in log.iter() {
        let (status, port) = s.result.clone().unwrap();
        assert_eq!(status, 200, "{port}");
        if s.host == "other.test" {
            assert_eq!(port, d.port, "other.test left the default pool");
            continue;
        }
        // A request sent and answered within one phase went where it says.
        if let Some((i, _, _)) = windows
            .iter()
            .find(|(_, from, until)| s.started >= *from && s.ended <= *until)
        {
            assert_eq!(
                port, phases[*i].1,
                "api.example.com during {:?}",
                phases[*i].0
            );
            checked += 1;
        } else {
            assert!([d.port, a.port, b.port].contains(&port), "{port}");
        }
    }
    assert!(
        checked >= phases.len() * 3,
        "only {checked} requests checked"
    );
    drop(log);

    // A file naming a pool that does not exist is refused, naming the key,
    // and the routing stays as it was.
    std::fs::write(
        &lb.config.path,
        with_tables(&top, &(pool("b", &[b.port], "") + &r_api("gone"))),
    )
    .unwrap();
    let (status, body) = post_reload(admin);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("routes[0].pool") && body.contains("gone"),
        "{body}"
    );
    let mut c = lb.connect();
    assert_eq!(served_by(&mut c, "api.example.com", "/"), d.port);
}

// ---------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------

/// Starting and `--check` both exit 2, naming the file and every `needle`.
#[track_caller]
fn assert_rejected(tables: &str, needles: &[&str]) {
    let toml = with_tables(&Config::new(&[9]), tables);
    let file = write_temp_file(&toml, ".toml");
    for check in [false, true] {
        let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), file.path.as_os_str()];
        if check {
            args.push(OsStr::new("--check"));
        }
        let r = run_balancer_to_exit(&args, WAIT);
        assert_eq!(
            r.status.code(),
            Some(2),
            "check={check}: {}\n{toml}",
            r.stderr
        );
        assert!(r.stderr.contains(&path_str(&file.path)), "{}", r.stderr);
        for needle in needles {
            assert!(
                r.stderr.contains(needle),
                "check={check}: no {needle:?} in: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn route_and_pool_errors_exit_2_naming_the_key() {
    let api = pool("api", &[10], "");
    assert_rejected(
        &(api.clone() + &route(Some("a.test"), None, "nope")),
        &["`routes[0].pool`", "nope"],
    );
    assert_rejected(
        &(api.clone()
            + &route(Some("b.test"), None, "api")
            + &route(Some("a.test"), Some("/v1/"), "api")
            + &route(Some("A.test"), Some("/v1/"), "default")),
        &["`routes[2]`", "routes[1]"],
    );
    assert_rejected(
        "[pools.api]\nstrategy = \"Random\"\n",
        &["`pools.api.servers`", "required"],
    );
    assert_rejected(
        "[pools.api]\nservers = []\n",
        &["`pools.api.servers`", "empty"],
    );
    assert_rejected(&(api.clone() + &route(None, None, "api")), &["`routes[0]`"]);
    // A prefix reaching into the query could never match.
    assert_rejected(
        &(api + &route(None, Some("/find?q="), "api")),
        &["`routes[0]`", "query"],
    );
    // The same file with a good route is accepted.
    let good = with_tables(
        &Config::new(&[9]),
        &(pool("api", &[10], "") + &route(Some("*.a.test"), Some("/v1/"), "api")),
    );
    let file = write_temp_file(&good, ".toml");
    let r = run_balancer_to_exit(
        &[
            OsStr::new("-f"),
            file.path.as_os_str(),
            OsStr::new("--check"),
        ],
        WAIT,
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
}

/// A request whose pool a reload removed while it was in flight retries on
/// that pool's backends as they were (nginx's old worker would), not into
/// nothing: the backend holding it fails only after the reload, and the
/// retry must reach the pool's other backend.
#[test]
fn a_retry_after_its_pool_was_removed_stays_in_the_old_pool() {
    let other = spawn_backend();
    let default = spawn_backend();
    let held = Arc::new(AtomicU16::new(0));
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (h, r) = (held.clone(), release.clone());
    // Answers health checks; holds any other request until released, then
    // closes without a byte of answer (a retryable failure for a GET).
    let holder = ThreadedServer::start(move |mut s, _, stop| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut head = Vec::new();
        if !read_request_head(&mut s, &mut head) {
            return;
        }
        if head.starts_with(b"GET /health") {
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        h.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !r.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = s.shutdown(Shutdown::Both);
    });
    let top = Config::new(&[default.port])
        .with("workers", "1")
        .with("read_timeout", "8000");
    let tables = pool("api", &[holder.port, other.port], "") + &route(None, Some("/api/"), "api");
    let lb = spawn_balancer_toml(&with_tables(&top, &tables), &[]);
    let admin = admin_port(&lb);
    // Requests until one is held by `holder` (the rotation alternates).
    let port = lb.port;
    let mut pending = None;
    for _ in 0..4 {
        let t = std::thread::spawn(move || try_get(port, "t", "/api/x"));
        let deadline = Instant::now() + Duration::from_secs(3);
        while held.load(Ordering::SeqCst) == 0 && !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if held.load(Ordering::SeqCst) > 0 {
            pending = Some(t);
            break;
        }
        // Answered by the pool's other backend (its own 404 for /api/x).
        assert_eq!(t.join().unwrap().map(|(_, p)| p), Ok(other.port));
    }
    let pending = pending.expect("a request held by the first backend");
    // The pool and its route go away while the request is in flight.
    std::fs::write(&lb.config.path, top.to_toml()).expect("rewrite the config");
    assert_eq!(post_reload(admin).0, 200);
    assert_eq!(served_by(&mut lb.connect(), "t", "/api/x"), default.port);
    release.store(true, Ordering::SeqCst);
    let answer = pending.join().unwrap();
    let (status, port) = answer.unwrap_or_else(|e| panic!("{e}: {}", lb.stderr.joined()));
    // The test backend has no /api/ route: its own 404, not a 502 of ours.
    assert_eq!(
        (status, port),
        (404, other.port),
        "the retry stays in the old pool"
    );
}
