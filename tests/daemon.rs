//! `outpost run`, `outpost info` and bad input, through the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn write_config(dir: &std::path::Path, apps: &str) -> std::path::PathBuf {
    write_node_config(dir, "outpost-daemon.toml", "drain_timeout = \"5s\"", apps)
}

#[tokio::test]
async fn daemon_serves_apps_by_host_and_exposes_admin_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("echo"), dir.path().join("echo.wasm")).unwrap();
    let cfg = write_config(
        dir.path(),
        r#"
[[app]]
source = "builtin:demo"
hosts = ["*"]
[[app]]
source = "echo.wasm"
hosts = ["echo.example.com"]
"#,
    );
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    let r = get(d.addr(), "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));
    let r = request_with(
        d.addr(),
        "POST",
        "/",
        b"via host",
        &[("host", "Echo.Example.com:8080")],
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "via host"));

    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let m = get(admin, "/metrics").await;
    assert_eq!(m.status, 200);
    for needle in [
        "# TYPE outpost_http_requests_total counter",
        "outpost_http_requests_total{app=\"demo\",component=\"demo\",protocol=\"http1\",status=\"200\",tenant=\"\"}",
        "# TYPE outpost_http_request_duration_seconds histogram",
        "# TYPE outpost_instantiate_duration_seconds histogram",
        "outpost_pool_slots ",
        "outpost_components_loaded 2",
        "process_resident_memory_bytes",
    ] {
        assert!(m.body.contains(needle), "missing {needle} in\n{}", m.body);
    }
    // Tenant traffic cannot reach admin endpoints.
    assert!(
        get(d.addr(), "/metrics")
            .await
            .body
            .starts_with("hello from outpost\n")
    );
}

#[test]
fn embedded_default_config_loads_the_demo_app() {
    let (code, out, err) = run_to_end(&["run", "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config ok: 1 app(s), 1 component(s)"), "{out}");
    let (code, out, _) = run_to_end(&["run", "--print-default-config"]);
    assert_eq!(code, 0);
    assert!(out.contains("builtin:demo") && out.contains("127.0.0.1:8080"));
}

#[test]
fn info_reports_hardware_and_derived_sizes() {
    let (code, out, err) = run_to_end(&["info", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["hardware"].is_object(), "{out}");
    assert!(v["worker_threads"]["value"].as_u64().unwrap() >= 1, "{out}");
    assert!(!v["worker_threads"]["reason"].as_str().unwrap().is_empty());
    let (code, text, _) = run_to_end(&["info"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("worker_threads") || text.contains("worker threads"),
        "{text}"
    );
}

#[test]
fn bad_config_is_rejected_before_binding_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[listen]\nhttp = [\"not-an-address\"]\n").unwrap();
    let (code, _, err) = run_to_end(&["run", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("bad.toml") && err.contains("http"), "{err}");

    let (code, _, err) = run_to_end(&["run", "--config", "/nonexistent/outpost.toml"]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/outpost.toml"), "{err}");
}

fn serve_check(path: &std::path::Path) -> (i32, String) {
    let (code, _, err) = run_to_end(&[
        "serve",
        "--no-cache",
        "--listen",
        "127.0.0.1:0",
        path.to_str().unwrap(),
    ]);
    (code, err)
}

#[test]
fn malformed_manifests_name_the_file_and_key() {
    let app = AppDir::app(
        "bad",
        "1.0.0",
        r#"
[component.x]
source = "hello.wasm"
routes = ["/"]
memory_limit = "lots"
"#,
        &["hello"],
    );
    let (code, err) = serve_check(app.path());
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("outpost.toml") && err.contains("memory_limit"),
        "{err}"
    );

    let app = AppDir::new("manifest_version = 1\n[application\n", &[]);
    let (code, err) = serve_check(app.path());
    assert_eq!(code, 65);
    assert!(err.contains("outpost.toml"), "{err}");

    let app = AppDir::app(
        "bad",
        "1.0.0",
        r#"
[component.x]
source = "hello.wasm"
routes = ["/"]
alowed_outbound_hosts = []
"#,
        &["hello"],
    );
    let (code, err) = serve_check(app.path());
    assert_eq!(code, 65);
    assert!(err.contains("alowed_outbound_hosts"), "{err}");
}

#[test]
fn missing_wasm_and_escaping_paths_are_rejected() {
    let app = AppDir::app(
        "bad",
        "1.0.0",
        r#"
[component.x]
source = "missing.wasm"
routes = ["/"]
"#,
        &[],
    );
    let (code, err) = serve_check(app.path());
    assert_eq!(code, 65);
    assert!(
        err.contains("missing.wasm") && err.contains("component.x.source"),
        "{err}"
    );

    let (code, err) = serve_check(std::path::Path::new("/nonexistent/app.wasm"));
    assert_eq!(code, 65);
    assert!(err.contains("/nonexistent/app.wasm"), "{err}");
}

#[test]
fn non_components_and_unknown_imports_fail_at_load() {
    let (code, err) = serve_check(&bad_input("core-module.wat"));
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("core WebAssembly module, not a component"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\x7fELF not wasm").unwrap();
    let (code, err) = serve_check(&junk);
    assert_eq!(code, 65);
    assert!(err.contains("not a WebAssembly file"), "{err}");

    let (code, err) = serve_check(&bad_input("weird-import.wat"));
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("acme:secret/vault"), "{err}");
    assert!(err.contains("does not provide"), "{err}");
}

/// Every load error says its message once (before: "X: Y: X: Y" — an error that embeds its
/// source in its message was printed with its source chain too), through `serve` and through
/// `run` with the app in its config.
#[test]
fn load_errors_say_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\x7fELF not wasm").unwrap();
    let junk_app = AppDir::new(
        "manifest_version = 1\n[application]\nname = \"j\"\nversion = \"1.0.0\"\n\
         [component.j]\nsource = \"j.wasm\"\nroutes = [\"/\"]\n",
        &[],
    );
    std::fs::write(junk_app.path().join("j.wasm"), b"\x7fELF not wasm").unwrap();
    let unreadable = AppDir::new(
        "manifest_version = 1\n[application]\nname = \"u\"\nversion = \"1.0.0\"\n\
         [component.u]\nsource = \"u.wasm\"\nroutes = [\"/\"]\n",
        &[],
    );
    // A directory where the wasm file should be: found, but unreadable as a file.
    std::fs::create_dir(unreadable.path().join("u.wasm")).unwrap();
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (junk.clone(), "not a WebAssembly file"),
        (junk_app.path().to_owned(), "not a WebAssembly file"),
        (bad_input("core-module.wat"), "core WebAssembly module"),
        (bad_input("weird-import.wat"), "acme:secret/vault"),
        (unreadable.path().to_owned(), "u.wasm"),
        ("/nonexistent/app.wasm".into(), "/nonexistent/app.wasm"),
    ];
    let once = |err: &str, needle: &str, what: &str| {
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{what}: no error line in\n{err}"));
        assert_eq!(
            line.matches(needle).count(),
            1,
            "{what}: {needle:?} must appear once in {line:?}"
        );
    };
    for (path, needle) in &cases {
        let (code, err) = serve_check(path);
        assert_eq!(code, 65, "{err}");
        once(&err, needle, &format!("serve {}", path.display()));
    }
    // `run`: the same errors from an [[app]] of the config.
    let cfg = write_config(
        dir.path(),
        &format!("[[app]]\nsource = \"{}\"\n", junk_app.path().display()),
    );
    let (code, _, err) = run_to_end(&["run", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0, "{err}");
    once(&err, "not a WebAssembly file", "run");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    // --log-format is global: accepted after the subcommand too.
    let d = Daemon::serve(&["--log-format", "json", wasm("hello").to_str().unwrap()]);
    let log = d.wait_log(&["component loaded", "sized for this machine"]);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
    }
}

#[tokio::test]
async fn cancelled_requests_release_their_slot() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("slow"), dir.path().join("slow.wasm")).unwrap();
    let cfg = write_config(dir.path(), "[[app]]\nsource = \"slow.wasm\"\n");
    let d = Daemon::run_config(&cfg);
    let admin = d.admin.unwrap();
    let addr = d.addr();
    let client = tokio::spawn(async move { get(addr, "/sleep/5000").await });
    let busy = "outpost_pool_slots_used 1";
    let mut seen_busy = false;
    for _ in 0..100 {
        if get(admin, "/metrics").await.body.contains(busy) {
            seen_busy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(seen_busy, "the request never occupied a slot");
    client.abort(); // the client goes away mid-request
    let mut released = false;
    for _ in 0..250 {
        let m = get(admin, "/metrics").await.body;
        if m.contains("outpost_pool_slots_used 0")
            && m.contains("outpost_requests_inflight{app=\"slow\"} 0")
        {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        released,
        "slot and in-flight gauge must drop back when the client leaves"
    );
}

#[test]
fn colliding_routes_are_refused() {
    let hello = wasm("hello");
    let echo = wasm("echo");
    let (code, _, err) = run_to_end(&[
        "serve",
        "--no-cache",
        "--listen",
        "127.0.0.1:0",
        hello.to_str().unwrap(),
        echo.to_str().unwrap(),
    ]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("route conflict") && err.contains("hello") && err.contains("echo"),
        "{err}"
    );
}
