//! Signed bundles through real OCI registries: `outpost bundle push` and `bundle pull` against
//! Debian's `docker-registry` (distribution 2.8, which has no referrers API, so the signature
//! is found by the `sha256-<hex>` tag) — anonymous, behind htpasswd basic auth, and with TLS
//! from a private CA — and every bad input a registry can send, each a clear error with nothing
//! written. The OCI client is also driven directly for what the CLI does not reach (chunked
//! uploads, caps, hand-made lying manifests).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::registry::{Registry, RegistrySetup, TestCa};
use common::*;
use outpost::oci::{self, Client, ClientOptions, Descriptor, ImageManifest, media};

/// A scratch area with a key pair and one signed bundle `greeter 1.0.0`.
struct Lab {
    dir: tempfile::TempDir,
    /// The public key line.
    public: String,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel).to_str().unwrap().to_owned();
        let (code, out, err) = run_to_end(&["bundle", "keygen", "--out", &p("k")]);
        assert_eq!(code, 0, "{err}");
        let app = dir.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(
            app.join("outpost.toml"),
            manifest(
                "greeter",
                "1.0.0",
                "[component.main]\nsource = \"config-reader.wasm\"\nroutes = [\"/\"]\n",
            ),
        )
        .unwrap();
        std::fs::copy(wasm("config_reader"), app.join("config-reader.wasm")).unwrap();
        let (code, _, err) = run_to_end(&["bundle", "pack", &p("app"), "-o", &p("greeter.bundle")]);
        assert_eq!(code, 0, "{err}");
        let (code, _, err) =
            run_to_end(&["bundle", "sign", &p("greeter.bundle"), "--key", &p("k.key")]);
        assert_eq!(code, 0, "{err}");
        Self {
            dir,
            public: out.trim_end().to_owned(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_owned()
    }

    fn bundle(&self) -> Vec<u8> {
        std::fs::read(self.path("greeter.bundle")).unwrap()
    }
}

/// Runs the binary with a clean HOME (no Docker config) and `env`; (exit code, stdout, stderr).
fn outpost(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("HOME", home.path())
        .env_remove("DOCKER_CONFIG")
        .env_remove("OUTPOST_REGISTRY_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Names of the entries in `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Pulls `reference` into `out` expecting failure; returns stderr, asserting nothing was written.
fn pull_fails(reference: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["bundle", "pull", reference, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, stdout, err) = outpost(&args, &[]);
    assert_ne!(code, 0, "pull of {reference} succeeded: {stdout}");
    assert!(err.contains("error: "), "{err}");
    assert_eq!(entries(out), Vec::<String>::new(), "{reference}: {err}");
    err
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn plain_client(reg: &Registry) -> Client {
    Client::new(
        &reg.addr.to_string(),
        ClientOptions {
            insecure: true,
            docker_config: false,
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn push_then_pull_round_trip_on_an_anonymous_registry() {
    let lab = Lab::new();
    let reg = Registry::start(RegistrySetup::default());
    let reference = reg.reference("apps/greeter:1.0.0");
    // HTTPS is the default, 127.0.0.1 included; a plain-HTTP registry says to pass --insecure.
    let (code, _, err) = outpost(
        &["bundle", "push", &lab.s("greeter.bundle"), &reference],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("pass --insecure"), "{err}");
    let (code, pinned, err) = outpost(
        &[
            "bundle",
            "push",
            &lab.s("greeter.bundle"),
            &reference,
            "--insecure",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{}", reg.log());
    let pinned = pinned.trim().to_owned();
    let prefix = format!("oci://{}/apps/greeter@sha256:", reg.addr);
    assert!(pinned.starts_with(&prefix), "{pinned}");
    assert!(err.contains("pushed greeter 1.0.0"), "{err}");
    assert!(err.contains("listed at tag sha256-"), "{err}");

    // By tag and by the printed digest: the same bytes come back, and verify.
    for (i, r) in [reference.as_str(), pinned.as_str()]
        .into_iter()
        .enumerate()
    {
        let out = lab.path(&format!("pulled{i}"));
        let (code, path, err) = outpost(
            &[
                "bundle",
                "pull",
                r,
                "-o",
                out.to_str().unwrap(),
                "--insecure",
            ],
            &[],
        );
        assert_eq!(code, 0, "{r}: {err}");
        let bundle = out.join("greeter-1.0.0.bundle");
        assert_eq!(path.trim(), bundle.to_str().unwrap());
        assert_eq!(std::fs::read(&bundle).unwrap(), lab.bundle());
        assert_eq!(
            std::fs::read(out.join("greeter-1.0.0.bundle.sig")).unwrap(),
            std::fs::read(lab.path("greeter.bundle.sig")).unwrap()
        );
        let (code, ok, err) = outpost(
            &[
                "bundle",
                "verify",
                bundle.to_str().unwrap(),
                "--trust",
                &lab.public,
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        assert!(ok.starts_with("ok: greeter 1.0.0"), "{ok}");
    }

    // The layout as the registry holds it: the tag, the fallback referrers tag, and a bundle
    // manifest of one Outpost layer.
    let client = plain_client(&reg);
    let rt = runtime();
    let digest = pinned.rsplit_once('@').unwrap().1.to_owned();
    let tags = rt.block_on(client.list_tags("apps/greeter")).unwrap();
    let fallback = format!("sha256-{}", digest.trim_start_matches("sha256:"));
    assert!(tags.contains(&"1.0.0".to_owned()), "{tags:?}");
    assert!(tags.contains(&fallback), "{tags:?}");
    let m = rt
        .block_on(client.get_manifest("apps/greeter", &digest))
        .unwrap();
    let oci::Manifest::Image(m) = m.manifest else {
        panic!("not an image manifest")
    };
    assert_eq!(m.config.media_type, media::OUTPOST_BUNDLE_CONFIG);
    assert_eq!(m.layers.len(), 1);
    assert_eq!(m.layers[0].media_type, media::OUTPOST_BUNDLE_LAYER);
    let (refs, source) = rt
        .block_on(client.referrers(
            "apps/greeter",
            &digest.parse().unwrap(),
            Some(media::OUTPOST_SIGNATURE_ARTIFACT),
        ))
        .unwrap();
    assert_eq!(source, oci::client::ReferrersSource::FallbackTag);
    assert_eq!(refs.len(), 1, "{refs:?}");

    // Pushing again changes nothing: same digest, still one referrer.
    let (code, again, err) = outpost(
        &[
            "bundle",
            "push",
            &lab.s("greeter.bundle"),
            &reference,
            "--insecure",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(again.trim(), pinned);
    let (refs, _) = rt
        .block_on(client.referrers("apps/greeter", &digest.parse().unwrap(), None))
        .unwrap();
    assert_eq!(refs.len(), 1, "{refs:?}");
}

#[test]
fn basic_auth_registry_with_flags_env_and_docker_config() {
    let lab = Lab::new();
    let reg = Registry::start(RegistrySetup {
        user: Some(("alice", "s3cret-pw")),
        tls: None,
    });
    let reference = reg.reference("greeter:1.0.0");
    let bundle = lab.s("greeter.bundle");

    // No credentials: refused, saying how to give them.
    let (code, _, err) = outpost(&["bundle", "push", &bundle, &reference, "--insecure"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("requires credentials"), "{err}");

    let (code, _, err) = outpost(
        &[
            "bundle",
            "push",
            &bundle,
            &reference,
            "--insecure",
            "--username",
            "alice",
            "--password",
            "s3cret-pw",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{}", reg.log());

    // The password from the environment.
    let out = lab.path("env");
    let (code, _, err) = outpost(
        &[
            "bundle",
            "pull",
            &reference,
            "-o",
            out.to_str().unwrap(),
            "--insecure",
            "--username",
            "alice",
        ],
        &[("OUTPOST_REGISTRY_PASSWORD", "s3cret-pw")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(out.join("greeter-1.0.0.bundle")).unwrap(),
        lab.bundle()
    );

    // From a Docker config file in $DOCKER_CONFIG.
    let docker = lab.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw");
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let out = lab.path("docker-pull");
    let (code, _, err) = outpost(
        &[
            "bundle",
            "pull",
            &reference,
            "-o",
            out.to_str().unwrap(),
            "--insecure",
        ],
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(out.join("greeter-1.0.0.bundle")).unwrap(),
        lab.bundle()
    );

    // A wrong password: a clear refusal, nothing written, the password never printed.
    let out = lab.path("wrong");
    let err = pull_fails(
        &reference,
        &out,
        &[
            "--insecure",
            "--username",
            "alice",
            "--password",
            "not-the-password",
        ],
    );
    assert!(
        err.contains("refused the credentials of user \"alice\""),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");

    // A password in the environment without a user name is not silently dropped.
    let (code, _, err) = outpost(
        &[
            "bundle",
            "pull",
            &reference,
            "-o",
            out.to_str().unwrap(),
            "--insecure",
        ],
        &[("OUTPOST_REGISTRY_PASSWORD", "s3cret-pw")],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no --username"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");
    assert_eq!(entries(&out), Vec::<String>::new());
}

#[test]
fn tls_registry_with_a_private_ca() {
    let lab = Lab::new();
    let ca = TestCa::new(lab.dir.path());
    let reg = Registry::start(RegistrySetup {
        user: None,
        tls: Some(&ca),
    });
    let reference = reg.reference("greeter:1.0.0");
    let ca_file = ca.ca_pem.to_str().unwrap();

    // Without the CA: a certificate error that says what to do.
    let (code, _, err) = outpost(
        &["bundle", "push", &lab.s("greeter.bundle"), &reference],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("certificate") && err.contains("--ca-file"),
        "{err}"
    );
    // Plain HTTP to a TLS registry says so too.
    let (code, _, err) = outpost(
        &[
            "bundle",
            "push",
            &lab.s("greeter.bundle"),
            &reference,
            "--insecure",
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("leave out --insecure"), "{err}");

    let (code, _, err) = outpost(
        &[
            "bundle",
            "push",
            &lab.s("greeter.bundle"),
            &reference,
            "--ca-file",
            ca_file,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}\n{}", reg.log());
    let out = lab.path("pulled");
    let (code, _, err) = outpost(
        &[
            "bundle",
            "pull",
            &reference,
            "-o",
            out.to_str().unwrap(),
            "--ca-file",
            ca_file,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(out.join("greeter-1.0.0.bundle")).unwrap(),
        lab.bundle()
    );

    let err = pull_fails(&reference, &lab.path("no-ca"), &[]);
    assert!(err.contains("certificate"), "{err}");
}

/// Pushes a hand-made bundle manifest to `repo:tag`: `layer_type` for the layer, and the layer
/// descriptor's size changed by `size_delta`. The config says what the descriptor says.
fn push_crafted(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    repo: &str,
    tag: &str,
    bundle: &[u8],
    layer_type: &str,
    size_delta: i64,
) {
    rt.block_on(async {
        let mut layer = client
            .push_blob(repo, layer_type, Bytes::copy_from_slice(bundle), &|_| ())
            .await
            .unwrap();
        layer.size = (layer.size as i64 + size_delta) as u64;
        let config = oci::artifact::BundleConfig {
            app: "greeter".to_owned(),
            version: "1.0.0".to_owned(),
            digest: layer.digest,
            size: layer.size,
        };
        let config = client
            .push_blob(
                repo,
                media::OUTPOST_BUNDLE_CONFIG,
                Bytes::from(serde_json::to_vec(&config).unwrap()),
                &|_| (),
            )
            .await
            .unwrap();
        let manifest = ImageManifest::new(config, vec![layer]);
        client
            .put_manifest(
                repo,
                tag,
                media::OCI_MANIFEST,
                Bytes::from(manifest.to_bytes()),
            )
            .await
            .unwrap();
    });
}

#[test]
fn bad_input_is_a_clear_error_and_nothing_is_written() {
    let lab = Lab::new();
    let reg = Registry::start(RegistrySetup::default());
    let reference = reg.reference("apps/greeter:1.0.0");
    let (code, pinned, err) = outpost(
        &[
            "bundle",
            "push",
            &lab.s("greeter.bundle"),
            &reference,
            "--insecure",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let pinned = pinned.trim().to_owned();
    let out = lab.path("out");
    let insecure = ["--insecure"];

    // A tag that does not exist.
    let err = pull_fails(&reg.reference("apps/greeter:2.0.0"), &out, &insecure);
    assert!(
        err.contains("manifest apps/greeter:2.0.0: not found"),
        "{err}"
    );

    // A digest the repository does not hold.
    let other = format!(
        "{}@sha256:{}",
        reg.reference("apps/greeter"),
        "ab".repeat(32)
    );
    let err = pull_fails(&other, &out, &insecure);
    assert!(err.contains("not found"), "{err}");

    // A digest that names another manifest: the signature artifact is no bundle.
    let client = plain_client(&reg);
    let rt = runtime();
    let digest: outpost::bundle::Digest = pinned.rsplit_once('@').unwrap().1.parse().unwrap();
    let (refs, _) = rt
        .block_on(client.referrers("apps/greeter", &digest, None))
        .unwrap();
    let sig_ref = format!("{}@{}", reg.reference("apps/greeter"), refs[0].digest);
    let err = pull_fails(&sig_ref, &out, &insecure);
    assert!(err.contains("unknown media type"), "{err}");

    // A bundle over the cap, refused before it is downloaded.
    let err = pull_fails(&reference, &out, &["--insecure", "--max-size", "1KiB"]);
    assert!(err.contains("over the limit of 1024 bytes"), "{err}");

    // A manifest whose layer descriptor lies about the size, both ways.
    let bundle = lab.bundle();
    push_crafted(
        &client,
        &rt,
        "apps/liar",
        "short",
        &bundle,
        media::OUTPOST_BUNDLE_LAYER,
        -10,
    );
    push_crafted(
        &client,
        &rt,
        "apps/liar",
        "long",
        &bundle,
        media::OUTPOST_BUNDLE_LAYER,
        10,
    );
    for tag in ["short", "long"] {
        let err = pull_fails(&reg.reference(&format!("apps/liar:{tag}")), &out, &insecure);
        assert!(
            err.contains("where the descriptor says"),
            "{tag}: {err}\n{}",
            reg.log()
        );
    }

    // A well-formed bundle with no signature attached.
    push_crafted(
        &client,
        &rt,
        "apps/unsigned",
        "1",
        &bundle,
        media::OUTPOST_BUNDLE_LAYER,
        0,
    );
    let err = pull_fails(&reg.reference("apps/unsigned:1"), &out, &insecure);
    assert!(err.contains("no signature file that signs bundle"), "{err}");

    // A layer of a media type Outpost does not know.
    push_crafted(
        &client,
        &rt,
        "apps/odd",
        "1",
        &bundle,
        "application/x-tar",
        0,
    );
    let err = pull_fails(&reg.reference("apps/odd:1"), &out, &insecure);
    assert!(
        err.contains("unknown media type \"application/x-tar\""),
        "{err}"
    );

    // The registry serves other bytes than the digest names (its storage tampered with).
    let hex = outpost::bundle::digest(&bundle).hex();
    let blob = reg.blob_path(&hex);
    let mut tampered = std::fs::read(&blob).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&blob, tampered).unwrap();
    let err = pull_fails(&reference, &out, &insecure);
    assert!(err.contains("content digest is sha256:"), "{err}");
    assert!(err.contains(&format!("expected sha256:{hex}")), "{err}");
}

#[test]
fn client_chunked_upload_caps_and_tags() {
    let reg = Registry::start(RegistrySetup::default());
    let client = Client::new(
        &reg.addr.to_string(),
        ClientOptions {
            insecure: true,
            docker_config: false,
            chunk_size: 16 << 10,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let rt = runtime();
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    rt.block_on(async {
        client.ping().await.unwrap();
        let desc = client
            .push_blob(
                "c/blobs",
                "application/octet-stream",
                Bytes::from(blob.clone()),
                &|_| (),
            )
            .await
            .unwrap();
        assert_eq!(desc.size, blob.len() as u64);
        assert_eq!(
            client.blob_size("c/blobs", &desc.digest).await.unwrap(),
            Some(blob.len() as u64)
        );
        let back = client
            .get_blob_bytes("c/blobs", &desc, 1 << 20, &|_| ())
            .await
            .unwrap();
        assert_eq!(back, blob);

        // Caps are checked before the request.
        let e = client
            .get_blob_bytes("c/blobs", &desc, 1000, &|_| ())
            .await
            .unwrap_err();
        assert!(matches!(e, oci::OciError::TooLarge { .. }), "{e}");
        // A descriptor that names bytes the registry does not have.
        let missing = Descriptor::of("application/octet-stream", b"nope");
        let e = client
            .get_blob_bytes("c/blobs", &missing, 1000, &|_| ())
            .await
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        // A manifest over the manifest cap is refused.
        let small = Client::new(
            &reg.addr.to_string(),
            ClientOptions {
                insecure: true,
                docker_config: false,
                max_manifest_size: 10,
                ..ClientOptions::default()
            },
        )
        .unwrap();
        let config = client
            .push_blob(
                "c/blobs",
                media::OCI_EMPTY,
                Bytes::from_static(b"{}"),
                &|_| (),
            )
            .await
            .unwrap();
        let m = ImageManifest::new(config, vec![desc]);
        client
            .put_manifest(
                "c/blobs",
                "v1",
                media::OCI_MANIFEST,
                Bytes::from(m.to_bytes()),
            )
            .await
            .unwrap();
        let e = small.get_manifest("c/blobs", "v1").await.unwrap_err();
        assert!(matches!(e, oci::OciError::TooLarge { .. }), "{e}");
        assert_eq!(client.list_tags("c/blobs").await.unwrap(), vec!["v1"]);
    });
}

// === Protocol abuse docker-registry cannot produce: a tiny hyper server on 127.0.0.1 ===

mod abuse {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt as _;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt as _, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use outpost::oci::{Client, ClientOptions, Descriptor, OciError};

    type Body = BoxBody<Bytes, Infallible>;

    fn full(status: u16, headers: &[(&str, String)], body: &'static [u8]) -> Response<Body> {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        r.body(Full::new(Bytes::from_static(body)).boxed()).unwrap()
    }

    /// Serves `answer` on 127.0.0.1:0 in the current runtime; returns its address.
    async fn serve<F>(answer: F) -> SocketAddr
    where
        F: Fn(&Request<Incoming>, SocketAddr) -> Response<Body> + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let r = answer(&req, addr);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn client(addr: SocketAddr, opts: ClientOptions) -> Client {
        Client::new(
            &addr.to_string(),
            ClientOptions {
                insecure: true,
                docker_config: false,
                ..opts
            },
        )
        .unwrap()
    }

    static BLOB: [u8; 100] = [7u8; 100];

    fn blob() -> (Vec<u8>, Descriptor) {
        let bytes = BLOB.to_vec();
        let desc = Descriptor::of("application/octet-stream", &bytes);
        (bytes, desc)
    }

    #[test]
    fn a_redirect_loop_is_an_error() {
        super::runtime().block_on(async {
            let addr = serve(|req, _| match req.uri().path() {
                "/loop/a" => full(307, &[("location", "/loop/b".to_owned())], b""),
                "/loop/b" => full(307, &[("location", "/loop/a".to_owned())], b""),
                _ => full(307, &[("location", "/loop/a".to_owned())], b""),
            })
            .await;
            let (_, desc) = blob();
            let e = client(addr, ClientOptions::default())
                .get_blob_bytes("r", &desc, 1000, &|_| ())
                .await
                .unwrap_err();
            assert!(matches!(e, OciError::Redirect { .. }), "{e}");
            assert!(e.to_string().contains("redirect loop"), "{e}");
        });
    }

    #[test]
    fn a_401_loop_stops_after_one_retry() {
        super::runtime().block_on(async {
            let hits = Arc::new(AtomicUsize::new(0));
            let seen = hits.clone();
            let addr = serve(move |req, addr| {
                if req.uri().path() == "/token" {
                    return full(200, &[], br#"{"token":"t0k3n"}"#);
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let challenge = format!(
                    "Bearer realm=\"http://{addr}/token\",service=\"x\",scope=\"repository:r:pull\""
                );
                full(401, &[("www-authenticate", challenge)], b"")
            })
            .await;
            let e = client(addr, ClientOptions::default())
                .get_manifest("r", "v1")
                .await
                .unwrap_err();
            assert!(matches!(e, OciError::Unauthorized { .. }), "{e}");
            assert!(e.to_string().contains("still 401"), "{e}");
            assert!(!e.to_string().contains("t0k3n"), "{e}");
            assert_eq!(hits.load(Ordering::SeqCst), 2, "one request, one retry");
        });
    }

    #[test]
    fn a_stalled_blob_is_resumed_then_given_up() {
        super::runtime().block_on(async {
            let hits = Arc::new(AtomicUsize::new(0));
            let seen = hits.clone();
            let addr = serve(move |_, _| {
                seen.fetch_add(1, Ordering::SeqCst);
                // Ten bytes of a hundred, then nothing, ever.
                let stream = futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                    Bytes::from_static(&[7u8; 10]),
                ))])
                .chain(futures::stream::pending());
                Response::builder()
                    .status(200)
                    .header("content-length", "100")
                    .body(http_body_util::BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap()
            })
            .await;
            let (_, desc) = blob();
            let e = client(
                addr,
                ClientOptions {
                    stall_timeout: Duration::from_millis(300),
                    max_resumes: 2,
                    ..ClientOptions::default()
                },
            )
            .get_blob_bytes("r", &desc, 1000, &|_| ())
            .await
            .unwrap_err();
            assert!(matches!(e, OciError::Interrupted { .. }), "{e}");
            assert!(e.to_string().contains("no data for 300ms"), "{e}");
            assert_eq!(
                hits.load(Ordering::SeqCst),
                3,
                "the first try and two resumes"
            );
        });
    }

    #[test]
    fn authorization_is_not_sent_across_hosts_on_a_redirect() {
        super::runtime().block_on(async {
            let leaked = Arc::new(AtomicUsize::new(0));
            let seen = leaked.clone();
            let (bytes, desc) = blob();
            let storage = serve(move |req, _| {
                if req.headers().contains_key("authorization") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                full(200, &[], &BLOB)
            })
            .await;
            let registry = serve(move |req, _| {
                if !req.headers().contains_key("authorization") {
                    return full(
                        401,
                        &[("www-authenticate", "Basic realm=\"r\"".to_owned())],
                        b"",
                    );
                }
                // Another host name for the same machine: a cross-host redirect.
                let to = format!("http://localhost:{}/storage/blob", storage.port());
                full(307, &[("location", to)], b"")
            })
            .await;
            let got = client(
                registry,
                ClientOptions {
                    credentials: Some(outpost::oci::Credentials::new("u", "p")),
                    ..ClientOptions::default()
                },
            )
            .get_blob_bytes("r", &desc, 1000, &|_| ())
            .await
            .unwrap();
            assert_eq!(got, bytes);
            assert_eq!(leaked.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn bearer_tokens_are_fetched_with_the_credentials_and_cached() {
        super::runtime().block_on(async {
            let token_hits = Arc::new(AtomicUsize::new(0));
            let seen = token_hits.clone();
            let addr = serve(move |req, addr| {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if req.uri().path() == "/token" {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let query = req.uri().query().unwrap_or("");
                    // base64("u:p"), and the challenge's service and scope passed on.
                    if auth != "Basic dTpw" || !query.contains("scope=repository%3Ar%3Apull") {
                        return full(401, &[], b"");
                    }
                    return full(200, &[], br#"{"access_token":"t0k3n"}"#);
                }
                if auth == "Bearer t0k3n" {
                    return full(200, &[], br#"{"name":"r","tags":["a","b"]}"#);
                }
                let challenge = format!(
                    "Bearer realm=\"http://{addr}/token\",service=\"reg\",scope=\"repository:r:pull\""
                );
                full(401, &[("www-authenticate", challenge)], b"")
            })
            .await;
            let with = |password: &str| {
                client(
                    addr,
                    ClientOptions {
                        credentials: Some(outpost::oci::Credentials::new("u", password)),
                        ..ClientOptions::default()
                    },
                )
            };
            let good = with("p");
            for _ in 0..2 {
                assert_eq!(good.list_tags("r").await.unwrap(), vec!["a", "b"]);
            }
            assert_eq!(token_hits.load(Ordering::SeqCst), 1, "the token is cached");

            let e = with("wrong").list_tags("r").await.unwrap_err();
            assert!(matches!(e, OciError::Unauthorized { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains("the token service refused the credentials of user \"u\""),
                "{e}"
            );
            assert!(!e.to_string().contains("wrong"), "{e}");
        });
    }

    #[test]
    fn a_dropped_blob_download_resumes_with_range() {
        super::runtime().block_on(async {
            let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = ranges.clone();
            let addr = serve(move |req, _| {
                let range = req
                    .headers()
                    .get("range")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                seen.lock().unwrap().push(range.clone());
                match range.as_deref() {
                    // The whole blob announced, ten bytes sent, then (once they are surely
                    // out) the body ends short and hyper drops the connection.
                    None => {
                        let stream = futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                            Bytes::from_static(&BLOB[..10]),
                        ))])
                        .chain(
                            futures::stream::once(tokio::time::sleep(Duration::from_millis(100)))
                                .filter_map(|()| async { None }),
                        );
                        Response::builder()
                            .status(200)
                            .header("content-length", "100")
                            .body(http_body_util::BodyExt::boxed(StreamBody::new(stream)))
                            .unwrap()
                    }
                    Some("bytes=10-") => full(
                        206,
                        &[("content-range", "bytes 10-99/100".to_owned())],
                        &BLOB[10..],
                    ),
                    Some(_) => full(416, &[], b""),
                }
            })
            .await;
            let (bytes, desc) = blob();
            let got = client(addr, ClientOptions::default())
                .get_blob_bytes("r", &desc, 1000, &|_| ())
                .await
                .unwrap();
            assert_eq!(got, bytes);
            assert_eq!(
                *ranges.lock().unwrap(),
                vec![None, Some("bytes=10-".to_owned())]
            );
        });
    }

    #[test]
    fn the_referrers_api_is_used_where_the_registry_has_it() {
        super::runtime().block_on(async {
            let (_, subject) = blob();
            let sig = Descriptor {
                artifact_type: Some(outpost::oci::media::OUTPOST_SIGNATURE_ARTIFACT.to_owned()),
                ..Descriptor::of(outpost::oci::media::OCI_MANIFEST, b"sig")
            };
            let other = Descriptor {
                artifact_type: Some("application/vnd.example.sbom".to_owned()),
                ..Descriptor::of(outpost::oci::media::OCI_MANIFEST, b"sbom")
            };
            let mut index = outpost::oci::ImageIndex::new();
            index.manifests = vec![other, sig.clone()];
            let body: &'static [u8] = Box::leak(index.to_bytes().into_boxed_slice());
            let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen = queries.clone();
            let path = format!("/v2/r/referrers/{}", subject.digest);
            let addr = serve(move |req, _| {
                if req.uri().path() != path {
                    return full(404, &[], b"");
                }
                seen.lock()
                    .unwrap()
                    .push(req.uri().query().unwrap_or("").to_owned());
                full(
                    200,
                    &[("content-type", outpost::oci::media::OCI_INDEX.to_owned())],
                    body,
                )
            })
            .await;
            let (found, source) = client(addr, ClientOptions::default())
                .referrers(
                    "r",
                    &subject.digest,
                    Some(outpost::oci::media::OUTPOST_SIGNATURE_ARTIFACT),
                )
                .await
                .unwrap();
            assert_eq!(source, outpost::oci::client::ReferrersSource::Api);
            // Filtered here too: a registry may ignore the artifactType filter.
            assert_eq!(found, vec![sig]);
            assert_eq!(
                *queries.lock().unwrap(),
                vec!["artifactType=application%2Fvnd.outpost.signature.v1".to_owned()]
            );
        });
    }
}
