//! Cluster mode: several ekilibri instances share the etcd-registered part of
//! their backend pool through a real single-node etcd.
//!
//! Every test that needs etcd starts its own `etcd` (free ports, its own data
//! directory, removed at the end) and uses its own key prefix, then runs two
//! instances, A and B, with the same `[cluster]` table. Static `servers` stay
//! local to each instance; what is registered through either admin API, or
//! written into etcd by another writer (`etcdctl`), must reach both.
//!
//! Failure cases are made deterministic: etcd is killed (and restarted on
//! the same data directory and ports, or on an empty one), or the instances
//! reach etcd through a TCP relay in this process that the test cuts (every
//! connection closed), freezes (a silent partition) and restores, while
//! `etcdctl` changes the data behind their back on etcd's real port.
//!
//! The etcd tests run one at a time (their propagation deadlines are about a
//! second on a small machine); the ones without a tight deadline run
//! alongside. The whole binary takes about 35 s.

mod common;

use common::etcd::{Etcd, last_lines};
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Deadline of ordinary polls.
const WAIT: Duration = Duration::from_secs(5);
/// A change made through one instance (or in etcd) is routed by every
/// instance within about a second (the contract's "within ~1 s").
const PROPAGATION: Duration = Duration::from_secs(1);
/// Reconnecting after etcd comes back: backoff capped at 2 s (plus jitter),
/// then a full range read.
const RECONNECT: Duration = Duration::from_secs(8);
/// `timeout` in the `[cluster]` table of the test instances (ms).
const CLUSTER_TIMEOUT_MS: u64 = 1000;

static SERIAL: Mutex<()> = Mutex::new(());
static PREFIX_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Serialises the etcd tests (a panicking test does not poison the others).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A key prefix no other test (or run) uses.
fn unique_prefix() -> String {
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("/ekilibri-test/{}-{n}-{nanos}/", std::process::id())
}

/// The etcd key of a server: `<prefix>servers/<address>`.
fn key_of(prefix: &str, addr: &str) -> String {
    format!("{prefix}servers/{addr}")
}

/// The value another writer puts for a server (the contract's format).
fn value_of(addr: &str) -> String {
    format!(r#"{{"address":"{addr}","weight":1,"check":{{"type":"http","path":"/health"}}}}"#)
}

// ---------------------------------------------------------------------------
// A TCP relay between the instances and etcd that the test can cut
// ---------------------------------------------------------------------------

/// Relays connections on `port` to etcd's client port. `cut` closes every
/// relayed connection and closes each new one at once (the instances see
/// etcd go away); `freeze` keeps every connection open but forwards nothing
/// and holds new ones unanswered (a silent partition); `restore` relays
/// again (after a freeze, `cut` first so no stale bytes flow).
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Both sockets of every live relayed connection (guarded together with
    /// the `cut` flag, so no connection slips through a cut).
    conns: Arc<Mutex<Vec<TcpStream>>>,
    handle: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (cut2, frozen2, stop2, conns2) =
            (cut.clone(), frozen.clone(), stop.clone(), conns.clone());
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        if cut2.load(Ordering::SeqCst) {
                            let _ = down.shutdown(Shutdown::Both);
                            continue;
                        }
                        let _ = down.set_nonblocking(false);
                        if frozen2.load(Ordering::SeqCst) {
                            // Held open, never answered, closed by `cut`.
                            conns2.lock().unwrap().push(down);
                            continue;
                        }
                        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            let _ = down.shutdown(Shutdown::Both);
                            continue;
                        };
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let mut live = conns2.lock().unwrap();
                        if cut2.load(Ordering::SeqCst) {
                            let _ = down.shutdown(Shutdown::Both);
                            let _ = up.shutdown(Shutdown::Both);
                            continue;
                        }
                        live.push(down.try_clone().unwrap());
                        live.push(up.try_clone().unwrap());
                        drop(live);
                        let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                        let (f1, c1) = (frozen2.clone(), cut2.clone());
                        let (f2, c2) = (frozen2.clone(), cut2.clone());
                        thread::spawn(move || pipe(down, up, &f1, &c1));
                        thread::spawn(move || pipe(up2, down2, &f2, &c2));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Relay {
            port,
            cut,
            frozen,
            stop,
            conns,
            handle: Some(handle),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        let mut live = self.conns.lock().unwrap();
        self.cut.store(true, Ordering::SeqCst);
        for s in live.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn restore(&self) {
        let _live = self.conns.lock().unwrap();
        self.frozen.store(false, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to`.
/// While `frozen`, what was read is held back (until a `cut`).
fn pipe(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, cut: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) && !cut.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        if cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

// ---------------------------------------------------------------------------
// Balancer instances and their admin API
// ---------------------------------------------------------------------------

/// A complete config with `workers = 1`, the static `servers` and a
/// `[cluster]` table at the end.
fn cluster_toml(static_ports: &[u16], endpoint: &str, prefix: &str) -> String {
    format!(
        "{}\n[cluster]\netcd = [\"{endpoint}\"]\nprefix = \"{prefix}\"\ntimeout = {CLUSTER_TIMEOUT_MS}\n",
        Config::new(static_ports).with("workers", "1").to_toml()
    )
}

/// One admin call on a fresh connection.
fn call_admin(port: u16, method: &str, path: &str, body: &[u8]) -> Response {
    let mut headers = vec![("Connection", "close")];
    if body.is_empty() && method != "GET" {
        headers.push(("Content-Length", "0"));
    }
    one_request(port, method, path, &headers, body)
}

/// Instances A and B with the same static servers and `[cluster]` table,
/// both connected to etcd.
fn connected_pair(static_ports: &[u16], endpoint: &str, prefix: &str) -> (Node, Node) {
    let a = Node::start("A", static_ports, endpoint, prefix);
    let b = Node::start("B", static_ports, endpoint, prefix);
    for n in [&a, &b] {
        n.wait_connected(true, WAIT);
    }
    (a, b)
}

/// One ekilibri instance of the cluster.
struct Node {
    name: &'static str,
    lb: Balancer,
    admin: u16,
}

impl Node {
    fn start(name: &'static str, static_ports: &[u16], endpoint: &str, prefix: &str) -> Node {
        Node::from_toml(name, &cluster_toml(static_ports, endpoint, prefix))
    }

    fn from_toml(name: &'static str, toml: &str) -> Node {
        let lb = spawn_balancer_toml(toml, &[]);
        let admin = admin_port(&lb);
        Node { name, lb, admin }
    }

    fn port(&self) -> u16 {
        self.lb.port
    }

    /// The end of the instance's log, for failure messages.
    fn log(&self) -> String {
        format!(
            "--- {} stderr (last lines) ---\n{}",
            self.name,
            last_lines(&strip_ansi(&self.lb.stderr.joined()), 40)
        )
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Response {
        call_admin(self.admin, method, path, body.as_bytes())
    }

    #[track_caller]
    fn json(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let r = self.call(method, path, body);
        (r.status, json_of(&r))
    }

    #[track_caller]
    fn get(&self, path: &str) -> Value {
        let (status, v) = self.json("GET", path, "");
        assert_eq!(status, 200, "{}: GET {path}: {v}", self.name);
        v
    }

    #[track_caller]
    fn servers(&self) -> Vec<Value> {
        match self.get("/servers") {
            Value::Array(list) => list,
            other => panic!("{}: GET /servers is not an array: {other}", self.name),
        }
    }

    #[track_caller]
    fn server(&self, addr: &str) -> Option<Value> {
        self.servers().into_iter().find(|s| s["address"] == addr)
    }

    fn addresses(&self) -> Vec<String> {
        self.servers()
            .iter()
            .map(|s| format!("{}({}, {})", s["address"], s["source"], s["health"]))
            .collect()
    }

    /// `POST /servers` that must answer 201.
    #[track_caller]
    fn add(&self, addr: &str) -> Value {
        let body = format!(
            r#"{{"address": "{addr}", "weight": 1, "check": {{"type": "http", "path": "/health"}}}}"#
        );
        let (status, v) = self.json("POST", "/servers", &body);
        assert_eq!(
            status,
            201,
            "{}: POST /servers {body}: {v}\n{}",
            self.name,
            self.log()
        );
        v
    }

    #[track_caller]
    fn metrics_text(&self) -> String {
        let r = self.call("GET", "/metrics", "");
        assert_eq!(r.status, 200, "{}: GET /metrics: {r:?}", self.name);
        r.body_str()
    }

    #[track_caller]
    fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), name)
    }

    #[track_caller]
    fn connected(&self) -> Option<f64> {
        self.metric("lb_cluster_connected")
    }

    /// Polls `/metrics` until `lb_cluster_connected` is 1 (or 0).
    #[track_caller]
    fn wait_connected(&self, want: bool, timeout: Duration) {
        let want_v = if want { 1.0 } else { 0.0 };
        if poll_until(timeout, || (self.connected() == Some(want_v)).then_some(())).is_none() {
            panic!(
                "{}: lb_cluster_connected is {:?}, not {want_v} after {timeout:?}\n{}",
                self.name,
                self.connected(),
                self.log()
            );
        }
    }

    /// Polls `GET /servers` until `addr` is listed with `health`.
    #[track_caller]
    fn wait_health(&self, addr: &str, health: &str) {
        let seen = poll_until(WAIT, || self.server(addr).filter(|s| s["health"] == health));
        assert!(
            seen.is_some(),
            "{}: {addr} never became {health}: {:?}",
            self.name,
            self.addresses()
        );
    }

    /// Polls `GET /servers` until `addr` is no longer listed; returns when.
    #[track_caller]
    fn wait_gone(&self, addr: &str, timeout: Duration) -> Instant {
        poll_until(timeout, || self.server(addr).is_none().then(Instant::now)).unwrap_or_else(
            || {
                panic!(
                    "{}: {addr} still listed after {timeout:?}: {:?}\n{}",
                    self.name,
                    self.addresses(),
                    self.log()
                )
            },
        )
    }

    fn log_count(&self, needle: &str) -> usize {
        self.lb
            .stderr
            .snapshot()
            .iter()
            .filter(|l| strip_ansi(l).contains(needle))
            .count()
    }
}

/// The value of an unlabelled (or first labelled) sample named `name`.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = if rest.starts_with('{') {
            &rest[rest.find('}')? + 1..]
        } else {
            rest
        };
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Asserts an error answer: `status` with a JSON `{"error": "..."}`; returns
/// the message.
#[track_caller]
fn assert_error(r: &Response, status: u16, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: {r:?}");
    let v = json_of(r);
    let msg = v["error"].as_str().unwrap_or("").to_string();
    assert!(!msg.is_empty(), "{what}: no JSON `error` message in {v}");
    msg
}

/// Asserts a cluster write refused because etcd is unreachable.
#[track_caller]
fn assert_unavailable(r: &Response, what: &str) {
    let msg = assert_error(r, 503, what);
    assert!(
        msg.starts_with("cluster store (etcd) unavailable"),
        "{what}: the 503 error should say `cluster store (etcd) unavailable: ...`, got {msg:?}"
    );
}

// ---------------------------------------------------------------------------
// Proxy-side helpers
// ---------------------------------------------------------------------------

fn describe(o: &Outcome) -> String {
    match o {
        Ok((status, Some(p))) => format!("{status} from {p}"),
        Ok((status, None)) => format!("{status} from the balancer"),
        Err(e) => format!("error: {e}"),
    }
}

/// Polls `GET /` through the node's proxy port until `backend_port`
/// answers; panics after `timeout`. Returns how long it took.
#[track_caller]
fn wait_reaches(node: &Node, backend_port: u16, timeout: Duration) -> Duration {
    let start = Instant::now();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let hit = poll_until(timeout, || {
        let o = try_request(node.port(), "GET", "/");
        let hit = matches!(o, Ok((200, Some(p))) if p == backend_port);
        *seen.entry(describe(&o)).or_insert(0) += 1;
        hit.then_some(())
    });
    if hit.is_none() {
        panic!(
            "{}: no request reached backend {backend_port} within {timeout:?}; answers: {seen:?}; servers: {:?}\n{}",
            node.name,
            node.addresses(),
            node.log()
        );
    }
    start.elapsed()
}

/// Sends `n` requests through the node and checks that all were answered 200
/// and none reached `backend`: not by the answering port, and not by the
/// backend's own request counter (its own `/stats` call counts, hence `+ 1`).
/// Only meaningful once no instance lists the backend (health checks count).
#[track_caller]
fn assert_no_traffic_to(node: &Node, backend: &Backend, n: usize) {
    let (_, before) = backend_stats(backend.port);
    let outcomes: Vec<Outcome> = (0..n)
        .map(|_| try_request(node.port(), "GET", "/"))
        .collect();
    let (_, after) = backend_stats(backend.port);
    let mut answers: HashMap<String, usize> = HashMap::new();
    for o in &outcomes {
        *answers.entry(describe(o)).or_insert(0) += 1;
    }
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok((200, Some(p))) if *p != backend.port)),
        "{}: requests failed or reached removed backend {}: {answers:?}",
        node.name,
        backend.port
    );
    assert_eq!(
        after,
        before + 1,
        "{}: backend {} received requests after its removal",
        node.name,
        backend.port
    );
}

/// `n` requests through the node: every one a 200 from a backend; returns
/// how many each backend port answered.
#[track_caller]
fn serve_all_ok(node: &Node, n: usize) -> HashMap<u16, usize> {
    let mut ports = Vec::new();
    for i in 0..n {
        match try_request(node.port(), "GET", "/") {
            Ok((200, Some(p))) => ports.push(p),
            other => panic!(
                "{}: request {i} of {n} not served: {}\n{}",
                node.name,
                describe(&other),
                node.log()
            ),
        }
    }
    count(&ports)
}

// ---------------------------------------------------------------------------
// 1. Registration through one instance reaches the others
// ---------------------------------------------------------------------------

#[test]
fn register_through_a_routes_through_b() {
    let _serial = serial();
    let etcd = Etcd::start();
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e = spawn_backend();
    let a = Node::start("A", &[s.port], &etcd.endpoint(), &prefix);
    let b = Node::start("B", &[s.port], &etcd.endpoint(), &prefix);
    for n in [&a, &b] {
        n.wait_connected(true, WAIT);
        let health = n.get("/health");
        let c = &health["cluster"];
        assert_eq!(c["connected"], true, "{}: /health {health}", n.name);
        assert_eq!(c["prefix"], prefix.as_str(), "{}: /health {health}", n.name);
        assert!(
            c["endpoints"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == etcd.endpoint().as_str())),
            "{}: /health cluster.endpoints does not list {}: {health}",
            n.name,
            etcd.endpoint()
        );
        assert!(c["revision"].is_u64(), "{}: /health {health}", n.name);
        for m in [
            "lb_cluster_connected",
            "lb_cluster_resyncs_total",
            "lb_cluster_revision",
        ] {
            assert!(n.metric(m).is_some(), "{}: no {m} in /metrics", n.name);
        }
    }

    let addr = e.addr();
    let created = a.add(&addr);
    assert_eq!(created["address"], addr.as_str(), "POST answer {created}");
    let t = wait_reaches(&b, e.port, PROPAGATION);
    eprintln!("B routed to the new backend {t:?} after A's 201");
    wait_reaches(&a, e.port, PROPAGATION);

    // The data in etcd has the contract's key and value.
    let key = key_of(&prefix, &addr);
    let stored = etcd
        .get_value(&key)
        .unwrap_or_else(|| panic!("no key {key} in etcd after POST on A"));
    assert_eq!(stored["address"], addr.as_str(), "etcd value {stored}");
    assert_eq!(stored["weight"], 1, "etcd value {stored}");
    assert!(stored["check"].is_object(), "etcd value {stored}");

    for n in [&b, &a] {
        let entry = n
            .server(&addr)
            .unwrap_or_else(|| panic!("{}: {addr} not in GET /servers", n.name));
        assert_eq!(entry["source"], "etcd", "{}: {entry}", n.name);
        assert_eq!(entry["key"], key.as_str(), "{}: {entry}", n.name);
        assert!(
            entry["ttl"].is_null(),
            "{}: no TTL was asked: {entry}",
            n.name
        );
        assert_eq!(entry["health"], "up", "{}: {entry}", n.name);
        let stat = n.server(&s.addr()).expect("static server listed");
        assert_eq!(stat["source"], "config", "{}: {stat}", n.name);
    }

    // Invalid values from another writer are ignored (with a warning). The
    // watch delivers changes in order: once the valid registration that was
    // written after them is routed, the invalid ones have been seen.
    let bogus = closed_port();
    let bogus_addr = format!("127.0.0.1:{bogus}");
    let bogus_key = key_of(&prefix, &bogus_addr);
    let bogus2_addr = format!("127.0.0.1:{}", closed_port());
    let bogus2_key = key_of(&prefix, &bogus2_addr);
    etcd.put(&bogus_key, "not json");
    // The key names another address (and the value a weight of 7).
    etcd.put(
        &bogus2_key,
        &value_of(&e.addr()).replace(r#""weight":1"#, r#""weight":7"#),
    );
    let late = spawn_backend();
    etcd.put(&key_of(&prefix, &late.addr()), &value_of(&late.addr()));
    for n in [&a, &b] {
        wait_reaches(n, late.port, PROPAGATION);
        for (x, k) in [(&bogus_addr, &bogus_key), (&bogus2_addr, &bogus2_key)] {
            assert!(
                n.server(x).is_none() && !n.servers().iter().any(|s| s["key"] == k.as_str()),
                "{}: the invalid registration under {k} was applied: {:?}",
                n.name,
                n.addresses()
            );
            assert!(
                n.log_count(k) >= 1,
                "{}: no warning naming the invalid key {k}\n{}",
                n.name,
                n.log()
            );
        }
        assert_eq!(
            n.connected(),
            Some(1.0),
            "{}: invalid values disconnected it",
            n.name
        );
        assert_eq!(
            n.server(&e.addr()).map(|x| x["weight"].clone()),
            Some(Value::from(1)),
            "{}: the invalid value naming {} changed its registration",
            n.name,
            e.addr()
        );
    }

    // Registered once for the whole cluster: a second POST elsewhere is a duplicate.
    let body = format!(r#"{{"address": "{addr}"}}"#);
    assert_error(
        &b.call("POST", "/servers", &body),
        400,
        "POST of an address already registered through A",
    );

    // A reload may not change [cluster]; an unchanged one keeps the etcd entries.
    let original = std::fs::read_to_string(&a.lb.config.path).unwrap();
    let other_prefix = unique_prefix();
    std::fs::write(&a.lb.config.path, original.replace(&prefix, &other_prefix)).unwrap();
    let msg = assert_error(
        &a.call("POST", "/reload", ""),
        400,
        "reload that changes cluster.prefix",
    );
    assert!(
        msg.contains("cluster"),
        "the refusal should name the [cluster] section: {msg:?}"
    );
    std::fs::write(&a.lb.config.path, &original).unwrap();
    let (status, v) = a.json("POST", "/reload", "");
    assert_eq!(status, 200, "reload of the unchanged file: {v}");
    assert!(
        a.server(&addr).is_some_and(|x| x["source"] == "etcd"),
        "the etcd entry did not survive a reload: {:?}",
        a.addresses()
    );
    wait_reaches(&a, e.port, WAIT);
}

// ---------------------------------------------------------------------------
// 2. Deletion through one instance drains and stops routing on the others
// ---------------------------------------------------------------------------

/// Polls `GET path` through the node until `backend_port` answers (any
/// status: `ekilibri-backend` answers 404 for paths it does not serve).
#[track_caller]
fn wait_path_reaches(node: &Node, path: &str, backend_port: u16) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let hit = poll_until(PROPAGATION, || {
        let o = try_request(node.port(), "GET", path);
        *seen.entry(describe(&o)).or_insert(0) += 1;
        matches!(o, Ok((_, Some(p))) if p == backend_port).then_some(())
    });
    assert!(
        hit.is_some(),
        "{}: GET {path} never reached {backend_port}; answers: {seen:?}; servers: {:?}\n{}",
        node.name,
        node.addresses(),
        node.log()
    );
}

#[test]
fn each_pool_has_its_own_key_space() {
    let _serial = serial();
    let etcd = Etcd::start();
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e1 = spawn_backend();
    let e2 = spawn_backend();
    // Pool api starts empty (allowed in cluster mode) and checks `/stats`.
    let toml = format!(
        "{}\n[pools.api]\nservers = []\nhealth_check_path = \"/stats\"\n\n\
         [[routes]]\npath_prefix = \"/api/\"\npool = \"api\"\n",
        cluster_toml(&[s.port], &etcd.endpoint(), &prefix)
    );
    let a = Node::from_toml("A", &toml);
    let b = Node::from_toml("B", &toml);
    for n in [&a, &b] {
        n.wait_connected(true, WAIT);
    }
    let in_pool = |n: &Node, pool: &str, addr: &str| {
        n.servers()
            .into_iter()
            .find(|v| v["pool"] == pool && v["address"] == addr)
    };

    // Another writer registers e1 under pool api's keys: both instances
    // apply it to pool api, and route only `/api/` requests to it.
    let e1_key = format!("{prefix}pools/api/servers/{}", e1.addr());
    etcd.put(&e1_key, &value_of(&e1.addr()));
    for n in [&a, &b] {
        wait_path_reaches(n, "/api/x", e1.port);
        let v = in_pool(n, "api", &e1.addr())
            .unwrap_or_else(|| panic!("{}: e1 not in pool api: {:?}", n.name, n.addresses()));
        assert_eq!(
            (&v["source"], &v["key"]),
            (&Value::from("etcd"), &Value::from(e1_key.as_str())),
            "{v}"
        );
        assert!(in_pool(n, "default", &e1.addr()).is_none(), "{}", n.name);
        // `/` stays in the default pool (its probes still reach e1, so
        // count by the answering port, not e1's request counter).
        for _ in 0..10 {
            let o = try_request(n.port(), "GET", "/");
            assert!(
                matches!(o, Ok((200, Some(p))) if p == s.port),
                "{}: {}",
                n.name,
                describe(&o)
            );
        }
    }

    // POST with "pool": "api" writes the pool's key, not the default pool's;
    // with no check, every instance uses the pool's health_check_path.
    let body = format!(r#"{{"address": "{}", "pool": "api"}}"#, e2.addr());
    let (status, v) = a.json("POST", "/servers", &body);
    assert_eq!(status, 201, "{v}\n{}", a.log());
    assert_eq!(v["pool"], "api", "{v}");
    let e2_key = format!("{prefix}pools/api/servers/{}", e2.addr());
    let stored = etcd.get_value(&e2_key).unwrap_or_else(|| {
        panic!(
            "no key {e2_key}: {}",
            etcd.ctl(&["get", "--prefix", &prefix])
        )
    });
    assert_eq!(stored["address"], e2.addr().as_str(), "{stored}");
    assert!(etcd.get(&key_of(&prefix, &e2.addr())).is_none());
    for n in [&a, &b] {
        wait_path_reaches(n, "/api/x", e2.port);
        let v = in_pool(n, "api", &e2.addr())
            .unwrap_or_else(|| panic!("{}: e2 not in pool api: {:?}", n.name, n.addresses()));
        assert_eq!(v["check"]["path"], "/stats", "{}: {v}", n.name);
    }

    // DELETE through B with `?pool=api` deletes that key everywhere.
    let r = b.call("DELETE", &format!("/servers/{}?pool=api", e2.addr()), "");
    assert_eq!(r.status, 204, "{r:?}");
    assert!(etcd.get(&e2_key).is_none(), "{e2_key} still in etcd");
    let gone = poll_until(PROPAGATION, || {
        in_pool(&a, "api", &e2.addr()).is_none().then_some(())
    });
    assert!(gone.is_some(), "A still has e2: {:?}", a.addresses());
    // An unknown pool is refused before anything is written.
    let body = format!(r#"{{"address": "{}", "pool": "web"}}"#, e2.addr());
    let (status, v) = a.json("POST", "/servers", &body);
    assert_eq!(status, 400, "{v}");
    assert!(
        etcd.get(&format!("{prefix}pools/web/servers/{}", e2.addr()))
            .is_none()
    );
}

#[test]
fn delete_through_b_drains_and_stops_routing_on_a() {
    let _serial = serial();
    let etcd = Etcd::start();
    let prefix = unique_prefix();
    // The static server is a closed port, so it is down on both instances:
    // every request goes to an etcd-registered backend, and with only e1
    // registered the slow request must go to e1 (seen by the tap).
    let dead = closed_port();
    let dead_addr = format!("127.0.0.1:{dead}");
    let e1 = spawn_backend();
    let e2 = spawn_backend();
    let tap = Tap::start(e1.port, b"GET /sleep");
    let e1_addr = format!("127.0.0.1:{}", tap.port);
    let a = Node::start("A", &[dead], &etcd.endpoint(), &prefix);
    let b = Node::start("B", &[dead], &etcd.endpoint(), &prefix);
    for n in [&a, &b] {
        n.wait_connected(true, WAIT);
        n.wait_health(&dead_addr, "down");
    }
    a.add(&e1_addr);
    for n in [&a, &b] {
        wait_reaches(n, e1.port, PROPAGATION);
    }

    let before = tap.hits();
    let a_port = a.port();
    let sleeper = thread::spawn(move || try_request(a_port, "GET", "/sleep?ms=4000"));
    assert!(
        tap.wait_hit_after(before, WAIT),
        "the slow request on A never reached e1"
    );
    // A second backend, so that A has somewhere else to send new requests.
    b.add(&e2.addr());
    wait_reaches(&a, e2.port, PROPAGATION);

    let r = b.call("DELETE", &format!("/servers/{e1_addr}"), "");
    let deleted = Instant::now();
    assert_eq!(
        r.status,
        204,
        "DELETE /servers/{e1_addr} on B: {r:?}\n{}",
        b.log()
    );
    assert!(
        b.server(&e1_addr).is_none(),
        "B answered 204 but still lists {e1_addr}: {:?}",
        b.addresses()
    );
    assert!(
        etcd.get(&key_of(&prefix, &e1_addr)).is_none(),
        "the etcd key is still there after DELETE on B"
    );

    // A: new requests stop going to e1 within ~1 s, while the slow request
    // is still being drained there.
    let mut streak = 0;
    let mut answers = Vec::new();
    let stopped = poll_until(PROPAGATION, || {
        let o = try_request(a.port(), "GET", "/");
        answers.push(describe(&o));
        match o {
            Ok((200, Some(p))) if p == e2.port => streak += 1,
            _ => streak = 0,
        }
        (streak >= 20).then_some(())
    });
    assert!(
        stopped.is_some(),
        "A kept sending new requests to deleted {e1_addr} (backend {}) for {PROPAGATION:?} after the DELETE on B; last answers: {:?}\n{}",
        e1.port,
        &answers[answers.len().saturating_sub(10)..],
        a.log()
    );
    assert!(
        !sleeper.is_finished(),
        "test timing: the slow request ended before A's routing could be checked"
    );
    let ports = serve_all_ok(&a, 30);
    assert_eq!(
        ports.keys().copied().collect::<Vec<u16>>(),
        vec![e2.port],
        "A after the DELETE on B: {ports:?}"
    );
    let slow = sleeper.join().expect("sleeper thread");
    assert!(
        matches!(slow, Ok((200, Some(p))) if p == e1.port),
        "the in-flight request on A was not completed by e1: {} ({:?} after the DELETE)\n{}",
        describe(&slow),
        deleted.elapsed(),
        a.log()
    );
    a.wait_gone(&e1_addr, WAIT);
    for n in [&a, &b] {
        assert_no_traffic_to(n, &e1, 20);
    }
}

// ---------------------------------------------------------------------------
// 3. TTL registrations and heartbeats
// ---------------------------------------------------------------------------

#[test]
fn ttl_registration_lives_while_heartbeated_and_expires_everywhere() {
    let _serial = serial();
    let etcd = Etcd::start();
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e = spawn_backend();
    let (a, b) = connected_pair(&[s.port], &etcd.endpoint(), &prefix);
    let addr = e.addr();
    let path = format!("/servers/{addr}");
    let r = a.call("PUT", &path, r#"{"ttl": 2}"#);
    assert_eq!(
        r.status,
        201,
        "PUT {path} (create) on A: {r:?}\n{}",
        a.log()
    );
    for n in [&a, &b] {
        wait_reaches(n, e.port, PROPAGATION);
        let entry = n.server(&addr).expect("listed");
        assert_eq!(entry["source"], "etcd", "{}: {entry}", n.name);
        assert_eq!(entry["ttl"], 2, "{}: {entry}", n.name);
    }
    let key = key_of(&prefix, &addr);
    let kv = etcd
        .get(&key)
        .unwrap_or_else(|| panic!("no key {key} in etcd"));
    assert!(
        kv["lease"].as_u64().is_some_and(|l| l != 0),
        "a TTL registration must be attached to an etcd lease: {kv}"
    );

    // Heartbeat every 0.5 s for 4 s (twice the TTL): alternately through A
    // and B, as a backend host behind a VIP would.
    let start = Instant::now();
    let mut last_beat = Instant::now();
    for i in 1..=8u32 {
        let next = start + Duration::from_millis(500) * i;
        thread::sleep(next.saturating_duration_since(Instant::now()));
        let n = if i % 2 == 0 { &a } else { &b };
        let r = n.call("PUT", &path, r#"{"ttl": 2}"#);
        assert_eq!(
            r.status, 200,
            "{}: heartbeat {i} (PUT {path}): {r:?}",
            n.name
        );
        last_beat = Instant::now();
        for n in [&a, &b] {
            assert!(
                n.server(&addr).is_some(),
                "{}: {addr} vanished while heartbeated ({:?} after the first PUT): {:?}",
                n.name,
                start.elapsed(),
                n.addresses()
            );
        }
    }
    for n in [&a, &b] {
        wait_reaches(n, e.port, PROPAGATION);
    }

    // Heartbeats stop: gone from both within ttl + 2 s.
    for n in [&a, &b] {
        let gone = n.wait_gone(
            &addr,
            Duration::from_secs(4).saturating_sub(last_beat.elapsed()),
        );
        let after = gone.duration_since(last_beat);
        assert!(
            after >= Duration::from_millis(1500),
            "{}: {addr} removed {after:?} after its last heartbeat (TTL 2 s)",
            n.name
        );
    }
    assert!(etcd.get(&key).is_none(), "the key outlived its lease");
    for n in [&a, &b] {
        assert_no_traffic_to(n, &e, 20);
    }
}

// ---------------------------------------------------------------------------
// 4. etcd down: keep serving, refuse cluster writes
// ---------------------------------------------------------------------------

#[test]
fn etcd_down_keeps_serving_and_refuses_cluster_writes() {
    let _serial = serial();
    let mut etcd = Etcd::start();
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e = spawn_backend();
    let other = spawn_backend();
    let (a, b) = connected_pair(&[s.port], &etcd.endpoint(), &prefix);
    let addr = e.addr();
    a.add(&addr);
    for n in [&a, &b] {
        wait_reaches(n, e.port, PROPAGATION);
    }

    etcd.kill();
    for n in [&a, &b] {
        n.wait_connected(false, WAIT);
        let health = n.get("/health");
        assert_eq!(
            health["cluster"]["connected"], false,
            "{}: /health {health}",
            n.name
        );
        let ports = serve_all_ok(n, 20);
        assert!(
            ports.contains_key(&e.port) && ports.contains_key(&s.port),
            "{}: with etcd down both the static and the etcd backend must keep serving: {ports:?}",
            n.name
        );
    }

    // Cluster writes are refused and applied nowhere.
    let body = format!(r#"{{"address": "{}"}}"#, other.addr());
    assert_unavailable(
        &a.call("POST", "/servers", &body),
        "POST on A with etcd down",
    );
    assert_unavailable(
        &b.call(
            "PUT",
            &format!("/servers/{}", other.addr()),
            r#"{"ttl": 5}"#,
        ),
        "PUT on B with etcd down",
    );
    assert_unavailable(
        &b.call("DELETE", &format!("/servers/{addr}"), ""),
        "DELETE by address of an etcd entry on B with etcd down",
    );
    let id = a.server(&addr).expect("listed")["id"]
        .as_u64()
        .expect("numeric id");
    assert_unavailable(
        &a.call("DELETE", &format!("/servers/{id}"), ""),
        "DELETE by id of an etcd entry on A with etcd down",
    );
    for n in [&a, &b] {
        assert!(
            n.server(&other.addr()).is_none(),
            "{}: a refused write was applied: {:?}",
            n.name,
            n.addresses()
        );
        let entry = n.server(&addr).unwrap_or_else(|| {
            panic!(
                "{}: the etcd entry vanished with etcd down: {:?}",
                n.name,
                n.addresses()
            )
        });
        assert_eq!(entry["source"], "etcd", "{}: {entry}", n.name);
        wait_reaches(n, e.port, WAIT);
        assert_eq!(
            n.log_count("lost the cluster store"),
            1,
            "{}: `lost the cluster store` should be logged once\n{}",
            n.name,
            n.log()
        );
    }

    // Static servers are local: removing one is no cluster write.
    let r = a.call("DELETE", &format!("/servers/{}", s.addr()), "");
    assert_eq!(
        r.status, 204,
        "DELETE of A's static server with etcd down: {r:?}"
    );
    assert!(
        b.server(&s.addr()).is_some(),
        "B lost its own static server"
    );
    let ports = serve_all_ok(&a, 10);
    assert_eq!(
        ports.keys().copied().collect::<Vec<u16>>(),
        vec![e.port],
        "A after removing its static server: {ports:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. Resync: changes missed while disconnected
// ---------------------------------------------------------------------------

#[test]
fn resync_after_a_cut_applies_changes_missed_meanwhile() {
    let _serial = serial();
    let etcd = Etcd::start();
    let relay = Relay::start(etcd.client_port);
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e1 = spawn_backend();
    let e2 = spawn_backend();
    let e3 = spawn_backend();
    let (a, b) = connected_pair(&[s.port], &relay.endpoint(), &prefix);
    // e1 through the API, e2 by another writer.
    a.add(&e1.addr());
    etcd.put(&key_of(&prefix, &e2.addr()), &value_of(&e2.addr()));
    for n in [&a, &b] {
        wait_reaches(n, e1.port, PROPAGATION);
        wait_reaches(n, e2.port, PROPAGATION);
    }
    let resyncs_before: Vec<f64> = [&a, &b]
        .iter()
        .map(|n| {
            n.metric("lb_cluster_resyncs_total")
                .unwrap_or_else(|| panic!("{}: no lb_cluster_resyncs_total", n.name))
        })
        .collect();

    relay.cut();
    for n in [&a, &b] {
        n.wait_connected(false, WAIT);
    }
    // Another writer changes the set while they are cut off, and the history
    // is compacted: only a fresh range read can tell what happened.
    assert_eq!(etcd.del(&key_of(&prefix, &e1.addr())), 1);
    let rev = etcd.put(&key_of(&prefix, &e3.addr()), &value_of(&e3.addr()));
    etcd.compact(rev);
    // Fail static: they keep what they had.
    for n in [&a, &b] {
        assert!(
            n.server(&e1.addr()).is_some() && n.server(&e3.addr()).is_none(),
            "{}: the pool changed while cut off from etcd: {:?}",
            n.name,
            n.addresses()
        );
        wait_reaches(n, e1.port, WAIT);
    }

    relay.restore();
    for n in [&a, &b] {
        let converged = poll_until(RECONNECT, || {
            (n.connected() == Some(1.0)
                && n.server(&e1.addr()).is_none()
                && n.server(&e3.addr()).is_some())
            .then_some(())
        });
        assert!(
            converged.is_some(),
            "{}: did not converge within {RECONNECT:?} after etcd became reachable again \
             (want e1 {} gone, e3 {} present, connected 1): connected={:?}, servers={:?}\n{}",
            n.name,
            e1.addr(),
            e3.addr(),
            n.connected(),
            n.addresses(),
            n.log()
        );
    }
    for (n, before) in [&a, &b].iter().zip(resyncs_before) {
        wait_reaches(n, e3.port, PROPAGATION);
        wait_reaches(n, e2.port, WAIT);
        let after = n.metric("lb_cluster_resyncs_total").unwrap_or(0.0);
        assert!(
            after > before,
            "{}: lb_cluster_resyncs_total {before} -> {after} across a reconnect",
            n.name
        );
    }
    for n in [&a, &b] {
        assert_no_traffic_to(n, &e1, 20);
    }
}

#[test]
fn etcd_restart_then_changes_by_another_writer_reach_both() {
    let _serial = serial();
    let mut etcd = Etcd::start();
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e1 = spawn_backend();
    let e2 = spawn_backend();
    let (a, b) = connected_pair(&[s.port], &etcd.endpoint(), &prefix);
    a.add(&e1.addr());
    for n in [&a, &b] {
        wait_reaches(n, e1.port, PROPAGATION);
    }

    etcd.kill();
    for n in [&a, &b] {
        n.wait_connected(false, WAIT);
        let ports = serve_all_ok(n, 20);
        assert!(
            ports.contains_key(&e1.port),
            "{}: e1 no longer served with etcd down: {ports:?}",
            n.name
        );
    }

    etcd.spawn(); // same data directory and ports
    assert_eq!(etcd.del(&key_of(&prefix, &e1.addr())), 1);
    etcd.put(&key_of(&prefix, &e2.addr()), &value_of(&e2.addr()));
    for n in [&a, &b] {
        let converged = poll_until(RECONNECT, || {
            (n.connected() == Some(1.0)
                && n.server(&e1.addr()).is_none()
                && n.server(&e2.addr()).is_some())
            .then_some(())
        });
        assert!(
            converged.is_some(),
            "{}: did not converge within {RECONNECT:?} after etcd restarted \
             (want e1 {} gone, e2 {} present, connected 1): connected={:?}, servers={:?}\n{}",
            n.name,
            e1.addr(),
            e2.addr(),
            n.connected(),
            n.addresses(),
            n.log()
        );
        assert!(
            n.log_count("cluster store connected") >= 2,
            "{}: expected a second `cluster store connected` line\n{}",
            n.name,
            n.log()
        );
    }
    for n in [&a, &b] {
        wait_reaches(n, e2.port, PROPAGATION);
    }
    for n in [&a, &b] {
        assert_no_traffic_to(n, &e1, 20);
    }
}

#[test]
fn silent_partition_is_detected_and_writes_fail_fast() {
    let _serial = serial();
    let etcd = Etcd::start();
    let relay = Relay::start(etcd.client_port);
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e1 = spawn_backend();
    let e2 = spawn_backend();
    let a = Node::start("A", &[s.port], &relay.endpoint(), &prefix);
    a.wait_connected(true, WAIT);
    a.add(&e1.addr());
    wait_reaches(&a, e1.port, PROPAGATION);

    // etcd stops answering without closing anything.
    relay.freeze();
    let frozen = Instant::now();
    let a_admin = a.admin;
    let body = format!(r#"{{"address": "{}"}}"#, e2.addr());
    let writer = thread::spawn(move || {
        let r = call_admin(a_admin, "POST", "/servers", body.as_bytes());
        (r, Instant::now())
    });
    // While that write waits on etcd, traffic and admin reads go on.
    let ports = serve_all_ok(&a, 20);
    assert!(
        ports.contains_key(&e1.port),
        "A during the partition: {ports:?}"
    );
    let t = Instant::now();
    assert!(a.server(&e1.addr()).is_some());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "GET /servers took {:?} while a cluster write was pending",
        t.elapsed()
    );
    let (r, answered) = writer.join().expect("writer thread");
    let took = answered.duration_since(frozen);
    assert_unavailable(&r, "POST during a silent partition");
    // The contract: `timeout` (ms) bounds each etcd call; allow a few.
    let bound = Duration::from_millis(4 * CLUSTER_TIMEOUT_MS);
    assert!(
        took <= bound,
        "the POST during the partition took {took:?} (cluster timeout {CLUSTER_TIMEOUT_MS} ms)"
    );
    assert!(
        a.server(&e2.addr()).is_none(),
        "a refused write was applied"
    );
    // The dead connection is noticed (keep-alive) without any reset.
    a.wait_connected(false, Duration::from_secs(25));
    eprintln!("partition noticed {:?} after it began", frozen.elapsed());
    wait_reaches(&a, e1.port, WAIT);

    // Meanwhile another writer deletes e1; the partition heals.
    assert_eq!(etcd.del(&key_of(&prefix, &e1.addr())), 1);
    relay.cut();
    relay.restore();
    a.wait_connected(true, RECONNECT);
    a.wait_gone(&e1.addr(), WAIT);
    assert_no_traffic_to(&a, &e1, 10);
}

#[test]
fn idle_connection_to_etcd_stays_up() {
    // Not serialised: nothing here has a tight deadline. etcd closes
    // connections whose keep-alive pings come more often than its
    // --grpc-keepalive-min-time (5 s by default) allows: an instance must
    // stay connected to a default etcd, not flap.
    let etcd = Etcd::start();
    let prefix = unique_prefix();
    let s = spawn_backend();
    let a = Node::start("A", &[s.port], &etcd.endpoint(), &prefix);
    a.wait_connected(true, WAIT);
    let resyncs = a.metric("lb_cluster_resyncs_total");
    let start = Instant::now();
    let observe = Duration::from_secs(12);
    while start.elapsed() < observe {
        let connected = a.connected();
        assert!(
            connected == Some(1.0) && a.log_count("lost the cluster store") == 0,
            "A lost its idle connection to a healthy etcd {:?} after connecting \
             (lb_cluster_connected {connected:?})\n{}",
            start.elapsed(),
            a.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        a.log_count("lost the cluster store"),
        0,
        "A dropped its connection to a healthy etcd\n{}",
        a.log()
    );
    assert_eq!(
        a.metric("lb_cluster_resyncs_total"),
        resyncs,
        "A resynchronised with a healthy etcd\n{}",
        a.log()
    );
}

#[test]
fn etcd_that_lost_its_data_is_followed() {
    // etcd comes back empty (data directory lost, cluster rebuilt): its
    // revisions start again from 1, below what the instances have seen.
    let _serial = serial();
    let mut etcd = Etcd::start();
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e1 = spawn_backend();
    let e2 = spawn_backend();
    let (a, b) = connected_pair(&[s.port], &etcd.endpoint(), &prefix);
    // Some history first, so e1's revision is well above a fresh store's.
    let other = format!("{prefix}unrelated");
    for i in 0..10 {
        etcd.put(&other, &i.to_string());
    }
    a.add(&e1.addr());
    for n in [&a, &b] {
        wait_reaches(n, e1.port, PROPAGATION);
    }

    etcd.kill();
    for n in [&a, &b] {
        n.wait_connected(false, WAIT);
    }
    std::fs::remove_dir_all(&etcd.dir).expect("remove the etcd data directory");
    etcd.spawn();
    etcd.put(&key_of(&prefix, &e2.addr()), &value_of(&e2.addr()));
    for n in [&a, &b] {
        let converged = poll_until(RECONNECT, || {
            (n.connected() == Some(1.0)
                && n.server(&e1.addr()).is_none()
                && n.server(&e2.addr()).is_some())
            .then_some(())
        });
        assert!(
            converged.is_some(),
            "{}: did not follow an etcd that came back without its data within {RECONNECT:?} \
             (want e1 {} gone, e2 {} present, connected 1): connected={:?}, revision={:?}, servers={:?}\n{}",
            n.name,
            e1.addr(),
            e2.addr(),
            n.connected(),
            n.metric("lb_cluster_revision"),
            n.addresses(),
            n.log()
        );
    }
    for n in [&a, &b] {
        wait_reaches(n, e2.port, PROPAGATION);
    }
}

// ---------------------------------------------------------------------------
// 6. Bad [cluster] tables are refused; TTL without a cluster
// ---------------------------------------------------------------------------

/// Runs a config with `cluster_table` appended, normally and with
/// `--check`: exit status 2 and a single stderr line naming the file and one
/// of `keys`.
#[track_caller]
fn assert_cluster_rejected(cluster_table: &str, keys: &[&str]) {
    let toml = format!("{}\n{cluster_table}", Config::new(&[9]).to_toml());
    let file = write_temp_file(&toml, ".toml");
    let path = path_str(&file.path);
    for check in [false, true] {
        let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), file.path.as_os_str()];
        if check {
            args.push(OsStr::new("--check"));
        }
        let r = run_balancer_to_exit(&args, Duration::from_secs(10));
        let mode = if check { "--check" } else { "start" };
        let what = format!("{mode} with [cluster] {cluster_table:?}");
        assert_eq!(
            r.status.code(),
            Some(2),
            "{what}: expected exit status 2, got {:?}; stderr:\n{}",
            r.status,
            r.stderr
        );
        let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected a one-line error, stderr:\n{}",
            r.stderr
        );
        assert!(
            keys.iter().any(|k| lines[0].contains(k)),
            "{what}: the error does not name {keys:?}: {}",
            lines[0]
        );
        assert!(
            lines[0].contains(&path),
            "{what}: the error does not name the file: {}",
            lines[0]
        );
        assert!(
            !lines[0].to_lowercase().contains("panicked"),
            "{what}: {}",
            lines[0]
        );
    }
}

#[test]
fn bad_cluster_config_is_refused_naming_the_key() {
    let etcd_ok = "etcd = [\"http://127.0.0.1:2379\"]";
    let cases: Vec<(String, &[&str])> = vec![
        ("[cluster]\netcd = []\n".into(), &["cluster.etcd"]),
        ("[cluster]\nprefix = \"/x/\"\n".into(), &["cluster.etcd"]),
        (
            "[cluster]\netcd = [\"ftp://127.0.0.1:2379\"]\n".into(),
            &["cluster.etcd"],
        ),
        (
            format!("[cluster]\n{etcd_ok}\nprefix = \"ekilibri/\"\n"),
            &["cluster.prefix"],
        ),
        (
            format!("[cluster]\n{etcd_ok}\nprefix = \"/ekilibri\"\n"),
            &["cluster.prefix"],
        ),
        (
            format!("[cluster]\n{etcd_ok}\nusername = \"ekilibri\"\n"),
            &["cluster.password", "cluster.username"],
        ),
        (
            "[cluster]\netcd = [\"https://127.0.0.1:2379\"]\ncert_file = \"/etc/hostname\"\n".into(),
            &["cluster.key_file", "cluster.cert_file"],
        ),
        (
            "[cluster]\netcd = [\"https://127.0.0.1:2379\"]\nca_file = \"/nonexistent/ekilibri-ca.pem\"\n".into(),
            &["cluster.ca_file"],
        ),
        (
            format!("[cluster]\n{etcd_ok}\nendpoints = [\"http://127.0.0.1:2379\"]\n"),
            &["endpoints"],
        ),
    ];
    for (table, keys) in &cases {
        assert_cluster_rejected(table, keys);
    }

    // A good table passes --check without contacting etcd.
    let toml = format!(
        "{}\n[cluster]\netcd = [\"http://127.0.0.1:{}\"]\nprefix = \"/ok/\"\ntimeout = 500\n",
        Config::new(&[9]).to_toml(),
        closed_port()
    );
    let file = write_temp_file(&toml, ".toml");
    let r = run_balancer_to_exit(
        &[
            OsStr::new("-f"),
            file.path.as_os_str(),
            OsStr::new("--check"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(
        r.status.code(),
        Some(0),
        "--check of a good [cluster] table: stderr:\n{}\nstdout:\n{}",
        r.stderr,
        r.stdout
    );
}

#[test]
fn ttl_without_cluster_expires_locally() {
    let s = spawn_backend();
    let e = spawn_backend();
    let other = spawn_backend();
    let node = Node::from_toml(
        "standalone",
        &Config::new(&[s.port]).with("workers", "1").to_toml(),
    );
    let addr = e.addr();
    let path = format!("/servers/{addr}");
    let t0 = Instant::now();
    let r = node.call("PUT", &path, r#"{"ttl": 2}"#);
    assert_eq!(r.status, 201, "PUT {path} (create): {r:?}");
    let entry = node.server(&addr).expect("listed");
    assert_eq!(entry["source"], "api", "{entry}");
    assert_eq!(entry["ttl"], 2, "{entry}");
    wait_reaches(&node, e.port, WAIT);

    thread::sleep((t0 + Duration::from_millis(1200)).saturating_duration_since(Instant::now()));
    let r = node.call("PUT", &path, r#"{"ttl": 2}"#);
    let renewed = Instant::now();
    assert_eq!(r.status, 200, "PUT {path} (renewal): {r:?}");
    // Past the first expiry, before the renewed one.
    thread::sleep((t0 + Duration::from_millis(2500)).saturating_duration_since(Instant::now()));
    assert!(
        node.server(&addr).is_some(),
        "{addr} expired {:?} after its renewal (TTL 2 s)",
        renewed.elapsed()
    );
    let gone = node.wait_gone(&addr, Duration::from_secs(4));
    let after = gone.duration_since(renewed);
    assert!(
        after >= Duration::from_millis(1500),
        "{addr} removed {after:?} after its renewal (TTL 2 s)"
    );
    assert_no_traffic_to(&node, &e, 10);

    // DELETE by address works without a cluster too.
    node.add(&other.addr());
    wait_reaches(&node, other.port, WAIT);
    let r = node.call("DELETE", &format!("/servers/{}", other.addr()), "");
    assert_eq!(r.status, 204, "DELETE by address: {r:?}");
    assert!(node.server(&other.addr()).is_none());
    let r = node.call("DELETE", &format!("/servers/{}", other.addr()), "");
    assert_error(&r, 404, "DELETE of an unknown address");
}

// ---------------------------------------------------------------------------
// Credentials and TLS are passed through to the etcd client
// ---------------------------------------------------------------------------

#[test]
fn etcd_user_and_password_are_used() {
    let _serial = serial();
    let mut etcd = Etcd::start();
    let prefix = unique_prefix();
    // A user that may only read and write the cluster's prefix.
    etcd.ctl(&["user", "add", "root:root-secret"]);
    etcd.ctl(&["user", "grant-role", "root", "root"]);
    etcd.ctl(&["role", "add", "balancer"]);
    etcd.ctl(&[
        "role",
        "grant-permission",
        "balancer",
        "--prefix=true",
        "readwrite",
        &prefix,
    ]);
    etcd.ctl(&["user", "add", "lb:lb-secret"]);
    etcd.ctl(&["user", "grant-role", "lb", "balancer"]);
    etcd.ctl(&["auth", "enable"]);
    etcd.ctl_extra = vec!["--user=root:root-secret".into()];

    let s = spawn_backend();
    let e1 = spawn_backend();
    let with_user = |user: &str, password: &str| {
        format!(
            "{}username = \"{user}\"\npassword = \"{password}\"\n",
            cluster_toml(&[s.port], &etcd.endpoint(), &prefix)
        )
    };
    let a = Node::from_toml("A", &with_user("lb", "lb-secret"));
    a.wait_connected(true, WAIT);
    let v = a.add(&e1.addr());
    assert_eq!(v["source"], "etcd", "{v}");
    let stored = etcd
        .get_value(&key_of(&prefix, &e1.addr()))
        .expect("the registration is in etcd, written as user lb");
    assert_eq!(stored["address"], e1.addr());
    a.wait_health(&e1.addr(), "up");
    wait_reaches(&a, e1.port, WAIT);

    // A wrong password never connects, says why, and refuses writes.
    let b = Node::from_toml("B", &with_user("lb", "wrong"));
    let said = poll_until(WAIT, || {
        (b.log_count("cannot reach the cluster store") > 0).then_some(())
    });
    assert!(
        said.is_some(),
        "B never said it cannot reach etcd:\n{}",
        b.log()
    );
    let log = b.log().to_lowercase();
    assert!(
        log.contains("authentication failed") || log.contains("invalid"),
        "B's log does not say the credentials were refused:\n{}",
        b.log()
    );
    assert_eq!(b.connected(), Some(0.0));
    assert!(
        b.server(&e1.addr()).is_none(),
        "B applied etcd data without credentials"
    );
    let e2 = spawn_backend();
    assert_unavailable(
        &b.call(
            "POST",
            "/servers",
            &format!(r#"{{"address":"{}"}}"#, e2.addr()),
        ),
        "POST with wrong etcd credentials",
    );
    assert!(etcd.get(&key_of(&prefix, &e2.addr())).is_none());
    // Static traffic is unaffected.
    let r = http_get(b.port(), "/");
    assert_eq!((r.status, r.backend_port()), (200, s.port), "{r:?}");
}

/// Writes a CA, a server certificate for 127.0.0.1 and a client
/// certificate into `dir` with the openssl command-line tool.
fn make_certs(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("the TLS test needs the openssl tool: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext,
            "-out",
            &format!("{name}.pem"),
        ]);
    }
}

#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let _serial = serial();
    let certs = unique_temp_path("-certs");
    make_certs(&certs);
    let f = |n: &str| path_str(&certs.join(n));
    let etcd = Etcd::start_with(
        "https",
        vec![
            format!("--cert-file={}", f("server.pem")),
            format!("--key-file={}", f("server.key")),
            format!("--trusted-ca-file={}", f("ca.pem")),
            "--client-cert-auth".into(),
        ],
        vec![
            format!("--cacert={}", f("ca.pem")),
            format!("--cert={}", f("client.pem")),
            format!("--key={}", f("client.key")),
        ],
    );
    let prefix = unique_prefix();
    let s = spawn_backend();
    let e1 = spawn_backend();
    let base = cluster_toml(&[s.port], &etcd.endpoint(), &prefix);
    let a = Node::from_toml(
        "A",
        &format!(
            "{base}ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            f("ca.pem"),
            f("client.pem"),
            f("client.key")
        ),
    );
    a.wait_connected(true, WAIT);
    a.add(&e1.addr());
    assert!(etcd.get(&key_of(&prefix, &e1.addr())).is_some());
    a.wait_health(&e1.addr(), "up");
    wait_reaches(&a, e1.port, WAIT);

    // Trusting the CA but without a client certificate: etcd refuses us.
    let b = Node::from_toml("B", &format!("{base}ca_file = \"{}\"\n", f("ca.pem")));
    let said = poll_until(WAIT, || {
        (b.log_count("cannot reach the cluster store") > 0).then_some(())
    });
    assert!(
        said.is_some(),
        "B connected without a client certificate:\n{}",
        b.log()
    );
    assert_eq!(b.connected(), Some(0.0));
    assert!(b.server(&e1.addr()).is_none());

    // A CA that did not sign etcd's certificate: no connection either.
    let other = unique_temp_path("-other-ca");
    make_certs(&other);
    let c = Node::from_toml(
        "C",
        &format!(
            "{base}ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            path_str(&other.join("ca.pem")),
            f("client.pem"),
            f("client.key")
        ),
    );
    let said = poll_until(WAIT, || {
        (c.log_count("cannot reach the cluster store") > 0).then_some(())
    });
    assert!(
        said.is_some(),
        "C trusted a certificate its CA did not sign:\n{}",
        c.log()
    );
    assert!(c.server(&e1.addr()).is_none());
    let _ = std::fs::remove_dir_all(&certs);
    let _ = std::fs::remove_dir_all(&other);
}

/// A binary upgrade (SIGUSR2) in cluster mode: the new process reads the
/// registry from etcd and checks what it found before it reports ready, so
/// a backend known only through etcd is routed from its first request on.
#[test]
fn sigusr2_successor_reads_etcd_before_it_takes_over() {
    let _serial = serial();
    let etcd = Etcd::start();
    let prefix = unique_prefix();
    let e = spawn_backend();
    // The only static server is dead: every 200 must come from `e`, which
    // only etcd knows.
    let mut a = Node::start("A", &[closed_port()], &etcd.endpoint(), &prefix);
    a.wait_connected(true, WAIT);
    // A slow health check (400 ms): a successor that took over before its
    // first check of `e` passed would have nothing to route to meanwhile.
    let body = format!(
        r#"{{"address": "{}", "check": {{"type": "http", "path": "/sleep?ms=400"}}}}"#,
        e.addr()
    );
    let (status, v) = a.json("POST", "/servers", &body);
    assert_eq!(status, 201, "{v}");
    wait_reaches(&a, e.port, PROPAGATION);

    let port = a.port();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                outcomes.push(try_request(port, "GET", "/"));
                thread::sleep(Duration::from_millis(5));
            }
            outcomes
        })
    };
    thread::sleep(Duration::from_millis(300));
    a.lb.guard.signal("USR2");
    let status =
        a.lb.guard
            .wait_timeout(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("old process did not exit\n{}", a.log()));
    assert_eq!(status.code(), Some(0), "{}", a.log());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let outcomes = traffic.join().unwrap();
    let new_pid = upgraded_pid(&a.lb.stderr).unwrap_or_else(|| panic!("no new_pid\n{}", a.log()));
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &new_pid.to_string()])
        .status();
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| **o != Ok((200, Some(e.port))))
        .map(describe)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests not served by the etcd backend across the upgrade: {:?}\n{}",
        bad.len(),
        outcomes.len(),
        &bad[..bad.len().min(5)],
        a.log()
    );
}
