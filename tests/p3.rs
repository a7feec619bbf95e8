//! WASI 0.3 `wasi:http/handler` components, served beside WASI 0.2 ones through the real binary:
//! every protocol, bodies streamed both ways, two outbound requests awaited at once inside one
//! request, and the same limits and grants as WASI 0.2 (memory, timeout, body size, outbound
//! hosts), with the same error mapping and metrics. The guests are `testbed/apps/*-p3`, built with
//! the `wasip3` crate.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::clients::*;
use common::*;
use http_body_util::BodyExt;

const HELLO_P3: &str = "hello from outpost p3\n";

/// `outpost run` of the app in `app` with an admin listener (for `/metrics`).
fn run_app(dir: &std::path::Path, app: &AppDir) -> Daemon {
    let app = format!(
        "[[app]]\nsource = \"{}\"\nhosts = [\"*\"]",
        app.path().display()
    );
    Daemon::run_config(&write_node_config(dir, "outpost.toml", "", &app))
}

#[tokio::test]
async fn a_wasi_03_handler_answers_on_every_protocol() {
    let hello = wasm("hello_p3");
    let d = Daemon::serve_all_protocols(hello.to_str().unwrap());
    d.expect_log(&["component loaded", "wasi=\"0.3\""]);

    let r = get(d.addr(), "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, HELLO_P3));
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");

    for (what, tls, addr) in [("h2c", false, d.addr()), ("h2", true, d.https[0])] {
        let mut h2 = h2_connect(addr, tls).await;
        let scheme = if tls { "https" } else { "http" };
        let r = h2_request(&mut h2, "GET", &format!("{scheme}://localhost/"), None).await;
        assert_eq!(r.status, 200, "{what}");
        assert_eq!(r.body.unwrap(), HELLO_P3.as_bytes(), "{what}");
    }

    let mut h3 = h3_connect(d.h3[0]).await;
    let r = h3_request(&mut h3, "GET", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.unwrap(), HELLO_P3.as_bytes());
}

/// A WASI 0.2 and a WASI 0.3 component in one app, each on its route.
#[tokio::test]
async fn wasi_02_and_03_components_are_served_side_by_side() {
    let app = AppDir::app(
        "mixed",
        "1.0.0",
        r#"
[component.old]
source = "hello.wasm"
routes = ["/old"]
[component.new]
source = "hello_p3.wasm"
routes = ["/new"]
"#,
        &["hello", "hello_p3"],
    );
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    // Both lines, each awaited: stderr is read by a thread of its own, so a line can trail the
    // `listening on` line (stdout) that `serve` waited for.
    d.expect_log(&["component=new", "wasi=\"0.3\""]);
    d.expect_log(&["component=old", "wasi=\"0.2\""]);
    let old = get(d.addr(), "/old").await;
    assert_eq!(old.status, 200);
    assert!(old.body.starts_with("hello from outpost\n"), "{}", old.body);
    let new = get(d.addr(), "/new").await;
    assert_eq!((new.status, new.body.as_str()), (200, HELLO_P3));
}

/// The echo guest streams: its first chunk comes back while the request body is still open
/// (neither side buffers), and a body many times its memory limit goes through byte for byte.
#[tokio::test]
async fn request_and_response_bodies_stream_both_ways() {
    let app = AppDir::app(
        "echo",
        "1.0.0",
        r#"
[component.echo]
source = "echo_p3.wasm"
routes = ["/"]
memory_limit = "4MiB"
max_request_body = "64MiB"
timeout = "60s"
"#,
        &["echo_p3"],
    );
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);

    let (tx, rest) = open_echo_stream(d.addr(), "/", b"first-chunk;").await;
    for chunk in [&b"second;"[..], b"third"] {
        tx.send(Bytes::from_static(chunk)).await.unwrap();
    }
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(30), rest.collect())
        .await
        .expect("the echoed body ends once the request body does")
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"second;third");

    // 16 MiB through a guest that may hold 4 MiB.
    let big: Vec<u8> = (0..16u32 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let r = request(d.addr(), "POST", "/", &big).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body.as_bytes() == big.as_slice(), "the echo differs");
}

/// Both outbound requests are in flight at once inside one request (the upstream answers only
/// when both have arrived), and the grant applies to WASI 0.3 outbound requests as to WASI 0.2.
#[tokio::test]
async fn two_outbound_requests_are_awaited_concurrently_within_one_request() {
    let up = barrier_upstream(2, Duration::from_secs(10)).await;
    let app = AppDir::app(
        "fetch2",
        "1.0.0",
        &format!(
            r#"
[component.fetch2]
source = "fetch2_p3.wasm"
routes = ["/"]
allowed_outbound_hosts = ["http://127.0.0.1:{}"]
"#,
            up.port()
        ),
        &["fetch2_p3"],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = run_app(dir.path(), &app);
    let enc = |url: String| url.replace(':', "%3A").replace('/', "%2F");
    let path = format!(
        "/?a={}&b={}",
        enc(format!("http://127.0.0.1:{}/a", up.port())),
        enc(format!("http://127.0.0.1:{}/b", up.port()))
    );
    let r = get(d.addr(), &path).await;
    assert_eq!((r.status, r.body.as_str()), (200, "body of /a;body of /b;"));

    // `localhost` names the same upstream but is not granted: refused before any connection.
    let denied = format!(
        "/?a={}&b={}",
        enc(format!("http://localhost:{}/a", up.port())),
        enc(format!("http://127.0.0.1:{}/b", up.port()))
    );
    let r = get(d.addr(), &denied).await;
    assert_eq!(r.status, 500, "{r:?}");
    d.wait_log(&["outbound request denied", "localhost"]);
    let admin = d.admin.unwrap();
    assert_eq!(
        metric(
            admin,
            "outpost_request_errors_total{app=\"fetch2\",kind=\"trap\"}"
        )
        .await,
        1.0
    );
}

/// The WASI 0.2 limits hold for WASI 0.3 guests, with the same statuses and error kinds: memory,
/// wall-clock timeout (before the response and while the body streams), request body size,
/// traps, and a handler that returns an error code. A guest that misbehaved leaves its
/// neighbours served.
#[tokio::test]
async fn limits_apply_to_wasi_03_guests_as_to_wasi_02() {
    let app = AppDir::app(
        "stress",
        "1.0.0",
        r#"
[component.stress]
source = "stress_p3.wasm"
routes = ["/"]
memory_limit = "16MiB"
timeout = "500ms"
[component.echo]
source = "echo_p3.wasm"
routes = ["/echo"]
max_request_body = "1KiB"
[component.one]
source = "echo_p3.wasm"
routes = ["/one"]
max_concurrency = 1
"#,
        &["stress_p3", "echo_p3"],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = run_app(dir.path(), &app);
    let admin = d.admin.unwrap();

    let r = get(d.addr(), "/alloc?mib=4").await;
    assert_eq!((r.status, r.body.as_str()), (200, "allocated 4 MiB\n"));
    let cases = [
        ("/alloc?mib=64", 500, "memory_limit"),
        ("/spin", 504, "timeout"),
        ("/trap", 500, "trap"),
        ("/error", 500, "trap"),
    ];
    for (path, status, kind) in cases {
        let r = get(d.addr(), path).await;
        assert_eq!(r.status, status, "{path}: {r:?}");
        let series = format!("outpost_request_errors_total{{app=\"stress\",kind=\"{kind}\"}}");
        assert!(metric(admin, &series).await >= 1.0, "{path}: {series}");
    }
    // Answered at once, then spinning in the task that wrote the body: the client has its
    // response; the instance is stopped at the timeout.
    let r = get(d.addr(), "/spin-after").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok /spin-after\n"));

    let small = request(d.addr(), "POST", "/echo", b"fits").await;
    assert_eq!((small.status, small.body.as_str()), (200, "fits"));
    let big = request(d.addr(), "POST", "/echo", &[b'x'; 4096]).await;
    assert_eq!(big.status, 413);

    let r = get(d.addr(), "/anything").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok /anything\n"));

    // max_concurrency = 1 (and a queue of one): while one request streams, of two more one
    // waits and the other is refused at once; the waiting one is served when the first ends.
    let (tx, rest) = open_echo_stream(d.addr(), "/one", b"held;").await;
    let addr = d.addr();
    let second = tokio::spawn(async move { request(addr, "POST", "/one", b"waited").await });
    let third = tokio::spawn(async move { request(addr, "POST", "/one", b"waited").await });
    let (refused, waiting) = match futures::future::select(second, third).await {
        futures::future::Either::Left((r, other)) | futures::future::Either::Right((r, other)) => {
            (r.unwrap(), other)
        }
    };
    assert_eq!(refused.status, 503, "{refused:?}");
    drop(tx);
    let _ = rest.collect().await;
    let served = waiting.await.unwrap();
    assert_eq!((served.status, served.body.as_str()), (200, "waited"));
}

/// The grants of WASI 0.2 hold for a WASI 0.3 guest: granted files are readable and nothing
/// else is, variables come from the manifest, and the environment is what the manifest grants —
/// the daemon's own never leaks.
#[tokio::test]
async fn grants_apply_to_wasi_03_guests() {
    let app = AppDir::app(
        "grants",
        "1.0.0",
        r#"
[component.grants]
source = "grants_p3.wasm"
routes = ["/"]
files = [{ source = "static", destination = "/static" }]
[component.grants.variables]
greeting = "hi from the manifest"
[component.grants.environment]
GRANTED_ENV = "from the environment grant"
"#,
        &["grants_p3"],
    )
    .with_granted_files();
    let d = Daemon::serve_with_env(
        app.path().to_str().unwrap(),
        &[("OUTPOST_TEST_SECRET", "must-not-leak")],
    );
    let r = get(d.addr(), "/file?path=/static/a.txt").await;
    assert_eq!((r.status, r.body.as_str()), (200, "file content\n"));
    for path in ["/secret.txt", "/static/../secret.txt", "/etc/passwd"] {
        let r = get(d.addr(), &format!("/file?path={path}")).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(!r.body.contains("outside the grant"), "{path}: {r:?}");
    }
    let r = get(d.addr(), "/var?name=greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hi from the manifest"));
    let r = get(d.addr(), "/var?name=nope").await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = get(d.addr(), "/env?name=OUTPOST_TEST_SECRET").await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = get(d.addr(), "/env?name=GRANTED_ENV").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "from the environment grant")
    );
}
