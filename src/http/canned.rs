//! Responses the balancer writes itself (errors, `100 Continue`).
//!
//! Each is a complete HTTP/1.1 response with `Content-Length`, a short plain
//! text body naming the problem, and `Connection: close` when the connection
//! cannot continue (after a client error the framing of what follows is
//! unknown, so the connection is always closed).

/// The interim response sent when a client asked `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Reason phrase for the statuses the balancer produces: the shared table,
/// and "Error" for a status it does not name.
pub fn reason(status: u16) -> &'static str {
    super::status::reason(status).unwrap_or("Error")
}

/// The error response for a request whose method is HEAD: the head of
/// [`error_response`], `Content-Length` included, without the body (RFC 9110
/// §9.3.2), so a pipelining client reads the next response where it starts.
pub fn error_response_to_head(status: u16, close: bool) -> Vec<u8> {
    let mut r = error_response(status, close);
    r.truncate(r.len() - reason(status).len() - 1);
    r
}

/// Builds an error response. `close` adds `Connection: close`.
pub fn error_response(status: u16, close: bool) -> Vec<u8> {
    let reason = reason(status);
    let body_len = reason.len() + 1;
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n{conn}Server: ekilibri\r\n\r\n{reason}\n"
    )
    .into_bytes()
}

/// Adds `X-Request-Id: id` to the head of `resp`, a response made here, so
/// the client can quote the id of a request the balancer refused or failed.
/// Nothing changes when `id` is empty.
pub fn add_request_id(resp: &mut Vec<u8>, id: &[u8]) {
    let Some(end) = memchr::memmem::find(resp, b"\r\n\r\n") else {
        return;
    };
    if id.is_empty() {
        return;
    }
    let at = end + 2;
    let field = [&b"X-Request-Id: "[..], id, b"\r\n"];
    resp.splice(at..at, field.iter().flat_map(|p| p.iter().copied()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_goes_in_the_head() {
        let mut r = error_response(502, false);
        add_request_id(&mut r, b"id-1");
        let r = String::from_utf8(r).unwrap();
        assert!(
            r.ends_with("Server: ekilibri\r\nX-Request-Id: id-1\r\n\r\nBad Gateway\n"),
            "{r}"
        );
        let mut h = error_response_to_head(400, true);
        add_request_id(&mut h, b"id-2");
        assert!(h.ends_with(b"X-Request-Id: id-2\r\n\r\n"));
        let mut same = error_response(400, true);
        add_request_id(&mut same, b"");
        assert_eq!(same, error_response(400, true));
    }

    #[test]
    fn error_response_is_complete() {
        let r = String::from_utf8(error_response(502, true)).unwrap();
        assert!(r.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(r.contains("Content-Length: 12\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nBad Gateway\n"));
    }

    #[test]
    fn error_response_to_head_has_no_body() {
        for status in [400, 502, 504, 599] {
            let full = error_response(status, false);
            let head = error_response_to_head(status, false);
            assert!(head.ends_with(b"\r\n\r\n"), "{status}");
            assert!(full.starts_with(&head), "{status}");
            let body = &full[head.len()..];
            let cl = format!("Content-Length: {}\r\n", body.len());
            assert!(String::from_utf8_lossy(&head).contains(&cl), "{status}");
        }
    }
}
