//! The rollout engine: waves with health gates and automatic rollback, as a pure state machine.
//!
//! Owns: wave sizing ([`plan_waves`]), the per-wave states (pending → deploying → baking →
//! passed, or failed), the gates (a node that cannot run the release; the release's 5xx share
//! over the wave's nodes), and what to do about them ([`Action`]s: assign the release to a node,
//! restore a node's previous release). Operator commands ([`Rollout::pause`],
//! [`Rollout::resume`], [`Rollout::abort`]) are transitions here too.
//! Must not: do I/O, read the clock (`now_ms` is passed in) or touch node records — the caller
//! ([`super::service`]) applies the actions and persists the rollout with them in one
//! transaction. Tests drive it in virtual time. See `docs/rollout.md` ("Waves").
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::api::{AppHealth, FailedRelease, RolloutState, RolloutStatus, WaveState, WaveStatus};
use crate::bundle::desired::DesiredApp;

/// A wave's error rate is judged only once its nodes answered this many requests: one failed
/// request out of two is noise, not a signal.
pub const MIN_REQUESTS_FOR_GATE: u64 = 5;
/// Longest bake time accepted (a day): longer is almost certainly a unit mistake.
pub const MAX_BAKE_SECS: u64 = 24 * 3600;

/// One app's release as assigned to a node: exactly the desired state's entry for it (stored in
/// sled as it is sealed into a node's document).
pub type Release = DesiredApp;

/// What the engine knows about one node of the rollout at a tick.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// The node's current assignment for the rollout's app.
    pub assigned: Option<&'a Release>,
    /// From its latest report.
    pub apps: &'a [AppHealth],
    pub failed: &'a [FailedRelease],
    /// Revoked nodes are out of the fleet: nothing is waited for from them.
    pub revoked: bool,
    /// Heard from within the control plane's `node_offline_after`.
    pub online: bool,
}

/// Node id → view. A node missing here is treated like a revoked one.
pub type Reports<'a> = BTreeMap<&'a str, NodeView<'a>>;

/// What the caller must do to node records after a tick or a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Set the node's assignment of `release.app` to `release`.
    Assign { node: String, release: Release },
    /// Put back the node's assignment from before the rollout (`None`: remove the app).
    Restore {
        node: String,
        app: String,
        previous: Option<Release>,
    },
    /// The rollout succeeded: nodes enrolled later into `group` get `release`.
    Succeeded { group: String, release: Release },
}

/// One wave: the nodes it adds, its state and its latest numbers. The API's `WaveStatus` is the
/// same record (stored in sled as it is sent to operators), so the engine keeps no mirror of it.
pub type Wave = WaveStatus;

/// A rollout of one release to a fixed set of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub release: Release,
    pub group: String,
    pub max_error_rate: f64,
    pub bake_ms: u64,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub waves: Vec<Wave>,
    /// Each node the rollout assigned, with its assignment of the app before (`None`: it had
    /// none). Recorded when its wave starts; what a rollback restores.
    pub previous: BTreeMap<String, Option<Release>>,
}

/// Why a rollout request is invalid (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("waves must not be empty")]
    NoWaves,
    #[error("wave {0}% is out of range; each wave is 1 to 100 (cumulative percent)")]
    OutOfRange(u32),
    #[error("waves must be strictly increasing ({0}% then {1}%)")]
    NotIncreasing(u32, u32),
    #[error("the last wave must be 100%, not {0}%")]
    LastNotFull(u32),
    #[error("max_error_rate {0} is not between 0 and 1")]
    ErrorRate(f64),
    #[error("bake time {0}s is longer than a day")]
    Bake(u64),
    #[error("the group matches no enrolled node")]
    NoNodes,
}

/// Checks the wave percentages and splits `nodes` (in wave order, fixed for the rollout's life)
/// into waves: the count through wave k is `max(ceil(p_k * N / 100), count_{k-1} + 1)`, capped at N;
/// waves that would add no node are dropped. Every wave adds at least one node, so a 1% canary
/// of three nodes is one node, not zero.
pub fn plan_waves(percents: &[u32], nodes: &[String]) -> Result<Vec<Wave>, PlanError> {
    let Some(&last) = percents.last() else {
        return Err(PlanError::NoWaves);
    };
    for &p in percents {
        if !(1..=100).contains(&p) {
            return Err(PlanError::OutOfRange(p));
        }
    }
    for w in percents.windows(2) {
        if w[0] >= w[1] {
            return Err(PlanError::NotIncreasing(w[0], w[1]));
        }
    }
    if last != 100 {
        return Err(PlanError::LastNotFull(last));
    }
    let n = nodes.len();
    if n == 0 {
        return Err(PlanError::NoNodes);
    }
    let mut waves = Vec::new();
    let mut done = 0usize;
    for &p in percents {
        let want = (p as usize * n).div_ceil(100);
        let through = want.max(done + 1).min(n);
        if through == done {
            continue;
        }
        waves.push(Wave {
            percent: p,
            nodes: nodes[done..through].to_vec(),
            state: WaveState::Pending,
            started_ms: None,
            converged_ms: None,
            finished_ms: None,
            active: 0,
            requests: 0,
            errors: 0,
            offline: Vec::new(),
        });
        done = through;
    }
    Ok(waves)
}

/// Checks the gate settings of a new rollout.
pub fn check_gates(max_error_rate: f64, bake_secs: u64) -> Result<(), PlanError> {
    if !max_error_rate.is_finite() || !(0.0..=1.0).contains(&max_error_rate) {
        return Err(PlanError::ErrorRate(max_error_rate));
    }
    if bake_secs > MAX_BAKE_SECS {
        return Err(PlanError::Bake(bake_secs));
    }
    Ok(())
}

/// Why an operator command does not apply (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout {id} is {state}; cannot {command}")]
pub struct CommandError {
    pub id: u64,
    pub state: &'static str,
    pub command: &'static str,
}

pub fn state_name(s: RolloutState) -> &'static str {
    match s {
        RolloutState::Running => "running",
        RolloutState::Paused => "paused",
        RolloutState::Succeeded => "succeeded",
        RolloutState::RolledBack => "rolled_back",
        RolloutState::Aborted => "aborted",
    }
}

pub fn wave_state_name(s: WaveState) -> &'static str {
    match s {
        WaveState::Pending => "pending",
        WaveState::Deploying => "deploying",
        WaveState::Baking => "baking",
        WaveState::Passed => "passed",
        WaveState::Failed => "failed",
    }
}

// === impl Rollout ===

impl Rollout {
    /// A running rollout whose first wave starts at the first [`tick`].
    pub fn new(
        id: u64,
        release: Release,
        group: String,
        waves: Vec<Wave>,
        max_error_rate: f64,
        bake_secs: u64,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            release,
            group,
            max_error_rate,
            bake_ms: bake_secs.saturating_mul(1000),
            created_ms: now_ms,
            finished_ms: None,
            state: RolloutState::Running,
            reason: None,
            waves,
            previous: BTreeMap::new(),
        }
    }

    /// Every node of the rollout, wave by wave.
    pub fn nodes(&self) -> impl Iterator<Item = &String> {
        self.waves.iter().flat_map(|w| w.nodes.iter())
    }

    /// Stops advancing: no wave starts or passes until [`Rollout::resume`]. Gates still apply,
    /// so a paused rollout whose release fails still rolls back.
    pub fn pause(&mut self) -> Result<(), CommandError> {
        if self.state != RolloutState::Running {
            return Err(self.refuse("pause"));
        }
        self.state = RolloutState::Paused;
        tracing::info!(rollout = self.id, app = %self.release.app, "rollout paused");
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), CommandError> {
        if self.state != RolloutState::Paused {
            return Err(self.refuse("resume"));
        }
        self.state = RolloutState::Running;
        tracing::info!(rollout = self.id, app = %self.release.app, "rollout resumed");
        Ok(())
    }

    /// Stops the rollout and puts every node it touched back on its previous release.
    pub fn abort(&mut self, by: &str, now_ms: u64) -> Result<Vec<Action>, CommandError> {
        if self.state.is_final() {
            return Err(self.refuse("abort"));
        }
        Ok(self.roll_back(
            RolloutState::Aborted,
            format!("aborted by operator {by}"),
            now_ms,
        ))
    }

    fn refuse(&self, command: &'static str) -> CommandError {
        CommandError {
            id: self.id,
            state: state_name(self.state),
            command,
        }
    }

    /// Index of the wave in progress (the first that has not passed).
    fn current(&self) -> Option<usize> {
        self.waves.iter().position(|w| w.state != WaveState::Passed)
    }

    fn roll_back(&mut self, state: RolloutState, reason: String, now_ms: u64) -> Vec<Action> {
        if let Some(k) = self.current() {
            let w = &mut self.waves[k];
            if w.state != WaveState::Pending {
                w.state = WaveState::Failed;
                w.finished_ms = Some(now_ms);
            }
        }
        self.state = state;
        self.finished_ms = Some(now_ms);
        tracing::warn!(
            rollout = self.id,
            app = %self.release.app,
            nodes = self.previous.len(),
            state = state_name(state),
            %reason,
            "rollout stopped; restoring every node it touched"
        );
        self.reason = Some(reason);
        self.previous
            .iter()
            .map(|(node, previous)| Action::Restore {
                node: node.clone(),
                app: self.release.app.clone(),
                previous: previous.clone(),
            })
            .collect()
    }

    /// The API view; times in unix seconds (rollout) and milliseconds (waves).
    pub fn status(&self) -> RolloutStatus {
        RolloutStatus {
            id: self.id,
            app: self.release.app.clone(),
            version: self.release.version.clone(),
            digest: self.release.digest,
            group: self.group.clone(),
            state: self.state,
            max_error_rate: self.max_error_rate,
            bake_secs: self.bake_ms / 1000,
            created: self.created_ms / 1000,
            finished: self.finished_ms.map(|m| m / 1000),
            reason: self.reason.clone(),
            waves: self.waves.clone(),
        }
    }
}

/// The release's health on one node, if the node runs it.
fn health<'a>(view: &NodeView<'a>, release: &Release) -> Option<&'a AppHealth> {
    view.apps
        .iter()
        .find(|h| h.app == release.app && h.digest == release.digest)
}

/// Advances `r` by one step given the nodes' latest reports. Returns what to change on node
/// records; the caller persists `r` together with those changes.
pub fn tick(r: &mut Rollout, reports: &Reports<'_>, now_ms: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    if r.state.is_final() {
        return actions;
    }
    let running = r.state == RolloutState::Running;
    let Some(mut k) = r.current() else {
        // Every wave passed but the state was not final (cannot happen through tick).
        return succeed(r, now_ms, actions);
    };
    loop {
        if r.waves[k].state == WaveState::Pending {
            if !running {
                return actions;
            }
            start_wave(r, k, reports, now_ms, &mut actions);
        }
        // Nodes of waves up to k that are still in the fleet.
        let live: Vec<(String, Option<NodeView<'_>>)> = r.waves[..=k]
            .iter()
            .flat_map(|w| w.nodes.iter())
            .map(|n| {
                (
                    n.clone(),
                    reports.get(n.as_str()).filter(|v| !v.revoked).copied(),
                )
            })
            .collect();
        // Gate 1: a node could not run the release.
        for (node, view) in &live {
            if let Some(f) = view.as_ref().and_then(|v| {
                v.failed
                    .iter()
                    .find(|f| f.app == r.release.app && f.digest == r.release.digest)
            }) {
                let reason = format!("node {node} could not run the release: {}", f.error);
                actions.extend(r.roll_back(RolloutState::RolledBack, reason, now_ms));
                return actions;
            }
        }
        // Numbers: the release's traffic on every node up to this wave.
        let (mut requests, mut errors) = (0u64, 0u64);
        let mut all_active = true;
        for (node, view) in &live {
            let Some(view) = view else { continue };
            match health(view, &r.release) {
                Some(h) => {
                    requests = requests.saturating_add(h.requests);
                    errors = errors.saturating_add(h.errors);
                }
                None if r.waves[..=k].iter().any(|w| w.offline.contains(node)) => {}
                None => all_active = false,
            }
        }
        let wave_active = r.waves[k]
            .nodes
            .iter()
            .filter(|n| {
                reports
                    .get(n.as_str())
                    .is_some_and(|v| health(v, &r.release).is_some())
            })
            .count();
        {
            let w = &mut r.waves[k];
            w.active = wave_active;
            w.requests = requests;
            w.errors = errors;
        }
        // A wave proves something only if one of its nodes runs the release, unless every node
        // it could have waited for is gone (offline at its start or revoked).
        let waited_for = r.waves[k]
            .nodes
            .iter()
            .filter(|n| {
                !r.waves[k].offline.contains(n)
                    && reports.get(n.as_str()).is_some_and(|v| !v.revoked)
            })
            .count();
        let all_active = all_active && (wave_active > 0 || waited_for == 0);
        // Gate 2: the release's 5xx share, judged as soon as there is enough traffic (also while
        // the wave is still deploying: a release that hurts on the first node need not wait
        // for the slowest one).
        if requests >= MIN_REQUESTS_FOR_GATE {
            let rate = errors as f64 / requests as f64;
            if rate > r.max_error_rate {
                let w = &r.waves[k];
                let reason = format!(
                    "wave {} ({}%): error rate {rate:.2} > {:.2} ({errors} of {requests} requests failed)",
                    k + 1,
                    w.percent,
                    r.max_error_rate
                );
                actions.extend(r.roll_back(RolloutState::RolledBack, reason, now_ms));
                return actions;
            }
        }
        match r.waves[k].state {
            WaveState::Deploying => {
                // Re-assert assignments: idempotent, and repairs a crash between persisting
                // the rollout and the node records.
                for (node, view) in &live {
                    let just_assigned = actions
                        .iter()
                        .any(|a| matches!(a, Action::Assign { node: n, .. } if n == node));
                    if let Some(v) = view
                        && v.assigned.is_none_or(|a| a != &r.release)
                        && !just_assigned
                    {
                        actions.push(Action::Assign {
                            node: node.clone(),
                            release: r.release.clone(),
                        });
                    }
                }
                if all_active {
                    let w = &mut r.waves[k];
                    w.state = WaveState::Baking;
                    w.converged_ms = Some(now_ms);
                    tracing::info!(
                        rollout = r.id,
                        app = %r.release.app,
                        wave = k + 1,
                        nodes = w.nodes.len(),
                        "wave converged; baking"
                    );
                }
                return actions;
            }
            WaveState::Baking => {
                let baked = r.waves[k]
                    .converged_ms
                    .is_some_and(|c| now_ms.saturating_sub(c) >= r.bake_ms);
                if !baked || !running {
                    return actions;
                }
                let w = &mut r.waves[k];
                w.state = WaveState::Passed;
                w.finished_ms = Some(now_ms);
                tracing::info!(
                    rollout = r.id,
                    app = %r.release.app,
                    wave = k + 1,
                    nodes = w.nodes.len(),
                    requests,
                    errors,
                    "wave passed"
                );
                if k + 1 == r.waves.len() {
                    return succeed(r, now_ms, actions);
                }
                k += 1;
            }
            // Pending was started above; Passed and Failed are never current here.
            WaveState::Pending | WaveState::Passed | WaveState::Failed => return actions,
        }
    }
}

fn start_wave(
    r: &mut Rollout,
    k: usize,
    reports: &Reports<'_>,
    now_ms: u64,
    actions: &mut Vec<Action>,
) {
    let nodes = r.waves[k].nodes.clone();
    for node in &nodes {
        let view = reports.get(node.as_str());
        if view.is_none_or(|v| v.revoked) {
            continue;
        }
        if view.is_some_and(|v| !v.online) && !r.waves[k].offline.contains(node) {
            r.waves[k].offline.push(node.clone());
        }
        // Remember what the node ran before, once: a restarted wave must not record the new
        // release as "previous".
        r.previous
            .entry(node.clone())
            .or_insert_with(|| view.and_then(|v| v.assigned.cloned()));
        actions.push(Action::Assign {
            node: node.clone(),
            release: r.release.clone(),
        });
    }
    let w = &mut r.waves[k];
    w.state = WaveState::Deploying;
    w.started_ms = Some(now_ms);
    tracing::info!(
        rollout = r.id,
        app = %r.release.app,
        version = %r.release.version,
        wave = k + 1,
        percent = w.percent,
        nodes = w.nodes.len(),
        offline = w.offline.len(),
        "wave started"
    );
}

fn succeed(r: &mut Rollout, now_ms: u64, mut actions: Vec<Action>) -> Vec<Action> {
    r.state = RolloutState::Succeeded;
    r.finished_ms = Some(now_ms);
    tracing::info!(
        rollout = r.id,
        app = %r.release.app,
        version = %r.release.version,
        nodes = r.previous.len(),
        "rollout succeeded"
    );
    actions.push(Action::Succeeded {
        group: r.group.clone(),
        release: r.release.clone(),
    });
    actions
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{i:016x}")).collect()
    }

    fn sizes(p: &[u32], n: usize) -> Vec<(u32, usize)> {
        plan_waves(p, &ids(n))
            .unwrap()
            .iter()
            .map(|w| (w.percent, w.nodes.len()))
            .collect()
    }

    fn release(version: &str, seed: &[u8]) -> Release {
        Release {
            app: "greeter".into(),
            tenant: None,
            version: version.into(),
            digest: crate::bundle::digest(seed),
            size: seed.len() as u64,
            signature: "c2ln".into(),
            hosts: vec![],
            sources: vec![],
        }
    }

    fn health(r: &Release, requests: u64, errors: u64) -> AppHealth {
        AppHealth {
            app: r.app.clone(),
            version: r.version.clone(),
            digest: r.digest,
            active_since: 0,
            requests,
            errors,
            instantiate_failures: 0,
            latency_p99_ms: None,
            source: None,
        }
    }

    /// The fleet as the engine sees it: assignments applied from actions, reports set by tests.
    struct Fleet {
        assigned: BTreeMap<String, Option<Release>>,
        apps: BTreeMap<String, Vec<AppHealth>>,
        failed: BTreeMap<String, Vec<FailedRelease>>,
        revoked: Vec<String>,
        offline: Vec<String>,
    }

    impl Fleet {
        fn new(nodes: &[String], old: Option<&Release>) -> Self {
            Self {
                assigned: nodes.iter().map(|n| (n.clone(), old.cloned())).collect(),
                apps: nodes
                    .iter()
                    .map(|n| {
                        (
                            n.clone(),
                            old.map(|o| health(o, 0, 0)).into_iter().collect(),
                        )
                    })
                    .collect(),
                failed: BTreeMap::new(),
                revoked: Vec::new(),
                offline: Vec::new(),
            }
        }

        fn views(&self) -> Reports<'_> {
            self.assigned
                .iter()
                .map(|(n, a)| {
                    (
                        n.as_str(),
                        NodeView {
                            assigned: a.as_ref(),
                            apps: self.apps.get(n).map_or(&[][..], Vec::as_slice),
                            failed: self.failed.get(n).map_or(&[][..], Vec::as_slice),
                            revoked: self.revoked.contains(n),
                            online: !self.offline.contains(n),
                        },
                    )
                })
                .collect()
        }

        fn tick(&mut self, r: &mut Rollout, now: u64) -> Vec<Action> {
            let actions = tick(r, &self.views(), now);
            for a in &actions {
                match a {
                    Action::Assign { node, release } => {
                        self.assigned.insert(node.clone(), Some(release.clone()));
                    }
                    Action::Restore { node, previous, .. } => {
                        self.assigned.insert(node.clone(), previous.clone());
                    }
                    Action::Succeeded { .. } => {}
                }
            }
            actions
        }

        /// Nodes report whatever they are assigned as active, with this traffic.
        fn converge(&mut self, requests: u64, errors: u64) {
            for (n, a) in &self.assigned {
                self.apps.insert(
                    n.clone(),
                    a.iter().map(|r| health(r, requests, errors)).collect(),
                );
            }
        }
    }

    fn rollout(nodes: &[String], waves: &[u32], bake_secs: u64) -> Rollout {
        Rollout::new(
            7,
            release("2.0.0", b"new"),
            "site=lab".into(),
            plan_waves(waves, nodes).unwrap(),
            0.05,
            bake_secs,
            0,
        )
    }

    fn assigned_nodes(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Assign { node, .. } => Some(node.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn wave_sizing() {
        assert_eq!(sizes(&[1, 10, 50, 100], 3), vec![(1, 1), (10, 1), (50, 1)]);
        assert_eq!(
            sizes(&[1, 10, 50, 100], 100),
            vec![(1, 1), (10, 9), (50, 40), (100, 50)]
        );
        assert_eq!(sizes(&[1, 10, 50, 100], 1), vec![(1, 1)]);
        assert_eq!(sizes(&[100], 5), vec![(100, 5)]);
        assert_eq!(sizes(&[50, 100], 10), vec![(50, 5), (100, 5)]);
        assert_eq!(sizes(&[1, 2, 100], 20), vec![(1, 1), (2, 1), (100, 18)]);
        // Every node lands in exactly one wave, in order.
        let all: Vec<String> = plan_waves(&[5, 30, 100], &ids(17))
            .unwrap()
            .into_iter()
            .flat_map(|w| w.nodes)
            .collect();
        assert_eq!(all, ids(17));
    }

    #[test]
    fn wave_validation() {
        let n = ids(3);
        assert_eq!(plan_waves(&[], &n), Err(PlanError::NoWaves));
        assert_eq!(plan_waves(&[0, 100], &n), Err(PlanError::OutOfRange(0)));
        assert_eq!(plan_waves(&[101], &n), Err(PlanError::OutOfRange(101)));
        assert_eq!(
            plan_waves(&[10, 10, 100], &n),
            Err(PlanError::NotIncreasing(10, 10))
        );
        assert_eq!(plan_waves(&[10, 50], &n), Err(PlanError::LastNotFull(50)));
        assert_eq!(plan_waves(&[100], &[]), Err(PlanError::NoNodes));
        assert!(check_gates(0.05, 60).is_ok());
        assert!(check_gates(1.5, 60).is_err());
        assert!(check_gates(f64::NAN, 60).is_err());
        assert!(check_gates(0.0, MAX_BAKE_SECS + 1).is_err());
    }

    #[test]
    fn passes_wave_by_wave_after_baking() {
        let nodes = ids(3);
        let old = release("1.0.0", b"old");
        let mut fleet = Fleet::new(&nodes, Some(&old));
        let mut r = rollout(&nodes, &[1, 50, 100], 10);
        assert_eq!(r.waves.len(), 3);

        let a = fleet.tick(&mut r, 1_000);
        assert_eq!(assigned_nodes(&a), vec![nodes[0].clone()]);
        assert_eq!(r.waves[0].state, WaveState::Deploying);
        assert_eq!(r.previous[&nodes[0]], Some(old.clone()));
        // Not yet active: still deploying, the assignment is re-asserted.
        let a = fleet.tick(&mut r, 1_200);
        assert_eq!(r.waves[0].state, WaveState::Deploying);
        assert!(a.is_empty(), "{a:?}");

        fleet.converge(100, 1);
        fleet.tick(&mut r, 2_000);
        assert_eq!(r.waves[0].state, WaveState::Baking);
        assert_eq!(r.waves[0].converged_ms, Some(2_000));
        assert_eq!((r.waves[0].active, r.waves[0].requests), (1, 100));
        // Bake time not over: nothing moves; 1% errors is under the 5% gate.
        assert!(fleet.tick(&mut r, 11_999).is_empty());
        assert_eq!(r.waves[0].state, WaveState::Baking);
        // Bake over: wave 1 passes and wave 2 starts in the same tick.
        let a = fleet.tick(&mut r, 12_000);
        assert_eq!(r.waves[0].state, WaveState::Passed);
        assert_eq!(r.waves[1].state, WaveState::Deploying);
        assert_eq!(assigned_nodes(&a), vec![nodes[1].clone()]);

        fleet.converge(10, 0);
        fleet.tick(&mut r, 13_000);
        assert_eq!(r.waves[1].state, WaveState::Baking);
        assert_eq!(r.waves[1].requests, 20, "counts every node up to the wave");
        fleet.tick(&mut r, 23_000);
        fleet.converge(10, 0);
        fleet.tick(&mut r, 24_000);
        let a = fleet.tick(&mut r, 34_000);
        assert_eq!(r.state, RolloutState::Succeeded);
        assert_eq!(r.finished_ms, Some(34_000));
        assert!(matches!(a.last(), Some(Action::Succeeded { group, .. }) if group == "site=lab"));
        assert!(r.waves.iter().all(|w| w.state == WaveState::Passed));
        // Final: ticks do nothing.
        assert!(fleet.tick(&mut r, 99_000).is_empty());
    }

    #[test]
    fn error_rate_over_the_threshold_rolls_back() {
        let nodes = ids(3);
        let old = release("1.0.0", b"old");
        let mut fleet = Fleet::new(&nodes, Some(&old));
        // Node 2 had no release of the app before.
        fleet.assigned.insert(nodes[2].clone(), None);
        let mut r = rollout(&nodes, &[34, 100], 60);
        assert_eq!(r.waves[0].nodes.len(), 2);
        fleet.tick(&mut r, 0);
        // Four failures out of four requests: too little traffic to judge.
        fleet.converge(2, 2);
        fleet.tick(&mut r, 100);
        assert_eq!(r.state, RolloutState::Running);
        fleet.converge(6, 6);
        let a = fleet.tick(&mut r, 200);
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(
            r.reason.as_deref(),
            Some("wave 1 (34%): error rate 1.00 > 0.05 (12 of 12 requests failed)")
        );
        assert_eq!(r.waves[0].state, WaveState::Failed);
        assert_eq!(r.waves[1].state, WaveState::Pending);
        assert_eq!(
            a,
            vec![
                Action::Restore {
                    node: nodes[0].clone(),
                    app: "greeter".into(),
                    previous: Some(old.clone()),
                },
                Action::Restore {
                    node: nodes[1].clone(),
                    app: "greeter".into(),
                    previous: Some(old.clone()),
                },
            ]
        );
        assert_eq!(fleet.assigned[&nodes[2]], None, "never touched");
    }

    #[test]
    fn the_gate_applies_while_deploying_and_restores_absent_apps() {
        let nodes = ids(2);
        let mut fleet = Fleet::new(&nodes, None);
        let mut r = rollout(&nodes, &[100], 60);
        fleet.tick(&mut r, 0);
        // Only node 0 runs it yet, and it fails every request.
        let new = r.release.clone();
        fleet
            .apps
            .insert(nodes[0].clone(), vec![health(&new, 20, 3)]);
        let a = fleet.tick(&mut r, 100);
        assert_eq!(r.state, RolloutState::RolledBack);
        assert!(
            a.iter()
                .all(|a| matches!(a, Action::Restore { previous: None, .. }))
        );
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn a_failed_release_rolls_back_at_once() {
        let nodes = ids(3);
        let mut fleet = Fleet::new(&nodes, None);
        let mut r = rollout(&nodes, &[1, 100], 60);
        fleet.tick(&mut r, 0);
        fleet.failed.insert(
            nodes[0].clone(),
            vec![FailedRelease {
                app: "greeter".into(),
                digest: r.release.digest,
                error: "component traps at load".into(),
            }],
        );
        fleet.tick(&mut r, 200);
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(
            r.reason.unwrap(),
            format!(
                "node {} could not run the release: component traps at load",
                nodes[0]
            )
        );
        // A failure for another digest is not this rollout's business.
        let mut r = rollout(&nodes, &[1, 100], 60);
        let mut fleet = Fleet::new(&nodes, None);
        fleet.failed.insert(
            nodes[0].clone(),
            vec![FailedRelease {
                app: "greeter".into(),
                digest: crate::bundle::digest(b"other"),
                error: "x".into(),
            }],
        );
        fleet.tick(&mut r, 0);
        fleet.tick(&mut r, 200);
        assert_eq!(r.state, RolloutState::Running);
    }

    #[test]
    fn pause_holds_waves_but_not_gates() {
        let nodes = ids(2);
        let mut fleet = Fleet::new(&nodes, None);
        let mut r = rollout(&nodes, &[50, 100], 1);
        fleet.tick(&mut r, 0);
        fleet.converge(10, 0);
        fleet.tick(&mut r, 100);
        assert_eq!(r.waves[0].state, WaveState::Baking);
        r.pause().unwrap();
        assert!(r.pause().is_err());
        assert!(fleet.tick(&mut r, 60_000).is_empty());
        assert_eq!(r.waves[0].state, WaveState::Baking, "paused: does not pass");
        r.resume().unwrap();
        assert!(r.resume().is_err());
        let a = fleet.tick(&mut r, 60_100);
        assert_eq!(r.waves[0].state, WaveState::Passed);
        assert_eq!(assigned_nodes(&a), vec![nodes[1].clone()]);

        // Paused before a wave starts: it does not start; a failing release still rolls back.
        let mut fleet = Fleet::new(&nodes, None);
        let mut r = rollout(&nodes, &[50, 100], 0);
        r.pause().unwrap();
        assert!(fleet.tick(&mut r, 0).is_empty());
        assert_eq!(r.waves[0].state, WaveState::Pending);
        r.resume().unwrap();
        fleet.tick(&mut r, 10);
        r.pause().unwrap();
        fleet.converge(10, 10);
        fleet.tick(&mut r, 20);
        assert_eq!(r.state, RolloutState::RolledBack);
    }

    #[test]
    fn abort_restores_and_final_rollouts_refuse_commands() {
        let nodes = ids(2);
        let old = release("1.0.0", b"old");
        let mut fleet = Fleet::new(&nodes, Some(&old));
        let mut r = rollout(&nodes, &[50, 100], 60);
        fleet.tick(&mut r, 0);
        let a = r.abort("00112233aabbccdd", 500).unwrap();
        assert_eq!(r.state, RolloutState::Aborted);
        assert_eq!(
            r.reason.as_deref(),
            Some("aborted by operator 00112233aabbccdd")
        );
        assert_eq!(
            a,
            vec![Action::Restore {
                node: nodes[0].clone(),
                app: "greeter".into(),
                previous: Some(old),
            }]
        );
        assert!(r.abort("x", 600).is_err());
        assert!(r.pause().is_err());
        let e = r.resume().unwrap_err();
        assert_eq!(e.to_string(), "rollout 7 is aborted; cannot resume");
    }

    #[test]
    fn previous_is_recorded_once_and_revoked_nodes_are_not_awaited() {
        let nodes = ids(3);
        let old = release("1.0.0", b"old");
        let mut fleet = Fleet::new(&nodes, Some(&old));
        fleet.revoked.push(nodes[2].clone());
        let mut r = rollout(&nodes, &[100], 0);
        let a = fleet.tick(&mut r, 0);
        assert_eq!(assigned_nodes(&a), nodes[..2].to_vec());
        // A crash after persisting the rollout but before the node records: the wave is
        // re-asserted, and "previous" still says the old release.
        fleet.assigned.insert(nodes[0].clone(), Some(old.clone()));
        let a = fleet.tick(&mut r, 100);
        assert_eq!(assigned_nodes(&a), vec![nodes[0].clone()]);
        assert_eq!(r.previous[&nodes[0]], Some(old.clone()));
        assert!(!r.previous.contains_key(&nodes[2]));
        fleet.converge(0, 0);
        fleet.tick(&mut r, 200);
        fleet.tick(&mut r, 300);
        assert_eq!(
            r.state,
            RolloutState::Succeeded,
            "the revoked node is not awaited"
        );
    }

    #[test]
    fn nodes_offline_at_wave_start_are_assigned_but_not_awaited() {
        let nodes = ids(4);
        let old = release("1.0.0", b"old");
        let mut fleet = Fleet::new(&nodes, Some(&old));
        fleet.offline.push(nodes[1].clone());
        // Waves: nodes 0 and 1, then 2 and 3.
        let mut r = rollout(&nodes, &[50, 100], 0);
        let a = fleet.tick(&mut r, 0);
        assert_eq!(
            assigned_nodes(&a),
            nodes[..2].to_vec(),
            "offline is assigned too"
        );
        assert_eq!(r.waves[0].offline, vec![nodes[1].clone()]);
        assert_eq!(r.previous[&nodes[1]], Some(old.clone()));
        // Only node 0 answers: enough, the offline node is not waited for.
        let new = r.release.clone();
        fleet
            .apps
            .insert(nodes[0].clone(), vec![health(&new, 0, 0)]);
        fleet.tick(&mut r, 100);
        assert_eq!(r.waves[0].state, WaveState::Baking);
        fleet.tick(&mut r, 200);
        assert_eq!(r.waves[0].state, WaveState::Passed);
        assert_eq!(r.waves[1].state, WaveState::Deploying);
        // Node 3 goes silent after its wave started: that is waited for (a release that takes
        // nodes down must not pass for lack of news).
        fleet.offline.push(nodes[3].clone());
        fleet
            .apps
            .insert(nodes[2].clone(), vec![health(&new, 0, 0)]);
        for t in [300, 400, 500] {
            fleet.tick(&mut r, t);
        }
        assert_eq!(r.waves[1].state, WaveState::Deploying);
        assert!(r.waves[1].offline.is_empty());
        // Node 1 comes back, runs the release and fails: its traffic counts like anyone's.
        fleet.offline.retain(|n| n != &nodes[1]);
        fleet
            .apps
            .insert(nodes[1].clone(), vec![health(&new, 20, 20)]);
        let a = fleet.tick(&mut r, 600);
        assert_eq!(r.state, RolloutState::RolledBack);
        assert_eq!(a.len(), 4, "every assigned node is restored: {a:?}");
    }

    #[test]
    fn a_wave_needs_one_active_node_unless_all_were_offline() {
        let nodes = ids(2);
        let mut fleet = Fleet::new(&nodes, None);
        fleet.offline = nodes.clone();
        let mut r = rollout(&nodes, &[50, 100], 0);
        // Nothing to wait for in either wave: the rollout goes through, assigning both (they
        // pick the release up when they return).
        for t in [0, 100, 200, 300] {
            fleet.tick(&mut r, t);
        }
        assert_eq!(r.state, RolloutState::Succeeded);
        assert_eq!(r.previous.len(), 2);
        // Online but silent about the release: waited for.
        let mut fleet = Fleet::new(&nodes, None);
        let mut r = rollout(&nodes, &[50, 100], 0);
        for t in [0, 100, 200] {
            fleet.tick(&mut r, t);
        }
        assert_eq!(r.waves[0].state, WaveState::Deploying);
    }

    #[test]
    fn status_and_serde_round_trip() {
        let nodes = ids(2);
        let mut fleet = Fleet::new(&nodes, None);
        let mut r = rollout(&nodes, &[50, 100], 60);
        fleet.tick(&mut r, 1_500);
        let json = serde_json::to_string(&r).unwrap();
        let back: Rollout = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let s = r.status();
        assert_eq!(s.id, 7);
        assert_eq!(s.created, 0);
        assert_eq!(s.bake_secs, 60);
        assert_eq!(s.waves[0].started_ms, Some(1_500));
        assert_eq!(s.waves[0].state, WaveState::Deploying);
    }
}
