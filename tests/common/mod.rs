//! Shared helpers for the integration tests: process guards for the real
//! `ekilibri` and `ekilibri-backend` binaries, temporary config files and a
//! minimal raw HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Everything here uses only `std` (and serde_json for admin API answers).
//! Every spawned process is owned by a [`ProcGuard`] that kills it on drop
//! (also when the test panics), every socket has read and write timeouts,
//! and every wait polls against a deadline.

#![allow(dead_code)]

pub mod etcd;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BALANCER_BIN: &str = env!("CARGO_BIN_EXE_ekilibri");
pub const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_ekilibri-backend");

/// How long a process gets to print its `listening on` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout on every client socket: a hung proxy fails the test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Owns a child process and kills it when dropped.
pub struct ProcGuard {
    child: Child,
    name: String,
    exited: Option<ExitStatus>,
}

impl ProcGuard {
    pub fn new(name: &str, child: Child) -> Self {
        ProcGuard {
            child,
            name: name.to_string(),
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Non-blocking: the exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Polls until the process exits or `timeout` elapses.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal with the `kill` utility (no libc in the tests).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Collected output lines of a child stream (for diagnostics and checks).
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub fn joined(&self) -> String {
        self.snapshot().join("\n")
    }
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}

/// Removes ANSI escape sequences (tracing may color its output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters then a final byte in 0x40..=0x7e.
                for c2 in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c2) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Finds `listening on ... 127.0.0.1:PORT` in a log line and returns PORT.
pub fn parse_listening_port(line: &str) -> Option<u16> {
    let line = strip_ansi(line);
    let idx = line.find("listening on")?;
    let rest = &line[idx..];
    let addr_idx = rest.find("127.0.0.1:")?;
    let digits: String = rest[addr_idx + "127.0.0.1:".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let port: u16 = digits.parse().ok()?;
    if port == 0 { None } else { Some(port) }
}

/// Reads `stream` line by line in a thread, stores every line in `lines` and
/// sends the first `listening on` port through the returned channel.
fn watch_stream<R: Read + Send + 'static>(stream: R, lines: Lines) -> mpsc::Receiver<u16> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut sent = false;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if !sent && let Some(port) = parse_listening_port(&line) {
                let _ = tx.send(port);
                sent = true;
            }
            lines.push(line);
        }
    });
    rx
}

fn drain_stream<R: Read + Send + 'static>(stream: R, lines: Lines) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => lines.push(String::from_utf8_lossy(&buf).trim_end().to_string()),
            }
        }
    })
}

/// Waits for the port from a watcher, failing early if the child exits.
fn wait_ready(name: &str, guard: &mut ProcGuard, rx: &mpsc::Receiver<u16>, log: &Lines) -> u16 {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(port) => return port,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The stream closed: give the process a moment to be reaped.
                let status = guard.wait_timeout(Duration::from_secs(2));
                panic!(
                    "{name} closed its output before printing `listening on` (exit: {status:?}); output:\n{}",
                    log.joined()
                );
            }
        }
        if let Some(status) = guard.try_wait() {
            // Let the reader thread collect what is left.
            thread::sleep(Duration::from_millis(50));
            if let Ok(port) = rx.try_recv() {
                return port;
            }
            panic!(
                "{name} exited ({status}) before printing `listening on`; output:\n{}",
                log.joined()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{name} did not print `listening on` within {READY_TIMEOUT:?}; output:\n{}",
                log.joined()
            );
        }
    }
}

/// A running `ekilibri-backend`.
pub struct Backend {
    pub port: u16,
    pub guard: ProcGuard,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Backend {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts `ekilibri-backend -p 0` and waits for its `listening on` line.
pub fn spawn_backend() -> Backend {
    let child = Command::new(BACKEND_BIN)
        .args(["-p", "0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ekilibri-backend");
    let mut guard = ProcGuard::new("ekilibri-backend", child);
    let stdout_lines = Lines::default();
    let stderr_lines = Lines::default();
    let rx = watch_stream(guard.child.stdout.take().unwrap(), stdout_lines.clone());
    drain_stream(guard.child.stderr.take().unwrap(), stderr_lines.clone());
    let port = wait_ready("ekilibri-backend", &mut guard, &rx, &stdout_lines);
    Backend {
        port,
        guard,
        stdout: stdout_lines,
        stderr: stderr_lines,
    }
}

pub fn spawn_backends(n: usize) -> Vec<Backend> {
    (0..n).map(|_| spawn_backend()).collect()
}

/// A temporary file removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique path in the temp dir (not created).
pub fn unique_temp_path(suffix: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "ekilibri-test-{}-{}-{}{}",
        std::process::id(),
        n,
        nanos,
        suffix
    ))
}

pub fn write_temp_file(contents: &str, suffix: &str) -> TempFile {
    let path = unique_temp_path(suffix);
    std::fs::write(&path, contents).expect("write temp file");
    TempFile { path }
}

/// Builder for an ekilibri TOML config. Values are raw TOML literals; setting
/// a key twice replaces it (TOML forbids duplicate keys).
#[derive(Clone)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// A complete config (all original Ekilibri keys plus `listen` on port 0)
    /// with the given backend ports as plain string servers.
    pub fn new(ports: &[u16]) -> Self {
        let mut c = Config {
            entries: Vec::new(),
        };
        c.set("listen", "\"127.0.0.1:0\"");
        c.set("admin_listen", "\"127.0.0.1:0\"");
        c.set("servers", &servers_list(ports));
        c.set("strategy", "\"RoundRobin\"");
        c.set("max_fails", "5");
        c.set("fail_window", "10");
        c.set("connection_timeout", "1000");
        c.set("write_timeout", "5000");
        c.set("read_timeout", "5000");
        c.set("health_check_path", "\"/health\"");
        c.set("pool_size", "8");
        c
    }

    pub fn for_backends(backends: &[Backend]) -> Self {
        let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
        Self::new(&ports)
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        if let Some(e) = self.entries.iter_mut().find(|(k, _)| k == key) {
            e.1 = value.to_string();
        } else {
            self.entries.push((key.to_string(), value.to_string()));
        }
        self
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.set(key, value);
        self
    }

    pub fn strategy(self, name: &str) -> Self {
        self.with("strategy", &format!("\"{name}\""))
    }

    pub fn remove(mut self, key: &str) -> Self {
        self.entries.retain(|(k, _)| k != key);
        self
    }

    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.entries {
            writeln!(s, "{k} = {v}").unwrap();
        }
        s
    }
}

/// `["127.0.0.1:P1", "127.0.0.1:P2"]`
pub fn servers_list(ports: &[u16]) -> String {
    let items: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// A running `ekilibri` balancer.
pub struct Balancer {
    pub port: u16,
    pub guard: ProcGuard,
    pub stderr: Lines,
    pub stdout: Lines,
    pub config: TempFile,
}

impl Balancer {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn connect(&self) -> Conn {
        Conn::connect(self.port)
    }
}

/// Starts `ekilibri -f <temp config> <extra_args>` with RUST_LOG=info and
/// waits for the `listening on 127.0.0.1:PORT` line on stderr.
pub fn spawn_balancer(config: &Config, extra_args: &[&str]) -> Balancer {
    spawn_balancer_toml(&config.to_toml(), extra_args)
}

pub fn spawn_balancer_toml(toml: &str, extra_args: &[&str]) -> Balancer {
    spawn_balancer_with(toml, extra_args, &[], &[])
}

/// Like [`spawn_balancer_toml`], with extra environment variables and a
/// command prefix (e.g. `["prlimit", "--nofile=1024:1024"]`).
pub fn spawn_balancer_with(
    toml: &str,
    extra_args: &[&str],
    env: &[(&str, &str)],
    prefix: &[&str],
) -> Balancer {
    let file = write_temp_file(toml, ".toml");
    let mut cmd = balancer_command(prefix);
    cmd.arg("-f")
        .arg(&file.path)
        .args(extra_args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn ekilibri");
    let mut guard = ProcGuard::new("ekilibri", child);
    let stderr_lines = Lines::default();
    let stdout_lines = Lines::default();
    let rx = watch_stream(guard.child.stderr.take().unwrap(), stderr_lines.clone());
    drain_stream(guard.child.stdout.take().unwrap(), stdout_lines.clone());
    let port = wait_ready("ekilibri", &mut guard, &rx, &stderr_lines);
    Balancer {
        port,
        guard,
        stderr: stderr_lines,
        stdout: stdout_lines,
        config: file,
    }
}

/// A command that runs the balancer binary, behind `prefix` when one is
/// given (e.g. `["prlimit", "--nofile=256:256"]`).
pub fn balancer_command(prefix: &[&str]) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BALANCER_BIN);
            c
        }
        None => Command::new(BALANCER_BIN),
    }
}

/// Runs `ekilibri` with `args` to completion (killed after `timeout`).
pub struct RunResult {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_balancer_to_exit(args: &[&std::ffi::OsStr], timeout: Duration) -> RunResult {
    let child = Command::new(BALANCER_BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ekilibri");
    let mut guard = ProcGuard::new("ekilibri", child);
    let out = Lines::default();
    let err = Lines::default();
    let t1 = drain_stream(guard.child.stdout.take().unwrap(), out.clone());
    let t2 = drain_stream(guard.child.stderr.take().unwrap(), err.clone());
    let status = match guard.wait_timeout(timeout) {
        Some(s) => s,
        None => panic!(
            "ekilibri {:?} did not exit within {timeout:?}; stderr:\n{}",
            args,
            err.joined()
        ),
    };
    // The pipes close when the process exits: collect everything.
    let _ = t1.join();
    let _ = t2.join();
    RunResult {
        status,
        stdout: out.joined(),
        stderr: strip_ansi(&err.joined()),
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// The raw head bytes (status line + headers + blank line).
    pub raw_head: Vec<u8>,
    pub chunked: bool,
}

impl Response {
    /// First header value with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `X-Backend-Port` header as a number.
    pub fn backend_port(&self) -> u16 {
        self.header("X-Backend-Port")
            .unwrap_or_else(|| panic!("no X-Backend-Port in {:?}", self.headers))
            .trim()
            .parse()
            .expect("X-Backend-Port is a number")
    }
    pub fn content_length(&self) -> Option<usize> {
        self.header("Content-Length").map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad Content-Length {v:?}"))
        })
    }
    /// Asserts this is a complete HTTP/1.1 response with a Content-Length
    /// that matches the body (how error responses must look).
    pub fn assert_complete_with_length(&self) {
        assert_eq!(self.version, "HTTP/1.1", "response version: {self:?}");
        let cl = self
            .content_length()
            .unwrap_or_else(|| panic!("response has no Content-Length: {self:?}"));
        assert_eq!(cl, self.body.len(), "Content-Length vs body: {self:?}");
    }
}

/// What happened when waiting for the peer to close.
#[derive(Debug, PartialEq, Eq)]
pub enum CloseState {
    /// EOF (or reset) seen; carries any bytes that arrived before it.
    Closed(Vec<u8>),
    /// Still open at the deadline; carries any bytes that arrived.
    Open(Vec<u8>),
}

/// A client connection with its own read buffer, so pipelined responses and
/// tunnelled bytes after a `101` are never lost.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    pub fn connect(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        Conn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
            start: 0,
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream
            .write_all(data)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", data.len()));
    }

    pub fn try_send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)
    }

    /// The client side's own address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Writes `data` from another thread (for big uploads, so a proxy that
    /// answers early can never deadlock the test).
    pub fn send_in_background(&self, data: Vec<u8>) -> JoinHandle<io::Result<()>> {
        let mut s = self.stream.try_clone().expect("clone stream");
        thread::spawn(move || s.write_all(&data))
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 1 << 16 && self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn fill_or_panic(&mut self, what: &str) {
        match self.fill() {
            Ok(0) => panic!(
                "connection closed while reading {what}; buffered: {:?}",
                String::from_utf8_lossy(self.available())
            ),
            Ok(_) => {}
            Err(e) => panic!(
                "error while reading {what}: {e}; buffered: {:?}",
                String::from_utf8_lossy(self.available())
            ),
        }
    }

    /// Reads through the next `\r\n\r\n`, returning the head including it.
    pub fn read_head(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = find(self.available(), b"\r\n\r\n") {
                let head = self.available()[..i + 4].to_vec();
                self.consume(i + 4);
                return head;
            }
            self.fill_or_panic("a response head");
        }
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    pub fn read_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = find(self.available(), b"\r\n") {
                let line = self.available()[..i].to_vec();
                self.consume(i + 2);
                return line;
            }
            self.fill_or_panic("a line");
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_n(&mut self, n: usize) -> Vec<u8> {
        while self.available().len() < n {
            let what = format!("{n} body bytes (have {})", self.available().len());
            self.fill_or_panic(&what);
        }
        let out = self.available()[..n].to_vec();
        self.consume(n);
        out
    }

    /// Reads until EOF (a reset counts as EOF).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("error while reading until close: {e}"),
            }
        }
        let out = self.available().to_vec();
        self.consume(out.len());
        out
    }

    /// Waits up to `timeout` for the peer to close the connection.
    pub fn wait_closed(&mut self, timeout: Duration) -> CloseState {
        let deadline = Instant::now() + timeout;
        let result = loop {
            let now = Instant::now();
            if now >= deadline {
                break CloseState::Open(self.available().to_vec());
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.fill() {
                Ok(0) => break CloseState::Closed(self.available().to_vec()),
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    break CloseState::Open(self.available().to_vec());
                }
                Err(_) => break CloseState::Closed(self.available().to_vec()),
            }
        };
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let n = self.available().len();
        self.consume(n);
        result
    }

    /// Reads one response to a request with `method` (HEAD has no body).
    pub fn read_response_for(&mut self, method: &str) -> Response {
        let raw_head = self.read_head();
        let (version, status, reason, headers) = parse_head(&raw_head);
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
            raw_head,
            chunked: false,
        };
        if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            return resp;
        }
        let te_chunked = resp
            .header_all("Transfer-Encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        if te_chunked {
            resp.chunked = true;
            let (body, trailers) = self.read_chunked_body();
            resp.body = body;
            resp.trailers = trailers;
        } else if let Some(cl) = resp.content_length() {
            resp.body = self.read_exact_n(cl);
        } else {
            resp.body = self.read_to_close();
        }
        resp
    }

    /// Reads one response to a non-HEAD request.
    pub fn read_response(&mut self) -> Response {
        self.read_response_for("GET")
    }

    /// Decodes a chunked body from the stream: (body, trailers).
    pub fn read_chunked_body(&mut self) -> (Vec<u8>, Vec<(String, String)>) {
        let mut body = Vec::new();
        loop {
            let line = self.read_line();
            let size = parse_chunk_size(&line);
            if size == 0 {
                break;
            }
            body.extend_from_slice(&self.read_exact_n(size));
            let crlf = self.read_exact_n(2);
            assert_eq!(crlf, b"\r\n", "chunk not followed by CRLF");
        }
        let mut trailers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            trailers.push(parse_header_line(&line));
        }
        (body, trailers)
    }

    /// Sends a request and reads its response. `headers` are written as
    /// given after `Host: 127.0.0.1`; a `Content-Length` is added when the
    /// body is not empty and no framing header was given.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let req = build_request(method, path, headers, body);
        self.send(&req);
        self.read_response_for(method)
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }
}

/// Builds a request: request line, `Host: 127.0.0.1` (unless given), the
/// headers, a Content-Length when needed, blank line and body.
pub fn build_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("Host") {
        head.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() && !has("Content-Length") && !has("Transfer-Encoding") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One request on a fresh connection (keep-alive left to the server).
pub fn one_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut c = Conn::connect(port);
    c.request(method, path, headers, body)
}

/// `GET path` on a fresh connection.
/// The value of an unlabelled or fully labelled sample (`name{labels}` as
/// exposed) on the admin API's `/metrics`.
pub fn metric(admin: u16, sample: &str) -> Option<f64> {
    let r = http_get(admin, "/metrics");
    assert_eq!(r.status, 200);
    r.body_str()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

pub fn http_get(port: u16, path: &str) -> Response {
    one_request(port, "GET", path, &[], b"")
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_chunk_size(line: &[u8]) -> usize {
    let s = String::from_utf8_lossy(line);
    let hex = s.split(';').next().unwrap().trim();
    usize::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad chunk size line {s:?}"))
}

fn parse_header_line(line: &[u8]) -> (String, String) {
    let s = String::from_utf8_lossy(line);
    match s.split_once(':') {
        Some((k, v)) => (k.to_string(), v.trim().to_string()),
        None => panic!("bad header line {s:?}"),
    }
}

/// Parses a response head into (version, status, reason, headers).
pub fn parse_head(raw: &[u8]) -> (String, u16, String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let reason = parts.next().unwrap_or("").to_string();
    assert!(
        version.starts_with("HTTP/1."),
        "bad status line {status_line:?}"
    );
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        headers.push(parse_header_line(line.as_bytes()));
    }
    (version, status, reason, headers)
}

/// Decodes a complete chunked body held in memory: (body, trailers, rest).
pub fn decode_chunked(data: &[u8]) -> (Vec<u8>, Vec<(String, String)>, Vec<u8>) {
    let mut pos = 0;
    let mut body = Vec::new();
    let line_at = |pos: usize| -> (Vec<u8>, usize) {
        let i = find(&data[pos..], b"\r\n").expect("incomplete chunked data");
        (data[pos..pos + i].to_vec(), pos + i + 2)
    };
    loop {
        let (line, next) = line_at(pos);
        pos = next;
        let size = parse_chunk_size(&line);
        if size == 0 {
            break;
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size;
        assert_eq!(&data[pos..pos + 2], b"\r\n", "chunk not followed by CRLF");
        pos += 2;
    }
    let mut trailers = Vec::new();
    loop {
        let (line, next) = line_at(pos);
        pos = next;
        if line.is_empty() {
            break;
        }
        trailers.push(parse_header_line(&line));
    }
    (body, trailers, data[pos..].to_vec())
}

/// Encodes `body` as chunks of the given sizes (cycled), with a last chunk.
pub fn encode_chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 8 + 64);
    let mut pos = 0;
    let mut i = 0;
    while pos < body.len() {
        let n = sizes[i % sizes.len()].min(body.len() - pos);
        i += 1;
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[pos..pos + n]);
        out.extend_from_slice(b"\r\n");
        pos += n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The `/bytes/N` pattern: byte i = b'a' + (i % 26).
pub fn bytes_pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Deterministic pseudo-random bytes (all 256 values occur).
pub fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// Compares two byte strings, reporting the first difference briefly.
#[track_caller]
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first_diff = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: got {} bytes, expected {}; first difference at byte {first_diff}",
        actual.len(),
        expected.len()
    );
}

/// Reads `/stats` of a backend directly: (connections, requests).
pub fn backend_stats(port: u16) -> (u64, u64) {
    let resp = one_request(port, "GET", "/stats", &[("Connection", "close")], b"");
    assert_eq!(resp.status, 200, "backend /stats: {resp:?}");
    let text = resp.body_str();
    let mut conns = None;
    let mut reqs = None;
    for part in text.split_whitespace() {
        if let Some(v) = part.strip_prefix("connections=") {
            conns = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("requests=") {
            reqs = v.parse().ok();
        }
    }
    (
        conns.unwrap_or_else(|| panic!("bad /stats body {text:?}")),
        reqs.unwrap_or_else(|| panic!("bad /stats body {text:?}")),
    )
}

/// The `backend PORT` body of `/` as a port number.
pub fn root_body_port(resp: &Response) -> u16 {
    let body = resp.body_str();
    let port = body
        .trim()
        .strip_prefix("backend ")
        .unwrap_or_else(|| panic!("unexpected `/` body {body:?} (status {})", resp.status));
    port.parse().expect("port in `/` body")
}

/// Counts occurrences per key.
pub fn count<T: std::hash::Hash + Eq + Copy>(items: &[T]) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for &i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// A port on 127.0.0.1 where nothing listens (bound, read, dropped).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// Polls `f` every 10 ms until it returns Some or `timeout` elapses.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback listener that hands every accepted connection (blocking,
/// with the connection's sequence number) to `serve` on a thread of its
/// own, until dropped: the accept loop every fake backend and origin of the
/// tests is built on. Handlers get the server's stop flag, set on drop.
pub struct ThreadedServer {
    pub port: u16,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Set when the server is dropped (long-running handlers may watch it).
    pub stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl ThreadedServer {
    pub fn start(
        serve: impl Fn(TcpStream, usize, &AtomicBool) + Send + Sync + 'static,
    ) -> ThreadedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let serve = Arc::new(serve);
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let id = accepted2.fetch_add(1, Ordering::SeqCst);
                        let _ = s.set_nonblocking(false);
                        let (serve, stop3) = (serve.clone(), stop2.clone());
                        thread::spawn(move || serve(s, id, &stop3));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        ThreadedServer {
            port,
            accepted,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for ThreadedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Reads from `s` through the end of a request head; false on EOF or error.
pub fn read_request_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 4096];
    while find(buf, b"\r\n\r\n").is_none() {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    true
}

/// A fake backend: for every accepted connection it reads until the end of
/// a request head (or EOF) and then writes `reply` and closes.
pub struct FakeBackend {
    pub port: u16,
    pub accepted: Arc<AtomicUsize>,
    _server: ThreadedServer,
}

impl FakeBackend {
    pub fn start(reply: &'static [u8]) -> FakeBackend {
        let server = ThreadedServer::start(move |mut s, _, _| {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            read_request_head(&mut s, &mut Vec::new());
            let _ = s.write_all(reply);
            let _ = s.shutdown(Shutdown::Both);
        });
        FakeBackend {
            port: server.port,
            accepted: server.accepted.clone(),
            _server: server,
        }
    }
}

/// True if nothing accepts connections on the port any more.
pub fn connection_refused(port: u16) -> bool {
    match TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    ) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A transparent TCP relay in front of a real backend that counts how many
/// times `pattern` has passed towards the backend. Lets a test know for sure
/// that the balancer has forwarded a request (e.g. a `/sleep`) before it
/// acts, without guessing with sleeps. Stops accepting when dropped.
pub struct Tap {
    pub port: u16,
    pub backend_port: u16,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Tap {
    pub fn start(backend_port: u16, pattern: &'static [u8]) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop2, hits2) = (stop.clone(), hits.clone());
        let handle = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(("127.0.0.1", backend_port)) else {
                            continue; // dropping `down` closes it
                        };
                        let _ = up.set_nodelay(true);
                        let _ = down.set_nodelay(true);
                        let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                        let hits3 = hits2.clone();
                        thread::spawn(move || relay(down, up, Some((pattern, hits3))));
                        thread::spawn(move || relay(up2, down2, None));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        Tap {
            port,
            backend_port,
            hits,
            stop,
            handle: Some(handle),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until the pattern has been seen more than `before` times.
    pub fn wait_hit_after(&self, before: usize, timeout: Duration) -> bool {
        poll_until(timeout, || (self.hits() > before).then_some(())).is_some()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Copies `from` to `to` until EOF/error, then half-closes `to`. Counts
/// occurrences of the pattern (also across read boundaries).
fn relay(mut from: TcpStream, mut to: TcpStream, watch: Option<(&[u8], Arc<AtomicUsize>)>) {
    let mut tmp = vec![0u8; 64 * 1024];
    let mut window: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((pattern, hits)) = &watch {
            window.extend_from_slice(&tmp[..n]);
            let mut pos = 0;
            while let Some(i) = find(&window[pos..], pattern) {
                hits.fetch_add(1, Ordering::SeqCst);
                pos += i + pattern.len();
            }
            let keep = pattern.len().saturating_sub(1);
            let cut = pos.max(window.len().saturating_sub(keep));
            window.drain(..cut);
        }
        if to.write_all(&tmp[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// Result of a request that must not panic: (status, X-Backend-Port).
pub type Outcome = Result<(u16, Option<u16>), String>;

/// One request with `Connection: close` on a fresh connection, reporting
/// errors instead of panicking (for background traffic): the status and
/// the backend that answered, or what went wrong (including a body that
/// does not match its Content-Length).
pub fn try_request(port: u16, method: &str, path: &str) -> Outcome {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(8)));
    s.write_all(&build_request(
        method,
        path,
        &[("Connection", "close")],
        b"",
    ))
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        return Err(format!(
            "read: {e} after {:?}",
            String::from_utf8_lossy(&raw)
        ));
    }
    let end = find(&raw, b"\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut backend, mut length) = (None, None);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("X-Backend-Port") {
                backend = v.trim().parse().ok();
            } else if k.eq_ignore_ascii_case("Content-Length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let body_len = raw.len() - end - 4;
    if length.is_some_and(|n| n != body_len) {
        return Err(format!(
            "Content-Length {length:?} but {body_len} body bytes"
        ));
    }
    Ok((status, backend))
}

/// Polls the balancer's stderr for the admin API line and returns its port.
pub fn admin_port(lb: &Balancer) -> u16 {
    const PREFIX: &str = "http://127.0.0.1:";
    poll_until(READY_TIMEOUT, || {
        lb.stderr.snapshot().iter().find_map(|line| {
            let line = strip_ansi(line);
            let rest = &line[line.find("admin API")?..];
            let rest = &rest[rest.find(PREFIX)? + PREFIX.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u16>().ok().filter(|&p| p != 0)
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no `admin API ... at http://127.0.0.1:PORT/` line on stderr:\n{}",
            lb.stderr.joined()
        )
    })
}

/// The JSON body of an admin response (checks the content type).
#[track_caller]
pub fn json_of(r: &Response) -> serde_json::Value {
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json"),
        "admin response content type: {r:?}"
    );
    r.assert_complete_with_length();
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("admin body is not JSON ({e}): {:?}", r.body_str()))
}

/// The pid a binary upgrade (SIGUSR2) started, from the old process's log
/// line `upgrade: the new process serves ... new_pid=N`.
pub fn upgraded_pid(lines: &Lines) -> Option<u32> {
    lines.snapshot().iter().find_map(|l| {
        let l = strip_ansi(l);
        let rest = &l[l.find("new_pid=")? + "new_pid=".len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}
