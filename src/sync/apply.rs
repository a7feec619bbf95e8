//! Applying a desired state, the parts without I/O: what each entry needs (keep, install, or
//! report as failed), which apps go, and the routing table for config apps plus the apps the
//! control plane assigns.
//!
//! Must not: fetch, install or load — the agent does that for the `Install` steps.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use super::health::Counts;
use crate::bundle::Digest;
use crate::bundle::desired::{DesiredApp, DesiredState};
use crate::control::api::FailedRelease;
use crate::runtime::app::LoadedApp;
use crate::serve::router::parse_host_pattern;
use crate::serve::{HostPattern, Router};
use crate::store::Release;

/// One app the agent serves from the store.
#[derive(Debug, Clone)]
pub struct Served {
    pub release: Release,
    pub app: LoadedApp,
    pub hosts: Vec<HostPattern>,
    /// The app's counters when this release started serving.
    pub baseline: Counts,
    /// Unix seconds.
    pub active_since: u64,
    /// Where the bundle's bytes came from when this node fetched them (a mirror's URL, or
    /// `control-plane`); `None` when they were in its store already.
    pub source: Option<String>,
}

/// What one desired entry needs.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    /// This release serves already; only its hosts may change.
    Keep {
        entry: &'a DesiredApp,
        hosts: Vec<HostPattern>,
    },
    /// Install (fetching the bundle if the store lacks it), load, then switch.
    Install {
        entry: &'a DesiredApp,
        hosts: Vec<HostPattern>,
    },
    /// Cannot run (refused before, or its hosts are invalid): whatever serves the app now keeps
    /// serving, and the release is reported failed.
    Fail {
        entry: &'a DesiredApp,
        error: String,
    },
}

/// The steps for `state`, in its (name) order, and the served apps it no longer names.
#[derive(Debug, PartialEq)]
pub struct Plan<'a> {
    pub steps: Vec<Step<'a>>,
    pub remove: Vec<String>,
}

/// Plans `state` against what serves now (`serving`: app → digest) and the releases that failed
/// before (`failed`, app → its failure; a release that failed is not retried until the control
/// plane names another one).
pub fn plan<'a>(
    state: &'a DesiredState,
    serving: &BTreeMap<String, Digest>,
    failed: &BTreeMap<String, FailedRelease>,
) -> Plan<'a> {
    let steps = state
        .apps
        .iter()
        .map(|entry| {
            let hosts = match hosts_of(entry) {
                Ok(h) => h,
                Err(error) => return Step::Fail { entry, error },
            };
            if serving.get(&entry.app) == Some(&entry.digest) {
                return Step::Keep { entry, hosts };
            }
            match failed.get(&entry.app) {
                Some(f) if f.digest == entry.digest => Step::Fail {
                    entry,
                    error: f.error.clone(),
                },
                _ => Step::Install { entry, hosts },
            }
        })
        .collect();
    let named: BTreeSet<&str> = state.apps.iter().map(|a| a.app.as_str()).collect();
    let remove = serving
        .keys()
        .filter(|a| !named.contains(a.as_str()))
        .cloned()
        .collect();
    Plan { steps, remove }
}

/// The entry's host patterns; none means every host.
pub fn hosts_of(entry: &DesiredApp) -> Result<Vec<HostPattern>, String> {
    if entry.hosts.is_empty() {
        return Ok(vec![HostPattern::Any]);
    }
    entry
        .hosts
        .iter()
        .map(|h| parse_host_pattern(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("hosts: {e}"))
}

/// Failures kept for the report: those whose app the new state still names with the same
/// release (a changed release gets a fresh try).
pub fn retain_failures(failed: &mut BTreeMap<String, FailedRelease>, state: &DesiredState) {
    failed.retain(|app, f| {
        state
            .apps
            .iter()
            .any(|a| a.app == *app && a.digest == f.digest)
    });
}

/// The routing table: config apps (`fixed`) and the store apps the control plane assigns. A
/// config app with the name of an assigned app is left out (the control plane's release wins);
/// its name is returned so the caller can say so.
pub fn build_router(
    fixed: &[(Vec<HostPattern>, LoadedApp)],
    served: &BTreeMap<String, Served>,
) -> Result<(Router, Vec<String>), String> {
    let mut shadowed = Vec::new();
    let mut apps: Vec<(Vec<HostPattern>, LoadedApp)> =
        Vec::with_capacity(fixed.len() + served.len());
    for (hosts, app) in fixed {
        if served.contains_key(&app.name) {
            shadowed.push(app.name.clone());
        } else {
            apps.push((hosts.clone(), app.clone()));
        }
    }
    apps.extend(served.values().map(|s| (s.hosts.clone(), s.app.clone())));
    Router::new(apps).map(|r| (r, shadowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app: &str, body: &[u8], hosts: &[&str]) -> DesiredApp {
        DesiredApp {
            app: app.into(),
            tenant: None,
            version: "1.0.0".into(),
            digest: crate::bundle::digest(body),
            size: body.len() as u64,
            signature: String::new(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            sources: Vec::new(),
        }
    }

    fn state(apps: Vec<DesiredApp>) -> DesiredState {
        DesiredState {
            node: "0102030405060708".into(),
            sequence: 2,
            issued: 1,
            expires: 2,
            apps,
        }
    }

    #[test]
    fn plan_keeps_installs_fails_and_removes() {
        let s = state(vec![
            entry("a", b"a1", &["a.example.com"]),
            entry("b", b"b2", &[]),
            entry("c", b"c1", &["bad host"]),
            entry("d", b"d2", &["*.example.com"]),
            entry("e", b"e1", &[]),
        ]);
        let serving: BTreeMap<String, Digest> = [
            ("a", b"a1" as &[u8]),
            ("b", b"b1"),
            ("d", b"d1"),
            ("gone", b"g"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), crate::bundle::digest(v)))
        .collect();
        let mut failed = BTreeMap::new();
        failed.insert(
            "d".to_owned(),
            FailedRelease {
                app: "d".into(),
                digest: crate::bundle::digest(b"d2"),
                error: "signature does not verify".into(),
            },
        );
        failed.insert(
            "e".to_owned(),
            FailedRelease {
                app: "e".into(),
                digest: crate::bundle::digest(b"e0"),
                error: "old failure".into(),
            },
        );
        retain_failures(&mut failed, &s);
        assert_eq!(failed.len(), 1, "e's failure was for another release");
        let p = plan(&s, &serving, &failed);
        assert_eq!(p.remove, ["gone"]);
        assert!(matches!(&p.steps[0], Step::Keep { entry, hosts }
            if entry.app == "a" && hosts == &[parse_host_pattern("a.example.com").unwrap_or(HostPattern::Any)]));
        assert!(matches!(&p.steps[1], Step::Install { entry, hosts }
            if entry.app == "b" && hosts == &[HostPattern::Any]));
        assert!(matches!(&p.steps[2], Step::Fail { entry, error }
            if entry.app == "c" && error.contains("invalid host pattern")));
        assert!(matches!(&p.steps[3], Step::Fail { entry, error }
            if entry.app == "d" && error == "signature does not verify"));
        assert!(matches!(&p.steps[4], Step::Install { entry, .. } if entry.app == "e"));

        // An empty desired state removes every assigned app.
        let empty = state(Vec::new());
        let p = plan(&empty, &serving, &BTreeMap::new());
        assert!(p.steps.is_empty());
        assert_eq!(p.remove.len(), 4);
    }
}
