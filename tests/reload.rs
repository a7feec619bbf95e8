//! SIGHUP on `outpost run`, through the real binary: it re-reads the config and serves the new
//! apps without failing one request of a client loop running meanwhile; a broken config, or an
//! app that does not load, is refused and the old config keeps serving; a change that needs a
//! restart is logged, and the daemon never exits on HUP. No timing asserts: waits are failure
//! guards.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

const GUARD: Duration = Duration::from_secs(60);

fn config(dir: &std::path::Path, http: &str, apps: &str) -> String {
    format!(
        r#"
[node]
state_dir = "{}"
[listen]
http = ["{http}"]
admin = "127.0.0.1:0"
drain_timeout = "2s"
[[app]]
source = "builtin:demo"
hosts = ["old.test"]
{apps}
"#,
        dir.join("state").display()
    )
}

/// GETs with `Host: old.test` from `clients` tasks until `stop`; counts answers and non-2xx
/// answers (a failed connection counts as non-2xx).
fn client_loop(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let tasks = (0..clients)
        .map(|_| {
            let (ok, bad, stop) = (ok.clone(), bad.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = tokio::time::timeout(GUARD, try_request(addr, "old.test")).await;
                    match r {
                        Ok(Ok(200..=299)) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    (ok, bad, tasks)
}

/// One GET `/` with `Host: host` on a fresh connection; the status, or why there was none.
async fn try_request(addr: std::net::SocketAddr, host: &str) -> Result<u16, String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/")
        .header("host", host)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Waits until stderr holds `needle` `n` times (the log is cumulative).
fn wait_count(d: &Daemon, needle: &str, n: usize) -> String {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let log = d.stderr();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {needle:?} {n} times:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_serves_the_new_config_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("echo"), dir.path().join("echo.wasm")).unwrap();
    let path = dir.path().join("outpost.toml");
    std::fs::write(&path, config(dir.path(), "127.0.0.1:0", "")).unwrap();
    let mut d = Daemon::run_config(&path);
    let addr = d.addr();
    assert_eq!(try_request(addr, "new.test").await, Ok(404));

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad, tasks) = client_loop(addr, 4, stop.clone());

    // 1. A new app on a new host.
    std::fs::write(
        &path,
        config(
            dir.path(),
            "127.0.0.1:0",
            "[[app]]\nsource = \"echo.wasm\"\nhosts = [\"new.test\"]\n",
        ),
    )
    .unwrap();
    d.signal("HUP");
    wait_count(&d, "configuration reloaded", 1);
    let r = request_with(addr, "POST", "/", b"reloaded", &[("host", "new.test")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "reloaded"));

    // 2. A config that does not parse: refused, the current one keeps serving.
    std::fs::write(&path, "[listen\nhttp = ").unwrap();
    d.signal("HUP");
    wait_count(&d, "config reload refused", 1);
    // 3. An app that does not load: refused as a whole, nothing of it applied.
    std::fs::write(
        &path,
        config(
            dir.path(),
            "127.0.0.1:0",
            "[[app]]\nsource = \"missing.wasm\"\nhosts = [\"gone.test\"]\n",
        ),
    )
    .unwrap();
    d.signal("HUP");
    wait_count(&d, "config reload refused", 2);
    let r = request_with(addr, "POST", "/", b"still", &[("host", "new.test")]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "still"));

    // 4. A listener change needs a restart: said in the log, the rest applied.
    std::fs::write(&path, config(dir.path(), "127.0.0.1:1", "")).unwrap();
    d.signal("HUP");
    let log = wait_count(&d, "configuration reloaded", 2);
    assert!(log.contains("config change needs a restart"), "{log}");
    assert!(log.contains("listen.http"), "{log}");
    assert_eq!(try_request(addr, "new.test").await, Ok(404));

    // Let the loop run on the final table a little, then stop it.
    let before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before + 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "requests failed across reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert_eq!(
        d.wait_exit(Duration::from_millis(10)),
        None,
        "HUP ended the daemon"
    );
    assert!(!d.stderr().contains("panicked"));
}

/// `[log] level` is applied at start and re-applied by SIGHUP; `--log-level` pins the level,
/// and a reload then says so instead of changing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_log_level_unless_the_command_line_pinned_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outpost.toml");
    let with_level = |level: &str| {
        config(
            dir.path(),
            "127.0.0.1:0",
            &format!("[log]\nlevel = \"{level}\"\n"),
        )
    };
    std::fs::write(&path, with_level("info")).unwrap();
    let d = Daemon::run_config(&path);
    let addr = d.addr();
    // "no route" is a debug event: not shown at info.
    assert_eq!(try_request(addr, "nowhere.test").await, Ok(404));
    std::fs::write(&path, with_level("info,outpost::serve=debug")).unwrap();
    d.signal("HUP");
    let log = wait_count(&d, "configuration reloaded", 1);
    assert!(!log.contains("no route"), "{log}");
    assert!(log.contains("log level changed"), "{log}");
    assert_eq!(try_request(addr, "nowhere.test").await, Ok(404));
    d.wait_log(&["no route"]);
    // Back to warn: the change itself is still shown, the reload's info line no longer.
    std::fs::write(&path, with_level("warn")).unwrap();
    d.signal("HUP");
    wait_count(&d, "log level changed", 2);
    // A level that is not one is refused with the rest of the config.
    std::fs::write(&path, with_level("verbose")).unwrap();
    d.signal("HUP");
    let log = wait_count(&d, "config reload refused", 1);
    assert!(log.contains("unknown log level \"verbose\""), "{log}");

    // Pinned by the command line: the config's level is reported, not applied.
    drop(d);
    std::fs::write(&path, with_level("warn")).unwrap();
    let pinned = Daemon::spawn_with(
        &[
            "--log-level",
            "info",
            "run",
            "--config",
            path.to_str().unwrap(),
        ],
        tempfile::tempdir().unwrap(),
        &[],
        1,
        true,
    );
    std::fs::write(&path, with_level("debug")).unwrap();
    pinned.signal("HUP");
    let log = wait_count(&pinned, "configuration reloaded", 1);
    assert_eq!(
        log.matches("[log] level not applied: the level was set by --log-level")
            .count(),
        2,
        "once at start, once on reload: {log}"
    );
    assert!(!log.contains("log level changed"), "{log}");
}
