//! The control-plane HTTP API's wire types, shared by the server ([`super`]), the node agent
//! (`sync`) and the operator commands (`outpost push`, `outpost rollout`, `outpost token`).
//!
//! Owns: JSON request and response bodies, the endpoint paths, and label selectors.
//! Must not: do I/O or hold state. See `docs/rollout.md` for the endpoints and their auth.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundle::Digest;
pub use crate::ops::config::valid_label;

/// Node endpoints (signed by the node key; enrolment also carries a one-time token).
pub const ENROLL: &str = "/v1/enroll";
pub const SYNC: &str = "/v1/sync";
/// The longest a control plane holds a sync open for a node that sent `Prefer: wait=N`
/// (RFC 7240) and has nothing new: below the 60 s idle timeout load balancers commonly have.
/// The answer carries `Preference-Applied: wait=N`, which tells the node its control plane
/// holds syncs (an older one answers at once, and the node keeps to its poll interval).
pub const MAX_SYNC_HOLD: std::time::Duration = std::time::Duration::from_secs(55);
/// `GET /v1/bundles/<digest>` (node or operator) and `PUT` (operator upload).
pub const BUNDLES: &str = "/v1/bundles/";
/// Operator endpoints.
pub const TOKENS: &str = "/v1/tokens";
pub const NODES: &str = "/v1/nodes";
pub const ROLLOUTS: &str = "/v1/rollouts";
/// Unauthenticated: liveness and the control plane's public desired-state key.
pub const HEALTH: &str = "/v1/health";
pub const KEY: &str = "/v1/key";
/// `AppHealth::source` of a release whose bytes came from the control plane itself.
pub const SOURCE_CONTROL_PLANE: &str = "control-plane";
/// Header carrying the base64 release signature file with a bundle upload.
pub const BUNDLE_SIGNATURE_HEADER: &str = "outpost-bundle-signature";

/// `POST /v1/enroll`: a new node presents its one-time token and public key. The request is
/// signed by that key (proof of possession); the node id is the key's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// `outpost-public-key-v1 <id> <base64>`.
    pub public_key: String,
    /// Human-readable name (host name); not unique, not trusted.
    pub name: String,
    /// Labels the node reports about itself (`arch`, `os`, config `labels`); the token's labels
    /// win where both set a key.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node: String,
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/sync` body: the node's health report. The response is the node's signed desired
/// state (200, `ETag: "<sequence>"`), or 304 when `If-None-Match` names the current sequence.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// Sequence of the desired state the node has applied.
    pub applied_sequence: Option<u64>,
    pub outpost_version: String,
    pub uptime_secs: u64,
    /// Every app the node serves now.
    pub apps: Vec<AppHealth>,
    /// Releases of the applied desired state the node could not install or load.
    #[serde(default)]
    pub failed: Vec<FailedRelease>,
}

/// Health of one app's active release on a node, counted since that release became active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppHealth {
    pub app: String,
    pub version: String,
    pub digest: Digest,
    /// Unix seconds when this release started serving on the node.
    pub active_since: u64,
    /// Requests answered by this release, and those answered 5xx.
    pub requests: u64,
    pub errors: u64,
    /// Requests that failed before the guest ran (instantiation).
    #[serde(default)]
    pub instantiate_failures: u64,
    /// Upper bound of the histogram bucket holding the 99th percentile, in milliseconds.
    pub latency_p99_ms: Option<f64>,
    /// Where the node got this release's bundle bytes: a mirror's URL, or `control-plane`.
    /// Absent when it did not download them (already in its store, or active since before the
    /// node's last start) and from nodes of the release before mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A release the node was told to run but could not (download, verification, install or load
/// failed); the rollout treats it as unhealthy at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRelease {
    pub app: String,
    pub digest: Digest,
    pub error: String,
}

/// `POST /v1/tokens`: one-time enrolment tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Labels every node enrolled with these tokens gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ttl_secs: u64,
    pub count: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub tokens: Vec<String>,
    pub expires: u64,
}

/// `GET /v1/nodes` entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub enrolled: u64,
    pub last_seen: Option<u64>,
    pub revoked: bool,
    /// Heard from within the control plane's `node_offline_after`.
    #[serde(default)]
    pub online: bool,
    pub applied_sequence: Option<u64>,
    pub apps: Vec<AppHealth>,
    pub failed: Vec<FailedRelease>,
}

/// `PUT /v1/bundles/<digest>` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadResponse {
    pub digest: Digest,
    pub app: String,
    pub version: String,
    pub size: u64,
}

/// `POST /v1/rollouts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    pub digest: Digest,
    /// Label selector: `all`, or `key=value[,key=value...]` (every pair must match).
    pub group: String,
    /// Cumulative percentages of the group, strictly increasing, the last one 100.
    pub waves: Vec<u32>,
    /// A wave whose 5xx share of requests goes above this fails the rollout (0.0..=1.0).
    pub max_error_rate: f64,
    /// How long a wave must stay healthy after all its nodes run the release.
    pub bake_secs: u64,
    /// Host patterns the app answers on each node (empty: every host).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Mirrors of the bundle file (`https://…`, or `http://…`), which nodes try in order before
    /// the control plane (`DesiredApp::sources`). Left out when empty, so a push without
    /// mirrors still reaches a control plane of the release before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The bundle's signature file (base64), for a release whose bytes the control plane does
    /// not hold (`outpost push --mirror-only`): the control plane keeps only the signature file,
    /// whose signed document gives it the digest and size, and its nodes fetch the bytes from
    /// `sources`. Needs at least one source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused,
    Succeeded,
    /// A wave failed its health gate; every node it touched went back to its previous release.
    RolledBack,
    /// Stopped by an operator; touched nodes went back to their previous release.
    Aborted,
}

impl RolloutState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::RolledBack | Self::Aborted)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    Pending,
    /// Nodes told to switch; waiting for them to report the release active.
    Deploying,
    /// Every node runs it; waiting out the bake time under the error-rate gate.
    Baking,
    Passed,
    Failed,
}

/// `GET /v1/rollouts/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: u64,
    pub app: String,
    pub version: String,
    pub digest: Digest,
    pub group: String,
    pub state: RolloutState,
    pub max_error_rate: f64,
    pub bake_secs: u64,
    pub created: u64,
    pub finished: Option<u64>,
    /// Why it rolled back or was aborted.
    pub reason: Option<String>,
    pub waves: Vec<WaveStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// Cumulative percentage of the group.
    pub percent: u32,
    /// Nodes in this wave (not counting earlier waves).
    pub nodes: Vec<String>,
    pub state: WaveState,
    /// Unix milliseconds.
    pub started_ms: Option<u64>,
    /// When every node of the wave (and the waves before) reported the release active.
    pub converged_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Nodes of the wave running the release now.
    pub active: usize,
    /// Requests and 5xx answers of the release on every node up to this wave.
    pub requests: u64,
    pub errors: u64,
    /// Nodes of the wave that were offline when it started: assigned, not waited for.
    #[serde(default)]
    pub offline: Vec<String>,
}

/// Error bodies: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// A label selector: `all` (or empty) matches every node; otherwise `k=v` pairs, comma
/// separated, all of which must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(pub BTreeMap<String, String>);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let mut m = BTreeMap::new();
        if s.is_empty() || s == "all" {
            return Ok(Self(m));
        }
        for pair in s.split(',') {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("group {s:?}: {pair:?} is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            if !valid_label(k) || !valid_label(v) {
                return Err(format!(
                    "group {s:?}: {pair:?}: keys and values are 1-63 of [A-Za-z0-9._-]"
                ));
            }
            if m.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(format!("group {s:?}: key {k:?} given twice"));
            }
        }
        Ok(Self(m))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("arch", "aarch64"), ("site", "lab")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        assert!(Selector::parse("all").unwrap().matches(&labels));
        assert!(Selector::parse("arch=aarch64").unwrap().matches(&labels));
        assert!(
            Selector::parse("arch=aarch64, site=lab")
                .unwrap()
                .matches(&labels)
        );
        assert!(!Selector::parse("site=dc").unwrap().matches(&labels));
        assert!(Selector::parse("arch").is_err());
        assert!(Selector::parse("a=b,a=c").is_err());
        assert!(Selector::parse("a=b c").is_err());
    }
}
