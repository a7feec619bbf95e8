//! Routing: request host + path → component.
//!
//! Owns: host patterns (`*`, `*.example.com`, exact names) and the choice of component: the most
//! specific host pattern first (exact > wildcard subdomain > any), then the longest path prefix.
//! Conflicts (the same host pattern and prefix claimed twice) are refused when the table is built.
//! Must not: execute anything or know about listeners.

use std::sync::Arc;

use crate::bundle::manifest::route_matches;
use crate::runtime::app::LoadedApp;
use crate::runtime::component::AppComponent;

/// A host name pattern an app answers: `*`, `*.example.com` (strict subdomains), an exact name
/// or an IP literal — the same grammar as `allowed_outbound_hosts` hosts.
pub use crate::runtime::outbound::HostPattern;

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
struct Entry {
    host: HostPattern,
    prefix: String,
    component: Arc<AppComponent>,
}

/// An immutable routing table; swapped whole when apps change.
#[derive(Debug, Default)]
pub struct Router {
    /// Sorted: most specific host first, then longest prefix; first match wins.
    entries: Vec<Entry>,
    apps: Vec<(Vec<HostPattern>, LoadedApp)>,
}

impl Router {
    /// Builds the table from apps and the hosts each answers.
    pub fn new(apps: Vec<(Vec<HostPattern>, LoadedApp)>) -> Result<Self, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (hosts, app) in &apps {
            for host in hosts {
                for rc in &app.components {
                    for prefix in &rc.routes {
                        if let Some(other) = entries
                            .iter()
                            .find(|e| e.host == *host && e.prefix == *prefix)
                        {
                            return Err(format!(
                                "route conflict: host {host:?} path {prefix} is claimed by both {} and {}",
                                other.component.label, rc.component.label
                            ));
                        }
                        entries.push(Entry {
                            host: host.clone(),
                            prefix: prefix.clone(),
                            component: rc.component.clone(),
                        });
                    }
                }
            }
        }
        entries.sort_by(|a, b| {
            specificity(&b.host)
                .cmp(&specificity(&a.host))
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Ok(Self { entries, apps })
    }

    /// The component for `host` (from the URI authority or `Host` header, port allowed) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<AppComponent>> {
        let host = host.map(normalise_host).unwrap_or_default();
        self.entries
            .iter()
            .find(|e| host_matches(&e.host, &host) && route_matches(&e.prefix, path))
            .map(|e| &e.component)
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
}
