//! Signed bundles through the real binary: `outpost bundle keygen|pack|sign|verify|inspect|install`,
//! `outpost serve APP.bundle`, every rejection, offline start from the store, and kill -9 safety.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A scratch area with keys, app directories, bundles and a node config.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_owned()
    }

    /// `outpost bundle keygen --out NAME`; returns the public key line it printed.
    fn keygen(&self, name: &str) -> String {
        let (code, out, err) = run_to_end(&["bundle", "keygen", "--out", &self.s(name)]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("outpost-public-key-v1 "), "{out}");
        out.trim_end().to_owned()
    }

    /// An app directory `name/` for app `greeter` at `version` whose `/greeting` answers `greeting`.
    fn app(&self, name: &str, version: &str, greeting: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("outpost.toml"),
            manifest(
                "greeter",
                version,
                &format!(
                    "[component.main]\nsource = \"config-reader.wasm\"\nroutes = [\"/\"]\n\
                     [component.main.variables]\ngreeting = \"{greeting}\"\n"
                ),
            ),
        )
        .unwrap();
        std::fs::copy(wasm("config_reader"), dir.join("config-reader.wasm")).unwrap();
        dir
    }

    /// An app directory `name/` with `manifest` and `files` (name, bytes).
    fn app_dir(&self, name: &str, manifest: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("outpost.toml"), manifest).unwrap();
        for (f, bytes) in files {
            std::fs::write(dir.join(f), bytes).unwrap();
        }
        dir
    }

    /// The store's record of committed app records (`apps.snapshot`), as text.
    fn snapshot(&self, node: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{node}-state/store/apps.snapshot")))
            .unwrap_or_default()
    }

    /// The active release digest (hex) of `app` in a node's store, from its last commit.
    fn active(&self, node: &str, app: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.snapshot(node)).ok()?;
        let d = v.get("apps")?.get(app)?.get("active")?.as_str()?.to_owned();
        Some(d.trim_start_matches("sha256:").to_owned())
    }

    /// `outpost bundle pack DIR -o OUT`; returns the digest printed.
    fn pack(&self, dir: &Path, out: &str) -> String {
        let (code, stdout, err) =
            run_to_end(&["bundle", "pack", dir.to_str().unwrap(), "-o", &self.s(out)]);
        assert_eq!(code, 0, "{err}");
        stdout.trim().to_owned()
    }

    fn sign(&self, bundle: &str, key: &str, extra: &[&str]) {
        let b = self.s(bundle);
        let k = self.s(key);
        let mut args = vec!["bundle", "sign", &b, "--key", &k];
        args.extend_from_slice(extra);
        let (code, _, err) = run_to_end(&args);
        assert_eq!(code, 0, "{err}");
    }

    /// A node config trusting `keys` (files under the lab), with its own state directory.
    fn node_config(&self, name: &str, extra: &str) -> PathBuf {
        let cfg = self.path(&format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"[node]
state_dir = "{name}-state"
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
drain_timeout = "1s"
{extra}
"#
            ),
        )
        .unwrap();
        cfg
    }

    fn install(&self, bundle: &str, cfg: &Path) -> (i32, String, String) {
        run_to_end(&[
            "bundle",
            "install",
            &self.s(bundle),
            "--config",
            cfg.to_str().unwrap(),
        ])
    }

    /// Blob files in a node's store (nothing rejected may ever land there).
    fn blobs(&self, node: &str) -> Vec<String> {
        let dir = self.path(&format!("{node}-state/store/blobs"));
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[test]
fn pack_is_deterministic_and_sign_verify_inspect_round_trip() {
    let lab = Lab::new();
    let public = lab.keygen("alice");
    let key_mode = std::fs::metadata(lab.path("alice.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key_mode.permissions().mode() & 0o777, 0o600);

    let dir = lab.app("v1", "1.0.0", "hello");
    let d1 = lab.pack(&dir, "a.bundle");
    // Same inputs, later mtimes: same bytes.
    std::thread::sleep(Duration::from_millis(1100));
    let f = dir.join("config-reader.wasm");
    std::fs::write(&f, std::fs::read(&f).unwrap()).unwrap();
    let d2 = lab.pack(&dir, "b.bundle");
    assert!(d1.starts_with("sha256:"), "{d1}");
    assert_eq!(d1, d2);
    assert_eq!(
        std::fs::read(lab.path("a.bundle")).unwrap(),
        std::fs::read(lab.path("b.bundle")).unwrap()
    );

    lab.sign("a.bundle", "alice.key", &[]);
    let (code, out, err) =
        run_to_end(&["bundle", "verify", &lab.s("a.bundle"), "--trust", &public]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("greeter 1.0.0") && out.contains(&d1), "{out}");
    // A key file works as well as the key line.
    let (code, _, err) = run_to_end(&[
        "bundle",
        "verify",
        &lab.s("a.bundle"),
        "--trust",
        &lab.s("alice.pub"),
    ]);
    assert_eq!(code, 0, "{err}");

    let (code, out, _) = run_to_end(&["bundle", "inspect", &lab.s("a.bundle")]);
    assert_eq!(code, 0);
    for needle in [
        &d1[..],
        "outpost.toml",
        "config-reader.wasm",
        "greeter 1.0.0",
        "NOT verified",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
}

/// A manifest may say `1.2.0-rc.1` (for `outpost serve`), but a signed release may not, so `pack`
/// refuses it — with the key and the reason — instead of making a bundle that `sign` then rejects.
/// A plain version of the same app packs.
#[tokio::test]
async fn pack_refuses_a_version_a_signed_release_cannot_carry() {
    let lab = Lab::new();
    let dir = lab.app("rc", "1.2.0-rc.1", "hi");
    let (code, _, err) = run_to_end(&[
        "bundle",
        "pack",
        dir.to_str().unwrap(),
        "-o",
        &lab.s("rc.bundle"),
    ]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("outpost.toml: application.version"), "{err}");
    assert!(err.contains("1.2.0-rc.1"), "{err}");
    assert!(err.contains("pre-release"), "{err}");
    assert!(!lab.path("rc.bundle").exists(), "no bundle may be written");

    // The same manifest serves in dev mode: the rule is the signed release's, not the manifest's.
    let d = Daemon::serve(&[dir.to_str().unwrap()]);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!(r.status, 200, "{}", r.body);

    let dir = lab.app("plain", "1.2.0", "hi");
    lab.pack(&dir, "plain.bundle");
}

#[test]
fn verify_refuses_unsigned_wrong_key_and_below_threshold() {
    let lab = Lab::new();
    let alice = lab.keygen("alice");
    let bob = lab.keygen("bob");
    let dir = lab.app("v1", "1.0.0", "hello");
    lab.pack(&dir, "a.bundle");
    let b = lab.s("a.bundle");

    let (code, _, err) = run_to_end(&["bundle", "verify", &b, "--trust", &alice]);
    assert_ne!(code, 0);
    assert!(err.contains("unsigned"), "{err}");

    lab.sign("a.bundle", "alice.key", &[]);
    let (code, _, err) = run_to_end(&["bundle", "verify", &b, "--trust", &bob]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown key"), "{err}");

    // 2-of-2: one signature is not enough; a second signer makes it pass.
    let two = [
        "bundle",
        "verify",
        &b,
        "--trust",
        &alice,
        "--trust",
        &bob,
        "--threshold",
        "2",
    ];
    let (code, _, err) = run_to_end(&two);
    assert_ne!(code, 0);
    assert!(err.contains("threshold") || err.contains("of 2"), "{err}");
    lab.sign("a.bundle", "bob.key", &[]);
    let (code, _, err) = run_to_end(&two);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn serve_runs_a_signed_bundle_and_refuses_it_without_trust() {
    let lab = Lab::new();
    let alice = lab.keygen("alice");
    lab.keygen("mallory");
    let dir = lab.app("v1", "1.0.0", "from-bundle");
    lab.pack(&dir, "a.bundle");
    lab.sign("a.bundle", "alice.key", &[]);

    let (code, _, err) = run_to_end(&["serve", "--listen", "127.0.0.1:0", &lab.s("a.bundle")]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--trust"), "{err}");
    let mallory = std::fs::read_to_string(lab.path("mallory.pub")).unwrap();
    let (code, _, err) = run_to_end(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--trust",
        mallory.trim(),
        &lab.s("a.bundle"),
    ]);
    assert_eq!(code, 65, "{err}");

    let d = Daemon::serve(&["--trust", &alice, &lab.s("a.bundle")]);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "from-bundle"));
}

/// A validly signed bundle whose `outpost.toml` names another app and version than the signed
/// document is refused by `bundle verify`, `bundle install` and `serve --trust` alike, with the
/// same error (before: `serve` served it as the other app).
#[test]
fn a_manifest_that_is_not_the_signed_release_is_refused_by_every_path() {
    let lab = Lab::new();
    let alice = lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let hello = std::fs::read(wasm("hello")).unwrap();
    let dir = lab.app_dir(
        "other",
        "manifest_version = 1\n[application]\nname = \"other\"\nversion = \"2.0.0\"\n\
         [component.main]\nsource = \"main.wasm\"\nroutes = [\"/\"]\n",
        &[("main.wasm", &hello)],
    );
    lab.pack(&dir, "packed.bundle");
    // Signed as greeter 1.0.0: the signature is valid, only the contents disagree.
    sign_raw(
        &lab,
        "x.bundle",
        &std::fs::read(lab.path("packed.bundle")).unwrap(),
        "alice.key",
    );
    let said = "the signed document is for greeter 1.0.0 but outpost.toml says other 2.0.0";

    let (code, _, err) = run_to_end(&["bundle", "verify", &lab.s("x.bundle"), "--trust", &alice]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains(said), "verify: {err}");
    let (code, _, err) = lab.install("x.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains(said), "install: {err}");
    assert!(lab.blobs("node").is_empty());

    // serve: refused before it listens (a "listening on" line means it served the bundle).
    let home = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "serve",
        "--no-cache",
        "--listen",
        "127.0.0.1:0",
        "--trust",
        &alice,
        &lab.s("x.bundle"),
    ])
    .env("HOME", home.path());
    let Spawned {
        mut child,
        lines,
        stderr,
    } = spawn_piped(&mut cmd);
    for line in lines.iter() {
        if line.starts_with("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve accepted the bundle: {line}\n{}",
                stderr.lock().unwrap()
            );
        }
    }
    let code = child.wait().unwrap().code();
    // stderr is read by its own thread, which may still be catching up with the exited child.
    let mut err = String::new();
    for _ in 0..3000 {
        err = stderr.lock().unwrap().clone();
        if err.contains("error:") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains(said), "serve: {err}");
}

/// Installs through the CLI must refuse each bad bundle with its own error, and leave the
/// store empty.
#[test]
fn install_rejections_never_reach_the_store() {
    let lab = Lab::new();
    lab.keygen("alice");
    lab.keygen("bob");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let dir = lab.app("v1", "1.0.0", "hello");
    lab.pack(&dir, "good.bundle");

    // Unsigned: said so, with the file it looked for and what to do.
    let (code, _, err) = lab.install("good.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("good.bundle is unsigned: no signature file")
            && err.contains("good.bundle.sig")
            && err.contains("outpost bundle sign"),
        "{err}"
    );

    // An oversized signature file is refused by its size, before it is read or parsed.
    std::fs::copy(lab.path("good.bundle"), lab.path("big.bundle")).unwrap();
    std::fs::write(lab.path("big.bundle.sig"), vec![b'x'; (64 << 10) + 1]).unwrap();
    let (code, _, err) = lab.install("big.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("big.bundle.sig: signature file is 65537 bytes, over the 65536-byte cap"),
        "{err}"
    );

    // Signed by a key the node does not trust.
    std::fs::copy(lab.path("good.bundle"), lab.path("bob.bundle")).unwrap();
    lab.sign("bob.bundle", "bob.key", &[]);
    let (code, _, err) = lab.install("bob.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("unknown key"), "{err}");

    // A signature over a different bundle.
    lab.sign("good.bundle", "alice.key", &[]);
    let other = lab.app("v1b", "1.0.0", "other");
    lab.pack(&other, "other.bundle");
    std::fs::copy(lab.path("good.bundle.sig"), lab.path("other.bundle.sig")).unwrap();
    let (code, _, err) = lab.install("other.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("covers"), "{err}");

    // Expired.
    std::fs::copy(lab.path("good.bundle"), lab.path("old.bundle")).unwrap();
    lab.sign("old.bundle", "alice.key", &["--expires-in", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let (code, _, err) = lab.install("old.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("expired"), "{err}");

    // Over the node's size cap (checked before the bundle is read).
    let small = lab.node_config(
        "node",
        "[trust]\nkeys = [\"alice.pub\"]\n[store]\nmax_bundle_size = \"1KiB\"\n",
    );
    let (code, _, err) = lab.install("good.bundle", &small);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("cap"), "{err}");

    assert!(lab.blobs("node").is_empty(), "{:?}", lab.blobs("node"));
}

#[test]
fn tenant_key_restrictions_and_thresholds_apply_on_install() {
    let lab = Lab::new();
    lab.keygen("alice");
    let bob = lab.keygen("bob");
    let bob_id = bob.split(' ').nth(1).unwrap().to_owned();
    let dir = lab.app("v1", "1.0.0", "hello");
    lab.pack(&dir, "t.bundle");
    std::fs::copy(lab.path("t.bundle"), lab.path("g.bundle")).unwrap();

    // bob is acme's key: it may sign acme's apps, and nobody else's.
    let cfg = lab.node_config(
        "node",
        &format!(
            "[trust]\nkeys = [\"alice.pub\", \"bob.pub\"]\n[trust.tenants]\nacme = [\"{bob_id}\"]\n"
        ),
    );
    lab.sign("g.bundle", "bob.key", &["--tenant", "globex"]);
    let (code, _, err) = lab.install("g.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("may not sign apps of tenant"), "{err}");
    assert!(lab.blobs("node").is_empty());

    // Two signatures required; one is below the threshold, a second one passes.
    let cfg2 = lab.node_config(
        "node2",
        "[trust]\nkeys = [\"alice.pub\", \"bob.pub\"]\nthreshold = 2\n",
    );
    lab.sign("t.bundle", "alice.key", &[]);
    let (code, _, err) = lab.install("t.bundle", &cfg2);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("of 2"), "{err}");
    lab.sign("t.bundle", "bob.key", &[]);
    let (code, _, err) = lab.install("t.bundle", &cfg2);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn rollback_is_refused_and_the_store_serves_offline_after_restart() {
    let lab = Lab::new();
    lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let v1 = lab.app("v1", "1.0.0", "one");
    let v2 = lab.app("v2", "2.0.0", "two");
    lab.pack(&v1, "v1.bundle");
    lab.pack(&v2, "v2.bundle");
    lab.sign("v1.bundle", "alice.key", &[]);
    lab.sign("v2.bundle", "alice.key", &[]);

    let (code, out, err) = lab.install("v2.bundle", &cfg);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("installed greeter 2.0.0"), "{out}");
    // Each component's compile is shown on stderr, with how long it took.
    assert!(
        err.lines()
            .any(|l| l.starts_with("  greeter/") && l.contains(": compiled in ")),
        "{err}"
    );
    let (code, _, err) = lab.install("v1.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("rollback"), "{err}");

    // No [[app]] in the config, no network: the node serves what its store holds.
    let d = Daemon::run_config(&cfg);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "two"));
    drop(d);

    // A blob that rotted on disk is never served.
    let blobs = lab.path("node-state/store/blobs");
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".bundle") {
            let mut bytes = std::fs::read(e.path()).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(e.path(), bytes).unwrap();
        }
    }
    let d = Daemon::run_config(&cfg);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!(r.status, 404, "{r:?}");
    let log = d.wait_log(&["corrupted on disk"]);
    assert!(log.contains("corrupted on disk"), "{log}");
}

/// The active release of `app` a daemon reports (`outpost_app_release_info`), as its version.
async fn served_version(d: &Daemon, app: &str) -> Option<String> {
    let m = get(d.admin.unwrap(), "/metrics").await.body;
    let prefix = format!("outpost_app_release_info{{app=\"{app}\"");
    let line = m.lines().find(|l| l.starts_with(&prefix))?;
    let v = line.split("version=\"").nth(1)?;
    Some(v.split('"').next()?.to_owned())
}

/// kill -9 at points spread over a whole install of v2 over v1: after every kill, a restarted
/// node serves a fully verified v1 or v2 — never a mix, never nothing — and across the rounds
/// both outcomes occur (so the kills really landed before and after the commit point).
#[tokio::test]
async fn kill_9_during_install_leaves_the_old_or_the_new_release() {
    let lab = Lab::new();
    lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let v1 = lab.app("v1", "1.0.0", "one");
    // v2 carries a large static file so the install takes long enough to be interrupted.
    let v2 = lab.app("v2", "2.0.0", "two");
    let big: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(v2.join("static.bin"), &big).unwrap();
    lab.pack(&v1, "v1.bundle");
    lab.pack(&v2, "v2.bundle");
    lab.sign("v1.bundle", "alice.key", &[]);
    lab.sign("v2.bundle", "alice.key", &[]);
    // Back to "v1 installed": a fresh store (the code cache stays, as it would on a node, so
    // every install of v2 does the same work).
    let reset = || {
        let _ = std::fs::remove_dir_all(lab.path("node-state/store"));
        let (code, _, err) = lab.install("v1.bundle", &cfg);
        assert_eq!(code, 0, "{err}");
    };
    let home = tempfile::tempdir().unwrap();
    let spawn_install = || {
        Command::new(env!("CARGO_BIN_EXE_outpost"))
            .env("HOME", home.path())
            .args([
                "bundle",
                "install",
                &lab.s("v2.bundle"),
                "--config",
                cfg.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    reset();
    // How long one uninterrupted install takes here, now: the kills are spread over it.
    let t0 = std::time::Instant::now();
    let st = spawn_install().wait().unwrap();
    let full = t0.elapsed();
    assert!(st.success(), "uninterrupted install failed");
    reset();

    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut round = 0u32;
    const SPREAD: u32 = 16;
    loop {
        // 0, 1/15, ..., 15/15 of 1.2 × the uninterrupted time; then, should one outcome still be
        // missing, alternately the two ends, the late one later each time (a loaded machine
        // can make an install slower than the one timed).
        let delay = if round < SPREAD {
            full.mul_f64(1.2 * f64::from(round) / f64::from(SPREAD - 1))
        } else if round.is_multiple_of(2) {
            Duration::ZERO
        } else {
            full.mul_f64(2.0 + f64::from(round - SPREAD) / 2.0)
        };
        let mut child = spawn_install();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL (a no-op if it already finished)
        let _ = child.wait();
        round += 1;

        let d = Daemon::run_config(&cfg);
        let log = d.stderr();
        let r = get(d.addr(), "/greeting").await;
        assert_eq!(r.status, 200, "round {round} ({delay:?}): {r:?}\n{log}");
        let version = match r.body.as_str() {
            "one" => "1.0.0",
            "two" => "2.0.0",
            other => panic!("round {round} ({delay:?}): served {other:?}"),
        };
        // Fully verified: the release serving is the one the store holds active, it passed the
        // start checks as it was (no damaged file had to be repaired, nothing was dropped).
        assert_eq!(
            served_version(&d, "greeter").await.as_deref(),
            Some(version),
            "round {round}"
        );
        let log = d.stderr();
        for bad in [
            "unusable",
            "damaged",
            "cannot be loaded",
            "previous release",
        ] {
            assert!(
                !log.contains(bad),
                "round {round} ({delay:?}): {bad}:\n{log}"
            );
        }
        drop(d);
        *seen.entry(r.body.clone()).or_default() += 1;
        if r.body == "two" {
            reset();
        }
        if round >= SPREAD && seen.len() == 2 {
            break;
        }
        assert!(
            round < 3 * SPREAD,
            "after {round} kills spread over 0..={:?} only {seen:?} was ever served",
            full.mul_f64(1.2)
        );
    }
    eprintln!("uninterrupted install: {full:?}; outcomes over {round} kills: {seen:?}");
    // A finished install always wins.
    let (code, _, err) = lab.install("v2.bundle", &cfg);
    assert_eq!(code, 0, "{err}");
    let d = Daemon::run_config(&cfg);
    assert_eq!(get(d.addr(), "/greeting").await.body, "two");
}

/// A validly signed v2 whose component does not load on this node — it imports something
/// Outpost does not provide, or it is truncated — is refused by `outpost bundle install` with
/// the component's name, is never activated, and leaves v1 serving.
#[tokio::test]
async fn a_signed_release_that_does_not_load_never_becomes_active() {
    let lab = Lab::new();
    lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let v1 = lab.app("v1", "1.0.0", "one");
    let d1 = lab.pack(&v1, "v1.bundle");
    lab.sign("v1.bundle", "alice.key", &[]);
    let (code, _, err) = lab.install("v1.bundle", &cfg);
    assert_eq!(code, 0, "{err}");
    let d1 = d1.trim_start_matches("sha256:").to_owned();
    assert_eq!(lab.active("node", "greeter").as_deref(), Some(d1.as_str()));

    let reader = std::fs::read(wasm("config_reader")).unwrap();
    let weird = std::fs::read(bad_input("weird-import.wat")).unwrap();
    let truncated = reader[..reader.len() / 2].to_vec();
    let manifest = r#"manifest_version = 1
[application]
name = "greeter"
version = "2.0.0"
[component.main]
source = "config-reader.wasm"
routes = ["/"]
[component.main.variables]
greeting = "two"
[component.vault]
source = "vault.wasm"
routes = ["/vault"]
"#;
    let cases: [(&str, &[u8], &[&str]); 2] = [
        (
            "weird",
            &weird,
            &["component vault", "acme:secret/vault", "does not provide"],
        ),
        (
            "truncated",
            &truncated,
            &["component vault", "invalid component"],
        ),
    ];
    for (name, vault, needles) in cases {
        let dir = lab.app_dir(
            &format!("v2-{name}"),
            manifest,
            &[("config-reader.wasm", &reader), ("vault.wasm", vault)],
        );
        let bundle = format!("v2-{name}.bundle");
        let d2 = lab.pack(&dir, &bundle);
        lab.sign(&bundle, "alice.key", &[]);
        let (code, _, err) = lab.install(&bundle, &cfg);
        assert_eq!(code, 65, "{name}: {err}");
        assert!(
            err.contains("greeter 2.0.0 cannot be loaded on this node, so it was not activated"),
            "{name}: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{name}: expected {n:?} in: {err}");
        }
        // Not active, not in the index, and its staged files are gone again.
        let d2 = d2.trim_start_matches("sha256:").to_owned();
        assert_eq!(lab.active("node", "greeter").as_deref(), Some(d1.as_str()));
        assert!(!lab.snapshot("node").contains(&d2), "{name}");
        let blobs = lab.blobs("node");
        assert!(
            blobs.iter().all(|b| b.starts_with(&d1)),
            "{name}: {blobs:?}"
        );
        assert!(
            !lab.path(&format!("node-state/store/unpacked/{d2}"))
                .exists()
        );
    }

    let d = Daemon::run_config(&cfg);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "one"), "{}", d.stderr());
    assert_eq!(
        served_version(&d, "greeter").await.as_deref(),
        Some("1.0.0")
    );
}

/// What `outpost bundle install` did before it load-checked releases (and what a release that
/// stopped fitting this node looks like): verified, stored and activated without loading it.
fn install_unchecked(lab: &Lab, node: &str, bundle: &str) {
    use outpost::bundle::sign::{TrustPolicy, parse_public_key};
    use outpost::store::{Store, install};
    let (store, _) = Store::open(&lab.path(&format!("{node}-state/store"))).unwrap();
    let key = std::fs::read_to_string(lab.path("alice.pub")).unwrap();
    let policy = TrustPolicy::new(vec![parse_public_key(key.trim_end()).unwrap()]).unwrap();
    let bytes = std::fs::read(lab.path(bundle)).unwrap();
    let sig = std::fs::read(lab.path(&format!("{bundle}.sig"))).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let staged = install::stage(
        &store,
        &bytes,
        &sig,
        &policy,
        now,
        &Default::default(),
        install::InstallMode::Upgrade,
    )
    .unwrap();
    store.activate(&staged.release).unwrap();
}

/// Releases in the store that pass every integrity check but do not load must not stop the
/// daemon: an app falls back to its previous release, an app with nothing loadable is skipped,
/// the others are served, and each failure is logged and counted. A broken bundle the config
/// names in [[app]] still fails the start.
#[tokio::test]
async fn a_stored_release_that_does_not_load_falls_back_and_the_rest_is_served() {
    let lab = Lab::new();
    lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let reader = std::fs::read(wasm("config_reader")).unwrap();
    let weird = std::fs::read(bad_input("weird-import.wat")).unwrap();
    let manifest = |app: &str, version: &str, route: &str, source: &str, var: &str| {
        format!(
            "manifest_version = 1\n[application]\nname = \"{app}\"\nversion = \"{version}\"\n\
             [component.main]\nsource = \"{source}\"\nroutes = [\"{route}\"]\n\
             [component.main.variables]\n{var}\n"
        )
    };
    let bundle = |name: &str, text: String, files: &[(&str, &[u8])]| {
        let dir = lab.app_dir(name, &text, files);
        lab.pack(&dir, &format!("{name}.bundle"));
        lab.sign(&format!("{name}.bundle"), "alice.key", &[]);
    };
    // greeter: v1 loads, v2 (active) imports what Outpost does not provide.
    bundle(
        "greeter1",
        manifest("greeter", "1.0.0", "/", "r.wasm", "greeting = \"one\""),
        &[("r.wasm", &reader)],
    );
    bundle(
        "greeter2",
        manifest("greeter", "2.0.0", "/", "w.wasm", "greeting = \"two\""),
        &[("w.wasm", &weird)],
    );
    // other: one good release.
    bundle(
        "other",
        manifest(
            "other",
            "1.0.0",
            "/other",
            "r.wasm",
            "other = \"from-other\"",
        ),
        &[("r.wasm", &reader)],
    );
    // lonely: its only release is broken.
    bundle(
        "lonely",
        manifest("lonely", "1.0.0", "/lonely", "w.wasm", "lonely = \"x\""),
        &[("w.wasm", &weird)],
    );
    for b in ["greeter1.bundle", "other.bundle"] {
        let (code, _, err) = lab.install(b, &cfg);
        assert_eq!(code, 0, "{b}: {err}");
    }
    install_unchecked(&lab, "node", "greeter2.bundle");
    install_unchecked(&lab, "node", "lonely.bundle");

    let d = Daemon::run_config(&cfg);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "one"), "{}", d.stderr());
    let r = get(d.addr(), "/other").await;
    assert_eq!((r.status, r.body.as_str()), (200, "from-other"));
    // /lonely falls through to greeter's "/", which has no such variable.
    let r = get(d.addr(), "/lonely").await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        served_version(&d, "greeter").await.as_deref(),
        Some("1.0.0")
    );
    assert_eq!(served_version(&d, "lonely").await, None);
    let m = get(d.admin.unwrap(), "/metrics").await.body;
    for app in ["greeter", "lonely"] {
        let line = format!("outpost_app_load_failures_total{{app=\"{app}\"}} 1");
        assert!(m.contains(&line), "{line} missing:\n{m}");
    }
    assert!(
        !m.contains("outpost_app_load_failures_total{app=\"other\"}"),
        "{m}"
    );
    let log = d.stderr();
    for needle in [
        "installed release cannot be loaded app=greeter version=2.0.0",
        "acme:secret/vault",
        "serving the previous release instead app=greeter from=2.0.0 to=1.0.0",
        "no installed release of the app loads; not serving it app=lonely",
    ] {
        assert!(log.contains(needle), "{needle:?} missing:\n{log}");
    }
    drop(d);

    // Named in the config, the same kind of broken bundle is the operator's to fix: exit 65.
    let named = lab.node_config(
        "named",
        "[trust]\nkeys = [\"alice.pub\"]\n[[app]]\nsource = \"lonely.bundle\"\n",
    );
    let (code, _, err) = run_to_end(&["run", "--config", named.to_str().unwrap()]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("lonely 1.0.0 cannot be loaded") && err.contains("acme:secret/vault"),
        "{err}"
    );
}

/// A validly signed bundle whose gzip stream expands past the unpacked cap (256 MiB): refused
/// with its own error while streaming, and nothing reaches the store.
#[test]
fn a_signed_gzip_bomb_is_refused_before_the_store() {
    use std::io::Write;
    let lab = Lab::new();
    lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let manifest = b"manifest_version = 1\n[application]\nname = \"greeter\"\nversion = \"1.0.0\"\n[component.main]\nsource = \"main.wasm\"\nroutes = [\"/\"]\n";
    let component = std::fs::read(wasm("hello")).unwrap();
    // A valid archive, then 257 MiB of zeros, which look like end-of-archive padding: streamed
    // into the compressor 1 MiB at a time, they compress to a few hundred KiB.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&tar_entry("main.wasm", b'0', &component, ""))
        .unwrap();
    e.write_all(&tar_entry("outpost.toml", b'0', manifest, ""))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..257 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    sign_raw(&lab, "bomb.bundle", &bomb, "alice.key");
    let (code, _, err) = lab.install("bomb.bundle", &cfg);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("bundle unpacks to more than 268435456 bytes (the unpacked limit)"),
        "{err}"
    );
    assert!(lab.blobs("node").is_empty(), "{:?}", lab.blobs("node"));
    assert!(lab.active("node", "greeter").is_none());

    // The same archive without the zeros installs: the cap, not the archive, refused it.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar_entry("main.wasm", b'0', &component, ""))
        .unwrap();
    e.write_all(&tar_entry("outpost.toml", b'0', manifest, ""))
        .unwrap();
    e.write_all(&[0u8; 1024]).unwrap();
    sign_raw(&lab, "ok.bundle", &e.finish().unwrap(), "alice.key");
    let (code, _, err) = lab.install("ok.bundle", &cfg);
    assert_eq!(code, 0, "{err}");
}

/// One ustar header block + data padded to 512 bytes.
fn tar_entry(name: &str, typeflag: u8, data: &[u8], link: &str) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(tar).unwrap();
    e.finish().unwrap()
}

/// Signs arbitrary bundle bytes with the lab's key, as a signer who made a malicious archive
/// would: the signature is valid, so only the content checks can stop it.
fn sign_raw(lab: &Lab, name: &str, bytes: &[u8], key: &str) {
    use outpost::bundle::sign::{ReleaseDoc, SignedDoc, parse_secret_key};
    std::fs::write(lab.path(name), bytes).unwrap();
    let sk = parse_secret_key(&std::fs::read_to_string(lab.path(key)).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut signed = SignedDoc::new(ReleaseDoc {
        app: "greeter".into(),
        version: "1.0.0".into(),
        digest: outpost::bundle::digest(bytes),
        size: bytes.len() as u64,
        created: now,
        expires: now + 3600,
        tenant: None,
    })
    .unwrap();
    signed.add_signature(&sk).unwrap();
    std::fs::write(lab.path(&format!("{name}.sig")), signed.encode()).unwrap();
}

/// Validly signed bundles whose contents are hostile or broken: each refused with its own
/// error by `outpost bundle install`, and none reaches the store.
#[test]
fn install_refuses_hostile_and_broken_archives() {
    let lab = Lab::new();
    lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let manifest = b"manifest_version = 1\n[application]\nname = \"greeter\"\nversion = \"1.0.0\"\n[component.main]\nsource = \"main.wasm\"\nroutes = [\"/\"]\n";
    let component = std::fs::read(wasm("hello")).unwrap();
    let end = vec![0u8; 1024];
    let good = |extra: Vec<u8>| {
        let mut t = extra;
        t.extend(tar_entry("main.wasm", b'0', &component, ""));
        t.extend(tar_entry("outpost.toml", b'0', manifest, ""));
        t
    };
    // The smallest valid core module: magic + version 1.
    let core_wasm = b"\0asm\x01\0\0\0".to_vec();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            gzip(&[good(tar_entry("../evil", b'0', b"x", "")), end.clone()].concat()),
            "..",
        ),
        (
            "absolute",
            gzip(&[good(tar_entry("/etc/evil", b'0', b"x", "")), end.clone()].concat()),
            "absolute",
        ),
        (
            "symlink",
            gzip(
                &[
                    good(tar_entry("link", b'2', b"", "/etc/passwd")),
                    end.clone(),
                ]
                .concat(),
            ),
            "symlink",
        ),
        (
            "duplicate",
            gzip(&[good(tar_entry("main.wasm", b'0', b"x", "")), end.clone()].concat()),
            "duplicate",
        ),
        (
            "truncated",
            {
                let full = gzip(&[good(Vec::new()), end.clone()].concat());
                full[..full.len() / 2].to_vec()
            },
            "truncated",
        ),
        ("no-end-marker", gzip(&good(Vec::new())), "end"),
        (
            "malformed-toml",
            gzip(
                &[
                    tar_entry("main.wasm", b'0', &component, ""),
                    tar_entry("outpost.toml", b'0', b"[application\nname = ", ""),
                    end.clone(),
                ]
                .concat(),
            ),
            "outpost.toml",
        ),
        (
            "core-module",
            gzip(
                &[
                    tar_entry("main.wasm", b'0', &core_wasm, ""),
                    tar_entry("outpost.toml", b'0', manifest, ""),
                    end.clone(),
                ]
                .concat(),
            ),
            "core",
        ),
    ];
    for (name, bytes, needle) in cases {
        let file = format!("{name}.bundle");
        sign_raw(&lab, &file, &bytes, "alice.key");
        let (code, _, err) = lab.install(&file, &cfg);
        assert_eq!(code, 65, "{name}: {err}");
        assert!(
            err.to_lowercase().contains(needle),
            "{name}: expected {needle:?} in: {err}"
        );
    }
    // The well-formed archive passes, proving the cases above fail for their own reason.
    let ok = gzip(&[good(Vec::new()), end].concat());
    sign_raw(&lab, "ok.bundle", &ok, "alice.key");
    let (code, _, err) = lab.install("ok.bundle", &cfg);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        lab.blobs("node").len(),
        2,
        "only the good bundle and its signature"
    );
}

/// A damaged index is detected (even when sled opens it as an empty database) and rebuilt
/// from the verified bundles on disk; nothing installed is lost.
#[tokio::test]
async fn a_damaged_index_is_rebuilt_from_the_verified_bundles() {
    let lab = Lab::new();
    lab.keygen("alice");
    let cfg = lab.node_config("node", "[trust]\nkeys = [\"alice.pub\"]\n");
    let v1 = lab.app("v1", "1.0.0", "one");
    let v2 = lab.app("v2", "2.0.0", "two");
    for (dir, b) in [(&v1, "v1.bundle"), (&v2, "v2.bundle")] {
        lab.pack(dir, b);
        lab.sign(b, "alice.key", &[]);
        let (code, _, err) = lab.install(b, &cfg);
        assert_eq!(code, 0, "{err}");
    }
    let db = lab.path("node-state/store/index/db");
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&db, garbage).unwrap();

    let d = Daemon::run_config(&cfg);
    let r = get(d.addr(), "/greeting").await;
    assert_eq!((r.status, r.body.as_str()), (200, "two"), "{}", d.stderr());
    let log = d.wait_log(&["rebuilding"]);
    assert!(log.contains("rebuilding"), "{log}");
    drop(d);
    // The rebuilt index is trusted on the next start, and both releases are still on disk.
    let d = Daemon::run_config(&cfg);
    assert_eq!(get(d.addr(), "/greeting").await.body, "two");
    assert!(!d.stderr().contains("rebuilding"), "{}", d.stderr());
    assert_eq!(lab.blobs("node").len(), 4);
}
