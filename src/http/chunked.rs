//! A strict, streaming decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! httparse's chunk-size parser accepts inputs a proxy must refuse (empty
//! sizes, bare LF, LF inside extensions), so the balancer decodes chunked
//! bodies itself and never passes them through byte for byte: the output is
//! either the same body re-encoded canonically (sizes in lower-case hex, no
//! extensions, filtered trailers) or the decoded payload for HTTP/1.0 peers.
//!
//! States: `Size` -> (`Data` -> `DataEnd` -> `Size`)* -> `Trailers` -> `Done`.

use super::{has_bare_lf, is_hop_by_hop};

/// Longest chunk-size line (with extensions) accepted.
pub const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// What the decoder writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Canonical chunked coding, trailers filtered.
    Rechunk,
    /// The payload only.
    Decode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Streaming chunked decoder; feed it with [`ChunkedDecoder::decode`].
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    mode: Mode,
    trailer_bytes: usize,
    /// Payload bytes seen so far.
    pub payload: u64,
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new(mode: Mode) -> Self {
        ChunkedDecoder {
            state: State::Size,
            mode,
            trailer_bytes: 0,
            payload: 0,
        }
    }

    /// True once the last chunk and the trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes still expected in the current chunk (0 between chunks).
    pub fn data_remaining(&self) -> u64 {
        match self.state {
            State::Data(n) => n,
            _ => 0,
        }
    }

    /// Decodes as much of `input` as it can, appending output to `out`.
    /// Returns how many input bytes were consumed; fewer than `input.len()`
    /// means more input is needed (or the body ended: see [`Self::is_done`]).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, &'static str> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Size => {
                    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > MAX_SIZE_LINE {
                            return Err("chunk size line too long");
                        }
                        return Ok(pos);
                    };
                    if lf + 1 > MAX_SIZE_LINE {
                        return Err("chunk size line too long");
                    }
                    let size = parse_size_line(&rest[..lf + 1])?;
                    pos += lf + 1;
                    if size == 0 {
                        self.state = State::Trailers;
                        if self.mode == Mode::Rechunk {
                            out.extend_from_slice(b"0\r\n");
                        }
                    } else {
                        if self.mode == Mode::Rechunk {
                            push_hex(out, size);
                            out.extend_from_slice(b"\r\n");
                        }
                        self.state = State::Data(size);
                    }
                }
                State::Data(n) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = (n.min(rest.len() as u64)) as usize;
                    out.extend_from_slice(&rest[..take]);
                    pos += take;
                    self.payload += take as u64;
                    self.state = if take as u64 == n {
                        State::DataEnd
                    } else {
                        State::Data(n - take as u64)
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err("chunk data longer than its size");
                        }
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("chunk data longer than its size");
                    }
                    if self.mode == Mode::Rechunk {
                        out.extend_from_slice(b"\r\n");
                    }
                    pos += 2;
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                        if self.trailer_bytes + rest.len() > MAX_TRAILERS {
                            return Err("trailer section too large");
                        }
                        return Ok(pos);
                    };
                    let line = &rest[..lf + 1];
                    self.trailer_bytes += line.len();
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err("trailer section too large");
                    }
                    if has_bare_lf(line) {
                        return Err("bare LF in chunked trailer");
                    }
                    pos += lf + 1;
                    if line == b"\r\n" {
                        if self.mode == Mode::Rechunk {
                            out.extend_from_slice(b"\r\n");
                        }
                        self.state = State::Done;
                    } else {
                        let name = check_trailer_line(line)?;
                        if self.mode == Mode::Rechunk && trailer_allowed(name) {
                            out.extend_from_slice(line);
                        }
                    }
                }
            }
        }
    }
}

/// Parses "HEX[;ext...]\r\n" strictly.
fn parse_size_line(line: &[u8]) -> Result<u64, &'static str> {
    let body = line
        .strip_suffix(b"\r\n")
        .ok_or("chunk size line must end with CRLF")?;
    let digits = body.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("missing chunk size");
    }
    if digits > 16 {
        return Err("chunk size overflows");
    }
    let mut size: u64 = 0;
    for &b in &body[..digits] {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = (size << 4) | u64::from(v);
    }
    let ext = &body[digits..];
    if !ext.is_empty() {
        let after_ws = ext
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .map(|i| &ext[i..])
            .unwrap_or(&[]);
        if after_ws.first() != Some(&b';') {
            return Err("invalid chunk size");
        }
        if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("control character in chunk extension");
        }
    }
    Ok(size)
}

/// Checks "name: value\r\n" and returns the name.
fn check_trailer_line(line: &[u8]) -> Result<&[u8], &'static str> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or("malformed trailer")?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err("malformed trailer name");
    }
    let value = &line[colon + 1..line.len() - 2];
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("control character in trailer");
    }
    Ok(name)
}

/// Trailers that would change framing, routing or the connection are never
/// forwarded (RFC 9110 §6.5.1): they are dropped, not merged into the head.
fn trailer_allowed(name: &[u8]) -> bool {
    !is_hop_by_hop(name)
        && !name.eq_ignore_ascii_case(b"host")
        && !name.eq_ignore_ascii_case(b"expect")
        && !name.eq_ignore_ascii_case(b"x-forwarded-for")
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Encodes `payload` as one chunk plus the last chunk (used by tests, fuzzing
/// and benches to build inputs).
pub fn encode(payload: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 32);
    for c in payload.chunks(chunk.max(1)) {
        push_hex(&mut out, c.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, input: &[u8], step: usize) -> Result<(Vec<u8>, usize), &'static str> {
        let mut d = ChunkedDecoder::new(mode);
        let mut out = Vec::new();
        let mut fed = 0;
        let mut pending: Vec<u8> = Vec::new();
        while fed < input.len() || !pending.is_empty() {
            let end = (fed + step).min(input.len());
            pending.extend_from_slice(&input[fed..end]);
            fed = end;
            let used = d.decode(&pending, &mut out)?;
            pending.drain(..used);
            if d.is_done() {
                return Ok((out, pending.len() + input.len() - fed));
            }
            if fed == input.len() && used == 0 {
                break;
            }
        }
        if d.is_done() {
            Ok((out, 0))
        } else {
            Err("incomplete")
        }
    }

    #[test]
    fn decodes_and_rechunks_at_every_split() {
        let input =
            b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: v\r\nContent-Length: 9\r\n\r\nNEXT";
        for step in 1..input.len() {
            let (out, left) = run(Mode::Decode, input, step).unwrap();
            assert_eq!(out, b"hello0123456789");
            assert_eq!(left, 4);
            let (out, _) = run(Mode::Rechunk, input, step).unwrap();
            assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-T: v\r\n\r\n");
        }
    }

    #[test]
    fn round_trip() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 4096, 20_000] {
            let enc = encode(&payload, chunk);
            let (out, _) = run(Mode::Decode, &enc, 333).unwrap();
            assert_eq!(out, payload);
            let (re, _) = run(Mode::Rechunk, &enc, 1000).unwrap();
            assert_eq!(re, enc);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"5\r\nhelloXX\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"0\r\nBad Name: v\r\n\r\n",
            b"0\r\nX: v\n\r\n",
        ] {
            assert!(
                run(Mode::Decode, bad, bad.len()).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
