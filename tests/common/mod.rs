//! Shared harness for the integration tests: runs the real `outpost` binary on 127.0.0.1 port 0,
//! learns its bound addresses from stdout, and talks to it with real HTTP clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub mod clients;
pub mod polyglot;
pub mod registry;

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost");

/// Writes `DIR/NAME`, a node config for `outpost run`: state in `DIR/state`, a cleartext and an
/// admin listener on 127.0.0.1 port 0, `listen_extra` lines in `[listen]`, then `rest` (the
/// tables that follow: `[[app]]`, `[trust]`, `[runtime]`, ...).
pub fn write_node_config(dir: &Path, name: &str, listen_extra: &str, rest: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[node]\nstate_dir = \"{}\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
             admin = \"127.0.0.1:0\"\n{listen_extra}\n{rest}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    p
}

/// Path of a guest app built by build.rs from testbed/apps.
pub fn wasm(name: &str) -> PathBuf {
    let p = Path::new(env!("OUTPOST_TESTBED_APPS_DIR")).join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "guest app {} missing (build.rs builds testbed/apps)",
        p.display()
    );
    p
}

pub fn bad_input(name: &str) -> PathBuf {
    Path::new(env!("OUTPOST_TESTBED_BAD_DIR")).join(name)
}

/// A temp app directory: `outpost.toml` with `manifest` and the named guest apps copied in.
pub struct AppDir {
    pub dir: tempfile::TempDir,
}

impl AppDir {
    pub fn new(manifest: &str, apps: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("outpost.toml"), manifest).unwrap();
        for a in apps {
            std::fs::copy(wasm(a), dir.path().join(format!("{a}.wasm"))).unwrap();
        }
        Self { dir }
    }
    /// [`AppDir::new`] with the manifest's header written for app `name` at `version`:
    /// `components` holds the rest (the `[component.*]` tables).
    pub fn app(name: &str, version: &str, components: &str, apps: &[&str]) -> Self {
        Self::new(&manifest(name, version, components), apps)
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The file-grant fixture: `static/a.txt` ("file content\n") for a grant of `static`, and
    /// `secret.txt` ("outside the grant\n") beside it, which no guest may read.
    pub fn with_granted_files(self) -> Self {
        std::fs::create_dir(self.path().join("static")).unwrap();
        std::fs::write(self.path().join("static/a.txt"), "file content\n").unwrap();
        std::fs::write(self.path().join("secret.txt"), "outside the grant\n").unwrap();
        self
    }
}

/// An `outpost.toml` for app `name` at `version`: the header, then `components`.
pub fn manifest(name: &str, version: &str, components: &str) -> String {
    format!(
        "manifest_version = 1\n[application]\nname = \"{name}\"\nversion = \"{version}\"\n{}",
        components.trim_start_matches('\n')
    )
}

/// A child process whose stdout lines arrive on `lines` and whose stderr collects in `stderr`.
pub struct Spawned {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub stderr: Arc<Mutex<String>>,
}

/// Spawns `cmd` with stdout and stderr piped and read by two threads.
pub fn spawn_piped(cmd: &mut Command) -> Spawned {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let err = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let (tx, lines) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Spawned {
        child,
        lines,
        stderr,
    }
}

/// A running `outpost` process, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    /// `listening on https://…` lines (TLS listeners).
    pub https: Vec<SocketAddr>,
    /// `listening on h3://…` lines (QUIC endpoints).
    pub h3: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub stderr: Arc<Mutex<String>>,
    _home: tempfile::TempDir,
}

impl Daemon {
    /// `outpost serve --listen 127.0.0.1:0 ARGS...` with the compile cache shared by the tests
    /// (artifacts are written atomically, so concurrent daemons can share it).
    pub fn serve(args: &[&str]) -> Self {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("outpost-test-compile-cache");
        let c = cache.to_str().unwrap().to_owned();
        let mut full = vec!["serve", "--listen", "127.0.0.1:0", "--cache-dir", &c];
        full.extend_from_slice(args);
        Self::spawn_with(&full, tempfile::tempdir().unwrap(), &[], 1, false)
    }

    /// `outpost serve` of `app` (a path) on a cleartext listener, a TLS one with a self-signed
    /// certificate, and its QUIC endpoint, all on 127.0.0.1 port 0.
    pub fn serve_all_protocols(app: &str) -> Self {
        let cache = tempfile::tempdir().unwrap();
        let c = cache.path().join("compiled");
        Self::spawn_expecting(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--https",
                "127.0.0.1:0",
                "--cache-dir",
                c.to_str().unwrap(),
                app,
            ],
            cache,
            &[],
            Expect {
                http: 1,
                https: 1,
                h3: 1,
                admin: false,
            },
        )
    }

    /// [`Daemon::serve`] of `app` (a path) with `env` set in the daemon's environment.
    pub fn serve_with_env(app: &str, env: &[(&str, &str)]) -> Self {
        let cache = tempfile::tempdir().unwrap();
        let c = cache.path().to_str().unwrap().to_owned();
        Self::spawn_with(
            &["serve", "--listen", "127.0.0.1:0", "--cache-dir", &c, app],
            cache,
            env,
            1,
            false,
        )
    }

    /// `outpost run --config CFG`, waiting for the tenant and admin addresses.
    pub fn run_config(cfg: &Path) -> Self {
        Self::spawn_with(
            &["run", "--config", cfg.to_str().unwrap()],
            tempfile::tempdir().unwrap(),
            &[],
            1,
            true,
        )
    }

    /// Spawns the binary with `args`; waits until `expect_addrs` listener lines were printed.
    pub fn spawn_with(
        args: &[&str],
        cache: tempfile::TempDir,
        env: &[(&str, &str)],
        expect_addrs: usize,
        expect_admin: bool,
    ) -> Self {
        Self::spawn_expecting(
            args,
            cache,
            env,
            Expect {
                http: expect_addrs,
                admin: expect_admin,
                ..Expect::default()
            },
        )
    }

    /// Spawns the binary with `args`; waits until the listener lines in `expect` were printed.
    pub fn spawn_expecting(
        args: &[&str],
        cache: tempfile::TempDir,
        env: &[(&str, &str)],
        expect: Expect,
    ) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("HOME", cache.path())
            .env("XDG_STATE_HOME", cache.path().join("state"))
            .env_remove("OUTPOST_LOG")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let Spawned {
            mut child,
            lines: rx,
            stderr,
        } = spawn_piped(&mut cmd);
        let mut addrs = Vec::new();
        let mut https = Vec::new();
        let mut h3 = Vec::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while addrs.len() < expect.http
            || https.len() < expect.https
            || h3.len() < expect.h3
            || (expect.admin && admin.is_none())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "outpost did not print its addresses; stderr:\n{}",
                        stderr.lock().unwrap()
                    );
                }
            };
            if let Some(a) = line.strip_prefix("admin listening on http://") {
                admin = Some(a.parse().unwrap());
            } else if let Some(a) = line.strip_prefix("listening on http://") {
                addrs.push(a.parse().unwrap());
            } else if let Some(a) = line.strip_prefix("listening on https://") {
                https.push(a.parse().unwrap());
            } else if let Some(a) = line.strip_prefix("listening on h3://") {
                h3.push(a.parse().unwrap());
            }
        }
        Self {
            child,
            addrs,
            https,
            h3,
            admin,
            stderr,
            _home: cache,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until stderr contains every one of `needles`; returns the log.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.stderr();
            if needles.iter().all(|n| log.contains(n)) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 30 s) until stderr contains every one of `needles`; returns the log, and
    /// fails the test with the log when they never all appear (unlike [`Daemon::wait_log`],
    /// which leaves the judging to the caller).
    pub fn expect_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.stderr();
            if needles.iter().all(|n| log.contains(n)) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never contained all of {needles:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (via the `kill` command, to keep tests free of unsafe code).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) via the `kill` command.
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits up to `t` for exit; returns the exit code.
    pub fn wait_exit(&mut self, t: Duration) -> Option<i32> {
        let deadline = Instant::now() + t;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long a test waits for something the daemon is about to do: generous, because the
/// machine may be busy with other builds. A failure deadline, never a measurement.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Calls `probe` every 25 ms until it returns `Ok`, and returns that value; once `deadline`
/// has passed, fails the test naming `what` was awaited and the last `Err` (what the probe saw
/// instead). Between probes it yields to the runtime, so whatever runs on the test's own
/// runtime (a mock control plane, a spawned request) keeps going.
pub async fn wait_until<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < give_up,
            "gave up after {deadline:?} waiting for {what}; last seen:\n{seen}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Which `listening on …` lines [`Daemon::spawn_expecting`] waits for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect {
    pub http: usize,
    pub https: usize,
    pub h3: usize,
    pub admin: bool,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion; returns (exit code, stdout, stderr).
///
/// A command that has not ended after [`RUN_TO_END_LIMIT`] is killed and the test fails, naming
/// it: a refusal that regressed into a running server must not hang the test run.
pub fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .env("HOME", home.path())
        .env("XDG_STATE_HOME", home.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_TO_END_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`outpost {}` did not end within {RUN_TO_END_LIMIT:?}; its stderr:\n{}",
                args.join(" "),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

/// How long [`run_to_end`] waits: far above any command's time here (a debug build compiling a
/// Python component for `bundle install` takes about a minute).
pub const RUN_TO_END_LIMIT: Duration = Duration::from_secs(300);

/// A response with its body read to the end.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Resp {
    request_with(addr, method, path, body, &[]).await
}

/// The sum of the `/metrics` samples on the admin listener `admin` whose line starts with
/// `series` (a name, or a name with some of its labels: `name{app="a"`).
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let body = get(admin, "/metrics").await.body;
    body.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, b"").await
}

pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", format!("{addr}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = send.send_request(req).await.unwrap();
    collect(resp).await
}

/// One HTTP/1.1 GET on a fresh connection; an error instead of a panic when the connection is
/// refused or cut before the response is complete.
pub async fn try_get(addr: SocketAddr, path: &str) -> Result<Resp, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", format!("{addr}"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// One HTTP/2 (prior knowledge, cleartext) request.
pub async fn get_h2(addr: SocketAddr, path: &str) -> Resp {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    collect(resp).await
}

/// A streamed POST to an echo guest at `path`, left open: sends the head and `first`, waits for
/// the response head (200) and for `first` to come back — which cannot happen if either side
/// buffers whole bodies — and returns the sender for the rest of the request body (drop it to
/// end the request) and the rest of the response body.
pub async fn open_echo_stream(
    addr: SocketAddr,
    path: &str,
    first: &'static [u8],
) -> (tokio::sync::mpsc::Sender<Bytes>, hyper::body::Incoming) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let body = http_body_util::StreamBody::new(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|c| c.map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))))
    }));
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "x")
        .body(body)
        .unwrap();
    tx.send(Bytes::from_static(first)).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .expect("the response head arrives while the request body is open")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let echoed = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the first chunk is echoed while the request body is open")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&echoed[..], first);
    (tx, body)
}

/// An HTTP/1.1 server on 127.0.0.1 port 0 (an upstream for outbound tests) that answers every
/// request with `handler`; returns its address. It serves until the test's runtime ends.
pub async fn http1_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

// === TLS clients ===

/// The ring crypto provider the tests' TLS clients use (the daemon's own).
pub fn ring_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that accepts any certificate (signatures still checked), so a test can look
/// at *which* certificate the server chose even when it does not match the name asked for.
pub fn client_tls_any(alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny(ring_provider())))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

#[derive(Debug)]
struct AcceptAny(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
