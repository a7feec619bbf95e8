//! Foreign artifacts from a real registry (Debian's `docker-registry`, started per test): a plain
//! component pushed in the CNCF Wasm OCI layout by a client no one here wrote (the `oras`
//! Python package), refused by `outpost serve oci://…` until `outpost bundle sign oci://…`
//! attaches a signature over its manifest, then served; and manifests of other shapes (pushed
//! with Outpost's own client) refused with an error naming what was found.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use common::registry::{Registry, RegistrySetup};
use common::*;
use outpost::oci::{Client, ClientOptions, ImageManifest, media};

/// Whether `import oras` works. Without it the oras half is skipped with a printed line,
/// except under CI, where it is a failure (`.ci/run` installs it).
fn oras_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import oras"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 cannot import oras: pip install oras==0.2.25 (see .ci/run)"
        );
        eprintln!("SKIPPED: python3 cannot import oras (pip install oras==0.2.25)");
    }
    ok
}

/// Pushes the test bed's `hello` component to `target` (`HOST:PORT/REPO:TAG`) with oras-py,
/// in the CNCF Wasm layout: a config JSON of `media::WASM_CONFIG`, one `application/wasm` layer.
fn oras_push(dir: &Path, host: &str, target: &str) {
    std::fs::copy(wasm("hello"), dir.join("hello.wasm")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architecture":"wasm","os":"wasip2","layerDigests":[]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("push.py"),
        "import sys\n\
         import oras.client\n\
         host, target, layer, config = sys.argv[1:5]\n\
         client = oras.client.OrasClient(hostname=host, insecure=True)\n\
         client.push(target=target, files=['hello.wasm:' + layer],\n\
         \x20           manifest_config='config.json:' + config, disable_path_validation=True)\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .current_dir(dir)
        .args([
            "push.py",
            host,
            target,
            media::WASM_LAYER,
            media::WASM_CONFIG,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras push: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `outpost serve --insecure EXTRA… REFERENCE` on port 0, run to its end (for refusals).
fn serve_fails(reference: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-cache",
        "--insecure",
    ];
    args.extend_from_slice(extra);
    args.push(reference);
    let (code, _, err) = run_to_end(&args);
    (code, err)
}

#[tokio::test]
async fn a_component_pushed_by_oras_is_served_once_outpost_signs_it() {
    if !oras_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel).to_str().unwrap().to_owned();
    for who in ["alice", "mallory"] {
        let (code, _, err) = run_to_end(&["bundle", "keygen", "--out", &p(who)]);
        assert_eq!(code, 0, "{err}");
    }
    let reg = Registry::start(RegistrySetup::default());
    let host = reg.addr.to_string();
    oras_push(
        dir.path(),
        &host,
        &format!("{host}/wasm/hello_world:latest"),
    );
    let reference = reg.reference("wasm/hello_world:latest");

    // Unsigned: refused with the hint, unless --insecure-unsigned.
    let (code, err) = serve_fails(&reference, &["--trust", &p("alice.pub")]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("no Outpost signature is attached"), "{err}");
    assert!(err.contains("outpost bundle sign oci://"), "{err}");
    let d = Daemon::serve(&["--insecure", "--insecure-unsigned", &reference]);
    let r = get(d.addr(), "/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));
    d.expect_log(&["WITHOUT checking any signature"]);
    drop(d);

    // The tag is no release version: --version is asked for.
    let sign = |key: &str, extra: &[&str]| {
        let mut args = vec!["bundle", "sign", &reference, "--key", key, "--insecure"];
        args.extend_from_slice(extra);
        run_to_end(&args)
    };
    let (code, _, err) = sign(&p("alice.key"), &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("pass --version X.Y.Z"), "{err}");
    let (code, pinned, err) = sign(&p("alice.key"), &["--version", "1.0.0"]);
    assert_eq!(code, 0, "{err}\n{}", reg.log());
    assert!(err.contains("Wasm component manifest"), "{err}");
    let pinned = pinned.trim().to_owned();
    assert!(pinned.contains("/wasm/hello_world@sha256:"), "{pinned}");

    // Signed by alice: served under --trust alice (by tag and by the pinned digest), named
    // after the signed document's app; refused under another key.
    for target in [&reference, &pinned] {
        let d = Daemon::serve(&["--insecure", "--trust", &p("alice.pub"), target]);
        let r = get(d.addr(), "/").await;
        assert_eq!((r.status, r.body.as_str()), (200, "hello from outpost\n"));
        d.expect_log(&["pulled component from the registry", "hello-world"]);
    }
    let (code, err) = serve_fails(&reference, &["--trust", &p("mallory.pub")]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("none of the 1 signature file(s)"), "{err}");

    // A second signature by another key is one more signature artifact; either key will do.
    let (code, _, err) = sign(
        &p("mallory.key"),
        &["--version", "1.0.0", "--app", "greeter"],
    );
    assert_eq!(code, 0, "{err}");
    let d = Daemon::serve(&["--insecure", "--trust", &p("mallory.pub"), &reference]);
    let r = get(d.addr(), "/").await;
    assert_eq!(r.status, 200);
    d.expect_log(&["pulled component from the registry", "greeter"]);
}

#[test]
fn manifests_not_in_the_cncf_layout_are_refused_naming_what_was_found() {
    let reg = Registry::start(RegistrySetup::default());
    let client = Client::new(
        &reg.addr.to_string(),
        ClientOptions {
            insecure: true,
            docker_config: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let component = Bytes::from(std::fs::read(wasm("hello")).unwrap());
    // (tag, config media type, layer media types)
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "two",
            media::WASM_CONFIG,
            &[media::WASM_LAYER, media::WASM_LAYER],
        ),
        (
            "image",
            "application/vnd.oci.image.config.v1+json",
            &[media::WASM_LAYER],
        ),
        ("layer", media::WASM_CONFIG, &["application/octet-stream"]),
        ("spin", media::SPIN_APP_CONFIG, &[media::SPIN_WASM_LAYER]),
        (
            "archive",
            media::SPIN_APP_CONFIG,
            &[media::SPIN_WASM_LAYER, media::SPIN_ARCHIVE_LAYER],
        ),
    ];
    rt.block_on(async {
        for (tag, config_type, layer_types) in cases {
            let config = client
                .push_blob("wasm/odd", config_type, Bytes::from_static(b"{}"), &|_| ())
                .await
                .unwrap();
            let mut layers = Vec::new();
            for t in layer_types {
                layers.push(
                    client
                        .push_blob("wasm/odd", t, component.clone(), &|_| ())
                        .await
                        .unwrap(),
                );
            }
            let manifest = ImageManifest::new(config, layers);
            client
                .put_manifest(
                    "wasm/odd",
                    tag,
                    media::OCI_MANIFEST,
                    Bytes::from(manifest.to_bytes()),
                )
                .await
                .unwrap();
        }
    });
    for (tag, needle) in [
        ("two", "2 layers (application/wasm, application/wasm)"),
        ("image", "\"application/vnd.oci.image.config.v1+json\""),
        (
            "layer",
            "\"application/octet-stream\" (expected application/wasm)",
        ),
        ("spin", "not a Spin locked app"),
        ("archive", "an archive layer"),
    ] {
        let reference = reg.reference(&format!("wasm/odd:{tag}"));
        let (code, err) = serve_fails(&reference, &["--insecure-unsigned"]);
        assert_eq!(code, 65, "{tag}: {err}");
        assert!(err.contains(needle), "{tag}: {err}");
    }
    // The archive refusal names Spin's media type and what to do.
    let (_, err) = serve_fails(&reg.reference("wasm/odd:archive"), &["--insecure-unsigned"]);
    assert!(err.contains(media::SPIN_ARCHIVE_LAYER), "{err}");
    assert!(err.contains("SPIN_OCI_ARCHIVE_LAYERS"), "{err}");
}

/// The app `testbed/oci/spin-push.py` pushes: three components built with real toolchains (two
/// with the Spin SDK), a key-value grant, a variable with a template, a file big enough for a
/// layer and one small enough to be inlined.
const SPIN_APP: &str = r#"{
  "name": "registry-shop", "version": "1.0.0",
  "variables": {"greeting": {"default": "hello from the registry"}, "token": {"secret": true, "default": "s3cret"}},
  "triggers": [
    {"id": "trigger-set", "route": "/set/...", "component": "kv"},
    {"id": "trigger-get", "route": "/get/...", "component": "kv"},
    {"id": "trigger-greeting", "route": "/greeting", "component": "vars"},
    {"id": "trigger-static", "route": "/static/...", "component": "files"}
  ],
  "components": [
    {"id": "kv", "wasm": "spin-kv.wasm", "key_value_stores": ["default"]},
    {"id": "vars", "wasm": "spin-vars.wasm", "config": {"greeting": "{{ greeting }}!"}},
    {"id": "files", "wasm": "files.wasm",
     "files": {"static/page.html": "page.html", "static/tiny.txt": "tiny.txt"}}
  ]
}"#;

/// Pushes [`SPIN_APP`] to `target` with `testbed/oci/spin-push.py` (oras-py, Spin's layout);
/// `old_layout` puts the locked app in the config, as Spins before 2.3 did.
fn spin_push(dir: &Path, host: &str, target: &str, old_layout: bool) {
    for (guest, file) in [
        ("spin_kv", "spin-kv.wasm"),
        ("spin_vars", "spin-vars.wasm"),
        ("files", "files.wasm"),
    ] {
        std::fs::copy(wasm(guest), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("page.html"), "<p>".repeat(100)).unwrap();
    std::fs::write(dir.join("tiny.txt"), "inline\n").unwrap();
    std::fs::write(dir.join("app.json"), SPIN_APP).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/oci/spin-push.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args([host, target])
        .arg(dir.join("app.json"));
    if old_layout {
        cmd.arg("--old-layout");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "spin-push.py: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Spin app pushed in `spin registry push`'s layout (both of Spin's layouts) is refused
/// unsigned, served with `--insecure-unsigned`, and served under `--trust` once `outpost bundle
/// sign oci://…` signs its manifest: routes, key-value, a templated variable and files (a
/// layer and an inlined one) as the locked app says.
#[tokio::test]
async fn a_spin_app_pushed_in_spins_layout_is_served_once_outpost_signs_it() {
    if !oras_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |rel: &str| dir.path().join(rel).to_str().unwrap().to_owned();
    let (code, _, err) = run_to_end(&["bundle", "keygen", "--out", &p("alice")]);
    assert_eq!(code, 0, "{err}");
    let reg = Registry::start(RegistrySetup::default());
    let host = reg.addr.to_string();
    spin_push(dir.path(), &host, &format!("{host}/spin/shop:1.0.0"), false);
    spin_push(
        dir.path(),
        &host,
        &format!("{host}/spin/shop-old:1.0.0"),
        true,
    );
    let reference = reg.reference("spin/shop:1.0.0");

    let (code, err) = serve_fails(&reference, &["--trust", &p("alice.pub")]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("no Outpost signature is attached to this Spin app"),
        "{err}"
    );
    assert!(err.contains("outpost bundle sign oci://"), "{err}");

    let check = async |d: &Daemon| {
        let r = get(d.addr(), "/greeting").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello from the registry!")
        );
        let r = request(d.addr(), "POST", "/set/default/visits", b"3").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{}", r.body);
        let r = get(d.addr(), "/get/default/visits").await;
        assert_eq!((r.status, r.body.as_str()), (200, "3"));
        let r = get(d.addr(), "/static/page.html").await;
        assert_eq!((r.status, r.body), (200, "<p>".repeat(100)));
        let r = get(d.addr(), "/static/tiny.txt").await;
        assert_eq!((r.status, r.body.as_str()), (200, "inline\n"));
        // Only the component's files are granted: not the app's spin.toml or Wasm.
        assert_eq!(get(d.addr(), "/static/../spin.toml").await.status, 404);
        assert_eq!(get(d.addr(), "/elsewhere").await.status, 404);
    };
    for r in [&reference, &reg.reference("spin/shop-old:1.0.0")] {
        let d = Daemon::serve(&["--insecure", "--insecure-unsigned", r]);
        check(&d).await;
        d.expect_log(&[
            "WITHOUT checking any signature",
            "pulled Spin app from the registry",
        ]);
    }

    // Signed: the tag is the version; served under the signed name.
    let (code, pinned, err) = run_to_end(&[
        "bundle",
        "sign",
        &reference,
        "--key",
        &p("alice.key"),
        "--insecure",
        "--app",
        "shop",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Spin app manifest"), "{err}");
    for target in [reference.as_str(), pinned.trim()] {
        let d = Daemon::serve(&["--insecure", "--trust", &p("alice.pub"), target]);
        check(&d).await;
        d.expect_log(&[
            "pulled Spin app from the registry",
            "served as app \"shop\"",
        ]);
    }

    // `bundle pull` writes the Spin app directory it was pushed from, whole; it serves as one.
    let pull = || {
        run_to_end(&[
            "bundle",
            "pull",
            &reference,
            "-o",
            &p("pulled"),
            "--insecure",
        ])
    };
    let (code, out, err) = pull();
    assert_eq!(code, 0, "{err}");
    let app_dir = out.trim().to_owned();
    assert!(app_dir.ends_with("registry-shop-1.0.0"), "{app_dir}");
    assert!(Path::new(&app_dir).join("spin.toml").is_file());
    let d = Daemon::serve(&[&app_dir]);
    check(&d).await;
    let (code, _, err) = pull();
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let left: Vec<_> = std::fs::read_dir(p("pulled")).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
