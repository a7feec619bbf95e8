//! Outbound-network grants: Spin-style `allowed_outbound_hosts` patterns
//! (`scheme://host[:port]`) and the per-component [`OutboundPolicy`] built from them.
//!
//! Owns: parsing patterns (and host patterns, which the daemon config reuses for app `hosts`),
//! their canonical display, the allow/deny decision for a (scheme, host, port), and the decision
//! for the address a request actually connects to: loopback, link-local, private and
//! unique-local addresses only when a grant names the address or the component opted in with
//! `allow_private_outbound` ([`OutboundPolicy::allows_addr`]).
//! Must not: resolve names, open connections or look at request paths — the outbound HTTP hook
//! asks this module before it sends and the connector (`runtime::connect`) for every address it
//! connects to; an empty policy denies everything.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest DNS name (RFC 1035), without the trailing dot.
const MAX_DNS_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
const MAX_DNS_LABEL: usize = 63;

/// Which URL schemes a pattern allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemePattern {
    Http,
    Https,
    /// `*`: http or https.
    Any,
}

/// Which hosts a pattern allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`: every host, names and addresses alike.
    Any,
    /// One DNS name, lowercase, without a trailing dot.
    Exact(String),
    /// `*.example.com`: any name strictly below the suffix (stored without `*.`), not the
    /// suffix itself — granting a subdomain wildcard should not silently grant the apex.
    Subdomains(String),
    Ipv4(Ipv4Addr),
    /// Written `[v6]` in patterns.
    Ipv6(Ipv6Addr),
}

/// Which ports a pattern allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortPattern {
    /// No port written: the default port of the scheme actually used (80 http, 443 https).
    Default,
    /// `:*`
    Any,
    Exact(u16),
}

/// What is wrong with a pattern or host; displayed after the quoted input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundProblem {
    #[error("the scheme is missing")]
    MissingScheme,
    #[error("unknown scheme {0:?} (only http, https and * are supported)")]
    UnknownScheme(String),
    #[error("a path is not allowed here")]
    Path,
    #[error("a query is not allowed here")]
    Query,
    #[error("a fragment is not allowed here")]
    Fragment,
    #[error("user info (user@) is not allowed here")]
    UserInfo,
    #[error("the host is empty")]
    EmptyHost,
    #[error("a wildcard must be the whole host (*) or its first label (*.example.com)")]
    MisplacedWildcard,
    #[error("{0:?} is not a valid IPv4 address")]
    InvalidIpv4(String),
    #[error("{0:?} is not a valid IPv6 address")]
    InvalidIpv6(String),
    #[error("an IPv6 address must be written in brackets, like [::1]")]
    UnbracketedIpv6,
    #[error("non-ASCII host; use its punycode (xn--) form")]
    NonAsciiHost,
    #[error(
        "{0:?} is not a valid host name (letters, digits, '-', '_' and dots; labels of 1-63 characters)"
    )]
    InvalidHostName(String),
    #[error("invalid port {0:?}; expected a number from 1 to 65535 or *")]
    InvalidPort(String),
}

/// A rejected `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {problem}; expected scheme://host[:port]")]
pub struct OutboundPatternError {
    pub input: String,
    pub problem: OutboundProblem,
}

/// One `allowed_outbound_hosts` entry, e.g. `https://api.example.com`, `http://*.internal:8080`
/// or `*://*:*` (allow everything).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OutboundPattern {
    scheme: SchemePattern,
    host: HostPattern,
    port: PortPattern,
}

// === impl OutboundPattern ===

impl OutboundPattern {
    pub fn new(scheme: SchemePattern, host: HostPattern, port: PortPattern) -> Self {
        Self { scheme, host, port }
    }

    pub fn scheme(&self) -> SchemePattern {
        self.scheme
    }

    pub fn host(&self) -> &HostPattern {
        &self.host
    }

    pub fn port(&self) -> PortPattern {
        self.port
    }

    /// Whether a request to `scheme://host[:port]` is allowed. `host` may carry a trailing dot,
    /// IPv6 brackets and any letter case; `port` `None` means the scheme's default port.
    /// Schemes other than http and https are never allowed.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let Some(default_port) = default_port(scheme) else {
            return false;
        };
        let scheme_ok = match self.scheme {
            SchemePattern::Any => true,
            SchemePattern::Http => scheme.eq_ignore_ascii_case("http"),
            SchemePattern::Https => scheme.eq_ignore_ascii_case("https"),
        };
        let port = port.unwrap_or(default_port);
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Default => port == default_port,
            PortPattern::Exact(p) => port == p,
        };
        scheme_ok && port_ok && self.host.matches(host)
    }
}

impl FromStr for OutboundPattern {
    type Err = OutboundPatternError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_pattern(input).map_err(|problem| OutboundPatternError {
            input: crate::base::units::quote(input),
            problem,
        })
    }
}

fn parse_pattern(input: &str) -> Result<OutboundPattern, OutboundProblem> {
    let (scheme, rest) = input
        .split_once("://")
        .ok_or(OutboundProblem::MissingScheme)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => SchemePattern::Http,
        "https" => SchemePattern::Https,
        "*" => SchemePattern::Any,
        "" => return Err(OutboundProblem::MissingScheme),
        _ => {
            return Err(OutboundProblem::UnknownScheme(crate::base::units::quote(
                scheme,
            )));
        }
    };
    // Order matters: "a@b/c" should be reported as a path, the larger misunderstanding.
    if rest.contains('/') {
        return Err(OutboundProblem::Path);
    }
    if rest.contains('?') {
        return Err(OutboundProblem::Query);
    }
    if rest.contains('#') {
        return Err(OutboundProblem::Fragment);
    }
    if rest.contains('@') {
        return Err(OutboundProblem::UserInfo);
    }
    let (host, port) = split_host_port(rest)?;
    let host = HostPattern::parse(host)?;
    let port = match port {
        None => PortPattern::Default,
        Some("*") => PortPattern::Any,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => PortPattern::Exact(n),
            _ => {
                return Err(OutboundProblem::InvalidPort(crate::base::units::quote(p)));
            }
        },
    };
    Ok(OutboundPattern { scheme, host, port })
}

/// Splits `host[:port]`, keeping `[v6]` brackets on the host.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), OutboundProblem> {
    if s.starts_with('[') {
        let end = s
            .find(']')
            .ok_or_else(|| OutboundProblem::InvalidIpv6(crate::base::units::quote(s)))?;
        let (host, after) = s.split_at(end + 1);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(OutboundProblem::InvalidIpv6(crate::base::units::quote(s))),
            },
        };
    }
    match s.split_once(':') {
        None => Ok((s, None)),
        Some((_, port)) if port.contains(':') => Err(OutboundProblem::UnbracketedIpv6),
        Some((host, port)) => Ok((host, Some(port))),
    }
}

impl fmt::Display for OutboundPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            SchemePattern::Http => "http",
            SchemePattern::Https => "https",
            SchemePattern::Any => "*",
        };
        write!(f, "{scheme}://{}", self.host)?;
        match self.port {
            PortPattern::Default => Ok(()),
            PortPattern::Any => f.write_str(":*"),
            PortPattern::Exact(p) => write!(f, ":{p}"),
        }
    }
}

impl serde::Serialize for OutboundPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OutboundPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

// === impl HostPattern ===

impl HostPattern {
    /// Parses `*`, `*.example.com`, an exact DNS name, an IPv4 literal or a bracketed IPv6
    /// literal. Names are lowercased and lose a trailing dot.
    pub fn parse(s: &str) -> Result<Self, OutboundProblem> {
        if s.is_empty() {
            return Err(OutboundProblem::EmptyHost);
        }
        if s == "*" {
            return Ok(Self::Any);
        }
        if let Some(inner) = s.strip_prefix('[') {
            let addr = inner
                .strip_suffix(']')
                .and_then(|a| a.parse::<Ipv6Addr>().ok())
                .ok_or_else(|| OutboundProblem::InvalidIpv6(crate::base::units::quote(s)))?;
            return Ok(Self::Ipv6(addr));
        }
        if s.contains(':') {
            return Err(OutboundProblem::UnbracketedIpv6);
        }
        if !s.is_ascii() {
            return Err(OutboundProblem::NonAsciiHost);
        }
        if let Some(suffix) = s.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(OutboundProblem::MisplacedWildcard);
            }
            return Ok(Self::Subdomains(dns_name(suffix)?));
        }
        if s.contains('*') {
            return Err(OutboundProblem::MisplacedWildcard);
        }
        // All digits and dots reads as an address; refusing non-canonical forms like "127.1"
        // here keeps a pattern from meaning something different to us and to the resolver.
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let trimmed = s.strip_suffix('.').unwrap_or(s);
            return trimmed
                .parse::<Ipv4Addr>()
                .map(Self::Ipv4)
                .map_err(|_| OutboundProblem::InvalidIpv4(crate::base::units::quote(s)));
        }
        dns_name(s).map(Self::Exact)
    }

    /// Whether `host` (any case, optional trailing dot, optional IPv6 brackets) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match self {
            Self::Any => !host.is_empty(),
            Self::Exact(name) => host.eq_ignore_ascii_case(name),
            Self::Subdomains(suffix) => {
                // Compare bytes: slicing `host` by the suffix length could split a character.
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                h.len() > s.len() + 1
                    && h[h.len() - s.len() - 1] == b'.'
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            Self::Ipv4(addr) => unbracketed.parse::<Ipv4Addr>().is_ok_and(|a| a == *addr),
            Self::Ipv6(addr) => unbracketed.parse::<Ipv6Addr>().is_ok_and(|a| a == *addr),
        }
    }
}

/// Validates a DNS name and returns it lowercased without a trailing dot.
fn dns_name(s: &str) -> Result<String, OutboundProblem> {
    let invalid = || OutboundProblem::InvalidHostName(crate::base::units::quote(s));
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > MAX_DNS_NAME {
        return Err(invalid());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_DNS_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(invalid());
        }
    }
    Ok(name.to_ascii_lowercase())
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(name) => f.write_str(name),
            Self::Subdomains(suffix) => write!(f, "*.{suffix}"),
            Self::Ipv4(addr) => write!(f, "{addr}"),
            Self::Ipv6(addr) => write!(f, "[{addr}]"),
        }
    }
}

// === impl OutboundPolicy ===

/// A component's outbound grants. Empty means deny all, which is the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundPolicy {
    patterns: Vec<OutboundPattern>,
    /// `allow_private_outbound`: granted names may resolve to non-public addresses.
    private: bool,
}

impl OutboundPolicy {
    pub fn new(patterns: Vec<OutboundPattern>) -> Self {
        Self {
            patterns,
            private: false,
        }
    }

    /// With `allow`, a granted host may connect to non-public addresses (see
    /// [`is_non_public`]) even when no grant names the address itself.
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.private = allow;
        self
    }

    pub fn deny_all() -> Self {
        Self::default()
    }

    pub fn patterns(&self) -> &[OutboundPattern] {
        &self.patterns
    }

    /// True when nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern allows `scheme://host[:port]`.
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        self.patterns.iter().any(|p| p.allows(scheme, host, port))
    }

    /// Whether the scheme and authority of `uri` are allowed; a URI without a scheme or host is
    /// not.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        match (uri.scheme_str(), uri.host()) {
            (Some(scheme), Some(host)) => self.allows(scheme, host, uri.port_u16()),
            _ => false,
        }
    }

    /// Whether a request already allowed by [`Self::allows_uri`] may connect to `addr` on
    /// `port` (the port it connects to). Public addresses may; a non-public one (loopback,
    /// link-local, private, unique-local — [`is_non_public`]) only when the component opted in
    /// or a grant names that very address (`http://127.0.0.1:8080`, `https://[fd00::1]`) —
    /// `*` and host names do not, so a granted name that resolves (or is rebound) to a local
    /// address does not reach the node's or the LAN's services.
    pub fn allows_addr(&self, scheme: &str, addr: IpAddr, port: u16) -> bool {
        if self.private || !is_non_public(addr) {
            return true;
        }
        let addr = canonical(addr);
        self.patterns.iter().any(|p| {
            let named = match p.host {
                HostPattern::Ipv4(a) => IpAddr::V4(a) == addr,
                HostPattern::Ipv6(a) => canonical(IpAddr::V6(a)) == addr,
                _ => false,
            };
            named && p.allows(scheme, &addr.to_string(), Some(port))
        })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is the IPv4 address it carries: the kernel
/// connects to that.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses that reach this machine or its local networks rather than the internet: loopback
/// (`127.0.0.0/8`, `::1`), unspecified (`0.0.0.0`, `::`, which connect to the local host),
/// link-local (`169.254.0.0/16` — cloud metadata services live there — and `fe80::/10`),
/// private (`10/8`, `172.16/12`, `192.168/16`), shared address space (`100.64.0.0/10`, carrier
/// NAT) and unique-local (`fc00::/7`), in IPv4-mapped IPv6 form too.
pub fn is_non_public(addr: IpAddr) -> bool {
    match canonical(addr) {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_link_local()
                || a.is_private()
                || a.is_broadcast()
                || (o0 == 100 && (o1 & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || (first & 0xffc0) == 0xfe80
                || (first & 0xfe00) == 0xfc00
                // IPv4-compatible (deprecated) `::a.b.c.d`: some stacks still route it as IPv4.
                || (a.segments()[..6] == [0; 6] && is_non_public(IpAddr::V4(Ipv4Addr::from(
                    (u32::from(a.segments()[6]) << 16) | u32::from(a.segments()[7]),
                ))))
        }
    }
}

impl FromIterator<OutboundPattern> for OutboundPolicy {
    fn from_iter<I: IntoIterator<Item = OutboundPattern>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> OutboundPattern {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn problem(s: &str) -> OutboundProblem {
        s.parse::<OutboundPattern>().expect_err(s).problem
    }

    #[test]
    fn exact_host_with_default_port() {
        let p = pat("https://api.example.com");
        assert!(p.allows("https", "api.example.com", None));
        assert!(p.allows("https", "api.example.com", Some(443)));
        assert!(!p.allows("https", "api.example.com", Some(8443)));
        assert!(!p.allows("http", "api.example.com", None));
        assert!(!p.allows("https", "example.com", None));
        assert!(!p.allows("https", "evil-api.example.com", None));
        assert!(!p.allows("https", "api.example.com.evil.net", None));
    }

    #[test]
    fn host_comparison_ignores_case_and_trailing_dot() {
        let p = pat("https://API.Example.COM.");
        assert_eq!(p.to_string(), "https://api.example.com");
        assert!(p.allows("HTTPS", "Api.EXAMPLE.com.", None));
    }

    #[test]
    fn subdomain_wildcard_excludes_the_apex() {
        let p = pat("http://*.internal:8080");
        assert!(p.allows("http", "db.internal", Some(8080)));
        assert!(p.allows("http", "a.b.INTERNAL.", Some(8080)));
        assert!(!p.allows("http", "internal", Some(8080)));
        assert!(!p.allows("http", ".internal", Some(8080)));
        assert!(!p.allows("http", "xinternal", Some(8080)));
        assert!(!p.allows("http", "db.internal", None));
        // Multi-byte hosts are compared bytewise without slicing inside a character.
        assert!(!p.allows("http", "éinternal", Some(8080)));
    }

    #[test]
    fn port_rules() {
        let any = pat("https://example.com:*");
        assert!(any.allows("https", "example.com", Some(1)));
        assert!(any.allows("https", "example.com", None));
        let exact = pat("http://example.com:8080");
        assert!(exact.allows("http", "example.com", Some(8080)));
        assert!(!exact.allows("http", "example.com", None));
        // An explicit default port is the same as none.
        let http = pat("http://example.com");
        assert!(http.allows("http", "example.com", Some(80)));
        assert!(!http.allows("http", "example.com", Some(443)));
    }

    #[test]
    fn scheme_wildcard_uses_the_default_port_of_the_scheme_in_use() {
        let p = pat("*://example.com");
        assert!(p.allows("http", "example.com", None));
        assert!(p.allows("http", "example.com", Some(80)));
        assert!(p.allows("https", "example.com", Some(443)));
        assert!(!p.allows("http", "example.com", Some(443)));
        assert!(!p.allows("https", "example.com", Some(80)));
        assert!(!p.allows("ftp", "example.com", None));
    }

    #[test]
    fn allow_all() {
        let p = pat("*://*:*");
        assert_eq!(p.to_string(), "*://*:*");
        assert!(p.allows("http", "anything.example", Some(1)));
        assert!(p.allows("https", "10.0.0.1", None));
        assert!(p.allows("https", "[::1]", Some(8443)));
        assert!(!p.allows("gopher", "example.com", None));
        assert!(!p.allows("https", "", None));
    }

    #[test]
    fn ip_literals() {
        let v4 = pat("http://10.0.0.1:8080");
        assert!(v4.allows("http", "10.0.0.1", Some(8080)));
        assert!(!v4.allows("http", "10.0.0.2", Some(8080)));
        let v6 = pat("https://[2001:DB8::1]");
        assert_eq!(v6.to_string(), "https://[2001:db8::1]");
        assert!(v6.allows("https", "[2001:db8::1]", None));
        assert!(v6.allows("https", "2001:db8:0::1", None));
        assert!(!v6.allows("https", "[2001:db8::2]", None));
        let v6_port = pat("http://[::1]:*");
        assert!(v6_port.allows("http", "[::1]", Some(9999)));
    }

    #[test]
    fn display_round_trips_canonically() {
        for s in [
            "https://api.example.com",
            "http://*.internal:8080",
            "https://*:*",
            "*://*",
            "http://10.0.0.1:80",
            "https://[::1]:8443",
        ] {
            assert_eq!(pat(s).to_string(), s);
            assert_eq!(pat(&pat(s).to_string()), pat(s));
        }
        assert_eq!(
            pat("HTTPS://Example.com").to_string(),
            "https://example.com"
        );
    }

    #[test]
    fn rejections() {
        use OutboundProblem as P;
        assert_eq!(problem("example.com"), P::MissingScheme);
        assert_eq!(problem("://example.com"), P::MissingScheme);
        assert!(matches!(problem("ftp://example.com"), P::UnknownScheme(s) if s == "ftp"));
        assert_eq!(problem("https://example.com/api"), P::Path);
        assert_eq!(problem("https://example.com/"), P::Path);
        assert_eq!(problem("https://example.com?x=1"), P::Query);
        assert_eq!(problem("https://example.com#top"), P::Fragment);
        assert_eq!(problem("https://user@example.com"), P::UserInfo);
        assert_eq!(problem("https://"), P::EmptyHost);
        assert_eq!(problem("https://:443"), P::EmptyHost);
        assert_eq!(problem("https://a.*.com"), P::MisplacedWildcard);
        assert_eq!(problem("https://*example.com"), P::MisplacedWildcard);
        assert_eq!(problem("https://*.*.com"), P::MisplacedWildcard);
        assert!(matches!(problem("https://127.1"), P::InvalidIpv4(_)));
        assert!(matches!(problem("https://999.0.0.1"), P::InvalidIpv4(_)));
        assert!(matches!(problem("https://[::g]"), P::InvalidIpv6(_)));
        assert!(matches!(problem("https://[::1"), P::InvalidIpv6(_)));
        assert!(matches!(problem("https://[::1]x"), P::InvalidIpv6(_)));
        assert_eq!(problem("https://::1"), P::UnbracketedIpv6);
        assert_eq!(problem("https://bücher.de"), P::NonAsciiHost);
        assert!(matches!(
            problem("https://exa mple.com"),
            P::InvalidHostName(_)
        ));
        assert!(matches!(problem("https://a..b"), P::InvalidHostName(_)));
        assert!(matches!(problem("https://-a.com"), P::InvalidHostName(_)));
        assert!(matches!(problem("https://*."), P::InvalidHostName(_)));
        let long_label = format!("https://{}.com", "a".repeat(64));
        assert!(matches!(problem(&long_label), P::InvalidHostName(_)));
        assert!(matches!(
            problem("https://example.com:0"),
            P::InvalidPort(_)
        ));
        assert!(matches!(
            problem("https://example.com:65536"),
            P::InvalidPort(_)
        ));
        assert!(matches!(problem("https://example.com:"), P::InvalidPort(_)));
        assert!(matches!(
            problem("https://example.com:+80"),
            P::InvalidPort(_)
        ));
        assert!(matches!(
            problem("https://example.com:80..90"),
            P::InvalidPort(_)
        ));
    }

    #[test]
    fn rejection_messages_quote_the_input_and_the_expected_form() {
        let err = "https://example.com/api"
            .parse::<OutboundPattern>()
            .expect_err("path");
        assert_eq!(
            err.to_string(),
            "\"https://example.com/api\": a path is not allowed here; expected scheme://host[:port]"
        );
    }

    #[test]
    fn policy_denies_by_default_and_checks_uris() {
        let empty = OutboundPolicy::deny_all();
        assert!(empty.is_empty());
        assert!(!empty.allows("https", "example.com", None));

        let policy: OutboundPolicy = ["https://api.example.com", "http://[::1]:8080"]
            .into_iter()
            .map(pat)
            .collect();
        assert!(!policy.is_empty());
        let uri = |s: &str| s.parse::<http::Uri>().expect("test uri");
        assert!(policy.allows_uri(&uri("https://api.example.com/v1?q=1")));
        assert!(policy.allows_uri(&uri("https://API.example.com:443/")));
        assert!(!policy.allows_uri(&uri("http://api.example.com/")));
        assert!(policy.allows_uri(&uri("http://[::1]:8080/x")));
        assert!(!policy.allows_uri(&uri("http://[::1]/x")));
        assert!(!policy.allows_uri(&uri("/relative/only")));
    }

    #[test]
    fn non_public_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        for a in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
        ] {
            assert!(is_non_public(ip(a)), "{a}");
        }
        for a in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_non_public(ip(a)), "{a}");
        }
    }

    #[test]
    fn private_addresses_need_a_grant_naming_them_or_the_opt_in() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        let named: OutboundPolicy = ["http://127.0.0.1:8080", "https://[fd00::1]"]
            .into_iter()
            .map(pat)
            .collect();
        assert!(named.allows_addr("http", ip("127.0.0.1"), 8080));
        assert!(named.allows_addr("http", ip("::ffff:127.0.0.1"), 8080));
        assert!(
            !named.allows_addr("http", ip("127.0.0.1"), 9090),
            "another port"
        );
        assert!(
            !named.allows_addr("https", ip("127.0.0.1"), 8080),
            "another scheme"
        );
        assert!(!named.allows_addr("http", ip("127.0.0.2"), 8080));
        assert!(named.allows_addr("https", ip("fd00::1"), 443));
        assert!(
            named.allows_addr("http", ip("93.184.215.14"), 80),
            "public is fine"
        );

        // A name or `*` grants the host, not whatever local address it resolves to.
        let names: OutboundPolicy = ["http://api.example.com:*", "*://*:*"]
            .into_iter()
            .map(pat)
            .collect();
        for a in ["127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "fd12::3"] {
            assert!(!names.allows_addr("http", ip(a), 8080), "{a}");
        }
        assert!(names.allows_addr("http", ip("1.1.1.1"), 8080));
        let opted_in = names.allow_private(true);
        assert!(opted_in.allows_addr("http", ip("10.0.0.5"), 8080));
    }

    #[test]
    fn serde_round_trip_uses_the_canonical_string() {
        let p = pat("http://*.internal:8080");
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(json, "\"http://*.internal:8080\"");
        let back: OutboundPattern = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, p);
        let err = serde_json::from_str::<OutboundPattern>("\"ftp://x\"").expect_err("bad");
        assert!(err.to_string().contains("unknown scheme"), "{err}");
    }
}
