//! The access log: one line per request, written off the request path.
//!
//! Off by default (`access_log = "off"`). When on, a worker formats each line
//! into a core-local buffer; a flush task hands the batch to a dedicated
//! logger thread every [`FLUSH_EVERY`] (one cross-core message per batch, not
//! per request), and that thread emits each line through `tracing` with the
//! target `access`, so `RUST_LOG` filters and routes it like any other log.

use std::cell::RefCell;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a worker hands its buffered lines to the logger thread.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A worker flushes early when its buffer grows past this.
const FLUSH_BYTES: usize = 64 * 1024;

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No access log.
    Off,
    /// Apache/nginx "combined"-like text.
    Combined,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// Parses the `access_log` config value.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "off" | "" => Some(Format::Off),
            "combined" => Some(Format::Combined),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Client address.
    pub client: SocketAddr,
    /// Method token.
    pub method: &'a str,
    /// Request target.
    pub path: &'a str,
    /// Status sent (499: client went away).
    pub status: u16,
    /// Bytes sent to the client.
    pub bytes: u64,
    /// The backend that answered, if any.
    pub upstream: Option<&'a str>,
    /// Time from a complete head to the end of the response.
    pub duration: Duration,
    /// Retries made.
    pub retries: u32,
}

/// Starts the logger thread; returns the sender workers hand batches to.
pub fn start() -> Sender<Vec<u8>> {
    let (tx, rx) = channel::<Vec<u8>>();
    let _ = std::thread::Builder::new()
        .name("ekilibri-access".into())
        .spawn(move || {
            while let Ok(batch) = rx.recv() {
                for line in batch.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    tracing::info!(target: "access", "{}", String::from_utf8_lossy(line));
                }
            }
        });
    tx
}

/// A worker's buffer of formatted lines.
#[derive(Debug)]
pub struct WorkerLog {
    format: Format,
    buf: RefCell<String>,
    tx: Sender<Vec<u8>>,
}

impl WorkerLog {
    /// A buffer feeding `tx` in `format`.
    pub fn new(format: Format, tx: Sender<Vec<u8>>) -> Self {
        WorkerLog {
            format,
            buf: RefCell::new(String::with_capacity(FLUSH_BYTES)),
            tx,
        }
    }

    /// Formats one line into the buffer.
    pub fn log(&self, e: &Entry<'_>) {
        let mut b = self.buf.borrow_mut();
        format_entry(&mut b, self.format, e, SystemTime::now());
        let full = b.len() >= FLUSH_BYTES;
        drop(b);
        if full {
            self.flush();
        }
    }

    /// Hands the buffered lines to the logger thread.
    pub fn flush(&self) {
        let mut b = self.buf.borrow_mut();
        if b.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut *b, String::with_capacity(FLUSH_BYTES));
        let _ = self.tx.send(batch.into_bytes());
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends one formatted line (with its newline) to `out`.
pub fn format_entry(out: &mut String, format: Format, e: &Entry<'_>, now: SystemTime) {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    match format {
        Format::Off => {}
        Format::Combined => {
            let _ = writeln!(
                out,
                "{} - - [{secs:.3}] \"{} {} HTTP/1.1\" {} {} upstream={} duration_ms={:.3} retries={}",
                e.client.ip(),
                e.method,
                e.path.escape_debug(),
                e.status,
                e.bytes,
                e.upstream.unwrap_or("-"),
                e.duration.as_secs_f64() * 1000.0,
                e.retries
            );
        }
        Format::Json => {
            let _ = write!(out, "{{\"time\":{secs:.3},\"client\":");
            json_str(out, &e.client.ip().to_string());
            out.push_str(",\"method\":");
            json_str(out, e.method);
            out.push_str(",\"path\":");
            json_str(out, e.path);
            let _ = write!(
                out,
                ",\"status\":{},\"bytes\":{},\"upstream\":",
                e.status, e.bytes
            );
            match e.upstream {
                Some(u) => json_str(out, u),
                None => out.push_str("null"),
            }
            let _ = writeln!(
                out,
                ",\"duration_ms\":{:.3},\"retries\":{}}}",
                e.duration.as_secs_f64() * 1000.0,
                e.retries
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let e = Entry {
            client: "127.0.0.1:5000".parse().unwrap(),
            method: "GET",
            path: "/a\"b",
            status: 200,
            bytes: 12,
            upstream: Some("127.0.0.1:8081"),
            duration: Duration::from_micros(1500),
            retries: 1,
        };
        let mut s = String::new();
        format_entry(
            &mut s,
            Format::Json,
            &e,
            UNIX_EPOCH + Duration::from_secs(10),
        );
        let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream"], "127.0.0.1:8081");
        assert_eq!(v["retries"], 1);
        let mut s = String::new();
        format_entry(&mut s, Format::Combined, &e, UNIX_EPOCH);
        assert!(
            s.starts_with(
                "127.0.0.1 - - [0.000] \"GET /a\\\"b HTTP/1.1\" 200 12 upstream=127.0.0.1:8081"
            ),
            "{s}"
        );
    }
}
