#![allow(clippy::unwrap_used)]
//! `/metrics` through the real daemon: every family the docs and the Grafana dashboard promise
//! exists with its Prometheus type, follows the naming conventions, and moves when traffic,
//! guest failures and timeouts happen.

mod common;

use std::collections::BTreeMap;

use common::*;

/// One scrape: `family -> type`, and `series (name{labels}) -> value`.
struct Scrape {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, f64>,
}

fn parse(text: &str) -> Scrape {
    let mut types = BTreeMap::new();
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), ty.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (key, value) = line.rsplit_once(' ').unwrap();
            series.insert(key.to_owned(), value.parse().unwrap());
        }
    }
    Scrape { types, series }
}

impl Scrape {
    /// Sum of every series of `name` whose labels contain all `labels` (`k="v"` strings).
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.series
            .iter()
            .filter(|(k, _)| {
                let (n, l) = k.split_once('{').unwrap_or((k.as_str(), ""));
                n == name && labels.iter().all(|want| l.contains(want))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

async fn scrape(admin: std::net::SocketAddr) -> Scrape {
    let r = get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    parse(&r.body)
}

#[tokio::test]
async fn metrics_have_conventional_names_and_types_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let app = AppDir::app(
        "shop",
        "1.0.0",
        r#"
[component.hello]
source = "hello.wasm"
routes = ["/"]
[component.trap]
source = "trap.wasm"
routes = ["/trap"]
[component.slow]
source = "slow.wasm"
routes = ["/sleep", "/spin"]
timeout = "200ms"
"#,
        &["hello", "trap", "slow"],
    );
    let d = run_app(dir.path(), app.path(), "");
    let admin = d.admin.unwrap();
    let before = scrape(admin).await;

    let expected = [
        ("outpost_http_requests_total", "counter"),
        ("outpost_http_request_duration_seconds", "histogram"),
        ("outpost_instantiate_duration_seconds", "histogram"),
        ("outpost_request_errors_total", "counter"),
        ("outpost_requests_inflight", "gauge"),
        ("outpost_pool_slots_used", "gauge"),
        ("outpost_pool_slots", "gauge"),
        ("outpost_components_loaded", "gauge"),
        ("outpost_connections_open", "gauge"),
        ("outpost_instance_memory_peak_bytes", "histogram"),
        ("outpost_build_info", "gauge"),
        ("outpost_sync_up", "gauge"),
        ("outpost_sync_last_success_timestamp_seconds", "gauge"),
        ("outpost_desired_state_sequence", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
    ];
    // Families whose vectors have no series until first use are checked after the traffic.
    for (name, ty) in expected {
        if let Some(t) = before.types.get(name) {
            assert_eq!(t, ty, "{name} has type {t}, expected {ty}");
        }
    }
    // Conventions: counters end in _total; no family mixes units into other suffixes.
    for (name, ty) in &before.types {
        if ty == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        assert!(
            name.starts_with("outpost_") || name.starts_with("process_"),
            "{name}: unexpected namespace"
        );
    }
    assert!(before.sum("outpost_pool_slots", &[]) > 0.0);
    assert_eq!(before.sum("outpost_components_loaded", &[]), 3.0);

    for _ in 0..5 {
        assert_eq!(get(d.addr(), "/").await.status, 200);
    }
    assert_eq!(get(d.addr(), "/trap").await.status, 500);
    assert_eq!(get(d.addr(), "/sleep/5000").await.status, 504);
    // A CPU-bound guest that never calls the host: epoch interruption preempts it so its
    // wall-clock deadline can fire, and that timeout is counted like any other.
    assert_eq!(get(d.addr(), "/spin").await.status, 504);

    let after = scrape(admin).await;
    for (name, ty) in expected {
        assert_eq!(
            after.types.get(name).map(String::as_str),
            Some(ty),
            "{name} missing or mistyped after traffic"
        );
    }
    let moved = |name: &str, labels: &[&str]| after.sum(name, labels) - before.sum(name, labels);
    assert_eq!(
        moved(
            "outpost_http_requests_total",
            &[r#"app="shop""#, r#"component="hello""#, r#"status="200""#]
        ),
        5.0
    );
    assert_eq!(
        moved(
            "outpost_http_requests_total",
            &[r#"component="trap""#, r#"status="500""#]
        ),
        1.0
    );
    assert_eq!(
        moved("outpost_request_errors_total", &[r#"kind="trap""#]),
        1.0
    );
    assert_eq!(
        moved(
            "outpost_request_errors_total",
            &[r#"app="shop""#, r#"kind="timeout""#]
        ),
        2.0
    );
    assert_eq!(
        moved(
            "outpost_http_requests_total",
            &[r#"component="slow""#, r#"status="504""#]
        ),
        2.0
    );
    assert_eq!(
        moved(
            "outpost_http_request_duration_seconds_count",
            &[r#"app="shop""#]
        ),
        8.0
    );
    assert!(moved("outpost_instantiate_duration_seconds_count", &[]) >= 8.0);
    // Each request's peak linear memory, by app: the guests' memories are at least one page.
    assert!(
        moved(
            "outpost_instance_memory_peak_bytes_count",
            &[r#"app="shop""#]
        ) >= 8.0
    );
    assert!(moved("outpost_instance_memory_peak_bytes_sum", &[r#"app="shop""#]) >= 8.0 * 65536.0);
    assert!(after.sum("process_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(after.sum("outpost_pool_slots_used", &[]), 0.0);
}

/// `outpost run` with `app` (an app directory or a bundle) on every host, plus `trust`
/// (a `[trust]` table, or nothing).
fn run_app(dir: &std::path::Path, app: &std::path::Path, trust: &str) -> Daemon {
    let rest = format!(
        "{trust}\n[[app]]\nsource = \"{}\"\nhosts = [\"*\"]",
        app.display()
    );
    Daemon::run_config(&write_node_config(dir, "outpost.toml", "", &rest))
}

/// The `suppressed=N` value of a log line, if it has one.
fn suppressed(line: &str) -> Option<u64> {
    let rest = &line[line.find("suppressed=")? + "suppressed=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A guest trapping at request rate costs the journal the limiter's burst (20 lines per 10 s,
/// `serve::log_failure`), not a line per request; the first line of the next window says how
/// many were left out. The counters still count every failure.
#[tokio::test]
async fn trap_warnings_are_rate_limited_and_report_what_they_dropped() {
    const BURST: usize = 20;
    const TRAPS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let app = AppDir::new(
        "manifest_version = 1\n[application]\nname = \"trappy\"\nversion = \"1.0.0\"\n\
         [component.trap]\nsource = \"trap.wasm\"\nroutes = [\"/\"]\n",
        &["trap"],
    );
    let d = run_app(dir.path(), app.path(), "");
    let addr = d.addr();
    // In parallel batches, so the burst lands well inside one 10 s window.
    for _ in 0..TRAPS / 10 {
        let batch: Vec<_> = (0..10)
            .map(|_| tokio::spawn(async move { get(addr, "/").await.status }))
            .collect();
        for t in batch {
            assert_eq!(t.await.unwrap(), 500);
        }
    }
    let m = scrape(d.admin.unwrap()).await;
    assert_eq!(
        m.sum("outpost_request_errors_total", &[r#"kind="trap""#]),
        TRAPS as f64,
        "every trap is counted"
    );

    // One trap at a time until the window rolls over and a line reports the dropped ones.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let lines = loop {
        let log = d.stderr();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("guest failed"))
            .map(str::to_owned)
            .collect();
        if lines.iter().any(|l| suppressed(l).is_some_and(|n| n > 0)) {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line reported suppressed warnings:\n{log}"
        );
        assert_eq!(get(addr, "/").await.status, 500);
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let first_report = lines
        .iter()
        .position(|l| suppressed(l).is_some_and(|n| n > 0))
        .unwrap();
    // Every line of the first window says suppressed=0; it logged exactly the burst (it did
    // drop some, or no later line would report them).
    assert_eq!(first_report, BURST, "{lines:#?}");
    for l in &lines[..first_report] {
        assert_eq!(suppressed(l), Some(0), "{l}");
        assert!(l.contains(r#"kind="trap""#), "{l}");
    }
    // It dropped at least what the burst had beyond the limit.
    let n = suppressed(&lines[first_report]).unwrap();
    assert!(n as usize >= TRAPS - BURST, "suppressed={n}");
}

/// Request metrics carry the tenant of the release serving them: the tenant in its signed
/// document, or "" for an app without one (a plain app directory).
#[tokio::test]
async fn request_metrics_carry_the_tenant_of_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let p = |r: &str| dir.path().join(r).to_str().unwrap().to_owned();
    let (code, _, err) = run_to_end(&["bundle", "keygen", "--out", &p("ops")]);
    assert_eq!(code, 0, "{err}");
    let app = AppDir::new(
        "manifest_version = 1\n[application]\nname = \"shop\"\nversion = \"1.0.0\"\n\
         [component.hello]\nsource = \"hello.wasm\"\nroutes = [\"/\"]\n",
        &["hello"],
    );
    let bundle = p("shop.bundle");
    let (code, _, err) = run_to_end(&[
        "bundle",
        "pack",
        app.path().to_str().unwrap(),
        "-o",
        &bundle,
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_to_end(&[
        "bundle",
        "sign",
        &bundle,
        "--key",
        &p("ops.key"),
        "--tenant",
        "acme",
    ]);
    assert_eq!(code, 0, "{err}");
    let d = run_app(
        dir.path(),
        std::path::Path::new(&bundle),
        &format!("[trust]\nkeys = [\"{}\"]\n", p("ops.pub")),
    );
    for _ in 0..3 {
        assert_eq!(get(d.addr(), "/").await.status, 200);
    }
    let m = scrape(d.admin.unwrap()).await;
    let labels = [r#"app="shop""#, r#"tenant="acme""#];
    assert_eq!(m.sum("outpost_http_requests_total", &labels), 3.0);
    assert_eq!(
        m.sum("outpost_http_request_duration_seconds_count", &labels),
        3.0
    );
    drop(d);

    // The same app from a directory has no tenant.
    let dir2 = tempfile::tempdir().unwrap();
    let d = run_app(dir2.path(), app.path(), "");
    assert_eq!(get(d.addr(), "/").await.status, 200);
    let m = scrape(d.admin.unwrap()).await;
    let labels = [r#"app="shop""#, r#"tenant="""#];
    assert_eq!(m.sum("outpost_http_requests_total", &labels), 1.0);
    assert_eq!(
        m.sum("outpost_http_request_duration_seconds_count", &labels),
        1.0
    );
}
