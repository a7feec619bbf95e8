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
    let cases: [(&str, &str, &[&str]); 4] = [
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
        ("spin", "not supported yet"),
    ] {
        let reference = reg.reference(&format!("wasm/odd:{tag}"));
        let (code, err) = serve_fails(&reference, &["--insecure-unsigned"]);
        assert_eq!(code, 65, "{tag}: {err}");
        assert!(err.contains(needle), "{tag}: {err}");
    }
    // The spin refusal names Spin's media type.
    let (_, err) = serve_fails(&reg.reference("wasm/odd:spin"), &["--insecure-unsigned"]);
    assert!(err.contains(media::SPIN_APP_CONFIG), "{err}");
}
