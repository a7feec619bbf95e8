//! Key-value stores and Spin variables through the real binary: a Spin SDK (spin-sdk 5) app and a
//! `wasi:keyvalue` app on the embedded (sled) backend and on a real `redis-server`, with the
//! grants, scoping, limits, quotas and durability of docs/key-value.md.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A Spin SDK key-value app (`spin_kv`) named `name`, granted `stores`.
fn spin_kv_app(name: &str, stores: &str) -> AppDir {
    AppDir::app(
        name,
        "1.0.0",
        &format!(
            "[component.kv]\nsource = \"spin_kv.wasm\"\nroutes = [\"/\"]\nkey_value_stores = {stores}\n"
        ),
        &["spin_kv"],
    )
}

/// A `wasi:keyvalue` app (`kv_counter`) named `name`, granted `default`.
fn wasi_kv_app(name: &str) -> AppDir {
    AppDir::app(
        name,
        "1.0.0",
        "[component.counter]\nsource = \"kv_counter.wasm\"\nroutes = [\"/\"]\nkey_value_stores = [\"default\"]\n",
        &["kv_counter"],
    )
}

/// `[[app]]` tables serving each `(dir, host)`.
fn app_tables(apps: &[(&AppDir, &str)]) -> String {
    apps.iter()
        .map(|(a, host)| {
            format!(
                "[[app]]\nsource = \"{}\"\nhosts = [\"{host}\"]\n",
                a.path().display()
            )
        })
        .collect()
}

async fn call(addr: SocketAddr, host: &str, method: &str, path: &str, body: &[u8]) -> Resp {
    request_with(addr, method, path, body, &[("host", host)]).await
}

async fn expect(addr: SocketAddr, host: &str, method: &str, path: &str, body: &[u8]) -> String {
    let r = call(addr, host, method, path, body).await;
    assert_eq!(r.status, 200, "{method} {host}{path}: {}", r.body);
    r.body
}

#[tokio::test]
async fn spin_and_wasi_key_value_on_sled_are_scoped_limited_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let a = spin_kv_app("kv-a", "[\"default\"]");
    let b = spin_kv_app("kv-b", "[\"default\"]");
    let c = wasi_kv_app("kv-c");
    let cfg = write_node_config(
        dir.path(),
        "kv.toml",
        "",
        &format!(
            "[key_value]\nmax_keys_per_app = 4\n{}",
            app_tables(&[(&a, "a.test"), (&b, "b.test"), (&c, "c.test")])
        ),
    );
    let d = Daemon::run_config(&cfg);
    let addr = d.addr();

    // set, get, exists, list, delete.
    assert_eq!(
        expect(addr, "a.test", "POST", "/set/default/greeting", b"hello").await,
        "ok"
    );
    assert_eq!(
        expect(addr, "a.test", "GET", "/get/default/greeting", b"").await,
        "hello"
    );
    assert_eq!(
        expect(addr, "a.test", "GET", "/exists/default/greeting", b"").await,
        "true"
    );
    expect(addr, "a.test", "POST", "/set/default/k2", b"v2").await;
    assert_eq!(
        expect(addr, "a.test", "GET", "/keys/default", b"").await,
        "greeting\nk2\n"
    );
    expect(addr, "a.test", "POST", "/delete/default/k2", b"").await;
    assert_eq!(
        expect(addr, "a.test", "GET", "/exists/default/k2", b"").await,
        "false"
    );
    let r = call(addr, "a.test", "GET", "/get/default/k2", b"").await;
    assert_eq!((r.status, r.body.as_str()), (404, "not found"));

    // Two apps' `default` stores never share data.
    let r = call(addr, "b.test", "GET", "/get/default/greeting", b"").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        expect(addr, "b.test", "GET", "/keys/default", b"").await,
        ""
    );

    // A store the component was not granted: the interface's access-denied, not a trap.
    let r = call(addr, "a.test", "GET", "/get/other/x", b"").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "error: Error::AccessDenied")
    );

    // Limits and quotas are errors the guest sees.
    let long_key = "k".repeat(257);
    let r = call(
        addr,
        "a.test",
        "POST",
        &format!("/set/default/{long_key}"),
        b"x",
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("key is 257 bytes"), "{}", r.body);
    let big = vec![b'v'; (1 << 20) + 1];
    let r = call(addr, "a.test", "POST", "/set/default/big", &big).await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("value is 1048577 bytes"), "{}", r.body);
    expect(addr, "a.test", "POST", "/set/default/max", &big[1..]).await;
    for k in ["q1", "q2"] {
        expect(addr, "a.test", "POST", &format!("/set/default/{k}"), b"1").await;
    }
    let r = call(addr, "a.test", "POST", "/set/default/q3", b"1").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("quota exceeded"), "{}", r.body);
    // An overwrite adds no key: still allowed at the quota.
    expect(addr, "a.test", "POST", "/set/default/q1", b"2").await;
    // kv-b has a quota of its own.
    expect(addr, "b.test", "POST", "/set/default/mine", b"b").await;

    // wasi:keyvalue: atomics and batch, over the same kind of store.
    assert_eq!(
        expect(addr, "c.test", "POST", "/incr/default/n", b"").await,
        "1"
    );
    assert_eq!(
        expect(addr, "c.test", "POST", "/incr/default/n", b"").await,
        "2"
    );
    assert_eq!(
        expect(addr, "c.test", "POST", "/batch/default", b"").await,
        "a=1\nb=2\nc=-\nkeys=a,b,n\n"
    );
    // A read-modify-write from the guest (get, add, set) over the counter's decimal text.
    assert_eq!(
        expect(addr, "c.test", "GET", "/rmw/default/n", b"").await,
        "3"
    );
    let r = call(addr, "c.test", "GET", "/get/secret/x", b"").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "error: Error::AccessDenied")
    );

    // Concurrent read-modify-writes: none lost, none left waiting for its flush (sled's own
    // `flush_async` once left requests waiting forever under this load).
    let incrs = (0..48).map(|_| {
        tokio::spawn(async move { call(addr, "c.test", "POST", "/incr/default/par", b"").await })
    });
    let all = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(incrs))
        .await
        .expect("concurrent increments finish");
    assert!(all.iter().all(|r| r.as_ref().unwrap().status == 200));
    assert_eq!(
        expect(addr, "c.test", "GET", "/get/default/par", b"").await,
        "48"
    );

    let admin = d.admin.unwrap();
    let ops = |app: &str, op: &str, outcome: &str| {
        format!("outpost_kv_operations_total{{app=\"{app}\",op=\"{op}\",outcome=\"{outcome}\"")
    };
    assert_eq!(metric(admin, &ops("kv-a", "set", "quota")).await, 1.0);
    assert_eq!(metric(admin, &ops("kv-a", "set", "too_large")).await, 2.0);
    assert_eq!(metric(admin, &ops("kv-a", "open", "denied")).await, 1.0);
    assert_eq!(metric(admin, &ops("kv-c", "increment", "ok")).await, 50.0);
    assert_eq!(metric(admin, "outpost_kv_keys{app=\"kv-a\"}").await, 4.0);
    let bytes = metric(admin, "outpost_kv_stored_bytes{app=\"kv-a\"}").await;
    assert_eq!(bytes, (8 + 5 + 3 + (1 << 20) + 2 + 1 + 2 + 1) as f64);

    // Every write above returned: kill -9 (dropping the daemon) must lose none of them.
    drop(d);
    let d = Daemon::run_config(&cfg);
    let addr = d.addr();
    assert_eq!(
        expect(addr, "a.test", "GET", "/get/default/greeting", b"").await,
        "hello"
    );
    assert_eq!(
        expect(addr, "a.test", "GET", "/get/default/q1", b"").await,
        "2"
    );
    assert_eq!(
        expect(addr, "a.test", "GET", "/keys/default", b"").await,
        "greeting\nmax\nq1\nq2\n"
    );
    // Two increments and the read-modify-write.
    assert_eq!(
        expect(addr, "c.test", "GET", "/get/default/n", b"").await,
        "3"
    );
    // The quota is counted from disk after the restart.
    let r = call(addr, "a.test", "POST", "/set/default/q3", b"1").await;
    assert!(r.body.contains("quota exceeded"), "{}", r.body);
}

/// A `redis-server` on 127.0.0.1, killed on drop.
struct Redis {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` on a free port (Redis cannot bind port 0: a port is picked by binding
/// one and releasing it); `None` when redis-server is not installed.
fn start_redis() -> Option<Redis> {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = match Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("redis-server: {e}"),
        };
        let mut redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = redis.child.try_wait() {
                break; // the port was taken after all: try another
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis-server did not start");
}

fn redis_config(dir: &Path, name: &str, url: &str, apps: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_node_config(
        dir,
        name,
        "",
        &format!("[key_value.stores.default]\nbackend = \"redis\"\nurl = \"{url}\"\n{apps}"),
    )
}

#[tokio::test]
async fn the_same_bundle_moves_from_sled_to_redis_shared_by_two_nodes() {
    let Some(redis) = start_redis() else {
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
        return;
    };
    let a = spin_kv_app("kv-a", "[\"default\"]");
    let b = spin_kv_app("kv-b", "[\"default\"]");
    let apps = app_tables(&[(&a, "a.test"), (&b, "b.test")]);

    // On the embedded backend first.
    let sled_dir = tempfile::tempdir().unwrap();
    let cfg = write_node_config(sled_dir.path(), "sled.toml", "", &apps);
    let d = Daemon::run_config(&cfg);
    expect(d.addr(), "a.test", "POST", "/set/default/where", b"sled").await;
    drop(d);

    // The same app directories, only the node config changed: the stores are now Redis's, shared
    // by two nodes with state directories of their own.
    let dir = tempfile::tempdir().unwrap();
    let n1 = Daemon::run_config(&redis_config(
        &dir.path().join("n1"),
        "n1.toml",
        &redis.url,
        &apps,
    ));
    let n2 = Daemon::run_config(&redis_config(
        &dir.path().join("n2"),
        "n2.toml",
        &redis.url,
        &apps,
    ));
    let r = call(n1.addr(), "a.test", "GET", "/get/default/where", b"").await;
    assert_eq!(r.status, 404, "a new backend starts empty: {}", r.body);
    expect(n1.addr(), "a.test", "POST", "/set/default/where", b"redis").await;
    expect(n1.addr(), "a.test", "POST", "/set/default/other", b"x").await;
    assert_eq!(
        expect(n2.addr(), "a.test", "GET", "/get/default/where", b"").await,
        "redis"
    );
    assert_eq!(
        expect(n2.addr(), "a.test", "GET", "/keys/default", b"").await,
        "other\nwhere\n"
    );
    expect(n2.addr(), "a.test", "POST", "/delete/default/other", b"").await;
    assert_eq!(
        expect(n1.addr(), "a.test", "GET", "/exists/default/other", b"").await,
        "false"
    );
    // Scoped by app on Redis too, and still deny by default.
    let r = call(n1.addr(), "b.test", "GET", "/get/default/where", b"").await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = call(n1.addr(), "a.test", "GET", "/get/other/x", b"").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "error: Error::AccessDenied")
    );
    let r = call(
        n1.addr(),
        "a.test",
        "POST",
        &format!("/set/default/{}", "k".repeat(257)),
        b"x",
    )
    .await;
    assert!(r.body.contains("key is 257 bytes"), "{}", r.body);
    // Each node's gauge is the shared count as of its own last write.
    let admin = n1.admin.unwrap();
    assert_eq!(metric(admin, "outpost_kv_keys{app=\"kv-a\"}").await, 2.0);
    let n2_admin = n2.admin.unwrap();
    assert_eq!(metric(n2_admin, "outpost_kv_keys{app=\"kv-a\"}").await, 1.0);

    // Redis gone: the guest gets an error, the node keeps serving.
    drop(redis);
    let r = call(n1.addr(), "a.test", "GET", "/get/default/where", b"").await;
    assert_eq!(r.status, 500);
    assert!(r.body.contains("backend unavailable"), "{}", r.body);
    assert_eq!(get(admin, "/healthz").await.status, 200);
}

#[tokio::test]
async fn a_bad_key_value_config_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (rest, needle) in [
        (
            "[key_value.stores.default]\nbackend = \"redis\"\n",
            "key_value.stores.default.url: missing",
        ),
        (
            "[key_value.stores.default]\nbackend = \"etcd\"\n",
            "key_value.stores.default.backend: unknown backend",
        ),
        (
            "[key_value.stores.default]\nbackend = \"redis\"\nurl = \"rediss://h:6379\"\n",
            "TLS (rediss://) is not supported",
        ),
        (
            "[key_value.stores.Bad-Label]\n",
            "key_value.stores.Bad-Label: invalid store label",
        ),
        (
            "[key_value]\nmax_value_size = 0\n",
            "key_value.max_value_size",
        ),
    ] {
        let cfg = write_node_config(dir.path(), "bad.toml", "", rest);
        let (code, _, stderr) = run_to_end(&["run", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 64, "{rest}: {stderr}");
        assert!(stderr.contains(needle), "{rest}: {stderr}");
    }
}

#[tokio::test]
async fn a_spin_sdk_app_reads_its_variables() {
    let app = AppDir::app(
        "vars",
        "1.0.0",
        "[component.vars]\nsource = \"spin_vars.wasm\"\nroutes = [\"/\"]\n\
         [component.vars.variables]\ngreeting = \"hello from a variable\"\n",
        &["spin_vars"],
    );
    let d = Daemon::serve(&[app.path().to_str().unwrap()]);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from a variable"));
    let r = get(d.addr(), "/missing").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, "error: Error::Undefined(\"missing\")")
    );
    let r = get(d.addr(), "/Bad").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.starts_with("error: Error::InvalidName("),
        "{}",
        r.body
    );
}

/// A Spin app as a Spin user has it — a directory with a `spin.toml`, a Spin SDK key-value
/// component and a Spin SDK variables component — packed into a signed bundle and served by
/// `outpost run`: its data survives a restart, and the very same bundle runs on Redis by
/// changing only the node config (two nodes on one Redis see each other's writes).
#[tokio::test]
async fn a_spin_app_bundle_keeps_its_data_across_restarts_and_moves_to_redis_by_node_config() {
    let lab = tempfile::tempdir().unwrap();
    let at = |rel: &str| lab.path().join(rel).to_str().unwrap().to_owned();
    let spin = lab.path().join("spin-app");
    std::fs::create_dir_all(&spin).unwrap();
    for guest in ["spin_kv", "spin_vars"] {
        std::fs::copy(wasm(guest), spin.join(format!("{guest}.wasm"))).unwrap();
    }
    std::fs::write(
        spin.join("spin.toml"),
        r#"spin_manifest_version = 2

[application]
name = "spin-shop"
version = "1.0.0"

[variables]
greeting = { default = "hello from spin.toml" }

[[trigger.http]]
route = "/..."
component = "kv"

[[trigger.http]]
route = "/greeting"
component = "vars"

[component.kv]
source = "spin_kv.wasm"
key_value_stores = ["default"]
[component.kv.build]
command = "cargo build --target wasm32-wasip2 --release"

[component.vars]
source = "spin_vars.wasm"
[component.vars.variables]
greeting = "{{ greeting }}"
"#,
    )
    .unwrap();
    for args in [
        vec!["bundle", "keygen", "--out", &at("alice")],
        vec![
            "bundle",
            "pack",
            spin.to_str().unwrap(),
            "-o",
            &at("shop.bundle"),
        ],
        vec![
            "bundle",
            "sign",
            &at("shop.bundle"),
            "--key",
            &at("alice.key"),
        ],
    ] {
        let (code, _, err) = run_to_end(&args);
        assert_eq!(code, 0, "outpost {}: {err}", args.join(" "));
    }
    let node = |name: &str, extra: &str| {
        let cfg = lab.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[node]\nstate_dir = \"{name}-state\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
                 admin = \"127.0.0.1:0\"\n[trust]\nkeys = [\"alice.pub\"]\n\
                 [[app]]\nsource = \"shop.bundle\"\nhosts = [\"*\"]\n{extra}\n"
            ),
        )
        .unwrap();
        cfg
    };

    // The embedded backend: a write, a restart, the write is still there.
    let sled = node("sled", "");
    let d = Daemon::run_config(&sled);
    expect(
        d.addr(),
        "shop.test",
        "POST",
        "/set/default/cart",
        b"3 apples",
    )
    .await;
    assert_eq!(
        expect(d.addr(), "shop.test", "GET", "/greeting", b"").await,
        "hello from spin.toml"
    );
    drop(d);
    let d = Daemon::run_config(&sled);
    assert_eq!(
        expect(d.addr(), "shop.test", "GET", "/get/default/cart", b"").await,
        "3 apples"
    );
    drop(d);

    // Only the node config changes: `default` is now a Redis store, which two nodes share.
    let Some(redis) = start_redis() else {
        eprintln!("SKIPPED (Redis half): redis-server is not installed");
        return;
    };
    let on_redis = format!(
        "[key_value.stores.default]\nbackend = \"redis\"\nurl = \"{}\"",
        redis.url
    );
    let (one, two) = (
        Daemon::run_config(&node("redis-one", &on_redis)),
        Daemon::run_config(&node("redis-two", &on_redis)),
    );
    let r = call(one.addr(), "shop.test", "GET", "/get/default/cart", b"").await;
    assert_eq!(
        r.status, 404,
        "a fresh Redis store holds the sled data? {r:?}"
    );
    expect(
        one.addr(),
        "shop.test",
        "POST",
        "/set/default/cart",
        b"2 pears",
    )
    .await;
    assert_eq!(
        expect(two.addr(), "shop.test", "GET", "/get/default/cart", b"").await,
        "2 pears"
    );
}

/// `outpost serve` keeps key-value stores across restarts, as `spin up` does: a Spin app
/// directory's write is there after a restart with the same `--kv-dir`. A second server on the
/// same directory is refused, naming the flag.
#[tokio::test]
async fn outpost_serve_keeps_key_value_data_across_restarts() {
    let app = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("spin_kv"), app.path().join("spin_kv.wasm")).unwrap();
    std::fs::write(
        app.path().join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"counter\"\nversion = \"1.0.0\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"kv\"\n\
         [component.kv]\nsource = \"spin_kv.wasm\"\nkey_value_stores = [\"default\"]\n",
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let kv_dir = state.path().join("kv");
    let args = [
        "--kv-dir",
        kv_dir.to_str().unwrap(),
        app.path().to_str().unwrap(),
    ];
    let d = Daemon::serve(&args);
    expect(d.addr(), "x.test", "POST", "/set/default/seen", b"before").await;
    let (code, _, err) = run_to_end(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--kv-dir",
        kv_dir.to_str().unwrap(),
        app.path().to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("--kv-dir"), "{err}");
    drop(d);
    let d = Daemon::serve(&args);
    assert_eq!(
        expect(d.addr(), "x.test", "GET", "/get/default/seen", b"").await,
        "before"
    );
}

/// A WASI 0.3 component reaches the same stores over the same `wasi:keyvalue` interfaces: in
/// one app, a WASI 0.2 component's writes are what the WASI 0.3 one reads, and a store it is
/// not granted is refused the same way.
#[tokio::test]
async fn a_wasi_0_3_component_shares_its_apps_stores() {
    let dir = tempfile::tempdir().unwrap();
    let app = AppDir::app(
        "kv-mixed",
        "1.0.0",
        "[component.counter]\nsource = \"kv_counter.wasm\"\nroutes = [\"/\"]\n\
         key_value_stores = [\"default\"]\n\
         [component.p3]\nsource = \"grants_p3.wasm\"\nroutes = [\"/kv\"]\n\
         key_value_stores = [\"default\"]\n",
        &["kv_counter", "grants_p3"],
    );
    let cfg = write_node_config(
        dir.path(),
        "kv.toml",
        "",
        &app_tables(&[(&app, "mixed.test")]),
    );
    let d = Daemon::run_config(&cfg);
    let addr = d.addr();
    for want in ["1", "2"] {
        assert_eq!(
            expect(addr, "mixed.test", "POST", "/incr/default/hits", b"").await,
            want
        );
    }
    assert_eq!(
        expect(
            addr,
            "mixed.test",
            "GET",
            "/kv/get?store=default&key=hits",
            b""
        )
        .await,
        "2"
    );
    assert_eq!(
        expect(
            addr,
            "mixed.test",
            "GET",
            "/kv/incr?store=default&key=hits",
            b""
        )
        .await,
        "3"
    );
    let r = call(
        addr,
        "mixed.test",
        "GET",
        "/kv/get?store=default&key=nothing",
        b"",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (404, "not found"));
    let r = call(
        addr,
        "mixed.test",
        "GET",
        "/kv/get?store=other&key=hits",
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (403, "error: Error::AccessDenied")
    );
}
