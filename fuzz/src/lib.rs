//! Checks shared by the fuzz targets.
//!
//! The targets drive ekilibri's real HTTP functions (`request::parse`,
//! `response::parse`, the chunked decoder) the way `proxy.rs` does, and then
//! re-parse what each peer would receive with independent, strict parsers
//! written here (httparse for heads, a canonical-only chunked parser for
//! bodies). Any disagreement between what ekilibri decided and what a strict
//! peer would understand is a panic, which libFuzzer reports as a crash.

use std::net::{IpAddr, Ipv4Addr};

use ekilibri::http::BodyFraming;
use ekilibri::http::chunked::{ChunkedDecoder, Mode};
use ekilibri::http::forwarded::Forwarding;
use ekilibri::http::request::{self, Method, RequestHead};
use ekilibri::http::response::{self, ClientSide, ResponseHead};

/// The client address the targets pretend to see.
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
/// How the fuzzed requests are forwarded: from a trusted peer (so a
/// re-parse of the forwarded head only appends to X-Forwarded-For),
/// `Forwarded` off, a fixed request id.
pub const FWD: Forwarding<'static> = Forwarding {
    peer: CLIENT_IP,
    trusted: true,
    forwarded: false,
    request_id: b"0123456789abcdef0123456789abcdef",
};
/// `max_header_bytes` used by the targets (the default).
pub const MAX_HEAD: usize = 64 * 1024;

/// splitmix64, seeded from the input so every run of an input is the same.
pub struct Rng(u64);

impl Rng {
    /// Seeds from a hash of `data` (FNV-1a).
    pub fn from_bytes(data: &[u8]) -> Rng {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h)
    }

    /// Next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Every CR is followed by LF and every LF preceded by CR.
pub fn crlf_clean(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

/// Header fields: (name, value).
pub type Fields = Vec<(String, Vec<u8>)>;

/// Values of every field named `name` (case-insensitive).
pub fn all<'a>(f: &'a Fields, name: &str) -> Vec<&'a [u8]> {
    f.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(&b[..b.len().min(2000)]))
}

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "proxy-connection",
    "upgrade",
    "transfer-encoding",
    "content-length",
];

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request head re-parsed strictly.
pub struct StrictRequest {
    /// The method.
    pub method: Vec<u8>,
    /// The request target.
    pub target: Vec<u8>,
    /// The fields in order.
    pub fields: Fields,
    /// Bytes of the head.
    pub len: usize,
}

/// Parses a complete HTTP/1.1 request head strictly or panics.
pub fn strict_request_head(b: &[u8]) -> StrictRequest {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "a peer cannot parse the request head ({other:?}): {}",
            show(b)
        ),
    };
    assert!(
        crlf_clean(&b[..len]),
        "bare CR/LF in request head {}",
        show(b)
    );
    assert!(!b.starts_with(b"\r\n"), "empty line before request line");
    assert_eq!(req.version, Some(1), "forwarded request not HTTP/1.1");
    for h in req.headers.iter() {
        assert!(h.name.bytes().all(is_tchar), "bad field name {:?}", h.name);
    }
    StrictRequest {
        method: req.method.unwrap().as_bytes().to_vec(),
        target: req.path.unwrap().as_bytes().to_vec(),
        fields: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        len,
    }
}

/// A response head re-parsed strictly.
pub struct StrictResponse {
    /// The status code.
    pub status: u16,
    /// The fields in order.
    pub fields: Fields,
    /// Bytes of the head.
    pub len: usize,
}

/// Parses a complete HTTP/1.1 response head strictly or panics.
pub fn strict_response_head(b: &[u8]) -> StrictResponse {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "a client cannot parse the response head ({other:?}): {}",
            show(b)
        ),
    };
    assert!(
        crlf_clean(&b[..len]),
        "bare CR/LF in response head {}",
        show(b)
    );
    assert!(b.starts_with(b"HTTP/1.1 "), "status line {}", show(b));
    StrictResponse {
        status: resp.code.unwrap(),
        fields: resp
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
        len,
    }
}

/// Parses a canonical chunked body (lower-case hex sizes without leading
/// zeros, no extensions, CRLF everywhere, no framing or routing trailers).
/// Returns (payload, bytes consumed) or why it is not canonical.
pub fn strict_canonical_chunked(b: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut pos = 0;
    let mut payload = Vec::new();
    let line = |pos: usize| -> Result<(&[u8], usize), String> {
        let i = b[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("unterminated line")?;
        let l = &b[pos..pos + i];
        if l.contains(&b'\n') || l.contains(&b'\r') {
            return Err(format!("bare CR/LF in {}", show(l)));
        }
        Ok((l, pos + i + 2))
    };
    loop {
        let (l, next) = line(pos)?;
        pos = next;
        if l.is_empty()
            || l.len() > 16
            || !l.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            || (l.len() > 1 && l[0] == b'0')
        {
            return Err(format!("non-canonical size line {}", show(l)));
        }
        let size = u64::from_str_radix(std::str::from_utf8(l).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        let size = size as usize;
        if b.len() - pos < size + 2 {
            return Err("truncated chunk".into());
        }
        payload.extend_from_slice(&b[pos..pos + size]);
        pos += size;
        if &b[pos..pos + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        pos += 2;
    }
    loop {
        let (l, next) = line(pos)?;
        pos = next;
        if l.is_empty() {
            return Ok((payload, pos));
        }
        let colon = l
            .iter()
            .position(|&c| c == b':')
            .ok_or("trailer without colon")?;
        let name = &l[..colon];
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return Err(format!("bad trailer name {}", show(name)));
        }
        let lname = String::from_utf8_lossy(name).to_ascii_lowercase();
        if HOP.contains(&lname.as_str())
            || ["host", "expect", "x-forwarded-for"].contains(&lname.as_str())
        {
            return Err(format!("forbidden trailer {lname}"));
        }
    }
}

/// What feeding a chunked body did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The body ended: output and input bytes left after it.
    Done(Vec<u8>, usize),
    /// Input ran out first: output so far.
    Incomplete(Vec<u8>),
    /// The decoder refused the input.
    Error(&'static str),
}

/// Feeds `input` to a decoder the way the proxy does: in pieces (cut by
/// `rng`, or all at once when `None`), unconsumed bytes kept and more
/// appended.
pub fn feed(mode: Mode, input: &[u8], mut rng: Option<&mut Rng>) -> Outcome {
    let mut d = ChunkedDecoder::new(mode);
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        let piece = match rng.as_deref_mut() {
            None => input.len() - fed,
            Some(r) => (1 + r.below(64)).min(input.len() - fed),
        };
        pending.extend_from_slice(&input[fed..fed + piece]);
        fed += piece;
        let used = match d.decode(&pending, &mut out) {
            Ok(u) => u,
            Err(e) => return Outcome::Error(e),
        };
        assert!(used <= pending.len());
        pending.drain(..used);
        if d.is_done() {
            assert!(d.data_remaining() == 0);
            return Outcome::Done(out, pending.len() + input.len() - fed);
        }
        if fed == input.len() {
            let before = out.len();
            match d.decode(&pending, &mut out) {
                Ok(0) => {}
                Ok(n) => panic!("decoder consumed {n} more bytes from the same input"),
                Err(e) => return Outcome::Error(e),
            }
            assert_eq!(out.len(), before);
            return Outcome::Incomplete(out);
        }
    }
}

/// Checks a successful `request::parse` of `input`: the head forwarded to
/// the backend (`out`) must be one strict, unambiguous HTTP/1.1 head that
/// means what ekilibri decided.
pub fn check_forwarded_request(input: &[u8], h: &RequestHead, out: &[u8]) -> StrictRequest {
    assert!(h.head_len <= input.len());
    assert!(input[..h.head_len].ends_with(b"\r\n\r\n"));
    assert!(h.head_len <= MAX_HEAD);
    let s = strict_request_head(out);
    assert_eq!(s.len, out.len(), "forwarded head has trailing bytes");
    assert_eq!(s.method, &input[h.method_range.clone()]);
    let target = &input[h.target_range.clone()];
    if target.first() == Some(&b'/') || target == b"*" {
        assert_eq!(s.target, target);
    } else {
        // Absolute form goes out in origin form, Host from its authority.
        assert!(s.target.starts_with(b"/"), "{}", show(out));
        let path = s.target.strip_prefix(b"/").unwrap_or(&s.target);
        assert!(target.ends_with(path), "{}", show(out));
    }
    assert!(s.method != b"CONNECT");
    let f = &s.fields;
    assert_eq!(
        all(f, "host").len(),
        1,
        "forwarded request needs exactly one Host: {}",
        show(out)
    );
    let xff = all(f, "x-forwarded-for");
    assert_eq!(xff.len(), 1, "one X-Forwarded-For");
    assert!(xff[0].ends_with(CLIENT_IP.to_string().as_bytes()));
    let id = all(f, "x-request-id");
    assert_eq!(id.len(), 1, "one X-Request-Id");
    assert_eq!(id[0], h.request_id.as_bytes());
    assert_eq!(
        all(f, "x-forwarded-proto").len(),
        1,
        "one X-Forwarded-Proto"
    );
    assert!(
        all(f, "x-forwarded-host").len() <= 1,
        "one X-Forwarded-Host at most"
    );
    for (n, v) in f {
        let l = n.to_ascii_lowercase();
        assert!(!l.contains('_'), "underscore field forwarded: {n}");
        match l.as_str() {
            "content-length" | "transfer-encoding" => {}
            "upgrade" => assert!(h.upgrade, "Upgrade forwarded without an upgrade"),
            "connection" => assert!(h.upgrade && v == b"upgrade", "Connection: {v:?}"),
            "expect" => assert!(!h.expect_continue || !v.eq_ignore_ascii_case(b"100-continue")),
            other => assert!(!HOP.contains(&other), "hop-by-hop {n} forwarded"),
        }
    }
    let cl = all(f, "content-length");
    let te = all(f, "transfer-encoding");
    match h.body {
        BodyFraming::None => assert!(cl.is_empty() && te.is_empty(), "{}", show(out)),
        BodyFraming::Length(n) => {
            assert!(te.is_empty() && cl.len() == 1, "{}", show(out));
            assert_eq!(cl[0], n.to_string().as_bytes());
        }
        BodyFraming::Chunked => {
            assert!(cl.is_empty() && te == [b"chunked"], "{}", show(out));
            assert_eq!(h.minor_version, 1);
        }
        BodyFraming::UntilClose => panic!("a request framed until close"),
    }
    if h.upgrade {
        assert_eq!(h.body, BodyFraming::None);
        assert_eq!(all(f, "connection"), [b"upgrade"]);
    }
    // The head ends where the bytes after it cannot change the decision.
    let mut out2 = Vec::new();
    match request::parse(&input[..h.head_len], MAX_HEAD, &FWD, &mut out2) {
        Ok(Some(h2)) => {
            assert_eq!(&h2, h);
            assert_eq!(out2, out);
        }
        other => panic!("the head alone parses differently: {other:?}"),
    }
    // What ekilibri forwards, ekilibri would accept and forward the same way.
    let mut again = Vec::new();
    match request::parse(out, MAX_HEAD, &FWD, &mut again) {
        Ok(Some(h3)) => {
            assert_eq!(h3.head_len, out.len());
            assert_eq!(h3.body, h.body);
            assert_eq!(h3.method, h.method);
            assert_eq!(h3.upgrade, h.upgrade);
            assert!(h3.keep_alive);
        }
        // An HTTP/1.0 request without Host goes out with an empty one,
        // which ekilibri refuses from a client.
        Err(ekilibri::error::ProxyError::BadRequest("invalid Host")) if all(f, "host") == [b""] => {
        }
        // Up to two fields are added (X-Forwarded-For, Host for 1.0),
        // so a head at the field limit may go over it once forwarded.
        Err(ekilibri::error::ProxyError::HeaderTooLarge)
            if s.fields.len() > request::MAX_HEADERS => {}
        other => panic!(
            "forwarded head refused by ekilibri: {other:?} {}",
            show(out)
        ),
    }
    s
}

/// Which client a response flag byte describes.
pub fn client_side(flags: u8) -> ClientSide<'static> {
    ClientSide {
        head_request: flags & 1 != 0,
        minor_version: (flags >> 1) & 1,
        keep_alive: flags & 4 != 0,
        upgrade: flags & 8 != 0,
        request_id: b"",
    }
}

/// How an HTTP/1.x client delimits a response body (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// Checks a successful `response::parse`: the head for the client must be
/// strict and unambiguous, and its framing must be what the proxy relays.
pub fn check_client_head(
    client: ClientSide,
    input: &[u8],
    r: &ResponseHead,
    out: &[u8],
) -> ClientFraming {
    assert!(r.head_len <= input.len() && r.head_len <= MAX_HEAD);
    let s = strict_response_head(out);
    assert_eq!(s.len, out.len(), "client head has trailing bytes");
    assert_eq!(s.status, r.status);
    let f = &s.fields;
    if r.switching {
        assert!(client.upgrade && r.status == 101);
    }
    assert_eq!(r.interim, (100..200).contains(&r.status) && r.status != 101);
    if r.client_keep_alive {
        assert!(client.keep_alive && !r.switching);
    }
    for (n, _) in f {
        let l = n.to_ascii_lowercase();
        match l.as_str() {
            "content-length" | "transfer-encoding" | "connection" => {}
            "upgrade" => assert!(r.switching, "Upgrade without 101"),
            other => assert!(!HOP.contains(&other), "hop-by-hop {n} relayed"),
        }
    }
    let conn = all(f, "connection");
    assert!(conn.len() <= 1, "{}", show(out));
    if r.switching {
        assert_eq!(conn, [b"upgrade"]);
    } else if !r.interim {
        let close = conn.first().is_some_and(|v| *v == b"close");
        assert_eq!(close, !r.client_keep_alive, "{}", show(out));
    }
    let cl = all(f, "content-length");
    let te = all(f, "transfer-encoding");
    assert!(cl.len() <= 1 && te.len() <= 1 && (cl.is_empty() || te.is_empty()));
    if r.interim || r.switching || r.status == 204 {
        assert!(cl.is_empty() && te.is_empty(), "{}", show(out));
    }
    if client.minor_version == 0 {
        assert!(te.is_empty(), "chunked sent to an HTTP/1.0 client");
    }
    // The head ends where the bytes after it cannot change the decision.
    let mut out2 = Vec::new();
    match response::parse(&input[..r.head_len], MAX_HEAD, client, &mut out2) {
        Ok(Some(r2)) => {
            assert_eq!(&r2, r);
            assert_eq!(out2, out);
        }
        other => panic!("the head alone parses differently: {other:?}"),
    }
    // How a client reads what follows.
    let framing = if client.head_request
        || (100..200).contains(&r.status)
        || r.status == 204
        || r.status == 304
    {
        ClientFraming::None
    } else if !te.is_empty() {
        assert_eq!(te[0], b"chunked");
        ClientFraming::Chunked
    } else if let Some(v) = cl.first() {
        ClientFraming::Length(std::str::from_utf8(v).unwrap().parse().unwrap())
    } else {
        ClientFraming::Close
    };
    // ... and what the proxy relays must agree.
    match (r.body, &framing) {
        (BodyFraming::None, ClientFraming::None) => {}
        (BodyFraming::Length(n), ClientFraming::Length(m)) => assert_eq!(n, *m),
        (BodyFraming::Chunked, ClientFraming::Chunked) => assert!(!r.dechunk),
        (BodyFraming::Chunked, ClientFraming::Close) => assert!(r.dechunk),
        (BodyFraming::UntilClose, ClientFraming::Close) => {}
        (b, c) => panic!(
            "proxy relays {b:?} but the client reads {c:?}: {}",
            show(out)
        ),
    }
    if framing == ClientFraming::Close {
        assert!(!r.client_keep_alive);
    }
    framing
}

/// One request and its response through the proxy's functions. `client`
/// is what the client sent (a request, maybe pipelined ones after it),
/// `backend` what the backend answers.
pub fn two_sided(client_bytes: &[u8], backend_bytes: &[u8], rng: &mut Rng) {
    // --- Client -> backend, up to a few pipelined requests.
    let mut cbuf = client_bytes;
    let mut first: Option<RequestHead> = None;
    for _ in 0..4 {
        let mut out = Vec::new();
        let h = match request::parse(cbuf, MAX_HEAD, &FWD, &mut out) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => break,
        };
        let s = check_forwarded_request(cbuf, &h, &out);
        let rest = &cbuf[h.head_len..];
        let mut to_backend = out.clone();
        let used = match h.body {
            BodyFraming::None => 0,
            BodyFraming::Length(n) => {
                if (rest.len() as u64) < n {
                    break;
                }
                to_backend.extend_from_slice(&rest[..n as usize]);
                n as usize
            }
            BodyFraming::Chunked => match feed(Mode::Rechunk, rest, Some(rng)) {
                Outcome::Done(o, left) => {
                    to_backend.extend_from_slice(&o);
                    rest.len() - left
                }
                _ => break,
            },
            BodyFraming::UntilClose => unreachable!(),
        };
        // The backend reads exactly one request from what it is sent.
        let body = &to_backend[s.len..];
        if !all(&s.fields, "transfer-encoding").is_empty() {
            match strict_canonical_chunked(body) {
                Ok((payload, n)) => {
                    assert_eq!(n, body.len(), "bytes after the chunked body");
                    if let Outcome::Done(p, _) = feed(Mode::Decode, &rest[..used], None) {
                        assert_eq!(payload, p, "payload changed by re-chunking");
                    } else {
                        panic!("decoder disagrees with itself");
                    }
                }
                Err(e) => panic!("backend gets a bad chunked body: {e}: {}", show(body)),
            }
        } else if let Some(v) = all(&s.fields, "content-length").first() {
            let n: usize = std::str::from_utf8(v).unwrap().parse().unwrap();
            assert_eq!(n, body.len());
        } else {
            assert!(body.is_empty());
        }
        if h.upgrade {
            // After a 101, what follows is tunnelled, not parsed.
            first.get_or_insert(h);
            break;
        }
        cbuf = &rest[used..];
        let done = !h.keep_alive;
        first.get_or_insert(h);
        if done {
            break;
        }
    }
    let Some(h) = first else { return };

    // --- Backend -> client.
    let client = ClientSide {
        head_request: h.method == Method::Head,
        minor_version: h.minor_version,
        keep_alive: h.keep_alive,
        upgrade: h.upgrade,
        request_id: b"",
    };
    let mut b = backend_bytes;
    let mut to_client = Vec::new();
    let mut truncated = false;
    let mut payload: Option<Vec<u8>> = None;
    let mut interims = 0;
    loop {
        // Any number of 1xx may precede the final response; bound the walk.
        interims += 1;
        if interims > 16 {
            return;
        }
        let mut out = Vec::new();
        let r = match response::parse(b, MAX_HEAD, client, &mut out) {
            Ok(Some(r)) => r,
            // Partial or refused: the proxy answers its own 502/504.
            _ => return,
        };
        check_client_head(client, b, &r, &out);
        b = &b[r.head_len..];
        if r.interim {
            if r.status != 100 && client.minor_version == 1 {
                to_client.extend_from_slice(&out);
            }
            continue;
        }
        to_client.extend_from_slice(&out);
        if r.switching {
            strict_response_head(&to_client);
            return;
        }
        match r.body {
            BodyFraming::None => payload = Some(Vec::new()),
            BodyFraming::Length(n) => {
                let take = (n as usize).min(b.len());
                to_client.extend_from_slice(&b[..take]);
                truncated = take < n as usize;
                payload = Some(b[..take].to_vec());
            }
            BodyFraming::Chunked => {
                let mode = if r.dechunk {
                    Mode::Decode
                } else {
                    Mode::Rechunk
                };
                match feed(mode, b, Some(rng)) {
                    Outcome::Done(o, _) => {
                        to_client.extend_from_slice(&o);
                        match feed(Mode::Decode, b, None) {
                            Outcome::Done(p, _) => payload = Some(p),
                            other => panic!("decoder disagrees with itself: {other:?}"),
                        }
                    }
                    Outcome::Incomplete(o) => {
                        to_client.extend_from_slice(&o);
                        truncated = true;
                    }
                    Outcome::Error(_) => truncated = true,
                }
            }
            BodyFraming::UntilClose => {
                to_client.extend_from_slice(b);
                payload = Some(b.to_vec());
            }
        }
        break;
    }

    // --- What the client reads: interim heads, one final response, nothing more.
    let mut pos = 0;
    loop {
        let s = strict_response_head(&to_client[pos..]);
        pos += s.len;
        if (100..200).contains(&s.status) && s.status != 101 {
            assert!(pos < to_client.len() || truncated, "no final response");
            if pos == to_client.len() {
                return;
            }
            continue;
        }
        let cl = all(&s.fields, "content-length");
        let te = all(&s.fields, "transfer-encoding");
        let body = &to_client[pos..];
        let no_body = client.head_request || s.status == 204 || s.status == 304;
        if no_body {
            assert!(body.is_empty(), "bytes after a bodiless response");
        } else if !te.is_empty() {
            if truncated {
                return;
            }
            match strict_canonical_chunked(body) {
                Ok((p, n)) => {
                    assert_eq!(n, body.len(), "bytes after the chunked response");
                    if let Some(want) = &payload {
                        assert_eq!(&p, want);
                    }
                }
                Err(e) => panic!("client gets a bad chunked body: {e}: {}", show(body)),
            }
        } else if let Some(v) = cl.first() {
            let n: usize = std::str::from_utf8(v).unwrap().parse().unwrap();
            if truncated {
                assert!(body.len() < n);
            } else {
                assert_eq!(n, body.len(), "Content-Length vs relayed body");
            }
        } else {
            let conn = all(&s.fields, "connection");
            assert_eq!(
                conn,
                [b"close"],
                "body until close without Connection: close"
            );
            if let (Some(want), false) = (&payload, truncated) {
                assert_eq!(body, want.as_slice());
            }
        }
        return;
    }
}
