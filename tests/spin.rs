//! Spin apps as they are, through the real binary: a directory with `spin.toml` (and no
//! `outpost.toml`) served by `outpost serve` and `[[app]]`, Spin's route precedence, variables
//! with `{{ }}` templates from `--var` and node config, `outpost spin convert`, `outpost bundle
//! pack` of a Spin directory, and refusals naming the `spin.toml` field.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;

/// A temp directory with `spin.toml` = `manifest` and the named guests copied in as
/// `<name>.wasm`.
fn spin_dir(manifest: &str, apps: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
    for a in apps {
        std::fs::copy(
            wasm(a),
            dir.path().join(format!("{}.wasm", a.replace('_', "-"))),
        )
        .unwrap();
    }
    dir
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exact routes beat wildcards, the longest wildcard beats a shorter one, `/...` catches the
/// rest — Spin's rules, across two components.
const TWO_COMPONENTS: &str = r#"
spin_manifest_version = 2

[application]
name = "spin_routes"
version = "1.0.0"

[[trigger.http]]
route = "/hello"
component = "hello"

[[trigger.http]]
route = "/static/..."
component = "hello"

[[trigger.http]]
route = "/..."
component = "echo"

[[trigger.http]]
route = "/static/echo/..."
component = "echo"

[component.hello]
source = "hello.wasm"
[component.hello.build]
command = "cargo build --release"

[component.echo]
source = "echo.wasm"
"#;

#[tokio::test]
async fn a_spin_app_directory_is_served_with_spins_route_precedence() {
    let dir = spin_dir(TWO_COMPONENTS, &["hello", "echo"]);
    let d = Daemon::serve(&[path_str(dir.path())]);
    let is_hello = |r: &Resp| r.status == 200 && r.body.starts_with("hello from outpost");
    let is_echo = |r: &Resp, path: &str| r.status == 200 && r.headers["x-echo-path"] == path;

    // The exact route: /hello (and /hello/), never below it.
    assert!(is_hello(&get(d.addr(), "/hello").await));
    assert!(is_hello(&get(d.addr(), "/hello/").await));
    let r = get(d.addr(), "/hello/x").await;
    assert!(is_echo(&r, "/hello/x"), "{r:?}");
    // The catch-all.
    let r = request(d.addr(), "POST", "/other?q=1", b"ping").await;
    assert!(is_echo(&r, "/other?q=1"), "{r:?}");
    assert_eq!(r.body, "ping");
    let r = get(d.addr(), "/").await;
    assert!(is_echo(&r, "/"), "{r:?}");
    // The longest wildcard wins.
    assert!(is_hello(&get(d.addr(), "/static").await));
    assert!(is_hello(&get(d.addr(), "/static/a.css").await));
    let r = get(d.addr(), "/static/echo/z").await;
    assert!(is_echo(&r, "/static/echo/z"), "{r:?}");

    // The app name was made an outpost name, and the ignored build table noted.
    let log = d.wait_log(&["spin-routes", "build is ignored"]);
    assert!(log.contains("app=spin-routes"), "{log}");
    assert!(log.contains("component.hello.build is ignored"), "{log}");
}

#[tokio::test]
async fn outpost_toml_wins_over_spin_toml() {
    let dir = spin_dir(TWO_COMPONENTS, &["hello", "echo"]);
    std::fs::write(
        dir.path().join("outpost.toml"),
        manifest(
            "native",
            "1.0.0",
            "[component.hello]\nsource = \"hello.wasm\"\nroutes = [\"/\"]\n",
        ),
    )
    .unwrap();
    let d = Daemon::serve(&[path_str(dir.path())]);
    let r = get(d.addr(), "/other").await;
    assert!(r.body.starts_with("hello from outpost"), "{r:?}");
    let log = d.wait_log(&["app=native"]);
    assert!(log.contains("app=native"), "{log}");
}

/// config-reader answers `GET /<key>` with a variable's value.
const VARIABLES: &str = r#"
spin_manifest_version = 2

[application]
name = "vars"
version = "1.0.0"

[variables]
greeting = { default = "hi" }
token = { required = true, secret = true }

[[trigger.http]]
route = "/..."
component = "reader"

[component.reader]
source = "config-reader.wasm"
[component.reader.variables]
message = "{{ greeting }}, {{token}}!"
plain = "as is"
"#;

#[tokio::test]
async fn variables_come_from_var_and_defaults_and_secrets_stay_out_of_logs() {
    let dir = spin_dir(VARIABLES, &["config_reader"]);
    let d = Daemon::serve(&[
        "--var",
        "token=s3cret-value",
        "--var",
        "unused=1",
        path_str(dir.path()),
    ]);
    let r = get(d.addr(), "/message").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hi, s3cret-value!"));
    assert_eq!(get(d.addr(), "/plain").await.body, "as is");
    assert_eq!(
        get(d.addr(), "/token").await.status,
        404,
        "app variables are not component variables"
    );
    let d2 = Daemon::serve(&[
        "--var",
        "token=t",
        "--var",
        "greeting=hello",
        path_str(dir.path()),
    ]);
    assert_eq!(get(d2.addr(), "/message").await.body, "hello, t!");
    assert!(!d.stderr().contains("s3cret"), "{}", d.stderr());
}

#[test]
fn a_missing_required_variable_is_a_load_error_naming_it() {
    let dir = spin_dir(VARIABLES, &["config_reader"]);
    let (code, _, stderr) = run_to_end(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-cache",
        path_str(dir.path()),
    ]);
    assert_eq!(code, 65, "{stderr}");
    let spin_toml = dir.path().join("spin.toml");
    assert!(
        stderr.contains(&format!(
            "{}: variables.token: required, but no value was supplied",
            spin_toml.display()
        )),
        "{stderr}"
    );
    let (code, _, stderr) = run_to_end(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--var",
        "Bad=s3cret",
        path_str(dir.path()),
    ]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("--var: invalid variable name \"Bad\""),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the value is never echoed: {stderr}"
    );
}

#[tokio::test]
async fn node_config_apps_take_spin_directories_and_their_variables() {
    let dir = spin_dir(VARIABLES, &["config_reader"]);
    let state = tempfile::tempdir().unwrap();
    let cfg = write_node_config(
        state.path(),
        "outpost.toml",
        "",
        &format!(
            "[[app]]\nsource = \"{}\"\nvariables = {{ token = \"from-config\" }}\n",
            path_str(dir.path())
        ),
    );
    let d = Daemon::run_config(&cfg);
    let r = get(d.addr(), "/message").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hi, from-config!"));
    assert!(!d.stderr().contains("from-config"), "{}", d.stderr());
}

#[test]
fn spin_convert_prints_the_outpost_toml_it_is_served_as() {
    let dir = spin_dir(TWO_COMPONENTS, &["hello", "echo"]);
    let spin_toml = dir.path().join("spin.toml");
    let (code, stdout, stderr) = run_to_end(&["spin", "convert", path_str(&spin_toml)]);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "manifest_version = 1",
        "name = \"spin-routes\"",
        "[component.hello]",
        "routes = [{ exact = \"/hello\" }, \"/static/...\"]",
        "[component.echo]",
        "routes = [\"/...\", \"/static/echo/...\"]",
        "# note: component.hello.build is ignored",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "{line:?} not in:\n{stdout}"
        );
    }
    assert!(
        stderr.contains("note: component.hello.build is ignored"),
        "{stderr}"
    );
    // The printed text is an app manifest of its own: served beside the wasm, it routes alike.
    let (code, dir_stdout, _) = run_to_end(&["spin", "convert", path_str(dir.path())]);
    assert_eq!((code, dir_stdout.as_str()), (0, stdout.as_str()));
    std::fs::write(dir.path().join("outpost.toml"), &stdout).unwrap();
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("converted.bundle");
    let (code, _, stderr) = run_to_end(&[
        "bundle",
        "pack",
        path_str(dir.path()),
        "-o",
        path_str(&bundle),
    ]);
    assert_eq!(code, 0, "{stderr}");

    let (code, _, stderr) = run_to_end(&["spin", "convert", "/nonexistent/spin.toml"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("/nonexistent/spin.toml: no such file"),
        "{stderr}"
    );
    let (code, _, stderr) = run_to_end(&["spin", "convert", "--help"]);
    assert_eq!(code, 0);
    assert!(stderr.is_empty());
}

#[test]
fn unsupported_spin_fields_are_refused_by_name() {
    for (edit, key, needle) in [
        (
            "[component.echo]\nsource = { url = \"https://example.com/echo.wasm\", digest = \"sha256:00\" }\n",
            "component.echo.source",
            "a { url, digest } source is not supported",
        ),
        (
            "[component.echo]\nsource = \"echo.wasm\"\nsqlite_databases = [\"default\"]\n",
            "component.echo.sqlite_databases",
            "SQLite databases are not supported",
        ),
        (
            "[component.echo]\nsource = \"echo.wasm\"\nai_models = [\"llama2-chat\"]\n",
            "component.echo.ai_models",
            "AI models",
        ),
        (
            "[component.echo]\nsource = \"echo.wasm\"\n[[trigger.redis]]\nchannel = \"c\"\ncomponent = \"echo\"\n",
            "trigger.redis",
            "only HTTP triggers are supported",
        ),
    ] {
        let text = TWO_COMPONENTS.replace("[component.echo]\nsource = \"echo.wasm\"\n", edit);
        let dir = spin_dir(&text, &["hello", "echo"]);
        let spin_toml = dir.path().join("spin.toml");
        let want = format!("{}: {key}: ", spin_toml.display());
        let (code, _, stderr) = run_to_end(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-cache",
            path_str(dir.path()),
        ]);
        assert_eq!(code, 65, "{stderr}");
        assert!(
            stderr.contains(&want) && stderr.contains(needle),
            "{want}{needle}: {stderr}"
        );
        let (code, _, stderr) = run_to_end(&["spin", "convert", path_str(&spin_toml)]);
        assert_eq!(code, 65, "{stderr}");
        assert!(
            stderr.contains(&want) && stderr.contains(needle),
            "{stderr}"
        );
    }
    let dir = spin_dir(
        &TWO_COMPONENTS.replace("spin_manifest_version = 2", "spin_manifest_version = \"1\""),
        &[],
    );
    let (code, _, stderr) = run_to_end(&["spin", "convert", path_str(dir.path())]);
    assert_eq!(code, 65, "{stderr}");
    assert!(
        stderr.contains("spin_manifest_version: \"1\" is Spin manifest version 1"),
        "{stderr}"
    );
}

/// `bundle pack` of a Spin directory: the bundle's manifest is the converted `outpost.toml`,
/// and it holds only what the app uses (not the sources or build tree beside them).
#[tokio::test]
async fn a_packed_spin_directory_is_an_ordinary_bundle() {
    let dir = spin_dir(
        &TWO_COMPONENTS.replace(
            "[component.echo]\nsource = \"echo.wasm\"\n",
            "[component.echo]\nsource = \"echo.wasm\"\nfiles = [\"static/**/*\"]\n",
        ),
        &["hello", "echo"],
    );
    std::fs::create_dir_all(dir.path().join("static/css")).unwrap();
    std::fs::write(dir.path().join("static/css/a.css"), "a{}").unwrap();
    std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
    std::fs::write(dir.path().join("target/debug/big.bin"), vec![0u8; 4096]).unwrap();
    std::fs::write(dir.path().join("Cargo.toml"), "[package]\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let bundle = out.path().join("app.bundle");
    let (code, _, stderr) = run_to_end(&[
        "bundle",
        "pack",
        path_str(dir.path()),
        "-o",
        path_str(&bundle),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run_to_end(&["bundle", "inspect", path_str(&bundle)]);
    assert_eq!(code, 0, "{stderr}");
    for f in [
        "outpost.toml",
        "spin.toml",
        "hello.wasm",
        "echo.wasm",
        "static/css/a.css",
    ] {
        assert!(stdout.contains(f), "{f} not in {stdout}");
    }
    for f in ["target/debug/big.bin", "Cargo.toml"] {
        assert!(!stdout.contains(f), "{f} in {stdout}");
    }
    let d = Daemon::serve(&["--insecure-unsigned", path_str(&bundle)]);
    assert!(
        get(d.addr(), "/hello")
            .await
            .body
            .starts_with("hello from outpost")
    );
    let r = get(d.addr(), "/hello/x").await;
    assert_eq!(r.headers["x-echo-path"], "/hello/x");
}

/// Spin's file globs reach the guest as the directories they select whole: `static/**/*` is
/// `static` at `/static`, `{ source, destination }` is that directory there, and nothing else
/// of the app directory is visible.
#[tokio::test]
async fn spin_file_grants_reach_the_guest() {
    let dir = spin_dir(
        r#"
spin_manifest_version = 2
[application]
name = "files"
version = "1.0.0"
[[trigger.http]]
route = "/..."
component = "files"
[component.files]
source = "files.wasm"
files = ["static/**/*", { source = "assets", destination = "/data" }]
exclude_files = ["*.txt"]
"#,
        &["files"],
    );
    std::fs::create_dir_all(dir.path().join("static/css")).unwrap();
    std::fs::write(dir.path().join("static/css/a.css"), "a{}").unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/b.json"), "{}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside the grant\n").unwrap();
    let d = Daemon::serve(&[path_str(dir.path())]);
    let r = get(d.addr(), "/static/css/a.css").await;
    assert_eq!((r.status, r.body.as_str()), (200, "a{}"));
    let r = get(d.addr(), "/data/b.json").await;
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert_eq!(get(d.addr(), "/secret.txt").await.status, 404);
    assert_eq!(get(d.addr(), "/spin.toml").await.status, 404);
}

/// A signed bundle's variables come from node config: its `[[app]]` entry's own `variables`,
/// and `[variables.APP]` by app name — which also reaches a release in the store no `[[app]]`
/// names (as a control-plane release is). A required secret without a value stops the start
/// with the field and where to set it; no value reaches the logs.
#[tokio::test]
async fn a_signed_bundles_variables_come_from_node_config() {
    let dir = spin_dir(VARIABLES, &["config_reader"]);
    let lab = tempfile::tempdir().unwrap();
    let at = |rel: &str| lab.path().join(rel).to_str().unwrap().to_owned();
    for args in [
        vec!["bundle", "keygen", "--out", &at("alice")],
        vec![
            "bundle",
            "pack",
            path_str(dir.path()),
            "-o",
            &at("vars.bundle"),
        ],
        vec![
            "bundle",
            "sign",
            &at("vars.bundle"),
            "--key",
            &at("alice.key"),
        ],
    ] {
        let (code, _, err) = run_to_end(&args);
        assert_eq!(code, 0, "outpost {}: {err}", args.join(" "));
    }
    let node = |name: &str, rest: &str| {
        let cfg = lab.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[node]\nstate_dir = \"state\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n\
                 admin = \"127.0.0.1:0\"\n[trust]\nkeys = [\"alice.pub\"]\n{rest}\n"
            ),
        )
        .unwrap();
        cfg
    };
    let bundle_app = "[[app]]\nsource = \"vars.bundle\"\n";

    let bare = node("bare", bundle_app);
    let (code, _, stderr) = run_to_end(&["run", "--config", path_str(&bare), "--check"]);
    assert_eq!(code, 65, "{stderr}");
    for needle in [
        "variables.token: required, but no value was supplied",
        "[variables.vars]",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }

    // The entry's own values win over the ones by app name; the others still apply.
    let both = node(
        "both",
        &format!(
            "{bundle_app}variables = {{ token = \"from-app-entry\" }}\n\
             [variables.vars]\ntoken = \"from-node\"\ngreeting = \"hey\"\n"
        ),
    );
    let d = Daemon::run_config(&both);
    let r = get(d.addr(), "/message").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hey, from-app-entry!"));
    drop(d);

    // No [[app]] now: the release stays in the store and is served as an installed app, with
    // the values node config gives its name.
    let by_name = node("by-name", "[variables.vars]\ntoken = \"from-node\"\n");
    let d = Daemon::run_config(&by_name);
    let r = get(d.addr(), "/message").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hi, from-node!"));
    // A reload does not load an installed release again: it says so.
    std::fs::write(
        &by_name,
        std::fs::read_to_string(&by_name)
            .unwrap()
            .replace("from-node", "rotated-value"),
    )
    .unwrap();
    d.signal("HUP");
    d.expect_log(&["variables changed for an app this reload does not load again"]);
    assert_eq!(get(d.addr(), "/message").await.body, "hi, from-node!");
    let log = d.stderr();
    for secret in ["from-node", "from-app-entry", "rotated-value"] {
        assert!(!log.contains(secret), "{secret} in {log}");
    }
}
