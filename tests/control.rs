//! The control plane through the real binary (`outpost control-plane`) on 127.0.0.1 port 0, with
//! test code playing the nodes (signed enrolment and SyncReports, exactly as the agent sends
//! them) and the operator (`outpost push`, `outpost rollout`, `outpost token`, `outpost nodes`,
//! and the library client): authentication and its refusals, uploads and ranged downloads,
//! signed desired state, rollouts that pass wave by wave, automatic rollback, and kill -9.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use outpost::bundle::desired::{self, DesiredState};
use outpost::bundle::request_auth::{Role, sign_request};
use outpost::bundle::sign::{ReleaseDoc, SignedDoc, SigningKey, VerifyingKey, parse_public_key};
use outpost::control::api::{
    self, AppHealth, CreateRollout, EnrollRequest, EnrollResponse, FailedRelease, NodeInfo,
    RolloutState, RolloutStatus, SyncReport, TokenRequest, TokenResponse, UploadResponse,
    WaveState,
};
use outpost::control::client::{Client, ClientError};

// === harness ===

/// A running control plane, killed on drop.
struct Cp {
    child: Child,
    addr: SocketAddr,
    key: VerifyingKey,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cp {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory with an operator key, a release key and a control-plane config.
struct Lab {
    dir: tempfile::TempDir,
    operator: SigningKey,
    release: SigningKey,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let operator = SigningKey::generate(&mut rand_core::OsRng);
        let release = SigningKey::generate(&mut rand_core::OsRng);
        std::fs::write(dir.path().join("operator.key"), operator.to_secret_text()).unwrap();
        std::fs::write(
            dir.path().join("operator.pub"),
            operator.verifying_key().to_public_text(),
        )
        .unwrap();
        Self {
            dir,
            operator,
            release,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_owned()
    }

    /// Writes `cp.toml` (the operator key by file path) with `extra` lines.
    fn config(&self, extra: &str) -> PathBuf {
        let p = self.path("cp.toml");
        std::fs::write(
            &p,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"cp-state\"\noperators = [\"operator.pub\"]\n{extra}"
            ),
        )
        .unwrap();
        p
    }

    /// Starts `outpost control-plane --config cp.toml`; waits for its key and address lines.
    fn start(&self) -> Cp {
        let cfg = self.path("cp.toml");
        if !cfg.exists() {
            self.config("");
        }
        let Spawned {
            mut child,
            lines: rx,
            stderr,
        } = spawn_piped(
            Command::new(BIN)
                .args(["control-plane", "--config", cfg.to_str().unwrap()])
                .env("OUTPOST_LOG", "info,outpost::control=debug"),
        );
        let (mut key, mut addr) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while key.is_none() || addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "control plane did not start; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            };
            if let Some(k) = line.strip_prefix("control-plane key: ") {
                key = Some(parse_public_key(k.trim()).unwrap());
            } else if let Some(a) = line.strip_prefix("control plane listening on http://") {
                addr = Some(a.parse().unwrap());
            }
        }
        Cp {
            child,
            addr: addr.unwrap(),
            key: key.unwrap(),
            stderr,
        }
    }

    fn operator_client(&self, cp: &Cp) -> Client {
        Client::new(
            &cp.url(),
            self.operator.clone(),
            Role::Operator,
            None,
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// A signed bundle of app `greeter` at `version`: (bundle path, digest).
    fn bundle(&self, version: &str) -> (PathBuf, outpost::bundle::Digest) {
        let manifest = format!(
            "manifest_version = 1\n[application]\nname = \"greeter\"\nversion = \"{version}\"\n\
             [component.main]\nsource = \"config-reader.wasm\"\nroutes = [\"/\"]\n\
             [component.main.variables]\ngreeting = \"v{version}\"\n"
        );
        let bytes = outpost::bundle::archive::pack(vec![
            ("outpost.toml".into(), manifest.into_bytes()),
            (
                "config-reader.wasm".into(),
                std::fs::read(wasm("config_reader")).unwrap(),
            ),
        ])
        .unwrap();
        let digest = outpost::bundle::digest(&bytes);
        let now = outpost::base::clock::unix_now();
        let mut signed = SignedDoc::new(ReleaseDoc {
            app: "greeter".into(),
            version: version.into(),
            digest,
            size: bytes.len() as u64,
            created: now,
            expires: now + 3600,
            tenant: None,
        })
        .unwrap();
        signed.add_signature(&self.release).unwrap();
        let path = self.path(&format!("greeter-{version}.bundle"));
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(
            self.path(&format!("greeter-{version}.bundle.sig")),
            signed.encode(),
        )
        .unwrap();
        (path, digest)
    }

    /// Runs an operator command with the control plane and key from the environment.
    fn cli(&self, cp: &Cp, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("OUTPOST_CONTROL_PLANE", cp.url())
            .env("OUTPOST_KEY", self.path("operator.key"))
            .env("OUTPOST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A node played by the test: its key, its client, what it applied.
struct FakeNode {
    key: SigningKey,
    client: Client,
    applied: Option<DesiredState>,
}

impl FakeNode {
    fn new(cp: &Cp) -> Self {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let client = Client::new(
            &cp.url(),
            key.clone(),
            Role::Node,
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        Self {
            key,
            client,
            applied: None,
        }
    }

    fn id(&self) -> String {
        self.key.id().to_string()
    }

    async fn enroll(&self, token: &str) -> Result<EnrollResponse, ClientError> {
        let req = EnrollRequest {
            token: token.into(),
            public_key: self.key.verifying_key().to_public_text(),
            name: format!("node-{}", &self.id()[..4]),
            labels: [("arch".to_owned(), "aarch64".to_owned())].into(),
        };
        self.client.post_json(api::ENROLL, &req).await
    }

    /// One poll: sends `report`, opens and checks the answer like the agent does, and applies
    /// it. Returns the HTTP status (200 or 304).
    async fn sync_with(
        &mut self,
        cp_key: &VerifyingKey,
        report: &SyncReport,
    ) -> Result<u16, ClientError> {
        let headers: Vec<(&str, String)> = match &self.applied {
            Some(a) => vec![("if-none-match", format!("\"{}\"", a.sequence))],
            None => vec![],
        };
        let body = serde_json::to_vec(report).unwrap();
        let mut h = headers;
        h.push(("content-type", "application/json".into()));
        let resp = self
            .client
            .send(reqwest::Method::POST, api::SYNC, body, &h, 1 << 20)
            .await?;
        if resp.status == 200 {
            let state = desired::open(&resp.body, std::slice::from_ref(cp_key)).unwrap();
            assert_eq!(
                resp.etag.as_deref(),
                Some(format!("\"{}\"", state.sequence).as_str())
            );
            desired::check_fresh(
                &state,
                &self.id(),
                self.applied.as_ref(),
                outpost::base::clock::unix_now(),
            )
            .unwrap();
            self.applied = Some(state);
        }
        Ok(resp.status)
    }

    /// Reports every app of the applied state as active, with `errors_for(version)` failures
    /// out of 20 requests.
    fn report(&self, errors_for: &dyn Fn(&str) -> u64) -> SyncReport {
        let apps = self
            .applied
            .as_ref()
            .map(|s| {
                s.apps
                    .iter()
                    .map(|a| AppHealth {
                        app: a.app.clone(),
                        version: a.version.clone(),
                        digest: a.digest,
                        active_since: 0,
                        requests: 20,
                        errors: errors_for(&a.version),
                        instantiate_failures: 0,
                        latency_p99_ms: Some(5.0),
                        source: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        SyncReport {
            applied_sequence: self.applied.as_ref().map(|s| s.sequence),
            outpost_version: "test".into(),
            uptime_secs: 1,
            apps,
            failed: vec![],
        }
    }

    async fn poll(&mut self, cp_key: &VerifyingKey, errors_for: &dyn Fn(&str) -> u64) {
        let r = self.report(errors_for);
        self.sync_with(cp_key, &r).await.unwrap();
    }

    fn digest_of(&self, app: &str) -> Option<outpost::bundle::Digest> {
        self.applied
            .as_ref()?
            .apps
            .iter()
            .find(|a| a.app == app)
            .map(|a| a.digest)
    }
}

async fn tokens(op: &Client, count: u32, labels: &[(&str, &str)]) -> Vec<String> {
    let r: TokenResponse = op
        .post_json(
            api::TOKENS,
            &TokenRequest {
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ttl_secs: 600,
                count,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.tokens.len(), count as usize);
    r.tokens
}

/// Enrols `n` fake nodes in group `site=lab`, sorted by id (the rollout's wave order).
async fn fleet(cp: &Cp, op: &Client, n: usize) -> Vec<FakeNode> {
    let toks = tokens(op, n as u32, &[("site", "lab")]).await;
    let mut nodes = Vec::new();
    for t in toks {
        let node = FakeNode::new(cp);
        let r = node.enroll(&t).await.unwrap();
        assert_eq!(r.labels["site"], "lab");
        nodes.push(node);
    }
    nodes.sort_by_key(FakeNode::id);
    nodes
}

async fn upload(op: &Client, bundle: &Path) -> Result<UploadResponse, ClientError> {
    let bytes = std::fs::read(bundle).unwrap();
    let sig = std::fs::read(format!("{}.sig", bundle.display())).unwrap();
    let digest = outpost::bundle::digest(&bytes);
    let r = op
        .send(
            reqwest::Method::PUT,
            &format!("{}{digest}", api::BUNDLES),
            bytes,
            &[(api::BUNDLE_SIGNATURE_HEADER, BASE64.encode(sig))],
            1 << 20,
        )
        .await?;
    Ok(serde_json::from_slice(&r.body).unwrap())
}

/// Runs `outpost push` in a thread while the nodes keep polling; returns its result.
async fn push_while_polling(
    lab: &Lab,
    cp: &Cp,
    nodes: &mut [FakeNode],
    args: Vec<String>,
    errors_for: &dyn Fn(&str) -> u64,
) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("push")
        .args(&args)
        .env("OUTPOST_CONTROL_PLANE", cp.url())
        .env("OUTPOST_KEY", lab.path("operator.key"))
        .env("OUTPOST_LOG", "warn")
        .stdin(Stdio::null());
    // Output to files, read after exit: complete, however late the process wrote it.
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    // A hang guard, not a timing bound: a loaded machine stretches the waves' bake.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "push did not finish in 180 s; its output:\n{}\n{}\ncontrol plane:\n{}",
                read(&out_path),
                read(&err_path),
                cp.stderr.lock().unwrap()
            );
        }
        for n in nodes.iter_mut() {
            n.poll(&cp.key, errors_for).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (
        status.code().unwrap_or(-1),
        read(&out_path),
        read(&err_path),
    )
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_authentication_revocation_and_replay() {
    let lab = Lab::new();
    let cp = lab.start();
    let op = lab.operator_client(&cp);

    // Unauthenticated: health and the desired-state key (the one printed at start).
    assert_eq!(get(cp.addr, api::HEALTH).await.status, 200);
    let k = get(cp.addr, api::KEY).await;
    assert_eq!(k.body, cp.key.to_public_text());
    let control_pub = std::fs::read_to_string(lab.path("cp-state/control.pub")).unwrap();
    assert_eq!(control_pub, k.body);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(lab.path("cp-state/control.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A token enrols once.
    let toks = tokens(&op, 1, &[("site", "lab"), ("arch", "x86_64")]).await;
    let a = FakeNode::new(&cp);
    let r = a.enroll(&toks[0]).await.unwrap();
    assert_eq!(r.node, a.id());
    assert_eq!(r.labels["site"], "lab");
    assert_eq!(r.labels["arch"], "x86_64", "token labels win");
    let b = FakeNode::new(&cp);
    let e = b.enroll(&toks[0]).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(e.to_string().contains("enrolment token"), "{e}");
    let e = b.enroll("made-up").await.unwrap_err();
    assert_eq!(e.status(), Some(401));

    // Enrolment signed by another key than the one presented: 401, and the token survives.
    let tok = tokens(&op, 1, &[]).await.remove(0);
    let forged = EnrollRequest {
        token: tok.clone(),
        public_key: b.key.verifying_key().to_public_text(),
        name: "x".into(),
        labels: Default::default(),
    };
    let e = a
        .client
        .post_json::<_, EnrollResponse>(api::ENROLL, &forged)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    b.enroll(&tok).await.unwrap();

    // An unknown node gets 401 and nothing else.
    let mut unknown = FakeNode::new(&cp);
    let e = unknown
        .sync_with(&cp.key, &SyncReport::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("unknown node"), "{e}");

    // A node key on an operator endpoint: 403; an operator key nobody configured: 401.
    let e = a
        .client
        .get_json::<Vec<NodeInfo>>(api::NODES)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let stranger = Client::new(
        &cp.url(),
        SigningKey::generate(&mut rand_core::OsRng),
        Role::Operator,
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let e = stranger
        .get_json::<Vec<NodeInfo>>(api::NODES)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(e.to_string().contains("not configured"), "{e}");
    // No Authorization at all.
    assert_eq!(get(cp.addr, api::NODES).await.status, 401);

    // The same signed request sent twice: the second is a replay.
    let auth = sign_request(
        &lab.operator,
        Role::Operator,
        "GET",
        api::NODES,
        b"",
        outpost::base::clock::unix_now(),
        [7; 16],
    );
    let first = request_with(cp.addr, "GET", api::NODES, b"", &[("authorization", &auth)]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = request_with(cp.addr, "GET", api::NODES, b"", &[("authorization", &auth)]).await;
    assert_eq!(again.status, 401);
    assert!(again.body.contains("replayed request"), "{}", again.body);
    // A signature over another path does not carry over.
    let moved = request_with(
        cp.addr,
        "GET",
        api::ROLLOUTS,
        b"",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(moved.status, 401);

    // The node syncs, then is revoked: 403 from then on, also for re-enrolment.
    let mut a = a;
    assert_eq!(
        a.sync_with(&cp.key, &SyncReport::default()).await.unwrap(),
        200
    );
    let (code, out, err) = lab.cli(&cp, &["nodes", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&a.id()) && out.contains("online"), "{out}");
    let (code, out, err) = lab.cli(&cp, &["nodes", "revoke", &a.id()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let e = a
        .sync_with(&cp.key, &SyncReport::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let t = tokens(&op, 1, &[]).await;
    assert_eq!(a.enroll(&t[0]).await.unwrap_err().status(), Some(403));
    let nodes: Vec<NodeInfo> = op.get_json(api::NODES).await.unwrap();
    let rec = nodes.iter().find(|n| n.id == a.id()).unwrap();
    assert!(rec.revoked && !rec.online);

    // `outpost token create` prints usable tokens.
    let (code, out, err) = lab.cli(
        &cp,
        &["token", "create", "--label", "site=dc", "--count", "2"],
    );
    assert_eq!(code, 0, "{err}");
    let printed: Vec<&str> = out.lines().collect();
    assert_eq!(printed.len(), 2, "{out}");
    let d = FakeNode::new(&cp);
    assert_eq!(d.enroll(printed[1]).await.unwrap().labels["site"], "dc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_upload_checks_and_ranged_downloads() {
    let lab = Lab::new();
    lab.config("max_bundle_size = \"4MiB\"\n");
    let cp = lab.start();
    let op = lab.operator_client(&cp);
    let (bundle, digest) = lab.bundle("1.0.0");
    let bytes = std::fs::read(&bundle).unwrap();
    let sig = std::fs::read(format!("{}.sig", bundle.display())).unwrap();
    let put = |path: String, body: Vec<u8>, sig: Option<Vec<u8>>| {
        let op = op.clone();
        async move {
            let headers: Vec<(&str, String)> = sig
                .map(|s| vec![(api::BUNDLE_SIGNATURE_HEADER, BASE64.encode(s))])
                .unwrap_or_default();
            op.send(reqwest::Method::PUT, &path, body, &headers, 1 << 20)
                .await
        }
    };

    // Wrong digest in the path.
    let other = outpost::bundle::digest(b"something else");
    let e = put(
        format!("{}{other}", api::BUNDLES),
        bytes.clone(),
        Some(sig.clone()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("does not match"), "{e}");
    // No signature, and a signature for another bundle.
    let path = format!("{}{digest}", api::BUNDLES);
    let e = put(path.clone(), bytes.clone(), None).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    let (_, _) = lab.bundle("1.0.1");
    let other_sig = std::fs::read(lab.path("greeter-1.0.1.bundle.sig")).unwrap();
    let e = put(path.clone(), bytes.clone(), Some(other_sig))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    // Above max_bundle_size: 413 from Content-Length, before the body is read.
    // (Raw: only the head is sent, and the answer comes without the body.)
    let big_path = format!("{}{}", api::BUNDLES, outpost::bundle::digest(b"big"));
    let auth = sign_request(
        &lab.operator,
        Role::Operator,
        "PUT",
        &big_path,
        b"",
        outpost::base::clock::unix_now(),
        [9; 16],
    );
    let head = format!(
        "PUT {big_path} HTTP/1.1\r\nhost: {}\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n",
        cp.addr,
        5 << 20
    );
    let mut tcp = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 4194304 bytes"), "{answer}");
    // Nothing refused was stored.
    let stored = std::fs::read_dir(lab.path("cp-state/bundles"))
        .unwrap()
        .count();
    assert_eq!(stored, 0);

    // The real upload, twice (idempotent).
    for _ in 0..2 {
        let up = upload(&op, &bundle).await.unwrap();
        assert_eq!((up.app.as_str(), up.version.as_str()), ("greeter", "1.0.0"));
        assert_eq!(up.digest, digest);
        assert_eq!(up.size, bytes.len() as u64);
    }

    // Full and ranged downloads, by an operator and by an enrolled node.
    let full = op
        .send(reqwest::Method::GET, &path, vec![], &[], 64 << 20)
        .await
        .unwrap();
    assert_eq!(full.status, 200);
    assert_eq!(full.body.as_ref(), bytes.as_slice());
    assert_eq!(full.etag.as_deref(), Some(format!("\"{digest}\"").as_str()));
    let node = {
        let t = tokens(&op, 1, &[]).await;
        let n = FakeNode::new(&cp);
        n.enroll(&t[0]).await.unwrap();
        n
    };
    let part = node
        .client
        .send(
            reqwest::Method::GET,
            &path,
            vec![],
            &[("range", "bytes=10-19".into())],
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(part.body.as_ref(), &bytes[10..20]);
    let tail = node
        .client
        .send(
            reqwest::Method::GET,
            &path,
            vec![],
            &[("range", "bytes=100-".into())],
            64 << 20,
        )
        .await
        .unwrap();
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body.as_ref(), &bytes[100..]);
    // Headers, through a raw request.
    let auth = sign_request(
        &node.key,
        Role::Node,
        "GET",
        &path,
        b"",
        outpost::base::clock::unix_now(),
        [3; 16],
    );
    let raw = request_with(
        cp.addr,
        "GET",
        &path,
        b"",
        &[("authorization", &auth), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(raw.status, 206);
    assert_eq!(
        raw.headers["content-range"],
        format!("bytes 0-9/{}", bytes.len()).as_str()
    );
    assert_eq!(raw.headers["accept-ranges"], "bytes");
    let e = node
        .client
        .send(
            reqwest::Method::GET,
            &path,
            vec![],
            &[("range", format!("bytes={}-", bytes.len()))],
            1 << 20,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(416));
    // A node cannot upload.
    let e = node
        .client
        .send(reqwest::Method::PUT, &path, bytes.clone(), &[], 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    let missing = format!("{}{other}", api::BUNDLES);
    let e = op
        .send(reqwest::Method::GET, &missing, vec![], &[], 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_is_signed_and_its_sequence_grows_with_assignments() {
    let lab = Lab::new();
    let cp = lab.start();
    let op = lab.operator_client(&cp);
    let mut nodes = fleet(&cp, &op, 1).await;
    let n = &mut nodes[0];
    assert_eq!(
        n.sync_with(&cp.key, &SyncReport::default()).await.unwrap(),
        200
    );
    let first = n.applied.clone().unwrap();
    assert_eq!(first.node, n.id());
    assert!(first.apps.is_empty());
    assert!(
        first.expires > first.issued + 23 * 3600,
        "default ttl is 24h"
    );
    // Nothing changed: 304 with the same ETag.
    assert_eq!(
        n.sync_with(&cp.key, &SyncReport::default()).await.unwrap(),
        304
    );
    // Signed by the printed key, and by nothing else.
    let other = SigningKey::generate(&mut rand_core::OsRng).verifying_key();
    let resp = n
        .client
        .send(
            reqwest::Method::POST,
            api::SYNC,
            serde_json::to_vec(&SyncReport::default()).unwrap(),
            &[],
            1 << 20,
        )
        .await
        .unwrap();
    assert!(desired::open(&resp.body, &[other]).is_err());

    // A rollout assigns the app: the next document has a higher sequence and the release.
    let (bundle, digest) = lab.bundle("1.0.0");
    upload(&op, &bundle).await.unwrap();
    let status: RolloutStatus = op
        .post_json(
            api::ROLLOUTS,
            &CreateRollout {
                digest,
                group: "site=lab".into(),
                waves: vec![100],
                max_error_rate: 0.05,
                bake_secs: 0,
                hosts: vec!["Greeter.Example.COM.".into()],
                sources: vec![],
                signature: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(status.state, RolloutState::Running);
    assert_eq!(status.waves[0].state, WaveState::Deploying);
    assert_eq!(
        n.sync_with(&cp.key, &SyncReport::default()).await.unwrap(),
        200
    );
    let second = n.applied.clone().unwrap();
    assert!(second.sequence > first.sequence);
    assert_eq!(second.apps.len(), 1);
    let app = &second.apps[0];
    assert_eq!(
        (app.app.as_str(), app.version.as_str()),
        ("greeter", "1.0.0")
    );
    assert_eq!(app.digest, digest);
    assert_eq!(app.hosts, vec!["greeter.example.com"]);
    // The release signature travels with it and verifies under the release key.
    let sig = DesiredState::signature_file(app).unwrap();
    let signed = SignedDoc::parse(&sig, 64 << 10).unwrap();
    let policy =
        outpost::bundle::sign::TrustPolicy::new(vec![lab.release.verifying_key()]).unwrap();
    outpost::bundle::sign::verify(
        &signed,
        app.size,
        &digest,
        &policy,
        outpost::base::clock::unix_now(),
    )
    .unwrap();
    // A replayed older document is refused by the node's checks.
    assert!(
        desired::check_fresh(
            &first,
            &n.id(),
            Some(&second),
            outpost::base::clock::unix_now()
        )
        .is_err()
    );

    // A second rollout of the same app while one runs: 409. Bad waves: 400. No nodes: 400.
    let dup = CreateRollout {
        digest,
        group: "all".into(),
        waves: vec![100],
        max_error_rate: 0.05,
        bake_secs: 0,
        hosts: vec![],
        sources: vec![],
        signature: None,
    };
    let e = op
        .post_json::<_, RolloutStatus>(api::ROLLOUTS, &dup)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    let (code, _, err) = lab.cli(&cp, &["rollout", "abort", &status.id.to_string()]);
    assert_eq!(code, 0, "{err}");
    for (waves, group) in [
        (vec![10, 50], "all"),
        (vec![50, 10, 100], "all"),
        (vec![100], "site=nowhere"),
    ] {
        let bad = CreateRollout {
            waves,
            group: group.into(),
            ..dup.clone()
        };
        let e = op
            .post_json::<_, RolloutStatus>(api::ROLLOUTS, &bad)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
    }
    // Mirror lists the control plane refuses: another kind of URL, credentials in the URL,
    // a duplicate; a mirror-only release without a mirror, or with another bundle's signature.
    let (other, other_digest) = lab.bundle("9.0.0");
    let other_sig = BASE64.encode(std::fs::read(format!("{}.sig", other.display())).unwrap());
    let mirror = "https://cdn.example.com/sha256-x.bundle".to_owned();
    for (sources, signature, d, why) in [
        (
            vec!["ftp://cdn.example.com/x".to_owned()],
            None,
            digest,
            "unsupported source",
        ),
        (
            vec!["https://u:p@cdn.example.com/x".into()],
            None,
            digest,
            "user info",
        ),
        (
            vec![mirror.clone(), mirror.clone()],
            None,
            digest,
            "listed twice",
        ),
        (
            vec![],
            Some(other_sig.clone()),
            other_digest,
            "at least one source",
        ),
        (
            vec![mirror.clone()],
            Some(other_sig.clone()),
            digest,
            "signature file signs",
        ),
    ] {
        let bad = CreateRollout {
            digest: d,
            sources,
            signature,
            ..dup.clone()
        };
        let e = op
            .post_json::<_, RolloutStatus>(api::ROLLOUTS, &bad)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(400), "{e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    // The abort took the app away again, with a newer sequence.
    assert_eq!(
        n.sync_with(&cp.key, &SyncReport::default()).await.unwrap(),
        200
    );
    let third = n.applied.clone().unwrap();
    assert!(third.sequence > second.sequence);
    assert!(third.apps.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_passes_wave_by_wave_and_a_bad_release_rolls_back() {
    let lab = Lab::new();
    let cp = lab.start();
    let op = lab.operator_client(&cp);
    let mut nodes = fleet(&cp, &op, 3).await;
    for n in nodes.iter_mut() {
        n.poll(&cp.key, &|_| 0).await;
    }
    let (good, good_digest) = lab.bundle("1.0.0");
    let (code, out, err) = push_while_polling(
        &lab,
        &cp,
        &mut nodes,
        vec![
            good.to_str().unwrap().into(),
            "--group".into(),
            "site=lab".into(),
            "--waves".into(),
            "1,50,100".into(),
            "--bake".into(),
            "1s".into(),
        ],
        &|_| 0,
    )
    .await;
    assert_eq!(
        code,
        0,
        "stdout:\n{out}\nstderr:\n{err}\ncp:\n{}",
        cp.stderr.lock().unwrap()
    );
    assert!(out.contains("rollout 1 created"), "{out}");
    assert!(out.contains("rollout 1: succeeded"), "{out}");
    for w in 1..=3 {
        assert!(out.contains(&format!("wave {w:<2}")), "{out}");
    }
    assert!(err.contains("uploaded greeter 1.0.0"), "{err}");
    // Wave by wave: each started after the previous one passed, one node each, in id order.
    let s: RolloutStatus = op.get_json(&format!("{}/1", api::ROLLOUTS)).await.unwrap();
    assert_eq!(s.state, RolloutState::Succeeded);
    assert_eq!(s.waves.len(), 3);
    for (i, w) in s.waves.iter().enumerate() {
        assert_eq!(w.state, WaveState::Passed);
        assert_eq!(w.nodes, vec![nodes[i].id()]);
        assert!(
            w.finished_ms.unwrap() >= w.converged_ms.unwrap() + 1000,
            "baked 1s"
        );
        if i > 0 {
            assert!(w.started_ms.unwrap() >= s.waves[i - 1].finished_ms.unwrap());
        }
    }
    assert_eq!(s.waves[2].requests, 60, "counts every node up to the wave");
    for n in nodes.iter_mut() {
        n.poll(&cp.key, &|_| 0).await;
        assert_eq!(n.digest_of("greeter"), Some(good_digest));
    }
    // `outpost rollout status` shows the same view.
    let (code, out, _) = lab.cli(&cp, &["rollout", "status", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("succeeded") && out.contains("passed"), "{out}");
    let (code, out, _) = lab.cli(&cp, &["rollout", "status", "1", "--json"]);
    assert_eq!(code, 0);
    let parsed: RolloutStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed.id, 1);

    // A node enrolled later into the group gets the group's release at once.
    let late = {
        let t = tokens(&op, 1, &[("site", "lab")]).await;
        let mut n = FakeNode::new(&cp);
        n.enroll(&t[0]).await.unwrap();
        n.poll(&cp.key, &|_| 0).await;
        n
    };
    assert_eq!(late.digest_of("greeter"), Some(good_digest));
    // It is in the group now, so the next push plans its waves over it too: it must be polled,
    // and wave 1 is whichever node has the lowest id.
    nodes.push(late);
    nodes.sort_by_key(FakeNode::id);

    // The bad release: every request fails on the canary. It never passes wave 1, and every
    // node it touched goes back to 1.0.0.
    let (bad, bad_digest) = lab.bundle("2.0.0");
    let (code, out, err) = push_while_polling(
        &lab,
        &cp,
        &mut nodes,
        vec![
            bad.to_str().unwrap().into(),
            "--group".into(),
            "site=lab".into(),
            "--waves".into(),
            "1,50,100".into(),
            "--bake".into(),
            "2s".into(),
        ],
        &|v| if v == "2.0.0" { 20 } else { 0 },
    )
    .await;
    assert_ne!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        err.contains("wave 1 (1%): error rate 1.00 > 0.05 (20 of 20 requests failed)"),
        "{err}"
    );
    let s: RolloutStatus = op.get_json(&format!("{}/2", api::ROLLOUTS)).await.unwrap();
    assert_eq!(s.state, RolloutState::RolledBack);
    assert_eq!(s.waves[0].state, WaveState::Failed);
    assert_eq!(s.waves[1].state, WaveState::Pending);
    for n in nodes.iter_mut() {
        n.poll(&cp.key, &|_| 0).await;
        assert_eq!(n.digest_of("greeter"), Some(good_digest));
    }
    assert_eq!(s.waves[0].nodes, vec![nodes[0].id()]);
    assert_ne!(bad_digest, good_digest);
    // Nodes enrolling later still get the release that succeeded.
    let t = tokens(&op, 1, &[("site", "lab")]).await;
    let mut later = FakeNode::new(&cp);
    later.enroll(&t[0]).await.unwrap();
    later.poll(&cp.key, &|_| 0).await;
    assert_eq!(later.digest_of("greeter"), Some(good_digest));

    // A node that cannot run a release fails the rollout at once, and a node that had no
    // release of the app before loses it again.
    let (third, third_digest) = lab.bundle("3.0.0");
    upload(&op, &third).await.unwrap();
    let t = tokens(&op, 1, &[("site", "solo")]).await;
    let mut solo = FakeNode::new(&cp);
    solo.enroll(&t[0]).await.unwrap();
    let s: RolloutStatus = op
        .post_json(
            api::ROLLOUTS,
            &CreateRollout {
                digest: third_digest,
                group: "site=solo".into(),
                waves: vec![100],
                max_error_rate: 0.05,
                bake_secs: 60,
                hosts: vec![],
                sources: vec![],
                signature: None,
            },
        )
        .await
        .unwrap();
    solo.poll(&cp.key, &|_| 0).await;
    assert_eq!(solo.digest_of("greeter"), Some(third_digest));
    let mut report = solo.report(&|_| 0);
    report.apps.clear();
    report.failed.push(FailedRelease {
        app: "greeter".into(),
        digest: third_digest,
        error: "component failed to load".into(),
    });
    solo.sync_with(&cp.key, &report).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s: RolloutStatus = op
            .get_json(&format!("{}/{}", api::ROLLOUTS, s.id))
            .await
            .unwrap();
        if s.state.is_final() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s.state, RolloutState::RolledBack);
    assert_eq!(
        s.reason.unwrap(),
        format!(
            "node {} could not run the release: component failed to load",
            solo.id()
        )
    );
    solo.poll(&cp.key, &|_| 0).await;
    assert_eq!(solo.digest_of("greeter"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_is_not_the_canary_and_does_not_hold_up_a_push() {
    let lab = Lab::new();
    lab.config("node_offline_after = \"3s\"\n");
    let cp = lab.start();
    let op = lab.operator_client(&cp);
    let mut nodes = fleet(&cp, &op, 3).await;
    // The lowest id, the canary in id order, goes silent until the control plane lists it
    // offline; the others keep polling.
    let mut gone = nodes.remove(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for n in nodes.iter_mut() {
            n.poll(&cp.key, &|_| 0).await;
        }
        let list: Vec<NodeInfo> = op.get_json(api::NODES).await.unwrap();
        let online = |id: &str| list.iter().find(|n| n.id == id).unwrap().online;
        if !online(&gone.id()) {
            assert!(nodes.iter().all(|n| online(&n.id())));
            break;
        }
        assert!(Instant::now() < deadline, "never listed offline: {list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (bundle, digest) = lab.bundle("1.0.0");
    let (code, out, err) = push_while_polling(
        &lab,
        &cp,
        &mut nodes,
        vec![
            bundle.to_str().unwrap().into(),
            "--group".into(),
            "site=lab".into(),
            "--waves".into(),
            "1,100".into(),
            "--bake".into(),
            "1s".into(),
        ],
        &|_| 0,
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("(1 offline at start, not waited for)"),
        "{out}"
    );
    let s: RolloutStatus = op.get_json(&format!("{}/1", api::ROLLOUTS)).await.unwrap();
    assert_eq!(s.state, RolloutState::Succeeded);
    assert_eq!(s.waves[0].nodes, vec![nodes[0].id()], "an online canary");
    assert_eq!(s.waves[1].nodes, vec![nodes[1].id(), gone.id()]);
    assert_eq!(s.waves[1].offline, vec![gone.id()]);
    assert_eq!(s.waves[1].active, 1);
    // It was assigned all the same: back online, it gets the release on its first poll.
    gone.poll(&cp.key, &|_| 0).await;
    assert_eq!(gone.digest_of("greeter"), Some(digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_abort_and_state_survives_kill_9() {
    let lab = Lab::new();
    let mut cp = lab.start();
    let op = lab.operator_client(&cp);
    let mut nodes = fleet(&cp, &op, 2).await;
    let (bundle, digest) = lab.bundle("1.0.0");
    let (code, out, err) = lab.cli(
        &cp,
        &[
            "push",
            bundle.to_str().unwrap(),
            "--group",
            "all",
            "--waves",
            "50,100",
            "--bake",
            "1s",
            "--detach",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rollout 1 created"), "{out}");
    let (code, out, err) = lab.cli(&cp, &["rollout", "pause", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused"), "{out}");
    let (code, _, err) = lab.cli(&cp, &["rollout", "pause", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("409") && err.contains("cannot pause"), "{err}");
    // Paused: the first wave converges and bakes, but the second does not start.
    for _ in 0..5 {
        for n in nodes.iter_mut() {
            n.poll(&cp.key, &|_| 0).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let s: RolloutStatus = op.get_json(&format!("{}/1", api::ROLLOUTS)).await.unwrap();
    assert_eq!(s.state, RolloutState::Paused);
    assert_eq!(s.waves[0].state, WaveState::Baking);
    assert_eq!(s.waves[1].state, WaveState::Pending);
    assert_eq!(nodes[0].digest_of("greeter"), Some(digest));
    assert_eq!(nodes[1].digest_of("greeter"), None);
    let token = tokens(&op, 1, &[]).await.remove(0);
    let seq_before = nodes[0].applied.as_ref().unwrap().sequence;

    // kill -9: everything acknowledged is still there after a restart.
    cp.kill9();
    let cp = lab.start();
    let s: RolloutStatus = op_for(&lab, &cp)
        .get_json(&format!("{}/1", api::ROLLOUTS))
        .await
        .unwrap();
    assert_eq!(s.state, RolloutState::Paused);
    for n in nodes.iter_mut() {
        n.client = Client::new(
            &cp.url(),
            n.key.clone(),
            Role::Node,
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        n.poll(&cp.key, &|_| 0).await;
    }
    assert_eq!(nodes[0].digest_of("greeter"), Some(digest));
    assert!(nodes[0].applied.as_ref().unwrap().sequence >= seq_before);
    let fresh = FakeNode::new(&cp);
    fresh.enroll(&token).await.unwrap();

    // Resume: the second wave starts; abort: both nodes lose the app again.
    let (code, _, err) = lab.cli(&cp, &["rollout", "resume", "1"]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes[1].digest_of("greeter") != Some(digest) {
        assert!(Instant::now() < deadline, "wave 2 did not start");
        for n in nodes.iter_mut() {
            n.poll(&cp.key, &|_| 0).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 1 got the release but has not reported it yet: wave 2 is still deploying.
    let s: RolloutStatus = op_for(&lab, &cp)
        .get_json(&format!("{}/1", api::ROLLOUTS))
        .await
        .unwrap();
    assert_eq!(s.state, RolloutState::Running);
    assert_eq!(s.waves[0].state, WaveState::Passed);
    assert_eq!(s.waves[1].state, WaveState::Deploying);
    let (code, out, err) = lab.cli(&cp, &["rollout", "abort", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("aborted"), "{out}");
    assert!(
        out.contains(&format!("aborted by operator {}", lab.operator.id())),
        "{out}"
    );
    for n in nodes.iter_mut() {
        n.poll(&cp.key, &|_| 0).await;
        assert_eq!(n.digest_of("greeter"), None);
    }
    let (code, _, err) = lab.cli(&cp, &["rollout", "resume", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("is aborted"), "{err}");
    let (code, out, _) = lab.cli(&cp, &["rollout", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("greeter"), "{out}");

    // SIGTERM: a graceful stop with exit status 0.
    let mut cp = cp;
    let st = Command::new("kill")
        .args(["-TERM", &cp.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(st) = cp.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0), "{}", cp.stderr.lock().unwrap());
    assert!(cp.stderr.lock().unwrap().contains("control plane stopped"));
}

fn op_for(lab: &Lab, cp: &Cp) -> Client {
    lab.operator_client(cp)
}

#[test]
fn config_errors_exit_64_before_binding() {
    let lab = Lab::new();
    let cfg = lab.path("bad.toml");
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:0\"\nstate_dir = \"s\"\noperators = [\"operator.pub\"]\n",
    )
    .unwrap();
    let (code, _, err) = run_to_end(&["control-plane", "--config", &lab.s("bad.toml")]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("listen: 0.0.0.0:0 is not a loopback address"),
        "{err}"
    );
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nstate_dir = \"s\"\noperators = [\"missing.pub\"]\n",
    )
    .unwrap();
    let (code, _, err) = run_to_end(&["control-plane", "--config", &lab.s("bad.toml")]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("operators[0]") && err.contains("missing.pub"),
        "{err}"
    );
    assert!(!lab.path("s").exists(), "nothing created for a bad config");
    // `outpost push` of an unsigned bundle says so.
    std::fs::write(lab.path("x.bundle"), b"x").unwrap();
    let (code, _, err) = run_to_end(&[
        "push",
        &lab.s("x.bundle"),
        "--control-plane",
        "http://127.0.0.1:9",
        "--key",
        &lab.s("operator.key"),
        "--group",
        "all",
    ]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("no signature file"), "{err}");
}

/// The API listener takes its connection cap and header deadline from the config: a partial
/// request head is closed at the configured `header_timeout` (300 ms; the default is 10 s, past
/// this test's guard), and with 16 slow connections held against `max_connections = 4` a normal
/// client is still served within the guard (the oldest partial heads are closed to make room).
#[tokio::test]
async fn the_api_listener_takes_its_cap_and_deadlines_from_the_config() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const GUARD: Duration = Duration::from_secs(5);
    let lab = Lab::new();
    lab.config("max_connections = 4\nheader_timeout = \"300ms\"\nidle_timeout = \"1s\"\n");
    let cp = lab.start();
    let partial = || async {
        let mut s = tokio::net::TcpStream::connect(cp.addr).await.unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        s
    };
    // Reads until EOF or reset: true when the server closed the connection within GUARD.
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 1024];
        let drain = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(GUARD, drain).await.is_ok()
    };
    assert!(
        closed(partial().await).await,
        "a partial head outlived the configured 300 ms header deadline by {GUARD:?}"
    );

    let mut slow = Vec::new();
    for _ in 0..16 {
        slow.push(partial().await);
    }
    // A connection the door closes to make room may be the client's own while the flood is
    // being accepted; like any client, it tries again. It must get through within GUARD.
    let served = tokio::time::timeout(GUARD, async {
        loop {
            match try_get(cp.addr, api::HEALTH).await {
                Ok(r) => return r,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("a normal client was locked out by slow connections at the cap");
    assert_eq!(served.status, 200, "{}", served.body);
    drop(slow);
    let log = cp.stderr.lock().unwrap().clone();
    assert!(
        log.contains("max_connections=4") && log.contains("header_timeout=300ms"),
        "the start line names the limits:\n{log}"
    );
}
