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
/// Largest chunk size accepted: 1 TiB. No real body sends a single chunk
/// this large, while sizes near 2^63 or 2^64 only probe the next hop's
/// arithmetic (a signed or narrower parser there reads another size, which
/// is a smuggling route) and would hold the connection open for a body that
/// never comes. nginx and HAProxy refuse such sizes at once too.
pub const MAX_CHUNK_SIZE: u64 = 1 << 40;

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
    if size > MAX_CHUNK_SIZE {
        return Err("chunk size too large");
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
/// Names with `_` are dropped as in request heads (a backend may read
/// `X_Foo` as `X-Foo`); the decoder serves both directions, so response
/// trailers lose them too.
fn trailer_allowed(name: &[u8]) -> bool {
    !is_hop_by_hop(name)
        && !name.contains(&b'_')
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

    #[test]
    fn chunk_sizes_are_bounded() {
        let at_max = format!("{MAX_CHUNK_SIZE:x}\r\n");
        let mut d = ChunkedDecoder::new(Mode::Decode);
        assert_eq!(
            d.decode(at_max.as_bytes(), &mut Vec::new()),
            Ok(at_max.len())
        );
        assert_eq!(d.data_remaining(), MAX_CHUNK_SIZE);
        for size in [MAX_CHUNK_SIZE + 1, 0x7fff_ffff_ffff_ffff, u64::MAX] {
            let line = format!("{size:x}\r\n");
            let mut d = ChunkedDecoder::new(Mode::Rechunk);
            let mut out = Vec::new();
            assert_eq!(
                d.decode(line.as_bytes(), &mut out),
                Err("chunk size too large")
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn trailer_names_with_underscore_are_dropped() {
        let input = b"0\r\nX_Under: 1\r\nX-Ok: 2\r\nx_forwarded_for: 3\r\n\r\n";
        let (out, _) = run(Mode::Rechunk, input, input.len()).unwrap();
        assert_eq!(out, b"0\r\nX-Ok: 2\r\n\r\n");
    }

    // ---- Property tests (deterministic PRNG, no crates) ----

    use crate::http::test_rng::Rng;

    /// The outcome of feeding `input` in pieces cut at random points, the
    /// way the proxy does (unconsumed bytes stay and more are appended).
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// The body ended: output and how many input bytes were left after it.
        Done(Vec<u8>, usize),
        /// Input ran out before the end of the body: output so far.
        Incomplete(Vec<u8>),
        Error(&'static str),
    }

    fn feed(mode: Mode, input: &[u8], rng: &mut Rng, max_piece: usize) -> Outcome {
        let mut d = ChunkedDecoder::new(mode);
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            let piece = if max_piece == usize::MAX {
                input.len() - fed
            } else {
                (1 + rng.below(max_piece)).min(input.len() - fed)
            };
            pending.extend_from_slice(&input[fed..fed + piece]);
            fed += piece;
            let used = match d.decode(&pending, &mut out) {
                Ok(u) => u,
                Err(e) => return Outcome::Error(e),
            };
            assert!(used <= pending.len(), "consumed more than given");
            pending.drain(..used);
            if d.is_done() {
                return Outcome::Done(out, pending.len() + input.len() - fed);
            }
            if fed == input.len() {
                // Nothing new will come: one more call must not change anything.
                let before = out.len();
                match d.decode(&pending, &mut out) {
                    Ok(0) => {}
                    Ok(n) => panic!("decoder consumed {n} bytes on a repeated call"),
                    Err(e) => return Outcome::Error(e),
                }
                assert_eq!(out.len(), before);
                return Outcome::Incomplete(out);
            }
        }
    }

    fn upper_or_lower_hex(rng: &mut Rng, n: usize) -> String {
        let s = format!("{n:x}");
        let zeros = rng.below(17 - s.len().min(16));
        let s = format!("{}{s}", "0".repeat(zeros.min(3)));
        if rng.below(2) == 0 {
            s.to_uppercase()
        } else {
            s
        }
    }

    #[test]
    fn property_encode_decode_round_trips_at_random_splits() {
        let mut rng = Rng(0xc4c4_0001);
        for case in 0..3000 {
            let len = match rng.below(4) {
                0 => rng.below(4),
                1 | 2 => rng.below(600),
                _ => rng.below(20_000),
            };
            let payload = rng.bytes(len);
            let chunk = 1 + rng.below(len.max(1) + 10);
            let enc = encode(&payload, chunk);
            let tail_len = rng.below(8);
            let tail = rng.bytes(tail_len);
            let input = [&enc[..], &tail[..]].concat();
            let piece = 1 + rng.below(700);
            assert_eq!(
                feed(Mode::Decode, &input, &mut rng, piece),
                Outcome::Done(payload.clone(), tail.len()),
                "case {case}: len {len} chunk {chunk}"
            );
            // encode() is canonical, so re-chunking reproduces it.
            assert_eq!(
                feed(Mode::Rechunk, &input, &mut rng, piece),
                Outcome::Done(enc.clone(), tail.len()),
                "case {case}"
            );
        }
    }

    #[test]
    fn property_non_canonical_encodings_are_canonicalised() {
        let mut rng = Rng(0xc4c4_0002);
        const EXT: &[&str] = &[";a", ";a=b", " ;x=\"q r\"", "\t;y", ";a;b=c", "; n = v"];
        const TRAILERS: &[(&str, bool)] = &[
            ("X-Trailer: v", true),
            ("Server-Timing: a;dur=1", true),
            ("Content-Length: 9", false),
            ("Transfer-Encoding: chunked", false),
            ("Host: evil", false),
            ("Connection: close", false),
            ("X-Forwarded-For: 1.2.3.4", false),
            ("Expect: 100-continue", false),
            ("Trailer: X", false),
            ("X-Empty:", true),
        ];
        for case in 0..3000 {
            let mut input = Vec::new();
            let mut canonical = Vec::new();
            let mut payload = Vec::new();
            for _ in 0..rng.below(6) {
                let n = 1 + rng.below(300);
                let data = rng.bytes(n);
                input.extend_from_slice(upper_or_lower_hex(&mut rng, n).as_bytes());
                if rng.below(3) == 0 {
                    input.extend_from_slice(EXT[rng.below(EXT.len())].as_bytes());
                }
                input.extend_from_slice(b"\r\n");
                input.extend_from_slice(&data);
                input.extend_from_slice(b"\r\n");
                canonical.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                canonical.extend_from_slice(&data);
                canonical.extend_from_slice(b"\r\n");
                payload.extend_from_slice(&data);
            }
            input.extend_from_slice("0".repeat(1 + rng.below(3)).as_bytes());
            if rng.below(3) == 0 {
                input.extend_from_slice(EXT[rng.below(EXT.len())].as_bytes());
            }
            input.extend_from_slice(b"\r\n");
            canonical.extend_from_slice(b"0\r\n");
            for _ in 0..rng.below(4) {
                let (t, kept) = TRAILERS[rng.below(TRAILERS.len())];
                input.extend_from_slice(t.as_bytes());
                input.extend_from_slice(b"\r\n");
                if kept {
                    canonical.extend_from_slice(t.as_bytes());
                    canonical.extend_from_slice(b"\r\n");
                }
            }
            input.extend_from_slice(b"\r\n");
            canonical.extend_from_slice(b"\r\n");
            let piece = 1 + rng.below(64);
            assert_eq!(
                feed(Mode::Decode, &input, &mut rng, piece),
                Outcome::Done(payload, 0),
                "case {case}: {:?}",
                String::from_utf8_lossy(&input)
            );
            assert_eq!(
                feed(Mode::Rechunk, &input, &mut rng, piece),
                Outcome::Done(canonical, 0),
                "case {case}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    /// Random bytes biased towards the chunked alphabet, and mutations of
    /// valid encodings: no panic, and the outcome does not depend on how
    /// the input was split; a re-chunked body decodes to the same payload.
    #[test]
    fn property_decoder_never_panics_and_ignores_splits() {
        let mut rng = Rng(0xc4c4_0003);
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEF\r\n\r\n;= \t:xX-\x00\x7f\xff";
        for case in 0..20_000 {
            let input: Vec<u8> = if case % 2 == 0 {
                let n = rng.below(80);
                (0..n)
                    .map(|_| {
                        if rng.below(8) == 0 {
                            rng.next() as u8
                        } else {
                            ALPHABET[rng.below(ALPHABET.len())]
                        }
                    })
                    .collect()
            } else {
                let payload_len = rng.below(40);
                let payload = rng.bytes(payload_len);
                let mut v = encode(&payload, 1 + rng.below(16));
                v.splice(
                    v.len() - 2..v.len() - 2,
                    b"X-T: 1\r\nHost: h\r\n".iter().copied(),
                );
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(v.len());
                    match rng.below(3) {
                        0 => v[i] = ALPHABET[rng.below(ALPHABET.len())],
                        1 => {
                            v.remove(i);
                        }
                        _ => v.insert(i, ALPHABET[rng.below(ALPHABET.len())]),
                    }
                }
                v
            };
            for mode in [Mode::Decode, Mode::Rechunk] {
                let whole = feed(mode, &input, &mut rng, usize::MAX);
                let piece = 1 + rng.below(5);
                let split = feed(mode, &input, &mut rng, piece);
                assert_eq!(
                    whole,
                    split,
                    "case {case} {mode:?}: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            let decoded = feed(Mode::Decode, &input, &mut rng, usize::MAX);
            if let (Outcome::Done(payload, _), Outcome::Done(rechunked, _)) =
                (&decoded, feed(Mode::Rechunk, &input, &mut rng, usize::MAX))
            {
                assert_eq!(
                    feed(Mode::Decode, &rechunked, &mut rng, usize::MAX),
                    Outcome::Done(payload.clone(), 0),
                    "case {case}"
                );
                // Canonical form is a fixed point.
                assert_eq!(
                    feed(Mode::Rechunk, &rechunked, &mut rng, usize::MAX),
                    Outcome::Done(rechunked.clone(), 0),
                    "case {case}"
                );
            }
        }
    }
}
