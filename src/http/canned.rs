//! Responses the balancer writes itself (errors, `100 Continue`).
//!
//! Each is a complete HTTP/1.1 response with `Content-Length`, a short plain
//! text body naming the problem, and `Connection: close` when the connection
//! cannot continue (after a client error the framing of what follows is
//! unknown, so the connection is always closed).

/// The interim response sent when a client asked `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Reason phrase for the statuses the balancer produces.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
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
}
