//! The framing and connection headers of a message head, read in one scan.
//!
//! Request and response heads share the rules for `Content-Length` (strict
//! digits, copies must agree), `Transfer-Encoding` (the list of codings) and
//! `Connection` (close, keep-alive, upgrade, and the other options naming
//! headers to drop). [`FramingHeaders`] gathers what those fields say;
//! deciding the body framing from it differs per side and stays with the
//! [`request`](super::request) and [`response`](super::response) parsers.

use super::list_elements;
use crate::error::ProxyError;

/// What the framing and connection header fields of one head say (RFC 9112
/// §6, RFC 9110 §7.6.1), gathered field by field with [`Self::observe`].
#[derive(Debug, Default)]
pub(crate) struct FramingHeaders<'b> {
    /// The `Content-Length`, once one was seen (all copies agree).
    pub(crate) content_length: Option<u64>,
    /// A `Transfer-Encoding` field was present.
    pub(crate) te_seen: bool,
    /// A `Transfer-Encoding` field listed no coding at all.
    pub(crate) te_empty: bool,
    /// The last transfer coding listed so far is chunked.
    pub(crate) te_last_chunked: bool,
    /// How many times chunked was listed.
    pub(crate) te_chunked_count: u32,
    /// A coding other than chunked was listed.
    pub(crate) te_other: bool,
    /// `Connection: close`.
    pub(crate) conn_close: bool,
    /// `Connection: keep-alive`.
    pub(crate) conn_keep_alive: bool,
    /// `Connection: upgrade`.
    pub(crate) conn_upgrade: bool,
    /// The other `Connection` options: headers a proxy must not forward.
    pub(crate) conn_tokens: Vec<&'b [u8]>,
}

impl<'b> FramingHeaders<'b> {
    /// Takes in one header field; other fields are ignored. An invalid or
    /// conflicting `Content-Length` is an error, built by `bad` (a bad
    /// request or a bad response, depending on the side).
    #[inline]
    pub(crate) fn observe(
        &mut self,
        name: &[u8],
        value: &'b [u8],
        bad: fn(&'static str) -> ProxyError,
    ) -> Result<(), ProxyError> {
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for tok in list_elements(value) {
                    if tok.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    } else if tok.eq_ignore_ascii_case(b"upgrade") {
                        self.conn_upgrade = true;
                    } else {
                        self.conn_tokens.push(tok);
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_content_length(value).ok_or_else(|| bad("invalid Content-Length"))?;
                if self.content_length.is_some_and(|prev| prev != n) {
                    return Err(bad("conflicting Content-Length"));
                }
                self.content_length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.te_seen = true;
                let mut any = false;
                for coding in list_elements(value) {
                    any = true;
                    self.te_last_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    if self.te_last_chunked {
                        self.te_chunked_count += 1;
                    } else {
                        self.te_other = true;
                    }
                }
                self.te_empty |= !any;
            }
            _ => {}
        }
        Ok(())
    }

    /// Chunked is listed once, as the final transfer coding (RFC 9112
    /// §6.3): the only way our side can find where the body ends.
    #[inline]
    pub(crate) fn chunked_is_final(&self) -> bool {
        self.te_last_chunked && self.te_chunked_count == 1
    }

    /// Whether the sender lets the connection persist after this message,
    /// by its HTTP minor version and `Connection` options (RFC 9112 §9.3).
    #[inline]
    pub(crate) fn persistent(&self, minor_version: u8) -> bool {
        if minor_version == 1 {
            !self.conn_close
        } else {
            self.conn_keep_alive && !self.conn_close
        }
    }
}

/// Parses a Content-Length value strictly: one or more digits, no sign, no
/// overflow; a list of identical values ("5, 5") is accepted as one.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    let mut any = false;
    for elem in value.split(|&b| b == b',').map(super::trim_ows) {
        any = true;
        if elem.is_empty() || elem.len() > 19 || !elem.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in elem {
            n = n * 10 + u64::from(d - b'0');
        }
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    if any { result } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan<'b>(fields: &[(&str, &'b [u8])]) -> Result<FramingHeaders<'b>, ProxyError> {
        let mut f = FramingHeaders::default();
        for (name, value) in fields {
            f.observe(name.as_bytes(), value, ProxyError::BadRequest)?;
        }
        Ok(f)
    }

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b"5, 5"), Some(5));
        assert_eq!(parse_content_length(b"5, 6"), None);
        assert_eq!(parse_content_length(b"+5"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"5,"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(parse_content_length(b"0x10"), None);
    }

    #[test]
    fn lengths_must_agree() {
        let f = scan(&[("Content-Length", b"5"), ("content-length", b"5")]).unwrap();
        assert_eq!(f.content_length, Some(5));
        assert!(scan(&[("Content-Length", b"5"), ("Content-Length", b"6")]).is_err());
        assert!(scan(&[("Content-Length", b"x")]).is_err());
    }

    #[test]
    fn transfer_codings() {
        let f = scan(&[("Transfer-Encoding", b"gzip, chunked")]).unwrap();
        assert!(f.te_seen && f.chunked_is_final() && f.te_other && !f.te_empty);
        let f = scan(&[
            ("Transfer-Encoding", b"chunked"),
            ("Transfer-Encoding", b"gzip"),
        ])
        .unwrap();
        assert!(!f.chunked_is_final());
        let f = scan(&[("Transfer-Encoding", b"chunked, chunked")]).unwrap();
        assert!(!f.chunked_is_final());
        let f = scan(&[("Transfer-Encoding", b" , ")]).unwrap();
        assert!(f.te_seen && f.te_empty);
    }

    #[test]
    fn connection_options() {
        let f = scan(&[("Connection", b"Keep-Alive, Upgrade, X-Foo")]).unwrap();
        assert!(f.conn_keep_alive && f.conn_upgrade && !f.conn_close);
        assert_eq!(f.conn_tokens, vec![&b"X-Foo"[..]]);
        assert!(f.persistent(1) && f.persistent(0));
        let f = scan(&[("Connection", b"close")]).unwrap();
        assert!(!f.persistent(1) && !f.persistent(0));
        let f = scan(&[]).unwrap();
        assert!(f.persistent(1) && !f.persistent(0));
    }
}
