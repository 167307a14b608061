//! Request ids (`X-Request-Id`): making them and holding one per request.
//!
//! A worker makes an id for every request with its [`IdSource`]: 32 hex
//! digits, a per-process prefix (48 bits), the worker (16 bits) and a
//! counter (64 bits), so ids are unique within a run and unlikely to repeat
//! across runs. The id is written into a [`RequestId`], an inline buffer the
//! connection reuses: making an id allocates nothing.
//!
//! An id a client sent is kept only when its peer is a trusted proxy and the
//! value is [acceptable](RequestId::is_acceptable); that decision is the
//! request parser's ([`crate::http::request`]). This module does not know
//! headers, peers or the access log; they read the bytes with
//! [`RequestId::as_bytes`].

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest incoming `X-Request-Id` kept from a trusted peer; a longer one is
/// replaced. Enough for a UUID, a W3C trace id or a chain of a few, small
/// enough that the id costs little per connection and per log line.
pub const MAX_REQUEST_ID: usize = 200;

/// Length of a generated id: 32 hex digits, as nginx's `$request_id`.
pub const GENERATED_LEN: usize = 32;

/// One request's id, held inline (no allocation): a generated one or an
/// acceptable incoming one.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId {
            bytes: [0; MAX_REQUEST_ID],
            len: 0,
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl RequestId {
    /// The id's bytes (empty until one is set).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// True when `value` may be kept as a request id: 1 to
    /// [`MAX_REQUEST_ID`] bytes of visible ASCII (`!` to `~`), so it is safe
    /// in a header, a log line and a JSON string without changing it.
    pub fn is_acceptable(value: &[u8]) -> bool {
        (1..=MAX_REQUEST_ID).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic())
    }

    /// Sets the id to `value` when it [is acceptable](Self::is_acceptable);
    /// returns whether it was.
    pub fn set(&mut self, value: &[u8]) -> bool {
        if !Self::is_acceptable(value) {
            return false;
        }
        self.bytes[..value.len()].copy_from_slice(value);
        // At most MAX_REQUEST_ID (200), checked above: fits a u8.
        self.len = value.len() as u8;
        true
    }
}

/// A worker's maker of request ids: a per-process prefix, the worker, a
/// counter. Core-local (a `Cell`).
#[derive(Debug)]
pub struct IdSource {
    prefix: u64,
    worker: u16,
    next: Cell<u64>,
}

impl IdSource {
    /// The source of worker `worker`, with a prefix drawn for this process.
    pub fn new(worker: usize) -> Self {
        Self::with_prefix(process_prefix(), worker)
    }

    /// A source with a fixed prefix (tests and benchmarks).
    pub fn with_prefix(prefix: u64, worker: usize) -> Self {
        IdSource {
            prefix: prefix & 0xffff_ffff_ffff,
            worker: worker as u16,
            next: Cell::new(0),
        }
    }

    /// Writes the next id into `id` (32 lowercase hex digits).
    pub fn next_into(&self, id: &mut RequestId) {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let out = &mut id.bytes[..GENERATED_LEN];
        push_hex(&mut out[..12], self.prefix);
        push_hex(&mut out[12..16], u64::from(self.worker));
        push_hex(&mut out[16..], n);
        id.len = GENERATED_LEN as u8;
    }
}

/// Writes the low `out.len()` nibbles of `v` into `out`, most significant
/// first.
fn push_hex(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 15) as usize];
        v >>= 4;
    }
}

/// 48 bits that differ between runs (start time and pid), so request ids of
/// two runs do not collide in one log.
fn process_prefix() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    // splitmix64 finaliser: spreads the bits.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) & 0xffff_ffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_and_count_up() {
        let s = IdSource::with_prefix(0xabc, 1);
        let mut id = RequestId::default();
        assert!(id.as_bytes().is_empty());
        s.next_into(&mut id);
        assert_eq!(id.as_bytes(), b"000000000abc00010000000000000000");
        s.next_into(&mut id);
        assert_eq!(id.as_bytes(), b"000000000abc00010000000000000001");
        let other = IdSource::new(7);
        other.next_into(&mut id);
        assert_eq!(id.as_bytes().len(), GENERATED_LEN);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(&id.as_bytes()[12..16], b"0007");
    }

    #[test]
    fn only_bounded_visible_ascii_is_acceptable() {
        let mut id = RequestId::default();
        assert!(id.set(b"abc-123_XYZ:{}\"\\"));
        assert_eq!(id.as_bytes(), b"abc-123_XYZ:{}\"\\");
        assert!(id.set(&[b'a'; MAX_REQUEST_ID]));
        assert_eq!(id.as_bytes().len(), MAX_REQUEST_ID);
        for bad in [
            &b""[..],
            b"a b",
            b"a\tb",
            b"caf\xc3\xa9",
            b"a\x7f",
            &[b'a'; MAX_REQUEST_ID + 1],
        ] {
            assert!(!RequestId::is_acceptable(bad), "{bad:?}");
            assert!(!id.set(bad), "{bad:?}");
        }
        assert_eq!(
            id.as_bytes().len(),
            MAX_REQUEST_ID,
            "a refused value changes nothing"
        );
    }
}
