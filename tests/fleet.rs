#![allow(clippy::unwrap_used)]
//! The fleet through the real binaries: one `outpost control-plane`, several `outpost run` nodes
//! enrolled with one-time tokens, and the operator commands (`outpost token`, `outpost push`,
//! `outpost rollout`). Proves wave-by-wave convergence, automatic rollback of a bad release
//! before it passes its first wave, zero failed requests during a hot swap, and nodes serving
//! their cached state while the control plane is down and catching up when it returns.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A running control plane, killed on drop.
struct ControlPlane {
    child: Child,
    url: String,
    key: String,
    stderr: Arc<Mutex<String>>,
}

impl ControlPlane {
    fn start(config: &Path) -> Self {
        let Spawned {
            child,
            lines: rx,
            stderr,
        } = spawn_piped(
            Command::new(BIN)
                .args(["control-plane", "--config", config.to_str().unwrap()])
                .env_remove("OUTPOST_LOG"),
        );
        let (mut url, mut key) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while url.is_none() || key.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "control plane did not start: {}",
                    stderr.lock().unwrap().clone()
                )
            });
            if let Some(u) = line.strip_prefix("control plane listening on ") {
                url = Some(u.trim().to_owned());
            } else if let Some(k) = line.strip_prefix("control-plane key: ") {
                key = Some(k.trim().to_owned());
            }
        }
        Self {
            child,
            url: url.unwrap(),
            key: key.unwrap(),
            stderr,
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Keys, bundles, a control plane and nodes in one temp directory.
struct Fleet {
    dir: tempfile::TempDir,
    cp: ControlPlane,
    nodes: Vec<Daemon>,
    /// The control plane's self-signed certificate (PEM path) when it serves HTTPS.
    ca: Option<String>,
    /// The nodes' `poll_interval`.
    poll: &'static str,
    /// The nodes' `url` list, when not just the control plane's URL.
    urls: Option<Vec<String>>,
}

impl Fleet {
    fn new(nodes: usize) -> Self {
        Self::with_tls(nodes, false)
    }

    /// Nodes that poll at `poll` (instead of the tests' 200 ms).
    fn polling(nodes: usize, poll: &'static str) -> Self {
        let mut fleet = Self::with_tls(0, false);
        fleet.poll = poll;
        for i in 0..nodes {
            fleet.start_node(i, None);
        }
        fleet
    }

    /// `tls`: the control plane serves HTTPS with a self-signed certificate for 127.0.0.1 that
    /// nodes (`[control_plane] ca`) and operator commands (`--ca`) trust explicitly.
    fn with_tls(nodes: usize, tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |r: &str| dir.path().join(r).to_str().unwrap().to_owned();
        for k in ["release", "operator"] {
            let (code, _, err) = run_to_end(&["bundle", "keygen", "--out", &p(k)]);
            assert_eq!(code, 0, "{err}");
        }
        let cfg = dir.path().join("cp.toml");
        let mut text = format!(
            "listen = [\"127.0.0.1:0\"]\nstate_dir = \"{}\"\noperators = [\"{}\"]\n",
            p("cp"),
            p("operator.pub")
        );
        let ca = tls.then(|| {
            let made =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                    .unwrap();
            std::fs::write(p("cp.pem"), made.cert.pem()).unwrap();
            std::fs::write(p("cp-key.pem"), made.signing_key.serialize_pem()).unwrap();
            text.push_str(&format!(
                "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                p("cp.pem"),
                p("cp-key.pem")
            ));
            p("cp.pem")
        });
        std::fs::write(&cfg, text).unwrap();
        let cp = ControlPlane::start(&cfg);
        let mut fleet = Self {
            dir,
            cp,
            nodes: Vec::new(),
            ca,
            poll: "200ms",
            urls: None,
        };
        for i in 0..nodes {
            fleet.start_node(i, None);
        }
        fleet
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_owned()
    }

    /// `outpost ARGS --control-plane URL --key operator.key`.
    fn op(&self, args: &[&str]) -> (i32, String, String) {
        let key = self.s("operator.key");
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&["--control-plane", &self.cp.url, "--key", &key]);
        if let Some(ca) = &self.ca {
            full.extend_from_slice(&["--ca", ca]);
        }
        run_to_end(&full)
    }

    fn token(&self) -> String {
        let (code, out, err) = self.op(&["token", "create", "--count", "1"]);
        assert_eq!(code, 0, "{err}");
        out.lines().next().unwrap().trim().to_owned()
    }

    /// Starts node `i` (state in `node{i}/`); `token` None = a fresh token (first start).
    fn start_node(&mut self, i: usize, token: Option<&str>) -> &Daemon {
        let token = match token {
            Some(t) => t.to_owned(),
            None => self.token(),
        };
        let cfg = self.path(&format!("node{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"[node]
state_dir = "{state}"
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
drain_timeout = "2s"
[runtime]
instance_slots = 16
[trust]
keys = ["{release}"]
[control_plane]
url = {url}
key = "{key}"
token = "{token}"
poll_interval = "{poll}"
name = "node-{i}"
labels = {{ site = "lab" }}
{ca}
[registry]
insecure = ["127.0.0.1"]
"#,
                state = self.s(&format!("node{i}")),
                release = self.s("release.pub"),
                url = match &self.urls {
                    None => format!("\"{}\"", self.cp.url),
                    Some(urls) => format!("{urls:?}"),
                },
                key = self.cp.key,
                poll = self.poll,
                ca = self
                    .ca
                    .as_ref()
                    .map(|c| format!("ca = \"{c}\""))
                    .unwrap_or_default(),
            ),
        )
        .unwrap();
        let d = Daemon::run_config(&cfg);
        if i < self.nodes.len() {
            self.nodes[i] = d;
        } else {
            self.nodes.push(d);
        }
        &self.nodes[i]
    }

    /// Waits until `n` nodes are enrolled.
    fn wait_enrolled(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out, err) = self.op(&["nodes", "list", "--json"]);
            assert_eq!(code, 0, "{err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            if v.as_array().unwrap().len() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {out} enrolled");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A signed bundle of app `greeter` at `version`: `component` is `config_reader` (whose
    /// `/greeting` answers `greeting`) or `trap` (500 on every request).
    fn bundle(&self, version: &str, component: &str, greeting: &str) -> String {
        let dir = self.path(&format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("outpost.toml"),
            manifest(
                "greeter",
                version,
                &format!(
                    "[component.main]\nsource = \"main.wasm\"\nroutes = [\"/\"]\n\
                     [component.main.variables]\ngreeting = \"{greeting}\"\n"
                ),
            ),
        )
        .unwrap();
        std::fs::copy(wasm(component), dir.join("main.wasm")).unwrap();
        let out = self.s(&format!("greeter-{version}.bundle"));
        let (code, _, err) = run_to_end(&["bundle", "pack", dir.to_str().unwrap(), "-o", &out]);
        assert_eq!(code, 0, "{err}");
        let key = self.s("release.key");
        let (code, _, err) = run_to_end(&["bundle", "sign", &out, "--key", &key]);
        assert_eq!(code, 0, "{err}");
        out
    }

    fn push(&self, bundle: &str, waves: &str, bake: &str) -> (i32, String, String) {
        self.op(&[
            "push",
            bundle,
            "--group",
            "site=lab",
            "--waves",
            waves,
            "--bake",
            bake,
            "--max-error-rate",
            "0.05",
        ])
    }

    fn rollouts(&self) -> Vec<serde_json::Value> {
        let (code, out, err) = self.op(&["rollout", "list", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn rollout_of(&self, version: &str) -> serde_json::Value {
        self.rollouts()
            .into_iter()
            .find(|r| r["version"] == version)
            .unwrap_or_else(|| panic!("no rollout of {version}"))
    }
}

/// What node `d` answers on `/greeting` (status, body).
async fn greeting(d: &Daemon) -> (u16, String) {
    let r = get(d.addr(), "/greeting").await;
    (r.status, r.body)
}

/// Waits until every node answers `want` on `/greeting`.
async fn wait_all_serve(nodes: &[Daemon], want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in nodes {
        loop {
            let (s, b) = greeting(d).await;
            if s == 200 && b == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} answers {s} {b:?}, expected {want:?}\n{}",
                d.addr(),
                d.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Steady traffic to every node until stopped: counts answers by class.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    bodies: Arc<Mutex<std::collections::BTreeSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(nodes: &[Daemon], path: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let tasks = nodes
            .iter()
            .map(|d| {
                let (addr, stop, ok, failed, bodies) = (
                    d.addr(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                    bodies.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = get(addr, path).await;
                        if r.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                            bodies.lock().unwrap().insert(r.body);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            bodies,
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64, std::collections::BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let bodies = self.bodies.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            bodies,
        )
    }
}

/// The value of the series `series` (`name{labels}` exactly as exported) on `d`'s admin
/// listener, 0 when absent.
async fn metric(d: &Daemon, series: &str) -> f64 {
    let m = get(d.admin.unwrap(), "/metrics").await.body;
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits until `d`'s series `series` is at least `at_least`.
async fn wait_metric(d: &Daemon, series: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = metric(d, series).await;
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {v}, expected ≥ {at_least}\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ENROL_REFUSED: &str = "enrolment refused";
const ENROL_FAILURES: &str = "outpost_sync_failures_total{reason=\"enroll\"}";

impl Fleet {
    /// The ids of the enrolled nodes, by name (`node-<i>`).
    fn node_ids(&self) -> std::collections::BTreeMap<String, String> {
        let (code, out, err) = self.op(&["nodes", "list", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap().to_owned(),
                    n["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_refuses_bad_tokens_and_unknown_nodes() {
    let mut fleet = Fleet::new(1);
    fleet.wait_enrolled(1);
    // A node with a made-up token never enrols, says why, counts it, and still serves (nothing).
    let d = fleet.start_node(1, Some(&"00".repeat(32)));
    let log = d.expect_log(&[ENROL_REFUSED]);
    assert!(log.contains("401"), "{log}");
    wait_metric(d, ENROL_FAILURES, 1.0).await;
    assert_eq!(get(d.addr(), "/").await.status, 404);
    assert_eq!(fleet.node_ids().into_keys().collect::<Vec<_>>(), ["node-0"]);

    // A used token is refused too: create one, enrol node 2 with it, then try it for node 3.
    let t = fleet.token();
    fleet.start_node(2, Some(&t));
    fleet.wait_enrolled(2);
    let d = fleet.start_node(3, Some(&t));
    let log = d.expect_log(&[ENROL_REFUSED]);
    assert!(log.contains("401"), "{log}");
    wait_metric(d, ENROL_FAILURES, 1.0).await;
    assert_eq!(
        fleet.node_ids().into_keys().collect::<Vec<_>>(),
        ["node-0", "node-2"]
    );

    // A revoked node: node 0 runs a release, is revoked, logs the refusal, and keeps serving
    // its cached release — also after a restart, from its store.
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let (code, out, err) = fleet.push(&v1, "100", "0s");
    assert_eq!(code, 0, "{out}\n{err}");
    wait_all_serve(&fleet.nodes[0..1], "one").await;
    let id = fleet.node_ids()["node-0"].clone();
    let (code, out, err) = fleet.op(&["nodes", "revoke", &id]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("revoked"), "{out}");
    const REFUSED: &str = "the control plane refuses this node";
    let log = fleet.nodes[0].expect_log(&[REFUSED]);
    assert!(log.contains("403"), "{log}");
    wait_metric(
        &fleet.nodes[0],
        "outpost_sync_failures_total{reason=\"rejected\"}",
        1.0,
    )
    .await;
    assert_eq!(greeting(&fleet.nodes[0]).await, (200, "one".into()));
    let cfg = fleet.path("node0.toml");
    fleet.nodes[0].sigterm();
    assert_eq!(fleet.nodes[0].wait_exit(Duration::from_secs(10)), Some(0));
    fleet.nodes[0] = Daemon::run_config(&cfg);
    assert_eq!(greeting(&fleet.nodes[0]).await, (200, "one".into()));
    fleet.nodes[0].expect_log(&[REFUSED]);
    assert_eq!(greeting(&fleet.nodes[0]).await, (200, "one".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_converges_wave_by_wave_and_a_bad_release_rolls_back_in_its_first_wave() {
    let fleet = Fleet::new(3);
    fleet.wait_enrolled(3);
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let (code, out, err) = fleet.push(&v1, "33,66,100", "1s");
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    wait_all_serve(&fleet.nodes, "one").await;
    let r = fleet.rollout_of("1.0.0");
    assert_eq!(r["state"], "succeeded", "{r:#}");
    let waves = r["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 3, "{r:#}");
    let mut last_done = 0;
    for w in waves {
        assert_eq!(w["state"], "passed", "{r:#}");
        assert_eq!(w["nodes"].as_array().unwrap().len(), 1, "{r:#}");
        let (started, converged, finished) = (
            w["started_ms"].as_u64().unwrap(),
            w["converged_ms"].as_u64().unwrap(),
            w["finished_ms"].as_u64().unwrap(),
        );
        // Wave by wave: each starts after the previous passed, and bakes ≥ 1 s.
        assert!(started >= last_done && converged >= started, "{r:#}");
        assert!(finished >= converged + 1000, "{r:#}");
        last_done = finished;
    }

    // The bad release: its component traps. Under traffic, wave 1 fails its gate and the
    // rollout rolls back before any later wave starts.
    let load = Load::start(&fleet.nodes, "/greeting");
    let bad = fleet.bundle("1.1.0", "trap", "bad");
    let (code, out, err) = fleet.push(&bad, "33,66,100", "30s");
    assert_ne!(code, 0, "a bad release must not succeed:\n{out}\n{err}");
    let (_ok, failed, _) = load.stop().await;
    let r = fleet.rollout_of("1.1.0");
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    assert!(
        r["reason"].as_str().unwrap().contains("error rate"),
        "{r:#}"
    );
    let waves = r["waves"].as_array().unwrap();
    assert_eq!(waves[0]["state"], "failed", "{r:#}");
    for w in &waves[1..] {
        assert_eq!(w["state"], "pending", "{r:#}");
        assert!(w["started_ms"].is_null(), "{r:#}");
    }
    assert!(failed > 0, "the first wave's node served the bad release");
    wait_all_serve(&fleet.nodes, "one").await;
}

/// Changes are pushed, not polled: nodes that poll once an hour get a release, wave by wave,
/// within a round trip of each wave starting — the control plane holds each node's sync open
/// (`Prefer: wait`) and answers it when that node's assignments change. The health endpoint
/// counts the held syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_nodes_that_poll_once_an_hour() {
    let fleet = Fleet::polling(2, "1h");
    fleet.wait_enrolled(2);
    let health = format!("{}/v1/health", fleet.cp.url);
    let held = || async {
        let v: serde_json::Value = reqwest::get(&health).await.unwrap().json().await.unwrap();
        v["held_syncs"].as_u64().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while held().await < 2 {
        assert!(Instant::now() < deadline, "the nodes never held a sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v1 = fleet.bundle("1.0.0", "config_reader", "pushed");
    let (code, out, err) = fleet.push(&v1, "50,100", "0s");
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    wait_all_serve(&fleet.nodes, "pushed").await;
    let r = fleet.rollout_of("1.0.0");
    assert_eq!(r["state"], "succeeded", "{r:#}");
    // Both nodes hold a sync again, each having reported the release it now runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while held().await < 2 {
        assert!(
            Instant::now() < deadline,
            "the nodes did not hold a sync again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node given its control plane's URLs in order moves past one it cannot reach: the first
/// refuses connections, and the node enrols, converges on a push and reports through the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_moves_past_an_unreachable_control_plane_url() {
    // A port nothing listens on (bound, then closed).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut fleet = Fleet::polling(0, "200ms");
    fleet.urls = Some(vec![format!("http://{dead}"), fleet.cp.url.clone()]);
    fleet.start_node(0, None);
    fleet.wait_enrolled(1);
    let v1 = fleet.bundle("1.0.0", "config_reader", "through the replica");
    let (code, out, err) = fleet.push(&v1, "100", "0s");
    assert_eq!(code, 0, "push failed:\n{out}\n{err}");
    wait_all_serve(&fleet.nodes, "through the replica").await;
    fleet.nodes[0].expect_log(&["control plane unreachable; trying the next URL"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_fails_no_request() {
    let fleet = Fleet::new(2);
    fleet.wait_enrolled(2);
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let (code, out, err) = fleet.push(&v1, "100", "0s");
    assert_eq!(code, 0, "{out}\n{err}");
    wait_all_serve(&fleet.nodes, "one").await;

    let load = Load::start(&fleet.nodes, "/greeting");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = fleet.bundle("1.1.0", "config_reader", "two");
    let (code, out, err) = fleet.push(&v2, "50,100", "1s");
    assert_eq!(code, 0, "{out}\n{err}");
    wait_all_serve(&fleet.nodes, "two").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, bodies) = load.stop().await;
    assert_eq!(
        failed, 0,
        "{failed} requests failed during the swap ({ok} ok)"
    );
    assert!(ok > 50, "too little traffic to prove anything: {ok}");
    assert_eq!(
        bodies.into_iter().collect::<Vec<_>>(),
        ["one", "two"],
        "both versions answered, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_their_cache_while_the_control_plane_is_down_and_catch_up_after() {
    let mut fleet = Fleet::new(1);
    fleet.wait_enrolled(1);
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let (code, out, err) = fleet.push(&v1, "100", "0s");
    assert_eq!(code, 0, "{out}\n{err}");
    wait_all_serve(&fleet.nodes, "one").await;

    // Control plane gone (kill -9), node restarted: it serves its last verified state.
    let cp_port = fleet.cp.url.rsplit(':').next().unwrap().to_owned();
    fleet.cp.kill9();
    let cfg = fleet.path("node0.toml");
    fleet.nodes[0].sigterm();
    fleet.nodes[0].wait_exit(Duration::from_secs(10));
    fleet.nodes[0] = Daemon::run_config(&cfg);
    wait_all_serve(&fleet.nodes, "one").await;
    assert_eq!(greeting(&fleet.nodes[0]).await, (200, "one".into()));

    // Back on the same address with the same state: the node catches up with a new push.
    let cp_cfg = fleet.path("cp.toml");
    let text = std::fs::read_to_string(&cp_cfg)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{cp_port}"));
    std::fs::write(&cp_cfg, text).unwrap();
    fleet.cp = ControlPlane::start(&cp_cfg);
    let v2 = fleet.bundle("1.1.0", "config_reader", "two");
    let (code, out, err) = fleet.push(&v2, "100", "0s");
    assert_eq!(code, 0, "{out}\n{err}\n{}", fleet.cp.stderr.lock().unwrap());
    wait_all_serve(&fleet.nodes, "two").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_nodes_and_operators_trust_the_control_plane_by_its_private_ca() {
    let fleet = Fleet::with_tls(2, true);
    assert!(
        fleet.cp.url.starts_with("https://127.0.0.1:"),
        "{}",
        fleet.cp.url
    );
    fleet.wait_enrolled(2);
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let (code, out, err) = fleet.push(&v1, "50,100", "0s");
    assert_eq!(code, 0, "{out}\n{err}");
    wait_all_serve(&fleet.nodes, "one").await;

    // Without the CA the operator command refuses the certificate.
    let key = fleet.s("operator.key");
    let (code, _, err) = run_to_end(&[
        "nodes",
        "list",
        "--control-plane",
        &fleet.cp.url,
        "--key",
        &key,
    ]);
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

// === mirrors ===

/// A static file server, a real peer no one here wrote: `python3 -m http.server` on a free
/// 127.0.0.1 port serving `dir`. Killed on drop.
struct Mirror {
    child: Child,
    url: String,
}

impl Mirror {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 (the static mirror) must be installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the mirror did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mirror's layout for `bundle`: `good/sha256-<hex>.bundle` (the bytes) and
/// `bad/sha256-<hex>.bundle` (the same size, one byte changed); returns the file name.
fn lay_out_mirror(root: &Path, bundle: &str) -> String {
    let bytes = std::fs::read(bundle).unwrap();
    let name = format!("sha256-{}.bundle", outpost::bundle::digest(&bytes).hex());
    for (sub, body) in [
        ("good", bytes.clone()),
        ("bad", {
            let mut b = bytes.clone();
            let last = b.len() - 1;
            b[last] ^= 0xff;
            b
        }),
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        std::fs::write(root.join(sub).join(&name), body).unwrap();
    }
    name
}

impl Fleet {
    /// `outpost push BUNDLE` to `site=lab` in one wave, no bake, with `extra` arguments.
    fn push_with(&self, bundle: &str, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec![
            "push",
            bundle,
            "--group",
            "site=lab",
            "--waves",
            "100",
            "--bake",
            "0s",
            "--max-error-rate",
            "0.05",
        ];
        args.extend_from_slice(extra);
        self.op(&args)
    }

    fn cp_log(&self) -> String {
        self.cp.stderr.lock().unwrap().clone()
    }

    /// The `source` node `name` reports for `app`'s active release (`outpost nodes list`).
    fn reported_source(&self, name: &str, app: &str) -> serde_json::Value {
        let (code, out, err) = self.op(&["nodes", "list", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let node = v
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()
            .clone();
        node["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == app)
            .map(|a| a["source"].clone())
            .unwrap_or(serde_json::Value::Null)
    }
}

const MIRROR_BYTES: &str = "outpost_bundle_fetch_bytes_total{source_kind=\"mirror\"}";
const CP_BYTES: &str = "outpost_bundle_fetch_bytes_total{source_kind=\"control_plane\"}";

fn fetches(kind: &str, outcome: &str) -> String {
    format!("outpost_bundle_fetches_total{{outcome=\"{outcome}\",source_kind=\"{kind}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_only_release_comes_from_the_mirror_past_a_missing_and_a_tampered_copy() {
    let fleet = Fleet::new(1);
    fleet.wait_enrolled(1);
    let root = fleet.path("mirror");
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let name = lay_out_mirror(&root, &v1);
    let mirror = Mirror::start(&root);
    let (missing, tampered, good) = (
        format!("{}/missing/{name}", mirror.url),
        format!("{}/bad/{name}", mirror.url),
        format!("{}/good/{name}", mirror.url),
    );
    let (code, out, err) = fleet.push_with(
        &v1,
        &[
            "--mirror",
            &missing,
            "--mirror",
            &tampered,
            "--mirror",
            &good,
            "--mirror-only",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}\n{}", fleet.cp_log());
    assert!(err.contains("not uploading"), "{err}");
    wait_all_serve(&fleet.nodes, "one").await;

    // The node says which source served it, and why the others did not.
    let node = &fleet.nodes[0];
    let log = node.expect_log(&["bundle fetched", "source_kind=mirror"]);
    assert!(log.contains(&good), "{log}");
    assert!(log.contains("404") && log.contains(&missing), "{log}");
    assert!(log.contains("content hashes to"), "{log}");
    let size = std::fs::metadata(&v1).unwrap().len() as f64;
    assert_eq!(metric(node, &fetches("mirror", "ok")).await, 1.0);
    assert_eq!(metric(node, &fetches("mirror", "wrong_digest")).await, 1.0);
    assert_eq!(metric(node, &fetches("mirror", "rejected")).await, 1.0);
    assert_eq!(metric(node, MIRROR_BYTES).await, 2.0 * size);
    assert_eq!(metric(node, CP_BYTES).await, 0.0);
    assert_eq!(
        metric(node, &fetches("control_plane", "ok")).await
            + metric(node, &fetches("control_plane", "rejected")).await,
        0.0
    );
    // The control plane served no byte of it, and holds none: a download from it is a 404.
    let cp_log = fleet.cp_log();
    assert!(!cp_log.contains("sending bundle"), "{cp_log}");
    assert!(
        cp_log.contains("release registered without its bytes"),
        "{cp_log}"
    );
    let digest = outpost::bundle::digest(&std::fs::read(&v1).unwrap());
    assert!(
        !fleet
            .path(&format!("cp/bundles/{}.bundle", digest.hex()))
            .exists(),
        "the control plane stored the bytes of a mirror-only release"
    );
    // The health report carries the source to the control plane.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.reported_source("node-0", "greeter") != good.as_str() {
        assert!(
            Instant::now() < deadline,
            "{}",
            fleet.reported_source("node-0", "greeter")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_mirror_falls_through_to_the_control_plane_and_a_release_no_source_serves_rolls_back()
 {
    let fleet = Fleet::new(1);
    fleet.wait_enrolled(1);
    let root = fleet.path("mirror");
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let name = lay_out_mirror(&root, &v1);
    let mirror = Mirror::start(&root);
    let tampered = format!("{}/bad/{name}", mirror.url);
    // Uploaded too: the control plane is the last source and serves it after the mirror's
    // wrong bytes are refused.
    let (code, out, err) = fleet.push_with(&v1, &["--mirror", &tampered]);
    assert_eq!(code, 0, "{out}\n{err}");
    wait_all_serve(&fleet.nodes, "one").await;
    let node = &fleet.nodes[0];
    node.expect_log(&["content hashes to", "source_kind=control_plane"]);
    assert_eq!(metric(node, &fetches("mirror", "wrong_digest")).await, 1.0);
    assert_eq!(metric(node, &fetches("control_plane", "ok")).await, 1.0);
    let size = std::fs::metadata(&v1).unwrap().len() as f64;
    assert_eq!(metric(node, CP_BYTES).await, size);
    assert!(fleet.cp_log().contains("sending bundle"));

    // Mirror-only, and every mirror fails (one 404s, one serves wrong bytes): the release is
    // reported failed with every source's reason, the rollout rolls back, and the node keeps
    // serving 1.0.0.
    let v2 = fleet.bundle("2.0.0", "config_reader", "two");
    let name2 = lay_out_mirror(&root, &v2);
    let (missing, tampered) = (
        format!("{}/missing/{name2}", mirror.url),
        format!("{}/bad/{name2}", mirror.url),
    );
    let (code, out, err) = fleet.push_with(
        &v2,
        &["--mirror", &missing, "--mirror", &tampered, "--mirror-only"],
    );
    assert_ne!(code, 0, "{out}\n{err}");
    let r = fleet.rollout_of("2.0.0");
    assert_eq!(r["state"], "rolled_back", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("no source served the bundle"), "{reason}");
    assert!(
        reason.contains(&missing) && reason.contains("404"),
        "{reason}"
    );
    assert!(
        reason.contains(&tampered) && reason.contains("content hashes to"),
        "{reason}"
    );
    assert!(reason.contains("control plane: "), "{reason}");
    assert_eq!(greeting(node).await, (200, "one".into()));
    assert_eq!(
        metric(node, &fetches("control_plane", "rejected")).await,
        1.0
    );
}

const REGISTRY_BYTES: &str = "outpost_bundle_fetch_bytes_total{source_kind=\"registry\"}";

/// `outpost push oci://…`: the release is named by digest with the registry as its source,
/// pinned to the manifest pulled; nodes pull it from the registry (a real `docker-registry`)
/// and the control plane neither holds nor sends a byte of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_pushed_from_a_registry_is_pulled_by_the_nodes_not_the_control_plane() {
    use common::registry::{Registry, RegistrySetup};
    let fleet = Fleet::new(2);
    fleet.wait_enrolled(2);
    let reg = Registry::start(RegistrySetup::default());
    let v1 = fleet.bundle("1.0.0", "config_reader", "one");
    let reference = reg.reference("fleet/greeter:1.0.0");
    let (code, _, err) = run_to_end(&["bundle", "push", &v1, &reference, "--insecure"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = fleet.push_with(&reference, &["--insecure"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", fleet.cp_log());
    assert!(err.contains("pulled greeter 1.0.0"), "{err}");
    assert!(err.contains("not uploading"), "{err}");
    wait_all_serve(&fleet.nodes, "one").await;

    let size = std::fs::metadata(&v1).unwrap().len() as f64;
    for node in &fleet.nodes {
        node.expect_log(&["bundle fetched", "source_kind=registry"]);
        assert_eq!(metric(node, REGISTRY_BYTES).await, size);
        assert_eq!(metric(node, CP_BYTES).await, 0.0);
        assert_eq!(metric(node, &fetches("registry", "ok")).await, 1.0);
    }
    let cp_log = fleet.cp_log();
    assert!(!cp_log.contains("sending bundle"), "{cp_log}");
    let digest = outpost::bundle::digest(&std::fs::read(&v1).unwrap());
    assert!(
        !fleet
            .path(&format!("cp/bundles/{}.bundle", digest.hex()))
            .exists()
    );
    // The source nodes report is the reference pinned by manifest digest, not the tag.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let source = fleet.reported_source("node-0", "greeter");
        let s = source.as_str().unwrap_or_default();
        if s.starts_with(&format!("oci://{}/fleet/greeter@sha256:", reg.addr)) {
            break;
        }
        assert!(Instant::now() < deadline, "{source}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
