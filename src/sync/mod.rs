//! The node agent inside `outpost run`: enrols with the control plane, polls for its signed
//! desired state, fetches, verifies and installs the bundles it names, swaps the routing table
//! atomically, and reports per-app health on every poll.
//!
//! Owns: the node key and enrolment record, the last applied desired state on disk, the
//! poll/backoff loop and the health report.
//! Must not: serve tenant traffic or trust anything the control plane sends without checking it:
//! desired states are verified against the pinned control-plane key, bundles against the node's
//! own release trust policy. See `docs/rollout.md`.
//!
//! # Layout
//! - [`Setup::prepare`] runs before any port is bound: pinned keys, node key, enrolment record,
//!   token, the last applied desired state. Its errors are config errors.
//! - [`spawn`] starts the agent once the listeners are up ([`agent`]).
//! - [`apply`] plans a desired state and builds routing tables; [`health`] reads the metrics for
//!   the report; [`backoff`] times retries and logs; [`files`] keeps the agent's files.
//! - [`pipeline`] is the one install-and-load-check pipeline: the agent runs it for every
//!   release, and so do `outpost bundle install` and the config bundles at start and on SIGHUP.
#![forbid(unsafe_code)]

pub mod agent;
pub mod apply;
pub mod backoff;
pub mod files;
pub mod health;
pub mod pipeline;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::archive::Limits;
use crate::bundle::desired::{self, DesiredState};
use crate::bundle::request_auth::Role;
use crate::bundle::sign::{TrustPolicy, VerifyingKey};
use crate::control::client::{Client, ClientError};
use crate::ops::config::ControlPlaneConfig;
use crate::ops::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::app::LoadedApp;
use crate::serve::{HostPattern, ServeState};
use crate::store::{Release, Store};

/// Why the agent could not start (at `outpost run` start) or do part of its work.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("node key {}: {problem}", path.display())]
    NodeKey { path: PathBuf, problem: String },
    #[error("{}: {problem}", path.display())]
    Record { path: PathBuf, problem: String },
    /// `key` is the config key path (`control_plane.key[1]`).
    #[error("{key}: {problem}")]
    PinnedKey { key: String, problem: String },
    #[error("control_plane.token_file {}: {problem}", path.display())]
    Token { path: PathBuf, problem: String },
    #[error(
        "control_plane: this node is not enrolled with {url} yet and has no enrolment token; \
         set control_plane.token or control_plane.token_file (an operator creates one with \
         `outpost token`)"
    )]
    NotEnrolled { url: String },
    #[error("control_plane.ca {}: {source}", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control_plane: {0}")]
    Client(#[from] ClientError),
}

/// Everything the agent needs that can be checked before the daemon binds a port.
#[derive(Debug)]
pub struct Setup {
    pub client: Client,
    pub node_id: String,
    pub keys: Vec<VerifyingKey>,
    pub enrolment: Option<files::Enrolment>,
    /// Only read when not enrolled.
    pub token: Option<String>,
    /// The last applied desired state (signature checked against the pinned keys; not its
    /// expiry: a restarted node keeps serving its last verified state).
    pub applied: Option<DesiredState>,
    pub state_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub poll_interval: std::time::Duration,
    /// One control-plane request; bundle downloads scale it with their size.
    pub request_timeout: std::time::Duration,
    /// How `oci://` bundle sources reach their registries (`[registry]`).
    pub registry: crate::ops::config::RegistryConfig,
}

impl Setup {
    /// Reads (and on first start creates) the agent's files under `state_dir`.
    pub fn prepare(
        cp: &ControlPlaneConfig,
        node_name: String,
        state_dir: &Path,
    ) -> Result<Self, SyncError> {
        let keys = files::pinned_keys(&cp.keys)?;
        let ca = match &cp.ca {
            Some(p) => Some((
                p.display().to_string(),
                std::fs::read(p).map_err(|source| SyncError::Ca {
                    path: p.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        let (key, created) = files::load_or_create_node_key(state_dir)?;
        let node_id = key.id().to_string();
        if created {
            tracing::info!(node = %node_id, path = %state_dir.join(files::NODE_KEY_FILE).display(), "created the node key");
        } else {
            tracing::info!(node = %node_id, "node key loaded");
        }
        let enrolment = files::read_enrolment(state_dir)?.filter(|e| {
            let ours = e.node == node_id;
            if !ours {
                tracing::warn!(recorded = %e.node, node = %node_id, "enrolment record is for another node key; enrolling again");
            } else if !cp
                .urls
                .iter()
                .any(|u| e.url.trim_end_matches('/') == u.trim_end_matches('/'))
            {
                tracing::warn!(enrolled_with = %e.url, url = %cp.url, "enrolled with another control-plane URL; keeping the enrolment");
            }
            ours
        });
        let token = if enrolment.is_none() {
            let t = files::read_token(cp.token.as_deref(), cp.token_file.as_ref())?;
            if t.is_none() {
                return Err(SyncError::NotEnrolled {
                    url: cp.url.clone(),
                });
            }
            t
        } else {
            None
        };
        let applied = match files::read_desired(state_dir)? {
            Some(bytes) => match desired::open(&bytes, &keys) {
                Ok(s) if s.node == node_id => Some(s),
                Ok(s) => {
                    tracing::warn!(for_node = %s.node, node = %node_id, "saved desired state is for another node; ignoring it");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "saved desired state does not verify under the pinned keys; ignoring it");
                    None
                }
            },
            None => None,
        };
        let client = Client::new(
            &cp.url,
            key,
            Role::Node,
            ca.as_ref().map(|(p, pem)| (p.as_str(), pem.as_slice())),
            cp.request_timeout,
        )?
        .with_replicas(&cp.urls[1..])?;
        let mut labels = cp.labels.clone();
        labels.insert("arch".into(), std::env::consts::ARCH.into());
        labels.insert("os".into(), std::env::consts::OS.into());
        Ok(Self {
            client,
            node_id,
            keys,
            enrolment,
            token,
            applied,
            state_dir: state_dir.to_owned(),
            name: cp.name.clone().unwrap_or(node_name),
            labels,
            poll_interval: cp.poll_interval,
            request_timeout: cp.request_timeout,
            registry: Default::default(),
        })
    }

    /// Host patterns for `app` from the last applied desired state (none: every host), or
    /// `None` when that state does not name it.
    pub fn applied_hosts(&self, app: &str) -> Option<Vec<HostPattern>> {
        let entry = self.applied.as_ref()?.apps.iter().find(|a| a.app == app)?;
        Some(apply::hosts_of(entry).unwrap_or_else(|e| {
            tracing::warn!(%app, error = %e, "saved desired state has invalid hosts; answering every host");
            vec![HostPattern::Any]
        }))
    }
}

/// A store release the daemon serves at start and the agent manages from then on.
#[derive(Debug)]
pub struct Managed {
    pub release: Release,
    pub app: LoadedApp,
    pub hosts: Vec<HostPattern>,
}

/// What the agent works with once the daemon serves.
#[derive(Debug)]
pub struct Parts {
    pub setup: Setup,
    pub store: Arc<Store>,
    pub policy: Arc<TrustPolicy>,
    pub limits: Limits,
    pub runtime: Arc<Runtime>,
    pub metrics: Metrics,
    pub serve: Arc<ServeState>,
    /// Config `[[app]]` apps: always served, never touched by the agent.
    pub fixed: Vec<(Vec<HostPattern>, LoadedApp)>,
    /// The store releases among `fixed` (config bundles), for `outpost_app_release_info`.
    pub fixed_releases: Vec<Release>,
    /// Store apps named by config `[[app]]` bundles: kept in the store even when the desired
    /// state does not name them.
    pub config_store_apps: BTreeSet<String>,
    pub managed: Vec<Managed>,
    /// Config reloads (SIGHUP): new config apps and trust policy for the agent to build its
    /// routing table around.
    pub reloads: tokio::sync::mpsc::UnboundedReceiver<ConfigReload>,
    /// Called after every routing swap the agent makes, so the daemon can tell systemd the new
    /// app counts (`STATUS=`); `None` outside systemd.
    pub on_swap: Option<OnSwap>,
}

/// A config reload handed to the agent (it owns the routing table while it runs): the new
/// `[[app]]` apps and trust policy. The agent answers on `done` — `Err` with the reason when the
/// new apps conflict with the ones it serves (the old table and config then stay in force).
#[derive(Debug)]
pub struct ConfigReload {
    pub fixed: Vec<(Vec<HostPattern>, LoadedApp)>,
    pub fixed_releases: Vec<Release>,
    pub config_store_apps: BTreeSet<String>,
    pub policy: Arc<TrustPolicy>,
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// A callback run after each [`ServeState::swap_router`] by the agent. It reads the table it
/// needs from the `ServeState` itself, so a late call never reports an older table.
#[derive(Clone)]
pub struct OnSwap(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for OnSwap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnSwap")
    }
}

/// Starts the agent; it stops when `stop` turns true (or its sender is dropped).
pub fn spawn(
    parts: Parts,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(agent::Agent::new(parts).run(stop))
}
