//! The route table: which pool serves a request, by Host and path prefix.
//!
//! Owns the validation of `[[routes]]` entries (already stripped of their
//! pool names by the caller) into an immutable [`RouteTable`], and the
//! per-request [`RouteTable::lookup`]. Does not own the config file, pool
//! names or the default pool: a lookup that finds nothing returns `None` and
//! the caller uses its default pool. Pure: no I/O, no allocation per lookup.
//!
//! ## Matching
//!
//! A route has a host pattern, a path prefix, or both. The first route in
//! file order whose every given part matches wins.
//!
//! - `host = "api.example.com"`: that name exactly, ignoring ASCII case.
//! - `host = "*.example.com"`: one or more labels followed by
//!   `.example.com` (`a.example.com`, `a.b.example.com`), never
//!   `example.com` itself. The suffix may be a single label (`*.internal`).
//! - `host = "[2001:db8::1]"`: an IPv6 literal, compared as an address, so
//!   `[2001:DB8:0::1]` matches too.
//! - no host: any host, and a request without a Host header.
//! - `path_prefix = "/v1/"`: request paths starting with those bytes, raw
//!   (no percent-decoding, no dot-segment removal). `/v1` does not match
//!   `/v1/` and `/v1x` matches `/v1`: end a prefix with `/` to mean a
//!   directory.
//!
//! The request's Host loses its `:port` (also after a bracketed IPv6
//! literal) and one trailing dot (`api.example.com.` is `api.example.com`,
//! as nginx does: both name the same DNS node). A Host that is not a name or
//! an IPv6 literal matches only host-less routes.
//!
//! ## Speed
//!
//! Tables of fewer than [`INDEX_MIN_ROUTES`] routes are scanned in order
//! over precomputed lowercase patterns. Larger tables also index their exact
//! hosts: a sorted array of (hash of the lowercase host, route index), hashed
//! case-insensitively in place. A lookup takes the first matching exact-host
//! route from the index, then scans the other routes (wildcards, IPv6
//! literals, host-less) in file order only up to that route's index, so the
//! earliest match still wins whatever its kind.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv6Addr;

/// Routes from this count on index their exact hosts by hash; below it a
/// linear scan of a few short comparisons beats hashing the Host.
pub const INDEX_MIN_ROUTES: usize = 16;

/// The longest DNS name (RFC 1035 §2.3.4), without its trailing dot.
const MAX_NAME_LEN: usize = 253;

/// The longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// One `[[routes]]` entry as the config file gives it, its pool already
/// resolved by the caller to an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Exact name, `*.`-wildcard or bracketed IPv6 literal; `None` matches
    /// any host.
    pub host: Option<String>,
    /// Leading bytes of the request path, starting with `/`; `None` matches
    /// any path.
    pub path_prefix: Option<String>,
    /// The pool that serves matching requests, returned by
    /// [`RouteTable::lookup`].
    pub pool: usize,
}

/// A `[[routes]]` entry that cannot be used. Each variant names the entry's
/// 0-based index in file order, so the caller can point at the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Neither `host` nor `path_prefix` is given: a route matching
    /// everything belongs in the default pool.
    #[error("routes[{index}]: needs a host, a path_prefix or both")]
    Unconditional {
        /// The entry's index.
        index: usize,
    },
    /// The `host` pattern is not a name, wildcard or IPv6 literal.
    #[error("routes[{index}]: host {host:?}: {reason}")]
    Host {
        /// The entry's index.
        index: usize,
        /// The pattern as written.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `path_prefix` can never match a request path.
    #[error("routes[{index}]: path_prefix {prefix:?}: {reason}")]
    PathPrefix {
        /// The entry's index.
        index: usize,
        /// The prefix as written.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Same host pattern and path prefix as an earlier entry, which would
    /// always win: the later one could never be used.
    #[error(
        "routes[{index}] duplicates routes[{first}]: {}",
        describe(host, path_prefix)
    )]
    Duplicate {
        /// The later entry's index.
        index: usize,
        /// The earlier entry's index.
        first: usize,
        /// The later entry's host as written.
        host: Option<String>,
        /// The later entry's path prefix as written.
        path_prefix: Option<String>,
    },
}

impl RouteError {
    /// The position of the route at fault in the `[[routes]]` list.
    pub fn index(&self) -> usize {
        match self {
            RouteError::Unconditional { index }
            | RouteError::Host { index, .. }
            | RouteError::PathPrefix { index, .. }
            | RouteError::Duplicate { index, .. } => *index,
        }
    }
}

/// `host "a" path_prefix "/v1/"`, with `any host` / `any path` for absent
/// parts, for [`RouteError::Duplicate`].
fn describe(host: &Option<String>, path_prefix: &Option<String>) -> String {
    let host = match host {
        Some(h) => format!("host {h:?}"),
        None => "any host".to_owned(),
    };
    match path_prefix {
        Some(p) => format!("{host} path_prefix {p:?}"),
        None => format!("{host} any path"),
    }
}

/// A validated host pattern, normalised so equal patterns compare equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostPattern {
    /// Any host, or none.
    Any,
    /// One name, lowercase, without a trailing dot.
    Exact(Box<[u8]>),
    /// `*.example.com` kept as `.example.com`, lowercase.
    Suffix(Box<[u8]>),
    /// `[2001:db8::1]`, compared as an address.
    Ipv6(Ipv6Addr),
}

/// What makes two routes the same: a normalised host and a path prefix.
type RouteKey = (HostPattern, Option<Box<[u8]>>);

/// One validated route.
#[derive(Debug, Clone)]
struct Route {
    host: HostPattern,
    /// `None`: any path.
    path_prefix: Option<Box<[u8]>>,
    pool: usize,
}

/// The host part of a request's Host, as lookups compare it.
#[derive(Clone, Copy)]
enum RequestHost<'a> {
    /// No Host, or one that is neither a name nor an IPv6 literal.
    Unmatchable,
    /// A name without port or trailing dot, in the client's case.
    Name(&'a [u8]),
    /// A bracketed IPv6 literal.
    Ipv6(Ipv6Addr),
}

/// Exact hosts by hash, for tables of [`INDEX_MIN_ROUTES`] routes or more.
#[derive(Debug, Clone)]
struct ExactIndex {
    /// (hash of the lowercase host, route index), sorted by both, so the
    /// routes of one host come in file order.
    exact: Box<[(u64, usize)]>,
    /// Indices of every route whose host is not exact, ascending.
    others: Box<[usize]>,
}

/// Validated routes in file order: maps a request's Host and path to a pool.
/// Immutable once built; cheap to share behind the config's `Arc`.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Box<[Route]>,
    /// Present from [`INDEX_MIN_ROUTES`] routes on.
    index: Option<ExactIndex>,
}

impl RouteTable {
    /// Validates `routes` (in file order) into a table. Host patterns are
    /// lowercased; the first problem found is returned, naming its entry.
    pub fn new(routes: Vec<RouteSpec>) -> Result<RouteTable, RouteError> {
        Self::build(routes, INDEX_MIN_ROUTES)
    }

    /// [`RouteTable::new`] with the index threshold as a parameter, so tests
    /// can compare indexed and scanned lookups on the same table.
    fn build(specs: Vec<RouteSpec>, index_min: usize) -> Result<RouteTable, RouteError> {
        let mut routes = Vec::with_capacity(specs.len());
        let mut seen: HashMap<RouteKey, usize> = HashMap::new();
        for (index, spec) in specs.into_iter().enumerate() {
            if spec.host.is_none() && spec.path_prefix.is_none() {
                return Err(RouteError::Unconditional { index });
            }
            let host = match &spec.host {
                None => HostPattern::Any,
                Some(h) => parse_host_pattern(h).map_err(|reason| RouteError::Host {
                    index,
                    host: h.clone(),
                    reason,
                })?,
            };
            let path_prefix = match &spec.path_prefix {
                None => None,
                Some(p) => Some(
                    parse_path_prefix(p).map_err(|reason| RouteError::PathPrefix {
                        index,
                        prefix: p.clone(),
                        reason,
                    })?,
                ),
            };
            let key = (host.clone(), path_prefix.clone());
            if let Some(&first) = seen.get(&key) {
                return Err(RouteError::Duplicate {
                    index,
                    first,
                    host: spec.host,
                    path_prefix: spec.path_prefix,
                });
            }
            seen.insert(key, index);
            routes.push(Route {
                host,
                path_prefix,
                pool: spec.pool,
            });
        }
        let index = (routes.len() >= index_min).then(|| ExactIndex::new(&routes));
        Ok(RouteTable {
            routes: routes.into_boxed_slice(),
            index,
        })
    }

    /// The pool of the first route matching `host` (the Host header's value,
    /// `None` when the request has none) and `path`, or `None` for the
    /// default pool. Allocates nothing.
    ///
    /// `path` is the request path; the whole origin-form target (query
    /// included) gives the same answer, since no prefix contains `?`, but
    /// [`path_of`] cuts the query for callers that want to be explicit.
    pub fn lookup(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        let host = request_host(host);
        let found = match &self.index {
            None => self.routes.iter().position(|r| r.matches(host, path)),
            Some(index) => index.lookup(&self.routes, host, path),
        };
        found.map(|i| self.routes[i].pool)
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes: every request goes to the default pool.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Route {
    fn matches(&self, host: RequestHost<'_>, path: &[u8]) -> bool {
        self.host.matches(host) && self.path_matches(path)
    }

    fn path_matches(&self, path: &[u8]) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix))
    }
}

impl HostPattern {
    fn matches(&self, host: RequestHost<'_>) -> bool {
        match (self, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Exact(name), RequestHost::Name(h)) => h.eq_ignore_ascii_case(name),
            (HostPattern::Suffix(suffix), RequestHost::Name(h)) => {
                // `h` is longer than `suffix`, so a label precedes it.
                h.len() > suffix.len() && {
                    let (labels, tail) = h.split_at(h.len() - suffix.len());
                    tail.eq_ignore_ascii_case(suffix) && has_no_empty_label(labels)
                }
            }
            (HostPattern::Ipv6(addr), RequestHost::Ipv6(a)) => *addr == a,
            _ => false,
        }
    }
}

impl ExactIndex {
    fn new(routes: &[Route]) -> ExactIndex {
        let mut exact = Vec::new();
        let mut others = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            match &route.host {
                HostPattern::Exact(name) => exact.push((hash_lowercase(name), i)),
                _ => others.push(i),
            }
        }
        exact.sort_unstable();
        ExactIndex {
            exact: exact.into_boxed_slice(),
            others: others.into_boxed_slice(),
        }
    }

    /// The index of the first matching route: the first matching exact-host
    /// route from the hash index, then any earlier match among the others.
    fn lookup(&self, routes: &[Route], host: RequestHost<'_>, path: &[u8]) -> Option<usize> {
        let mut best = routes.len();
        if let RequestHost::Name(name) = host {
            let hash = hash_lowercase(name);
            let start = self.exact.partition_point(|&(h, _)| h < hash);
            for &(h, i) in &self.exact[start..] {
                if h != hash {
                    break;
                }
                if routes[i].matches(host, path) {
                    best = i;
                    break;
                }
            }
        }
        for &i in self.others.iter() {
            if i >= best {
                break;
            }
            if routes[i].matches(host, path) {
                best = i;
                break;
            }
        }
        (best < routes.len()).then_some(best)
    }
}

/// FNV-1a over the ASCII-lowercase bytes of `name`, without copying it.
/// Collisions only cost comparisons among the config's own hosts, so a
/// client cannot make a lookup slower by choosing its Host.
fn hash_lowercase(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The request path of an origin-form target: everything before the first
/// `?`. `/v1/x?y=1` gives `/v1/x`.
pub fn path_of(target: &[u8]) -> &[u8] {
    match memchr::memchr(b'?', target) {
        Some(i) => &target[..i],
        None => target,
    }
}

/// Splits a Host header value into what routes compare: no surrounding
/// whitespace, no port, no trailing dot.
fn request_host(raw: Option<&[u8]>) -> RequestHost<'_> {
    let Some(raw) = raw else {
        return RequestHost::Unmatchable;
    };
    let raw = raw.trim_ascii();
    if let Some(rest) = raw.strip_prefix(b"[") {
        let Some(close) = memchr::memchr(b']', rest) else {
            return RequestHost::Unmatchable;
        };
        if !matches!(rest.get(close + 1), None | Some(b':')) {
            return RequestHost::Unmatchable;
        }
        return match std::str::from_utf8(&rest[..close]).map(str::parse::<Ipv6Addr>) {
            Ok(Ok(addr)) => RequestHost::Ipv6(addr),
            _ => RequestHost::Unmatchable,
        };
    }
    let name = match memchr::memchr(b':', raw) {
        Some(i) => &raw[..i],
        None => raw,
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        RequestHost::Unmatchable
    } else {
        RequestHost::Name(name)
    }
}

/// True when `labels` (what precedes a wildcard's suffix, e.g. `a.b` of
/// `a.b.example.com`) is one or more non-empty labels.
fn has_no_empty_label(labels: &[u8]) -> bool {
    !labels.is_empty()
        && labels.first() != Some(&b'.')
        && labels.last() != Some(&b'.')
        && !labels.windows(2).any(|w| w == b"..")
}

/// Validates and normalises a `host` pattern.
fn parse_host_pattern(host: &str) -> Result<HostPattern, &'static str> {
    if host.is_empty() {
        return Err("is empty; omit host to match any host");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return Err("an IPv6 literal ends with ']' and takes no port");
        };
        return inner
            .parse::<Ipv6Addr>()
            .map(HostPattern::Ipv6)
            .map_err(|_| "not a valid IPv6 literal");
    }
    if host == "*" {
        return Err("\"*\" alone is not a pattern; omit host to match any host");
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(suffix) => (true, suffix),
        None => (false, host),
    };
    if name.contains('*') {
        return Err("'*' is allowed only as a whole first label, as in \"*.example.com\"");
    }
    if name.contains(':') {
        return Err(
            "has a ':'; routes ignore the request's port, and IPv6 literals go in brackets",
        );
    }
    if name.ends_with('.') {
        return Err("ends with '.'; write it without (a request's trailing dot is ignored)");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("has a label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("has a character other than letters, digits, '-', '_' and '.'");
        }
    }
    let lower = name.to_ascii_lowercase().into_bytes();
    Ok(if wildcard {
        let mut suffix = Vec::with_capacity(lower.len() + 1);
        suffix.push(b'.');
        suffix.extend_from_slice(&lower);
        HostPattern::Suffix(suffix.into_boxed_slice())
    } else {
        HostPattern::Exact(lower.into_boxed_slice())
    })
}

/// Validates a `path_prefix`: it must be able to match an origin-form path.
fn parse_path_prefix(prefix: &str) -> Result<Box<[u8]>, &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with '/'");
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("has a space, control or non-ASCII character (write it percent-encoded)");
    }
    if prefix.contains(['?', '#']) {
        return Err("has a '?' or '#'; prefixes match the path, before the query");
    }
    Ok(prefix.as_bytes().into())
}

impl fmt::Display for RouteTable {
    /// One line per route: `routes[i]: host ... path_prefix ... -> pool p`,
    /// hosts in their normalised form, for logs and the admin API.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.routes.iter().enumerate() {
            write!(f, "routes[{i}]: ")?;
            match &r.host {
                HostPattern::Any => write!(f, "any host")?,
                HostPattern::Exact(n) => write!(f, "host {:?}", String::from_utf8_lossy(n))?,
                HostPattern::Suffix(s) => write!(f, "host \"*{}\"", String::from_utf8_lossy(s))?,
                HostPattern::Ipv6(a) => write!(f, "host \"[{a}]\"")?,
            }
            match &r.path_prefix {
                Some(p) => write!(f, " path_prefix {:?}", String::from_utf8_lossy(p))?,
                None => write!(f, " any path")?,
            }
            writeln!(f, " -> pool {}", r.pool)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: Option<&str>, path_prefix: Option<&str>, pool: usize) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_owned),
            path_prefix: path_prefix.map(str::to_owned),
            pool,
        }
    }

    fn table(specs: &[(Option<&str>, Option<&str>)]) -> RouteTable {
        let specs = specs
            .iter()
            .enumerate()
            .map(|(i, &(h, p))| spec(h, p, i))
            .collect();
        RouteTable::new(specs).expect("valid routes")
    }

    fn look(t: &RouteTable, host: &str, path: &str) -> Option<usize> {
        t.lookup(Some(host.as_bytes()), path.as_bytes())
    }

    fn err(specs: Vec<RouteSpec>) -> String {
        RouteTable::new(specs)
            .expect_err("invalid routes")
            .to_string()
    }

    #[test]
    fn exact_host() {
        let t = table(&[(Some("api.example.com"), None)]);
        assert_eq!(look(&t, "api.example.com", "/"), Some(0));
        assert_eq!(look(&t, "www.example.com", "/"), None);
        assert_eq!(look(&t, "x.api.example.com", "/"), None);
        assert_eq!(look(&t, "api.example.co", "/"), None);
        assert_eq!(t.lookup(None, b"/"), None);
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_bare_suffix() {
        let t = table(&[(Some("*.example.com"), None)]);
        assert_eq!(look(&t, "a.example.com", "/"), Some(0));
        assert_eq!(look(&t, "a.b.c.example.com", "/"), Some(0));
        assert_eq!(look(&t, "example.com", "/"), None);
        assert_eq!(look(&t, ".example.com", "/"), None);
        assert_eq!(look(&t, "a..example.com", "/"), None);
        assert_eq!(look(&t, "a..b.example.com", "/"), None);
        assert_eq!(look(&t, "aexample.com", "/"), None);
        assert_eq!(look(&t, "a.example.com.evil", "/"), None);
    }

    #[test]
    fn single_label_wildcard_suffix() {
        let t = table(&[(Some("*.internal"), None)]);
        assert_eq!(look(&t, "db.internal", "/"), Some(0));
        assert_eq!(look(&t, "internal", "/"), None);
    }

    #[test]
    fn host_ignores_case_port_and_one_trailing_dot() {
        let t = table(&[
            (Some("API.Example.com"), None),
            (Some("*.EXAMPLE.org"), None),
        ]);
        for host in [
            "api.example.com",
            "API.EXAMPLE.COM",
            "api.example.com:8080",
            "Api.Example.Com.:443",
            "api.example.com.",
            "api.example.com:",
            " api.example.com ",
        ] {
            assert_eq!(look(&t, host, "/"), Some(0), "{host}");
        }
        assert_eq!(look(&t, "api.example.com..", "/"), None);
        assert_eq!(look(&t, "X.Example.ORG:80", "/"), Some(1));
        assert_eq!(look(&t, "x.example.org.", "/"), Some(1));
        assert_eq!(look(&t, "example.org.", "/"), None);
        assert_eq!(look(&t, ":8080", "/"), None);
    }

    #[test]
    fn ipv6_literal_compared_as_address() {
        let t = table(&[(Some("[2001:DB8::1]"), None), (Some("[::1]"), Some("/a"))]);
        assert_eq!(look(&t, "[2001:db8::1]", "/"), Some(0));
        assert_eq!(look(&t, "[2001:db8:0:0::1]:8080", "/"), Some(0));
        assert_eq!(look(&t, "[::1]:8080", "/a/b"), Some(1));
        assert_eq!(look(&t, "[::1]", "/b"), None);
        assert_eq!(look(&t, "[::2]", "/a"), None);
        assert_eq!(look(&t, "[::1]x", "/a"), None);
        assert_eq!(look(&t, "[::1", "/a"), None);
        assert_eq!(look(&t, "::1", "/a"), None);
    }

    #[test]
    fn ipv4_host_is_a_name() {
        let t = table(&[(Some("10.0.0.1"), None)]);
        assert_eq!(look(&t, "10.0.0.1:8080", "/"), Some(0));
        assert_eq!(look(&t, "10.0.0.10", "/"), None);
    }

    #[test]
    fn path_prefix_with_and_without_host() {
        let t = table(&[
            (Some("api.example.com"), Some("/v1/")),
            (None, Some("/static/")),
        ]);
        assert_eq!(look(&t, "api.example.com", "/v1/users"), Some(0));
        assert_eq!(look(&t, "api.example.com", "/v1/"), Some(0));
        assert_eq!(look(&t, "api.example.com", "/v1"), None);
        assert_eq!(look(&t, "api.example.com", "/V1/users"), None);
        assert_eq!(look(&t, "api.example.com", "/v2/users"), None);
        assert_eq!(look(&t, "www.example.com", "/v1/users"), None);
        assert_eq!(look(&t, "www.example.com", "/static/a.css"), Some(1));
        assert_eq!(look(&t, "api.example.com", "/static/a.css"), Some(1));
        assert_eq!(t.lookup(None, b"/static/a.css"), Some(1));
        assert_eq!(t.lookup(Some(b"[bad"), b"/static/a.css"), Some(1));
        assert_eq!(look(&t, "api.example.com", ""), None);
    }

    #[test]
    fn prefixes_are_raw_bytes() {
        let t = table(&[(None, Some("/v1"))]);
        assert_eq!(look(&t, "h", "/v1x"), Some(0));
        assert_eq!(look(&t, "h", "/v%31/"), None);
    }

    #[test]
    fn query_is_cut_and_never_matters() {
        assert_eq!(path_of(b"/v1/x?y=1"), b"/v1/x");
        assert_eq!(path_of(b"/v1/x"), b"/v1/x");
        assert_eq!(path_of(b"/?"), b"/");
        assert_eq!(path_of(b"?a"), b"");
        let t = table(&[(None, Some("/v1/"))]);
        assert_eq!(look(&t, "h", "/v1?x=/v1/"), None);
        assert_eq!(
            t.lookup(None, path_of(b"/v1?x=/v1/")),
            look(&t, "h", "/v1?x=/v1/")
        );
        assert_eq!(look(&t, "h", "/v1/?x"), Some(0));
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let t = table(&[
            (Some("*.example.com"), Some("/v1/")),
            (Some("api.example.com"), None),
            (None, Some("/")),
            (Some("api.example.com"), Some("/v2/")),
        ]);
        assert_eq!(look(&t, "api.example.com", "/v1/x"), Some(0));
        assert_eq!(look(&t, "api.example.com", "/v2/x"), Some(1));
        assert_eq!(look(&t, "www.example.com", "/v2/x"), Some(2));
        assert_eq!(look(&t, "www.example.net", "/"), Some(2));
    }

    #[test]
    fn pool_is_returned_not_route_index() {
        let t = RouteTable::new(vec![spec(Some("a"), None, 7), spec(Some("b"), None, 7)])
            .expect("valid routes");
        assert_eq!(t.lookup(Some(b"b"), b"/"), Some(7));
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
    }

    #[test]
    fn no_match_and_empty_table() {
        let t = table(&[(Some("a.example.com"), Some("/x"))]);
        assert_eq!(look(&t, "b.example.com", "/x"), None);
        let empty = RouteTable::new(Vec::new()).expect("no routes is valid");
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(look(&empty, "a", "/"), None);
    }

    #[test]
    fn invalid_hosts() {
        let cases = [
            ("", "is empty"),
            ("*", "omit host"),
            ("api.*.com", "'*' is allowed only"),
            ("*api.example.com", "'*' is allowed only"),
            ("*.*.example.com", "'*' is allowed only"),
            ("a*.example.com", "'*' is allowed only"),
            ("*.", "empty label"),
            ("api..example.com", "empty label"),
            (".example.com", "empty label"),
            ("example.com.", "ends with '.'"),
            ("api example.com", "a character other than"),
            ("api/example.com", "a character other than"),
            ("ápi.example.com", "a character other than"),
            ("api.example.com:8080", "has a ':'"),
            ("::1", "has a ':'"),
            ("[::1]:8080", "ends with ']'"),
            ("[::g]", "not a valid IPv6"),
            ("[10.0.0.1]", "not a valid IPv6"),
        ];
        for (host, want) in cases {
            let msg = err(vec![
                spec(Some("ok.example.com"), None, 0),
                spec(Some(host), None, 0),
            ]);
            assert!(msg.starts_with("routes[1]: host "), "{host}: {msg}");
            assert!(msg.contains(want), "{host}: {msg}");
        }
        let long_label = format!("{}.example.com", "a".repeat(64));
        assert!(err(vec![spec(Some(&long_label), None, 0)]).contains("longer than 63"));
        let long_name = ["abcdefghi"; 26].join(".");
        assert!(err(vec![spec(Some(&long_name), None, 0)]).contains("longer than 253"));
    }

    #[test]
    fn invalid_path_prefixes() {
        for (prefix, want) in [
            ("", "must start with '/'"),
            ("v1/", "must start with '/'"),
            ("*", "must start with '/'"),
            ("/a b", "space, control"),
            ("/é", "space, control"),
            ("/a?b", "'?' or '#'"),
            ("/a#b", "'?' or '#'"),
        ] {
            let msg = err(vec![spec(None, Some(prefix), 0)]);
            assert!(
                msg.starts_with("routes[0]: path_prefix "),
                "{prefix}: {msg}"
            );
            assert!(msg.contains(want), "{prefix}: {msg}");
        }
    }

    #[test]
    fn route_needs_a_host_or_a_path_prefix() {
        assert_eq!(
            err(vec![spec(Some("a"), None, 0), spec(None, None, 1)]),
            "routes[1]: needs a host, a path_prefix or both"
        );
    }

    #[test]
    fn duplicates_name_both_entries() {
        let msg = err(vec![
            spec(Some("a"), Some("/v1/"), 0),
            spec(Some("b"), Some("/v1/"), 1),
            spec(Some("b"), None, 1),
            spec(Some("A"), Some("/v1/"), 2),
        ]);
        assert_eq!(
            msg,
            "routes[3] duplicates routes[0]: host \"A\" path_prefix \"/v1/\""
        );
        let msg = err(vec![spec(None, Some("/x"), 0), spec(None, Some("/x"), 1)]);
        assert_eq!(
            msg,
            "routes[1] duplicates routes[0]: any host path_prefix \"/x\""
        );
        let msg = err(vec![
            spec(Some("*.A.b"), None, 0),
            spec(Some("*.a.B"), None, 1),
        ]);
        assert_eq!(
            msg,
            "routes[1] duplicates routes[0]: host \"*.a.B\" any path"
        );
        let msg = err(vec![
            spec(Some("[::1]"), None, 0),
            spec(Some("[0::0:1]"), None, 1),
        ]);
        assert!(msg.starts_with("routes[1] duplicates routes[0]"), "{msg}");
        // A wildcard and an exact name on the same suffix are different routes.
        assert!(
            RouteTable::new(vec![
                spec(Some("*.a.b"), None, 0),
                spec(Some("a.b"), None, 1)
            ])
            .is_ok()
        );
    }

    #[test]
    fn display_lists_normalised_routes() {
        let t = table(&[(Some("*.A.com"), Some("/v1/")), (Some("[0::1]"), None)]);
        assert_eq!(
            t.to_string(),
            "routes[0]: host \"*.a.com\" path_prefix \"/v1/\" -> pool 0\n\
             routes[1]: host \"[::1]\" any path -> pool 1\n"
        );
    }

    /// A small deterministic generator (xorshift), so the comparison below
    /// covers many tables without a dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    const HOSTS: [&str; 10] = [
        "a.example.com",
        "b.example.com",
        "A.Example.Com",
        "x.a.example.com",
        "example.com",
        "c.example.net",
        "[::1]",
        "[2001:db8::1]",
        "10.0.0.1",
        "db.internal",
    ];
    const PATTERNS: [&str; 5] = [
        "*.example.com",
        "*.a.example.com",
        "*.internal",
        "*.net",
        "*.com",
    ];
    const PREFIXES: [&str; 5] = ["/", "/v1/", "/v1/x", "/v2/", "/static/"];
    const PATHS: [&str; 7] = [
        "/",
        "/v1/",
        "/v1/xy",
        "/v2/a?q",
        "/static/a.css",
        "/other",
        "",
    ];

    /// Indexed lookups give the same answer as a scan in file order, for
    /// tables mixing exact, wildcard, IPv6 and host-less routes.
    #[test]
    fn index_agrees_with_linear_scan() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let n = 1 + rng.below(40);
            let mut specs: Vec<RouteSpec> = Vec::new();
            while specs.len() < n {
                let host = match rng.below(4) {
                    0 => None,
                    1 => Some(rng.pick(&PATTERNS)),
                    _ => Some(rng.pick(&HOSTS)),
                };
                let prefix = (host.is_none() || rng.below(2) == 0).then(|| rng.pick(&PREFIXES));
                specs.push(spec(host, prefix, specs.len()));
                if RouteTable::new(specs.clone()).is_err() {
                    specs.pop();
                }
            }
            let scanned = RouteTable::build(specs.clone(), usize::MAX).expect("valid");
            let indexed = RouteTable::build(specs, 0).expect("valid");
            assert!(scanned.index.is_none() && indexed.index.is_some());
            for host in HOSTS
                .iter()
                .chain(["a.example.com.:80", "z.example.com", "nope"].iter())
            {
                for path in PATHS {
                    let want = scanned.lookup(Some(host.as_bytes()), path.as_bytes());
                    let got = indexed.lookup(Some(host.as_bytes()), path.as_bytes());
                    assert_eq!(got, want, "{host} {path}\n{scanned}");
                }
            }
            for path in PATHS {
                assert_eq!(
                    indexed.lookup(None, path.as_bytes()),
                    scanned.lookup(None, path.as_bytes())
                );
            }
        }
    }

    #[test]
    fn large_tables_are_indexed() {
        let specs: Vec<RouteSpec> = (0..INDEX_MIN_ROUTES)
            .map(|i| spec(Some(&format!("h{i}.example.com")), None, i))
            .collect();
        let t = RouteTable::new(specs[..INDEX_MIN_ROUTES - 1].to_vec()).expect("valid");
        assert!(t.index.is_none());
        let t = RouteTable::new(specs).expect("valid");
        assert!(t.index.is_some());
        assert_eq!(look(&t, "H7.example.com:1", "/"), Some(7));
        assert_eq!(look(&t, "h99.example.com", "/"), None);
    }
}
