//! The one table of HTTP status reason phrases (RFC 9110 §15).
//!
//! The balancer's own responses ([`super::canned`]), the admin API and the
//! test backend all take their reason phrases from [`reason`]; each caller
//! chooses its own word for a status the table does not name. The phrase
//! is informational only: clients must not act on it (RFC 9112 §4).

/// The reason phrase for `status`, or `None` for a status not in the table.
pub fn reason(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_statuses() {
        assert_eq!(reason(200), Some("OK"));
        assert_eq!(reason(413), Some("Content Too Large"));
        assert_eq!(reason(502), Some("Bad Gateway"));
        assert_eq!(reason(599), None);
        assert_eq!(reason(0), None);
    }
}
