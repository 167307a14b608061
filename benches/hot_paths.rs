//! Micro-benchmarks of ekilibri's per-request hot paths.
//!
//! What is measured (all single-threaded, no I/O):
//!
//! - `req ...`: `http::request::parse` (parse, check and rewrite a request
//!   head) on a wrk GET, a browser GET with cookies, a 40-header 4 KiB head
//!   and a POST with Content-Length, from an untrusted peer with a fresh
//!   request id made per iteration (into a reused `RequestId`, as the
//!   connection loop does), `Forwarded` off; plus the wrk GET from a
//!   trusted peer with `Forwarded` on. The `out` Vec is reused across
//!   iterations, as the connection loop does. The `httparse only` lines
//!   time the tokenizer alone on the same heads, as a baseline.
//! - `resp ...`: `http::response::parse` on a small 200 with Content-Length
//!   and a chunked 200 with 8 headers.
//! - `chunked ...`: `ChunkedDecoder` over a 64 KiB body in 4 KiB chunks, in
//!   `Rechunk` and `Decode` modes, fed in one call (throughput in MB/s of
//!   payload, 1 MB = 10^6 bytes).
//! - `proxy ...`: `proxy_protocol::parse` on a v1 and a v2 header for an
//!   IPv4 and an IPv6 connection, each followed by a request line (as at the
//!   start of a connection's buffer).
//! - `pick ...`: `Selector::select` for every strategy with 3, 100 and 1000
//!   backends (all up, weights cycling 1, 2, 3, client IPs cycling over 1024
//!   addresses, no requests in flight), and WeightedRoundRobin with weights
//!   999/1000, whose sequence is too long to precompute (picks run live);
//!   then with 100 backends, one excluded (a retry) or the first choice
//!   refused (a half-open backend without a trial slot).
//! - `update ...`: `Balancer::update` with 1000 backends and the same
//!   snapshot every time, plus WeightedRoundRobin with every weight at 100.
//!   Then the cases of issue 13, where each op alternates between two
//!   snapshots so every update sees a change: `rebuild` changes the set or a
//!   weight, `health flip` takes a backend down or brings it back (1000
//!   backends of weight 1000; 600 of weight 100/101 with two flapping; 40
//!   of weight 1000 and a 41st added; 6 of weight 999/1000, the longest
//!   period WeightedRoundRobin still precomputes, and 8, just too long).
//! - `snapshot ...`: what a worker does per request to reach a backend
//!   address: clone the `Rc<Arc<Snapshot>>` out of its `RefCell`, read
//!   `backends[i].backend.addr`, drop the clone; and the same through a plain
//!   `Arc<Snapshot>` clone for comparison.
//!
//! - `route ...`: `RouteTable::lookup` in a table of 10 routes (exact,
//!   wildcard, IPv6 and host-less, scanned in order): a hit on an exact host
//!   with a port, a hit on the last route (a wildcard, after every other
//!   route failed), and a miss that falls to the default pool; and in a
//!   table of 100 exact hosts (indexed by hash), a hit and a miss. Before
//!   timing, 1000 lookups of each case must allocate nothing (checked also
//!   under `cargo test --benches`).
//!
//! - `floor`: an empty op, the harness's own cost per iteration.
//!
//! How: each benchmark is warmed up (doubling the iteration count until the
//! warm-up budget is spent), then timed with `std::time::Instant` over 5
//! samples of N iterations each, N chosen from the warm-up so a sample takes
//! about the sample budget. The line shows the median ns/op and the min..max
//! of the 5 samples. A counting global allocator (wrapping `System`) reports
//! the allocation calls and bytes per op over the timed samples (a `realloc`
//! counts as one call of its new size); warm-up allocations, such as the
//! first growth of a reused `out` Vec, are not included.
//!
//! Run:
//!
//! ```text
//! cargo bench --bench hot_paths               # full run (~20-30 s)
//! cargo bench --bench hot_paths -- --quick    # fewer iterations (~5 s)
//! cargo bench --bench hot_paths -- pick       # only names containing "pick"
//! ```
//!
//! Without `--bench` on the command line (as under `cargo test --benches`)
//! every benchmark body runs once as a smoke test and nothing is timed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::hint::black_box;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ekilibri::backend::{Backend, BackendId};
use ekilibri::balancer;
use ekilibri::config::Strategy;
use ekilibri::health::{BackendView, BreakerState, Snapshot};
use ekilibri::http::BodyFraming;
use ekilibri::http::chunked::{self, ChunkedDecoder, Mode};
use ekilibri::http::forwarded::Forwarding;
use ekilibri::http::request;
use ekilibri::http::response::{self, ClientSide};
use ekilibri::proxy_protocol;
use ekilibri::request_id::{IdSource, RequestId};
use ekilibri::route::{self, RouteSpec, RouteTable};

// ---------------------------------------------------------------------------
// Counting allocator.

struct Counting;

static ALLOC_CALLS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

fn count(bytes: usize) {
    ALLOC_CALLS.fetch_add(1, Ordering::Relaxed);
    ALLOC_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn alloc_counters() -> (u64, u64) {
    (
        ALLOC_CALLS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    )
}

// ---------------------------------------------------------------------------
// Harness.

const SAMPLES: usize = 5;

struct Harness {
    /// Time each benchmark (false: run each body once as a smoke test).
    timed: bool,
    warm_up: Duration,
    sample: Duration,
    filter: Option<String>,
    pending_section: RefCell<Option<String>>,
}

impl Harness {
    fn from_args() -> Harness {
        let mut timed = false;
        let mut quick = false;
        let mut filter = None;
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--bench" => timed = true,
                "--quick" => quick = true,
                a if a.starts_with('-') => {}
                a => filter = Some(a.to_owned()),
            }
        }
        let (warm_up, sample) = if quick {
            (Duration::from_millis(15), Duration::from_millis(15))
        } else {
            (Duration::from_millis(100), Duration::from_millis(100))
        };
        Harness {
            timed,
            warm_up,
            sample,
            filter,
            pending_section: RefCell::new(None),
        }
    }

    fn header(&self) {
        if self.timed {
            println!(
                "{:<44} {:>12} {:>22} {:>10} {:>10} {:>12}",
                "benchmark",
                "median ns/op",
                "min .. max ns/op",
                "allocs/op",
                "bytes/op",
                "throughput"
            );
        }
    }

    /// Starts a section; its title is printed before its first benchmark.
    fn section(&self, title: &str) {
        *self.pending_section.borrow_mut() = Some(title.to_owned());
    }

    /// Times `f` (one call = one op). `bytes` is the payload per op, for MB/s.
    fn bench(&self, name: &str, bytes: Option<u64>, mut f: impl FnMut()) {
        if let Some(filter) = &self.filter
            && !name.contains(filter.as_str())
        {
            return;
        }
        if let Some(title) = self.pending_section.borrow_mut().take()
            && self.timed
        {
            println!("-- {title}");
        }
        if !self.timed {
            f();
            println!("smoke ok: {name}");
            return;
        }

        // Warm-up: double the batch until the budget is spent.
        let mut iters: u64 = 1;
        let per_op_ns = loop {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let el = t.elapsed();
            if el >= self.warm_up || iters >= 1 << 40 {
                break el.as_nanos() as f64 / iters as f64;
            }
            iters *= 2;
        };
        let n = ((self.sample.as_nanos() as f64 / per_op_ns.max(0.1)) as u64).max(1);

        let (calls0, bytes0) = alloc_counters();
        let mut samples = [0f64; SAMPLES];
        for s in &mut samples {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            *s = t.elapsed().as_nanos() as f64 / n as f64;
        }
        let (calls1, bytes1) = alloc_counters();
        let total = (n * SAMPLES as u64) as f64;
        let allocs = (calls1 - calls0) as f64 / total;
        let alloc_bytes = (bytes1 - bytes0) as f64 / total;

        samples.sort_by(f64::total_cmp);
        let median = samples[SAMPLES / 2];
        let throughput = bytes
            .map(|b| format!("{:.0} MB/s", b as f64 * 1e3 / median))
            .unwrap_or_default();
        println!(
            "{:<44} {:>12} {:>22} {:>10} {:>10} {:>12}",
            name,
            fmt_ns(median),
            format!("{} .. {}", fmt_ns(samples[0]), fmt_ns(samples[SAMPLES - 1])),
            fmt_count(allocs),
            fmt_count(alloc_bytes),
            throughput
        );
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns < 100.0 {
        format!("{ns:.1}")
    } else {
        format!("{ns:.0}")
    }
}

fn fmt_count(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

// ---------------------------------------------------------------------------
// Inputs.

const MAX_HEADER_BYTES: usize = 64 * 1024;
const CLIENT_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 23));
const CLIENT_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x1a2b, 0x3c4d));

const WRK_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

const BROWSER_GET: &[u8] = concat!(
    "GET /products/42?ref=home&utm_source=newsletter HTTP/1.1\r\n",
    "Host: shop.example.com\r\n",
    "Connection: keep-alive\r\n",
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n",
    "Upgrade-Insecure-Requests: 1\r\n",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 ",
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,",
    "image/webp,*/*;q=0.8\r\n",
    "Sec-Fetch-Site: same-origin\r\n",
    "Sec-Fetch-Mode: navigate\r\n",
    "Referer: https://shop.example.com/\r\n",
    "Accept-Encoding: gzip, deflate, br, zstd\r\n",
    "Accept-Language: en-GB,en-US;q=0.9,en;q=0.8\r\n",
    "Cookie: _ga=GA1.2.1234567890.1700000000; sessionid=8f3b2c1d9e7a4f6b0c5d; ",
    "csrftoken=Zq8sX3kP0mW7yT2vB9nL4rJ6; theme=dark\r\n",
    "\r\n",
)
.as_bytes();

const POST_CL: &[u8] = concat!(
    "POST /api/v1/orders HTTP/1.1\r\n",
    "Host: api.example.com\r\n",
    "User-Agent: curl/8.5.0\r\n",
    "Accept: application/json\r\n",
    "Content-Type: application/json\r\n",
    "Content-Length: 43\r\n",
    "\r\n",
    "{\"item\":42,\"quantity\":3,\"note\":\"gift wrap\"}",
)
.as_bytes();

/// A 4 KiB head: Host plus 39 custom headers, padded to exactly 4096 bytes.
fn forty_header_head() -> Vec<u8> {
    let mut h =
        b"GET /api/v2/search?q=load+balancer HTTP/1.1\r\nHost: api.example.com\r\n".to_vec();
    for i in 0..39 {
        h.extend_from_slice(format!("X-Custom-Header-{i:02}: ").as_bytes());
        h.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 72));
        h.extend_from_slice(b"\r\n");
    }
    // Pad the last value so the head is exactly 4 KiB.
    let missing = 4096 - (h.len() + 2);
    let last_crlf = h.len() - 2;
    h.splice(last_crlf..last_crlf, std::iter::repeat_n(b'z', missing));
    h.extend_from_slice(b"\r\n");
    assert_eq!(h.len(), 4096);
    h
}

const RESP_SMALL: &[u8] = concat!(
    "HTTP/1.1 200 OK\r\n",
    "Content-Type: text/plain\r\n",
    "Content-Length: 13\r\n",
    "\r\n",
    "Hello, world!",
)
.as_bytes();

const RESP_CHUNKED: &[u8] = concat!(
    "HTTP/1.1 200 OK\r\n",
    "Server: nginx/1.25.4\r\n",
    "Date: Mon, 06 May 2024 10:00:00 GMT\r\n",
    "Content-Type: application/json; charset=utf-8\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Connection: keep-alive\r\n",
    "Cache-Control: no-cache, no-store, must-revalidate\r\n",
    "Vary: Accept-Encoding\r\n",
    "X-Request-Id: 5f0c6a3e-9b1d-4c2a-8e7f-1a2b3c4d5e6f\r\n",
    "\r\n",
    "d\r\n{\"ok\": true}\n\r\n0\r\n\r\n",
)
.as_bytes();

const CLIENT_11: ClientSide = ClientSide {
    head_request: false,
    minor_version: 1,
    keep_alive: true,
    upgrade: false,
    request_id: b"000000000abc00000000000000000001",
};

/// `n` backends on 10.x.y.z:8080, all up, weights cycling 1, 2, 3 (or `weight`).
fn snapshot(n: usize, weight: Option<u32>) -> Snapshot {
    Snapshot {
        version: 1,
        backends: (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
                BackendView {
                    backend: Arc::new(Backend::new(
                        BackendId(i as u32),
                        addr.to_string(),
                        addr,
                        weight.unwrap_or(i as u32 % 3 + 1),
                    )),
                    up: true,
                    breaker: BreakerState::Closed,
                }
            })
            .collect(),
    }
}

/// `n` backends on 10.x.y.z:8080 with the given weights and health.
fn snapshot_with(n: usize, weight: impl Fn(usize) -> u32, up: impl Fn(usize) -> bool) -> Snapshot {
    let mut s = snapshot(n, Some(1));
    for (i, b) in s.backends.iter_mut().enumerate() {
        let backend = &b.backend;
        b.backend = Arc::new(Backend::new(
            backend.id,
            backend.name.clone(),
            backend.addr,
            weight(i),
        ));
        b.up = up(i);
    }
    s
}

fn client_ips() -> Vec<IpAddr> {
    (0..1024u32)
        .map(|i| IpAddr::from([172, 16, (i >> 8) as u8, i as u8]))
        .collect()
}

const STRATEGIES: [(Strategy, &str); 6] = [
    (Strategy::RoundRobin, "RoundRobin"),
    (Strategy::LeastConnections, "LeastConnections"),
    (Strategy::Random, "Random"),
    (Strategy::WeightedRoundRobin, "WeightedRoundRobin"),
    (Strategy::IpHash, "IpHash"),
    (Strategy::PowerOfTwoChoices, "PowerOfTwoChoices"),
];

// ---------------------------------------------------------------------------
// Benchmarks.

fn request_benches(h: &Harness) {
    h.section("request head: parse + check + rewrite (request::parse)");
    let forty = forty_header_head();
    let cases: [(&str, &[u8], IpAddr, bool); 6] = [
        ("wrk GET", WRK_GET, CLIENT_V4, false),
        ("wrk GET, IPv6 client", WRK_GET, CLIENT_V6, false),
        ("wrk GET, trusted, Forwarded on", WRK_GET, CLIENT_V4, true),
        ("browser GET, 12 headers", BROWSER_GET, CLIENT_V4, false),
        ("40 headers", &forty, CLIENT_V4, false),
        ("POST Content-Length", POST_CL, CLIENT_V4, false),
    ];
    let ids = IdSource::with_prefix(0xabc, 0);
    let mut id = RequestId::default();
    for (label, raw, ip, trusted) in cases {
        let mut out = Vec::new();
        ids.next_into(&mut id);
        let fwd = Forwarding {
            peer: ip,
            trusted,
            forwarded: trusted,
            request_id: id.as_bytes(),
        };
        let head = request::parse(raw, MAX_HEADER_BYTES, &fwd, &mut out)
            .expect("valid request")
            .expect("complete request");
        assert!(out.ends_with(b"\r\n\r\n"));
        let name = format!("req  {label} ({} B)", head.head_len);
        h.bench(&name, Some(head.head_len as u64), || {
            ids.next_into(&mut id);
            let fwd = Forwarding {
                peer: black_box(ip),
                trusted,
                forwarded: trusted,
                request_id: id.as_bytes(),
            };
            let r = request::parse(black_box(raw), MAX_HEADER_BYTES, &fwd, &mut out);
            black_box(&r);
            black_box(&out);
        });
    }
    // Baseline: httparse alone on the same heads, to separate the cost of
    // the proxy's checks and rewrite from the tokenizer's.
    for (label, raw) in [
        ("wrk GET", WRK_GET),
        ("browser GET", BROWSER_GET),
        ("40 headers", &forty),
    ] {
        h.bench(
            &format!("req  {label}: httparse only (baseline)"),
            None,
            || {
                let mut slots = [const { MaybeUninit::uninit() }; request::MAX_HEADERS];
                let mut req = httparse::Request::new(&mut []);
                black_box(
                    req.parse_with_uninit_headers(black_box(raw), &mut slots)
                        .is_ok(),
                );
                black_box(&req);
            },
        );
    }
}

fn response_benches(h: &Harness) {
    h.section("response head: parse + check + rewrite (response::parse)");
    let cases: [(&str, &[u8], BodyFraming); 2] = [
        (
            "200 Content-Length, 2 headers",
            RESP_SMALL,
            BodyFraming::Length(13),
        ),
        ("200 chunked, 8 headers", RESP_CHUNKED, BodyFraming::Chunked),
    ];
    for (label, raw, framing) in cases {
        let mut out = Vec::new();
        let head = response::parse(raw, MAX_HEADER_BYTES, CLIENT_11, &mut out)
            .expect("valid response")
            .expect("complete response");
        assert_eq!(head.body, framing);
        let name = format!("resp {label} ({} B)", head.head_len);
        h.bench(&name, Some(head.head_len as u64), || {
            let r = response::parse(black_box(raw), MAX_HEADER_BYTES, CLIENT_11, &mut out);
            black_box(&r);
            black_box(&out);
        });
    }
}

fn chunked_benches(h: &Harness) {
    h.section("chunked body: 64 KiB in 4 KiB chunks, one decode call (ChunkedDecoder)");
    let payload: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let encoded = chunked::encode(&payload, 4096);
    for (label, mode) in [("Rechunk", Mode::Rechunk), ("Decode", Mode::Decode)] {
        let mut out = Vec::with_capacity(encoded.len() + 64);
        let mut dec = ChunkedDecoder::new(mode);
        let used = dec.decode(&encoded, &mut out).expect("valid body");
        assert!(dec.is_done() && used == encoded.len());
        match mode {
            Mode::Rechunk => assert_eq!(out, encoded),
            Mode::Decode => assert_eq!(out, payload),
        }
        let name = format!("chunked 64 KiB {label}");
        h.bench(&name, Some(payload.len() as u64), || {
            out.clear();
            let mut dec = ChunkedDecoder::new(mode);
            let r = dec.decode(black_box(&encoded), &mut out);
            black_box(&r);
            black_box(&out);
        });
    }
}

fn proxy_protocol_benches(h: &Harness) {
    h.section("PROXY protocol header: parse (proxy_protocol::parse)");
    let v4 = (
        SocketAddr::from(([203, 0, 113, 7], 51234)),
        SocketAddr::from(([10, 0, 0, 1], 443)),
    );
    let v6 = (
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6)),
            51234,
        ),
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            443,
        ),
    );
    type Write = fn(&mut Vec<u8>, SocketAddr, SocketAddr);
    let cases: [(&str, Write, (SocketAddr, SocketAddr)); 4] = [
        ("v1 TCP4", proxy_protocol::write_v1, v4),
        ("v1 TCP6", proxy_protocol::write_v1, v6),
        ("v2 INET", proxy_protocol::write_v2, v4),
        ("v2 INET6", proxy_protocol::write_v2, v6),
    ];
    for (label, write, (src, dst)) in cases {
        let mut buf = Vec::new();
        write(&mut buf, src, dst);
        let len = buf.len();
        buf.extend_from_slice(WRK_GET);
        let h0 = proxy_protocol::parse(&buf)
            .expect("valid header")
            .expect("complete");
        assert_eq!((h0.header_len, h0.source()), (len, Some(src)));
        h.bench(
            &format!("proxy {label} ({len} B)"),
            Some(len as u64),
            || {
                black_box(proxy_protocol::parse(black_box(&buf)).ok());
            },
        );
    }
}

fn balancer_benches(h: &Harness) {
    let ips = client_ips();
    for n in [3, 100, 1000] {
        h.section(&format!(
            "backend selection: Selector::select, {n} backends up, nothing passed over"
        ));
        let snap = snapshot(n, None);
        for (strategy, label) in STRATEGIES {
            let mut b = balancer::new(strategy, 0x5eed);
            b.update(&snap);
            assert!(
                b.select(&snap, ips[0], None, |_| true)
                    .is_some_and(|i| i < n)
            );
            let mut k = 0usize;
            h.bench(&format!("pick {label} n={n}"), None, || {
                let ip = ips[k & 1023];
                k = k.wrapping_add(1);
                black_box(b.select(black_box(&snap), ip, None, |_| true));
            });
        }
    }
    // Weights 999/1000 leave no common divisor: the longest sequences.
    for n in [3, 100, 1000] {
        let snap = snapshot_with(n, |i| 1000 - (i as u32 % 2), |_| true);
        let mut b = balancer::new(Strategy::WeightedRoundRobin, 0x5eed);
        b.update(&snap);
        h.bench(
            &format!("pick WeightedRoundRobin n={n} weights 999/1000"),
            None,
            || {
                black_box(b.select(black_box(&snap), CLIENT_V4, None, |_| true));
            },
        );
    }

    // A retry (one backend excluded, cycling over them: mostly not the one
    // the strategy would choose) and a half-open backend without a trial
    // slot (the strategy's first choice refused, so it chooses twice).
    let n = 100;
    h.section(&format!(
        "backend selection: Selector::select, {n} backends up, one passed over"
    ));
    let snap = snapshot(n, None);
    for (strategy, label) in STRATEGIES {
        let mut b = balancer::new(strategy, 0x5eed);
        b.update(&snap);
        let mut k = 0usize;
        h.bench(&format!("pick {label} n={n} 1 excluded"), None, || {
            let ip = ips[k & 1023];
            k = k.wrapping_add(1);
            black_box(b.select(black_box(&snap), ip, Some(k % n), |_| true));
        });
        let mut k = 0usize;
        h.bench(&format!("pick {label} n={n} first refused"), None, || {
            let ip = ips[k & 1023];
            k = k.wrapping_add(1);
            let mut asked = 0;
            black_box(b.select(black_box(&snap), ip, None, |_| {
                asked += 1;
                asked > 1
            }));
        });
    }

    h.section("snapshot change: Balancer::update, 1000 backends up");
    let snap = snapshot(1000, None);
    for (strategy, label) in STRATEGIES {
        let mut b = balancer::new(strategy, 0x5eed);
        h.bench(&format!("update {label} n=1000"), None, || {
            b.update(black_box(&snap));
            black_box(&b);
        });
    }
    let heavy = snapshot(1000, Some(100));
    let mut b = balancer::new(Strategy::WeightedRoundRobin, 0x5eed);
    h.bench("update WeightedRoundRobin n=1000 weight=100", None, || {
        b.update(black_box(&heavy));
        black_box(&b);
    });

    // Each op below alternates between two snapshots, so every update sees
    // a change: `rebuild` changes one backend's weight (the set changes),
    // `health flip` takes one backend down or brings it back.
    h.section("update cost: alternating snapshots (a change on every update)");
    let cases: [(&str, Snapshot, Snapshot); 6] = [
        (
            "1000x1000 rebuild",
            snapshot(1000, Some(1000)),
            snapshot_with(1000, |i| if i == 500 { 999 } else { 1000 }, |_| true),
        ),
        (
            "1000x1000 health flip",
            snapshot(1000, Some(1000)),
            snapshot_with(1000, |_| 1000, |i| i != 500),
        ),
        // Issue 13: 600 backends weighing 100/101, two flapping.
        (
            "600x100/101 health flip",
            snapshot_with(600, |i| 100 + (i as u32 % 2), |_| true),
            snapshot_with(600, |i| 100 + (i as u32 % 2), |i| i != 7 && i != 8),
        ),
        // Issue 13: 40 backends of weight 1000 added or removed by the API.
        (
            "40x1000 rebuild",
            snapshot(40, Some(1000)),
            snapshot(41, Some(1000)),
        ),
        // The longest period WeightedRoundRobin still precomputes (6
        // backends: a period of 5 997 picks), and one just too long (8).
        (
            "6x999/1000 rebuild",
            snapshot_with(6, |i| 1000 - (i as u32 % 2), |_| true),
            // Weights swapped pairwise: same period, a different set.
            snapshot_with(6, |i| 999 + (i as u32 % 2), |_| true),
        ),
        (
            "8x999/1000 rebuild",
            snapshot_with(8, |i| 1000 - (i as u32 % 2), |_| true),
            snapshot_with(
                8,
                |i| if i == 0 { 997 } else { 1000 - (i as u32 % 2) },
                |_| true,
            ),
        ),
    ];
    for (label, a, b) in &cases {
        for (strategy, name) in [
            (Strategy::WeightedRoundRobin, "WeightedRoundRobin"),
            (Strategy::IpHash, "IpHash"),
        ] {
            let mut bal = balancer::new(strategy, 0x5eed);
            let mut flip = false;
            h.bench(&format!("update {name} {label}"), None, || {
                flip = !flip;
                bal.update(black_box(if flip { a } else { b }));
                black_box(&bal);
            });
        }
    }
}

fn snapshot_benches(h: &Harness) {
    h.section("snapshot lookup per request: clone, read backends[i].backend.addr, drop");
    let n = 1000;
    let cell = RefCell::new(Rc::new(Arc::new(snapshot(n, None))));
    let mut i = 0usize;
    h.bench("snapshot Rc<Arc<Snapshot>> clone + addr", None, || {
        let snap = cell.borrow().clone();
        black_box(snap.backends[i].backend.addr);
        i = (i + 1) % n;
    });
    let arc_cell = RefCell::new(Arc::new(snapshot(n, None)));
    let mut i = 0usize;
    h.bench(
        "snapshot Arc<Snapshot> clone + addr (compare)",
        None,
        || {
            let snap = arc_cell.borrow().clone();
            black_box(snap.backends[i].backend.addr);
            i = (i + 1) % n;
        },
    );
}

/// Ten routes of every kind, pools 0..10 in file order.
fn ten_routes() -> RouteTable {
    let routes: [(Option<&str>, Option<&str>); 10] = [
        (Some("api.example.com"), Some("/v1/")),
        (Some("api.example.com"), Some("/v2/")),
        (Some("static.example.com"), None),
        (Some("admin.example.com"), Some("/internal/")),
        (Some("*.cdn.example.com"), None),
        (Some("*.example.net"), None),
        (Some("shop.example.com"), None),
        (Some("[2001:db8::1]"), None),
        (None, Some("/healthz")),
        (Some("*.eu.example.org"), Some("/api/")),
    ];
    let specs = routes
        .iter()
        .enumerate()
        .map(|(pool, &(host, path_prefix))| RouteSpec {
            host: host.map(str::to_owned),
            path_prefix: path_prefix.map(str::to_owned),
            pool,
        })
        .collect();
    RouteTable::new(specs).expect("valid routes")
}

/// `n` exact hosts `h{i}.example.com`, enough to be indexed by hash.
fn exact_routes(n: usize) -> RouteTable {
    let specs = (0..n)
        .map(|pool| RouteSpec {
            host: Some(format!("h{pool}.example.com")),
            path_prefix: None,
            pool,
        })
        .collect();
    RouteTable::new(specs).expect("valid routes")
}

fn route_benches(h: &Harness) {
    h.section("route lookup per request: RouteTable::lookup (Host, path before '?')");
    let ten = ten_routes();
    let hundred = exact_routes(100);
    type Case<'a> = (&'a str, &'a RouteTable, &'a [u8], &'a [u8], Option<usize>);
    let cases: [Case; 5] = [
        (
            "10 routes: exact host hit",
            &ten,
            b"api.example.com:8080",
            b"/v2/orders?id=42",
            Some(1),
        ),
        (
            "10 routes: wildcard hit (last route)",
            &ten,
            b"Shop.EU.example.org",
            b"/api/cart",
            Some(9),
        ),
        (
            "10 routes: miss (default pool)",
            &ten,
            b"www.example.org",
            b"/index.html",
            None,
        ),
        (
            "100 exact hosts (indexed): hit",
            &hundred,
            b"h73.example.com",
            b"/",
            Some(73),
        ),
        (
            "100 exact hosts (indexed): miss",
            &hundred,
            b"www.example.com",
            b"/",
            None,
        ),
    ];
    for (label, table, host, target, want) in cases {
        let lookup = || table.lookup(Some(black_box(host)), route::path_of(black_box(target)));
        assert_eq!(lookup(), want, "{label}");
        let (calls0, _) = alloc_counters();
        for _ in 0..1000 {
            black_box(lookup());
        }
        let (calls1, _) = alloc_counters();
        assert_eq!(calls1 - calls0, 0, "{label}: lookup allocated");
        h.bench(&format!("route {label}"), None, || {
            black_box(lookup());
        });
    }
}

fn main() {
    let h = Harness::from_args();
    h.header();
    let start = Instant::now();
    h.section("harness");
    let mut k = 0u64;
    h.bench("floor: empty op (loop + black_box)", None, || {
        k = black_box(k).wrapping_add(1);
    });
    request_benches(&h);
    response_benches(&h);
    chunked_benches(&h);
    proxy_protocol_benches(&h);
    balancer_benches(&h);
    snapshot_benches(&h);
    route_benches(&h);
    if h.timed {
        println!("total {:.1} s", start.elapsed().as_secs_f64());
    }
}
