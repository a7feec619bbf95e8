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

/// A host name pattern an app answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// `*.example.com`: stored as `.example.com`; matches strict subdomains only.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        if s == "*" {
            return Ok(Self::Any);
        }
        let valid = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if let Some(rest) = s.strip_prefix("*.") {
            if valid(rest) {
                return Ok(Self::Suffix(format!(".{rest}")));
            }
        } else if valid(&s) || s.parse::<std::net::IpAddr>().is_ok() {
            return Ok(Self::Exact(s));
        }
        Err(format!(
            "invalid host pattern {s:?}: expected \"*\", \"*.example.com\" or a host name"
        ))
    }

    fn specificity(&self) -> u8 {
        match self {
            Self::Exact(_) => 2,
            Self::Suffix(_) => 1,
            Self::Any => 0,
        }
    }

    /// `host` must already be lower-case without port.
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Suffix(sfx) => host.len() > sfx.len() && host.ends_with(sfx.as_str()),
            Self::Exact(h) => h == host,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Exact(h) => f.write_str(h),
        }
    }
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
                                "route conflict: host {host} path {prefix} is claimed by both {} and {}",
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
            b.host
                .specificity()
                .cmp(&a.host.specificity())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Ok(Self { entries, apps })
    }

    /// The component for `host` (from the URI authority or `Host` header, port allowed) and `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<AppComponent>> {
        let host = host.map(normalise_host).unwrap_or_default();
        self.entries
            .iter()
            .find(|e| e.host.matches(&host) && route_matches(&e.prefix, path))
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
        let p = HostPattern::parse("*.Example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(!p.matches("example.com"));
        assert!(HostPattern::parse("*").unwrap().matches(""));
        assert!(HostPattern::parse("exa mple.com").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert_eq!(normalise_host("Example.COM.:8080"), "example.com");
        assert_eq!(normalise_host("[::1]:80"), "::1");
    }
}
