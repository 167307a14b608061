//! Error types of the library, one enum per domain.
//!
//! [`ConfigError`] covers loading and validating the configuration file;
//! [`ProxyError`] covers everything that can go wrong while proxying one
//! request. Each proxy error knows which side caused it ([`ErrorSource`]) and
//! which status code, if any, the client should see, so mapping an error to a
//! response is a single `match` in [`ProxyError::status`].

use std::io;
use std::path::PathBuf;

/// A configuration file that cannot be used. Every variant names the file and,
/// where there is one, the key at fault, so the message fits on one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading failed.
        source: io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("{path}:{line}: {key}{message}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// "key `name`: " when the key could be identified, else empty.
        key: String,
        /// The parser's description of the problem.
        message: String,
    },
    /// A key holds a value that parses but cannot be used.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The file being validated.
        path: PathBuf,
        /// The offending key (`pools.api.read_timeout` for a pool's key).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wrong or went away.
    Client,
    /// The backend failed, misbehaved or timed out.
    Backend,
    /// The balancer itself cannot serve the request (e.g. no backend is up).
    Internal,
}

/// Why one request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed; the reason is for logs only.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request line is longer than the balancer accepts.
    #[error("request line too long")]
    UriTooLong,
    /// The request head exceeds `max_header_bytes` or has too many headers.
    #[error("request header fields too large")]
    HeaderTooLarge,
    /// The request uses a transfer coding the balancer does not implement.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// The request's HTTP version is not 1.0 or 1.1.
    #[error("HTTP version not supported")]
    VersionNotSupported,
    /// The client did not send a complete head or body in time.
    #[error("client timed out")]
    ClientTimeout,
    /// The client connection failed or closed mid-request.
    #[error("client i/o: {0}")]
    ClientIo(io::Error),
    /// No backend may take traffic right now.
    #[error("no healthy backend")]
    NoBackend,
    /// Every candidate backend is at its connection limit (queue full or
    /// wait timed out), or its half-open breaker has no trial slot left.
    #[error("backend capacity exhausted")]
    Overloaded,
    /// Connecting to the backend failed (refused, unreachable, ...).
    #[error("connect to backend failed: {0}")]
    Connect(io::Error),
    /// Connecting, writing to or reading from the backend timed out.
    #[error("backend timed out")]
    BackendTimeout,
    /// The backend connection failed or closed before a full response.
    #[error("backend i/o: {0}")]
    BackendIo(io::Error),
    /// The backend closed the connection before sending any response byte.
    #[error("backend closed the connection")]
    BackendClosed,
    /// The backend answered with something that is not valid HTTP framing.
    #[error("invalid response from backend: {0}")]
    BadResponse(&'static str),
}

impl ProxyError {
    /// The side that caused the error.
    pub fn source_side(&self) -> ErrorSource {
        use ProxyError::*;
        match self {
            BadRequest(_) | UriTooLong | HeaderTooLarge | NotImplemented(_)
            | VersionNotSupported | ClientTimeout | ClientIo(_) => ErrorSource::Client,
            NoBackend | Overloaded => ErrorSource::Internal,
            Connect(_) | BackendTimeout | BackendIo(_) | BackendClosed | BadResponse(_) => {
                ErrorSource::Backend
            }
        }
    }

    /// The status the client should receive, or `None` when the client
    /// connection is unusable and nothing should be written to it.
    pub fn status(&self) -> Option<u16> {
        use ProxyError::*;
        match self {
            BadRequest(_) => Some(400),
            ClientTimeout => Some(408),
            UriTooLong => Some(414),
            HeaderTooLarge => Some(431),
            NotImplemented(_) => Some(501),
            VersionNotSupported => Some(505),
            ClientIo(_) => None,
            NoBackend | Connect(_) | BackendIo(_) | BackendClosed | BadResponse(_) => Some(502),
            BackendTimeout => Some(504),
            Overloaded => Some(503),
        }
    }

    /// Classifies a backend I/O error: timeouts become [`ProxyError::BackendTimeout`].
    pub fn backend_io(e: io::Error) -> Self {
        if is_timeout(&e) {
            ProxyError::BackendTimeout
        } else {
            ProxyError::BackendIo(e)
        }
    }

    /// Classifies a client I/O error: timeouts become [`ProxyError::ClientTimeout`].
    pub fn client_io(e: io::Error) -> Self {
        if is_timeout(&e) {
            ProxyError::ClientTimeout
        } else {
            ProxyError::ClientIo(e)
        }
    }
}

/// True when an I/O error is a timeout (glommio reports `TimedOut`; a
/// non-blocking socket may say `WouldBlock`).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error_source() {
        assert_eq!(ProxyError::HeaderTooLarge.status(), Some(431));
        assert_eq!(ProxyError::BackendTimeout.status(), Some(504));
        assert_eq!(ProxyError::NoBackend.status(), Some(502));
        assert_eq!(ProxyError::ClientIo(io::Error::other("x")).status(), None);
        assert_eq!(ProxyError::NoBackend.source_side(), ErrorSource::Internal);
        assert_eq!(
            ProxyError::backend_io(io::Error::from(io::ErrorKind::TimedOut)).status(),
            Some(504)
        );
    }
}
