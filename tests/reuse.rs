//! Instance reuse (`reuse` in the manifest), through the real binary, for WASI 0.2 (`memhog`) and
//! WASI 0.3 (`stress_p3`) guests: state carries from one request to the next of the same
//! component and never to another component or app; a trapped, timed-out, over-limit or
//! error-answering instance is never served again; an instance serves at most `reuse` requests
//! and is dropped after `reuse_idle_timeout`; memory it keeps counts against its limit; the
//! metrics count hits and discards. `/count` answers how many `/count` requests the instance
//! serving it has seen: always 1 on a fresh instance.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A test guest and its paths.
struct Guest {
    wasm: &'static str,
    /// The path that traps.
    trap: &'static str,
    /// The path that allocates N MiB and keeps it, given N.
    keep: fn(u32) -> String,
    /// Manifest lines added wherever `reuse` is set.
    with_reuse: &'static str,
}

/// The guests, by WASI version, and the WASI 0.3 one again serving requests concurrently.
const GUESTS: [Guest; 3] = [
    Guest {
        wasm: "memhog",
        trap: "/panic",
        keep: |mib| format!("/keep/{mib}"),
        with_reuse: "",
    },
    Guest {
        wasm: "stress_p3",
        trap: "/trap",
        keep: |mib| format!("/keep?mib={mib}"),
        with_reuse: "",
    },
    Guest {
        wasm: "stress_p3",
        trap: "/trap",
        keep: |mib| format!("/keep?mib={mib}"),
        with_reuse: "reuse_concurrency = 4",
    },
];

/// `outpost run` with one app per entry of `apps` — (name, host, `[component.*]` tables) — each
/// made of `wasm`, and an admin listener.
fn run_apps(
    dir: &std::path::Path,
    wasm: &str,
    apps: &[(&str, &str, &str)],
) -> (Daemon, Vec<AppDir>) {
    run_apps_with(dir, "", wasm, apps)
}

/// [`run_apps`] with `runtime` lines in the node config's `[runtime]` table.
fn run_apps_with(
    dir: &std::path::Path,
    runtime: &str,
    wasm: &str,
    apps: &[(&str, &str, &str)],
) -> (Daemon, Vec<AppDir>) {
    let mut tables = format!("[runtime]\n{runtime}\n");
    let mut dirs = Vec::new();
    for (name, host, components) in apps {
        let app = AppDir::app(name, "1.0.0", components, &[wasm]);
        tables.push_str(&format!(
            "[[app]]\nsource = \"{}\"\nhosts = [\"{host}\"]\n",
            app.path().display()
        ));
        dirs.push(app);
    }
    let d = Daemon::run_config(&write_node_config(dir, "outpost.toml", "", &tables));
    (d, dirs)
}

/// One app "app" serving `wasm` for any host, its component with the `extra` manifest lines:
/// the daemon, with the directories it serves from (kept alive with it).
fn run_one(wasm: &str, extra: &str) -> (Daemon, tempfile::TempDir, Vec<AppDir>) {
    let tmp = tempfile::tempdir().unwrap();
    let (d, apps) = run_apps(tmp.path(), wasm, &[("app", "*", &component(wasm, extra))]);
    (d, tmp, apps)
}

async fn get_at(d: &Daemon, host: &str, path: &str) -> Resp {
    request_with(d.addr(), "GET", path, b"", &[("host", host)]).await
}

async fn count(d: &Daemon, host: &str) -> String {
    let r = get_at(d, host, "/count").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.trim().to_owned()
}

/// `outpost_instance_reuse_discards_total` of app `app` for `reason`.
async fn discards(admin: SocketAddr, reason: &str) -> f64 {
    let series =
        format!("outpost_instance_reuse_discards_total{{app=\"app\",reason=\"{reason}\"}}");
    metric(admin, &series).await
}

/// Waits until `discards(admin, reason)` is `n`, and fails if it passes it.
async fn discards_reach(admin: SocketAddr, reason: &str, n: f64) {
    wait_until(
        &format!("{n} {reason} discards"),
        Duration::from_secs(10),
        async || match discards(admin, reason).await {
            got if got == n => Ok(()),
            got if got > n => panic!("{got} {reason} discards, expected {n}"),
            got => Err(format!("{got} {reason} discards")),
        },
    )
    .await;
}

/// One component, one instance at a time (`max_concurrency = 1`), so the order of instances is
/// the order of requests.
fn component(wasm: &str, extra: &str) -> String {
    format!(
        "[component.main]\nsource = \"{wasm}.wasm\"\nroutes = [\"/\"]\nmax_concurrency = 1\n{extra}\n"
    )
}

#[tokio::test]
async fn state_carries_within_a_component_up_to_reuse_requests_and_never_to_another_app() {
    for Guest {
        wasm, with_reuse, ..
    } in GUESTS
    {
        let tmp = tempfile::tempdir().unwrap();
        let reused = component(wasm, &format!("reuse = 3\n{with_reuse}"));
        let (d, _apps) = run_apps(
            tmp.path(),
            wasm,
            &[
                ("fresh", "fresh.test", &component(wasm, "")),
                ("one", "one.test", &reused),
                ("two", "two.test", &reused),
            ],
        );
        // Default: a fresh instance for every request.
        for _ in 0..3 {
            assert_eq!(count(&d, "fresh.test").await, "1", "{wasm} {with_reuse}");
        }
        // reuse = 3: one instance serves three requests, then a fresh one takes over.
        let mut seen = Vec::new();
        for _ in 0..7 {
            seen.push(count(&d, "one.test").await);
        }
        assert_eq!(
            seen,
            ["1", "2", "3", "1", "2", "3", "1"],
            "{wasm} {with_reuse}"
        );
        // Another app running the very same component never sees the first app's instance.
        assert_eq!(count(&d, "two.test").await, "1", "{wasm} {with_reuse}");
        assert_eq!(count(&d, "two.test").await, "2", "{wasm} {with_reuse}");
        assert_eq!(count(&d, "one.test").await, "2", "{wasm} {with_reuse}");

        let admin = d.admin.unwrap();
        // A hit is every answer above 1: one had five (2, 3, 2, 3, 2), two had one; one's
        // instances were dropped twice for having served their three requests.
        assert_eq!(
            metric(admin, "outpost_instance_reuse_hits_total{app=\"one\"}").await,
            5.0,
            "{wasm} {with_reuse}"
        );
        assert_eq!(
            metric(admin, "outpost_instance_reuse_hits_total{app=\"two\"}").await,
            1.0,
            "{wasm} {with_reuse}"
        );
        assert_eq!(
            metric(
                admin,
                "outpost_instance_reuse_discards_total{app=\"one\",reason=\"max_requests\"}"
            )
            .await,
            2.0,
            "{wasm} {with_reuse}"
        );
        assert_eq!(
            metric(admin, "outpost_instance_reuse_hits_total{app=\"fresh\"}").await,
            0.0,
            "{wasm} {with_reuse}"
        );
    }
}

#[tokio::test]
async fn a_trapped_timed_out_or_failed_instance_is_never_reused() {
    for Guest {
        wasm,
        trap,
        with_reuse,
        ..
    } in GUESTS
    {
        let (d, _tmp, _apps) = run_one(
            wasm,
            &format!("reuse = 100\ntimeout = \"300ms\"\n{with_reuse}"),
        );
        assert_eq!(count(&d, "a.test").await, "1");
        assert_eq!(count(&d, "a.test").await, "2");
        // The trap takes the kept instance (the only one) and ends it.
        assert_eq!(
            get_at(&d, "a.test", trap).await.status,
            500,
            "{wasm} {with_reuse}"
        );
        assert_eq!(
            count(&d, "a.test").await,
            "1",
            "{wasm} {with_reuse}: a trapped instance served again"
        );
        assert_eq!(count(&d, "a.test").await, "2", "{wasm} {with_reuse}");
        let admin = d.admin.unwrap();
        discards_reach(admin, "trap", 1.0).await;

        if wasm == "stress_p3" {
            // A request cut at its timeout, and one answered with an error code.
            let r = get_at(&d, "a.test", "/spin").await;
            assert_eq!(r.status, 504, "{with_reuse}: {r:?}");
            assert_eq!(
                count(&d, "a.test").await,
                "1",
                "a timed-out instance served again"
            );
            assert_eq!(get_at(&d, "a.test", "/error").await.status, 500);
            assert_eq!(
                count(&d, "a.test").await,
                "1",
                "an instance that failed served again"
            );
            // A shared instance (`reuse_concurrency`) is counted when its task ends, which may
            // be a moment after the answers.
            discards_reach(admin, "timeout", 1.0).await;
            discards_reach(admin, "error", 1.0).await;
            // A guest still working after its response (it answers, then loops in a task of
            // its own) is not kept until it is done: it never is, so the deadline ends it.
            let r = get_at(&d, "a.test", "/spin-after").await;
            assert_eq!(r.status, 200);
            wait_until(
                "the busy instance dropped",
                Duration::from_secs(10),
                async || match discards(admin, "timeout").await {
                    n if n >= 2.0 => Ok(()),
                    n => Err(format!("{n} timeout discards")),
                },
            )
            .await;
            assert_eq!(
                count(&d, "a.test").await,
                "1",
                "a busy instance served again"
            );
        }
    }
}

/// Memory an instance keeps across requests counts against its `memory_limit`: requests that
/// each keep 4 MiB fail once the instance holds the limit, that instance is dropped, and the
/// next request gets a fresh one.
#[tokio::test]
async fn memory_kept_across_reuses_counts_against_the_limit() {
    for Guest {
        wasm,
        keep,
        with_reuse,
        ..
    } in GUESTS
    {
        let (d, _tmp, _apps) = run_one(
            wasm,
            &format!("reuse = 100\nmemory_limit = \"24MiB\"\n{with_reuse}"),
        );
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(get_at(&d, "a.test", &keep(4)).await.status);
        }
        // A fresh instance holds its image plus 4 MiB per request: within 24 MiB only a few fit.
        let first_fail = statuses.iter().position(|&s| s == 500);
        assert!(
            matches!(first_fail, Some(n) if n >= 2),
            "{wasm} {with_reuse}: {statuses:?}"
        );
        assert!(statuses[..first_fail.unwrap()].iter().all(|&s| s == 200));
        // The over-limit instance is gone: the next request starts from a fresh one.
        assert_eq!(count(&d, "a.test").await, "1", "{wasm} {with_reuse}");
        let admin = d.admin.unwrap();
        wait_until(
            "a memory_limit discard",
            Duration::from_secs(10),
            async || match discards(admin, "memory_limit").await {
                n if n >= 1.0 => Ok(()),
                n => Err(format!("{wasm} {with_reuse}: {n} memory_limit discards")),
            },
        )
        .await;
        assert!(
            metric(
                admin,
                "outpost_request_errors_total{app=\"app\",kind=\"memory_limit\"}"
            )
            .await
                >= 1.0,
            "{wasm} {with_reuse}"
        );
    }
}

#[tokio::test]
async fn an_idle_instance_is_dropped_after_its_idle_timeout() {
    for Guest {
        wasm, with_reuse, ..
    } in GUESTS
    {
        let (d, _tmp, _apps) = run_one(
            wasm,
            &format!("reuse = 100\nreuse_idle_timeout = \"200ms\"\n{with_reuse}"),
        );
        assert_eq!(count(&d, "a.test").await, "1");
        assert_eq!(count(&d, "a.test").await, "2");
        let admin = d.admin.unwrap();
        // The sweeper drops it (and gives its pool slot back) without another request.
        wait_until(
            "the idle instance dropped",
            Duration::from_secs(10),
            async || match discards(admin, "idle").await {
                n if n >= 1.0 => Ok(()),
                n => Err(format!("{n} idle discards")),
            },
        )
        .await;
        assert_eq!(
            metric(admin, "outpost_pool_slots_used").await,
            0.0,
            "{wasm} {with_reuse}"
        );
        assert_eq!(count(&d, "a.test").await, "1", "{wasm} {with_reuse}");
    }
}

/// Kept instances hold pool slots only while nobody else needs them: with a single slot, an
/// idle instance kept by one app gives it up at once to another app's request (no wait for the
/// idle timeout, no 503).
#[tokio::test]
async fn a_kept_instance_gives_its_slot_back_when_the_pool_is_full() {
    for Guest {
        wasm, with_reuse, ..
    } in GUESTS
    {
        let tmp = tempfile::tempdir().unwrap();
        let (d, _apps) = run_apps_with(
            tmp.path(),
            "instance_slots = 1",
            wasm,
            &[
                (
                    "keeper",
                    "keeper.test",
                    &component(wasm, &format!("reuse = 100\n{with_reuse}")),
                ),
                ("other", "other.test", &component(wasm, "")),
            ],
        );
        assert_eq!(count(&d, "keeper.test").await, "1");
        assert_eq!(count(&d, "keeper.test").await, "2");
        // Without the kept instance giving its slot back this would wait out the 2 s queue
        // timeout and get a 503: the kept instance idles for 10 s.
        assert_eq!(count(&d, "other.test").await, "1", "{wasm} {with_reuse}");
        let admin = d.admin.unwrap();
        let series =
            "outpost_instance_reuse_discards_total{app=\"keeper\",reason=\"pool_contended\"}";
        assert_eq!(metric(admin, series).await, 1.0, "{wasm} {with_reuse}");
        assert_eq!(count(&d, "keeper.test").await, "1", "{wasm} {with_reuse}");
    }
}

/// `reuse_concurrency`: one WASI 0.3 instance serves requests at once. A request waits inside
/// the guest for an upstream that answers only when a second one has arrived; the second is
/// sent once the first is waiting (so the first's instance waits on I/O and may take more).
/// Each answers with the number its instance gave it when it started: on one shared instance
/// 1 and 2; with sequential reuse the second needs an instance of its own: 1 and 1.
#[tokio::test]
async fn a_wasi_03_instance_serves_requests_concurrently_with_reuse_concurrency() {
    // Round `/rN` answers once 2N requests have arrived in all.
    let arrived = Arc::new((Mutex::new(0usize), tokio::sync::Notify::new()));
    let seen = arrived.clone();
    let up = http1_server(move |req: http::Request<hyper::body::Incoming>| {
        let arrived = seen.clone();
        async move {
            let round: usize = req.uri().path()[2..].parse().unwrap();
            *arrived.0.lock().unwrap() += 1;
            arrived.1.notify_waiters();
            loop {
                let notified = arrived.1.notified();
                if *arrived.0.lock().unwrap() >= 2 * round {
                    break;
                }
                notified.await;
            }
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok")))
        }
    })
    .await;
    let grant = format!(
        "allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]",
        up.port()
    );
    let tmp = tempfile::tempdir().unwrap();
    let wasm = "fetch2_p3";
    let table = |extra: &str| {
        format!(
            "[component.main]\nsource = \"{wasm}.wasm\"\nroutes = [\"/\"]\n{grant}\nreuse = 10\n{extra}\n"
        )
    };
    let (d, _apps) = run_apps(
        tmp.path(),
        wasm,
        &[
            ("shared", "shared.test", &table("reuse_concurrency = 4")),
            ("seq", "seq.test", &table("")),
        ],
    );
    let until_arrived = async |n: usize| {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = arrived.1.notified();
                if *arrived.0.lock().unwrap() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the first request never reached the upstream");
    };
    for (round, host, expect) in [(1, "shared.test", ["1", "2"]), (2, "seq.test", ["1", "1"])] {
        let path = format!(
            "/count?wait=http%3A%2F%2F127.0.0.1%3A{}%2Fr{round}",
            up.port()
        );
        let first = tokio::spawn({
            let (addr, path) = (d.addr(), path.clone());
            async move { request_with(addr, "GET", &path, b"", &[("host", host)]).await }
        });
        until_arrived(2 * round - 1).await;
        let b = get_at(&d, host, &path).await;
        let a = first.await.unwrap();
        assert_eq!((a.status, b.status), (200, 200), "{host}: {a:?} {b:?}");
        let got = [a.body.trim().to_owned(), b.body.trim().to_owned()];
        assert_eq!(got, expect, "{host}");
    }
    let admin = d.admin.unwrap();
    assert_eq!(
        metric(admin, "outpost_instance_reuse_hits_total{app=\"shared\"}").await,
        1.0
    );
}

/// A WASI 0.3 instance that goes on working after its response is not kept until that work is
/// done, also when the work waits on I/O rather than the CPU: `/fetch-after` (which counts as a
/// `/count`) answers, then its own task calls an upstream that this test holds. While held, the
/// next request gets a fresh instance (`/count` = 1); an instance kept at its response would
/// answer 2.
#[tokio::test]
async fn a_wasi_03_instance_is_not_reused_while_its_post_response_work_waits_on_io() {
    let (held_tx, held_rx) = tokio::sync::watch::channel(false);
    let arrived = Arc::new(tokio::sync::Notify::new());
    let seen = arrived.clone();
    let up = http1_server(move |_req: http::Request<hyper::body::Incoming>| {
        let (seen, mut released) = (seen.clone(), held_rx.clone());
        async move {
            seen.notify_one();
            let _ = released.wait_for(|r| *r).await;
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok")))
        }
    })
    .await;
    let wasm = "stress_p3";
    let tmp = tempfile::tempdir().unwrap();
    let table = format!(
        "[component.main]\nsource = \"{wasm}.wasm\"\nroutes = [\"/\"]\nreuse = 100\n\
         allowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n",
        up.port()
    );
    let (d, _apps) = run_apps(tmp.path(), wasm, &[("app", "*", &table)]);
    let path = format!("/fetch-after?url=http%3A%2F%2F127.0.0.1%3A{}%2F", up.port());
    let r = get_at(&d, "a.test", &path).await;
    assert_eq!((r.status, r.body.as_str()), (200, "answered\n"));
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the post-response request never reached the upstream");
    assert_eq!(
        count(&d, "a.test").await,
        "1",
        "an instance still working after its response was served again"
    );
    held_tx.send(true).unwrap();
}

/// When a component is unloaded (here its app leaves the config, on SIGHUP), the instances it
/// kept for reuse go with it and give their pool slots back at once — not after
/// `reuse_idle_timeout` (an hour here). For shared WASI 0.3 instances that means their tasks end
/// on their own: they hold no reference that would keep the component loaded.
#[tokio::test]
async fn an_unloaded_components_kept_instances_give_their_slots_back_at_once() {
    for Guest {
        wasm, with_reuse, ..
    } in GUESTS
    {
        let tmp = tempfile::tempdir().unwrap();
        let reused = component(
            wasm,
            &format!("reuse = 100\nreuse_idle_timeout = \"1h\"\n{with_reuse}"),
        );
        let (d, _apps) = run_apps(tmp.path(), wasm, &[("app", "*", &reused)]);
        assert_eq!(count(&d, "a.test").await, "1");
        assert_eq!(count(&d, "a.test").await, "2");
        let admin = d.admin.unwrap();
        assert_eq!(metric(admin, "outpost_pool_slots_used").await, 1.0);
        write_node_config(tmp.path(), "outpost.toml", "", "[runtime]\n");
        d.signal("HUP");
        d.wait_log(&["configuration reloaded"]);
        wait_until(
            "the unloaded component's instance gone",
            Duration::from_secs(10),
            async || match metric(admin, "outpost_pool_slots_used").await {
                0.0 => Ok(()),
                n => Err(format!("{wasm} {with_reuse}: {n} slots used")),
            },
        )
        .await;
    }
}
