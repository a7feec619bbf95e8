//! The agent's loop: enrol, poll `POST /v1/sync` with the health report, apply new desired
//! states, back off while the control plane is unreachable.
//!
//! Owns: the order of an apply — fetch, verify and install, load, then one router swap (requests
//! in flight finish on the old table), then the store's records, then `desired.json` — and what
//! the node tells the control plane. Must not: block the serving threads (installs and loads run
//! on blocking threads) or delay shutdown (every wait is raced against the stop signal).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::apply::{self, Served, Step};
use super::backoff::{self, Backoff, FailureLog, Outage};
use super::files::{self, Enrolment};
use super::health::{self, Counts};
use super::pipeline::{Mode, Pipeline, PipelineError};
use super::{Managed, Parts, Setup};
use crate::base::clock::unix_now;
use crate::bundle::archive::Limits;
use crate::bundle::desired::{self, DesiredApp, DesiredState, Source, SourceKind};
use crate::bundle::sign::TrustPolicy;
use crate::control::api::{
    self, AppHealth, EnrollRequest, EnrollResponse, FailedRelease, SyncReport,
};
use crate::control::client::{ClientError, DownloadTiming};
use crate::ops::logging::{LogDecision, LogLimiter};
use crate::ops::metrics::Metrics;
use crate::runtime::Runtime;
use crate::runtime::app::LoadedApp;
use crate::serve::{HostPattern, ServeState};
use crate::store::{Release, Store};

/// Why one exchange with the control plane failed; also the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused, reset, DNS, TLS.
    Unreachable,
    Timeout,
    /// 5xx (or 429).
    ServerError,
    /// Any other refusal (401 unknown node, 403 revoked, 400).
    Rejected,
    /// A response that is not what the API promises.
    BadResponse,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::ServerError => "server_error",
            Self::Rejected => "rejected",
            Self::BadResponse => "bad_response",
        }
    }

    pub fn of(e: &ClientError) -> Self {
        match e {
            ClientError::Transport { source, .. } if source.is_timeout() => Self::Timeout,
            ClientError::Transport { .. } | ClientError::Url { .. } | ClientError::Ca { .. } => {
                Self::Unreachable
            }
            ClientError::Status { status, .. } if *status >= 500 || *status == 429 => {
                Self::ServerError
            }
            ClientError::Status { .. } => Self::Rejected,
            ClientError::TimedOut { .. } => Self::Timeout,
            ClientError::TooLarge { .. } | ClientError::Decode { .. } => Self::BadResponse,
        }
    }

    /// Whether the next attempt may well succeed (the bundle download is retried on the next
    /// poll rather than reported as a failed release).
    pub fn transient(self) -> bool {
        matches!(self, Self::Unreachable | Self::Timeout | Self::ServerError)
    }
}

/// Why one release could not be made to serve.
#[derive(Debug)]
struct ReleaseError {
    message: String,
    /// A download that failed in a way a retry may fix.
    transient: bool,
}

impl ReleaseError {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
}

/// Why one source did not serve a bundle.
#[derive(Debug)]
struct FetchError {
    message: String,
    transient: bool,
    /// The `outcome` label of `outpost_bundle_fetches_total`.
    outcome: &'static str,
}

/// The agent's state. Only its own task touches it.
pub struct Agent {
    setup: Setup,
    store: Arc<Store>,
    policy: Arc<TrustPolicy>,
    limits: Limits,
    runtime: Arc<Runtime>,
    metrics: Metrics,
    serve: Arc<ServeState>,
    fixed: Vec<(Vec<HostPattern>, LoadedApp)>,
    fixed_releases: Vec<Release>,
    config_store_apps: BTreeSet<String>,
    /// Apps served from the store for the control plane, by name.
    serving: BTreeMap<String, Served>,
    /// Releases of the applied state that could not run, by app.
    failed: BTreeMap<String, FailedRelease>,
    backoff: Backoff,
    outage: Outage,
    /// The last report the control plane took, to tell a quiet node from a busy one.
    last_report: Option<SyncReport>,
    started: Instant,
    on_swap: Option<super::OnSwap>,
    /// Config reloads from the daemon; `None` once the sender is gone.
    reloads: Option<tokio::sync::mpsc::UnboundedReceiver<super::ConfigReload>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.setup.node_id)
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub fn new(p: Parts) -> Self {
        let now = unix_now();
        let base = health::snapshot(&p.metrics);
        let serving = p
            .managed
            .into_iter()
            .map(
                |Managed {
                     release,
                     app,
                     hosts,
                 }| {
                    let baseline = base.get(&release.app).cloned().unwrap_or_default();
                    (
                        release.app.clone(),
                        Served {
                            release,
                            app,
                            hosts,
                            baseline,
                            active_since: now,
                            source: None,
                        },
                    )
                },
            )
            .collect();
        let backoff = Backoff::new(p.setup.poll_interval, backoff::MAX_BACKOFF);
        let agent = Self {
            setup: p.setup,
            store: p.store,
            policy: p.policy,
            limits: p.limits,
            runtime: p.runtime,
            metrics: p.metrics,
            serve: p.serve,
            fixed: p.fixed,
            fixed_releases: p.fixed_releases,
            config_store_apps: p.config_store_apps,
            serving,
            failed: BTreeMap::new(),
            backoff,
            outage: Outage::default(),
            last_report: None,
            started: Instant::now(),
            on_swap: p.on_swap,
            reloads: Some(p.reloads),
        };
        agent.publish_releases();
        if let Some(s) = &agent.setup.applied {
            agent.metrics.desired_sequence.set(clamp_i64(s.sequence));
        }
        agent
    }

    /// Runs until `stop` turns true. Whatever is in progress then is abandoned at its next
    /// await point; the store and `desired.json` are only ever replaced atomically.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(node = %self.setup.node_id, control_plane = %self.setup.client.base(), "node agent started");
        tokio::select! {
            () = self.main() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        tracing::debug!("node agent stopped");
    }

    async fn main(&mut self) {
        // The saved state may name releases the store lost (damaged on disk, or never loaded):
        // apply it again locally so they are fetched, without waiting for a new sequence.
        if let Some(state) = self.setup.applied.clone() {
            self.apply(&state, None).await;
        }
        while self.setup.enrolment.is_none() {
            let wait = self.enrol().await;
            self.pause(wait).await;
        }
        loop {
            let wait = self.poll().await;
            self.pause(wait).await;
        }
    }

    /// Waits `wait`, applying config reloads as they come.
    async fn pause(&mut self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let Some(rx) = self.reloads.as_mut() else {
                tokio::time::sleep_until(until).await;
                return;
            };
            let reload = tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                r = rx.recv() => r,
            };
            match reload {
                Some(r) => self.reload_config(r),
                None => self.reloads = None,
            }
        }
    }

    /// Rebuilds the routing table around new config apps (SIGHUP); refused as a whole when the
    /// new apps conflict with the ones the control plane assigns.
    fn reload_config(&mut self, r: super::ConfigReload) {
        match apply::build_router(&r.fixed, &self.serving) {
            Ok((router, shadowed)) => {
                for app in shadowed {
                    tracing::warn!(%app, "the control plane assigns an app also configured in [[app]]; serving the control plane's release");
                }
                self.fixed = r.fixed;
                self.fixed_releases = r.fixed_releases;
                self.config_store_apps = r.config_store_apps;
                self.policy = r.policy;
                self.serve.swap_router(router);
                if let Some(f) = &self.on_swap {
                    (f.0)();
                }
                self.publish_releases();
                let _ = r.done.send(Ok(()));
            }
            Err(e) => {
                let _ = r.done.send(Err(e));
            }
        }
    }

    // === enrolment ===

    /// One enrolment attempt; returns how long to wait before the next step.
    async fn enrol(&mut self) -> Duration {
        let Some(token) = self.setup.token.clone() else {
            // `Setup::prepare` refuses to start without one; nothing to do but wait.
            return backoff::MAX_BACKOFF;
        };
        let req = EnrollRequest {
            token,
            public_key: self
                .setup
                .client
                .key()
                .verifying_key()
                .to_public_text()
                .trim_end()
                .to_owned(),
            name: self.setup.name.clone(),
            labels: self.setup.labels.clone(),
        };
        match self
            .setup
            .client
            .post_json::<_, EnrollResponse>(api::ENROLL, &req)
            .await
        {
            Ok(resp) => {
                if resp.node != self.setup.node_id {
                    tracing::warn!(confirmed = %resp.node, node = %self.setup.node_id, "control plane confirmed another node id");
                }
                let record = Enrolment {
                    node: self.setup.node_id.clone(),
                    url: self.setup.client.base().to_owned(),
                    labels: resp.labels,
                    enrolled_at: unix_now(),
                };
                if let Err(e) = files::write_enrolment(&self.setup.state_dir, &record) {
                    // Enrolled all the same; the token is spent, so keep going and say so.
                    tracing::error!(error = %e, "cannot save the enrolment record; the node must be enrolled again after a restart");
                }
                tracing::info!(node = %record.node, labels = ?record.labels, "enrolled with the control plane");
                self.setup.enrolment = Some(record);
                self.setup.token = None;
                self.succeeded();
                Duration::ZERO
            }
            Err(e) => {
                self.metrics
                    .sync_failures
                    .with_label_values(&["enroll"])
                    .inc();
                self.metrics.sync_up.set(0);
                if matches!(e.status(), Some(401 | 403)) {
                    tracing::error!(error = %e, "enrolment refused (unknown, used or expired token, or a revoked node); retrying at the longest interval — fix control_plane.token and restart");
                    self.backoff.fail_hard(backoff::sample())
                } else {
                    self.log_failure(&e);
                    self.backoff.fail(backoff::sample())
                }
            }
        }
    }

    // === polling ===

    /// One `POST /v1/sync`, which the control plane may hold open until this node's
    /// desired state changes (`Prefer: wait=N`, see [`hold_for`]); returns how long to wait
    /// before the next. A control plane that holds syncs is asked again at once — the held sync
    /// *is* the wait, and a new state is answered the moment it is sealed; one that does not (an
    /// older release) is polled at the poll interval as before.
    async fn poll(&mut self) -> Duration {
        let report = self.report();
        let body = match serde_json::to_vec(&report) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the sync report");
                return backoff::jittered(self.setup.poll_interval, backoff::sample());
            }
        };
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(s) = &self.setup.applied {
            headers.push(("if-none-match", format!("\"{}\"", s.sequence)));
        }
        let hold = hold_for(self.last_report.as_ref(), &report, self.setup.poll_interval);
        let started = Instant::now();
        let resp = self
            .setup
            .client
            .send_held(
                reqwest::Method::POST,
                api::SYNC,
                body,
                &headers,
                desired::MAX_DESIRED_LEN as u64,
                hold,
            )
            .await;
        match resp {
            Ok(r) => {
                self.succeeded();
                self.last_report = Some(report);
                if r.status == 200 {
                    self.received(&r.body).await;
                }
                next_poll(
                    &r,
                    started.elapsed(),
                    backoff::jittered(self.setup.poll_interval, backoff::sample()),
                )
            }
            Err(e) => {
                let f = Failure::of(&e);
                self.metrics
                    .sync_failures
                    .with_label_values(&[f.label()])
                    .inc();
                self.metrics.sync_up.set(0);
                if matches!(e.status(), Some(401 | 403)) {
                    tracing::error!(error = %e, "the control plane refuses this node (unknown or revoked)");
                    self.outage.failed(Instant::now());
                } else {
                    self.log_failure(&e);
                }
                self.backoff.fail(backoff::sample())
            }
        }
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.metrics.sync_up.set(1);
        self.metrics.sync_last_success.set(clamp_i64(unix_now()));
        if let Some((failures, secs)) = self.outage.recovered(Instant::now()) {
            tracing::info!(failures, down_secs = secs, "control plane reachable again");
        }
    }

    fn log_failure(&mut self, e: &ClientError) {
        match self.outage.failed(Instant::now()) {
            FailureLog::First => {
                tracing::warn!(error = %e, "control plane unreachable; serving the current state and retrying")
            }
            FailureLog::Still { failures, for_secs } => {
                tracing::warn!(error = %e, failures, for_secs, "control plane still unreachable")
            }
            FailureLog::Quiet => tracing::debug!(error = %e, "control plane still unreachable"),
        }
    }

    /// A desired state arrived: check it, apply it if it changes anything, remember it.
    async fn received(&mut self, envelope: &[u8]) {
        let refuse = |this: &Self, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "refusing the desired state from the control plane; keeping the current state");
            this.metrics
                .sync_failures
                .with_label_values(&["desired_state"])
                .inc();
        };
        let state = match desired::open(envelope, &self.setup.keys) {
            Ok(s) => s,
            Err(e) => return refuse(self, &e),
        };
        let changes = match desired::check_fresh(
            &state,
            &self.setup.node_id,
            self.setup.applied.as_ref(),
            unix_now(),
        ) {
            Ok(c) => c,
            Err(e) => return refuse(self, &e),
        };
        if changes {
            self.apply(&state, Some(envelope)).await;
        } else {
            // Re-signed (new expiry) or a new sequence with the same apps: nothing to switch.
            self.remember(state, envelope).await;
        }
    }

    /// Records `state` as applied and saves its envelope (an fsynced write, on the blocking
    /// pool).
    async fn remember(&mut self, state: DesiredState, envelope: &[u8]) {
        let (dir, bytes) = (self.setup.state_dir.clone(), envelope.to_vec());
        match tokio::task::spawn_blocking(move || files::write_desired(&dir, &bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot save the applied desired state"),
            Err(e) => tracing::error!(error = %e, "cannot save the applied desired state"),
        }
        self.metrics.desired_sequence.set(clamp_i64(state.sequence));
        self.setup.applied = Some(state);
    }

    // === applying ===

    /// Applies `state`: installs and loads what is new, swaps the router once, updates the
    /// store's records. `envelope` is `None` when re-applying the saved state at start. A
    /// download that failed in a way a retry may fix leaves the state un-applied, so the next
    /// poll brings it again.
    async fn apply(&mut self, state: &DesiredState, envelope: Option<&[u8]>) {
        apply::retain_failures(&mut self.failed, state);
        let current: BTreeMap<String, crate::bundle::Digest> = self
            .serving
            .iter()
            .map(|(k, s)| (k.clone(), s.release.digest))
            .collect();
        let plan = apply::plan(state, &current, &self.failed);
        let mut next: BTreeMap<String, Served> = BTreeMap::new();
        let mut fresh: Vec<Release> = Vec::new();
        let mut retry = false;
        for step in plan.steps {
            match step {
                Step::Keep { entry, hosts } => {
                    if let Some(mut s) = self.serving.get(&entry.app).cloned() {
                        s.hosts = hosts;
                        next.insert(entry.app.clone(), s);
                    }
                }
                Step::Fail { entry, error } => {
                    self.record_failure(entry, error);
                    self.keep_previous(entry, &mut next);
                }
                Step::Install { entry, hosts } => match self.prepare(entry).await {
                    Ok((release, app, source)) => {
                        tracing::info!(app = %entry.app, version = %entry.version, digest = %entry.digest, "release installed and loaded");
                        fresh.push(release.clone());
                        next.insert(
                            entry.app.clone(),
                            Served {
                                release,
                                app,
                                hosts,
                                baseline: Counts::default(),
                                active_since: 0,
                                source,
                            },
                        );
                    }
                    Err(e) if e.transient => {
                        retry = true;
                        self.metrics
                            .sync_failures
                            .with_label_values(&["release"])
                            .inc();
                        // Retried on every poll while the outage lasts: say so at a sane rate.
                        static DOWNLOAD: crate::ops::logging::LogLimiter =
                            crate::ops::logging::LogLimiter::new(
                                3,
                                std::time::Duration::from_secs(600),
                            );
                        if let crate::ops::logging::LogDecision::Log { suppressed } =
                            DOWNLOAD.check()
                        {
                            tracing::warn!(app = %entry.app, digest = %entry.digest, error = %e.message, suppressed, "cannot download the release; retrying on the next poll");
                        }
                        self.keep_previous(entry, &mut next);
                    }
                    Err(e) => {
                        self.record_failure(entry, e.message);
                        self.keep_previous(entry, &mut next);
                    }
                },
            }
        }

        // One swap for the whole state. A routing conflict (hosts and paths claimed twice)
        // refuses the changed apps and keeps what served before.
        let (router, shadowed) = match apply::build_router(&self.fixed, &next) {
            Ok(r) => r,
            Err(conflict) => {
                let changed: Vec<String> = next
                    .iter()
                    .filter(|(app, s)| {
                        self.serving.get(*app).is_none_or(|old| {
                            old.release.digest != s.release.digest || old.hosts != s.hosts
                        })
                    })
                    .map(|(app, _)| app.clone())
                    .collect();
                for app in &changed {
                    if let Some(entry) = state.apps.iter().find(|a| a.app == *app) {
                        self.record_failure(entry, conflict.clone());
                    }
                    next.remove(app);
                    fresh.retain(|r| r.app != *app);
                    if let Some(old) = self.serving.get(app) {
                        next.insert(app.clone(), old.clone());
                    }
                }
                match apply::build_router(&self.fixed, &next) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build a routing table; keeping the current one");
                        return;
                    }
                }
            }
        };
        for app in shadowed {
            tracing::warn!(%app, "the control plane assigns an app also configured in [[app]]; serving the control plane's release");
        }
        let snap = health::snapshot(&self.metrics);
        let now = unix_now();
        for (app, s) in next.iter_mut() {
            if s.active_since == 0 {
                s.baseline = snap.get(app).cloned().unwrap_or_default();
                s.active_since = now;
            }
        }
        // In-flight requests hold the components they were routed to and finish on them.
        self.serve.swap_router(router);
        // Installs, removals and rollbacks change the app counts systemd shows.
        if let Some(f) = &self.on_swap {
            (f.0)();
        }
        let removed: Vec<String> = plan
            .remove
            .into_iter()
            .filter(|a| !next.contains_key(a))
            .collect();
        self.serving = next;
        self.publish_releases();
        self.update_store(state, fresh).await;
        for app in &removed {
            tracing::info!(%app, "app removed by the control plane");
        }
        if retry {
            tracing::debug!(
                sequence = state.sequence,
                apps = self.serving.len(),
                "desired state partly applied; downloads retried on the next poll"
            );
            return;
        }
        tracing::info!(
            sequence = state.sequence,
            apps = self.serving.len(),
            failed = self.failed.len(),
            "desired state applied"
        );
        match envelope {
            Some(bytes) => self.remember(state.clone(), bytes).await,
            None => {
                self.metrics.desired_sequence.set(clamp_i64(state.sequence));
                self.setup.applied = Some(state.clone());
            }
        }
    }

    /// The store follows what serves: fresh releases become active, apps the state does not
    /// name lose their record (config bundles keep theirs).
    async fn update_store(&self, state: &DesiredState, fresh: Vec<Release>) {
        let store = self.store.clone();
        let named: BTreeSet<String> = state.apps.iter().map(|a| a.app.clone()).collect();
        let keep = self.config_store_apps.clone();
        let result = tokio::task::spawn_blocking(move || {
            for r in &fresh {
                if let Err(e) = store.activate(r) {
                    tracing::error!(app = %r.app, error = %e, "cannot record the active release; a restart serves the one before");
                }
            }
            for entry in store.apps() {
                let Ok((app, _)) = entry else { continue };
                if !named.contains(&app)
                    && !keep.contains(&app)
                    && let Err(e) = store.set_app(&app, None)
                {
                    tracing::error!(%app, error = %e, "cannot remove the app's store record");
                }
            }
        })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "store update task failed");
        }
    }

    fn keep_previous(&self, entry: &DesiredApp, next: &mut BTreeMap<String, Served>) {
        if let Some(s) = self.serving.get(&entry.app) {
            next.insert(entry.app.clone(), s.clone());
        }
    }

    fn record_failure(&mut self, entry: &DesiredApp, error: String) {
        let known = self
            .failed
            .get(&entry.app)
            .is_some_and(|f| f.digest == entry.digest);
        if !known {
            self.metrics
                .sync_failures
                .with_label_values(&["release"])
                .inc();
            tracing::error!(app = %entry.app, version = %entry.version, digest = %entry.digest, %error, "cannot run the release the control plane assigned; the previous release keeps serving");
        }
        self.failed.insert(
            entry.app.clone(),
            FailedRelease {
                app: entry.app.clone(),
                digest: entry.digest,
                error,
            },
        );
    }

    /// Gets the bundle (from the store, else from its sources), installs it under the node's
    /// trust policy and loads it; also says where the bytes came from (`None`: the store).
    async fn prepare(
        &self,
        entry: &DesiredApp,
    ) -> Result<(Release, LoadedApp, Option<String>), ReleaseError> {
        let cap = self.limits.max_compressed;
        if entry.size > cap {
            return Err(ReleaseError::permanent(format!(
                "bundle is {} bytes, over this node's [store] max_bundle_size ({cap})",
                entry.size
            )));
        }
        let sig = DesiredState::signature_file(entry)
            .map_err(|e| ReleaseError::permanent(e.to_string()))?;
        let store = self.store.clone();
        let digest = entry.digest;
        let cached = tokio::task::spawn_blocking(move || store.read_blob(&digest).ok())
            .await
            .map_err(|e| ReleaseError::permanent(format!("store task: {e}")))?;
        let (bytes, source) = match cached {
            Some(b) => (b, None),
            None => {
                let (b, from) = self.fetch(entry).await?;
                (b, Some(from))
            }
        };
        let pipeline = Pipeline {
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            policy: self.policy.clone(),
            limits: self.limits,
        };
        // Verify and write, then load (compiling off the async workers, so the accept loops
        // keep accepting); the agent activates the release when it swaps. The signed
        // document's tenant labels the app (install checked it equals the entry's).
        let checked = pipeline
            .install(bytes, sig, unix_now(), Mode::Desired(entry.clone()), |_| {})
            .await
            .map_err(|e| match e {
                PipelineError::Load { error, .. }
                | PipelineError::ActiveUnloadable { error, .. } => {
                    ReleaseError::permanent(format!("load: {error}"))
                }
                PipelineError::Task(e) => ReleaseError::permanent(format!("install task: {e}")),
                other => ReleaseError::permanent(other.to_string()),
            })?;
        Ok((checked.installed.release, checked.app, source))
    }

    /// The bundle's bytes from the first of its sources that serves them whole: each mirror
    /// the desired state lists, in order, then the control plane's `GET /v1/bundles/<digest>`.
    /// Every attempt is capped at `entry.size` bytes (already checked against the node's
    /// `max_bundle_size`), has the download deadlines, and must hash to the digest; a failed
    /// one is logged and the next is tried. Returns the bytes and what served them
    /// (`AppHealth::source`). When every source fails, the error names each with its reason;
    /// it is transient (retried on the next poll) when any of them may succeed on a retry.
    async fn fetch(&self, entry: &DesiredApp) -> Result<(Vec<u8>, String), ReleaseError> {
        // A download retried on every poll through an outage fails at every source each time:
        // say so at a sane rate (the metrics count every attempt).
        static SOURCE_FAILURES: LogLimiter = LogLimiter::new(20, Duration::from_secs(600));
        let mut failures: Vec<String> = Vec::new();
        let mut transient = false;
        for source in entry.fetch_order() {
            let (source, kind) = match source {
                Ok(s) => (s, s.kind()),
                Err(e) => {
                    if let LogDecision::Log { suppressed } = SOURCE_FAILURES.check() {
                        tracing::warn!(app = %entry.app, digest = %entry.digest, error = %e, suppressed, "skipping a bundle source");
                    }
                    self.count_fetch(SourceKind::Mirror, "unsupported");
                    failures.push(e.to_string());
                    continue;
                }
            };
            let started = std::time::Instant::now();
            match self.fetch_from(source, entry).await {
                Ok(bytes) => {
                    self.count_fetch(kind, "ok");
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(app = %entry.app, digest = %entry.digest, %source, source_kind = %kind.label(), bytes = bytes.len(), ms, "bundle fetched");
                    let served_by = match source {
                        Source::ControlPlane => api::SOURCE_CONTROL_PLANE.to_owned(),
                        Source::Http(url) | Source::Oci(url) => url.to_owned(),
                    };
                    return Ok((bytes, served_by));
                }
                Err(e) => {
                    self.count_fetch(kind, e.outcome);
                    match SOURCE_FAILURES.check() {
                        LogDecision::Log { suppressed } => {
                            tracing::warn!(app = %entry.app, digest = %entry.digest, %source, source_kind = %kind.label(), error = %e.message, suppressed, "bundle source failed; trying the next");
                        }
                        LogDecision::Drop => {
                            tracing::debug!(app = %entry.app, digest = %entry.digest, %source, error = %e.message, "bundle source failed; trying the next");
                        }
                    }
                    transient |= e.transient;
                    failures.push(format!("{source}: {}", e.message));
                }
            }
        }
        Err(ReleaseError {
            message: format!(
                "download: no source served the bundle ({})",
                failures.join("; ")
            ),
            transient,
        })
    }

    fn count_fetch(&self, kind: SourceKind, outcome: &str) {
        self.metrics
            .bundle_fetches
            .with_label_values(&[kind.label(), outcome])
            .inc();
    }

    /// One attempt at one source: the size and digest checks are the same whatever serves.
    async fn fetch_from(
        &self,
        source: Source<'_>,
        entry: &DesiredApp,
    ) -> Result<Vec<u8>, FetchError> {
        let timing = DownloadTiming::for_size(entry.size, self.setup.request_timeout);
        let r = match source {
            Source::Http(url) => {
                self.setup
                    .client
                    .download_url(url, entry.size, timing)
                    .await
            }
            Source::Oci(raw) => {
                let body = self.pull_from_registry(raw, entry).await?;
                self.metrics
                    .bundle_fetch_bytes
                    .with_label_values(&[source.kind().label()])
                    .inc_by(body.len() as u64);
                return check_fetched(body, entry);
            }
            Source::ControlPlane => {
                let path = format!("{}{}", api::BUNDLES, entry.digest);
                self.setup.client.download(&path, entry.size, timing).await
            }
        }
        .map_err(|e| {
            let f = Failure::of(&e);
            FetchError {
                message: e.to_string(),
                // A URL that cannot be requested stays so; only the network's failures pass.
                transient: f.transient() && !matches!(e, ClientError::Url { .. }),
                outcome: match e {
                    ClientError::Url { .. } => "unsupported",
                    _ => f.label(),
                },
            }
        })?;
        self.metrics
            .bundle_fetch_bytes
            .with_label_values(&[source.kind().label()])
            .inc_by(r.body.len() as u64);
        check_fetched(r.body.to_vec(), entry)
    }

    /// The bundle layer of the OCI artifact `raw` names (as `outpost bundle push` lays it out),
    /// pulled under the node's `[registry]` settings; its attached signatures are not needed,
    /// the desired state carries the signature file.
    async fn pull_from_registry(
        &self,
        raw: &str,
        entry: &DesiredApp,
    ) -> Result<Vec<u8>, FetchError> {
        use crate::oci::OciError;
        let unsupported = |message: String| FetchError {
            message,
            transient: false,
            outcome: "unsupported",
        };
        let reference: crate::oci::Reference =
            raw.parse().map_err(|e| unsupported(format!("{e}")))?;
        let client = crate::oci::options_for(&self.setup.registry, &reference.registry)
            .and_then(|o| crate::oci::Client::new(&reference.registry, o))
            .map_err(|e| unsupported(e.to_string()))?;
        let limits = crate::oci::artifact::PullLimits {
            max_bundle: entry.size,
            ..Default::default()
        };
        let pulled = crate::oci::artifact::pull_bundle(&client, &reference, &limits, &|_| ())
            .await
            .map_err(|e| {
                let (transient, outcome) = match &e {
                    OciError::Transport { .. } | OciError::Interrupted { .. } => {
                        (true, "unreachable")
                    }
                    OciError::Status { status, .. } if *status >= 500 => (true, "server_error"),
                    OciError::DigestMismatch { .. } => (false, "wrong_digest"),
                    OciError::SizeMismatch { .. } | OciError::TooLarge { .. } => {
                        (false, "wrong_size")
                    }
                    OciError::NotFound { .. }
                    | OciError::Unauthorized { .. }
                    | OciError::Status { .. } => (true, "rejected"),
                    _ => (false, "bad_response"),
                };
                FetchError {
                    message: e.to_string(),
                    transient,
                    outcome,
                }
            })?;
        Ok(pulled.bundle)
    }
}

/// The size and digest checks every source's bytes get.
fn check_fetched(body: Vec<u8>, entry: &DesiredApp) -> Result<Vec<u8>, FetchError> {
    {
        if body.len() as u64 != entry.size {
            return Err(FetchError {
                message: format!(
                    "{} bytes, but the desired state says {}",
                    body.len(),
                    entry.size
                ),
                transient: false,
                outcome: "wrong_size",
            });
        }
        let got = crate::bundle::digest(&body);
        if got != entry.digest {
            return Err(FetchError {
                message: format!("content hashes to {got}, not {}", entry.digest),
                transient: false,
                outcome: "wrong_digest",
            });
        }
        Ok(body)
    }
}

impl Agent {
    // === reporting ===

    fn report(&self) -> SyncReport {
        let snap = health::snapshot(&self.metrics);
        let apps = self
            .serving
            .values()
            .map(|s| {
                let d = snap
                    .get(&s.release.app)
                    .cloned()
                    .unwrap_or_default()
                    .since(&s.baseline);
                AppHealth {
                    app: s.release.app.clone(),
                    version: s.release.version.clone(),
                    digest: s.release.digest,
                    active_since: s.active_since,
                    requests: d.requests,
                    errors: d.errors,
                    instantiate_failures: d.instantiate_failures,
                    latency_p99_ms: d.p99_ms(),
                    source: s.source.clone(),
                }
            })
            .collect();
        SyncReport {
            applied_sequence: self.setup.applied.as_ref().map(|s| s.sequence),
            outpost_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            apps,
            failed: self.failed.values().cloned().collect(),
        }
    }

    fn publish_releases(&self) {
        let fixed = self
            .fixed_releases
            .iter()
            .filter(|r| !self.serving.contains_key(&r.app));
        self.metrics.set_app_releases(
            fixed
                .chain(self.serving.values().map(|s| &s.release))
                .map(|r| (r.app.as_str(), r.version.as_str(), r.digest.to_string())),
        );
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// How long a sync carrying `report` may be held: the poll interval (at least 1 s) while the
/// node has news for the control plane — its apps, their request or error counts or its
/// failures changed since `last`, the report it took — so a busy node reports at its poll
/// interval as before; [`api::MAX_SYNC_HOLD`] for a quiet one, whose next report would say
/// nothing new. A quiet node that gets traffic reports it at the end of its current hold (at
/// most 55 s later); a new desired state reaches it at once either way.
fn hold_for(last: Option<&SyncReport>, report: &SyncReport, poll: Duration) -> Duration {
    let quiet = last.is_some_and(|l| {
        l.applied_sequence == report.applied_sequence
            && l.apps == report.apps
            && l.failed == report.failed
    });
    if quiet {
        api::MAX_SYNC_HOLD
    } else {
        poll.clamp(Duration::from_secs(1), api::MAX_SYNC_HOLD)
    }
}

/// How long to wait after a sync answered `r` in `elapsed`: at once when the control plane
/// holds syncs and either sent a new state (the next sync reports it applied, then waits held)
/// or held this one a while; `poll` otherwise — an older control plane, or a held sync answered
/// within a second with nothing new (a draining server), which must not become a busy loop.
fn next_poll(r: &crate::control::client::Response, elapsed: Duration, poll: Duration) -> Duration {
    if r.held && (r.status == 200 || elapsed >= Duration::from_secs(1)) {
        Duration::ZERO
    } else {
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_nodes_hold_long_and_busy_ones_at_their_poll_interval() {
        let poll = Duration::from_secs(10);
        let app = |requests| AppHealth {
            app: "a".into(),
            version: "1.0.0".into(),
            digest: crate::bundle::digest(b"x"),
            active_since: 1,
            requests,
            errors: 0,
            instantiate_failures: 0,
            latency_p99_ms: None,
            source: None,
        };
        let report = |requests, uptime| SyncReport {
            applied_sequence: Some(3),
            outpost_version: "v".into(),
            uptime_secs: uptime,
            apps: vec![app(requests)],
            failed: Vec::new(),
        };
        // The first report, and one whose counts moved: the poll interval.
        assert_eq!(hold_for(None, &report(5, 10), poll), poll);
        assert_eq!(hold_for(Some(&report(5, 10)), &report(6, 20), poll), poll);
        // Nothing new but the uptime: the longest hold.
        assert_eq!(
            hold_for(Some(&report(5, 10)), &report(5, 20), poll),
            api::MAX_SYNC_HOLD
        );
        // A poll interval under a second still holds a whole second.
        assert_eq!(
            hold_for(None, &report(5, 10), Duration::from_millis(200)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn held_syncs_are_asked_again_at_once_but_never_in_a_busy_loop() {
        let poll = Duration::from_secs(10);
        let r = |status, held| crate::control::client::Response {
            status,
            etag: None,
            held,
            body: bytes::Bytes::new(),
        };
        let (quick, slow) = (Duration::from_millis(5), Duration::from_secs(9));
        // A control plane that holds syncs.
        assert_eq!(next_poll(&r(200, true), quick, poll), Duration::ZERO);
        assert_eq!(next_poll(&r(304, true), slow, poll), Duration::ZERO);
        assert_eq!(next_poll(&r(304, true), quick, poll), poll);
        // An older one.
        assert_eq!(next_poll(&r(200, false), quick, poll), poll);
        assert_eq!(next_poll(&r(304, false), slow, poll), poll);
    }

    #[test]
    fn failures_map_to_labels_and_retry_policy() {
        let status = |status| ClientError::Status {
            method: "GET",
            url: "u".into(),
            status,
            message: String::new(),
        };
        assert_eq!(Failure::of(&status(503)), Failure::ServerError);
        assert!(Failure::of(&status(503)).transient());
        assert_eq!(Failure::of(&status(429)), Failure::ServerError);
        assert_eq!(Failure::of(&status(404)), Failure::Rejected);
        assert!(!Failure::of(&status(404)).transient());
        let too_large = ClientError::TooLarge {
            method: "GET",
            url: "u".into(),
            limit: 1,
        };
        assert_eq!(Failure::of(&too_large).label(), "bad_response");
        assert!(!Failure::of(&too_large).transient());
    }
}
