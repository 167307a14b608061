//! `ekilibri-loadgen`: a constant-rate (open-loop) HTTP/1.1 load generator.
//!
//! Unlike wrk or h2load (closed loop: a connection sends its next request only
//! after the previous response arrived), this tool sends requests on a fixed
//! schedule. The aggregate rate `--rate` is spread evenly over `--connections`
//! keep-alive connections: connection `i` of `C` is due to send its `k`-th
//! request at `start + i/R + k*C/R`. Every request's latency is measured from
//! that *intended* send time, so when the server stalls and a connection is
//! still busy when its next request is due, the queued request's waiting time
//! is counted too (no coordinated omission).
//!
//! One glommio executor runs per `--threads` (unpinned), each driving its share
//! of the connections; per-thread HDR histograms are merged at the end.
//!
//! ```text
//! ekilibri-loadgen --url http://127.0.0.1:8080/ --rate 20000 --duration 10s \
//!     --connections 64 [--method POST --body-bytes 1048576] [--threads 1] --json
//! ```
//!
//! Only loopback targets are accepted: this is a benchmarking tool for the
//! local machine, not a traffic generator for other hosts.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

/// Highest latency the histograms can hold (1 hour, in microseconds).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Size of each connection's read buffer.
const READ_BUF: usize = 64 * 1024;
/// Longest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4096;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ekilibri-loadgen",
    about = "Constant-rate (open-loop) HTTP/1.1 load generator for loopback benchmarks"
)]
struct Args {
    /// Target URL, e.g. http://127.0.0.1:8080/path (loopback only, plain HTTP).
    #[arg(long)]
    url: String,
    /// Aggregate request rate, in requests per second.
    #[arg(long)]
    rate: f64,
    /// How long to keep sending, e.g. 10s, 500ms, 1m (a bare number is seconds).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Number of keep-alive connections the rate is spread over.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Number of executor threads (each with its own share of the connections).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Size of the request body to send (filled with 'x'); 0 sends none.
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Extra request header, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Per-request (and per-connect) timeout; a request that exceeds it is an error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Parses "10s", "250ms", "2m", "1.5s", "100us" or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// The parts of a target URL the generator needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    host_header: String,
    path: String,
}

/// Parses `http://HOST[:PORT][/PATH]`, refusing anything that is not loopback.
fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported: {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| format!("bad IPv6 host in {url:?}"))?;
        let port = v6[end + 1..].strip_prefix(':').unwrap_or("80");
        (&v6[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, "80"),
        }
    };
    let port: u16 = port.parse().map_err(|_| format!("bad port in {url:?}"))?;
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("host must be an IP address or localhost: {host:?}"))?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "refusing to send load to non-loopback address {ip}"
        ));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header: authority.to_string(),
        path: path.to_string(),
    })
}

/// Builds the bytes of one request (head and body), sent as-is every time.
fn build_request(args: &Args, target: &Target) -> Vec<u8> {
    let mut head = String::new();
    // A `-H "Host: ..."` replaces the URL's authority (as curl's does): a
    // second Host field would be refused by any careful server.
    let is_host = |h: &String| {
        h.split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
    };
    let host = args
        .headers
        .iter()
        .find(|h| is_host(h))
        .and_then(|h| h.split_once(':'))
        .map_or(target.host_header.as_str(), |(_, v)| v.trim());
    let _ = write!(
        head,
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ekilibri-loadgen\r\n",
        args.method, target.path, host
    );
    for h in args.headers.iter().filter(|h| !is_host(h)) {
        let _ = write!(head, "{}\r\n", h.trim());
    }
    if args.body_bytes > 0 || args.method.eq_ignore_ascii_case("POST") {
        let _ = write!(
            head,
            "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            args.body_bytes
        );
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.resize(req.len() + args.body_bytes, b'x');
    req
}

// ---------------------------------------------------------------------------
// Response parsing
// ---------------------------------------------------------------------------

/// A fully received response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Whether the connection may carry another request afterwards.
    pub keep_alive: bool,
    /// Number of body bytes (after de-chunking).
    pub body_len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    Head(String),
    HeadTooLarge,
    BadContentLength,
    BadChunk,
    LineTooLong,
    UnexpectedEof,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Head(e) => write!(f, "invalid response head: {e}"),
            ParseError::HeadTooLarge => f.write_str("response head too large"),
            ParseError::BadContentLength => f.write_str("invalid Content-Length"),
            ParseError::BadChunk => f.write_str("invalid chunked encoding"),
            ParseError::LineTooLong => f.write_str("chunk line too long"),
            ParseError::UnexpectedEof => f.write_str("connection closed mid-response"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Incremental HTTP/1.x response parser. Body bytes are counted, not kept,
/// so large responses need no memory beyond the caller's read buffer.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    head_request: bool,
    status: u16,
    keep_alive: bool,
    body_len: u64,
}

impl ResponseParser {
    /// `head_request` tells whether the request was a HEAD (no body follows).
    pub fn new(head_request: bool) -> Self {
        ResponseParser {
            state: State::Head,
            head_request,
            status: 0,
            keep_alive: true,
            body_len: 0,
        }
    }

    fn done(&mut self) -> Response {
        self.state = State::Done;
        Response {
            status: self.status,
            keep_alive: self.keep_alive,
            body_len: self.body_len,
        }
    }

    /// Consumes as much of `buf` as possible. Returns how many bytes were
    /// consumed and, once the response is complete, the response. Bytes after
    /// the end of the response are left unconsumed.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, Option<Response>), ParseError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Done => return Ok((pos, None)),
                State::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(rest) {
                        Ok(httparse::Status::Complete(n)) => {
                            pos += n;
                            let code = resp.code.unwrap_or(0);
                            if (100..200).contains(&code) {
                                if code == 101 {
                                    return Err(ParseError::Head(
                                        "unexpected 101 Switching Protocols".into(),
                                    ));
                                }
                                // Interim response (e.g. 100 Continue): the real one follows.
                                continue;
                            }
                            self.status = code;
                            self.state = self.framing(&resp)?;
                            if self.state == State::Fixed(0) {
                                return Ok((pos, Some(self.done())));
                            }
                        }
                        Ok(httparse::Status::Partial) => {
                            if rest.len() >= MAX_HEAD {
                                return Err(ParseError::HeadTooLarge);
                            }
                            return Ok((pos, None));
                        }
                        Err(e) => return Err(ParseError::Head(e.to_string())),
                    }
                }
                State::Fixed(remaining) => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    self.body_len += take;
                    if take == remaining {
                        return Ok((pos, Some(self.done())));
                    }
                    self.state = State::Fixed(remaining - take);
                    return Ok((pos, None));
                }
                State::UntilClose => {
                    self.body_len += rest.len() as u64;
                    return Ok((buf.len(), None));
                }
                State::ChunkSize => {
                    let Some((line, used)) = take_line(rest)? else {
                        return Ok((pos, None));
                    };
                    pos += used;
                    let size = parse_chunk_size(line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(remaining) => {
                    let take = remaining.min(rest.len() as u64);
                    pos += take as usize;
                    self.body_len += take;
                    if take < remaining {
                        self.state = State::ChunkData(remaining - take);
                        return Ok((pos, None));
                    }
                    self.state = State::ChunkDataEnd;
                }
                State::ChunkDataEnd => {
                    // The CRLF that ends a chunk's data.
                    match rest {
                        [] | [b'\r'] => return Ok((pos, None)),
                        [b'\r', b'\n', ..] => pos += 2,
                        [b'\n', ..] => pos += 1,
                        _ => return Err(ParseError::BadChunk),
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some((line, used)) = take_line(rest)? else {
                        return Ok((pos, None));
                    };
                    pos += used;
                    if line.is_empty() {
                        return Ok((pos, Some(self.done())));
                    }
                }
            }
        }
    }

    /// Called when the peer closed the connection. Completes a body delimited
    /// by connection close; anything else is a truncated response.
    pub fn eof(&mut self) -> Result<Response, ParseError> {
        match self.state {
            State::UntilClose => {
                self.keep_alive = false;
                Ok(self.done())
            }
            _ => Err(ParseError::UnexpectedEof),
        }
    }

    /// Decides how the body is delimited (RFC 9112 section 6.3).
    fn framing(&mut self, resp: &httparse::Response<'_, '_>) -> Result<State, ParseError> {
        let http11 = resp.version == Some(1);
        let mut close = false;
        let mut keep_alive_token = false;
        let mut chunked = false;
        let mut content_length: Option<u64> = None;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                for token in String::from_utf8_lossy(h.value).split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        keep_alive_token = true;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let value = String::from_utf8_lossy(h.value);
                let last = value.rsplit(',').next().unwrap_or("").trim();
                chunked = last.eq_ignore_ascii_case("chunked");
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(ParseError::BadContentLength)?;
                if content_length.is_some_and(|old| old != v) {
                    return Err(ParseError::BadContentLength);
                }
                content_length = Some(v);
            }
        }
        self.keep_alive = if http11 {
            !close
        } else {
            keep_alive_token && !close
        };
        let status = self.status;
        if self.head_request || status == 204 || status == 304 {
            return Ok(State::Fixed(0));
        }
        if chunked {
            return Ok(State::ChunkSize);
        }
        match content_length {
            Some(n) => Ok(State::Fixed(n)),
            None => {
                self.keep_alive = false;
                Ok(State::UntilClose)
            }
        }
    }
}

/// Finds one line (ending in LF, optional CR stripped) at the start of `buf`.
fn take_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ParseError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = &buf[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, i + 1)))
        }
        None if buf.len() > MAX_LINE => Err(ParseError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let hex = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let hex = std::str::from_utf8(hex)
        .map_err(|_| ParseError::BadChunk)?
        .trim();
    if hex.is_empty() || hex.len() > 15 {
        return Err(ParseError::BadChunk);
    }
    u64::from_str_radix(hex, 16).map_err(|_| ParseError::BadChunk)
}

// ---------------------------------------------------------------------------
// Load generation
// ---------------------------------------------------------------------------

/// Counters and latencies of one executor thread (merged at the end).
struct Stats {
    sent: u64,
    completed: u64,
    non_2xx: u64,
    connect_errors: u64,
    io_errors: u64,
    timeouts: u64,
    parse_errors: u64,
    unsent: u64,
    bytes: u64,
    latency_us: Histogram<u64>,
    /// Lateness of the generator's own wake-ups for requests whose connection
    /// was idle at their due time: a self-check of the generator's precision.
    timer_lag_us: Histogram<u64>,
    /// The first error seen, reported on stderr to help diagnose failures.
    first_error: Option<String>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            sent: 0,
            completed: 0,
            non_2xx: 0,
            connect_errors: 0,
            io_errors: 0,
            timeouts: 0,
            parse_errors: 0,
            unsent: 0,
            bytes: 0,
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            timer_lag_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            first_error: None,
        }
    }

    fn merge(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.completed += o.completed;
        self.non_2xx += o.non_2xx;
        self.connect_errors += o.connect_errors;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.parse_errors += o.parse_errors;
        self.unsent += o.unsent;
        self.bytes += o.bytes;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.latency_us
            .add(&o.latency_us)
            .expect("histograms share bounds");
        self.timer_lag_us
            .add(&o.timer_lag_us)
            .expect("histograms share bounds");
    }

    fn errors(&self) -> u64 {
        self.connect_errors + self.io_errors + self.timeouts + self.parse_errors
    }
}

enum RequestError {
    Io(io::Error),
    Parse(ParseError),
}

impl From<io::Error> for RequestError {
    fn from(e: io::Error) -> Self {
        RequestError::Io(e)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// One keep-alive connection plus its read buffer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    async fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(addr, timeout)
            .await
            .map_err(io::Error::from)?;
        stream.set_nodelay(true).map_err(io::Error::from)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io::Error::from)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io::Error::from)?;
        Ok(Conn {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
        })
    }

    /// Sends one request and reads its response.
    async fn exchange(&mut self, request: &[u8], head: bool) -> Result<Response, RequestError> {
        self.stream.write_all(request).await?;
        let mut parser = ResponseParser::new(head);
        loop {
            let (used, done) = parser
                .advance(&self.buf[self.start..self.end])
                .map_err(RequestError::Parse)?;
            self.start += used;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            if let Some(resp) = done {
                return Ok(resp);
            }
            if self.end == self.buf.len() {
                // Unparsed bytes fill the buffer: move them to the front.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.end == self.buf.len() {
                    return Err(RequestError::Parse(ParseError::HeadTooLarge));
                }
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return parser.eof().map_err(RequestError::Parse);
            }
            self.end += n;
        }
    }
}

/// Drives one connection: request `k` is due at `first + k * period`.
#[allow(clippy::too_many_arguments)]
async fn run_connection(
    target: SocketAddr,
    request: Rc<Vec<u8>>,
    head: bool,
    first: Instant,
    period: Duration,
    end: Instant,
    timeout: Duration,
    stats: Rc<RefCell<Stats>>,
) {
    let mut conn: Option<Conn> = None;
    // Connect ahead of the first due time so set-up is not measured as load.
    if let Ok(c) = Conn::open(target, timeout).await {
        conn = Some(c);
    }
    let mut k: u32 = 0;
    loop {
        let due = first + period * k;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now >= end {
            // Still backlogged when the run ended: these were never sent.
            let left = (end - due).as_nanos() / period.as_nanos().max(1);
            stats.borrow_mut().unsent += left as u64 + 1;
            break;
        }
        if due > now {
            glommio::timer::sleep(due - now).await;
            // How late the generator itself woke up (not caused by the server).
            let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
            stats
                .borrow_mut()
                .timer_lag_us
                .saturating_record(lag.max(1));
        }
        k += 1;
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(target, timeout).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    {
                        let mut s = stats.borrow_mut();
                        s.sent += 1;
                        s.connect_errors += 1;
                        s.first_error.get_or_insert_with(|| format!("connect: {e}"));
                    }
                    // Do not spin on a refused connect; the due times keep running.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        stats.borrow_mut().sent += 1;
        let result = c.exchange(&request, head).await;
        let finished = Instant::now();
        let mut s = stats.borrow_mut();
        match result {
            Ok(resp) => {
                s.completed += 1;
                s.bytes += resp.body_len;
                if !(200..300).contains(&resp.status) {
                    s.non_2xx += 1;
                }
                let us = finished.saturating_duration_since(due).as_micros() as u64;
                s.latency_us.saturating_record(us.max(1));
                if !resp.keep_alive {
                    conn = None;
                }
            }
            Err(RequestError::Io(e)) => {
                s.first_error.get_or_insert_with(|| format!("i/o: {e}"));
                if is_timeout(&e) {
                    s.timeouts += 1;
                } else {
                    s.io_errors += 1;
                }
                conn = None;
            }
            Err(RequestError::Parse(e)) => {
                s.first_error
                    .get_or_insert_with(|| format!("response: {e}"));
                s.parse_errors += 1;
                conn = None;
            }
        }
    }
}

fn run(args: &Args, target: &Target) -> io::Result<Stats> {
    let request = build_request(args, target);
    let head = args.method.eq_ignore_ascii_case("HEAD");
    let conns = args.connections.max(1);
    let threads = args.threads.clamp(1, conns);
    // Aggregate spacing between consecutive requests, and each connection's period.
    let spacing = Duration::from_secs_f64(1.0 / args.rate);
    let period = Duration::from_secs_f64(conns as f64 / args.rate);
    // Leave time to spawn the executors and connect before the first due time.
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + args.duration;

    let mut handles = Vec::new();
    for t in 0..threads {
        let request = request.clone();
        let addr = target.addr;
        let timeout = args.timeout;
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("loadgen-{t}"))
            // Network only: keep the registered I/O memory small (RLIMIT_MEMLOCK).
            .io_memory(64 * 1024)
            .spawn(move || async move {
                let stats = Rc::new(RefCell::new(Stats::new()));
                let request = Rc::new(request);
                let mut tasks = Vec::new();
                for i in (t..conns).step_by(threads) {
                    let first = start + spacing * i as u32;
                    tasks.push(glommio::spawn_local(run_connection(
                        addr,
                        request.clone(),
                        head,
                        first,
                        period,
                        end,
                        timeout,
                        stats.clone(),
                    )));
                }
                for task in tasks {
                    task.await;
                }
                Rc::try_unwrap(stats)
                    .ok()
                    .expect("all connection tasks finished")
                    .into_inner()
            })
            .map_err(|e| io::Error::other(format!("cannot start executor: {e}")))?;
        handles.push(handle);
    }
    let mut total = Stats::new();
    for h in handles {
        let s = h
            .join()
            .map_err(|e| io::Error::other(format!("executor failed: {e}")))?;
        total.merge(&s);
    }
    Ok(total)
}

fn report(args: &Args, s: &Stats, json: bool) -> String {
    let secs = args.duration.as_secs_f64().max(1e-9);
    let achieved = s.completed as f64 / secs;
    let h = &s.latency_us;
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let (p50, p90, p99, p999) = (q(0.50), q(0.90), q(0.99), q(0.999));
    let max = if h.is_empty() { 0 } else { h.max() };
    let mean = if h.is_empty() { 0.0 } else { h.mean() };
    let lag = &s.timer_lag_us;
    let (lag_p99, lag_max) = if lag.is_empty() {
        (0, 0)
    } else {
        (lag.value_at_quantile(0.99), lag.max())
    };
    if json {
        format!(
            concat!(
                "{{\"url\":\"{}\",\"method\":\"{}\",\"target_rps\":{},\"duration_s\":{},",
                "\"connections\":{},\"threads\":{},\"sent\":{},\"completed\":{},",
                "\"errors\":{},\"non_2xx\":{},\"connect_errors\":{},\"io_errors\":{},",
                "\"timeouts\":{},\"parse_errors\":{},\"unsent\":{},\"bytes\":{},",
                "\"achieved_rps\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},",
                "\"p999_us\":{},\"max_us\":{},\"mean_us\":{:.1},",
                "\"timer_lag_p99_us\":{},\"timer_lag_max_us\":{}}}"
            ),
            args.url.replace('\\', "\\\\").replace('"', "\\\""),
            args.method.replace('\\', "\\\\").replace('"', "\\\""),
            args.rate,
            secs,
            args.connections,
            args.threads,
            s.sent,
            s.completed,
            s.errors(),
            s.non_2xx,
            s.connect_errors,
            s.io_errors,
            s.timeouts,
            s.parse_errors,
            s.unsent,
            s.bytes,
            achieved,
            p50,
            p90,
            p99,
            p999,
            max,
            mean,
            lag_p99,
            lag_max
        )
    } else {
        format!(
            "target {:.0} req/s for {:.1}s over {} connections ({} threads): {}\n\
             sent {} completed {} ({:.1} req/s) errors {} (connect {}, io {}, timeout {}, parse {}) \
             non-2xx {} unsent {} body bytes {}\n\
             latency from intended send time (us): p50 {} p90 {} p99 {} p99.9 {} max {} mean {:.1}\n\
             generator wake-up lag (us): p99 {} max {}",
            args.rate,
            secs,
            args.connections,
            args.threads,
            args.url,
            s.sent,
            s.completed,
            achieved,
            s.errors(),
            s.connect_errors,
            s.io_errors,
            s.timeouts,
            s.parse_errors,
            s.non_2xx,
            s.unsent,
            s.bytes,
            p50,
            p90,
            p99,
            p999,
            max,
            mean,
            lag_p99,
            lag_max
        )
    }
}

fn main() {
    let args = Args::parse();
    let target = match parse_url(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ekilibri-loadgen: {e}");
            std::process::exit(2);
        }
    };
    if !(args.rate.is_finite() && args.rate > 0.0) {
        eprintln!("ekilibri-loadgen: --rate must be a positive number");
        std::process::exit(2);
    }
    match run(&args, &target) {
        Ok(stats) => {
            if let Some(e) = &stats.first_error {
                eprintln!("ekilibri-loadgen: first error: {e}");
            }
            println!("{}", report(&args, &stats, args.json));
        }
        Err(e) => {
            eprintln!("ekilibri-loadgen: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split into pieces of `step` bytes, as reads would deliver it.
    fn parse_in_steps(input: &[u8], step: usize, head: bool) -> (Response, usize) {
        let mut p = ResponseParser::new(head);
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut consumed_total = 0;
        loop {
            let (used, done) = p.advance(&buf).expect("valid response");
            buf.drain(..used);
            consumed_total += used;
            if let Some(r) = done {
                return (r, consumed_total);
            }
            if fed == input.len() {
                return (p.eof().expect("complete at eof"), consumed_total);
            }
            let n = step.min(input.len() - fed);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
        }
    }

    fn every_step(input: &[u8], head: bool) -> Response {
        let (first, _) = parse_in_steps(input, input.len().max(1), head);
        for step in 1..input.len().min(64) {
            assert_eq!(parse_in_steps(input, step, head).0, first, "step {step}");
        }
        first
    }

    #[test]
    fn content_length_body() {
        let r = every_step(
            b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nbackend 8081\n",
            false,
        );
        assert_eq!(
            r,
            Response {
                status: 200,
                keep_alive: true,
                body_len: 13
            }
        );
    }

    #[test]
    fn zero_length_and_no_body_statuses() {
        let r = every_step(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(r.body_len, 0);
        let r = every_step(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!((r.status, r.body_len, r.keep_alive), (204, 0, true));
        let r = every_step(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
            false,
        );
        assert_eq!(r.body_len, 0);
        // A HEAD response announces a length but carries no body.
        let r = every_step(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", true);
        assert_eq!(r.body_len, 0);
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        let r = every_step(input, false);
        assert_eq!(
            r,
            Response {
                status: 200,
                keep_alive: true,
                body_len: 15
            }
        );
    }

    #[test]
    fn chunked_takes_precedence_over_content_length() {
        let input =
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                      3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(every_step(input, false).body_len, 3);
    }

    #[test]
    fn connection_close_and_http10() {
        let r = every_step(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            false,
        );
        assert!(!r.keep_alive);
        let r = every_step(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
        assert!(!r.keep_alive);
        let r = every_step(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok",
            false,
        );
        assert!(r.keep_alive);
    }

    #[test]
    fn body_until_close() {
        let r = every_step(b"HTTP/1.1 200 OK\r\n\r\nsome body bytes", false);
        assert_eq!(
            r,
            Response {
                status: 200,
                keep_alive: false,
                body_len: 15
            }
        );
    }

    #[test]
    fn interim_100_continue_is_skipped() {
        let r = every_step(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
            false,
        );
        assert_eq!((r.status, r.body_len), (201, 1));
    }

    #[test]
    fn stops_at_end_of_response() {
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let mut p = ResponseParser::new(false);
        let (used, r) = p.advance(two).unwrap();
        assert_eq!(r.unwrap().status, 200);
        let mut p = ResponseParser::new(false);
        let (used2, r) = p.advance(&two[used..]).unwrap();
        assert_eq!(r.unwrap().status, 404);
        assert_eq!(used + used2, two.len());
    }

    #[test]
    fn large_body_is_counted_not_buffered() {
        let mut p = ResponseParser::new(false);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
        let (used, r) = p.advance(head).unwrap();
        assert_eq!((used, r), (head.len(), None));
        let block = vec![0u8; 65536];
        for i in 0..16 {
            let (used, r) = p.advance(&block).unwrap();
            assert_eq!(used, block.len());
            assert_eq!(r.is_some(), i == 15);
        }
    }

    #[test]
    fn errors() {
        let mut p = ResponseParser::new(false);
        assert!(matches!(
            p.advance(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"),
            Err(ParseError::BadContentLength)
        ));
        let mut p = ResponseParser::new(false);
        assert!(matches!(
            p.advance(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ParseError::BadContentLength)
        ));
        let mut p = ResponseParser::new(false);
        assert!(matches!(
            p.advance(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(ParseError::BadChunk)
        ));
        let mut p = ResponseParser::new(false);
        assert!(matches!(
            p.advance(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc"),
            Err(ParseError::BadChunk)
        ));
        let mut p = ResponseParser::new(false);
        assert!(p.advance(b"NOT HTTP\r\n\r\n").is_err());
        let mut p = ResponseParser::new(false);
        p.advance(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            .unwrap();
        assert_eq!(p.eof(), Err(ParseError::UnexpectedEof));
    }

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/bytes/16").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/bytes/16");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(parse_url("http://localhost:9").unwrap().path, "/");
        assert_eq!(
            parse_url("http://[::1]:81/x").unwrap().addr,
            "[::1]:81".parse().unwrap()
        );
        assert!(parse_url("http://10.0.0.1:80/").is_err());
        assert!(parse_url("http://example.com/").is_err());
        assert!(parse_url("https://127.0.0.1/").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn request_bytes() {
        let args = Args::parse_from([
            "loadgen",
            "--url",
            "http://127.0.0.1:1/echo",
            "--rate",
            "1",
            "--method",
            "POST",
            "--body-bytes",
            "4",
        ]);
        let target = parse_url(&args.url).unwrap();
        let req = build_request(&args, &target);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("POST /echo HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\nxxxx"));
    }

    #[test]
    fn a_host_header_replaces_the_urls() {
        let args = Args::parse_from([
            "ekilibri-loadgen",
            "--url",
            "http://127.0.0.1:1/",
            "--rate",
            "1",
            "-H",
            "host:  api.example ",
            "-H",
            "X-A: b",
        ]);
        let target = parse_url(&args.url).unwrap();
        let text = String::from_utf8(build_request(&args, &target)).unwrap();
        assert!(
            text.starts_with("GET / HTTP/1.1\r\nHost: api.example\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("ost:").count(), 1, "{text}");
        assert!(text.contains("X-A: b\r\n"));
    }
}
