//! A fleet simulator for the control plane (issue 20): N nodes in one process speaking the real
//! protocol — each with its own ed25519 key and one-time enrolment token, signed requests, held
//! syncs (`Prefer: wait=N`), the desired state verified against the control plane's key and
//! checked fresh, every assigned bundle downloaded from the control plane and its digest
//! checked, health reports — but no wasm, so thousands of nodes fit one machine and what is
//! measured is the control plane.
//!
//! ```sh
//! cargo build --release --example fleet_sim
//! target/release/examples/fleet_sim --control-plane http://127.0.0.1:7070 \
//!     --operator-key operator.key --cp-key cp/control.pub -n 1000 --labels site=sim
//! ```
//!
//! It creates the tokens with the operator key, enrols the nodes (at most `--enrol-concurrency`
//! at a time), then keeps them syncing until killed, printing one JSON line of counters a second
//! on stdout: nodes enrolled and holding a sync, requests and body bytes so far (each way),
//! errors, and per app version how many nodes run it and the unix ms the first and last of them
//! applied it. `benches/fleet-sim.sh` starts a control plane, runs this, pushes and reads the
//! lines back. Bundles are downloaded from the control plane only (a release's mirrors are not
//! tried); release signatures are not checked (the simulated nodes pin no release key).
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use outpost::base::clock::{now_ms, unix_now};
use outpost::bundle::desired::{self, DesiredState};
use outpost::bundle::request_auth::Role;
use outpost::bundle::sign::{self, SigningKey, VerifyingKey};
use outpost::control::api::{
    self, AppHealth, EnrollRequest, EnrollResponse, SyncReport, TokenRequest, TokenResponse,
};
use outpost::control::client::{Client, DownloadTiming};

#[derive(Debug, Parser)]
struct Args {
    /// The control plane's URL.
    #[arg(long)]
    control_plane: String,
    /// An operator key of that control plane (to create the enrolment tokens).
    #[arg(long)]
    operator_key: PathBuf,
    /// The control plane's desired-state public key (its `control.pub`).
    #[arg(long)]
    cp_key: PathBuf,
    /// How many nodes.
    #[arg(short, long, default_value_t = 100)]
    nodes: usize,
    /// Labels of every node's token, `k=v,k=v`.
    #[arg(long, default_value = "site=sim")]
    labels: String,
    /// Each node's poll interval: a sync carrying news is held this long (at most 55 s); one
    /// with nothing new as long as the control plane allows, as the agent does.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    poll: Duration,
    /// Enrolments in flight at once.
    #[arg(long, default_value_t = 64)]
    enrol_concurrency: usize,
    /// Request timeout of every exchange (a held sync gets its hold on top).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Counters shared by every node task, printed once a second.
#[derive(Default)]
struct Stats {
    enrolled: AtomicU64,
    holding: AtomicU64,
    requests: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    errors: AtomicU64,
    downloads: AtomicU64,
    /// version → (nodes running it, first applied ms, last applied ms).
    versions: Mutex<BTreeMap<String, (u64, u64, u64)>>,
}

impl Stats {
    fn applied(&self, old: Option<&str>, new: &str) {
        let mut v = self
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = old
            && let Some(e) = v.get_mut(old)
        {
            e.0 = e.0.saturating_sub(1);
        }
        let now = now_ms();
        let e = v.entry(new.to_owned()).or_insert((0, now, now));
        e.0 += 1;
        e.2 = now;
    }

    fn line(&self, started: Instant) -> String {
        let versions: serde_json::Map<String, serde_json::Value> = self
            .versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, (n, first, last))| {
                (
                    k.clone(),
                    serde_json::json!({"nodes": n, "first_ms": first, "last_ms": last}),
                )
            })
            .collect();
        serde_json::json!({
            "t_ms": now_ms(),
            "elapsed_s": started.elapsed().as_secs_f64(),
            "enrolled": self.enrolled.load(Ordering::Relaxed),
            "holding": self.holding.load(Ordering::Relaxed),
            "requests": self.requests.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
            "downloads": self.downloads.load(Ordering::Relaxed),
            "versions": versions,
        })
        .to_string()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))
    };
    let operator = sign::parse_secret_key(&read(&args.operator_key)?)
        .with_context(|| format!("{}", args.operator_key.display()))?;
    let cp_key: VerifyingKey = sign::parse_public_key(read(&args.cp_key)?.trim_end())
        .with_context(|| format!("{}", args.cp_key.display()))?;
    let labels: BTreeMap<String, String> = args
        .labels
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--labels: {kv:?} is not k=v"))
        })
        .collect::<anyhow::Result<_>>()?;
    let op = Client::new(
        &args.control_plane,
        operator,
        Role::Operator,
        None,
        args.timeout,
    )?;
    let mut tokens = Vec::with_capacity(args.nodes);
    while tokens.len() < args.nodes {
        let count = (args.nodes - tokens.len()).min(1000) as u32;
        let r: TokenResponse = op
            .post_json(
                api::TOKENS,
                &TokenRequest {
                    labels: labels.clone(),
                    ttl_secs: 3600,
                    count,
                },
            )
            .await
            .context("creating enrolment tokens")?;
        if r.tokens.is_empty() {
            bail!("the control plane created no tokens");
        }
        tokens.extend(r.tokens);
    }
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let enrol_gate = Arc::new(tokio::sync::Semaphore::new(args.enrol_concurrency.max(1)));
    let hold = args.poll.clamp(Duration::from_secs(1), api::MAX_SYNC_HOLD);
    for (i, token) in tokens.into_iter().enumerate() {
        let node = Node {
            name: format!("sim-{i}"),
            client: op.with_key(SigningKey::generate(&mut rand_core::OsRng), Role::Node),
            cp_key,
            stats: stats.clone(),
            poll: args.poll,
            hold,
            timeout: args.timeout,
            started,
        };
        let gate = enrol_gate.clone();
        tokio::spawn(async move { node.run(token, gate).await });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        println!("{}", stats.line(started));
    }
}

struct Node {
    name: String,
    client: Client,
    cp_key: VerifyingKey,
    stats: Arc<Stats>,
    poll: Duration,
    hold: Duration,
    timeout: Duration,
    started: Instant,
}

impl Node {
    async fn run(self, token: String, gate: Arc<tokio::sync::Semaphore>) {
        let id = self.client.key().id().to_string();
        {
            let _permit = gate.acquire().await;
            let req = EnrollRequest {
                token,
                public_key: self
                    .client
                    .key()
                    .verifying_key()
                    .to_public_text()
                    .trim_end()
                    .to_owned(),
                name: self.name.clone(),
                labels: BTreeMap::new(),
            };
            loop {
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                match self
                    .client
                    .post_json::<_, EnrollResponse>(api::ENROLL, &req)
                    .await
                {
                    Ok(_) => break,
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        if matches!(e.status(), Some(401 | 403)) {
                            eprintln!("{}: enrolment refused: {e}", self.name);
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        self.stats.enrolled.fetch_add(1, Ordering::Relaxed);
        let mut applied: Option<DesiredState> = None;
        let mut apps: BTreeMap<String, AppHealth> = BTreeMap::new();
        let mut failures = 0u32;
        // What the control plane last took: a node with nothing new holds its sync longest,
        // as the agent does (`sync::agent`'s `hold_for`; the simulated nodes have no traffic).
        let mut last_sent: Option<Vec<AppHealth>> = None;
        loop {
            let report = SyncReport {
                applied_sequence: applied.as_ref().map(|s| s.sequence),
                outpost_version: "fleet-sim".to_owned(),
                uptime_secs: self.started.elapsed().as_secs(),
                apps: apps.values().cloned().collect(),
                failed: Vec::new(),
            };
            let body = serde_json::to_vec(&report).unwrap_or_default();
            let mut headers = vec![("content-type", "application/json".to_owned())];
            if let Some(s) = &applied {
                headers.push(("if-none-match", format!("\"{}\"", s.sequence)));
            }
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_out
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            self.stats.holding.fetch_add(1, Ordering::Relaxed);
            let quiet = last_sent.as_ref() == Some(&report.apps);
            let hold = if quiet { api::MAX_SYNC_HOLD } else { self.hold };
            let sent_apps = report.apps.clone();
            let t0 = Instant::now();
            let r = self
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
            self.stats.holding.fetch_sub(1, Ordering::Relaxed);
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    if failures <= 3 {
                        eprintln!("{}: sync failed: {e}", self.name);
                    }
                    tokio::time::sleep(Duration::from_secs(u64::from(failures.min(10)))).await;
                    continue;
                }
            };
            failures = 0;
            last_sent = Some(sent_apps);
            self.stats
                .bytes_in
                .fetch_add(r.body.len() as u64, Ordering::Relaxed);
            if r.status == 200 {
                match self.apply(&id, &r.body, applied.as_ref(), &mut apps).await {
                    Ok(state) => applied = Some(state),
                    Err(e) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{}: {e:#}", self.name);
                        tokio::time::sleep(self.poll).await;
                    }
                }
                continue;
            }
            if !(r.held && t0.elapsed() >= Duration::from_secs(1)) {
                tokio::time::sleep(self.poll).await;
            }
        }
    }

    /// Opens and checks a desired state, downloads what it newly assigns (digest checked) and
    /// updates the reported apps.
    async fn apply(
        &self,
        id: &str,
        envelope: &[u8],
        applied: Option<&DesiredState>,
        apps: &mut BTreeMap<String, AppHealth>,
    ) -> anyhow::Result<DesiredState> {
        let state =
            desired::open(envelope, std::slice::from_ref(&self.cp_key)).context("desired state")?;
        desired::check_fresh(&state, id, applied, unix_now()).context("desired state")?;
        for a in &state.apps {
            if apps.get(&a.app).is_some_and(|h| h.digest == a.digest) {
                continue;
            }
            let path = format!("{}{}", api::BUNDLES, a.digest);
            let r = self
                .client
                .download(
                    &path,
                    a.size,
                    DownloadTiming::for_size(a.size, self.timeout),
                )
                .await
                .with_context(|| format!("downloading {}", a.digest))?;
            self.stats
                .bytes_in
                .fetch_add(r.body.len() as u64, Ordering::Relaxed);
            self.stats.downloads.fetch_add(1, Ordering::Relaxed);
            let got = outpost::bundle::digest(&r.body);
            if got != a.digest || r.body.len() as u64 != a.size {
                bail!("bundle {}: got {got}, {} bytes", a.digest, r.body.len());
            }
            let old = apps.insert(
                a.app.clone(),
                AppHealth {
                    app: a.app.clone(),
                    version: a.version.clone(),
                    digest: a.digest,
                    active_since: unix_now(),
                    requests: 0,
                    errors: 0,
                    instantiate_failures: 0,
                    latency_p99_ms: None,
                    source: Some("control-plane".to_owned()),
                },
            );
            self.stats.applied(
                old.as_ref().map(|o| o.version.as_str()),
                &format!("{}@{}", a.app, a.version),
            );
        }
        apps.retain(|app, _| state.apps.iter().any(|a| &a.app == app));
        Ok(state)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    outpost::base::units::parse_duration(s).map_err(|e| e.to_string())
}
