//! The node agent through the real binary against a small in-process mock control plane:
//! enrol → sync → fetch → serve → report health; a control-plane rollback to an older release;
//! a desired state signed by another key refused; offline restart from the saved state.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use outpost::bundle::desired::{DesiredApp, DesiredState, seal};
use outpost::bundle::request_auth::{RequestAuth, Role};
use outpost::bundle::sign::{SigningKey, parse_public_key};
use outpost::control::api::{EnrollRequest, EnrollResponse, FailedRelease, SyncReport};

const TOKEN: &str = "one-time-token";

#[derive(Default)]
struct Mock {
    node: Option<String>,
    enrolments: usize,
    /// (sequence, envelope)
    desired: Option<(u64, Vec<u8>)>,
    bundles: HashMap<String, Vec<u8>>,
    reports: Vec<SyncReport>,
    bundle_gets: usize,
    /// Bundle downloads send their head and first bytes, then nothing more.
    stall_bundles: bool,
    /// Bundle downloads arrive in 8 pieces, this far apart: a slow link that keeps moving.
    pace_bundles: Option<Duration>,
}

/// A response body that yields its chunks `gap` apart; with `stall`, it then never sends
/// another frame (a control plane hanging in the middle of a download).
struct Stalled {
    chunks: std::collections::VecDeque<Bytes>,
    gap: Duration,
    stall: bool,
    wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Stalled {
    fn hang_after(first: Bytes) -> Self {
        Self {
            chunks: [first].into(),
            gap: Duration::ZERO,
            stall: true,
            wait: None,
        }
    }

    fn paced(body: &[u8], gap: Duration) -> Self {
        let piece = body.len().div_ceil(8).max(1);
        Self {
            chunks: body.chunks(piece).map(Bytes::copy_from_slice).collect(),
            gap,
            stall: false,
            wait: None,
        }
    }
}

impl hyper::body::Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        if self.chunks.is_empty() {
            // Stalled: never woken; the connection stays open until the client gives up.
            return if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        }
        if let Some(w) = self.wait.as_mut() {
            if w.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        let b = self.chunks.pop_front().unwrap();
        if !self.gap.is_zero() {
            // Time on purpose: a slow link is one whose chunks arrive this far apart.
            self.wait = Some(Box::pin(tokio::time::sleep(self.gap)));
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(b))))
    }
}

type MockBody = http_body_util::Either<Full<Bytes>, Stalled>;

type Shared = Arc<Mutex<Mock>>;

/// Serves the node endpoints on 127.0.0.1:0 until dropped (the task is aborted).
struct MockCp {
    addr: std::net::SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockCp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockCp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Shared = Arc::default();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn node(&self) -> Option<String> {
        self.state.lock().unwrap().node.clone()
    }

    /// Serves `bundles` at `/v1/bundles/<digest>`.
    fn serve_bundles(&self, bundles: &[&Vec<u8>]) {
        let mut m = self.state.lock().unwrap();
        for b in bundles {
            m.bundles
                .insert(outpost::bundle::digest(b).to_string(), (*b).clone());
        }
    }

    fn set_desired(&self, seq: u64, envelope: Vec<u8>) {
        self.state.lock().unwrap().desired = Some((seq, envelope));
    }

    /// Waits (up to [`PATIENCE`]) for a sync report that satisfies `f`.
    async fn wait_report(&self, what: &str, f: impl Fn(&SyncReport) -> bool) -> SyncReport {
        let what = format!("a sync report with {what}");
        wait_until(&what, PATIENCE, async || {
            let m = self.state.lock().unwrap();
            match m.reports.iter().rev().find(|r| f(r)) {
                Some(r) => Ok(r.clone()),
                None => Err(format!(
                    "{} reports, the last {:?}",
                    m.reports.len(),
                    m.reports.last()
                )),
            }
        })
        .await
    }

    /// Waits for a report that lists the release `digest` as failed; returns that failure.
    async fn wait_failed(&self, what: &str, digest: outpost::bundle::Digest) -> FailedRelease {
        let r = self
            .wait_report(what, |r| r.failed.iter().any(|f| f.digest == digest))
            .await;
        r.failed.into_iter().find(|f| f.digest == digest).unwrap()
    }
}

fn reply(status: u16, body: Vec<u8>) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    st: Shared,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<MockBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.method() == http::Method::GET && path.starts_with("/v1/bundles/") {
        let mut m = st.lock().unwrap();
        if m.stall_bundles {
            m.bundle_gets += 1;
            let len = m
                .bundles
                .get(path.trim_start_matches("/v1/bundles/"))
                .map_or(0, Vec::len);
            // The true length and a first chunk, so the client is mid-body when it stalls.
            return Ok(http::Response::builder()
                .status(200)
                .header("content-length", len)
                .body(http_body_util::Either::Right(Stalled::hang_after(
                    Bytes::from_static(b"OUTPOST"),
                )))
                .unwrap());
        }
        if let Some(gap) = m.pace_bundles
            && let Some(b) = m.bundles.get(path.trim_start_matches("/v1/bundles/"))
        {
            let body = Stalled::paced(b, gap);
            let len = b.len();
            m.bundle_gets += 1;
            return Ok(http::Response::builder()
                .status(200)
                .header("content-length", len)
                .body(http_body_util::Either::Right(body))
                .unwrap());
        }
    }
    Ok(handle_full(st, req)
        .await?
        .map(http_body_util::Either::Left))
}

async fn handle_full(
    st: Shared,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let auth = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Ok(auth) = RequestAuth::parse(auth) else {
        return Ok(reply(401, br#"{"error":"unauthenticated"}"#.to_vec()));
    };
    assert_eq!(auth.role, Role::Node);
    let path = parts.uri.path().to_owned();
    let now = outpost::base::clock::unix_now();
    let mut m = st.lock().unwrap();
    match (parts.method.as_str(), path.as_str()) {
        ("POST", "/v1/enroll") => {
            let req: EnrollRequest = serde_json::from_slice(&body).unwrap();
            let key = parse_public_key(&req.public_key).unwrap();
            auth.verify(&key, "POST", &path, &body, now).unwrap();
            if req.token != TOKEN || m.node.is_some() {
                return Ok(reply(401, br#"{"error":"unknown or used token"}"#.to_vec()));
            }
            assert_eq!(req.labels.get("os").map(String::as_str), Some("linux"));
            assert_eq!(req.labels.get("site").map(String::as_str), Some("lab"));
            m.node = Some(key.id().to_string());
            m.enrolments += 1;
            let resp = EnrollResponse {
                node: key.id().to_string(),
                labels: req.labels,
            };
            Ok(reply(200, serde_json::to_vec(&resp).unwrap()))
        }
        ("POST", "/v1/sync") => {
            assert_eq!(Some(auth.key.to_string()), m.node, "sync before enrolment");
            let report: SyncReport = serde_json::from_slice(&body).unwrap();
            m.reports.push(report);
            let inm = parts
                .headers
                .get(http::header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match &m.desired {
                Some((seq, env)) if inm.as_deref() != Some(&format!("\"{seq}\"")) => {
                    Ok(http::Response::builder()
                        .status(200)
                        .header("etag", format!("\"{seq}\""))
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(env.clone())))
                        .unwrap())
                }
                _ => Ok(reply(304, Vec::new())),
            }
        }
        ("GET", p) if p.starts_with("/v1/bundles/") => {
            m.bundle_gets += 1;
            let digest = p.trim_start_matches("/v1/bundles/");
            match m.bundles.get(digest) {
                Some(b) => Ok(reply(200, b.clone())),
                None => Ok(reply(404, br#"{"error":"no such bundle"}"#.to_vec())),
            }
        }
        _ => Ok(reply(404, br#"{"error":"not found"}"#.to_vec())),
    }
}

/// Keys, app directories and signed bundles.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_owned()
    }

    /// A lab with the release key `alice`.
    fn new() -> Self {
        let lab = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let (code, _, err) = run_to_end(&["bundle", "keygen", "--out", &lab.s("alice")]);
        assert_eq!(code, 0, "{err}");
        lab
    }

    /// A signed bundle of app `greeter` at `version` whose `/greeting` answers `greeting`;
    /// returns (bundle bytes, signature file bytes).
    fn release(&self, version: &str, greeting: &str) -> (Vec<u8>, Vec<u8>) {
        self.release_with(
            version,
            &format!(
                "[component.main]\nsource = \"config_reader.wasm\"\nroutes = [\"/\"]\n\
                 [component.main.variables]\ngreeting = \"{greeting}\"\n"
            ),
            &["config_reader"],
        )
    }

    /// A signed bundle of app `greeter` at `version` with the manifest's `components` tables
    /// and the named guest apps (as `<name>.wasm`); returns (bundle bytes, signature bytes).
    fn release_with(&self, version: &str, components: &str, guests: &[&str]) -> (Vec<u8>, Vec<u8>) {
        self.release_for(None, version, components, guests)
    }

    /// [`Lab::release_with`], signed for `tenant` (`outpost bundle sign --tenant`).
    fn release_for(
        &self,
        tenant: Option<&str>,
        version: &str,
        components: &str,
        guests: &[&str],
    ) -> (Vec<u8>, Vec<u8>) {
        let dir = self.path(&format!("app-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("outpost.toml"),
            format!(
                "manifest_version = 1\n[application]\nname = \"greeter\"\nversion = \"{version}\"\n\
                 {components}"
            ),
        )
        .unwrap();
        for g in guests {
            std::fs::copy(wasm(g), dir.join(format!("{g}.wasm"))).unwrap();
        }
        let out = self.s(&format!("greeter-{version}.bundle"));
        let (code, _, err) = run_to_end(&["bundle", "pack", dir.to_str().unwrap(), "-o", &out]);
        assert_eq!(code, 0, "{err}");
        let key = self.s("alice.key");
        let mut sign = vec!["bundle", "sign", &out, "--key", &key];
        if let Some(t) = tenant {
            sign.extend(["--tenant", t]);
        }
        let (code, _, err) = run_to_end(&sign);
        assert_eq!(code, 0, "{err}");
        (
            std::fs::read(&out).unwrap(),
            std::fs::read(format!("{out}.sig")).unwrap(),
        )
    }
}

fn entry(version: &str, bundle: &[u8], sig: &[u8], hosts: &[&str]) -> DesiredApp {
    DesiredApp {
        app: "greeter".into(),
        tenant: None,
        version: version.into(),
        digest: outpost::bundle::digest(bundle),
        size: bundle.len() as u64,
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        sources: Vec::new(),
    }
}

fn sealed(cp: &SigningKey, node: &str, seq: u64, apps: Vec<DesiredApp>) -> Vec<u8> {
    let now = outpost::base::clock::unix_now();
    let state = DesiredState {
        node: node.to_owned(),
        sequence: seq,
        issued: now,
        expires: now + 3600,
        apps,
    };
    seal(&state, cp).unwrap()
}

/// GETs `path` until the body is `want` (up to [`PATIENCE`]).
async fn wait_body(addr: std::net::SocketAddr, path: &str, want: &str) {
    let what = format!("{path} to answer {want:?}");
    wait_until(&what, PATIENCE, async || {
        let r = get(addr, path).await;
        if r.status == 200 && r.body == want {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
}

fn node_config(lab: &Lab, cp: &MockCp, cp_key: &SigningKey) -> PathBuf {
    node_config_with(lab, cp, cp_key, "5s", "")
}

/// The node's config with `request_timeout` and `extra` (whole tables) appended.
fn node_config_with(
    lab: &Lab,
    cp: &MockCp,
    cp_key: &SigningKey,
    request_timeout: &str,
    extra: &str,
) -> PathBuf {
    let cfg = lab.path("node.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[node]
state_dir = "node-state"
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
drain_timeout = "1s"
[trust]
keys = ["alice.pub"]
[control_plane]
url = "http://{}"
key = "{}"
token = "{TOKEN}"
poll_interval = "200ms"
request_timeout = "{request_timeout}"
[control_plane.labels]
site = "lab"
{extra}
"#,
            cp.addr,
            cp_key.verifying_key().to_public_text().trim_end()
        ),
    )
    .unwrap();
    cfg
}

/// The value of the unlabelled gauge `name` in a scrape (panics if absent).
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

fn last_success(metrics: &str) -> f64 {
    gauge(metrics, "outpost_sync_last_success_timestamp_seconds")
}

/// The value of the series `series` (`name{labels}` exactly as exported), 0 when absent.
fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn enrol_sync_fetch_serve_report_roll_back_and_restart_offline() {
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release("1.0.0", "one");
    let (v2, v2_sig) = lab.release("2.0.0", "two");
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    cp.serve_bundles(&[&v1, &v2]);
    let cfg = node_config(&lab, &cp, &cp_key);

    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    // Ready without waiting for the control plane (it has not assigned anything yet).
    wait_until("/readyz to answer 200", PATIENCE, async || {
        let r = get(admin, "/readyz").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}\nstderr:\n{}", d.stderr()))
        }
    })
    .await;
    let node = enrolled(&cp, &d).await;
    let state = lab.path("node-state");
    assert_eq!(mode(&state.join("node.key")), 0o600);
    // Written once the enrolment response is in.
    let record = state.join("enrolment.json");
    wait_until("the enrolment record", PATIENCE, async || {
        if record.exists() {
            Ok(())
        } else {
            Err(format!("no {}", record.display()))
        }
    })
    .await;
    let enrolment: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("enrolment.json")).unwrap()).unwrap();
    assert_eq!(enrolment["node"], node.as_str());

    // Sequence 1: v1 for every host. The agent fetches, verifies, installs, loads and swaps.
    cp.set_desired(
        1,
        sealed(&cp_key, &node, 1, vec![entry("1.0.0", &v1, &v1_sig, &[])]),
    );
    wait_body(d.addr(), "/greeting", "one").await;
    for _ in 0..6 {
        assert_eq!(get(d.addr(), "/greeting").await.status, 200);
    }
    let v1_digest = outpost::bundle::digest(&v1);
    let r = cp
        .wait_report("greeter health", |r| {
            r.applied_sequence == Some(1)
                && r.apps
                    .iter()
                    .any(|a| a.app == "greeter" && a.digest == v1_digest && a.requests >= 6)
        })
        .await;
    let h = r.apps.iter().find(|a| a.app == "greeter").unwrap();
    assert_eq!((h.version.as_str(), h.errors), ("1.0.0", 0));
    assert!(h.latency_p99_ms.is_some_and(|ms| ms > 0.0), "{h:?}");
    assert!(h.active_since > 0);
    assert!(r.failed.is_empty(), "{r:?}");
    assert!(state.join("desired.json").exists());
    let m = get(admin, "/metrics").await.body;
    for needle in [
        "outpost_sync_up 1",
        "outpost_desired_state_sequence 1",
        &format!(
            "outpost_app_release_info{{app=\"greeter\",digest=\"{v1_digest}\",version=\"1.0.0\"}} 1"
        ),
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    // Every successful poll moves the last-success time (unix seconds): set, and rising.
    let first = last_success(&m);
    assert!(
        first > 0.0,
        "outpost_sync_last_success_timestamp_seconds {first}"
    );
    wait_metrics(
        admin,
        &d,
        &format!("the last success time above {first} (the node polls every 200 ms)"),
        |m| last_success(m) > first,
    )
    .await;

    // Sequence 2: v2, only on greeter.example.com.
    cp.set_desired(
        2,
        sealed(
            &cp_key,
            &node,
            2,
            vec![entry("2.0.0", &v2, &v2_sig, &["greeter.example.com"])],
        ),
    );
    wait_until("v2 served on greeter.example.com", PATIENCE, async || {
        let r = request_with(
            d.addr(),
            "GET",
            "/greeting",
            b"",
            &[("host", "greeter.example.com")],
        )
        .await;
        if r.body == "two" {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await;
    assert_eq!(get(d.addr(), "/greeting").await.status, 404, "other hosts");

    // Sequence 3: the control plane rolls back to the older v1 (already in the store: no
    // download), which `outpost bundle install` would refuse.
    let gets = cp.state.lock().unwrap().bundle_gets;
    cp.set_desired(
        3,
        sealed(&cp_key, &node, 3, vec![entry("1.0.0", &v1, &v1_sig, &[])]),
    );
    wait_body(d.addr(), "/greeting", "one").await;
    assert_eq!(
        cp.state.lock().unwrap().bundle_gets,
        gets,
        "v1 came from the store"
    );
    cp.wait_report("sequence 3 applied", |r| r.applied_sequence == Some(3))
        .await;

    // A document signed by another key is refused and counted; v1 keeps serving.
    let rogue = SigningKey::from_seed(&[9; 32]);
    cp.set_desired(4, sealed(&rogue, &node, 4, Vec::new()));
    wait_metrics(admin, &d, "the refusal counted", |m| {
        m.contains("outpost_sync_failures_total{reason=\"desired_state\"}")
    })
    .await;
    assert_eq!(get(d.addr(), "/greeting").await.body, "one");
    let r = cp.state.lock().unwrap().reports.last().cloned().unwrap();
    assert_eq!(r.applied_sequence, Some(3));

    // A replay: the genuine, still unexpired sequence-2 document (v2) is refused as older than
    // the applied sequence 3, and v1 keeps serving.
    cp.set_desired(
        2,
        sealed(
            &cp_key,
            &node,
            2,
            vec![entry("2.0.0", &v2, &v2_sig, &["greeter.example.com"])],
        ),
    );
    wait_stderr(&d, "sequence 2 is older than the applied sequence 3").await;
    let r = request_with(
        d.addr(),
        "GET",
        "/greeting",
        b"",
        &[("host", "greeter.example.com")],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "one"));
    let r = cp.state.lock().unwrap().reports.last().cloned().unwrap();
    assert_eq!(r.applied_sequence, Some(3));
    drop(d);

    // The control plane is gone: a restart serves the saved state at once and keeps retrying.
    drop(cp);
    let d = Daemon::run_config(&cfg);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "one"), "{}", d.stderr());
    let log = d.wait_log(&["control plane unreachable"]);
    assert!(log.contains("control plane unreachable"), "{log}");
    let m = get(d.admin.unwrap(), "/metrics").await.body;
    assert!(m.contains("outpost_sync_up 0"), "{m}");
}

#[test]
fn not_enrolled_without_a_token_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_seed(&[1; 32]).verifying_key();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nstate_dir = \"state\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
             [control_plane]\nurl = \"http://127.0.0.1:9\"\nkey = \"{}\"\n",
            key.to_public_text().trim_end()
        ),
    )
    .unwrap();
    let (code, _, err) = run_to_end(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("node.toml") && err.contains("not enrolled"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

/// Waits until the mock control plane enrolled the node; returns its id.
async fn enrolled(cp: &MockCp, d: &Daemon) -> String {
    wait_until("the node to enrol", PATIENCE, async || {
        cp.node()
            .ok_or_else(|| format!("no enrolment; stderr:\n{}", d.stderr()))
    })
    .await
}

/// Waits until a scrape of `admin` satisfies `f`; returns that scrape.
async fn wait_metrics(
    admin: std::net::SocketAddr,
    d: &Daemon,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> String {
    wait_until(&format!("metrics showing {what}"), PATIENCE, async || {
        let m = get(admin, "/metrics").await.body;
        if f(&m) {
            Ok(m)
        } else {
            Err(format!("{m}\nstderr:\n{}", d.stderr()))
        }
    })
    .await
}

/// Waits (without blocking the thread: the mock control plane runs on this runtime) until the
/// node's stderr contains `needle`; returns the log.
async fn wait_stderr(d: &Daemon, needle: &str) -> String {
    let what = format!("stderr to contain {needle:?}");
    wait_until(&what, PATIENCE, async || {
        let log = d.stderr();
        if log.contains(needle) {
            Ok(log)
        } else {
            Err(log)
        }
    })
    .await
}

/// Receives notify datagrams until one has the line `line`; returns that datagram.
async fn recv_notify(sock: &tokio::net::UnixDatagram, line: &str, d: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Ok(r) => r.unwrap(),
            Err(_) => panic!("no notification {line:?}; stderr:\n{}", d.stderr()),
        };
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m.lines().any(|l| l == line) {
            return m;
        }
    }
}

/// systemd's STATUS line follows the agent: READY says what serves at start, and every
/// install and removal the control plane asks for sends the new counts.
#[tokio::test]
async fn status_line_follows_installs_and_removals() {
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release("1.0.0", "one");
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    cp.state
        .lock()
        .unwrap()
        .bundles
        .insert(outpost::bundle::digest(&v1).to_string(), v1.clone());
    let cfg = node_config(&lab, &cp, &cp_key);
    let notify = lab.path("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&notify).unwrap();
    let d = Daemon::spawn_with(
        &["run", "--config", cfg.to_str().unwrap()],
        tempfile::tempdir().unwrap(),
        &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
        1,
        true,
    );
    let addr = d.addr();
    let ready = recv_notify(&sock, "READY=1", &d).await;
    assert!(
        ready.contains(&format!("STATUS=serving 0 apps (0 components) on {addr}\n")),
        "{ready:?}"
    );
    let node = enrolled(&cp, &d).await;

    cp.set_desired(
        1,
        sealed(&cp_key, &node, 1, vec![entry("1.0.0", &v1, &v1_sig, &[])]),
    );
    recv_notify(
        &sock,
        &format!("STATUS=serving 1 app (1 component) on {addr}"),
        &d,
    )
    .await;
    assert_eq!(get(addr, "/greeting").await.body, "one");

    // The control plane takes the app away again.
    cp.set_desired(2, sealed(&cp_key, &node, 2, Vec::new()));
    recv_notify(
        &sock,
        &format!("STATUS=serving 0 apps (0 components) on {addr}"),
        &d,
    )
    .await;
    assert_eq!(get(addr, "/greeting").await.status, 404);
}

/// A request in flight during a hot swap finishes on the release that took it; requests after
/// the swap get the new one. v1 routes `/echo` to the streaming echo guest, v2 to `hello`: the
/// request stays open (its body is still being sent) across the swap, so only v1 can answer it
/// with the echo of everything sent.
#[tokio::test]
async fn a_request_in_flight_during_a_swap_finishes_on_the_old_release() {
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release_with(
        "1.0.0",
        "[component.main]\nsource = \"config_reader.wasm\"\nroutes = [\"/\"]\n\
         [component.main.variables]\ngreeting = \"one\"\n\
         [component.echo]\nsource = \"echo.wasm\"\nroutes = [\"/echo\"]\n",
        &["config_reader", "echo"],
    );
    let (v2, v2_sig) = lab.release_with(
        "2.0.0",
        "[component.main]\nsource = \"config_reader.wasm\"\nroutes = [\"/\"]\n\
         [component.main.variables]\ngreeting = \"two\"\n\
         [component.echo]\nsource = \"hello.wasm\"\nroutes = [\"/echo\"]\n",
        &["config_reader", "hello"],
    );
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    cp.serve_bundles(&[&v1, &v2]);
    let cfg = node_config(&lab, &cp, &cp_key);
    let d = Daemon::run_config(&cfg);
    let node = enrolled(&cp, &d).await;
    cp.set_desired(
        1,
        sealed(&cp_key, &node, 1, vec![entry("1.0.0", &v1, &v1_sig, &[])]),
    );
    wait_body(d.addr(), "/greeting", "one").await;

    // The long request: head and a first chunk now, the rest after the swap.
    let (tx, resp_body) = open_echo_stream(d.addr(), "/echo", b"before the swap;").await;

    // Swap to v2 while that request is open; new requests get v2 on every path.
    cp.set_desired(
        2,
        sealed(&cp_key, &node, 2, vec![entry("2.0.0", &v2, &v2_sig, &[])]),
    );
    wait_body(d.addr(), "/greeting", "two").await;
    let r = request(d.addr(), "POST", "/echo", b"after").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "hello from outpost\nyou asked for /echo\n")
    );

    // The old request finishes on v1's echo guest.
    tx.send(Bytes::from_static(b"after the swap"))
        .await
        .unwrap();
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(30), resp_body.collect())
        .await
        .expect("the in-flight request finishes")
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"after the swap");
}

/// A release the agent installs labels its requests with the tenant of its signed document.
#[tokio::test]
async fn requests_to_an_assigned_release_carry_its_tenant() {
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release_for(
        Some("acme"),
        "1.0.0",
        "[component.main]\nsource = \"hello.wasm\"\nroutes = [\"/\"]\n",
        &["hello"],
    );
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    cp.state
        .lock()
        .unwrap()
        .bundles
        .insert(outpost::bundle::digest(&v1).to_string(), v1.clone());
    let cfg = node_config(&lab, &cp, &cp_key);
    let d = Daemon::run_config(&cfg);
    let node = enrolled(&cp, &d).await;
    let mut e = entry("1.0.0", &v1, &v1_sig, &[]);
    e.tenant = Some("acme".into());
    cp.set_desired(1, sealed(&cp_key, &node, 1, vec![e]));
    wait_body(d.addr(), "/", "hello from outpost\n").await;
    let m = get(d.admin.unwrap(), "/metrics").await.body;
    let series: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("outpost_http_requests_total{") && l.contains(r#"app="greeter""#))
        .collect();
    assert!(!series.is_empty(), "{m}");
    for l in series {
        assert!(l.contains(r#"tenant="acme""#), "{l}");
    }
    assert!(
        m.lines().any(
            |l| l.starts_with("outpost_http_request_duration_seconds_count{")
                && l.contains(r#"app="greeter""#)
                && l.contains(r#"tenant="acme""#)
        ),
        "{m}"
    );
}

/// The agent's download limits: a release advertised larger than the node's
/// `max_bundle_size`, or a download larger than advertised, is reported failed without being
/// read; a control plane that stalls mid-download is cut off at `request_timeout` and counted.
/// The node keeps serving its release throughout.
#[tokio::test]
async fn oversized_and_stalled_downloads_fail_and_the_node_keeps_serving() {
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release("1.0.0", "one");
    let (v2, v2_sig) = lab.release("2.0.0", "two");
    let (v3, v3_sig) = lab.release("3.0.0", "three");
    let (v4, v4_sig) = lab.release("4.0.0", "four");
    let (v5, v5_sig) = lab.release("5.0.0", "five");
    let cap: u64 = 4 << 20;
    assert!((v1.len() as u64) < cap);
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    cp.serve_bundles(&[&v1, &v2, &v3, &v4, &v5]);
    let cfg = node_config_with(
        &lab,
        &cp,
        &cp_key,
        "1s",
        &format!("[store]\nmax_bundle_size = {cap}\n"),
    );
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    let node = enrolled(&cp, &d).await;
    cp.set_desired(
        1,
        sealed(&cp_key, &node, 1, vec![entry("1.0.0", &v1, &v1_sig, &[])]),
    );
    wait_body(d.addr(), "/greeting", "one").await;
    let release_failures = |m: &str| counter(m, "outpost_sync_failures_total{reason=\"release\"}");
    let before = release_failures(&get(admin, "/metrics").await.body);

    // Advertised over the cap: refused before any download.
    let gets = cp.state.lock().unwrap().bundle_gets;
    let mut big = entry("2.0.0", &v2, &v2_sig, &[]);
    big.size = cap + 1;
    let v2_digest = big.digest;
    cp.set_desired(2, sealed(&cp_key, &node, 2, vec![big]));
    let f = cp
        .wait_failed("the oversized release failed", v2_digest)
        .await;
    assert!(f.error.contains("max_bundle_size"), "{f:?}");
    wait_stderr(&d, "cannot run the release the control plane assigned").await;
    assert_eq!(
        cp.state.lock().unwrap().bundle_gets,
        gets,
        "nothing fetched"
    );
    wait_metrics(admin, &d, "the refusal counted", |m| {
        release_failures(m) >= before + 1.0
    })
    .await;
    assert_eq!(get(d.addr(), "/greeting").await.body, "one");

    // Advertised one byte short of what the control plane sends: the download is cut at the
    // advertised size.
    let mut short = entry("3.0.0", &v3, &v3_sig, &[]);
    short.size -= 1;
    let v3_digest = short.digest;
    cp.set_desired(3, sealed(&cp_key, &node, 3, vec![short]));
    let f = cp
        .wait_failed("the over-long download failed", v3_digest)
        .await;
    assert!(f.error.contains("larger than"), "{f:?}");
    assert_eq!(get(d.addr(), "/greeting").await.body, "one");

    // A control plane that stalls in the middle of the bundle: each attempt times out after
    // request_timeout (1 s), is counted, and is retried on the next poll.
    let counted = release_failures(&get(admin, "/metrics").await.body);
    cp.state.lock().unwrap().stall_bundles = true;
    cp.set_desired(
        4,
        sealed(&cp_key, &node, 4, vec![entry("4.0.0", &v4, &v4_sig, &[])]),
    );
    const RETRY: &str = "cannot download the release; retrying on the next poll";
    let log = wait_stderr(&d, RETRY).await;
    let line = log.lines().find(|l| l.contains(RETRY)).unwrap();
    assert!(line.contains("timed out"), "the log must say why: {line}");
    wait_metrics(admin, &d, "the stalled download counted", |m| {
        release_failures(m) >= counted + 1.0
    })
    .await;
    assert_eq!(get(d.addr(), "/greeting").await.body, "one");
    assert!(cp.state.lock().unwrap().bundle_gets > gets);

    // Once the control plane answers again, the retry installs the release.
    cp.state.lock().unwrap().stall_bundles = false;
    wait_body(d.addr(), "/greeting", "four").await;

    // A slow link that keeps moving: the download takes 8 × 0.4 s, over three times
    // request_timeout, but no gap reaches it — it must complete on the first attempt.
    let gets = cp.state.lock().unwrap().bundle_gets;
    cp.state.lock().unwrap().pace_bundles = Some(Duration::from_millis(400));
    cp.set_desired(
        5,
        sealed(&cp_key, &node, 5, vec![entry("5.0.0", &v5, &v5_sig, &[])]),
    );
    wait_body(d.addr(), "/greeting", "five").await;
    assert_eq!(
        cp.state.lock().unwrap().bundle_gets,
        gets + 1,
        "one download, not a retry: {}",
        d.stderr()
    );
}

/// A control-plane release whose manifest requires a secret variable gets its value from the
/// node config's `[variables.APP]`, which the release never carries; the value stays out of the
/// logs.
#[tokio::test]
async fn an_assigned_release_takes_its_variables_from_node_config() {
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release_for(
        None,
        "1.0.0",
        "[variables]\ntoken = { required = true, secret = true }\n\
         [component.main]\nsource = \"config_reader.wasm\"\nroutes = [\"/\"]\n\
         variables = { message = \"token={{ token }}\" }\n",
        &["config_reader"],
    );
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    cp.state
        .lock()
        .unwrap()
        .bundles
        .insert(outpost::bundle::digest(&v1).to_string(), v1.clone());
    let cfg = node_config_with(
        &lab,
        &cp,
        &cp_key,
        "5s",
        "[variables.greeter]\ntoken = \"node-secret-42\"\n",
    );
    let d = Daemon::run_config(&cfg);
    let node = enrolled(&cp, &d).await;
    cp.set_desired(
        1,
        sealed(&cp_key, &node, 1, vec![entry("1.0.0", &v1, &v1_sig, &[])]),
    );
    wait_body(d.addr(), "/message", "token=node-secret-42").await;
    assert!(!d.stderr().contains("node-secret-42"), "{}", d.stderr());
}

/// A mirror the node reaches directly: it gets plain GETs (never the node's signed
/// `Authorization`), its redirects are followed, and a copy over the advertised size is cut off
/// and passed over for the control plane. The report names the source of each release.
#[tokio::test]
async fn a_mirror_gets_no_credentials_and_an_oversized_copy_falls_through_to_the_control_plane() {
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release("1.0.0", "one");
    let (v2, v2_sig) = lab.release("2.0.0", "two");
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    cp.serve_bundles(&[&v1, &v2]);
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let mirror = {
        let (seen, v1, v2) = (seen.clone(), v1.clone(), v2.clone());
        http1_server(move |req: http::Request<hyper::body::Incoming>| {
            seen.lock().unwrap().push(req.headers().clone());
            let (path, v1, v2) = (req.uri().path().to_owned(), v1.clone(), v2.clone());
            async move {
                match path.as_str() {
                    "/moved" => http::Response::builder()
                        .status(302)
                        .header("location", "/v1.bundle")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                    "/v1.bundle" => http::Response::new(Full::new(Bytes::from(v1))),
                    // One byte more than the desired state says.
                    "/v2.bundle" => {
                        let mut b = v2;
                        b.push(0);
                        http::Response::new(Full::new(Bytes::from(b)))
                    }
                    _ => http::Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                }
            }
        })
        .await
    };
    let cfg = node_config(&lab, &cp, &cp_key);
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    let node = enrolled(&cp, &d).await;

    let moved = format!("http://{mirror}/moved");
    let mut e1 = entry("1.0.0", &v1, &v1_sig, &[]);
    e1.sources = vec![moved.clone()];
    cp.set_desired(1, sealed(&cp_key, &node, 1, vec![e1]));
    wait_body(d.addr(), "/greeting", "one").await;
    assert_eq!(cp.state.lock().unwrap().bundle_gets, 0, "{}", d.stderr());
    let r = cp
        .wait_report("1.0.0 from the mirror", |r| {
            r.apps.iter().any(|a| a.version == "1.0.0")
        })
        .await;
    assert_eq!(r.apps[0].source.as_deref(), Some(moved.as_str()));

    let big = format!("http://{mirror}/v2.bundle");
    let mut e2 = entry("2.0.0", &v2, &v2_sig, &[]);
    e2.sources = vec![big.clone()];
    cp.set_desired(2, sealed(&cp_key, &node, 2, vec![e2]));
    wait_body(d.addr(), "/greeting", "two").await;
    assert_eq!(cp.state.lock().unwrap().bundle_gets, 1);
    let log = wait_stderr(&d, "bundle source failed").await;
    let line = log
        .lines()
        .find(|l| l.contains("bundle source failed"))
        .unwrap();
    assert!(
        line.contains(&big) && line.contains("larger than"),
        "{line}"
    );
    let m = wait_metrics(admin, &d, "both fetches", |m| {
        counter(
            m,
            "outpost_bundle_fetches_total{outcome=\"ok\",source_kind=\"control_plane\"}",
        ) == 1.0
    })
    .await;
    let fetches = |outcome: &str| {
        counter(
            &m,
            &format!(
                "outpost_bundle_fetches_total{{outcome=\"{outcome}\",source_kind=\"mirror\"}}"
            ),
        )
    };
    assert_eq!(fetches("ok"), 1.0);
    assert_eq!(fetches("bad_response"), 1.0);
    let r = cp
        .wait_report("2.0.0 from the control plane", |r| {
            r.apps.iter().any(|a| a.version == "2.0.0")
        })
        .await;
    assert_eq!(r.apps[0].source.as_deref(), Some("control-plane"));

    // Three requests reached the mirror (the redirect, its target, the oversized copy); none
    // carried a credential of the node's.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for h in seen.iter() {
        assert!(h.get("authorization").is_none(), "{h:?}");
        assert!(
            h.keys().all(|k| !k.as_str().starts_with("outpost")),
            "{h:?}"
        );
    }
}

/// A mirror that sends the head and a few bytes, then nothing: the attempt ends after the stall
/// limit (`request_timeout`). With the control plane not holding the bytes either, the release
/// is retried on the next poll (a stall may pass), not reported failed; once the control plane
/// has them, the retry installs it.
#[tokio::test]
async fn a_stalled_mirror_times_out_and_the_release_is_retried_not_failed() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let lab = Lab::new();
    let (v1, v1_sig) = lab.release("1.0.0", "one");
    let cp_key = SigningKey::from_seed(&[42; 32]);
    let cp = MockCp::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror = listener.local_addr().unwrap();
    let len = v1.len();
    let first = v1[..16].to_vec();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let first = first.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(&first).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    let cfg = node_config_with(&lab, &cp, &cp_key, "1s", "");
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    let node = enrolled(&cp, &d).await;
    let stalled = format!("http://{mirror}/v1.bundle");
    let mut e1 = entry("1.0.0", &v1, &v1_sig, &[]);
    e1.sources = vec![stalled.clone()];
    cp.set_desired(1, sealed(&cp_key, &node, 1, vec![e1]));

    const RETRY: &str = "cannot download the release; retrying on the next poll";
    let log = wait_stderr(&d, RETRY).await;
    let line = log.lines().find(|l| l.contains(RETRY)).unwrap();
    assert!(
        line.contains(&stalled) && line.contains("timed out") && line.contains("control plane"),
        "every source and why: {line}"
    );
    wait_metrics(admin, &d, "the stalled attempt", |m| {
        counter(
            m,
            "outpost_bundle_fetches_total{outcome=\"timeout\",source_kind=\"mirror\"}",
        ) >= 1.0
    })
    .await;
    assert!(
        cp.state
            .lock()
            .unwrap()
            .reports
            .iter()
            .all(|r| r.failed.is_empty()),
        "a stall is not a failed release"
    );
    cp.serve_bundles(&[&v1]);
    wait_body(d.addr(), "/greeting", "one").await;
    let r = cp
        .wait_report("1.0.0 active", |r| {
            r.apps.iter().any(|a| a.version == "1.0.0")
        })
        .await;
    assert_eq!(r.apps[0].source.as_deref(), Some("control-plane"));
}
