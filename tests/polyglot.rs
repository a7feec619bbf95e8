//! Python (componentize-py) and JavaScript (componentize-js) guests served by the real binary:
//! each language's hello answers, its var guest reads the variables the manifest grants and no
//! others, and its fetch guest reaches a granted upstream while a host the manifest does not grant
//! is refused — the guest sees the error, Outpost logs the denial and the upstream never sees a
//! connection. The guests are `testbed/polyglot`, built by `common::polyglot` (a cold build installs
//! both toolchains and takes a minute or more).
//!
//! Every test loads a different component and the daemons share the tests' compile cache, so each
//! of these ~15-20 MB components is compiled by Cranelift once per test run (and not at all while
//! its build is unchanged).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;

const DENIED_LOG: &str = "outbound request denied: not in allowed_outbound_hosts";

/// `outpost serve` of app `name`: one component `guest` on `/` with the `extra` manifest lines.
fn serve(name: &str, guest: &str, extra: &str) -> (AppDir, Daemon) {
    let app = AppDir::app(
        name,
        "1.0.0",
        &format!("[component.main]\nsource = \"{guest}.wasm\"\nroutes = [\"/\"]\n{extra}"),
        &[],
    )
    .with_polyglot(&[guest]);
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    d.expect_log(&["component loaded", &format!("app={name}"), "wasi=\"0.2\""]);
    (app, d)
}

async fn hello_answers(guest: &str, greeting: &str) {
    let (_app, d) = serve(guest, guest, "");
    for path in ["/", "/some/path?q=1"] {
        let r = get(d.addr(), path).await;
        assert_eq!((r.status, r.body.as_str()), (200, greeting), "{path}");
        assert_eq!(r.headers["content-type"], "text/plain", "{path}");
    }
}

#[tokio::test]
async fn python_hello_answers() {
    hello_answers("py-hello", "hello from outpost python\n").await;
}

#[tokio::test]
async fn javascript_hello_answers() {
    hello_answers("js-hello", "hello from outpost javascript\n").await;
}

/// Granted variables are read through `wasi:config/store`; a name the manifest does not grant is
/// absent, whatever the daemon's own environment holds.
async fn var_reads_granted_variables_only(guest: &str) {
    let (_app, d) = serve(
        guest,
        guest,
        "[component.main.variables]\ngreeting = \"hi from the manifest\"\nregion = \"eu-west\"\n",
    );
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hi from the manifest"));
    let r = get(d.addr(), "/region").await;
    assert_eq!((r.status, r.body.as_str()), (200, "eu-west"));
    for name in ["nope", "HOME", "PATH"] {
        let r = get(d.addr(), &format!("/{name}")).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, format!("no such variable: {name}\n").as_str()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn python_var_reads_granted_variables_only() {
    var_reads_granted_variables_only("py-var").await;
}

#[tokio::test]
async fn javascript_var_reads_granted_variables_only() {
    var_reads_granted_variables_only("js-var").await;
}

/// An upstream on 127.0.0.1 that counts its requests and answers `upstream says hi to <path>`
/// (404 for `/missing`).
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let addr = http1_server(move |req: http::Request<hyper::body::Incoming>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async move {
            let path = req.uri().path().to_owned();
            let status = if path == "/missing" { 404 } else { 200 };
            http::Response::builder()
                .status(status)
                .body(http_body_util::Full::new(Bytes::from(format!(
                    "upstream says hi to {path}"
                ))))
                .unwrap()
        }
    })
    .await;
    (addr, hits)
}

/// `route?url=http://127.0.0.1:<port><path>`, percent-encoded.
fn fetch_path(route: &str, up: SocketAddr, path: &str) -> String {
    format!(
        "{route}?url=http%3A%2F%2F127.0.0.1%3A{}{}",
        up.port(),
        path.replace('/', "%2F")
    )
}

/// The fetch guest `guest` behind a grant of one upstream: through each of `routes` it gets that
/// upstream's status and body; a second upstream, not granted, is refused — the guest answers 502
/// with its `refusals` text for that route, Outpost logs the denial, and the upstream is never
/// reached.
async fn fetch_reaches_granted_hosts_only(guest: &str, routes: &[(&str, &str)]) {
    let (granted, granted_hits) = counting_upstream().await;
    let (other, other_hits) = counting_upstream().await;
    let (_app, d) = serve(
        guest,
        guest,
        &format!(
            "allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n",
            granted.port()
        ),
    );
    for &(route, refusal) in routes {
        let r = get(d.addr(), &fetch_path(route, granted, "/x")).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "status=200\nupstream says hi to /x"),
            "{route}"
        );
        let r = get(d.addr(), &fetch_path(route, granted, "/missing")).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "status=404\nupstream says hi to /missing"),
            "{route}"
        );

        let r = get(d.addr(), &fetch_path(route, other, "/x")).await;
        assert_eq!(r.status, 502, "{route}: {r:?}");
        assert!(
            r.body.starts_with("outbound error: ") && r.body.contains(refusal),
            "{route}: {}",
            r.body
        );
    }
    d.expect_log(&[
        DENIED_LOG,
        &format!("component={guest}/main"),
        &format!("uri=http://127.0.0.1:{}/x", other.port()),
    ]);
    // The log arrives through a pipe, maybe after the response: wait for one line per refusal.
    wait_until(
        "one denial logged per refused request",
        PATIENCE,
        async || {
            let log = d.stderr();
            match log.matches(DENIED_LOG).count() {
                n if n == routes.len() => Ok(()),
                n => Err(format!("{n} denials logged:\n{log}")),
            }
        },
    )
    .await;
    assert_eq!(granted_hits.load(Ordering::SeqCst), 2 * routes.len());
    assert_eq!(
        other_hits.load(Ordering::SeqCst),
        0,
        "the refused upstream was reached"
    );

    let r = get(d.addr(), "/?url=relative").await;
    assert_eq!(r.status, 400, "{r:?}");
}

#[tokio::test]
async fn python_fetch_reaches_granted_hosts_only() {
    fetch_reaches_granted_hosts_only("py-fetch", &[("/", "ErrorCode_HttpRequestDenied")]).await;
}

/// `fetch()` reports every outbound failure as the same opaque `NetworkError`; the guest's `/raw`
/// route calls `wasi:http/outgoing-handler` itself and names the WASI error code.
#[tokio::test]
async fn javascript_fetch_reaches_granted_hosts_only() {
    fetch_reaches_granted_hosts_only(
        "js-fetch",
        &[
            ("/", "TypeError: NetworkError"),
            ("/raw", "{\"tag\":\"HTTP-request-denied\"}"),
        ],
    )
    .await;
}

/// `reuse` on the language runtimes: a componentize-py instance serves request after request; a
/// ComponentizeJS (StarlingMonkey) instance cannot serve a second request
/// (bytecodealliance/StarlingMonkey#247: it returns without answering), so the first reuse fails
/// that one request, Outpost says why, and the component goes back to a fresh instance per
/// request.
#[tokio::test]
async fn reuse_keeps_python_instances_and_turns_itself_off_for_javascript() {
    let (_py, d) = serve("py-hello", "py-hello", "reuse = 100");
    for i in 0..6 {
        let r = get(d.addr(), "/").await;
        assert_eq!(r.status, 200, "python request {i}: {}", r.body);
    }
    assert!(!d.stderr().contains("reuse turned off"), "{}", d.stderr());

    let (_js, d) = serve("js-hello", "js-hello", "reuse = 100");
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(d.addr(), "/").await.status);
    }
    assert_eq!(statuses, [200, 500, 200, 200, 200, 200]);
    d.expect_log(&[
        "cannot serve more than one request per instance",
        "reuse turned off",
    ]);
}
