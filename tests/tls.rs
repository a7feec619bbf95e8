//! The TLS and HTTP/3 edge through the real binary and real clients on 127.0.0.1: HTTP/3 (h3 +
//! quinn), HTTP/2 and HTTP/1.1 over TLS (rustls + hyper), SNI certificate selection, reload,
//! Alt-Svc, hostile UDP input and QUIC drain.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

// === certificates ===

/// A certificate made by the test: PEM files on disk and the DER the server should present.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    /// `default_cert = { cert = "...", key = "..." }` (a line of `[tls]`).
    fn default_line(&self) -> String {
        format!(
            "default_cert = {{ cert = \"{}\", key = \"{}\" }}\n",
            self.cert.display(),
            self.key.display()
        )
    }

    /// A `[[tls.cert]]` table for `host`.
    fn entry(&self, host: &str) -> String {
        format!(
            "[[tls.cert]]\nhosts = [\"{host}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// Generates a self-signed certificate for `names` and writes it (write-then-rename, so a
/// rewrite is a new inode, as certbot and Kubernetes do) as `<stem>.pem` / `<stem>.key`.
fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> TestCert {
    let made = rcgen::generate_simple_self_signed(
        names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    for (path, text) in [
        (&cert, made.cert.pem()),
        (&key, made.signing_key.serialize_pem()),
    ] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    TestCert {
        cert,
        key,
        der: made.cert.der().clone(),
    }
}

/// A client config trusting exactly `roots`, offering `alpn`.
fn client_tls(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

// === clients ===

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` asking for `name` (a DNS name sends SNI; an IP address does not).
async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    cfg: rustls::ClientConfig,
) -> std::io::Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

fn presented(tls: &TlsStream) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn negotiated_alpn(tls: &TlsStream) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTP/2 connection over `tls`.
async fn h2_over(tls: TlsStream) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
) -> Resp {
    let req = http::Request::builder()
        .uri(format!("https://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    collect(resp).await
}

/// `GET /` over HTTP/2 on a TLS connection to `name` that verifies the chain against `root`.
async fn h2_get_verified(addr: SocketAddr, name: &str, root: &CertificateDer<'static>) -> Resp {
    let tls = tls_connect(addr, name, client_tls(&[root], &[b"h2"]))
        .await
        .unwrap();
    h2_get(&mut h2_over(tls).await, name, "/").await
}

/// An HTTP/1.1 request over `tls`.
async fn h1_get_over(tls: TlsStream, host: &str, path: &str) -> Resp {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_11);
    collect(resp).await
}

/// An HTTP/3 client: a quinn endpoint, the QUIC connection and h3's request sender.
struct H3Client {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

async fn h3_connect(addr: SocketAddr, name: &str, tls: rustls::ClientConfig) -> H3Client {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = tokio::time::timeout(
        Duration::from_secs(20),
        endpoint.connect(addr, name).unwrap(),
    )
    .await
    .expect("QUIC handshake must finish")
    .unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    H3Client {
        _endpoint: endpoint,
        conn,
        send,
    }
}

fn quic_presented(conn: &quinn::Connection) -> CertificateDer<'static> {
    let id = conn.peer_identity().unwrap();
    let chain = id.downcast::<Vec<CertificateDer<'static>>>().unwrap();
    chain[0].clone()
}

type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

async fn h3_read_body(stream: &mut H3Stream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    out
}

async fn h3_request(client: &mut H3Client, method: &str, path: &str, body: &[u8]) -> Resp {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let mut stream = client.send.send_request(req).await.unwrap();
    if !body.is_empty() {
        stream
            .send_data(Bytes::copy_from_slice(body))
            .await
            .unwrap();
    }
    stream.finish().await.unwrap();
    let resp = stream.recv_response().await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_3);
    let body = h3_read_body(&mut stream).await;
    Resp {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

// === daemons ===

/// `outpost run` with `listen` and `tls` sections, the hello app at `/` and echo at `/echo`,
/// an admin listener, and everything it prints parsed.
struct TlsDaemon {
    d: Daemon,
    _app: AppDir,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TlsDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

fn hello_and_echo() -> AppDir {
    AppDir::app(
        "edge",
        "1.0.0",
        r#"
[component.hello]
source = "hello.wasm"
routes = ["/"]
[component.echo]
source = "echo.wasm"
routes = ["/echo"]
[component.slow]
source = "slow.wasm"
routes = ["/sleep"]
"#,
        &["hello", "echo", "slow"],
    )
}

/// Starts `outpost run` with `[listen] http + https (+ h3)`, an admin listener and `tls_toml`.
fn run_tls(dir: tempfile::TempDir, h3: bool, tls_toml: &str) -> TlsDaemon {
    let app = hello_and_echo();
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[node]
state_dir = "{state}"
[listen]
http = ["127.0.0.1:0"]
https = ["127.0.0.1:0"]
h3 = {h3}
admin = "127.0.0.1:0"
drain_timeout = "10s"
{tls_toml}
[[app]]
source = "{app}"
"#,
            state = dir.path().join("state").display(),
            app = app.path().display(),
        ),
    )
    .unwrap();
    let d = Daemon::spawn_expecting(
        &["run", "--config", cfg.to_str().unwrap()],
        tempfile::tempdir().unwrap(),
        &[],
        Expect {
            http: 1,
            https: 1,
            h3: usize::from(h3),
            admin: true,
        },
    );
    TlsDaemon {
        d,
        _app: app,
        _dir: dir,
    }
}

/// `outpost serve --https` with `--cert/--key` for `localhost` (returned) and `extra` args.
fn serve_tls(apps: &[&str], extra: &[&str]) -> (Daemon, TestCert, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "localhost", &["localhost"]);
    let paths: Vec<String> = apps
        .iter()
        .map(|a| wasm(a).to_str().unwrap().to_owned())
        .collect();
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
        "--cert",
        cert.cert.to_str().unwrap(),
        "--key",
        cert.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.extend(paths.iter().map(String::as_str));
    let h3 = !extra.contains(&"--no-h3");
    let d = Daemon::spawn_expecting(
        &args,
        tempfile::tempdir().unwrap(),
        &[],
        Expect {
            http: 1,
            https: 1,
            h3: usize::from(h3),
            admin: false,
        },
    );
    (d, cert, dir)
}

// === tests ===

/// HTTP/3 end to end: a GET, then a POST whose body is sent in chunks with pauses while the
/// echoed chunks come back — both bodies stream through the one request pipeline, which also
/// counts the requests under protocol="http3".
#[tokio::test]
async fn h3_get_and_streamed_post_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "default", &["localhost"]);
    let d = run_tls(dir, true, &format!("[tls]\n{}", cert.default_line()));
    assert_eq!(
        d.h3[0].port(),
        d.https[0].port(),
        "HTTP/3 shares the TLS port"
    );
    let mut client = h3_connect(d.h3[0], "localhost", client_tls(&[&cert.der], &[])).await;

    let r = h3_request(&mut client, "GET", "/", b"").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));
    assert!(r.headers.contains_key("x-request-id"));

    // Streamed POST: the first echoed bytes must arrive while the request body is still open.
    let req = http::Request::builder()
        .method("POST")
        .uri("https://localhost/echo/stream")
        .body(())
        .unwrap();
    let mut stream = client.send.send_request(req).await.unwrap();
    stream
        .send_data(Bytes::from_static(b"chunk-0;"))
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), stream.recv_response())
        .await
        .expect("response head must arrive before the request body ends")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-path"], "/echo/stream");
    let mut echoed = Vec::new();
    while echoed.len() < b"chunk-0;".len() {
        let mut c = tokio::time::timeout(Duration::from_secs(20), stream.recv_data())
            .await
            .expect("the first chunk must be echoed while the request is still open")
            .unwrap()
            .expect("body continues");
        echoed.extend_from_slice(&c.copy_to_bytes(c.remaining()));
    }
    assert_eq!(echoed, b"chunk-0;");
    let mut sent = b"chunk-0;".to_vec();
    for i in 1..6 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let chunk = format!("chunk-{i};{}", "x".repeat(i * 1000));
        sent.extend_from_slice(chunk.as_bytes());
        stream.send_data(Bytes::from(chunk)).await.unwrap();
    }
    stream.finish().await.unwrap();
    echoed.extend(h3_read_body(&mut stream).await);
    assert_eq!(echoed, sent, "the body comes back intact");

    let m = get(d.admin.unwrap(), "/metrics").await.body;
    for component in ["hello", "echo"] {
        let series = format!(
            "outpost_http_requests_total{{app=\"edge\",component=\"{component}\",protocol=\"http3\",status=\"200\",tenant=\"\"}} 1"
        );
        assert!(m.contains(&series), "missing {series} in\n{m}");
    }
}

/// TLS over TCP: ALPN picks HTTP/2 when offered and HTTP/1.1 otherwise; every HTTP/1.1 and
/// HTTP/2 response (TLS or cleartext) advertises HTTP/3 with `Alt-Svc: h3=":PORT"` — and only
/// when HTTP/3 is on.
#[tokio::test]
async fn tls_negotiates_h2_or_http1_by_alpn_and_advertises_alt_svc() {
    let (d, cert, _dir) = serve_tls(&["hello"], &[]);
    let want = format!("h3=\":{}\"", d.h3[0].port());

    let tls = tls_connect(
        d.https[0],
        "localhost",
        client_tls(&[&cert.der], &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(negotiated_alpn(&tls).as_deref(), Some(&b"h2"[..]));
    let mut h2 = h2_over(tls).await;
    let r = h2_get(&mut h2, "localhost", "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));
    assert_eq!(r.headers["alt-svc"], want.as_str());

    let tls = tls_connect(
        d.https[0],
        "localhost",
        client_tls(&[&cert.der], &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(negotiated_alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    let r = h1_get_over(tls, "localhost", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["alt-svc"], want.as_str());

    // Cleartext listeners advertise it too.
    let r = get(d.addr(), "/").await;
    assert_eq!(r.headers["alt-svc"], want.as_str());
    let r = get_h2(d.addr(), "/").await;
    assert_eq!(r.headers["alt-svc"], want.as_str());

    // Without HTTP/3 there is nothing to advertise.
    let (plain, cert, _dir) = serve_tls(&["hello"], &["--no-h3"]);
    assert!(plain.h3.is_empty());
    let r = h2_get_verified(plain.https[0], "localhost", &cert.der).await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("alt-svc"), "{r:?}");
}

/// Per-tenant certificates by SNI, over TCP and QUIC alike: an exact name, a wildcard (any
/// depth below it, never the apex), and the default for everything else and for clients that
/// send no server name.
#[tokio::test]
async fn sni_selects_each_tenants_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["app.tenant-a.example"]);
    let b = make_cert(dir.path(), "b", &["*.tenant-b.example"]);
    let def = make_cert(dir.path(), "default", &["default.example"]);
    let toml = format!(
        "[tls]\n{}{}{}",
        def.default_line(),
        a.entry("app.tenant-a.example"),
        b.entry("*.tenant-b.example")
    );
    let d = run_tls(dir, true, &toml);
    for (name, want) in [
        ("app.tenant-a.example", &a.der),
        ("APP.Tenant-A.example", &a.der),
        ("shop.tenant-b.example", &b.der),
        ("x.shop.tenant-b.example", &b.der),
        ("tenant-b.example", &def.der),
        ("unknown.example", &def.der),
        ("127.0.0.1", &def.der),
    ] {
        let tls = tls_connect(d.https[0], name, client_tls_any(&[b"h2"]))
            .await
            .unwrap();
        assert_eq!(&presented(&tls), want, "TLS, server name {name}");
    }
    // A client that validates the chain accepts the tenant's certificate for its name.
    let r = h2_get_verified(d.https[0], "app.tenant-a.example", &a.der).await;
    assert_eq!(r.status, 200);

    // QUIC resolves through the same table.
    for (name, want) in [
        ("shop.tenant-b.example", &b.der),
        ("other.example", &def.der),
    ] {
        let client = h3_connect(d.h3[0], name, client_tls_any(&[])).await;
        assert_eq!(
            &quic_presented(&client.conn),
            want,
            "QUIC, server name {name}"
        );
    }
    let mut client = h3_connect(d.h3[0], "app.tenant-a.example", client_tls(&[&a.der], &[])).await;
    assert_eq!(h3_request(&mut client, "GET", "/", b"").await.status, 200);
}

/// No default certificate: a server name no certificate covers — or none at all — gets its
/// handshake refused, on TCP and QUIC; the refusal is logged (rate-limited) and counted, and
/// covered names keep working.
#[tokio::test]
async fn unknown_server_name_without_default_is_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_cert(dir.path(), "a", &["app.tenant-a.example"]);
    let toml = a.entry("app.tenant-a.example");
    let d = run_tls(dir, true, &toml);
    for name in ["nope.example", "127.0.0.1"] {
        let err = tls_connect(d.https[0], name, client_tls_any(&[b"h2"]))
            .await
            .expect_err(name);
        assert!(
            err.to_string().to_lowercase().contains("alert"),
            "{name}: {err}"
        );
    }
    let quic = {
        let mut tls = client_tls_any(&[]);
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let r = ep.connect(d.h3[0], "nope.example").unwrap().await;
        r.expect_err("QUIC handshake for an unknown name")
    };
    // Refused by the server (a crypto close), not timed out.
    assert!(
        matches!(quic, quinn::ConnectionError::ConnectionClosed(_)),
        "{quic:?}"
    );
    let log = d.wait_log(&["TLS handshake refused"]);
    assert!(
        log.contains("no certificate covers this server name") && log.contains("nope.example"),
        "{log}"
    );
    let m = get(d.admin.unwrap(), "/metrics").await.body;
    assert!(
        m.contains("outpost_tls_handshake_failures_total{reason=\"unknown_server_name\"} 3"),
        "{m}"
    );
    let r = h2_get_verified(d.https[0], "app.tenant-a.example", &a.der).await;
    assert_eq!(r.status, 200);
}

/// Clients that open a TCP connection to the TLS port and never finish the handshake do not
/// stall the accept loop or other clients, and are dropped at `tls.handshake_timeout`.
#[tokio::test]
async fn stalled_tls_handshakes_time_out_without_blocking_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(dir.path(), "default", &["localhost"]);
    let d = run_tls(
        dir,
        false,
        &format!(
            "[tls]\nhandshake_timeout = \"500ms\"\n{}",
            cert.default_line()
        ),
    );
    // 20 silent clients, and 5 that send half a ClientHello (a record header promising more).
    let mut stalled = Vec::new();
    for i in 0..25 {
        let mut s = tokio::net::TcpStream::connect(d.https[0]).await.unwrap();
        if i % 5 == 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    // A real client is served while they hang.
    let r = h2_get_verified(d.https[0], "localhost", &cert.der).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));
    // Every stalled connection is closed by the server (EOF or reset), not left open.
    for (i, mut s) in stalled.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("stalled connection {i} still open after 30 s"));
        assert!(
            matches!(read, Ok(0) | Err(_)) || matches!(read, Ok(n) if buf[0] == 0x15 && n > 0),
            "connection {i}: expected close or alert, got {read:?}"
        );
    }
    let m = get(d.admin.unwrap(), "/metrics").await.body;
    let timeouts: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("outpost_tls_handshake_failures_total{reason=\"timeout\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timeout series in\n{m}"));
    assert!(timeouts >= 20, "{timeouts} timeouts counted\n{m}");
}

/// SIGHUP reloads certificate files: new connections get the new certificate, a connection
/// opened before keeps working, and a broken file keeps the previous certificate (logged).
#[tokio::test]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let first = make_cert(&certs, "a", &["app.tenant-a.example"]);
    // Polling is slow here, so only the signal can explain a prompt reload.
    let toml = format!(
        "[tls]\nreload_interval = \"1h\"\n{}",
        first.entry("app.tenant-a.example")
    );
    let d = run_tls(dir, false, &toml);
    let name = "app.tenant-a.example";

    let old = tls_connect(d.https[0], name, client_tls(&[&first.der], &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(presented(&old), first.der);
    let mut old = h2_over(old).await;
    assert_eq!(h2_get(&mut old, name, "/").await.status, 200);

    let second = make_cert(&certs, "a", &["app.tenant-a.example"]);
    assert_ne!(second.der, first.der);
    d.signal("HUP");
    let log = d.wait_log(&["certificate reloaded"]);
    assert!(log.contains("certificate reloaded"), "{log}");
    let new = tls_connect(d.https[0], name, client_tls(&[&second.der], &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(presented(&new), second.der);
    assert_eq!(
        h2_get(&mut old, name, "/").await.status,
        200,
        "the connection opened before the reload keeps working"
    );

    // A broken file is refused; the second certificate stays.
    std::fs::write(&second.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    d.signal("HUP");
    let log = d.wait_log(&["certificate not reloaded"]);
    assert!(log.contains("still serving the previous one"), "{log}");
    let again = tls_connect(d.https[0], name, client_tls_any(&[b"h2"]))
        .await
        .unwrap();
    assert_eq!(presented(&again), second.der);
}

/// Without any signal, a changed certificate file is noticed by polling.
#[tokio::test]
async fn changed_certificate_files_are_picked_up_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let first = make_cert(dir.path(), "default", &["localhost"]);
    let toml = format!(
        "[tls]\nreload_interval = \"200ms\"\n{}",
        first.default_line()
    );
    let d = run_tls(dir, true, &toml);
    let tls = tls_connect(d.https[0], "localhost", client_tls_any(&[]))
        .await
        .unwrap();
    assert_eq!(presented(&tls), first.der);
    let second = make_cert(first.cert.parent().unwrap(), "default", &["localhost"]);
    let log = d.wait_log(&["certificate reloaded"]);
    assert!(log.contains("certificate reloaded"), "{log}");
    let tls = tls_connect(d.https[0], "localhost", client_tls_any(&[]))
        .await
        .unwrap();
    assert_eq!(presented(&tls), second.der);
    // HTTP/3 picks up the same certificate.
    let client = h3_connect(d.h3[0], "localhost", client_tls(&[&second.der], &[])).await;
    assert_eq!(quic_presented(&client.conn), second.der);
}

/// Hostile UDP: random datagrams, Initial-looking garbage, and hundreds of real QUIC
/// ClientHellos whose senders never answer (half-open handshakes) leave the server serving a
/// normal HTTP/3 client — and TLS over TCP.
#[tokio::test]
async fn garbage_datagrams_and_half_open_handshakes_leave_h3_serving() {
    let (d, cert, _dir) = serve_tls(&["hello"], &[]);
    let target = d.h3[0];
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut random = move || {
        // xorshift: reproducible junk without a rand dependency.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut junk = |len: usize| -> Vec<u8> { (0..len).map(|_| random() as u8).collect() };
    // Plain garbage of every size.
    for len in [0, 1, 2, 5, 20, 100, 600, 1199, 1200, 1350, 1500, 9000] {
        for _ in 0..5 {
            let _ = sock.send_to(&junk(len), target);
        }
    }
    // Long-header "Initial" packets (QUIC v1, random connection ids) with garbage payloads,
    // padded to 1200 bytes like real ones: they get as far as decryption.
    for _ in 0..200 {
        let mut p = vec![0xc3, 0, 0, 0, 1, 8];
        p.extend(junk(8));
        p.push(8);
        p.extend(junk(8));
        p.push(0); // token length
        p.extend([0x44, 0x9a]); // payload length 1178 (varint)
        p.extend(junk(1200 - p.len()));
        let _ = sock.send_to(&p, target);
    }
    // Real ClientHellos from a QUIC client that never reads the answers.
    let mut proto = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        true,
        None,
    );
    let client_cfg = {
        let mut tls = client_tls_any(&[]);
        tls.alpn_protocols = vec![b"h3".to_vec()];
        quinn_proto::ClientConfig::new(Arc::new(
            quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ))
    };
    let mut half_open = 0;
    for _ in 0..300 {
        let (_, mut conn) = proto
            .connect(
                std::time::Instant::now(),
                client_cfg.clone(),
                target,
                "localhost",
            )
            .unwrap();
        let mut buf = Vec::new();
        if let Some(t) = conn.poll_transmit(std::time::Instant::now(), 1, &mut buf) {
            let _ = sock.send_to(&buf[..t.size], target);
            half_open += 1;
        }
    }
    assert_eq!(half_open, 300);

    let mut client = h3_connect(target, "localhost", client_tls(&[&cert.der], &[])).await;
    let r = h3_request(&mut client, "GET", "/", b"").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));
    let tls = tls_connect(d.https[0], "localhost", client_tls(&[&cert.der], &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(
        h2_get(&mut h2_over(tls).await, "localhost", "/")
            .await
            .status,
        200
    );
    assert!(
        !d.stderr().contains("panicked"),
        "no panic on hostile input:\n{}",
        d.stderr()
    );
}

/// The README's first command: `outpost run` with no config serves the built-in demo over
/// HTTP/1.1 on 127.0.0.1:8080, HTTPS and HTTP/3 on 127.0.0.1:8443 with a self-signed localhost
/// certificate it generates and saves under the state directory, and the admin endpoints on
/// 127.0.0.1:9090. Fixed ports, as documented: no other test binds them (all use port 0).
#[tokio::test]
async fn embedded_demo_config_serves_every_protocol_on_the_documented_ports() {
    let home = tempfile::tempdir().unwrap();
    let pem = home
        .path()
        .join("state/outpost/tls/self-signed-localhost.pem");
    let d = Daemon::spawn_expecting(
        &["run"],
        home,
        &[],
        Expect {
            http: 1,
            https: 1,
            h3: 1,
            admin: true,
        },
    );
    assert_eq!(d.addr(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(d.https[0], "127.0.0.1:8443".parse().unwrap());
    assert_eq!(d.h3[0], "127.0.0.1:8443".parse().unwrap());
    assert_eq!(d.admin, Some("127.0.0.1:9090".parse().unwrap()));
    let log = d.wait_log(&["generated a self-signed TLS certificate"]);
    assert!(log.contains(&pem.display().to_string()), "{log}");

    let demo = "hello from outpost\n";
    let r = get(d.addr(), "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, demo));
    assert_eq!(r.headers["alt-svc"], "h3=\":8443\"");
    let cert = CertificateDer::from_pem_file(&pem).unwrap();
    let r = h2_get_verified(d.https[0], "localhost", &cert).await;
    assert_eq!((r.status, r.body.as_str()), (200, demo));
    let mut client = h3_connect(d.h3[0], "localhost", client_tls(&[&cert], &[])).await;
    let r = h3_request(&mut client, "GET", "/", b"").await;
    assert_eq!((r.status, r.body.as_str()), (200, demo));

    let admin = d.admin.unwrap();
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let m = get(admin, "/metrics").await;
    assert_eq!(m.status, 200);
    for protocol in ["http1", "http2", "http3"] {
        assert!(
            m.body
                .lines()
                .any(|l| l.starts_with("outpost_http_requests_total{")
                    && l.contains(&format!("protocol=\"{protocol}\""))),
            "no {protocol} request counted:\n{}",
            m.body
        );
    }
}

/// SIGTERM with an HTTP/3 request in flight: the request finishes, then the connection is
/// closed with H3_NO_ERROR (0x100) and the daemon exits 0.
#[tokio::test]
async fn quic_drain_finishes_in_flight_streams_then_closes_with_h3_no_error() {
    let (d, cert, _dir) = serve_tls(&["slow"], &[]);
    let mut client = h3_connect(d.h3[0], "localhost", client_tls(&[&cert.der], &[])).await;
    let conn = client.conn.clone();
    // The client is handed back so it stays open: dropping it would close the connection from
    // this side.
    let inflight = tokio::spawn(async move {
        let r = h3_request(&mut client, "GET", "/sleep/800", b"").await;
        (r, client)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.sigterm();
    d.wait_log(&["draining"]);
    // While draining, new QUIC connections are refused; the one in flight carries on.
    let refused = {
        let mut tls = client_tls(&[&cert.der], &[]);
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        tokio::time::timeout(
            Duration::from_secs(15),
            ep.connect(d.h3[0], "localhost").unwrap(),
        )
        .await
        .expect("a refused or closed connection attempt, not a hang")
    };
    match refused {
        Err(quinn::ConnectionError::ConnectionClosed(c)) => assert_eq!(
            c.error_code,
            quinn::TransportErrorCode::CONNECTION_REFUSED,
            "{c:?}"
        ),
        other => panic!("expected CONNECTION_REFUSED while draining, got {other:?}"),
    }
    let (r, _client) = inflight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slept 800ms\n"));
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("the server closes the connection after draining");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x100), "{c:?}")
        }
        other => panic!("expected an application close with H3_NO_ERROR, got {other:?}"),
    }
    let mut d = d;
    assert_eq!(d.wait_exit(Duration::from_secs(15)), Some(0));
}

/// `self_signed = true` (what the embedded demo config uses): a certificate for localhost and
/// 127.0.0.1 is generated at start, said so in the log, and saved for clients to trust.
#[tokio::test]
async fn self_signed_development_certificate_serves_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = run_tls(dir, true, "[tls]\nself_signed = true\n");
    let log = d.wait_log(&["generated a self-signed TLS certificate"]);
    assert!(log.contains("development only"), "{log}");
    let pem = state.join("tls/self-signed-localhost.pem");
    let der = CertificateDer::pem_file_iter(&pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut client = h3_connect(d.h3[0], "localhost", client_tls(&[&der], &[])).await;
    assert_eq!(h3_request(&mut client, "GET", "/", b"").await.status, 200);
    // Valid for the IP address too (no SNI is sent for it).
    let r = h2_get_verified(d.https[0], "127.0.0.1", &der).await;
    assert_eq!(r.status, 200);
}

/// A certificate that cannot be loaded is a config error: exit 64 before any port is bound,
/// naming the config file, the table and the certificate file.
#[test]
fn broken_certificate_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\nhttps = [\"127.0.0.1:0\"]\n[tls]\ndefault_cert = {{ cert = \"{}\", key = \"{}\" }}\n",
            missing.display(),
            missing.display()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_to_end(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64, "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{}: tls: {}: cannot read",
            cfg.display(),
            missing.display()
        )),
        "{stderr}"
    );
}
