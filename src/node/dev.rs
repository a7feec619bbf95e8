//! `outpost serve`: development mode, like `spin up` — apps from directories, bare components,
//! verified bundles, or `oci://` references (Outpost bundles, and plain components in the CNCF
//! Wasm layout signed with `outpost bundle sign oci://…`), served on the given listeners with
//! the machine's sizing and no store, no control plane and no systemd.
//!
//! Owns: putting that small server together — sizing, verified bundles unpacked into a
//! temporary directory, the TLS setup, the engine — and running it until SIGTERM or SIGINT.
//! Must not: parse arguments (`cli::serve` does) or write anything but the compile cache, the
//! generated localhost certificate it is given a path for, the unpacked bundles and pulled
//! components and a temporary key-value database (all removed on exit).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::ops::metrics::Metrics;
use crate::ops::process::ExitError;
use crate::runtime::app::{AppSource, load_app_with};
use crate::runtime::{Runtime, RuntimeSettings};
use crate::serve::certs::{CertPaths, CertSpec, DefaultCert};
use crate::serve::{HostPattern, Router, ServeState};

/// What to serve and where.
pub struct DevServer {
    /// App directories, bare components, or signed bundles (`*.bundle`, with the signature
    /// file next to it).
    pub paths: Vec<PathBuf>,
    /// Keys (key lines or `.pub` files) a bundle must be signed by.
    pub trust: Vec<String>,
    /// Serve bundles without checking their signatures.
    pub insecure_unsigned: bool,
    /// How `oci://` paths reach their registries.
    pub registry: crate::oci::ClientOptions,
    pub listen: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    /// The certificate for `https`; `None`: a generated self-signed one for localhost.
    pub cert: Option<CertPaths>,
    /// Where the generated certificate is saved for clients to trust (`None`: not saved).
    pub self_signed_pem: Option<PathBuf>,
    /// HTTP/3 beside each `https` listener.
    pub h3: bool,
    /// The compiled-code cache; `None` compiles on every start.
    pub cache: Option<PathBuf>,
    /// How long open requests get after SIGTERM.
    pub drain: Duration,
    /// Values for the apps' `[variables]` (`--var name=value`), given to every app.
    pub variables: std::collections::BTreeMap<String, String>,
    /// Where the apps' key-value stores live.
    pub kv: KvPlace,
}

/// Where `outpost serve` keeps key-value stores.
#[derive(Debug, Clone)]
pub enum KvPlace {
    /// `--kv-dir`: this directory, or an error if it cannot be opened.
    Chosen(PathBuf),
    /// The default state directory; if another `outpost serve` holds it, a temporary database
    /// (with a warning) rather than no server.
    Default(PathBuf),
    /// A temporary database, gone on exit (`--no-cache`: nothing written to disk).
    Temporary,
}

/// Opens the key-value database `place` names.
fn open_kv(place: &KvPlace) -> Result<crate::store::kv::KvDb, ExitError> {
    use crate::store::kv::KvDb;
    let open = |dir: &PathBuf| {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))
            .and_then(|()| KvDb::open(dir).map_err(|e| e.to_string()))
    };
    let temporary = || {
        KvDb::temporary().map_err(|e| ExitError::runtime(anyhow::anyhow!("key-value stores: {e}")))
    };
    match place {
        KvPlace::Chosen(dir) => open(dir).map_err(|e| {
            ExitError::runtime(anyhow::anyhow!(
                "key-value stores (--kv-dir): {e} (is another `outpost serve` using it?)"
            ))
        }),
        KvPlace::Default(dir) => match open(dir) {
            Ok(db) => {
                tracing::info!(dir = %dir.display(), "key-value stores kept across restarts");
                Ok(db)
            }
            Err(e) => {
                tracing::warn!(error = %e, "key-value stores cannot use the default directory (another `outpost serve` may hold it); using a temporary one, gone on exit — pass --kv-dir to choose");
                temporary()
            }
        },
        KvPlace::Temporary => temporary(),
    }
}

/// Opens every app (verifying and unpacking bundles), loads it, binds the listeners, prints
/// their addresses and serves until SIGTERM or SIGINT, then drains.
pub fn run(dev: DevServer) -> Result<(), ExitError> {
    let sizing = &crate::sizing::derive(
        &crate::sizing::detect(),
        &crate::sizing::Overrides::default(),
    )
    .map_err(ExitError::config)?;
    let unpack_root = std::env::temp_dir().join(format!("outpost-serve-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(unpack_root.clone());
    let mut sources = Vec::with_capacity(dev.paths.len());
    for (i, p) in dev.paths.iter().enumerate() {
        if let Some(raw) = p
            .to_str()
            .filter(|s| s.starts_with(crate::oci::reference::SCHEME))
        {
            let dir = unpack_root.join(i.to_string());
            sources.push(open_oci(raw, &dev, &dir)?);
        } else if p.extension().is_some_and(|e| e == "bundle") {
            let dir = unpack_root.join(i.to_string());
            open_bundle(p, &dev.trust, dev.insecure_unsigned, &dir)?;
            sources.push(AppSource::Dir(dir));
        } else {
            sources.push(AppSource::from_path(p).map_err(ExitError::app)?);
        }
    }
    let tls = if dev.https.is_empty() {
        None
    } else {
        let self_signed = dev.cert.is_none();
        let spec = CertSpec {
            default: dev.cert.clone().map(DefaultCert::Files),
            tenants: Vec::new(),
        };
        Some(super::tls_setup(
            spec,
            self_signed,
            dev.self_signed_pem.as_deref(),
            dev.h3,
            sizing,
            crate::serve::tls::HANDSHAKE_TIMEOUT,
        )?)
    };
    super::log_sizing(sizing);
    let rt = crate::ops::process::tokio_runtime(sizing.worker_threads.value)?;
    rt.block_on(async move {
        let metrics = Metrics::new();
        let runtime = Runtime::new(RuntimeSettings::from_sizing(sizing, dev.cache), metrics.clone())
            .map(Arc::new)
            .map_err(ExitError::runtime)?;
        // Key-value stores survive restarts, as `spin up`'s do, unless nothing may be written
        // (`--no-cache`). Opened before any port is bound, like everything that can fail.
        let kv_db = open_kv(&dev.kv)?;
        let kv = crate::runtime::kv::KeyValue::new(
            &crate::ops::config::KeyValueConfig::default(),
            kv_db,
            metrics.clone(),
        )
        .map_err(|e| ExitError::runtime(anyhow::anyhow!("key-value stores: {e}")))?;
        runtime.set_key_value(Arc::new(kv));
        let mut apps = Vec::with_capacity(sources.len());
        for src in &sources {
            let app = load_app_with(&runtime, src, None, &dev.variables)
                .await
                .map_err(ExitError::app)?;
            apps.push((vec![HostPattern::Any], app));
        }
        let router = Router::new(apps).map_err(|e| ExitError::app(anyhow::anyhow!(e)))?;
        let listeners = crate::serve::Listeners::bind(&dev.listen, &dev.https, tls.as_ref())
            .await
            .map_err(ExitError::runtime)?;
        let (_stop_reloader, reloader_stop) = tokio::sync::watch::channel(false);
        if let Some(t) = &tls {
            t.certs.set_metrics(metrics.clone());
            t.certs
                .spawn_reloader(crate::ops::config::DEFAULT_RELOAD_INTERVAL, reloader_stop);
        }
        super::announce_listeners(&listeners);
        for app in router.apps() {
            for c in &app.components {
                let routes: Vec<String> = c.routes.iter().map(ToString::to_string).collect();
                tracing::info!(app = %app.name, version = %app.version, component = %c.component.id, routes = %routes.join(", "), "serving");
            }
        }
        let state = Arc::new(ServeState::new(router, metrics));
        crate::serve::serve(
            listeners,
            state,
            crate::serve::ServeOptions {
                door: crate::serve::door::DoorPolicy::with_cap(
                    sizing.max_connections.value as usize,
                ),
                drain: dev.drain,
                threads: sizing.worker_threads.value,
            },
            crate::ops::process::shutdown_signal(),
        )
        .await
        .map_err(ExitError::runtime)?;
        drop(runtime);
        Ok(())
    })
}

/// Removes a directory tree when dropped (the unpacked bundles of a dev-mode run).
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Verifies (unless `insecure`) and unpacks a bundle into `dir`: the same verification as
/// `bundle verify` and `bundle install` ([`crate::store::install::verify_bundle`]), so a bundle
/// whose manifest names another app or version than its signature is refused here too.
fn open_bundle(
    path: &std::path::Path,
    trust: &[String],
    insecure: bool,
    dir: &std::path::Path,
) -> Result<(), ExitError> {
    use crate::bundle::archive::Limits;
    use crate::store::install;
    let label = path.display().to_string();
    let bytes = install::read_bundle_file(path, Limits::default().max_compressed)
        .map_err(|e| ExitError::app(anyhow::anyhow!("{label}: {e}")))?;
    let sig = if insecure {
        Vec::new()
    } else {
        // Checked before the signature file is read: its absence is the lesser problem.
        trust_policy(&label, trust)?;
        vec![
            install::read_required_sig_file(path, &install::sig_path_for(path))
                .map_err(ExitError::app)?,
        ]
    };
    open_bundle_bytes(&label, &bytes, &sig, trust, insecure, dir)
}

/// The policy `--trust` keys make; an error naming `label` when there are none.
fn trust_policy(
    label: &str,
    trust: &[String],
) -> Result<crate::bundle::sign::TrustPolicy, ExitError> {
    if trust.is_empty() {
        return Err(ExitError::config(anyhow::anyhow!(
            "{label}: a bundle needs --trust PUBKEY (or --insecure-unsigned for development)"
        )));
    }
    let keys: Vec<(String, String)> = trust
        .iter()
        .map(|k| ("--trust".to_owned(), k.clone()))
        .collect();
    crate::node::trust::trust_policy(&keys, 1, Default::default()).map_err(ExitError::config)
}

/// What `oci://` reference pulled: an Outpost bundle, a plain component or a Spin app.
enum Pulled {
    Bundle(crate::oci::artifact::PulledBundle),
    Component(crate::oci::artifact::PulledComponent),
    Spin(crate::oci::artifact::PulledSpinApp),
}

/// Pulls what `raw` names — dispatching on the manifest's kind — verifies it under the
/// `--trust` keys (unless `--insecure-unsigned`) and puts it into `dir`: a bundle unpacked (an
/// app directory), a plain component as `APP.wasm` (served at `/` with no grants), a Spin app
/// laid out as the Spin app directory it was pushed from (read through its `spin.toml`).
fn open_oci(raw: &str, dev: &DevServer, dir: &std::path::Path) -> Result<AppSource, ExitError> {
    use crate::oci::artifact::{self, ArtifactKind, PullLimits};
    use crate::oci::{Manifest, OciError};
    use anyhow::anyhow;
    let reference: crate::oci::Reference =
        raw.parse().map_err(|e| ExitError::config(anyhow!("{e}")))?;
    if !dev.insecure_unsigned {
        trust_policy(raw, &dev.trust)?;
    }
    let client = crate::oci::Client::new(&reference.registry, dev.registry.clone())
        .map_err(|e| ExitError::config(anyhow!("{e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ExitError::runtime(anyhow!("cannot start the pull's runtime: {e}")))?;
    let limits = PullLimits::default();
    let pulled = rt
        .block_on(async {
            let repo = reference.repository.as_str();
            let fetched = client.get_manifest(repo, &reference.target()).await?;
            // The pull reads the manifest again by the digest just seen: a tag moved in
            // between cannot mix two artifacts.
            let pinned = reference.with_digest(fetched.digest);
            let kind = match &fetched.manifest {
                // An index is refused by the bundle pull, naming what it found.
                Manifest::Index(_) => ArtifactKind::OutpostBundle,
                Manifest::Image(m) => artifact::kind_of(m),
            };
            match kind {
                ArtifactKind::OutpostBundle => {
                    artifact::pull_bundle(&client, &pinned, &limits, &|_| ())
                        .await
                        .map(Pulled::Bundle)
                }
                ArtifactKind::WasmComponent => artifact::pull_component(&client, &pinned, &limits)
                    .await
                    .map(Pulled::Component),
                ArtifactKind::SpinApp => artifact::pull_spin_app(&client, &pinned, &limits)
                    .await
                    .map(Pulled::Spin),
                ArtifactKind::Unknown(media_type) => Err(OciError::MediaType {
                    at: format!("{}/{repo}", reference.registry),
                    what: format!("manifest {reference} ({}): config", fetched.digest),
                    media_type,
                    expected: format!(
                        "an Outpost bundle ({}), a Wasm component ({}) or a Spin app ({})",
                        crate::oci::media::OUTPOST_BUNDLE_CONFIG,
                        crate::oci::media::WASM_CONFIG,
                        crate::oci::media::SPIN_APP_CONFIG
                    ),
                }),
            }
        })
        .map_err(|e| ExitError::app(anyhow!("{e}")))?;
    match pulled {
        Pulled::Bundle(pulled) => {
            tracing::info!(reference = %raw, manifest = %pulled.manifest_digest, app = %pulled.config.app, version = %pulled.config.version, "pulled bundle from the registry");
            open_bundle_bytes(
                raw,
                &pulled.bundle,
                &pulled.signatures,
                &dev.trust,
                dev.insecure_unsigned,
                dir,
            )?;
            Ok(AppSource::Dir(dir.to_owned()))
        }
        Pulled::Spin(pulled) => {
            let signed = ForeignManifest {
                what: "Spin app",
                digest: &pulled.manifest_digest,
                len: pulled.manifest_len,
                signatures: &pulled.signatures,
            };
            let name = verify_foreign(raw, &reference, &signed, &dev.trust, dev.insecure_unsigned)?;
            let layout = crate::bundle::spin_locked::layout(
                &pulled.locked,
                &format!("{raw} (locked app)"),
                name.as_deref(),
            )
            .map_err(|e| ExitError::app(anyhow!("{e}")))?;
            for note in &layout.notes {
                tracing::info!(reference = %raw, "{note}");
            }
            write_spin_layout(dir, &layout, &pulled.blobs)
                .map_err(|e| ExitError::app(anyhow!("{raw}: {e}")))?;
            tracing::info!(reference = %raw, manifest = %pulled.manifest_digest, layers = pulled.blobs.len(), "pulled Spin app from the registry");
            Ok(AppSource::Dir(dir.to_owned()))
        }
        Pulled::Component(pulled) => {
            let signed = ForeignManifest {
                what: "component",
                digest: &pulled.manifest_digest,
                len: pulled.manifest_len,
                signatures: &pulled.signatures,
            };
            let app = match verify_foreign(
                raw,
                &reference,
                &signed,
                &dev.trust,
                dev.insecure_unsigned,
            )? {
                Some(app) => app,
                None => {
                    let last = reference
                        .repository
                        .rsplit('/')
                        .next()
                        .unwrap_or(&reference.repository);
                    crate::bundle::manifest::sanitise_name(last)
                }
            };
            tracing::info!(reference = %raw, manifest = %pulled.manifest_digest, app = %app, bytes = pulled.wasm.len(), "pulled component from the registry");
            std::fs::create_dir_all(dir).map_err(|e| {
                ExitError::runtime(anyhow!("{}: cannot create: {e}", dir.display()))
            })?;
            let file = dir.join(format!("{app}.wasm"));
            std::fs::write(&file, &pulled.wasm).map_err(|e| {
                ExitError::runtime(anyhow!("{}: cannot write: {e}", file.display()))
            })?;
            Ok(AppSource::Wasm(file))
        }
    }
}

/// Writes the Spin app directory `layout` stands for into `dir` (a fresh directory of this
/// run): `spin.toml` and every file, each from its blob (a layer the manifest named, already
/// checked against its digest) or its inline bytes. The paths were checked by
/// `bundle::spin_locked` (relative, no `..`).
pub(crate) fn write_spin_layout(
    dir: &std::path::Path,
    layout: &crate::bundle::spin_locked::LockedLayout,
    blobs: &std::collections::BTreeMap<crate::bundle::Digest, Vec<u8>>,
) -> anyhow::Result<()> {
    use crate::bundle::spin_locked::Content;
    use anyhow::Context as _;
    let write = |rel: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("{}: cannot write", path.display()))
    };
    for (rel, content) in &layout.files {
        match content {
            Content::Inline(bytes) => write(rel, bytes)?,
            Content::Digest(d) => match blobs.get(d) {
                Some(bytes) => write(rel, bytes)?,
                None => anyhow::bail!(
                    "the locked app names {d} for {rel}, which is no layer of the manifest"
                ),
            },
        }
    }
    write(
        crate::bundle::spin::SPIN_MANIFEST_FILE_NAME,
        layout.spin_toml.as_bytes(),
    )
}

/// A manifest of a foreign artifact (a component, a Spin app) and the Outpost signature files
/// attached to it.
struct ForeignManifest<'a> {
    /// "component", "Spin app": for messages.
    what: &'a str,
    digest: &'a crate::bundle::Digest,
    len: u64,
    signatures: &'a [Vec<u8>],
}

/// Checks that one of the attached signature files signs the manifest (digest and length)
/// under the `--trust` keys, or with `insecure` warns that nothing was checked. Returns the app
/// name the accepted signature gives (`None` when nothing was checked).
fn verify_foreign(
    label: &str,
    reference: &crate::oci::Reference,
    m: &ForeignManifest<'_>,
    trust: &[String],
    insecure: bool,
) -> Result<Option<String>, ExitError> {
    use crate::bundle::sign::{SignedDoc, trust};
    use anyhow::anyhow;
    if insecure {
        tracing::warn!(reference = %label, manifest = %m.digest, "serving a {} WITHOUT checking any signature (--insecure-unsigned)", m.what);
        return Ok(None);
    }
    let policy = trust_policy(label, trust)?;
    if m.signatures.is_empty() {
        let pinned = reference.pinned(m.digest);
        return Err(ExitError::app(anyhow!(
            "{label}: no Outpost signature is attached to this {} (manifest {}); sign it \
             with `outpost bundle sign {pinned} --key RELEASE.key`, or serve it unchecked with \
             --insecure-unsigned for development",
            m.what,
            m.digest
        )));
    }
    // Any one attached signature file the --trust keys accept will do.
    let now = crate::base::clock::unix_now();
    let mut last = String::new();
    for sig in m.signatures {
        let checked = SignedDoc::parse(sig, crate::store::install::MAX_SIG_FILE)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                trust::verify(&signed, m.len, m.digest, &policy, now).map_err(|e| e.to_string())
            });
        match checked {
            Ok(v) => return Ok(Some(v.doc.app)),
            Err(e) => last = e,
        }
    }
    Err(ExitError::app(anyhow!(
        "{label}: none of the {} signature file(s) attached to manifest {} is accepted: {last}",
        m.signatures.len(),
        m.digest
    )))
}

/// Verifies `bytes` against one of `signatures` under the `--trust` keys (or, with
/// `insecure`, not at all) and unpacks the bundle into `dir`. `label` names it in errors.
fn open_bundle_bytes(
    label: &str,
    bytes: &[u8],
    signatures: &[Vec<u8>],
    trust: &[String],
    insecure: bool,
    dir: &std::path::Path,
) -> Result<(), ExitError> {
    use crate::bundle::archive::{self, Limits};
    use crate::store::install;
    use anyhow::anyhow;
    let limits = Limits::default();
    let unpacked = if insecure {
        tracing::warn!(bundle = %label, "serving a bundle WITHOUT checking its signature (--insecure-unsigned)");
        archive::unpack(bytes, &limits).map_err(|e| ExitError::app(anyhow!("{label}: {e}")))?
    } else {
        let policy = trust_policy(label, trust)?;
        if signatures.is_empty() {
            return Err(ExitError::app(anyhow!(
                "{label}: no signature is attached to this bundle"
            )));
        }
        // Any one attached signature file the --trust keys accept will do.
        let mut last = None;
        let mut checked = None;
        for sig in signatures {
            match install::verify_bundle(
                bytes,
                sig,
                &policy,
                crate::base::clock::unix_now(),
                &limits,
            ) {
                Ok(c) => {
                    checked = Some(c);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        match (checked, last) {
            (Some(c), _) => c.unpacked,
            (None, Some(e)) => return Err(ExitError::app(anyhow!("{label}: {e}"))),
            (None, None) => unreachable!("signatures is not empty"),
        }
    };
    for (name, data) in unpacked.files() {
        let target = dir.join(name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                ExitError::runtime(anyhow!("{}: cannot create: {e}", parent.display()))
            })?;
        }
        std::fs::write(&target, data)
            .map_err(|e| ExitError::runtime(anyhow!("{}: cannot write: {e}", target.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::spin_locked::{Content, LockedLayout};

    #[test]
    fn a_spin_layout_is_written_whole_and_a_digest_no_layer_carries_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wasm = b"\0asm".to_vec();
        let d = crate::bundle::digest(&wasm);
        let layout = |files: Vec<(String, Content)>| LockedLayout {
            spin_toml: "spin_manifest_version = 2\n".to_owned(),
            files,
            notes: Vec::new(),
        };
        let blobs = std::collections::BTreeMap::from([(d, wasm.clone())]);
        let ok = layout(vec![
            ("wasm/a.wasm".to_owned(), Content::Digest(d)),
            (
                "files/a/x/y.txt".to_owned(),
                Content::Inline(b"hi".to_vec()),
            ),
        ]);
        let at = dir.path().join("ok");
        write_spin_layout(&at, &ok, &blobs).expect("written");
        assert_eq!(std::fs::read(at.join("wasm/a.wasm")).expect("wasm"), wasm);
        assert_eq!(
            std::fs::read(at.join("files/a/x/y.txt")).expect("file"),
            b"hi"
        );
        assert!(at.join("spin.toml").is_file());

        let missing = crate::bundle::digest(b"other");
        let bad = layout(vec![("wasm/b.wasm".to_owned(), Content::Digest(missing))]);
        let e = write_spin_layout(&dir.path().join("bad"), &bad, &blobs)
            .expect_err("a digest no layer carries")
            .to_string();
        assert!(
            e.contains("no layer of the manifest") && e.contains("wasm/b.wasm"),
            "{e}"
        );
    }
}
