//! `outpost serve` through the real binary and real sockets: routing, protocols, streaming,
//! limits, failures and grants.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

#[tokio::test]
async fn bare_wasm_is_served_at_root_over_http1_and_http2() {
    let d = Daemon::serve(&[wasm("hello").to_str().unwrap()]);
    let r = get(d.addr(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello from outpost\n");
    assert!(r.headers.contains_key("x-request-id"));
    let r2 = get_h2(d.addr(), "/anything").await;
    assert_eq!(r2.status, 200);
    assert!(r2.body.starts_with("hello from outpost"));
}

#[tokio::test]
async fn longest_route_prefix_wins_and_unrouted_paths_get_404() {
    let app = AppDir::app(
        "multi",
        "1.0.0",
        r#"
[component.hello]
source = "hello.wasm"
routes = ["/hello"]
[component.echo]
source = "echo.wasm"
routes = ["/hello/echo/..."]
"#,
        &["hello", "echo"],
    );
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    let r = get(d.addr(), "/hello/x").await;
    assert!(r.body.starts_with("hello from outpost\n"), "{r:?}");
    let r = request(d.addr(), "POST", "/hello/echo/y?q=1", b"ping").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ping");
    assert_eq!(r.headers["x-echo-path"], "/hello/echo/y?q=1");
    // Prefixes match at '/' boundaries only.
    assert_eq!(get(d.addr(), "/hellox").await.status, 404);
    assert_eq!(get(d.addr(), "/").await.status, 404);
}

/// The echo app streams: the first chunk of the response arrives while the request body is
/// still open, which is impossible if either side buffered the whole body.
#[tokio::test]
async fn request_and_response_bodies_stream() {
    let d = Daemon::serve(&[wasm("echo").to_str().unwrap()]);
    let (tx, body) = open_echo_stream(d.addr(), "/", b"first-chunk;").await;
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
}

/// `--log-level` for a daemon whose test must know that a request has reached its guest.
/// wasmtime's WASI bindings trace every call a guest makes into the host; that is the only sign
/// of it `outpost serve` gives (it has no admin listener, and logs nothing when a request
/// starts).
const TRACE_GUEST_CALLS: &str = "info,wasmtime=warn,wasmtime_wasi=trace,wasmtime_wasi_http=trace";

/// `outpost serve ARGS...` with [`TRACE_GUEST_CALLS`].
fn serve_tracing_guest_calls(args: &[&str]) -> Daemon {
    let mut full = vec!["--log-level", TRACE_GUEST_CALLS];
    full.extend_from_slice(args);
    Daemon::serve(&full)
}

/// How many calls guests have made so far to the WASI function `f`, from the trace that
/// [`TRACE_GUEST_CALLS`] turns on: `subscribe-duration` is a `/sleep` guest parking on its
/// timer, `path-with-query` any guest reading its request.
fn guest_calls(d: &Daemon, f: &str) -> usize {
    let function = format!("function=\"{f}\"");
    d.stderr()
        .lines()
        .filter(|l| l.contains(&function) && l.contains(": call"))
        .count()
}

/// Waits (up to [`PATIENCE`]) until guests have made `n` calls to the WASI function `f` (see
/// [`guest_calls`]).
async fn wait_guest_calls(d: &Daemon, f: &str, n: usize) {
    let what = format!("{n} call(s) by guests to {f}");
    wait_until(&what, PATIENCE, async || {
        let seen = guest_calls(d, f);
        if seen >= n {
            Ok(())
        } else {
            Err(format!("{seen} calls; stderr:\n{}", d.stderr()))
        }
    })
    .await;
}

fn limits_app(extra: &str) -> AppDir {
    AppDir::app(
        "limits",
        "1.0.0",
        &format!(
            r#"
[component.slow]
source = "slow.wasm"
routes = ["/sleep", "/spin"]
{extra}
[component.hello]
source = "hello.wasm"
routes = ["/"]
[component.memhog]
source = "memhog.wasm"
routes = ["/grow"]
memory_limit = "32MiB"
[component.echo]
source = "echo.wasm"
routes = ["/echo"]
max_request_body = "1KiB"
"#
        ),
        &["slow", "hello", "memhog", "echo"],
    )
}

#[tokio::test]
async fn timeout_gives_504_for_sleeping_and_spinning_guests_without_hurting_others() {
    let app = limits_app("timeout = \"300ms\"");
    let d = serve_tracing_guest_calls(&[app.path().to_str().unwrap()]);
    let addr = d.addr();
    let r = get(addr, "/sleep/10000").await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        !r.body.contains("slow"),
        "no internals in the body: {}",
        r.body
    );

    // Two spinning guests (one per core) must not stop another component from answering.
    let before = guest_calls(&d, "[method]incoming-request.path-with-query");
    let spin1 = tokio::spawn(async move { get(addr, "/spin").await });
    let spin2 = tokio::spawn(async move { get(addr, "/spin").await });
    // Both have read their path: from here on they spin.
    wait_guest_calls(&d, "[method]incoming-request.path-with-query", before + 2).await;
    let hello = get(addr, "/").await;
    assert_eq!(hello.status, 200);
    assert_eq!(spin1.await.unwrap().status, 504);
    assert_eq!(spin2.await.unwrap().status, 504);
    assert!(
        d.wait_log(&["wall-clock timeout"])
            .contains("wall-clock timeout")
    );
}

#[tokio::test]
async fn memory_bomb_is_contained() {
    let app = limits_app("");
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    let ok = get(d.addr(), "/grow/4").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let r = get(d.addr(), "/grow/256").await;
    assert_eq!(r.status, 500);
    assert!(r.body.starts_with("internal error (request id "));
    let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
    // Details go to the log, tagged with the request id the client saw.
    let log = d.wait_log(&[&rid, "memory_limit"]);
    assert!(log.contains(&rid) && log.contains("memory_limit"), "{log}");
    assert_eq!(get(d.addr(), "/").await.status, 200, "daemon keeps serving");
}

#[tokio::test]
async fn oversized_bodies_get_413_by_length_and_by_stream() {
    let app = limits_app("");
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    let ok = request(d.addr(), "POST", "/echo", &[b'a'; 1000]).await;
    assert_eq!(ok.status, 200);
    let big = request(d.addr(), "POST", "/echo", &[b'a'; 5000]).await;
    assert_eq!(big.status, 413);

    // Chunked: no content-length, the limit trips while streaming.
    let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = (0..10)
        .map(|_| Ok(hyper::body::Frame::data(Bytes::from(vec![b'b'; 600]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
    let req = http::Request::builder()
        .method("POST")
        .uri("/echo")
        .header("host", "x")
        .body(body)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    // Either the guest had not answered yet (413), or it had started echoing and the stream is cut.
    if resp.status() == 200 {
        assert!(resp.into_body().collect().await.is_err());
    } else {
        assert_eq!(resp.status(), 413);
    }
}

#[tokio::test]
async fn concurrency_limit_gives_503_with_retry_after() {
    let app = limits_app("max_concurrency = 1");
    let d = serve_tracing_guest_calls(&[app.path().to_str().unwrap()]);
    let addr = d.addr();
    let first = tokio::spawn(async move { get(addr, "/sleep/1500").await });
    // The first request holds the one slot once its guest sleeps.
    wait_guest_calls(&d, "subscribe-duration", 1).await;
    let queued = tokio::spawn(async move { get(addr, "/sleep/10").await });
    // Time on purpose: nothing marks a request waiting for a slot (no host call, no log line,
    // no admin listener on `serve`), so it is given time to get into the queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = get(addr, "/sleep/10").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        queued.await.unwrap().status,
        200,
        "the bounded queue admits one waiter"
    );
}

#[tokio::test]
async fn traps_and_missing_responses_are_500_without_internals() {
    let d = Daemon::serve(&[wasm("trap").to_str().unwrap()]);
    for path in ["/", "/unreachable"] {
        let r = get(d.addr(), path).await;
        assert_eq!(r.status, 500);
        assert!(!r.body.contains("secret-internal-detail"), "{}", r.body);
        assert!(!r.body.contains("wasm"), "{}", r.body);
        let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(r.body.contains(&rid));
        assert!(d.wait_log(&[&rid]).contains(&rid));
    }
    // What the guest printed is in the log, line by line, attributed to its component.
    let log = d.wait_log(&["guest output"]);
    let line = log
        .lines()
        .find(|l| l.contains("guest output") && l.contains("guest panic: secret-internal-detail"))
        .unwrap_or_else(|| panic!("no guest output line:\n{log}"));
    assert!(
        line.contains("component=trap/trap") && line.contains("stream=\"stderr\""),
        "{line}"
    );
    // A guest printing on every request is held to its budget (100 lines per 10 s): 300 panics
    // print ~900 lines.
    for _ in 0..300 {
        assert_eq!(get(d.addr(), "/").await.status, 500);
    }
    let log = d.stderr();
    let guest = log.lines().filter(|l| l.contains("guest output")).count();
    assert!((100..450).contains(&guest), "{guest} guest lines logged");
    let d2 = Daemon::serve(&[wasm("noresponse").to_str().unwrap()]);
    let r = get(d2.addr(), "/").await;
    assert_eq!(r.status, 500);
    assert!(d2.wait_log(&["no_response"]).contains("no_response"));
}

/// A local upstream for outbound tests: answers `upstream ok` to everything.
async fn upstream() -> std::net::SocketAddr {
    http1_server(|req: http::Request<hyper::body::Incoming>| async {
        // Read the request to its end like a real server before answering.
        let _ = req.into_body().collect().await;
        http::Response::new(http_body_util::Full::new(Bytes::from_static(
            b"upstream ok",
        )))
    })
    .await
}

#[tokio::test]
async fn outbound_http_only_to_granted_hosts() {
    let allowed = upstream().await;
    let other = upstream().await;
    let app = AppDir::app(
        "fetcher",
        "1.0.0",
        &format!(
            r#"
[component.fetch]
source = "fetch.wasm"
routes = ["/"]
allowed_outbound_hosts = ["http://127.0.0.1:{}"]
"#,
            allowed.port()
        ),
        &["fetch"],
    );
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    let enc = |a: std::net::SocketAddr| format!("/?url=http%3A%2F%2F127.0.0.1%3A{}%2Fx", a.port());
    let r = get(d.addr(), &enc(allowed)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains("status=200") && r.body.contains("upstream ok"),
        "{}",
        r.body
    );
    let r = get(d.addr(), &enc(other)).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("HttpRequestDenied"), "{}", r.body);

    // No grants at all: everything denied.
    let d2 = Daemon::serve(&[wasm("fetch").to_str().unwrap()]);
    let r = get(d2.addr(), &enc(allowed)).await;
    assert!(r.body.contains("HttpRequestDenied"), "{}", r.body);
}

/// A granted *name* that resolves to a loopback address (as a DNS-rebound name would) does not
/// reach local services; neither does `*://*:*`. A grant naming the address itself does, and
/// so does the component's `allow_private_outbound` opt-in. Before: `localhost` reached the
/// local upstream.
#[tokio::test]
async fn granted_names_do_not_reach_private_addresses_without_opt_in() {
    let up = upstream().await;
    let port = up.port();
    let app = AppDir::app(
        "fetcher",
        "1.0.0",
        &format!(
            r#"
[component.byname]
source = "fetch.wasm"
routes = ["/byname"]
allowed_outbound_hosts = ["http://localhost:{port}"]
[component.any]
source = "fetch.wasm"
routes = ["/any"]
allowed_outbound_hosts = ["*://*:*"]
[component.literal]
source = "fetch.wasm"
routes = ["/literal"]
allowed_outbound_hosts = ["http://127.0.0.1:{port}"]
[component.optin]
source = "fetch.wasm"
routes = ["/optin"]
allowed_outbound_hosts = ["http://localhost:{port}"]
allow_private_outbound = true
"#
        ),
        &["fetch"],
    );
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    let fetch = |route: &str, host: &str| format!("/{route}?url=http%3A%2F%2F{host}%3A{port}%2Fx");
    for (route, host) in [
        ("byname", "localhost"),
        ("any", "localhost"),
        ("any", "127.0.0.1"),
    ] {
        let r = get(d.addr(), &fetch(route, host)).await;
        assert_eq!(r.status, 502, "{route} {host}: {r:?}");
        assert!(
            r.body.contains("DestinationIpProhibited"),
            "{route} {host}: {}",
            r.body
        );
    }
    d.expect_log(&["outbound request denied: the host resolves only to non-public addresses"]);
    for (route, host) in [("literal", "127.0.0.1"), ("optin", "localhost")] {
        let r = get(d.addr(), &fetch(route, host)).await;
        assert_eq!(r.status, 200, "{route} {host}: {r:?}");
        assert!(r.body.contains("upstream ok"), "{route}: {}", r.body);
    }
}

#[tokio::test]
async fn files_are_read_only_and_environment_does_not_leak() {
    let app = AppDir::app(
        "files",
        "1.0.0",
        r#"
[component.files]
source = "files.wasm"
routes = ["/"]
files = [{ source = "static", destination = "/static" }]
"#,
        &["files"],
    )
    .with_granted_files();
    let d = Daemon::serve_with_env(
        app.path().to_str().unwrap(),
        &[("OUTPOST_TEST_SECRET", "must-not-leak")],
    );
    let r = get(d.addr(), "/static/a.txt").await;
    assert_eq!((r.status, r.body.as_str()), (200, "file content\n"));
    for path in ["/secret.txt", "/static/../secret.txt"] {
        let r = get(d.addr(), path).await;
        assert_ne!(r.status, 200, "{path}: {r:?}");
        assert!(!r.body.contains("outside the grant"), "{path}: {r:?}");
    }
    let w = request(d.addr(), "PUT", "/static/new.txt", b"x").await;
    assert_eq!(w.status, 403, "{w:?}");
    assert!(!app.path().join("static/new.txt").exists());
    let env = get(d.addr(), "/__env").await;
    assert_eq!((env.status, env.body.as_str()), (200, ""));
    // WASI contexts (and their preopens) are reused from request to request: later requests
    // still see the grant, and only the grant.
    for _ in 0..3 {
        let r = get(d.addr(), "/static/a.txt").await;
        assert_eq!((r.status, r.body.as_str()), (200, "file content\n"));
        let r = get(d.addr(), "/static/../secret.txt").await;
        assert_ne!(r.status, 200, "{r:?}");
    }
}

#[tokio::test]
async fn variables_are_exposed_through_wasi_config() {
    let app = AppDir::app(
        "vars",
        "1.0.0",
        r#"
[component.cfg]
source = "config_reader.wasm"
routes = ["/"]
[component.cfg.variables]
greeting = "hi there"
region = "eu-west"
"#,
        &["config_reader"],
    );
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hi there"));
    assert_eq!(get(d.addr(), "/missing").await.status, 404);
    assert_eq!(
        get(d.addr(), "/").await.body,
        "greeting=hi there\nregion=eu-west\n"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let d = serve_tracing_guest_calls(&[wasm("slow").to_str().unwrap()]);
    let addr = d.addr();
    let inflight = tokio::spawn(async move { get(addr, "/sleep/800").await });
    wait_guest_calls(&d, "subscribe-duration", 1).await;
    d.sigterm();
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slept 800ms\n");
    let mut d = d;
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn sigint_drains_like_sigterm() {
    let d = serve_tracing_guest_calls(&[wasm("slow").to_str().unwrap()]);
    let addr = d.addr();
    let inflight = tokio::spawn(async move { get(addr, "/sleep/600").await });
    wait_guest_calls(&d, "subscribe-duration", 1).await;
    d.signal("INT");
    let r = inflight.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slept 600ms\n"));
    let mut d = d;
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn drain_deadline_cuts_requests_that_outlast_it() {
    // The guest would answer after 60 s; the drain gives it 300 ms. The daemon must exit at the
    // deadline (well before the guest would have answered), cutting the connection, and say so.
    let d =
        serve_tracing_guest_calls(&["--drain-timeout", "300ms", wasm("slow").to_str().unwrap()]);
    let addr = d.addr();
    let inflight = tokio::spawn(async move { try_get(addr, "/sleep/60000").await });
    wait_guest_calls(&d, "subscribe-duration", 1).await;
    d.sigterm();
    let mut d = d;
    let code = d.wait_exit(Duration::from_secs(20));
    assert!(
        code.is_some(),
        "still running 20 s after SIGTERM with a 300 ms drain"
    );
    let log = d.stderr();
    assert!(log.contains("drain deadline passed"), "{log}");
    let r = tokio::time::timeout(Duration::from_secs(5), inflight)
        .await
        .expect("the cut request resolves once the daemon is gone")
        .unwrap();
    assert!(
        r.is_err(),
        "the request outlasting the drain was cut: {r:?}"
    );
}

#[tokio::test]
async fn compiled_code_is_cached_across_restarts() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap().to_owned();
    let hello = wasm("hello");
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cache-dir",
        &c,
        hello.to_str().unwrap(),
    ];
    let first = Daemon::spawn_with(&args, tempfile::tempdir().unwrap(), &[], 1, false);
    let log = first.wait_log(&["cached=false"]);
    assert!(log.contains("cached=false"), "{log}");
    drop(first);
    let second = Daemon::spawn_with(&args, tempfile::tempdir().unwrap(), &[], 1, false);
    let log = second.wait_log(&["cached=true"]);
    assert!(log.contains("cached=true"), "{log}");
    assert_eq!(get(second.addr(), "/").await.status, 200);

    // A corrupted artifact is detected, discarded and recompiled — never loaded.
    drop(second);
    for e in std::fs::read_dir(cache.path()).unwrap().flatten() {
        if e.path().extension().is_none_or(|x| x != "cwasm") {
            continue;
        }
        let mut b = std::fs::read(e.path()).unwrap();
        let n = b.len();
        b[n - 100] ^= 0xff;
        std::fs::write(e.path(), b).unwrap();
    }
    let third = Daemon::spawn_with(&args, tempfile::tempdir().unwrap(), &[], 1, false);
    let log = third.wait_log(&["tag mismatch", "cached=false"]);
    assert!(
        log.contains("tag mismatch") && log.contains("cached=false"),
        "{log}"
    );
    assert_eq!(get(third.addr(), "/").await.status, 200);
}

/// Compiled code is mapped only if this node compiled it: an artifact (with its tag file) copied
/// from another cache — another state directory, another node — does not verify under this
/// cache's key, so it is deleted and recompiled, never loaded.
#[tokio::test]
async fn an_artifact_from_another_cache_is_recompiled_not_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let hello = wasm("hello");
    let caches = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let args = |c: &tempfile::TempDir| {
        vec![
            "serve".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--cache-dir".to_owned(),
            c.path().to_str().unwrap().to_owned(),
            hello.to_str().unwrap().to_owned(),
        ]
    };
    let start = |c: &tempfile::TempDir| {
        let a = args(c);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        Daemon::spawn_with(&a, tempfile::tempdir().unwrap(), &[], 1, false)
    };
    for c in &caches {
        let d = start(c);
        let log = d.wait_log(&["cached=false"]);
        assert!(log.contains("cached=false"), "{log}");
    }
    let artifacts = |c: &tempfile::TempDir| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(c.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.ends_with(".cwasm") || n.ends_with(".cwasm.sum")
            })
            .collect()
    };
    // Each cache has its own secret key, private to the daemon's user.
    let key = |c: &tempfile::TempDir| std::fs::read(c.path().join("artifact.key")).unwrap();
    assert_eq!(key(&caches[0]).len(), 32);
    assert_ne!(key(&caches[0]), key(&caches[1]));
    let mode = std::fs::metadata(caches[0].path().join("artifact.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Same engine, same component, same file names: only the key differs.
    let copied = artifacts(&caches[0]);
    assert_eq!(copied.len(), 2, "{copied:?}");
    for p in &copied {
        std::fs::copy(p, caches[1].path().join(p.file_name().unwrap())).unwrap();
    }
    let d = start(&caches[1]);
    let log = d.wait_log(&["tag mismatch", "cached=false"]);
    assert!(
        log.contains("tag mismatch")
            && log.contains("cached=false")
            && !log.contains("cached=true"),
        "{log}"
    );
    assert_eq!(get(d.addr(), "/").await.status, 200);
    drop(d);
    // What replaced it is this cache's own artifact, loaded on the next start.
    let d = start(&caches[1]);
    let log = d.wait_log(&["cached=true"]);
    assert!(
        log.contains("cached=true") && !log.contains("tag mismatch"),
        "{log}"
    );
}

#[tokio::test]
async fn debug_logs_one_line_per_request() {
    let d = Daemon::serve(&["--log-level", "debug", wasm("hello").to_str().unwrap()]);
    let r = get(d.addr(), "/per-request-line").await;
    assert_eq!(r.status, 200);
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    let log = d.wait_log(&[&id, "status=200"]);
    let line = log
        .lines()
        .find(|l| l.contains(&id) && l.contains(" request "))
        .unwrap_or_else(|| panic!("no request line for {id} in\n{log}"));
    for needle in [
        "method=GET",
        "path=\"/per-request-line\"",
        "status=200",
        "protocol=\"http1\"",
        "micros=",
    ] {
        assert!(line.contains(needle), "{needle} missing in {line}");
    }
}
