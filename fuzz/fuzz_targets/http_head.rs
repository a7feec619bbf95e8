//! The front door's decision from a request's head (method, URI, version, headers): refused as the
//! client's fault (the Host / `:authority` rules) or routed to a target of a small fixed table,
//! through `RouteTable::route_request`, the function every listener calls.
//!
//! Input: a request line `METHOD URI VERSION` (`HTTP/0.9`, `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`,
//! `HTTP/3`), then one header per line, `name:value` (a trailing `\r` is dropped, the value's
//! leading blanks too; values may hold any bytes). Lines that make no header name or value are
//! skipped, as hyper would have refused them before the front door.
//!
//! Properties beyond "no panic":
//! - two or more `Host` headers are always refused, as `Duplicate`;
//! - an accepted HTTP/1.1 request has exactly one `Host` header; any accepted request at most one;
//! - the host of an accepted request is the URI's authority or the `Host` header's value, and
//!   there is none only for HTTP/1.0 (0.9) with neither; `Conflict` only for HTTP/2 and HTTP/3;
//! - the decision is deterministic, does not depend on the method (`HEAD` routes as `GET`) nor on
//!   the case of an ASCII host;
//! - a routed request's path is under its route's prefix, and with a `*` route for `/` in the
//!   table every accepted request whose path starts with `/` is routed.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use outpost::bundle::manifest::route_matches;
use outpost::serve::guard::HostError;
use outpost::serve::router::{RouteTable, parse_host_pattern};

/// (host pattern, path prefix); a request routes to an index into this.
const ROUTES: &[(&str, &str)] = &[
    ("a.example", "/"),
    ("a.example", "/api"),
    ("a.example", "/api/v2/"),
    ("*.a.example", "/"),
    ("*.a.example", "/admin"),
    ("*", "/"),
    ("*", "/static"),
    ("b.example", "/b/c"),
    ("127.0.0.1", "/x"),
    ("[::1]", "/"),
    ("xn--bcher-kva.example", "/"),
];

static TABLE: LazyLock<RouteTable<usize>> = LazyLock::new(|| {
    let routes = ROUTES.iter().enumerate().map(|(i, (h, p))| {
        let host = parse_host_pattern(h).expect("fixed host pattern");
        (host, (*p).to_owned(), i)
    });
    RouteTable::new(routes, |_| "fixed").expect("fixed table has no conflicts")
});

struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

fn parse(data: &[u8]) -> Option<Head> {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next()?;
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let mut parts = first.splitn(3, |&b| b == b' ');
    let method = http::Method::from_bytes(parts.next()?).ok()?;
    let uri = http::Uri::try_from(parts.next()?).ok()?;
    let version = match parts.next()? {
        b"HTTP/0.9" => http::Version::HTTP_09,
        b"HTTP/1.0" => http::Version::HTTP_10,
        b"HTTP/1.1" => http::Version::HTTP_11,
        b"HTTP/2" => http::Version::HTTP_2,
        b"HTTP/3" => http::Version::HTTP_3,
        _ => return None,
    };
    let mut headers = Vec::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let start = value
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(value.len());
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(&value[start..]),
        ) else {
            continue;
        };
        headers.push((name, value));
    }
    Some(Head {
        method,
        uri,
        version,
        headers,
    })
}

fn request(head: &Head, method: http::Method) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    for (n, v) in &head.headers {
        req.headers_mut().append(n.clone(), v.clone());
    }
    req
}

fuzz_target!(|data: &[u8]| {
    let Some(head) = parse(data) else {
        return;
    };
    let table = &*TABLE;
    let req = request(&head, head.method.clone());
    let decision = table.route_request(&req);
    assert_eq!(decision, table.route_request(&req), "not deterministic");

    let hosts: Vec<&http::HeaderValue> = req.headers().get_all(http::header::HOST).iter().collect();
    let authority = req.uri().authority().map(|a| a.as_str());
    let is_2_or_3 = matches!(head.version, http::Version::HTTP_2 | http::Version::HTTP_3);
    let is_10_or_09 = matches!(
        head.version,
        http::Version::HTTP_10 | http::Version::HTTP_09
    );
    if hosts.len() >= 2 {
        assert_eq!(
            decision,
            Err(HostError::Duplicate),
            "{} Host headers",
            hosts.len()
        );
    }
    match &decision {
        Err(HostError::Conflict) => assert!(is_2_or_3, "Conflict outside HTTP/2 and HTTP/3"),
        Err(HostError::Missing) => assert!(hosts.is_empty(), "Missing with a Host header"),
        Err(HostError::Invalid) => {
            assert!(
                hosts.len() == 1 && hosts[0].to_str().is_err(),
                "Invalid with a text Host"
            )
        }
        Err(HostError::Duplicate) => assert!(hosts.len() >= 2),
        Ok(d) => {
            assert!(
                hosts.len() <= 1,
                "accepted with {} Host headers",
                hosts.len()
            );
            if head.version == http::Version::HTTP_11 {
                assert_eq!(hosts.len(), 1, "HTTP/1.1 accepted without a Host header");
            }
            match d.host {
                Some(h) => assert!(
                    authority == Some(h)
                        || hosts.first().is_some_and(|v| v.as_bytes() == h.as_bytes()),
                    "host {h:?} is neither the authority {authority:?} nor the Host header"
                ),
                None => assert!(
                    is_10_or_09 && hosts.is_empty() && authority.is_none(),
                    "no host for a request that has one"
                ),
            }
            let path = req.uri().path();
            match d.target {
                Some(&i) => assert!(
                    route_matches(ROUTES[i].1, path),
                    "routed to {:?} for path {path:?}",
                    ROUTES[i]
                ),
                None => assert!(
                    !path.starts_with('/'),
                    "path {path:?} not routed despite `*` `/`"
                ),
            }
            if let Some(h) = d.host.filter(|h| h.is_ascii()) {
                assert_eq!(
                    table.route(Some(&h.to_ascii_uppercase()), path),
                    d.target,
                    "routing depends on the case of {h:?}"
                );
            }
        }
    }

    // The method plays no part: HEAD (and anything else) decides as GET does.
    let get = request(&head, http::Method::GET);
    assert_eq!(
        table.route_request(&get),
        decision,
        "decision depends on the method"
    );
});
