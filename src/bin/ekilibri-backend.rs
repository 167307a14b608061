//! `ekilibri-backend`: a small, fast HTTP/1.1 origin server used as the backend
//! in ekilibri's integration tests, its demo and its benchmark.
//!
//! It runs `--threads` glommio executors, each accepting on its own
//! `SO_REUSEPORT` socket bound to the same address, and prints exactly one line,
//! `listening on HOST:PORT` (with the real port, also when `-p 0` asks for an
//! ephemeral one), to stdout once it is ready. Connections are kept alive,
//! pipelined requests are answered in order, and request bodies framed by
//! `Content-Length` or `Transfer-Encoding: chunked` are understood. Nothing is
//! logged per request, so the server stays out of the way of a benchmark.
//!
//! Routes (any method unless stated; every response carries
//! `X-Backend-Port: PORT`):
//!
//! | Route                 | Response                                                          |
//! |-----------------------|-------------------------------------------------------------------|
//! | `/`                   | 200, `text/plain` body `backend PORT\n`                          |
//! | `/health`             | 200, empty body                                                   |
//! | `POST /echo`          | 200, the request body and Content-Type (405 for other methods)    |
//! | `/sleep?ms=N`         | 200 with an empty body after N ms (default 2000)                  |
//! | `/status/N`           | status N (100..=599 but not 101); no body                         |
//! | `/bytes/N`            | 200, N bytes `abc...zabc...` streamed from a static buffer            |
//! | `/chunked[?bytes=N]`  | 200, chunked body (`hello chunked world\n` or N pattern bytes) and a `X-Trailer: done` trailer |
//! | `/headers`            | 200, `text/plain` body: the raw request head as received          |
//! | `/stats`              | 200, `connections=A requests=R\n` counted since start             |
//! | `/close`              | 200, body `bye\n`, `Connection: close`, then the connection closes |
//! | `/upgrade`            | 101 if the request has an `Upgrade` header (then echoes raw bytes), else 400 |
//! | anything else         | 404                                                               |
//!
//! Malformed requests get a 400 and the connection is closed; a query value
//! that is not a number (`/sleep?ms=x`, `/chunked?bytes=x`) gets a 400 on a
//! connection that stays open. `HEAD` requests get the head a `GET` would get,
//! without the body.

use std::{
    io::{self, Write as _},
    net::{IpAddr, Shutdown, SocketAddr},
    ops::Range,
    os::fd::{FromRawFd, IntoRawFd, RawFd},
    process::ExitCode,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{
    LocalExecutorBuilder, Placement,
    net::{TcpListener, TcpStream},
};
use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog of every accepting socket.
const LISTEN_BACKLOG: i32 = 4096;
/// Initial size of a connection's read buffer.
const READ_BUF_LEN: usize = 16 * 1024;
/// Largest request head accepted; bigger heads get a 431.
const MAX_HEAD_LEN: usize = 64 * 1024;
/// Most header lines accepted in one request head: what a balancer
/// forwards of a client's 100 (ekilibri's limit) plus the fields it adds
/// (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`, `X-Request-Id`),
/// with room to spare.
const MAX_HEADERS: usize = 128;
/// Largest body `/echo` buffers; bigger bodies get a 413.
const MAX_ECHO_BODY: usize = 64 * 1024 * 1024;
/// Pending response bytes above which the output buffer is written out even
/// though more pipelined requests may be waiting.
const OUT_FLUSH_THRESHOLD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted in a chunked request body.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted in a chunked request body.
const MAX_TRAILER_LEN: usize = 16 * 1024;
/// Largest chunk sent by `/chunked?bytes=N`.
const RESPONSE_CHUNK_LEN: usize = 8192;
/// Sleep of `/sleep` without `ms`.
const DEFAULT_SLEEP_MS: u64 = 2000;
/// How long a closing connection waits for the peer to stop sending.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// How many bytes a closing connection discards at most while lingering.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// Scratch buffers bigger than this are released after the request.
const MAX_RETAINED_SCRATCH: usize = 1024 * 1024;

/// Length of [`PATTERN`]: a multiple of 26, so the pattern wraps seamlessly.
const PATTERN_LEN: usize = 26 * 2520;

/// The body bytes of `/bytes/N` and `/chunked?bytes=N`: byte `i` is
/// `b'a' + i % 26`. Bodies are streamed as slices of this buffer.
static PATTERN: [u8; PATTERN_LEN] = build_pattern();

/// Builds [`PATTERN`] at compile time.
const fn build_pattern() -> [u8; PATTERN_LEN] {
    let mut pattern = [0u8; PATTERN_LEN];
    let mut i = 0;
    while i < PATTERN_LEN {
        pattern[i] = b'a' + (i % 26) as u8;
        i += 1;
    }
    pattern
}

/// Returns at most `max` bytes of the body pattern starting at body offset `pos`.
fn pattern_slice(pos: u64, max: usize) -> &'static [u8] {
    let offset = (pos % 26) as usize;
    let len = max.min(PATTERN_LEN - offset);
    &PATTERN[offset..offset + len]
}

/// Command line of `ekilibri-backend`.
#[derive(Debug, Parser)]
#[command(
    name = "ekilibri-backend",
    about = "HTTP/1.1 test backend for ekilibri's tests, demo and benchmark"
)]
struct Args {
    /// Port to listen on (0 picks an ephemeral port).
    #[arg(short, long, default_value_t = 8081)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Number of executor threads, each accepting on its own SO_REUSEPORT socket.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
}

/// Process-wide counters served by `/stats`.
#[derive(Debug, Default)]
struct Stats {
    /// TCP connections accepted.
    connections: AtomicU64,
    /// Requests served.
    requests: AtomicU64,
}

/// Per-executor, read-only state shared by all of its connections.
struct Context {
    /// Pre-rendered `X-Backend-Port: PORT\r\n` header line.
    port_header: Vec<u8>,
    /// Pre-rendered body of `/`.
    root_body: Vec<u8>,
    /// Counters shared by all executors.
    stats: Arc<Stats>,
}

impl Context {
    /// Creates the state for a server listening on `port`.
    fn new(port: u16, stats: Arc<Stats>) -> Self {
        Self {
            port_header: format!("X-Backend-Port: {port}\r\n").into_bytes(),
            root_body: format!("backend {port}\n").into_bytes(),
            stats,
        }
    }
}

fn main() -> ExitCode {
    restore_default_sigint();
    init_tracing();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ekilibri-backend: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Restores the default action (terminate) of SIGINT, which shells set to
/// "ignore" for background jobs, so that `kill -INT` always stops the server.
/// SIGTERM keeps its default action too: the process simply exits.
fn restore_default_sigint() {
    // SAFETY: runs before any other thread exists and installs no handler
    // code, only the default disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Logs to stderr (stdout carries only the `listening on` line), at `warn`
/// unless `RUST_LOG` says otherwise.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Failing to install a subscriber only loses logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .try_init();
}

/// Binds one socket per thread, starts the executors, announces the address
/// and serves until the process is killed.
fn run(args: &Args) -> io::Result<()> {
    let first = bind_listener(SocketAddr::new(args.host, args.port))?;
    let local = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no inet address"))?;
    let mut sockets = vec![first];
    for _ in 1..args.threads {
        sockets.push(bind_listener(local)?);
    }

    let stats = Arc::new(Stats::default());
    let mut executors = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let fd = socket.into_raw_fd();
        let context = Context::new(local.port(), Arc::clone(&stats));
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name("backend")
            .spawn(move || async move { accept_loop(fd, Rc::new(context)).await })
            .map_err(|error| io::Error::other(format!("cannot start executor: {error}")))?;
        executors.push(executor);
    }

    tracing::info!(%local, threads = args.threads, "ekilibri-backend started");
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {local}")?;
    stdout.flush()?;
    drop(stdout);

    for executor in executors {
        executor
            .join()
            .map_err(|error| io::Error::other(format!("executor failed: {error}")))?;
    }
    Ok(())
}

/// Creates a TCP socket bound to `addr` with `SO_REUSEPORT`, listening with a
/// [`LISTEN_BACKLOG`] backlog.
fn bind_listener(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Accepts connections on the listening socket `fd` forever, serving each one
/// in its own task.
async fn accept_loop(fd: RawFd, context: Rc<Context>) {
    // SAFETY: `fd` is a bound, listening TCP socket whose ownership `run`
    // released with `into_raw_fd` and handed to this executor alone.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    loop {
        match listener.accept().await {
            Ok(stream) => {
                context.stats.connections.fetch_add(1, Ordering::Relaxed);
                // Only costs latency if it fails.
                let _ = stream.set_nodelay(true);
                let context = Rc::clone(&context);
                glommio::spawn_local(async move {
                    // I/O errors only mean the peer went away.
                    let _ = serve_connection(stream, &context).await;
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                // Do not spin on persistent errors such as EMFILE.
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The request methods the routes care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// `HEAD`: answer with the head only.
    Head,
    /// `POST`: the only method `/echo` accepts.
    Post,
    /// Anything else.
    Other,
}

/// What a request asks for, decoded from its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/`.
    Root,
    /// `/health`.
    Health,
    /// `/echo`.
    Echo,
    /// `/sleep?ms=N`, in milliseconds.
    Sleep(u64),
    /// `/status/N`.
    Status(u16),
    /// `/bytes/N`.
    Bytes(u64),
    /// `/chunked`, with the `bytes` query parameter if any.
    Chunked(Option<u64>),
    /// `/headers`.
    Headers,
    /// `/stats`.
    Stats,
    /// `/close`.
    Close,
    /// `/upgrade`.
    Upgrade,
    /// A known route with an invalid query value.
    BadRequest,
    /// Anything else.
    NotFound,
}

impl Route {
    /// Decodes a request target (origin form or absolute form).
    fn parse(target: &str) -> Route {
        let (path, query) = split_target(target);
        match path {
            "/" => Route::Root,
            "/health" => Route::Health,
            "/echo" => Route::Echo,
            "/headers" => Route::Headers,
            "/stats" => Route::Stats,
            "/close" => Route::Close,
            "/upgrade" => Route::Upgrade,
            "/sleep" => match query_param(query, "ms") {
                None => Route::Sleep(DEFAULT_SLEEP_MS),
                Some(ms) => parse_decimal(ms.as_bytes()).map_or(Route::BadRequest, Route::Sleep),
            },
            "/chunked" => match query_param(query, "bytes") {
                None => Route::Chunked(None),
                Some(n) => parse_decimal(n.as_bytes())
                    .map_or(Route::BadRequest, |n| Route::Chunked(Some(n))),
            },
            _ => {
                if let Some(code) = path.strip_prefix("/status/") {
                    parse_decimal(code.as_bytes())
                        .and_then(|code| u16::try_from(code).ok())
                        .filter(|code| (100..=599).contains(code) && *code != 101)
                        .map_or(Route::NotFound, Route::Status)
                } else if let Some(n) = path.strip_prefix("/bytes/") {
                    parse_decimal(n.as_bytes()).map_or(Route::NotFound, Route::Bytes)
                } else {
                    Route::NotFound
                }
            }
        }
    }
}

/// Splits a request target into its path and query (without the `?`),
/// dropping the scheme and authority of an absolute-form target. An empty
/// path is returned as `/`.
fn split_target(target: &str) -> (&str, &str) {
    let mut rest = target;
    for scheme in ["http://", "https://"] {
        if rest
            .get(..scheme.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
        {
            let authority_and_more = &rest[scheme.len()..];
            let end = authority_and_more
                .find(['/', '?'])
                .unwrap_or(authority_and_more.len());
            rest = &authority_and_more[end..];
            break;
        }
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    (if path.is_empty() { "/" } else { path }, query)
}

/// Returns the value of the first `name=value` pair called `name` in a query
/// string (`a=1&b=2`); a pair without `=` has an empty value.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Parses a non-empty string of ASCII digits into a `u64`; `None` on anything
/// else, including overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        if digit.is_ascii_digit() {
            value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        } else {
            None
        }
    })
}

/// Whether a comma-separated header value (such as `Connection`) contains
/// `token`, compared case-insensitively.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Position of `part`, a sub-slice of `whole`, as a range of indices into
/// `whole` (empty if `part` is not inside `whole`).
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if end <= whole.len() => start..end,
        _ => 0..0,
    }
}

/// Everything the server needs from a parsed request head, without borrowing
/// the read buffer: ranges are relative to the start of the head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestHead {
    /// Length of the head, final CRLF included.
    len: usize,
    /// The method, as far as the routes care.
    method: Method,
    /// What the request asks for.
    route: Route,
    /// Whether the request is HTTP/1.0.
    http10: bool,
    /// Whether the connection may serve another request after this one.
    keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    expect_continue: bool,
    /// How the body is framed.
    body: BodyFraming,
    /// Value of the `Content-Type` header.
    content_type: Option<Range<usize>>,
    /// Value of the `Upgrade` header.
    upgrade: Option<Range<usize>>,
}

/// Result of trying to parse a request head out of the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
enum ParseOutcome {
    /// A whole head was parsed.
    Complete(RequestHead),
    /// More bytes are needed.
    Partial,
    /// The bytes are not a valid HTTP/1.x request head.
    Invalid,
}

/// Parses the request head at the start of `input`.
fn parse_head(input: &[u8]) -> ParseOutcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return ParseOutcome::Partial,
        Err(_) => return ParseOutcome::Invalid,
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return ParseOutcome::Invalid;
    };

    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut content_length = None;
    let mut content_type = None;
    let mut upgrade = None;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            let Some(length) = parse_decimal(value) else {
                return ParseOutcome::Invalid;
            };
            if content_length.is_some_and(|previous| previous != length) {
                return ParseOutcome::Invalid;
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Only the final coding matters, and it must be chunked.
            chunked = value
                .split(|&byte| byte == b',')
                .next_back()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection_close |= has_token(value, "close");
            connection_keep_alive |= has_token(value, "keep-alive");
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(range_in(input, value));
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(range_in(input, value));
        }
    }

    let body = if transfer_encoding {
        if !chunked {
            return ParseOutcome::Invalid;
        }
        BodyFraming::Chunked
    } else {
        match content_length {
            None | Some(0) => BodyFraming::None,
            Some(length) => BodyFraming::Length(length),
        }
    };
    let http10 = version == 0;
    let keep_alive = if http10 {
        connection_keep_alive && !connection_close
    } else {
        !connection_close
    }
    // A request framed by both headers may be a smuggling attempt: answer it,
    // then close (RFC 9112, section 6.3).
    && !(transfer_encoding && content_length.is_some());

    ParseOutcome::Complete(RequestHead {
        len,
        method: match method {
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            _ => Method::Other,
        },
        route: Route::parse(target),
        http10,
        keep_alive,
        expect_continue,
        body,
        content_type,
        upgrade,
    })
}

/// A chunked request body that does not follow RFC 9112, section 7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MalformedChunk;

/// Where a [`ChunkedDecoder`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailer,
    /// The body is complete.
    Done,
}

/// Incremental decoder of a `Transfer-Encoding: chunked` body: feed it the
/// bytes as they arrive and it reports how many it consumed.
#[derive(Debug)]
struct ChunkedDecoder {
    /// Current position in the body grammar.
    state: ChunkState,
    /// Bytes of trailer section seen so far.
    trailer_len: usize,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    fn new() -> Self {
        Self {
            state: ChunkState::Size,
            trailer_len: 0,
        }
    }

    /// Whether the last chunk and the trailer section have been consumed.
    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes as much of `input` as possible, appending chunk data to `sink`
    /// if given, and returns how many bytes were consumed. Bytes that were not
    /// consumed (an incomplete line, or anything after the body) must be
    /// offered again, followed by more input, until [`is_done`](Self::is_done).
    fn decode(
        &mut self,
        input: &[u8],
        mut sink: Option<&mut Vec<u8>>,
    ) -> Result<usize, MalformedChunk> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => {
                    let Some((line, consumed)) = take_line(rest)? else {
                        return Ok(pos);
                    };
                    pos += consumed;
                    let size = parse_chunk_size(line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    if let Some(sink) = sink.as_deref_mut() {
                        sink.extend_from_slice(&rest[..take]);
                    }
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&byte| byte != b'\r') {
                            return Err(MalformedChunk);
                        }
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(MalformedChunk);
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some((line, consumed)) = take_line(rest)? else {
                        return Ok(pos);
                    };
                    pos += consumed;
                    self.trailer_len += consumed;
                    if self.trailer_len > MAX_TRAILER_LEN {
                        return Err(MalformedChunk);
                    }
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    } else if !line.contains(&b':') {
                        return Err(MalformedChunk);
                    }
                }
            }
        }
    }
}

/// Splits a CRLF-terminated line off the start of `input`: returns the line
/// without its CRLF and the bytes consumed, or `None` if the line is not
/// complete yet. Bare LFs and lines longer than [`MAX_CHUNK_LINE`] are errors.
fn take_line(input: &[u8]) -> Result<Option<(&[u8], usize)>, MalformedChunk> {
    let window = &input[..input.len().min(MAX_CHUNK_LINE + 2)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(lf) if lf > 0 && input[lf - 1] == b'\r' => Ok(Some((&input[..lf - 1], lf + 1))),
        Some(_) => Err(MalformedChunk),
        None if window.len() > MAX_CHUNK_LINE => Err(MalformedChunk),
        None => Ok(None),
    }
}

/// Parses a chunk-size line (`1a2b` optionally followed by `;extensions`).
fn parse_chunk_size(line: &[u8]) -> Result<u64, MalformedChunk> {
    let digits = match line.iter().position(|&byte| byte == b';') {
        Some(semicolon) => line[..semicolon].trim_ascii_end(),
        None => line,
    };
    if digits.is_empty() || digits.len() > 16 {
        return Err(MalformedChunk);
    }
    digits.iter().try_fold(0u64, |size, &digit| {
        let value = char::from(digit).to_digit(16).ok_or(MalformedChunk)?;
        Ok((size << 4) | u64::from(value))
    })
}

/// Why a request body could not be read.
#[derive(Debug)]
enum BodyError {
    /// The connection failed or closed early.
    Io(io::Error),
    /// The chunked framing is invalid.
    Malformed,
    /// The body is larger than [`MAX_ECHO_BODY`].
    TooLarge,
}

impl From<io::Error> for BodyError {
    fn from(error: io::Error) -> Self {
        BodyError::Io(error)
    }
}

impl From<MalformedChunk> for BodyError {
    fn from(_: MalformedChunk) -> Self {
        BodyError::Malformed
    }
}

/// What to do with a connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Serve the next request.
    KeepAlive,
    /// Send the pending responses, then close.
    Close,
    /// The connection has been fully dealt with (upgraded and finished).
    Done,
}

/// The `Connection` header a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionHeader {
    /// None: the HTTP/1.1 default (keep-alive) applies.
    Omit,
    /// `Connection: keep-alive`, for HTTP/1.0 clients that asked for it.
    KeepAlive,
    /// `Connection: close`.
    Close,
}

impl ConnectionHeader {
    /// The header to send for a request of the given version.
    fn for_request(http10: bool, keep_alive: bool) -> Self {
        match (keep_alive, http10) {
            (false, _) => ConnectionHeader::Close,
            (true, true) => ConnectionHeader::KeepAlive,
            (true, false) => ConnectionHeader::Omit,
        }
    }
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    /// `Content-Length: N`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, announcing the `X-Trailer` trailer.
    Chunked,
    /// No body and no length (1xx, 204, 304).
    NoBody,
}

/// The head of a response.
struct ResponseHead<'a> {
    /// Status code.
    status: u16,
    /// Body framing.
    framing: ResponseFraming,
    /// `Content-Type` value, if any.
    content_type: Option<&'a [u8]>,
    /// Additional raw header lines, each ending in CRLF.
    extra: &'a [u8],
    /// The `Connection` header.
    connection: ConnectionHeader,
}

impl ResponseHead<'_> {
    /// A head with no content type and no extra headers.
    fn new(status: u16, framing: ResponseFraming, connection: ConnectionHeader) -> Self {
        ResponseHead {
            status,
            framing,
            content_type: None,
            extra: b"",
            connection,
        }
    }

    /// Appends the head, final CRLF included, to `out`.
    fn write(&self, out: &mut Vec<u8>, context: &Context) {
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        out.extend_from_slice(&context.port_header);
        match self.framing {
            ResponseFraming::Length(length) => {
                let _ = write!(out, "Content-Length: {length}\r\n");
            }
            ResponseFraming::Chunked => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\nTrailer: X-Trailer\r\n");
            }
            ResponseFraming::NoBody => {}
        }
        if let Some(content_type) = self.content_type {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(content_type);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(self.extra);
        match self.connection {
            ConnectionHeader::Omit => {}
            ConnectionHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            ConnectionHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The reason phrase sent with `status`: the balancer's table, "Unknown"
/// for a status it does not name.
fn reason_phrase(status: u16) -> &'static str {
    ekilibri::http::status::reason(status).unwrap_or("Unknown")
}

/// A client connection with its buffers.
struct Conn {
    /// The socket.
    stream: TcpStream,
    /// Read buffer; bytes `start..end` were received but not consumed yet.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// End of the received bytes in `buf`.
    end: usize,
    /// Response bytes not written yet; pipelined responses are batched here.
    out: Vec<u8>,
}

impl Conn {
    /// Wraps an accepted socket.
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: vec![0; READ_BUF_LEN],
            start: 0,
            end: 0,
            out: Vec::with_capacity(READ_BUF_LEN),
        }
    }

    /// The received, unconsumed bytes.
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` pending bytes as consumed.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes after the pending ones, making room first; returns
    /// how many arrived (0 at end of stream). The buffer grows only when the
    /// pending bytes fill it, which the callers bound ([`MAX_HEAD_LEN`],
    /// [`MAX_CHUNK_LINE`]).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let len = self.buf.len();
            self.buf.resize(len * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Writes out the pending response bytes.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads the request body framed by `framing`, appending it to `sink` if
    /// given and discarding it otherwise.
    async fn read_body(
        &mut self,
        framing: BodyFraming,
        mut sink: Option<&mut Vec<u8>>,
    ) -> Result<(), BodyError> {
        match framing {
            BodyFraming::None => Ok(()),
            BodyFraming::Length(length) => match sink {
                Some(body) => {
                    let length = usize::try_from(length)
                        .ok()
                        .filter(|&length| length <= MAX_ECHO_BODY)
                        .ok_or(BodyError::TooLarge)?;
                    let buffered = length.min(self.end - self.start);
                    body.extend_from_slice(&self.buf[self.start..self.start + buffered]);
                    self.consume(buffered);
                    if buffered < length {
                        body.resize(length, 0);
                        self.stream.read_exact(&mut body[buffered..]).await?;
                    }
                    Ok(())
                }
                None => {
                    let mut remaining = length;
                    loop {
                        let buffered = (self.end - self.start) as u64;
                        let take = remaining.min(buffered);
                        // `take` is at most the buffered length, a usize.
                        self.consume(take as usize);
                        remaining -= take;
                        if remaining == 0 {
                            return Ok(());
                        }
                        if self.fill().await? == 0 {
                            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                        }
                    }
                }
            },
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                loop {
                    let consumed =
                        decoder.decode(&self.buf[self.start..self.end], sink.as_deref_mut())?;
                    self.consume(consumed);
                    if sink.as_ref().is_some_and(|body| body.len() > MAX_ECHO_BODY) {
                        return Err(BodyError::TooLarge);
                    }
                    if decoder.is_done() {
                        return Ok(());
                    }
                    if self.fill().await? == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                    }
                }
            }
        }
    }

    /// Queues a complete response with a `Content-Length` body (sent only if
    /// `with_body`).
    fn queue(&mut self, context: &Context, head: &ResponseHead<'_>, body: &[u8], with_body: bool) {
        head.write(&mut self.out, context);
        if with_body {
            self.out.extend_from_slice(body);
        }
    }

    /// Answers with `status`, no body and `Connection: close`, then closes.
    async fn reject(mut self, context: &Context, status: u16) -> io::Result<()> {
        let head = ResponseHead::new(status, ResponseFraming::Length(0), ConnectionHeader::Close);
        head.write(&mut self.out, context);
        self.flush().await?;
        self.linger_close().await;
        Ok(())
    }

    /// Closes the connection gracefully: shuts down the sending side, then
    /// drains what the peer still sends (bounded in time and size) so that
    /// closing with unread data does not reset the connection before the peer
    /// has read the last response.
    async fn linger_close(mut self) {
        if self.stream.shutdown(Shutdown::Write).await.is_err()
            || self.stream.set_read_timeout(Some(LINGER_TIMEOUT)).is_err()
        {
            return;
        }
        let mut discarded = 0;
        while discarded < LINGER_MAX_BYTES {
            match self.stream.read(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    }
}

/// Reusable per-connection buffers for request data that must outlive the
/// read buffer's reuse while the body is read.
#[derive(Default)]
struct Scratch {
    /// Copy of the request head (`/headers`).
    head: Vec<u8>,
    /// Request `Content-Type` (`/echo`).
    content_type: Vec<u8>,
    /// Request body (`/echo`) or a small generated body (`/stats`).
    body: Vec<u8>,
}

/// Serves requests on one connection until it closes.
async fn serve_connection(stream: TcpStream, context: &Context) -> io::Result<()> {
    let mut conn = Conn::new(stream);
    let mut scratch = Scratch::default();
    loop {
        let head = match parse_head(conn.pending()) {
            ParseOutcome::Complete(head) => head,
            ParseOutcome::Invalid => return conn.reject(context, 400).await,
            ParseOutcome::Partial => {
                if conn.end - conn.start >= MAX_HEAD_LEN {
                    return conn.reject(context, 431).await;
                }
                // Every buffered request has been answered: send the answers.
                conn.flush().await?;
                if conn.fill().await? == 0 {
                    return Ok(());
                }
                continue;
            }
        };
        context.stats.requests.fetch_add(1, Ordering::Relaxed);
        match handle_request(&mut conn, &mut scratch, &head, context).await {
            Ok(Next::KeepAlive) => {
                if conn.out.len() >= OUT_FLUSH_THRESHOLD {
                    conn.flush().await?;
                }
            }
            Ok(Next::Close) => {
                conn.flush().await?;
                conn.linger_close().await;
                return Ok(());
            }
            Ok(Next::Done) => return Ok(()),
            Err(BodyError::Io(error)) => return Err(error),
            Err(BodyError::Malformed) => return conn.reject(context, 400).await,
            Err(BodyError::TooLarge) => return conn.reject(context, 413).await,
        }
        if scratch.body.capacity() > MAX_RETAINED_SCRATCH {
            scratch.body = Vec::new();
        }
    }
}

/// Answers the request whose head `head` starts the pending bytes: consumes
/// the head and the body, and queues (or streams) the response.
async fn handle_request(
    conn: &mut Conn,
    scratch: &mut Scratch,
    head: &RequestHead,
    context: &Context,
) -> Result<Next, BodyError> {
    if head.route == Route::Upgrade {
        return Ok(upgrade(conn, head, context).await?);
    }

    // Keep what the response needs from the head: reading the body may reuse
    // the read buffer.
    let head_bytes = conn.start..conn.start + head.len;
    match head.route {
        Route::Headers => {
            scratch.head.clear();
            scratch.head.extend_from_slice(&conn.buf[head_bytes]);
        }
        Route::Echo => {
            scratch.content_type.clear();
            if let Some(range) = &head.content_type {
                let value = conn.start + range.start..conn.start + range.end;
                scratch.content_type.extend_from_slice(&conn.buf[value]);
            }
        }
        _ => {}
    }
    conn.consume(head.len);

    if head.expect_continue && !head.http10 && head.body != BodyFraming::None {
        conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        conn.flush().await?;
    }
    let echo = head.route == Route::Echo && head.method == Method::Post;
    scratch.body.clear();
    conn.read_body(head.body, echo.then_some(&mut scratch.body))
        .await?;

    let keep_alive = head.keep_alive && head.route != Route::Close;
    let connection = ConnectionHeader::for_request(head.http10, keep_alive);
    let with_body = head.method != Method::Head;
    let empty_ok = ResponseHead::new(200, ResponseFraming::Length(0), connection);
    match head.route {
        Route::Root => {
            let response = ResponseHead {
                content_type: Some(b"text/plain"),
                ..ResponseHead::new(
                    200,
                    ResponseFraming::Length(context.root_body.len() as u64),
                    connection,
                )
            };
            conn.queue(context, &response, &context.root_body, with_body);
        }
        Route::Health => conn.queue(context, &empty_ok, b"", with_body),
        Route::Echo if echo => {
            let content_type: &[u8] = if head.content_type.is_some() {
                &scratch.content_type
            } else {
                b"application/octet-stream"
            };
            let response = ResponseHead {
                content_type: Some(content_type),
                ..ResponseHead::new(
                    200,
                    ResponseFraming::Length(scratch.body.len() as u64),
                    connection,
                )
            };
            response.write(&mut conn.out, context);
            if scratch.body.len() <= OUT_FLUSH_THRESHOLD {
                conn.out.extend_from_slice(&scratch.body);
            } else {
                conn.flush().await?;
                conn.stream.write_all(&scratch.body).await?;
            }
        }
        Route::Echo => {
            let response = ResponseHead {
                extra: b"Allow: POST\r\n",
                ..ResponseHead::new(405, ResponseFraming::Length(0), connection)
            };
            conn.queue(context, &response, b"", with_body);
        }
        Route::Sleep(ms) => {
            // Do not hold back the answers to earlier pipelined requests.
            conn.flush().await?;
            glommio::timer::sleep(Duration::from_millis(ms)).await;
            conn.queue(context, &empty_ok, b"", with_body);
        }
        Route::Status(status) => {
            let framing = if status < 200 || status == 204 || status == 304 {
                ResponseFraming::NoBody
            } else {
                ResponseFraming::Length(0)
            };
            conn.queue(
                context,
                &ResponseHead::new(status, framing, connection),
                b"",
                with_body,
            );
        }
        Route::Bytes(length) => {
            ResponseHead::new(200, ResponseFraming::Length(length), connection)
                .write(&mut conn.out, context);
            if with_body {
                send_pattern(conn, length).await?;
            }
        }
        Route::Chunked(length) => {
            ResponseHead::new(200, ResponseFraming::Chunked, connection)
                .write(&mut conn.out, context);
            if with_body {
                send_chunked(conn, length).await?;
            }
        }
        Route::Headers => {
            let response = ResponseHead {
                content_type: Some(b"text/plain"),
                ..ResponseHead::new(
                    200,
                    ResponseFraming::Length(scratch.head.len() as u64),
                    connection,
                )
            };
            conn.queue(context, &response, &scratch.head, with_body);
        }
        Route::Stats => {
            let _ = writeln!(
                scratch.body,
                "connections={} requests={}",
                context.stats.connections.load(Ordering::Relaxed),
                context.stats.requests.load(Ordering::Relaxed)
            );
            let response = ResponseHead::new(
                200,
                ResponseFraming::Length(scratch.body.len() as u64),
                connection,
            );
            conn.queue(context, &response, &scratch.body, with_body);
        }
        Route::Close => {
            let response = ResponseHead::new(200, ResponseFraming::Length(4), connection);
            conn.queue(context, &response, b"bye\n", with_body);
        }
        Route::BadRequest => {
            let response = ResponseHead::new(400, ResponseFraming::Length(0), connection);
            conn.queue(context, &response, b"", with_body);
        }
        Route::NotFound => {
            let response = ResponseHead::new(404, ResponseFraming::Length(0), connection);
            conn.queue(context, &response, b"", with_body);
        }
        Route::Upgrade => unreachable!("upgrades are handled above"),
    }
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Sends `length` bytes of [`PATTERN`] after the queued response head: the
/// start goes into the output buffer, the rest is written straight from the
/// static pattern.
async fn send_pattern(conn: &mut Conn, length: u64) -> io::Result<()> {
    let room = OUT_FLUSH_THRESHOLD.saturating_sub(conn.out.len());
    let first = pattern_slice(0, usize::try_from(length).unwrap_or(usize::MAX).min(room));
    conn.out.extend_from_slice(first);
    let mut sent = first.len() as u64;
    if sent < length {
        conn.flush().await?;
        while sent < length {
            let left = usize::try_from(length - sent).unwrap_or(usize::MAX);
            let slice = pattern_slice(sent, left);
            conn.stream.write_all(slice).await?;
            sent += slice.len() as u64;
        }
    }
    Ok(())
}

/// Sends the chunked body of `/chunked` after the queued response head:
/// `length` pattern bytes in chunks of at most [`RESPONSE_CHUNK_LEN`], or
/// three fixed chunks without a length, then the `X-Trailer: done` trailer.
async fn send_chunked(conn: &mut Conn, length: Option<u64>) -> io::Result<()> {
    match length {
        None => {
            for chunk in [&b"hello "[..], b"chunked ", b"world\n"] {
                let _ = write!(conn.out, "{:x}\r\n", chunk.len());
                conn.out.extend_from_slice(chunk);
                conn.out.extend_from_slice(b"\r\n");
            }
        }
        Some(length) => {
            let mut sent = 0u64;
            while sent < length {
                let left = usize::try_from(length - sent).unwrap_or(usize::MAX);
                let chunk = pattern_slice(sent, left.min(RESPONSE_CHUNK_LEN));
                let _ = write!(conn.out, "{:x}\r\n", chunk.len());
                conn.out.extend_from_slice(chunk);
                conn.out.extend_from_slice(b"\r\n");
                sent += chunk.len() as u64;
                if conn.out.len() >= OUT_FLUSH_THRESHOLD {
                    conn.flush().await?;
                }
            }
        }
    }
    conn.out.extend_from_slice(b"0\r\nX-Trailer: done\r\n\r\n");
    Ok(())
}

/// Answers `/upgrade`: with an `Upgrade` header, switches protocols and echoes
/// every byte until the peer closes; without one, answers 400 and closes.
async fn upgrade(conn: &mut Conn, head: &RequestHead, context: &Context) -> io::Result<Next> {
    let Some(range) = &head.upgrade else {
        let response = ResponseHead::new(400, ResponseFraming::Length(0), ConnectionHeader::Close);
        conn.queue(context, &response, b"", head.method != Method::Head);
        return Ok(Next::Close);
    };
    let value = conn.start + range.start..conn.start + range.end;
    conn.out
        .extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: ");
    conn.out.extend_from_slice(&conn.buf[value]);
    conn.out.extend_from_slice(b"\r\nConnection: Upgrade\r\n");
    conn.out.extend_from_slice(&context.port_header);
    conn.out.extend_from_slice(b"\r\n");
    conn.consume(head.len);
    // Bytes sent right after the head already belong to the new protocol.
    conn.out.extend_from_slice(&conn.buf[conn.start..conn.end]);
    conn.consume(conn.end - conn.start);
    conn.flush().await?;
    loop {
        let n = conn.stream.read(&mut conn.buf).await?;
        if n == 0 {
            return Ok(Next::Done);
        }
        conn.stream.write_all(&conn.buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes, like a socket would
    /// deliver it; returns the body and the bytes left after it.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), MalformedChunk> {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut fed = 0;
        while !decoder.is_done() {
            if fed == input.len() {
                panic!("body incomplete");
            }
            let next = (fed + step).min(input.len());
            pending.extend_from_slice(&input[fed..next]);
            fed = next;
            let consumed = decoder.decode(&pending, Some(&mut body))?;
            pending.drain(..consumed);
        }
        pending.extend_from_slice(&input[fed..]);
        Ok((body, pending))
    }

    #[test]
    fn query_param_finds_first_match() {
        assert_eq!(query_param("ms=10", "ms"), Some("10"));
        assert_eq!(query_param("a=1&ms=20&ms=30", "ms"), Some("20"));
        assert_eq!(query_param("ms", "ms"), Some(""));
        assert_eq!(query_param("", "ms"), None);
        assert_eq!(query_param("mss=1&m=2", "ms"), None);
    }

    #[test]
    fn split_target_handles_forms() {
        assert_eq!(split_target("/a?b=1"), ("/a", "b=1"));
        assert_eq!(split_target("/a"), ("/a", ""));
        assert_eq!(split_target("http://host:80/x?y"), ("/x", "y"));
        assert_eq!(split_target("HTTP://host"), ("/", ""));
        assert_eq!(split_target("http://host?q=1"), ("/", "q=1"));
    }

    #[test]
    fn decimal_parsing_is_strict() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"1234"), Some(1234));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b"1 "), None);
    }

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/"), Route::Root);
        assert_eq!(Route::parse("/health"), Route::Health);
        assert_eq!(Route::parse("/sleep"), Route::Sleep(DEFAULT_SLEEP_MS));
        assert_eq!(Route::parse("/sleep?ms=5"), Route::Sleep(5));
        assert_eq!(Route::parse("/sleep?ms=x"), Route::BadRequest);
        assert_eq!(Route::parse("/status/204"), Route::Status(204));
        assert_eq!(Route::parse("/status/101"), Route::NotFound);
        assert_eq!(Route::parse("/status/600"), Route::NotFound);
        assert_eq!(Route::parse("/status/99"), Route::NotFound);
        assert_eq!(Route::parse("/bytes/1073741824"), Route::Bytes(1 << 30));
        assert_eq!(Route::parse("/bytes/"), Route::NotFound);
        assert_eq!(Route::parse("/chunked"), Route::Chunked(None));
        assert_eq!(Route::parse("/chunked?bytes=9"), Route::Chunked(Some(9)));
        assert_eq!(Route::parse("/nope"), Route::NotFound);
        assert_eq!(Route::parse("http://h:1/stats"), Route::Stats);
    }

    #[test]
    fn pattern_slices_continue_the_pattern() {
        for pos in [0u64, 1, 25, 26, 8192, 1 << 30] {
            let slice = pattern_slice(pos, 100);
            assert_eq!(slice.len(), 100);
            for (i, &byte) in slice.iter().enumerate() {
                assert_eq!(byte, b'a' + ((pos + i as u64) % 26) as u8);
            }
        }
        assert_eq!(pattern_slice(3, usize::MAX).len(), PATTERN_LEN - 3);
    }

    #[test]
    fn chunked_decoding_whole_and_split() {
        let input = b"6\r\nhello \r\n8;ext=1\r\nchunked \r\n6\r\nworld\n\r\n0\r\nX-T: a\r\n\r\nGET";
        for step in [1, 2, 3, 7, input.len()] {
            let (body, rest) = decode_in_steps(input, step).expect("valid body");
            assert_eq!(body, b"hello chunked world\n", "step {step}");
            assert_eq!(rest, b"GET", "step {step}");
        }
    }

    #[test]
    fn chunked_decoding_uppercase_hex_and_no_trailer() {
        let mut input = b"1A\r\n".to_vec();
        input.extend_from_slice(&[b'x'; 26]);
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        let (body, rest) = decode_in_steps(&input, 5).expect("valid body");
        assert_eq!(body, vec![b'x'; 26]);
        assert!(rest.is_empty());
    }

    #[test]
    fn chunked_decoding_rejects_malformed() {
        let bad: [&[u8]; 7] = [
            b"g\r\n",
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"1 \r\nx\r\n",
        ];
        for input in bad {
            let mut decoder = ChunkedDecoder::new();
            assert_eq!(
                decoder.decode(input, None),
                Err(MalformedChunk),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(
            decoder.decode(&[b'1'; MAX_CHUNK_LINE + 1], None),
            Err(MalformedChunk)
        );
    }

    #[test]
    fn chunked_decoding_waits_for_more() {
        let mut decoder = ChunkedDecoder::new();
        assert_eq!(decoder.decode(b"5\r", None), Ok(0));
        assert_eq!(decoder.decode(b"5\r\nhel", None), Ok(6));
        assert_eq!(decoder.decode(b"lo\r", None), Ok(2));
        assert_eq!(decoder.decode(b"\r\n0\r\n\r\n", None), Ok(7));
        assert!(decoder.is_done());
    }

    #[test]
    fn head_parsing() {
        let ParseOutcome::Complete(head) =
            parse_head(b"POST /echo HTTP/1.1\r\nContent-Type: a/b\r\nContent-Length: 3\r\n\r\nabc")
        else {
            panic!("complete head expected");
        };
        assert_eq!(head.len, 61);
        assert_eq!(head.route, Route::Echo);
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.body, BodyFraming::Length(3));
        assert!(head.keep_alive);
        assert_eq!(head.content_type, Some(35..38));

        let ParseOutcome::Complete(head) = parse_head(b"GET / HTTP/1.0\r\n\r\n") else {
            panic!("complete head expected");
        };
        assert!(!head.keep_alive);
        let ParseOutcome::Complete(head) =
            parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        else {
            panic!("complete head expected");
        };
        assert!(head.keep_alive);
        let ParseOutcome::Complete(head) =
            parse_head(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
        else {
            panic!("complete head expected");
        };
        assert!(!head.keep_alive);
        let ParseOutcome::Complete(head) =
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
        else {
            panic!("complete head expected");
        };
        assert_eq!(head.body, BodyFraming::Chunked);

        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            ParseOutcome::Partial
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\n\x01: x\r\n\r\n"),
            ParseOutcome::Invalid
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            ParseOutcome::Invalid
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            ParseOutcome::Invalid
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            ParseOutcome::Invalid
        );
    }
}
