//! What the control plane does, independent of HTTP: enrolment, sync (reports in, sealed desired
//! state out), bundle uploads, tokens, node listing and revocation, rollouts and the engine tick.
//!
//! Owns: the desired-state key, the in-memory view of every record (loaded from [`Db`] at
//! start, written through on change), per-node desired-state sealing (re-sealed when the node's
//! assignments change or its document passed half its lifetime, with a sequence taken from a
//! persisted global counter), the seen-nonce set, and the typed [`ControlError`] every endpoint
//! maps to one HTTP status.
//! Must not: parse HTTP or authenticate requests (the server verifies signatures before calling
//! in; enrolment gets the already-verified key), or block an async task — every method here is
//! synchronous and the server runs it on the blocking pool.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

use super::api::{
    self, CreateRollout, EnrollRequest, EnrollResponse, NodeInfo, RolloutStatus, Selector,
    SyncReport, TokenRequest, TokenResponse, UploadResponse,
};
use super::config::ControlConfig;
use super::db::{CurrentRelease, Db, DbError, EnrollError, NodeRecord, Sealed, TokenRecord};
use super::rollout::{self, Action, NodeView, Release, Reports, Rollout};
use crate::base::atomic;
use crate::bundle::desired::{self, DesiredState, MAX_APPS, MAX_HOSTS};
use crate::bundle::request_auth::MAX_REQUEST_SKEW;
use crate::bundle::sign::{self, KeyId, SignedDoc, SigningKey, VerifyingKey};
use crate::bundle::{self as bundle_mod, Digest};
use crate::store::install::MAX_SIG_FILE;

/// Most tokens one request makes.
pub const MAX_TOKENS_PER_REQUEST: u32 = 1000;
/// Longest token lifetime: a month. Tokens are bearer secrets; long-lived ones leak.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 24 * 3600;
/// Most labels on a node.
pub const MAX_LABELS: usize = 64;
/// Longest node name (a DNS name).
pub const MAX_NODE_NAME: usize = 253;
/// A reported error message is cut to this many bytes before it is stored.
const MAX_REPORTED_ERROR: usize = 1024;

/// Why a request failed; each variant is one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The client was too slow sending its request (408).
    #[error("{0}")]
    SlowClient(String),
    #[error("{0}")]
    Unavailable(String),
    /// Our fault; the client sees a generic message, the log the detail.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ControlError {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed(_) => 405,
            Self::Conflict(_) => 409,
            Self::TooLarge(_) => 413,
            Self::SlowClient(_) => 408,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
        }
    }

    /// The message sent to the client.
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error; see the control plane's log".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<DbError> for ControlError {
    fn from(e: DbError) -> Self {
        Self::Internal(e.to_string())
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}: {problem}", path.display())]
    Io { path: PathBuf, problem: String },
    #[error("{}: {problem}", path.display())]
    Key { path: PathBuf, problem: String },
    #[error("{} (is another control plane running on this state_dir?)", .0)]
    Db(#[from] DbError),
}

/// What `POST /v1/sync` answers.
#[derive(Debug)]
pub enum SyncReply {
    /// The node has this sequence already (304).
    NotModified(u64),
    /// The sealed envelope (200).
    Desired { sequence: u64, envelope: Vec<u8> },
}

/// Operator commands on a rollout.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    Pause,
    Resume,
    Abort { by: &'a str },
}

/// Everything behind the lock: the records and the counters.
struct Inner {
    db: Db,
    nodes: BTreeMap<String, NodeRecord>,
    rollouts: BTreeMap<u64, Rollout>,
    /// (group, app) → release.
    current: BTreeMap<(String, String), CurrentRelease>,
    /// Last desired-state sequence handed out.
    sequence: u64,
    last_rollout: u64,
    /// Held syncs waiting on a node's record ([`ControlPlane::sync_wakeup`]).
    wakeups: Arc<Wakeups>,
}

/// A wake-up per node for the syncs held open on it (`Prefer: wait=N`, see
/// `docs/rollout.md`): whatever changes a node's assignments or revokes it wakes exactly that
/// node's held syncs — under the records' lock, after the change is visible — so a push reaches
/// the node within one round trip instead of one poll interval. One entry per node that ever
/// held a sync (bounded by the fleet); nothing is woken for a node nobody waits on.
#[derive(Debug, Default)]
pub struct Wakeups {
    map: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Wakeups {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Notify>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node's wake-up (created on first use).
    fn get(&self, node: &str) -> Arc<tokio::sync::Notify> {
        self.lock().entry(node.to_owned()).or_default().clone()
    }

    /// Wakes every sync held on `nodes` now.
    fn wake<'a>(&self, nodes: impl IntoIterator<Item = &'a String>) {
        let map = self.lock();
        for id in nodes {
            if let Some(n) = map.get(id) {
                n.notify_waiters();
            }
        }
    }
}

/// The control plane's state and operations.
pub struct ControlPlane {
    /// One lock for every record: writes are small and flushed under it, which keeps
    /// "persisted" and "visible" the same thing. A fleet of thousands polling every 10 s is a
    /// few hundred short critical sections per second.
    inner: Mutex<Inner>,
    /// Seen request nonces → when they leave the window (unix seconds).
    nonces: Mutex<HashMap<String, u64>>,
    key: SigningKey,
    operators: Vec<VerifyingKey>,
    bundles_dir: PathBuf,
    ttl_secs: u64,
    offline_after_secs: u64,
    /// The same as `Inner::wakeups`, reachable without the records' lock.
    wakeups: Arc<Wakeups>,
    /// Node keys already parsed, by id (an id is its key's, so an entry never goes stale):
    /// every request's signature check starts here, without the records' lock.
    node_keys: Mutex<HashMap<String, VerifyingKey>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("key", &self.key.id())
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StartError + '_ {
    move |e| StartError::Io {
        path: path.to_owned(),
        problem: e.to_string(),
    }
}

/// Loads `<state_dir>/control.key`, or generates it (0600) with `control.pub` beside it.
pub fn load_or_create_key(state_dir: &Path) -> Result<SigningKey, StartError> {
    let path = state_dir.join("control.key");
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => sign::parse_secret_key(&text).map_err(|e| StartError::Key {
            path: path.clone(),
            problem: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand_core::OsRng);
            atomic::write_file(&path, key.to_secret_text().as_bytes(), 0o600)
                .map_err(io_err(&path))?;
            tracing::info!(key = %key.id(), path = %path.display(), "generated the desired-state key");
            key
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(m) = std::fs::metadata(&path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "the desired-state key is readable by other users; chmod 600 it");
        }
    }
    let pub_path = state_dir.join("control.pub");
    let public = key.verifying_key().to_public_text();
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        atomic::write_file(&pub_path, public.as_bytes(), 0o644).map_err(io_err(&pub_path))?;
    }
    Ok(key)
}

fn validate_labels(labels: &BTreeMap<String, String>, what: &str) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{what}: more than {MAX_LABELS} labels"));
    }
    for (k, v) in labels {
        if !api::valid_label(k) || !api::valid_label(v) {
            return Err(format!(
                "{what}: label {k:?}={v:?}: keys and values are 1-63 of [A-Za-z0-9._-]"
            ));
        }
    }
    Ok(())
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Heard from (a sync, or the enrolment before the first one) within `offline_after` seconds.
fn is_online(n: &NodeRecord, now: u64, offline_after: u64) -> bool {
    !n.revoked && now.saturating_sub(n.last_seen.unwrap_or(n.enrolled)) < offline_after
}

/// The views the rollout engine needs, for the rollout's nodes, at unix time `now`.
fn views<'a>(
    nodes: &'a BTreeMap<String, NodeRecord>,
    r: &Rollout,
    now: u64,
    offline_after: u64,
) -> Reports<'a> {
    r.nodes()
        .filter_map(|id| {
            let (id, n) = nodes.get_key_value(id)?;
            Some((
                id.as_str(),
                NodeView {
                    assigned: n.apps.get(&r.release.app),
                    apps: &n.report.apps,
                    failed: &n.report.failed,
                    revoked: n.revoked,
                    online: is_online(n, now, offline_after),
                },
            ))
        })
        .collect()
}

/// The part of a rollout that changes only at transitions (what must be flushed at once).
fn phase(r: &Rollout) -> (api::RolloutState, Vec<api::WaveState>) {
    (r.state, r.waves.iter().map(|w| w.state).collect())
}

impl Inner {
    /// Applies engine actions and persists `r` with them in one transaction; flushes when
    /// something other than the wave counters changed.
    fn commit(&mut self, r: Rollout, actions: Vec<Action>, now_ms: u64) -> Result<(), DbError> {
        let before = self.rollouts.get(&r.id);
        if before == Some(&r) && actions.is_empty() {
            return Ok(());
        }
        let transition = before.is_none_or(|b| phase(b) != phase(&r)) || !actions.is_empty();
        let mut changed: BTreeMap<String, NodeRecord> = BTreeMap::new();
        let mut current = None;
        for a in actions {
            // A node's record as this batch of actions has left it so far.
            let record = |changed: &BTreeMap<String, NodeRecord>, node: &str| {
                changed.get(node).or_else(|| self.nodes.get(node)).cloned()
            };
            match a {
                Action::Assign { node, release } => {
                    let Some(mut n) = record(&changed, &node) else {
                        continue;
                    };
                    n.apps.insert(release.app.clone(), release);
                    changed.insert(node, n);
                }
                Action::Restore {
                    node,
                    app,
                    previous,
                } => {
                    let Some(mut n) = record(&changed, &node) else {
                        continue;
                    };
                    match previous {
                        Some(p) => n.apps.insert(app, p),
                        None => n.apps.remove(&app),
                    };
                    changed.insert(node, n);
                }
                Action::Succeeded { group, release } => {
                    current = Some(CurrentRelease {
                        group,
                        release,
                        since_ms: now_ms,
                    });
                }
            }
        }
        let refs: Vec<&NodeRecord> = changed.values().collect();
        self.db.put_rollout(&r, &refs, current.as_ref())?;
        if transition {
            self.db.flush()?;
        }
        self.wakeups.wake(changed.keys());
        for (id, n) in changed {
            self.nodes.insert(id, n);
        }
        if let Some(c) = current {
            self.current
                .insert((c.group.clone(), c.release.app.clone()), c);
        }
        self.last_rollout = self.last_rollout.max(r.id);
        self.rollouts.insert(r.id, r);
        Ok(())
    }

    /// The releases a node with `labels` gets at enrolment: per app, the latest succeeded
    /// rollout whose group matches.
    fn releases_for(&self, labels: &BTreeMap<String, String>) -> BTreeMap<String, Release> {
        let mut best: BTreeMap<String, &CurrentRelease> = BTreeMap::new();
        for c in self.current.values() {
            if Selector::parse(&c.group).is_ok_and(|s| s.matches(labels))
                && best
                    .get(&c.release.app)
                    .is_none_or(|b| b.since_ms < c.since_ms)
            {
                best.insert(c.release.app.clone(), c);
            }
        }
        best.into_iter()
            .map(|(app, c)| (app, c.release.clone()))
            .collect()
    }
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Opens the state directory: desired-state key, database, bundle directory.
    pub fn open(cfg: &ControlConfig, operators: Vec<VerifyingKey>) -> Result<Self, StartError> {
        let dir = &cfg.state_dir;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key = load_or_create_key(dir)?;
        let bundles_dir = dir.join("bundles");
        std::fs::create_dir_all(&bundles_dir).map_err(io_err(&bundles_dir))?;
        let swept = atomic::sweep_temp_files(&bundles_dir);
        if swept > 0 {
            tracing::info!(files = swept, "removed partial uploads left by a crash");
        }
        let db = Db::open(&dir.join("db"))?;
        let now = crate::base::clock::unix_now();
        let nodes = db.nodes()?.into_iter().map(|n| (n.id.clone(), n)).collect();
        let rollouts = db
            .rollouts()?
            .into_iter()
            .map(|r| (r.id, r))
            .collect::<BTreeMap<_, _>>();
        let current = db
            .current_releases()?
            .into_iter()
            .map(|c| ((c.group.clone(), c.release.app.clone()), c))
            .collect();
        let nonces = db.nonces(now)?.into_iter().collect();
        let pruned = db.prune_tokens(now)?;
        let last_rollout = db
            .last_rollout_id()?
            .max(rollouts.keys().next_back().copied().unwrap_or(0));
        let wakeups = Arc::<Wakeups>::default();
        let inner = Inner {
            sequence: db.sequence()?,
            last_rollout,
            wakeups: wakeups.clone(),
            db,
            nodes,
            rollouts,
            current,
        };
        tracing::info!(
            nodes = inner.nodes.len(),
            rollouts = inner.rollouts.len(),
            running = inner
                .rollouts
                .values()
                .filter(|r| !r.state.is_final())
                .count(),
            sequence = inner.sequence,
            expired_tokens_dropped = pruned,
            "control-plane state loaded"
        );
        Ok(Self {
            inner: Mutex::new(inner),
            nonces: Mutex::new(nonces),
            key,
            operators,
            bundles_dir,
            ttl_secs: cfg.desired_state_ttl.as_secs(),
            offline_after_secs: cfg.node_offline_after.as_secs().max(1),
            wakeups,
            node_keys: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes every record durable (at shutdown; reports are otherwise flushed by sled's own
    /// timer).
    pub fn flush(&self) -> Result<(), ControlError> {
        Ok(self.lock().db.flush()?)
    }

    /// The desired-state public key line (`outpost-public-key-v1 ...`, with newline).
    pub fn public_key_text(&self) -> String {
        self.key.verifying_key().to_public_text()
    }

    pub fn operator_key(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.operators.iter().find(|k| k.id() == *id)
    }

    /// An enrolled node's key and whether it is revoked; unknown → 401.
    pub fn node_key(&self, id: &KeyId) -> Result<(VerifyingKey, bool), ControlError> {
        let inner = self.lock();
        let n = inner
            .nodes
            .get(&id.to_string())
            .ok_or_else(|| ControlError::Unauthorized(format!("unknown node {id}")))?;
        let key = sign::parse_public_key(n.public_key.trim_end())
            .map_err(|e| ControlError::Internal(format!("node {id}: stored key: {e}")))?;
        self.node_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_string(), key);
        Ok((key, n.revoked))
    }

    /// A node's key if [`ControlPlane::node_key`] parsed it before: no records lock, no
    /// blocking (whether the node is revoked is checked later, under the lock).
    pub fn cached_node_key(&self, id: &KeyId) -> Option<VerifyingKey> {
        self.node_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id.to_string())
            .copied()
    }

    /// Whether a node id is enrolled and revoked.
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.lock()
            .nodes
            .get(&id.to_string())
            .is_some_and(|n| n.revoked)
    }

    /// Records a verified request's nonce; one seen within the window is a replay (401).
    pub fn check_nonce(&self, nonce: &str, now: u64) -> Result<(), ControlError> {
        let mut seen = self
            .nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.get(nonce).is_some_and(|&exp| exp > now) {
            return Err(ControlError::Unauthorized("replayed request".into()));
        }
        let expires = now + 2 * MAX_REQUEST_SKEW;
        seen.insert(nonce.to_owned(), expires);
        drop(seen);
        // Persisted (durable with the next flush) so a restart does not reopen the window for
        // requests that changed something; those flush before they answer.
        self.lock().db.put_nonce(nonce, expires)?;
        Ok(())
    }

    /// Drops expired nonces and tokens.
    pub fn housekeeping(&self, now: u64) -> Result<(), ControlError> {
        let expired: Vec<String> = {
            let mut seen = self
                .nonces
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let expired: Vec<String> = seen
                .iter()
                .filter(|(_, e)| **e <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &expired {
                seen.remove(n);
            }
            expired
        };
        let inner = self.lock();
        inner.db.remove_nonces(&expired)?;
        inner.db.prune_tokens(now)?;
        Ok(())
    }

    /// `POST /v1/enroll` for `key` (the request was verified under it).
    pub fn enroll(
        &self,
        req: EnrollRequest,
        key: &VerifyingKey,
        now: u64,
    ) -> Result<EnrollResponse, ControlError> {
        let id = key.id().to_string();
        validate_labels(&req.labels, "labels").map_err(ControlError::BadRequest)?;
        if req.name.len() > MAX_NODE_NAME || req.name.chars().any(char::is_control) {
            return Err(ControlError::BadRequest(format!(
                "name: at most {MAX_NODE_NAME} printable characters"
            )));
        }
        let mut inner = self.lock();
        let existing = inner.nodes.get(&id).cloned();
        if existing.as_ref().is_some_and(|n| n.revoked) {
            return Err(ControlError::Forbidden(format!("node {id} is revoked")));
        }
        let public_key = key.to_public_text();
        let make = |token: &TokenRecord| {
            let mut labels = req.labels.clone();
            labels.extend(token.labels.clone());
            validate_labels(&labels, "labels")?;
            Ok(match &existing {
                // Re-enrolment (the node lost its enrolment record): same identity, new labels;
                // its assignments stay.
                Some(n) => NodeRecord {
                    name: req.name.clone(),
                    labels,
                    ..n.clone()
                },
                None => NodeRecord {
                    id: id.clone(),
                    public_key: public_key.clone(),
                    name: req.name.clone(),
                    apps: inner.releases_for(&labels),
                    labels,
                    enrolled: now,
                    revoked: false,
                    last_seen: None,
                    report: SyncReport::default(),
                    sealed: None,
                },
            })
        };
        let node = inner
            .db
            .enroll(&token_hash(&req.token), now, make)
            .map_err(|e| match e {
                EnrollError::UnknownToken | EnrollError::Expired => {
                    ControlError::Unauthorized(e.to_string())
                }
                EnrollError::Refused(m) => ControlError::BadRequest(m),
                EnrollError::Db(e) => e.into(),
            })?;
        inner.db.flush()?;
        tracing::info!(
            node = %node.id,
            name = %node.name,
            labels = ?node.labels,
            apps = node.apps.len(),
            "node enrolled"
        );
        let resp = EnrollResponse {
            node: node.id.clone(),
            labels: node.labels.clone(),
        };
        inner.nodes.insert(node.id.clone(), node);
        Ok(resp)
    }

    /// `POST /v1/sync`: records the report, (re-)seals the desired state when needed.
    pub fn sync(
        &self,
        id: &KeyId,
        mut report: SyncReport,
        if_none_match: Option<u64>,
        now: u64,
    ) -> Result<SyncReply, ControlError> {
        let id = id.to_string();
        report.apps.truncate(MAX_APPS);
        report.failed.truncate(MAX_APPS);
        for f in &mut report.failed {
            truncate(&mut f.error, MAX_REPORTED_ERROR);
        }
        truncate(&mut report.outpost_version, 64);
        let mut inner = self.lock();
        let mut node = inner
            .nodes
            .get(&id)
            .cloned()
            .ok_or_else(|| ControlError::Unauthorized(format!("unknown node {id}")))?;
        if node.revoked {
            return Err(ControlError::Forbidden(format!("node {id} is revoked")));
        }
        node.last_seen = Some(now);
        node.report = report;
        let apps: Vec<_> = node.apps.values().cloned().collect();
        let stale = match &node.sealed {
            None => true,
            Some(s) => s.apps != apps || s.expires.saturating_sub(now) < self.ttl_secs / 2,
        };
        if stale {
            let sequence = inner.sequence + 1;
            let state = DesiredState {
                node: id.clone(),
                sequence,
                issued: now,
                expires: now + self.ttl_secs,
                apps: apps.clone(),
            };
            let envelope = desired::seal(&state, &self.key)
                .map_err(|e| ControlError::Internal(format!("sealing for node {id}: {e}")))?;
            let envelope = String::from_utf8(envelope)
                .map_err(|e| ControlError::Internal(format!("sealed state: {e}")))?;
            node.sealed = Some(Sealed {
                sequence,
                issued: now,
                expires: state.expires,
                apps,
                envelope,
            });
            inner.db.put_sealed_node(&node, sequence)?;
            inner.db.flush()?;
            inner.sequence = sequence;
            tracing::info!(node = %id, sequence, apps = state.apps.len(), "desired state sealed");
        } else {
            // Reports are refreshed every poll; sled's periodic flush is enough for them.
            inner.db.put_node(&node)?;
        }
        let sealed = node
            .sealed
            .as_ref()
            .ok_or_else(|| ControlError::Internal("no sealed state".into()))?;
        let reply = if if_none_match == Some(sealed.sequence) {
            SyncReply::NotModified(sealed.sequence)
        } else {
            SyncReply::Desired {
                sequence: sealed.sequence,
                envelope: sealed.envelope.clone().into_bytes(),
            }
        };
        inner.nodes.insert(id, node);
        Ok(reply)
    }

    /// The longest this control plane holds a sync: [`api::MAX_SYNC_HOLD`], and under nine
    /// tenths of `node_offline_after` — a node seen when its held sync started must not look
    /// offline before the sync ends.
    pub fn max_sync_hold(&self) -> std::time::Duration {
        let cap = std::time::Duration::from_millis(self.offline_after_secs * 900);
        crate::control::api::MAX_SYNC_HOLD.min(cap.max(std::time::Duration::from_secs(1)))
    }

    /// The wake-up a sync held on node `id` waits on: create the `notified()` future (and
    /// enable it) *before* asking [`ControlPlane::sync_news`], so a change in between is not
    /// missed.
    pub fn sync_wakeup(&self, id: &KeyId) -> Arc<tokio::sync::Notify> {
        self.wakeups.get(&id.to_string())
    }

    /// Whether a sync held on node `id`, which has `sequence`, should be answered now: its
    /// assignments changed since that state was sealed, the state is due for re-signing, a newer
    /// one was sealed meanwhile, or the node is gone or revoked (the next sync gets the error).
    pub fn sync_news(&self, id: &KeyId, sequence: u64, now: u64) -> bool {
        let inner = self.lock();
        let Some(node) = inner.nodes.get(&id.to_string()) else {
            return true;
        };
        let Some(sealed) = &node.sealed else {
            return true;
        };
        node.revoked
            || sealed.sequence != sequence
            || sealed.expires.saturating_sub(now) < self.ttl_secs / 2
            || sealed.apps.len() != node.apps.len()
            || sealed
                .apps
                .iter()
                .zip(node.apps.values())
                .any(|(a, b)| a != b)
    }

    pub fn bundle_path(&self, digest: &Digest) -> PathBuf {
        self.bundles_dir.join(format!("{}.bundle", digest.hex()))
    }

    fn sig_path(&self, digest: &Digest) -> PathBuf {
        self.bundles_dir.join(format!("{}.sig", digest.hex()))
    }

    /// `PUT /v1/bundles/<digest>`: checks the body against the digest and the signature file,
    /// then stores both atomically. Idempotent.
    pub fn upload(
        &self,
        digest: &Digest,
        body: &[u8],
        sig_b64: Option<&str>,
    ) -> Result<UploadResponse, ControlError> {
        let actual = bundle_mod::digest(body);
        if actual != *digest {
            return Err(ControlError::BadRequest(format!(
                "body digest {actual} does not match {digest} in the path"
            )));
        }
        let sig_b64 = sig_b64.ok_or_else(|| {
            ControlError::BadRequest(format!(
                "missing {} header (base64 of the bundle's .sig file)",
                api::BUNDLE_SIGNATURE_HEADER
            ))
        })?;
        let sig = BASE64.decode(sig_b64.trim()).map_err(|_| {
            ControlError::BadRequest(format!("{} is not base64", api::BUNDLE_SIGNATURE_HEADER))
        })?;
        let signed = SignedDoc::parse(&sig, MAX_SIG_FILE)
            .map_err(|e| ControlError::BadRequest(format!("signature file: {e}")))?;
        let doc = signed.doc();
        if doc.digest != *digest || doc.size != body.len() as u64 {
            return Err(ControlError::BadRequest(format!(
                "signature file signs {} ({} bytes), not this bundle {digest} ({} bytes)",
                doc.digest,
                doc.size,
                body.len()
            )));
        }
        let bundle_path = self.bundle_path(digest);
        let present = std::fs::metadata(&bundle_path).is_ok_and(|m| m.len() == body.len() as u64);
        let write = |path: &Path, bytes: &[u8]| {
            atomic::write_file(path, bytes, 0o644)
                .map_err(|e| ControlError::Internal(format!("{}: {e}", path.display())))
        };
        if !present {
            write(&bundle_path, body)?;
        }
        write(&self.sig_path(digest), &sig)?;
        tracing::info!(
            app = %doc.app,
            version = %doc.version,
            %digest,
            size = body.len(),
            signatures = signed.signatures().len(),
            already_present = present,
            "bundle stored"
        );
        Ok(UploadResponse {
            digest: *digest,
            app: doc.app.clone(),
            version: doc.version.clone(),
            size: body.len() as u64,
        })
    }

    /// A release without its bytes (`CreateRollout::signature`, `outpost push --mirror-only`):
    /// stores only the signature file, after the same checks an upload makes of it, so that
    /// nodes fetch the bytes from `sources` and verify them as always. The control plane cannot
    /// check the bytes it never sees; a node refuses any that do not match the signed digest.
    fn register_mirror_only(
        &self,
        digest: &Digest,
        sig_b64: &str,
        sources: &[String],
    ) -> Result<(), ControlError> {
        if sources.is_empty() {
            return Err(ControlError::BadRequest(
                "a release without its bytes needs at least one source to fetch them from".into(),
            ));
        }
        let sig = BASE64
            .decode(sig_b64.trim())
            .map_err(|_| ControlError::BadRequest("signature is not base64".into()))?;
        let signed = SignedDoc::parse(&sig, MAX_SIG_FILE)
            .map_err(|e| ControlError::BadRequest(format!("signature file: {e}")))?;
        let doc = signed.doc();
        if doc.digest != *digest {
            return Err(ControlError::BadRequest(format!(
                "signature file signs {}, not {digest}",
                doc.digest
            )));
        }
        let path = self.sig_path(digest);
        atomic::write_file(&path, &sig, 0o644)
            .map_err(|e| ControlError::Internal(format!("{}: {e}", path.display())))?;
        tracing::info!(
            app = %doc.app,
            version = %doc.version,
            %digest,
            size = doc.size,
            signatures = signed.signatures().len(),
            sources = sources.len(),
            "release registered without its bytes; nodes fetch it from its sources"
        );
        Ok(())
    }

    /// `POST /v1/tokens`.
    pub fn create_tokens(
        &self,
        req: &TokenRequest,
        now: u64,
    ) -> Result<TokenResponse, ControlError> {
        if req.count == 0 || req.count > MAX_TOKENS_PER_REQUEST {
            return Err(ControlError::BadRequest(format!(
                "count must be 1 to {MAX_TOKENS_PER_REQUEST}"
            )));
        }
        if req.ttl_secs == 0 || req.ttl_secs > MAX_TOKEN_TTL_SECS {
            return Err(ControlError::BadRequest(format!(
                "ttl_secs must be 1 to {MAX_TOKEN_TTL_SECS} (30 days)"
            )));
        }
        validate_labels(&req.labels, "labels").map_err(ControlError::BadRequest)?;
        let expires = now + req.ttl_secs;
        let mut tokens = Vec::with_capacity(req.count as usize);
        let mut records = Vec::with_capacity(req.count as usize);
        for _ in 0..req.count {
            let mut raw = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
            let t = hex::encode(raw);
            records.push((
                token_hash(&t),
                TokenRecord {
                    labels: req.labels.clone(),
                    expires,
                },
            ));
            tokens.push(t);
        }
        let inner = self.lock();
        inner.db.put_tokens(&records)?;
        inner.db.flush()?;
        tracing::info!(count = req.count, labels = ?req.labels, expires, "enrolment tokens created");
        Ok(TokenResponse { tokens, expires })
    }

    /// `GET /v1/nodes`.
    pub fn nodes(&self, now: u64) -> Vec<NodeInfo> {
        self.lock()
            .nodes
            .values()
            .map(|n| NodeInfo {
                id: n.id.clone(),
                name: n.name.clone(),
                labels: n.labels.clone(),
                enrolled: n.enrolled,
                last_seen: n.last_seen,
                revoked: n.revoked,
                online: is_online(n, now, self.offline_after_secs),
                applied_sequence: n.report.applied_sequence,
                apps: n.report.apps.clone(),
                failed: n.report.failed.clone(),
            })
            .collect()
    }

    /// `POST /v1/nodes/<id>/revoke`: the node gets 403 from now on. Idempotent.
    pub fn revoke(&self, id: &str) -> Result<NodeInfo, ControlError> {
        let mut inner = self.lock();
        let mut node = inner
            .nodes
            .get(id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no node {id:?}")))?;
        if !node.revoked {
            node.revoked = true;
            inner.db.put_node(&node)?;
            inner.db.flush()?;
            tracing::warn!(node = %id, name = %node.name, "node revoked");
            inner.nodes.insert(id.to_owned(), node);
            inner.wakeups.wake([&id.to_owned()]);
        }
        drop(inner);
        let now = crate::base::clock::unix_now();
        self.nodes(now)
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("no node {id:?}")))
    }

    /// `POST /v1/rollouts`: resolves the group, plans the waves and starts the first one.
    pub fn create_rollout(
        &self,
        req: &CreateRollout,
        now_ms: u64,
    ) -> Result<RolloutStatus, ControlError> {
        let bad = |m: String| ControlError::BadRequest(m);
        let selector = Selector::parse(&req.group).map_err(bad)?;
        rollout::check_gates(req.max_error_rate, req.bake_secs).map_err(|e| bad(e.to_string()))?;
        if req.hosts.len() > MAX_HOSTS {
            return Err(bad(format!("more than {MAX_HOSTS} hosts")));
        }
        let mut hosts = Vec::with_capacity(req.hosts.len());
        for h in &req.hosts {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            crate::base::outbound::HostPattern::parse(&h)
                .map_err(|e| bad(format!("host {h:?}: {e}")))?;
            hosts.push(h);
        }
        let sources = check_sources(&req.sources).map_err(bad)?;
        if let Some(sig_b64) = &req.signature {
            self.register_mirror_only(&req.digest, sig_b64, &sources)?;
        }
        let sig = match std::fs::read(self.sig_path(&req.digest)) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ControlError::NotFound(format!(
                    "bundle {} is not uploaded (PUT {}{} first)",
                    req.digest,
                    api::BUNDLES,
                    req.digest
                )));
            }
            Err(e) => return Err(ControlError::Internal(format!("reading signature: {e}"))),
        };
        let signed = SignedDoc::parse(&sig, MAX_SIG_FILE)
            .map_err(|e| ControlError::Internal(format!("stored signature file: {e}")))?;
        let doc = signed.doc();
        let release = Release {
            app: doc.app.clone(),
            tenant: doc.tenant.clone(),
            version: doc.version.clone(),
            digest: req.digest,
            size: doc.size,
            signature: BASE64.encode(&sig),
            hosts,
            sources,
        };
        let mut inner = self.lock();
        if let Some(r) = inner
            .rollouts
            .values()
            .find(|r| !r.state.is_final() && r.release.app == release.app)
        {
            return Err(ControlError::Conflict(format!(
                "rollout {} of {} is still {}; pause, abort or wait for it first",
                r.id,
                r.release.app,
                rollout::state_name(r.state)
            )));
        }
        // Wave order: online nodes first, each part by id, so a canary is a node that can
        // answer; offline nodes land in the last waves.
        let mut members: Vec<&NodeRecord> = inner
            .nodes
            .values()
            .filter(|n| !n.revoked && selector.matches(&n.labels))
            .collect();
        members.sort_by_key(|n| !is_online(n, now_ms / 1000, self.offline_after_secs));
        let nodes: Vec<String> = members.iter().map(|n| n.id.clone()).collect();
        let waves = rollout::plan_waves(&req.waves, &nodes).map_err(|e| match e {
            rollout::PlanError::NoNodes => {
                bad(format!("group {:?} matches no enrolled node", req.group))
            }
            e => bad(e.to_string()),
        })?;
        let id = inner.last_rollout + 1;
        let mut r = Rollout::new(
            id,
            release,
            req.group.trim().to_owned(),
            waves,
            req.max_error_rate,
            req.bake_secs,
            now_ms,
        );
        tracing::info!(
            rollout = id,
            app = %r.release.app,
            version = %r.release.version,
            digest = %r.release.digest,
            group = %r.group,
            nodes = nodes.len(),
            waves = r.waves.len(),
            "rollout created"
        );
        let v = views(&inner.nodes, &r, now_ms / 1000, self.offline_after_secs);
        let actions = rollout::tick(&mut r, &v, now_ms);
        drop(v);
        let status = r.status();
        inner.commit(r, actions, now_ms)?;
        Ok(status)
    }

    pub fn rollouts(&self) -> Vec<RolloutStatus> {
        self.lock().rollouts.values().map(Rollout::status).collect()
    }

    pub fn rollout(&self, id: u64) -> Result<RolloutStatus, ControlError> {
        self.lock()
            .rollouts
            .get(&id)
            .map(Rollout::status)
            .ok_or_else(|| ControlError::NotFound(format!("no rollout {id}")))
    }

    /// Pause, resume or abort a rollout.
    pub fn command(
        &self,
        id: u64,
        cmd: Command<'_>,
        now_ms: u64,
    ) -> Result<RolloutStatus, ControlError> {
        let mut inner = self.lock();
        let mut r = inner
            .rollouts
            .get(&id)
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("no rollout {id}")))?;
        let conflict = |e: rollout::CommandError| ControlError::Conflict(e.to_string());
        let actions = match cmd {
            Command::Pause => r.pause().map(|()| Vec::new()).map_err(conflict)?,
            Command::Resume => r.resume().map(|()| Vec::new()).map_err(conflict)?,
            Command::Abort { by } => r.abort(by, now_ms).map_err(conflict)?,
        };
        let status = r.status();
        inner.commit(r, actions, now_ms)?;
        Ok(status)
    }

    /// One engine step for every rollout that is not final.
    pub fn tick(&self, now_ms: u64) -> Result<(), ControlError> {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner
            .rollouts
            .values()
            .filter(|r| !r.state.is_final())
            .map(|r| r.id)
            .collect();
        for id in ids {
            let Some(mut r) = inner.rollouts.get(&id).cloned() else {
                continue;
            };
            let v = views(&inner.nodes, &r, now_ms / 1000, self.offline_after_secs);
            let actions = rollout::tick(&mut r, &v, now_ms);
            drop(v);
            inner.commit(r, actions, now_ms)?;
        }
        Ok(())
    }
}

/// The mirror list of a rollout: at most `MAX_SOURCES`, each a source kind nodes know
/// (`desired::Source::parse`) and a URL reqwest can request, without duplicates.
fn check_sources(sources: &[String]) -> Result<Vec<String>, String> {
    if sources.len() > desired::MAX_SOURCES {
        return Err(format!("more than {} sources", desired::MAX_SOURCES));
    }
    let mut out: Vec<String> = Vec::with_capacity(sources.len());
    for s in sources {
        let s = s.trim();
        match desired::Source::parse(s).map_err(|e| e.to_string())? {
            desired::Source::Oci(r) => {
                r.parse::<crate::oci::Reference>()
                    .map_err(|e| format!("source {s:?}: {e}"))?;
            }
            _ => {
                reqwest::Url::parse(s).map_err(|e| format!("source {s:?}: {e}"))?;
            }
        }
        if out.iter().any(|o| o == s) {
            return Err(format!("source {s:?} is listed twice"));
        }
        out.push(s.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_map_to_one_status_and_hide_internal_details() {
        assert_eq!(ControlError::Unauthorized("x".into()).status(), 401);
        assert_eq!(ControlError::Forbidden("x".into()).status(), 403);
        assert_eq!(ControlError::Conflict("x".into()).status(), 409);
        let e = ControlError::Internal("/secret/path: EIO".into());
        assert_eq!(e.status(), 500);
        assert!(!e.public_message().contains("secret"));
    }

    #[test]
    fn key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path()).unwrap();
        let b = load_or_create_key(dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        let mode = std::fs::metadata(dir.path().join("control.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = std::fs::read_to_string(dir.path().join("control.pub")).unwrap();
        assert_eq!(public, a.verifying_key().to_public_text());
    }

    #[test]
    fn labels_and_truncation() {
        let mut l = BTreeMap::new();
        l.insert("site".to_owned(), "lab".to_owned());
        assert!(validate_labels(&l, "labels").is_ok());
        l.insert("bad key".to_owned(), "x".to_owned());
        assert!(validate_labels(&l, "labels").is_err());
        let mut s = "héllo".to_owned();
        truncate(&mut s, 2);
        assert_eq!(s, "h");
    }
}
