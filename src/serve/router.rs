//! Routing: request host + path → component.
//!
//! Owns: host patterns (`*`, `*.example.com`, exact names) and the choice of component: the most
//! specific host pattern first (exact > wildcard subdomain > any), then an exact route (Spin's
//! `/foo` in a `spin.toml`, `{ exact = "/foo" }` in an `outpost.toml`), then the longest path
//! prefix. Conflicts (the same host pattern and route claimed twice) are refused when the table
//! is built.
//! The decision from a request's head ([`RouteTable::route_request`]: the guard's host rules,
//! then the route) is one pure function, used by every listener and by the `http_head` fuzz target.
//! Must not: execute anything or know about listeners.

use std::sync::Arc;

use super::guard::{self, HostError};
use crate::bundle::manifest::Route;
use crate::runtime::app::LoadedApp;
use crate::runtime::component::AppComponent;

/// A host name pattern an app answers: `*`, `*.example.com` (strict subdomains), an exact name
/// or an IP literal — the same grammar as `allowed_outbound_hosts` hosts.
pub use crate::base::outbound::HostPattern;

/// Exact names and addresses beat subdomain wildcards, which beat `*`.
fn specificity(p: &HostPattern) -> u8 {
    match p {
        HostPattern::Any => 0,
        HostPattern::Subdomains(_) => 1,
        _ => 2,
    }
}

/// `*` also answers requests without any host (HTTP/1.0 without `Host`).
fn host_matches(p: &HostPattern, host: &str) -> bool {
    matches!(p, HostPattern::Any) || p.matches(host)
}

/// Parses a host pattern from config, with an error that says what was expected.
pub fn parse_host_pattern(s: &str) -> Result<HostPattern, String> {
    HostPattern::parse(s.trim()).map_err(|e| {
        format!("invalid host pattern {s:?}: {e}; expected \"*\", \"*.example.com\", a host name or an IP address")
    })
}

#[derive(Debug)]
struct Entry<T> {
    host: HostPattern,
    route: Route,
    target: T,
}

/// The routing rules over any kind of target: host pattern + path prefix → `T`. [`Router`] holds
/// one over components; the fuzz target `http_head` one over plain labels, so it exercises the
/// same choice without compiling wasm.
#[derive(Debug)]
pub struct RouteTable<T> {
    /// Sorted: most specific host first, then exact routes, then longest prefix; first match
    /// wins.
    entries: Vec<Entry<T>>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Builds the table from (host pattern, route, target) triples — a plain `String` route is a
    /// path prefix; the same host pattern and route claimed twice is a conflict, named with
    /// `label` of both targets.
    pub fn new<R: Into<Route>>(
        routes: impl IntoIterator<Item = (HostPattern, R, T)>,
        label: impl Fn(&T) -> &str,
    ) -> Result<Self, String> {
        let mut entries: Vec<Entry<T>> = Vec::new();
        for (host, route, target) in routes {
            let route = route.into();
            if let Some(other) = entries.iter().find(|e| e.host == host && e.route == route) {
                let what = if route.exact { "exact path" } else { "path" };
                return Err(format!(
                    "route conflict: host {host:?} {what} {} is claimed by both {} and {}",
                    route.path,
                    label(&other.target),
                    label(&target)
                ));
            }
            entries.push(Entry {
                host,
                route,
                target,
            });
        }
        entries.sort_by(|a, b| {
            specificity(&b.host)
                .cmp(&specificity(&a.host))
                .then(b.route.exact.cmp(&a.route.exact))
                .then(b.route.path.len().cmp(&a.route.path.len()))
        });
        Ok(Self { entries })
    }

    /// The target for `host` (from the URI authority or `Host` header, port allowed) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let host = host.map(normalise_host).unwrap_or_default();
        self.entries
            .iter()
            .find(|e| host_matches(&e.host, &host) && e.route.matches(path))
            .map(|e| &e.target)
    }

    /// The front door's decision from a request's head alone, before any guest runs: refused as
    /// the client's fault ([`guard::request_host`]'s rules, a 400), or the host the request is
    /// for (`None`: an HTTP/1.0 request without one) and the target it routes to (`None`: 404).
    pub fn route_request<'q, B>(
        &self,
        req: &'q http::Request<B>,
    ) -> Result<HeadDecision<'q, '_, T>, HostError> {
        let host = guard::request_host(req)?;
        Ok(HeadDecision {
            host,
            target: self.route(host, req.uri().path()),
        })
    }
}

/// A request the front door accepted: the host it is for and where it goes.
#[derive(Debug, PartialEq, Eq)]
pub struct HeadDecision<'q, 'r, T> {
    /// `None` only for an HTTP/1.0 (or 0.9) request with neither `Host` nor an absolute URI.
    pub host: Option<&'q str>,
    /// `None`: no app serves this host and path.
    pub target: Option<&'r T>,
}

/// An immutable routing table over loaded apps; swapped whole when apps change.
#[derive(Debug, Default)]
pub struct Router {
    table: RouteTable<Arc<AppComponent>>,
    apps: Vec<(Vec<HostPattern>, LoadedApp)>,
}

impl Router {
    /// Builds the table from apps and the hosts each answers.
    pub fn new(apps: Vec<(Vec<HostPattern>, LoadedApp)>) -> Result<Self, String> {
        let mut routes = Vec::new();
        for (hosts, app) in &apps {
            for host in hosts {
                for rc in &app.components {
                    for route in &rc.routes {
                        routes.push((host.clone(), route.clone(), rc.component.clone()));
                    }
                }
            }
        }
        let table = RouteTable::new(routes, |c: &Arc<AppComponent>| &c.label)?;
        Ok(Self { table, apps })
    }

    /// The component for `host` (from the URI authority or `Host` header, port allowed) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<AppComponent>> {
        self.table.route(host, path)
    }

    /// [`RouteTable::route_request`] over the loaded components.
    pub fn route_request<'q, B>(
        &self,
        req: &'q http::Request<B>,
    ) -> Result<HeadDecision<'q, '_, Arc<AppComponent>>, HostError> {
        self.table.route_request(req)
    }

    pub fn apps(&self) -> impl Iterator<Item = &LoadedApp> {
        self.apps.iter().map(|(_, a)| a)
    }

    pub fn component_count(&self) -> usize {
        self.apps.iter().map(|(_, a)| a.components.len()).sum()
    }
}

/// Lower-cases and strips the port and a trailing dot: `Example.COM.:8080` → `example.com`.
fn normalise_host(h: &str) -> String {
    let h = if let Some(rest) = h.strip_prefix('[') {
        // IPv6 literal: keep what is inside the brackets.
        rest.split(']').next().unwrap_or_default()
    } else {
        h.rsplit_once(':').map_or(h, |(host, _)| host)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let p = parse_host_pattern("*.Example.com").unwrap();
        assert!(host_matches(&p, &normalise_host("a.example.com:8080")));
        assert!(!host_matches(&p, "example.com"));
        assert!(host_matches(&parse_host_pattern("*").unwrap(), ""));
        assert!(parse_host_pattern("exa mple.com").is_err());
        assert!(parse_host_pattern("*.").is_err());
        assert_eq!(normalise_host("Example.COM.:8080"), "example.com");
        assert_eq!(normalise_host("[::1]:80"), "::1");
        let v6 = parse_host_pattern("[::1]").unwrap();
        assert!(host_matches(&v6, &normalise_host("[::1]:8080")));
        assert!(specificity(&parse_host_pattern("a.b").unwrap()) > specificity(&p));
    }

    #[test]
    fn route_request_refuses_then_routes() {
        let routes = [
            ("a.example", "/", "a"),
            ("a.example", "/api", "api"),
            ("*", "/", "any"),
        ]
        .map(|(h, p, t)| (parse_host_pattern(h).unwrap(), p.to_owned(), t));
        let table = RouteTable::new(routes, |t| t).unwrap();
        let req = |v: http::Version, uri: &str, hosts: &[&str]| {
            let mut b = http::Request::builder().version(v).uri(uri);
            for h in hosts {
                b = b.header(http::header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        use http::Version as V;
        let r = req(V::HTTP_11, "/api/x", &["A.example:80"]);
        let d = table.route_request(&r).unwrap();
        assert_eq!((d.host, d.target), (Some("A.example:80"), Some(&"api")));
        let r = req(V::HTTP_11, "/", &["a.example", "a.example"]);
        assert_eq!(table.route_request(&r), Err(HostError::Duplicate));
        let r = req(V::HTTP_10, "/api", &[]);
        let d = table.route_request(&r).unwrap();
        assert_eq!((d.host, d.target), (None, Some(&"any")));
        let r = req(V::HTTP_2, "https://a.example/", &["b.example"]);
        assert_eq!(table.route_request(&r), Err(HostError::Conflict));
        let dup = [("*", "/", "x"), ("*", "/", "y")]
            .map(|(h, p, t)| (parse_host_pattern(h).unwrap(), p.to_owned(), t));
        let err = RouteTable::new(dup, |t| t).unwrap_err();
        assert!(err.contains("claimed by both x and y"), "{err}");
    }

    /// Spin's rules: an exact route beats any wildcard, the longest wildcard prefix beats a
    /// shorter one, and `/...` catches the rest.
    #[test]
    fn exact_routes_beat_prefixes() {
        let any = || parse_host_pattern("*").unwrap();
        let routes = [
            (any(), Route::prefix("/"), "all"),
            (any(), Route::prefix("/one"), "one-wild"),
            (any(), Route::prefix("/one/two"), "two-wild"),
            (any(), Route::exact("/one"), "one-exact"),
            (any(), Route::exact("/one/two/three"), "three-exact"),
        ];
        let table = RouteTable::new(routes, |t| t).unwrap();
        let at = |p: &str| *table.route(None, p).unwrap();
        assert_eq!(at("/one"), "one-exact");
        assert_eq!(at("/one/"), "one-exact");
        assert_eq!(at("/one/x"), "one-wild");
        assert_eq!(at("/one/two"), "two-wild");
        assert_eq!(at("/one/two/three"), "three-exact");
        assert_eq!(at("/one/two/three/four"), "two-wild");
        assert_eq!(at("/onex"), "all");
        assert_eq!(at("/"), "all");
        // An exact route and a prefix of the same path are two routes; the same exact twice
        // is a conflict.
        let dup = [
            (any(), Route::exact("/a"), "x"),
            (any(), Route::prefix("/a"), "y"),
            (any(), Route::exact("/a"), "z"),
        ];
        let err = RouteTable::new(dup, |t| t).unwrap_err();
        assert!(
            err.contains("exact path /a is claimed by both x and z"),
            "{err}"
        );
    }
}
