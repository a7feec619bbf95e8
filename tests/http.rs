//! HTTP correctness at the front door, through the real binary and real clients (hyper for
//! HTTP/1.1 and HTTP/2, rustls for TLS, quinn + h3 for HTTP/3, raw TCP for what no client library
//! will send): `HEAD` on every protocol, missing, duplicate and conflicting hosts, a streamed
//! request body over `max_request_body`, and one request id format in headers and logs.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::clients::*;
use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// hello at `/`, echo at `/echo` (1 MiB request bodies at most), slow at `/sleep` (300 ms).
fn edge_app() -> AppDir {
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
max_request_body = "1MiB"
[component.slow]
source = "slow.wasm"
routes = ["/sleep"]
timeout = "300ms"
"#,
        &["hello", "echo", "slow"],
    )
}

/// `outpost run` with a cleartext listener, an admin listener (for `/metrics`) and [`edge_app`].
fn run_edge(dir: &std::path::Path, app: &AppDir) -> Daemon {
    let app = format!(
        "[[app]]\nsource = \"{}\"\nhosts = [\"*\"]",
        app.path().display()
    );
    Daemon::run_config(&write_node_config(dir, "outpost.toml", "", &app))
}

/// Sends `raw` on a fresh TCP connection and reads until the server closes it (or 30 s pass).
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The headers a `HEAD` must share with the `GET` of the same resource.
fn assert_same_head(get: &Full2, head: &Full2, what: &str) {
    assert_eq!(head.status, get.status, "{what}: status");
    for h in ["content-type", "content-length"] {
        assert_eq!(head.headers.get(h), get.headers.get(h), "{what}: {h}");
    }
    assert_eq!(
        head.body.as_deref().map(<[u8]>::len),
        Ok(0),
        "{what}: a HEAD response has no body"
    );
}

// === tests ===

/// `HEAD` gets the status and headers a `GET` gets, and no body, on HTTP/1.1, HTTP/2 (h2c and
/// TLS) and HTTP/3 — for a guest that writes a body anyway, a streaming guest, and a 404.
/// Before: HTTP/2 sent the guest's body as DATA (the client fails the stream: a HEAD response
/// has no content), and HTTP/3 never completed.
#[tokio::test]
async fn head_answers_like_get_without_a_body_on_every_protocol() {
    let app = edge_app();
    let d = Daemon::serve_all_protocols(app.path().to_str().unwrap());
    for path in ["/", "/echo/x", "/nowhere-else"] {
        // HTTP/1.1
        let g = request(d.addr(), "GET", path, b"").await;
        let h = request(d.addr(), "HEAD", path, b"").await;
        let (g, h) = (
            Full2 {
                status: g.status,
                headers: g.headers,
                body: Ok(Bytes::from(g.body)),
            },
            Full2 {
                status: h.status,
                headers: h.headers,
                body: Ok(Bytes::from(h.body)),
            },
        );
        assert_same_head(&g, &h, &format!("http/1.1 {path}"));

        // HTTP/2, cleartext and TLS.
        for (addr, tls) in [(d.addr(), false), (d.https[0], true)] {
            let mut send = h2_connect(addr, tls).await;
            let scheme = if tls { "https" } else { "http" };
            let uri = format!("{scheme}://localhost{path}");
            let g = h2_request(&mut send, "GET", &uri, None).await;
            assert!(g.body.is_ok(), "{:?}", g.body);
            let h = h2_request(&mut send, "HEAD", &uri, None).await;
            assert_same_head(&g, &h, &format!("h2 tls={tls} {path}"));
            // The connection is still good after the HEAD.
            let again = h2_request(&mut send, "GET", &uri, None).await;
            assert_eq!(again.body, g.body);
        }

        // HTTP/3
        let mut c = h3_connect(d.h3[0]).await;
        let g = h3_request(&mut c, "GET", path, &[]).await;
        assert!(g.body.is_ok(), "{:?}", g.body);
        let h = h3_request(&mut c, "HEAD", path, &[]).await;
        assert_same_head(&g, &h, &format!("h3 {path}"));
    }
}

/// HTTP/1.1 without `Host` and any request with two `Host` headers are the client's fault: 400,
/// counted as a client error, logged at info (never as an internal ERROR). HTTP/1.0 without
/// `Host` is legal and served. Before: 500 logged as an internal ERROR, 200 for two hosts, and
/// 500 for HTTP/1.0.
#[tokio::test]
async fn missing_and_duplicate_hosts_are_400_and_http10_without_host_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = edge_app();
    let d = run_edge(dir.path(), &app);
    let admin = d.admin.unwrap();

    let r = raw_exchange(d.addr(), b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status_of(&r), 400, "{r}");
    let r = raw_exchange(
        d.addr(),
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 400, "{r}");
    let r = raw_exchange(d.addr(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.ends_with("hello from outpost\n"), "{r}");

    assert_eq!(
        metric(
            admin,
            "outpost_client_errors_total{reason=\"missing_host\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            admin,
            "outpost_client_errors_total{reason=\"duplicate_host\"}"
        )
        .await,
        1.0
    );
    let log = d.expect_log(&["missing_host", "duplicate_host"]);
    assert!(!log.contains("ERROR"), "no internal error logged:\n{log}");
    assert!(!log.contains("internal error"), "{log}");
}

/// HTTP/2: a `Host` header that contradicts `:authority` is a malformed request (400); one that
/// agrees is fine. HTTP/3: the h3 library refuses a contradicting `Host` at both ends already
/// (RFC 9114 §4.3.1; the client will not even send it), but only compares the first `Host`
/// field — a second one that names another host is refused here (400). Before: 200 for both.
#[tokio::test]
async fn authority_and_host_conflicts_are_400_on_h2_and_h3() {
    let app = edge_app();
    let d = Daemon::serve_all_protocols(app.path().to_str().unwrap());
    let mut send = h2_connect(d.addr(), false).await;
    let ok = h2_request(&mut send, "GET", "http://localhost/", Some("localhost")).await;
    assert_eq!(ok.status, 200);
    let bad = h2_request(&mut send, "GET", "http://localhost/", Some("other.example")).await;
    assert_eq!(bad.status, 400);

    let mut c = h3_connect(d.h3[0]).await;
    let ok = h3_request(&mut c, "GET", "/", &["localhost"]).await;
    assert_eq!(ok.status, 200);
    let bad = h3_request(&mut c, "GET", "/", &["localhost", "other.example"]).await;
    assert_eq!(bad.status, 400);
}

/// A chunked body over `max_request_body` to a guest that streams its answer: never a complete
/// 200 built from the cut-off body — a 413 when nothing was sent yet, an aborted response
/// otherwise. Before: 200 with the body cut at the limit.
#[tokio::test]
async fn a_streamed_body_over_the_limit_never_yields_a_complete_response() {
    let dir = tempfile::tempdir().unwrap();
    let app = edge_app();
    let d = run_edge(dir.path(), &app);
    // A guest that fails on the read error, and one that takes it for the end of the body.
    for path in ["/echo", "/echo/lenient"] {
        let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        // 2 MiB in 32 KiB chunks, no content-length.
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = (0..64)
            .map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'z'; 32 << 10]))))
            .collect();
        let req = http::Request::builder()
            .method("POST")
            .uri(path)
            .header("host", "x")
            .body(http_body_util::StreamBody::new(futures::stream::iter(
                chunks,
            )))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await;
        match status.as_u16() {
            413 => {}
            200 => assert!(
                body.is_err(),
                "{path}: a 200 must not complete: {} bytes arrived as a whole response",
                body.map(|b| b.to_bytes().len()).unwrap_or(0)
            ),
            s => panic!("{path}: unexpected status {s}"),
        }
    }
    d.expect_log(&["body_too_large"]);
    assert_eq!(
        metric(
            d.admin.unwrap(),
            "outpost_client_errors_total{reason=\"body_too_large\"}"
        )
        .await,
        2.0
    );
}

/// The request id in the response header is the one in the timeout WARN line (before: hex in
/// the header, decimal in the log).
#[tokio::test]
async fn the_timeout_warning_carries_the_request_id_the_client_saw() {
    let app = edge_app();
    let d = Daemon::serve_all_protocols(app.path().to_str().unwrap());
    let r = get(d.addr(), "/sleep/10000").await;
    assert_eq!(r.status, 504);
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(r.body.contains(&rid), "{}", r.body);
    let log = d.expect_log(&["wall-clock timeout"]);
    let line = log
        .lines()
        .find(|l| l.contains("wall-clock timeout"))
        .unwrap();
    assert!(
        line.contains(&format!("request_id={rid}")),
        "{rid} in {line}"
    );
}
