//! The access log: one line per request, in nginx's formats, written off the
//! request path.
//!
//! Off by default (`access_log = "off"`). When on, a worker formats each line
//! into a core-local buffer ([`WorkerLog`]); a flush task hands the batch to
//! the writer thread every [`FLUSH_EVERY`] (one cross-core message per batch,
//! not per request), and that thread appends it, as raw lines with no prefix,
//! to `access_log_path` (a file, or stdout for `"-"`). Lines of one worker
//! stay in time order; lines of different workers interleave by batch.
//!
//! The writer thread owns the open file. It reopens the same path on
//! [`Writer::reopen`] (SIGUSR1, for logrotate) and switches to another sink
//! on [`Writer::switch`] (a reload that changed `access_log_path`). Which
//! layout a line has comes from the worker's current configuration, so a
//! reload changes it for the next request.
//!
//! This module does not decide *what* a request was (status, bytes, backend):
//! [`crate::connection`] fills an [`Entry`] when a request ends.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

/// How often a worker hands its buffered lines to the writer thread.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A worker flushes early when its buffer grows past this.
const FLUSH_BYTES: usize = 64 * 1024;
/// Batches handed over and not yet written, across workers (about 16 MiB).
/// Past it a worker drops its batch and counts the lines, so a stalled
/// disk costs lines, not unbounded memory.
const MAX_QUEUED_BATCHES: usize = 256;
/// Least time between two warnings about dropped lines, per worker.
const DROP_WARN_EVERY: Duration = Duration::from_secs(10);
/// Longest request line kept from a request that could not be parsed (a 414
/// may carry a line of any length; the log line stays bounded).
pub const MAX_LOGGED_LINE: usize = 8 * 1024;

/// nginx's predefined `combined` format.
pub const COMBINED: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

/// Access log format (`access_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No access log.
    Off,
    /// nginx's `combined` text format ([`COMBINED`]).
    Combined,
    /// One JSON object per line.
    Json,
    /// The `access_log_format` template.
    Custom,
}

impl Format {
    /// Parses the `access_log` config value.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "off" | "" => Some(Format::Off),
            "combined" => Some(Format::Combined),
            "json" => Some(Format::Json),
            "custom" => Some(Format::Custom),
            _ => None,
        }
    }

    /// True unless the log is off.
    pub fn is_on(self) -> bool {
        self != Format::Off
    }
}

/// Where the lines go (`access_log_path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`"-"`, the default).
    Stdout,
    /// A file, opened for appending and created if missing.
    File(PathBuf),
}

impl Target {
    /// Parses the `access_log_path` value: `"-"` or an absolute path (a
    /// relative one would depend on the directory the service started in).
    pub fn parse(s: &str) -> Result<Target, String> {
        match s {
            "-" => Ok(Target::Stdout),
            "" => Err("is empty: give an absolute file path or \"-\" for stdout".into()),
            p if p.starts_with('/') => Ok(Target::File(PathBuf::from(p))),
            p => Err(format!(
                "`{p}` is not an absolute path (or \"-\" for stdout)"
            )),
        }
    }

    /// Opens the target for appending.
    pub fn open(&self) -> std::io::Result<Sink> {
        match self {
            Target::Stdout => Ok(Sink::Stdout),
            Target::File(path) => Ok(Sink::File {
                file: open_append(path)?,
                path: path.clone(),
            }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stdout => f.write_str("stdout"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).create(true).open(path)
}

/// A variable of an `access_log_format` template (nginx's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `$remote_addr`: the client's IP address.
    RemoteAddr,
    /// `$remote_user`: always `-` (no HTTP authentication here).
    RemoteUser,
    /// `$time_local`: `07/Dec/2026:01:02:03 +0000`.
    TimeLocal,
    /// `$time_iso8601`: `2026-12-07T01:02:03+00:00`.
    TimeIso8601,
    /// `$request`: the request line as the client sent it.
    Request,
    /// `$status`: the status sent (499: the client went away first).
    Status,
    /// `$body_bytes_sent`: response body bytes sent, head excluded.
    BodyBytesSent,
    /// `$http_referer`.
    HttpReferer,
    /// `$http_user_agent`.
    HttpUserAgent,
    /// `$request_time`: seconds from the first byte of the request head to
    /// the end of the response, millisecond resolution.
    RequestTime,
    /// `$upstream_addr`: the backend tried last.
    UpstreamAddr,
    /// `$upstream_status`: the status of that try.
    UpstreamStatus,
    /// `$upstream_response_time`: seconds spent on the backend side, from
    /// the first try to the end of the response (retries included).
    UpstreamResponseTime,
    /// `$request_id`: the request's `X-Request-Id` (32 hex digits when
    /// ekilibri made it, [`crate::request_id`]).
    RequestId,
}

impl Var {
    const ALL: [(&'static str, Var); 14] = [
        ("remote_addr", Var::RemoteAddr),
        ("remote_user", Var::RemoteUser),
        ("time_local", Var::TimeLocal),
        ("time_iso8601", Var::TimeIso8601),
        ("request", Var::Request),
        ("status", Var::Status),
        ("body_bytes_sent", Var::BodyBytesSent),
        ("http_referer", Var::HttpReferer),
        ("http_user_agent", Var::HttpUserAgent),
        ("request_time", Var::RequestTime),
        ("upstream_addr", Var::UpstreamAddr),
        ("upstream_status", Var::UpstreamStatus),
        ("upstream_response_time", Var::UpstreamResponseTime),
        ("request_id", Var::RequestId),
    ];

    fn by_name(name: &str) -> Option<Var> {
        Var::ALL.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A parsed `access_log_format` (nginx `log_format` syntax: text with
/// `$name` or `${name}` variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses a template; the error names the variable at fault.
    pub fn parse(s: &str) -> Result<Template, String> {
        if s.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err("must be one line (each request gets one line)".into());
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (name, after) = if let Some(r) = rest.strip_prefix('{') {
                match r.find('}') {
                    Some(end) => (&r[..end], &r[end + 1..]),
                    None => return Err("`${` without a closing `}`".into()),
                }
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                return Err("`$` not followed by a variable name".into());
            }
            let var = Var::by_name(name).ok_or_else(|| {
                let known: Vec<String> = Var::ALL.iter().map(|(n, _)| format!("${n}")).collect();
                format!("unknown variable `${name}` (known: {})", known.join(", "))
            })?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Var(var));
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template { pieces })
    }

    /// nginx's `combined`.
    pub fn combined() -> Template {
        // The constant is a valid template (unit-tested).
        Template::parse(COMBINED).unwrap_or(Template { pieces: Vec::new() })
    }
}

/// One finished request, as logged. Borrowed from the connection; nothing
/// here is allocated per request.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Client address.
    pub client: SocketAddr,
    /// The request line as the client sent it (empty: none was read).
    pub request: &'a [u8],
    /// Status sent (499: client went away).
    pub status: u16,
    /// Response body bytes sent to the client (head excluded).
    pub body_bytes: u64,
    /// `Referer` value (empty: absent).
    pub referer: &'a [u8],
    /// `User-Agent` value (empty: absent).
    pub user_agent: &'a [u8],
    /// The backend tried last, if any.
    pub upstream: Option<SocketAddr>,
    /// The status of that try, if a backend was tried.
    pub upstream_status: Option<u16>,
    /// From the first byte of the head to the end of the response.
    pub request_time: Duration,
    /// Time spent on the backend side, if a backend was tried.
    pub upstream_time: Option<Duration>,
    /// Retries made.
    pub retries: u32,
    /// The request id sent to the backend and the client (empty: none).
    pub request_id: &'a [u8],
}

/// What the writer thread is told.
enum Msg {
    /// Lines to append, each ending in `\n`.
    Lines(Vec<u8>),
    /// Write to this sink from now on.
    Switch(Sink),
    /// Reopen the current file by its path (after logrotate renamed it).
    Reopen,
    /// Answer once everything before this message is written.
    Flush(SyncSender<()>),
}

/// An open destination of the writer thread.
#[derive(Debug)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// An append-mode file and the path it was opened by.
    File {
        /// Where it was opened (reopened on SIGUSR1).
        path: PathBuf,
        /// The open file.
        file: File,
    },
}

impl Sink {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }
}

/// The handle on the writer thread: workers send it batches, the control
/// executor switches and reopens its sink. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: Sender<Msg>,
    /// Batches sent and not yet written (see [`MAX_QUEUED_BATCHES`]).
    queued: Arc<AtomicUsize>,
}

impl Writer {
    /// Starts the writer thread, writing to `sink`.
    pub fn start(sink: Sink) -> std::io::Result<Writer> {
        let (tx, rx) = channel::<Msg>();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("ekilibri-access".into())
            .spawn(move || write_loop(sink, rx, &q))?;
        Ok(Writer { tx, queued })
    }

    /// Writes to `sink` from now on (lines already queued go to the old one).
    pub fn switch(&self, sink: Sink) {
        let _ = self.tx.send(Msg::Switch(sink));
    }

    /// Reopens the current file by its path (SIGUSR1): after logrotate
    /// renamed it, new lines land in a new file of the same name.
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Waits (at most `timeout`) until every batch sent before this call is
    /// written: at exit, so the last lines are not lost.
    pub fn flush(&self, timeout: Duration) {
        let (ack, done) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(timeout);
        }
    }
}

fn write_loop(mut sink: Sink, rx: Receiver<Msg>, queued: &AtomicUsize) {
    // Warn once per run of failures, not once per batch.
    let mut failing = false;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Lines(batch) => {
                match sink.write_all(&batch) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        warn!("cannot write the access log: {e}; dropping lines until it works");
                        failing = true;
                    }
                    Err(_) => {}
                }
                queued.fetch_sub(1, Ordering::Relaxed);
            }
            Msg::Switch(s) => {
                sink = s;
                failing = false;
            }
            Msg::Reopen => {
                if let Sink::File { path, file } = &mut sink {
                    match open_append(path) {
                        Ok(f) => {
                            *file = f;
                            failing = false;
                            info!(path = %path.display(), "access log reopened");
                        }
                        Err(e) => warn!(
                            path = %path.display(),
                            "cannot reopen the access log: {e}; still writing to the old file"
                        ),
                    }
                }
            }
            Msg::Flush(ack) => {
                let _ = ack.try_send(());
            }
        }
    }
}

/// The parts of a request head the log needs, copied out of the read
/// buffer before the proxy consumes it. One per connection, reused by each
/// of its requests: it allocates only when a head is bigger than any
/// before it on this connection, and never while the log is off.
#[derive(Debug, Default)]
pub struct Captured {
    buf: Vec<u8>,
    request: Range<usize>,
    referer: Range<usize>,
    user_agent: Range<usize>,
}

impl Captured {
    /// Copies the request line, `Referer` and `User-Agent` of a complete,
    /// parsed head (leading empty lines allowed).
    pub fn capture(&mut self, head: &[u8]) {
        self.clear();
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .skip_while(|l| l.is_empty());
        if let Some(line) = lines.next() {
            self.request = self.push(line);
        }
        for line in lines.take_while(|l| !l.is_empty()) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if self.referer.is_empty() && name.eq_ignore_ascii_case(b"referer") {
                self.referer = self.push(value);
            } else if self.user_agent.is_empty() && name.eq_ignore_ascii_case(b"user-agent") {
                self.user_agent = self.push(value);
            }
        }
    }

    /// Copies the first line of a head that could not be parsed (at most
    /// [`MAX_LOGGED_LINE`] bytes).
    pub fn capture_line(&mut self, buf: &[u8]) {
        self.clear();
        let buf = &buf[..buf.len().min(MAX_LOGGED_LINE)];
        let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
        self.request = self.push(line.strip_suffix(b"\r").unwrap_or(line));
    }

    /// Forgets the previous request.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.request = 0..0;
        self.referer = 0..0;
        self.user_agent = 0..0;
    }

    fn push(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        start..self.buf.len()
    }

    /// The request line.
    pub fn request(&self) -> &[u8] {
        &self.buf[self.request.clone()]
    }

    /// The `Referer` value (empty when absent).
    pub fn referer(&self) -> &[u8] {
        &self.buf[self.referer.clone()]
    }

    /// The `User-Agent` value (empty when absent).
    pub fn user_agent(&self) -> &[u8] {
        &self.buf[self.user_agent.clone()]
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t');
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// The formatted time of the current second (nginx caches it the same way).
#[derive(Debug)]
struct Clock {
    sec: i64,
    local: String,
    iso: String,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl Clock {
    fn new() -> Self {
        Clock {
            sec: i64::MIN,
            local: String::with_capacity(32),
            iso: String::with_capacity(32),
        }
    }

    fn at(&mut self, now: SystemTime) -> &Self {
        let sec = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if sec != self.sec {
            self.sec = sec;
            let (tm, offset) = local_time(sec);
            self.local.clear();
            self.iso.clear();
            format_time(&mut self.local, &mut self.iso, &tm, offset);
        }
        self
    }
}

/// Broken-down local time of `sec` and the UTC offset in seconds.
fn local_time(sec: i64) -> (libc::tm, i64) {
    let t = sec as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r writes into it
    // and reads only `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
    if ok {
        let offset = tm.tm_gmtoff;
        (tm, offset)
    } else {
        // SAFETY: as above, with gmtime_r.
        unsafe { libc::gmtime_r(&t, &mut tm) };
        (tm, 0)
    }
}

fn format_time(local: &mut String, iso: &mut String, tm: &libc::tm, offset: i64) {
    use std::fmt::Write as _;
    let sign = if offset < 0 { '-' } else { '+' };
    let (oh, om) = (offset.abs() / 3600, offset.abs() % 3600 / 60);
    let month = MONTHS
        .get(tm.tm_mon.clamp(0, 11) as usize)
        .copied()
        .unwrap_or("Jan");
    let year = tm.tm_year + 1900;
    let _ = write!(
        local,
        "{:02}/{month}/{year}:{:02}:{:02}:{:02} {sign}{oh:02}{om:02}",
        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
    );
    let _ = write!(
        iso,
        "{year}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{oh:02}:{om:02}",
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    );
}

/// A worker's buffer of formatted lines, and what it needs to format them.
#[derive(Debug)]
pub struct WorkerLog {
    buf: RefCell<Vec<u8>>,
    tx: Sender<Msg>,
    queued: Arc<AtomicUsize>,
    /// Lines dropped since the last warning, and when that was.
    dropped: Cell<u64>,
    warned: Cell<Option<Instant>>,
    clock: RefCell<Clock>,
    combined: Template,
    /// The worker, for warnings.
    worker: u16,
}

impl WorkerLog {
    /// The buffer of worker `worker`, feeding `writer`.
    pub fn new(worker: usize, writer: &Writer) -> Self {
        WorkerLog {
            buf: RefCell::new(Vec::new()),
            tx: writer.tx.clone(),
            queued: writer.queued.clone(),
            dropped: Cell::new(0),
            warned: Cell::new(None),
            clock: RefCell::new(Clock::new()),
            combined: Template::combined(),
            worker: worker as u16,
        }
    }

    /// Formats one line into the buffer: `format` and `custom` come from the
    /// worker's current configuration.
    pub fn log(&self, format: Format, custom: Option<&Template>, e: &Entry<'_>) {
        if format == Format::Off {
            return;
        }
        let mut b = self.buf.borrow_mut();
        if b.capacity() == 0 {
            b.reserve(FLUSH_BYTES);
        }
        let mut clock = self.clock.borrow_mut();
        let clock = clock.at(SystemTime::now());
        match format {
            Format::Off => {}
            Format::Json => format_json(&mut b, e, clock),
            Format::Combined => format_template(&mut b, &self.combined, e, clock),
            Format::Custom => format_template(&mut b, custom.unwrap_or(&self.combined), e, clock),
        }
        let full = b.len() >= FLUSH_BYTES;
        drop(b);
        if full {
            self.flush();
        }
    }

    /// Hands the buffered lines to the writer thread.
    pub fn flush(&self) {
        let mut b = self.buf.borrow_mut();
        if b.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut *b);
        drop(b);
        if self.queued.load(Ordering::Relaxed) >= MAX_QUEUED_BATCHES {
            let lines = memchr::memchr_iter(b'\n', &batch).count() as u64;
            self.dropped.set(self.dropped.get() + lines);
            if self
                .warned
                .get()
                .is_none_or(|t| t.elapsed() >= DROP_WARN_EVERY)
            {
                warn!(
                    worker = self.worker,
                    dropped = self.dropped.get(),
                    "access log writer is behind (slow disk?); dropping lines"
                );
                self.warned.set(Some(Instant::now()));
                self.dropped.set(0);
            }
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Msg::Lines(batch)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn write_secs(out: &mut Vec<u8>, d: Duration) {
    let ms = d.as_millis();
    let _ = write!(out, "{}.{:03}", ms / 1000, ms % 1000);
}

/// nginx's default log escaping: `"`, `\`, control bytes and bytes from
/// 0x7f up become `\xHH`.
fn escape_nginx(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
    }
}

/// A JSON string of `s`; bytes that are not UTF-8 become `\u00HH`, so the
/// line is always valid JSON.
fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
            }
        }
        for &b in chunk.invalid() {
            let _ = write!(out, "\\u{:04x}", b);
        }
    }
    out.push(b'"');
}

fn json_opt_str(out: &mut Vec<u8>, s: &[u8]) {
    if s.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        json_str(out, s);
    }
}

fn format_json(out: &mut Vec<u8>, e: &Entry<'_>, clock: &Clock) {
    out.extend_from_slice(b"{\"time_iso8601\":");
    json_str(out, clock.iso.as_bytes());
    let _ = write!(out, ",\"remote_addr\":\"{}\",\"request\":", e.client.ip());
    json_opt_str(out, e.request);
    let _ = write!(
        out,
        ",\"status\":{},\"body_bytes_sent\":{},\"http_referer\":",
        e.status, e.body_bytes
    );
    json_opt_str(out, e.referer);
    out.extend_from_slice(b",\"http_user_agent\":");
    json_opt_str(out, e.user_agent);
    out.extend_from_slice(b",\"request_time\":");
    write_secs(out, e.request_time);
    out.extend_from_slice(b",\"upstream_addr\":");
    match e.upstream {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_status\":");
    match e.upstream_status {
        Some(s) => {
            let _ = write!(out, "{s}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_response_time\":");
    match e.upstream_time {
        Some(d) => write_secs(out, d),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"retries\":{},\"request_id\":", e.retries);
    json_opt_str(out, e.request_id);
    out.extend_from_slice(b"}\n");
}

fn format_template(out: &mut Vec<u8>, t: &Template, e: &Entry<'_>, clock: &Clock) {
    let text = |out: &mut Vec<u8>, s: &[u8]| {
        if s.is_empty() {
            out.push(b'-');
        } else {
            escape_nginx(out, s);
        }
    };
    for piece in &t.pieces {
        match piece {
            Piece::Text(s) => out.extend_from_slice(s.as_bytes()),
            Piece::Var(v) => match v {
                Var::RemoteAddr => {
                    let _ = write!(out, "{}", e.client.ip());
                }
                Var::RemoteUser => out.push(b'-'),
                Var::TimeLocal => out.extend_from_slice(clock.local.as_bytes()),
                Var::TimeIso8601 => out.extend_from_slice(clock.iso.as_bytes()),
                Var::Request => text(out, e.request),
                Var::Status => {
                    let _ = write!(out, "{}", e.status);
                }
                Var::BodyBytesSent => {
                    let _ = write!(out, "{}", e.body_bytes);
                }
                Var::HttpReferer => text(out, e.referer),
                Var::HttpUserAgent => text(out, e.user_agent),
                Var::RequestTime => write_secs(out, e.request_time),
                Var::UpstreamAddr => match e.upstream {
                    Some(a) => {
                        let _ = write!(out, "{a}");
                    }
                    None => out.push(b'-'),
                },
                Var::UpstreamStatus => match e.upstream_status {
                    Some(s) => {
                        let _ = write!(out, "{s}");
                    }
                    None => out.push(b'-'),
                },
                Var::UpstreamResponseTime => match e.upstream_time {
                    Some(d) => write_secs(out, d),
                    None => out.push(b'-'),
                },
                Var::RequestId => text(out, e.request_id),
            },
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(request: &'a [u8], referer: &'a [u8], ua: &'a [u8]) -> Entry<'a> {
        Entry {
            client: "127.0.0.1:5000".parse().unwrap(),
            request,
            status: 200,
            body_bytes: 12,
            referer,
            user_agent: ua,
            upstream: Some("127.0.0.1:8081".parse().unwrap()),
            upstream_status: Some(200),
            request_time: Duration::from_micros(1500),
            upstream_time: Some(Duration::from_micros(1200)),
            retries: 1,
            request_id: b"000000000abc00010000000000000002",
        }
    }

    /// A clock showing the epoch in UTC, whatever the host's time zone.
    fn epoch() -> Clock {
        Clock {
            sec: 0,
            local: "01/Jan/1970:00:00:00 +0000".into(),
            iso: "1970-01-01T00:00:00+00:00".into(),
        }
    }

    fn line(t: &Template, e: &Entry<'_>) -> String {
        let mut out = Vec::new();
        format_template(&mut out, t, e, &epoch());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn combined_is_nginx_combined() {
        let e = entry(b"GET /a\"b HTTP/1.0", b"", b"curl/8\x01");
        assert_eq!(
            line(&Template::combined(), &e),
            "127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"GET /a\\x22b HTTP/1.0\" 200 12 \"-\" \"curl/8\\x01\"\n"
        );
    }

    #[test]
    fn time_formats() {
        let (mut l, mut i) = (String::new(), String::new());
        // SAFETY: an all-zero tm is valid; the fields are set below.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        tm.tm_year = 126;
        tm.tm_mon = 11;
        tm.tm_mday = 7;
        tm.tm_hour = 1;
        tm.tm_min = 2;
        tm.tm_sec = 3;
        format_time(&mut l, &mut i, &tm, -(5 * 3600 + 30 * 60));
        assert_eq!(l, "07/Dec/2026:01:02:03 -0530");
        assert_eq!(i, "2026-12-07T01:02:03-05:30");
    }

    #[test]
    fn json_is_valid_json() {
        let e = entry(b"GET /\xff\"x HTTP/1.1", b"http://r/\n", b"");
        let mut out = Vec::new();
        format_json(&mut out, &e, &epoch());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request"], "GET /\u{ff}\"x HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["body_bytes_sent"], 12);
        assert_eq!(v["http_referer"], "http://r/\n");
        assert!(v["http_user_agent"].is_null());
        assert_eq!(v["time_iso8601"], "1970-01-01T00:00:00+00:00");
        assert_eq!(v["upstream_addr"], "127.0.0.1:8081");
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["request_time"], 0.001);
        assert_eq!(v["retries"], 1);
        assert_eq!(v["request_id"], "000000000abc00010000000000000002");
        let mut out = Vec::new();
        let odd = Entry {
            request_id: b"a\"b\\c",
            ..e.clone()
        };
        format_json(&mut out, &odd, &epoch());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], "a\"b\\c", "a kept id is escaped");
        let t = Template::parse("$request_id").unwrap();
        assert_eq!(line(&t, &odd), "a\\x22b\\x5Cc\n");
    }

    #[test]
    fn templates() {
        let t = Template::parse("$status ${request_time}s $upstream_addr$request_id|").unwrap();
        let e = entry(b"GET / HTTP/1.1", b"", b"");
        assert_eq!(
            line(&t, &e),
            "200 0.001s 127.0.0.1:8081000000000abc00010000000000000002|\n"
        );
        let err = Template::parse("$status $bogus").unwrap_err();
        assert!(err.contains("`$bogus`"), "{err}");
        assert!(Template::parse("a $ b").is_err());
        assert!(Template::parse("${status").is_err());
        assert!(Template::parse("a\nb").is_err());
        assert_eq!(Template::combined(), Template::parse(COMBINED).unwrap());
        assert!(!Template::combined().pieces.is_empty());
    }

    #[test]
    fn captures_the_head() {
        let mut c = Captured::default();
        c.capture(b"\r\nGET /x HTTP/1.0\r\nHost: a\r\nuser-AGENT:  ua 1 \r\nReferer: http://r/\r\nReferer: second\r\n\r\n");
        assert_eq!(c.request(), b"GET /x HTTP/1.0");
        assert_eq!(c.user_agent(), b"ua 1");
        assert_eq!(c.referer(), b"http://r/");
        c.capture(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(c.request(), b"GET / HTTP/1.1");
        assert!(c.referer().is_empty() && c.user_agent().is_empty());
        c.capture_line(b"BAD LINE\r\nrest");
        assert_eq!(c.request(), b"BAD LINE");
        c.capture_line(&[b'a'; MAX_LOGGED_LINE * 2]);
        assert_eq!(c.request().len(), MAX_LOGGED_LINE);
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("-"), Ok(Target::Stdout));
        assert_eq!(
            Target::parse("/var/log/a.log"),
            Ok(Target::File("/var/log/a.log".into()))
        );
        assert!(Target::parse("rel.log").is_err());
        assert!(Target::parse("").is_err());
    }

    #[test]
    fn a_stalled_writer_costs_lines_not_memory() {
        let path =
            std::env::temp_dir().join(format!("ekilibri-access-unit-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let target = Target::File(path.clone());
        let writer = Writer::start(target.open().unwrap()).unwrap();
        let log = WorkerLog::new(3, &writer);
        let e = entry(b"GET / HTTP/1.1", b"", b"");
        // As if the writer were MAX_QUEUED_BATCHES behind.
        writer.queued.store(MAX_QUEUED_BATCHES, Ordering::Relaxed);
        log.log(Format::Json, None, &e);
        log.flush();
        writer.flush(Duration::from_secs(5));
        assert_eq!(std::fs::read(&path).unwrap().len(), 0);
        assert!(log.buf.borrow().is_empty(), "the dropped batch is not kept");
        writer.queued.store(0, Ordering::Relaxed);
        log.log(Format::Combined, None, &e);
        log.log(Format::Off, None, &e);
        log.flush();
        writer.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"GET / HTTP/1.1\" 200 12"), "{text}");
        assert_eq!(writer.queued.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_file(&path);
    }
}
