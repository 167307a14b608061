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

#[cfg(test)]
mod tests {
    use super::*;

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
