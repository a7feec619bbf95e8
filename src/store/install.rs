//! Installing a signed bundle into the store, and finding what to serve at start.
//!
//! Owns: [`verify_bundle`], the one verification of a bundle that every path accepting one uses
//! (size caps, then the signature over (digest, size) *before* anything is decompressed, then
//! unpacking under limits, the manifest naming exactly the signed app and version, and every
//! component really a component), and [`stage`]: that verification, then the rollback check, and
//! only then the writes (blob, tree). Loading the staged tree and the index commit
//! (`Store::activate`) are the caller's — `sync::pipeline`, the one install-and-load-check
//! pipeline, so a signed release this node cannot run never becomes active. At start,
//! [`load_active`] re-checks every active release (blob digest, signature under today's trust
//! policy, unpacked files) and falls back to the previous release of an app when its active one
//! is damaged. Releases named by a verified desired state are staged in
//! [`InstallMode::Desired`]: only the rollback check is left out (the control plane may roll a
//! node back).
//! Must not: compile or load wasm (the pipeline runs the runtime over the staged tree) or fetch
//! anything.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use crate::bundle::archive::{self, ArchiveError, Limits};
use crate::bundle::desired::DesiredApp;
use crate::bundle::manifest::{Manifest, ManifestError};
use crate::bundle::sign::{self, SignedDoc, TrustPolicy, VerifyError};
use crate::bundle::{self as bundle_mod, Digest};

use super::{AppRecord, Release, Store, StoreError};

/// Largest signature file read.
pub const MAX_SIG_FILE: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("bundle is {size} bytes, over the {limit}-byte cap")]
    TooLarge { size: u64, limit: u64 },
    #[error("{}: cannot read bundle: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: signature file is {size} bytes, over the {limit}-byte cap", path.display())]
    SignatureFileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("signature file: {0}")]
    Signature(#[source] VerifyError),
    #[error("{0}")]
    Verify(#[source] VerifyError),
    #[error("refusing rollback: {0}")]
    Rollback(#[source] VerifyError),
    #[error("archive: {0}")]
    Archive(#[source] ArchiveError),
    #[error("{0}")]
    Manifest(#[source] ManifestError),
    #[error("outpost.toml is not UTF-8")]
    ManifestEncoding,
    #[error("the signed document is for {signed} but outpost.toml says {manifest}")]
    Mismatch { signed: String, manifest: String },
    #[error("component {id}: source {source_path} is not in the bundle")]
    MissingComponent { id: String, source_path: String },
    #[error("component {id}: {reason}")]
    NotComponent { id: String, reason: String },
    #[error("the signed release is {signed} but the desired state names {desired}")]
    DesiredMismatch { signed: String, desired: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The bundle has no detached signature file.
    #[error(
        "{} is unsigned: no signature file {}; sign it with `outpost bundle sign`",
        bundle.display(),
        sig.display()
    )]
    Unsigned { bundle: PathBuf, sig: PathBuf },
}

/// How an install treats the release it replaces.
#[derive(Debug, Clone, Copy)]
pub enum InstallMode<'a> {
    /// `outpost bundle install` and config bundles: never older than the active release (the
    /// rollback check); the pipeline activates it once it loads.
    Upgrade,
    /// A release a verified desired state names: the signature and tenant checks apply as
    /// always, and the signed document must be the entry's app, version, tenant and digest; the
    /// version may be older than the active one (the control plane rolls back). Nothing is
    /// activated: the caller calls `Store::activate` once the release loads.
    Desired(&'a DesiredApp),
}

/// Reads a bundle file, refusing one over `max` bytes before reading it (and, should it grow
/// while being read, as soon as it passes `max`).
pub fn read_bundle_file(path: &Path, max: u64) -> Result<Vec<u8>, InstallError> {
    read_capped(path, max, |size| InstallError::TooLarge {
        size,
        limit: max,
    })
}

/// Where a bundle's detached signature file is by default: next to it, `.sig` appended
/// (`app.bundle` → `app.bundle.sig`).
pub fn sig_path_for(bundle: &Path) -> PathBuf {
    let mut p = bundle.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// Reads a detached signature file the way [`read_bundle_file`] reads a bundle: refused before
/// reading when over [`MAX_SIG_FILE`], and never more than the cap + 1 bytes read. A missing file
/// is `InstallError::Read` with `NotFound`, which callers report as "unsigned".
pub fn read_sig_file(path: &Path) -> Result<Vec<u8>, InstallError> {
    read_capped(path, MAX_SIG_FILE as u64, |size| {
        InstallError::SignatureFileTooLarge {
            path: path.to_owned(),
            size,
            limit: MAX_SIG_FILE as u64,
        }
    })
}

/// [`read_sig_file`] for a bundle that must be signed: a missing signature file is
/// [`InstallError::Unsigned`], which says how to sign it.
pub fn read_required_sig_file(bundle: &Path, sig: &Path) -> Result<Vec<u8>, InstallError> {
    match read_sig_file(sig) {
        Err(InstallError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(InstallError::Unsigned {
                bundle: bundle.to_owned(),
                sig: sig.to_owned(),
            })
        }
        other => other,
    }
}

fn read_capped(
    path: &Path,
    max: u64,
    too_large: impl Fn(u64) -> InstallError,
) -> Result<Vec<u8>, InstallError> {
    use std::io::Read;
    let io = |source| InstallError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > max {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Installed {
    pub release: Release,
    /// The release it replaced as active, if any.
    pub replaced: Option<Digest>,
    /// The same bundle was already active; nothing was written.
    pub unchanged: bool,
}

/// Verifies and writes a release (blob, signature file, unpacked tree) without activating it:
/// everything of an install but the load check and the commit. In [`InstallMode::Upgrade`] the
/// caller must check the release and then call `Store::activate` itself (as `sync::pipeline`
/// does);
/// a staged release nobody activates is removed by the next GC pass.
pub fn stage(
    store: &Store,
    bundle: &[u8],
    sig: &[u8],
    policy: &TrustPolicy,
    now: u64,
    limits: &Limits,
    mode: InstallMode<'_>,
) -> Result<Installed, InstallError> {
    let size = bundle.len() as u64;
    // 1. Size cap, signature (before anything is decompressed), archive rules, manifest,
    //    components: the checks every path that accepts a bundle shares.
    let VerifiedBundle {
        verified,
        digest,
        unpacked,
        components,
    } = verify_bundle(bundle, sig, policy, now, limits)?;
    let doc = &verified.doc;
    if let InstallMode::Desired(entry) = mode
        && (doc.app != entry.app
            || doc.version != entry.version
            || doc.tenant != entry.tenant
            || digest != entry.digest)
    {
        let tenant = |t: &Option<String>| t.as_ref().map(|t| format!(" (tenant {t})"));
        return Err(InstallError::DesiredMismatch {
            signed: format!(
                "{} {}{} {digest}",
                doc.app,
                doc.version,
                tenant(&doc.tenant).unwrap_or_default()
            ),
            desired: format!(
                "{} {}{} {}",
                entry.app,
                entry.version,
                tenant(&entry.tenant).unwrap_or_default(),
                entry.digest
            ),
        });
    }

    // 2. Rollback: never older than what this node runs (unless the control plane says so).
    let current = store.app(&doc.app)?;
    let active = match &current {
        Some(rec) => store.release(&rec.active)?,
        None => None,
    };
    if let Some(active) = &active {
        if active.digest == digest {
            return Ok(Installed {
                release: active.clone(),
                replaced: None,
                unchanged: true,
            });
        }
        if let InstallMode::Upgrade = mode {
            sign::check_not_older(doc, &active.version, &active.digest)
                .map_err(InstallError::Rollback)?;
        }
        sign::check_same_tenant(doc, active.tenant.as_deref()).map_err(InstallError::Verify)?;
    }

    // 3. Writes: blob and tree first, the index last (the commit point).
    store.put_blob(&digest, bundle, sig)?;
    store.put_tree(&digest, unpacked.files())?;
    let release = Release {
        app: doc.app.clone(),
        version: doc.version.clone(),
        tenant: doc.tenant.clone(),
        digest,
        size,
        components,
        installed_at: now,
    };
    Ok(Installed {
        release,
        replaced: current.map(|r| r.active),
        unchanged: false,
    })
}

/// A bundle that passed every check that needs no store (see [`verify_bundle`]).
#[derive(Debug)]
pub struct VerifiedBundle {
    /// The signed document and the keys that counted.
    pub verified: sign::Verified,
    pub digest: Digest,
    /// The archive's files, under the archive limits.
    pub unpacked: archive::Unpacked,
    /// sha256 (hex) of each component, in manifest order.
    pub components: Vec<String>,
}

/// The one verification of a bundle and its signature file, for every path that accepts a
/// bundle (`install`, the sync agent through [`stage`], `bundle verify`, `serve X.bundle`):
/// the size cap; the signature over (digest, size) under `policy` at `now` — before anything is
/// decompressed; unpacking under `limits`; and the contents: a manifest that names exactly the
/// signed app and version, every component present and a real component.
pub fn verify_bundle(
    bundle: &[u8],
    sig: &[u8],
    policy: &TrustPolicy,
    now: u64,
    limits: &Limits,
) -> Result<VerifiedBundle, InstallError> {
    let size = bundle.len() as u64;
    if size > limits.max_compressed {
        return Err(InstallError::TooLarge {
            size,
            limit: limits.max_compressed,
        });
    }
    let digest = bundle_mod::digest(bundle);
    let signed =
        SignedDoc::parse(sig, MAX_SIG_FILE).map_err(|e| InstallError::Signature(e.into()))?;
    let verified =
        sign::verify(&signed, size, &digest, policy, now).map_err(InstallError::Verify)?;
    let unpacked = archive::unpack(bundle, limits).map_err(InstallError::Archive)?;
    let components = check_contents(&unpacked, &verified.doc.app, &verified.doc.version)?;
    Ok(VerifiedBundle {
        verified,
        digest,
        unpacked,
        components,
    })
}

/// Checks the unpacked files: a valid manifest that names the signed app and version, and every
/// component source present and a real component. Returns the components' sha256 (hex).
pub fn check_contents(
    unpacked: &archive::Unpacked,
    app: &str,
    version: &str,
) -> Result<Vec<String>, InstallError> {
    let text = unpacked
        .get("outpost.toml")
        .ok_or(InstallError::Archive(ArchiveError::MissingManifest))?;
    let text = std::str::from_utf8(text).map_err(|_| InstallError::ManifestEncoding)?;
    let manifest = Manifest::parse(text, "outpost.toml").map_err(InstallError::Manifest)?;
    if manifest.application.name != app || manifest.application.version != version {
        return Err(InstallError::Mismatch {
            signed: format!("{app} {version}"),
            manifest: format!(
                "{} {}",
                manifest.application.name, manifest.application.version
            ),
        });
    }
    let mut sums = Vec::with_capacity(manifest.components.len());
    for c in &manifest.components {
        let path = c.source.to_string_lossy().replace('\\', "/");
        let Some(bytes) = unpacked.get(&path) else {
            return Err(InstallError::MissingComponent {
                id: c.id.clone(),
                source_path: path,
            });
        };
        crate::bundle::wasm::check_component(Path::new(&path), bytes).map_err(|e| {
            InstallError::NotComponent {
                id: c.id.clone(),
                reason: e.to_string(),
            }
        })?;
        use sha2::Digest as _;
        sums.push(hex::encode(sha2::Sha256::digest(bytes)));
    }
    Ok(sums)
}

/// An app the store can serve now: its release and the directory holding its files.
#[derive(Debug, Clone)]
pub struct ServableRelease {
    pub release: Release,
    pub dir: PathBuf,
    /// The active release was damaged and this earlier one is served instead.
    pub fell_back_from: Option<Digest>,
    /// The app's releases before this one, newest first, not yet checked: what the caller may
    /// fall back to (through [`check_release`]) if this one does not load.
    pub older: Vec<Digest>,
}

/// What `load_active` could not serve.
#[derive(Debug)]
pub struct Unservable {
    pub app: String,
    pub problem: String,
}

/// The releases to serve at start, each re-checked: blob sha256, signature under the current
/// `policy` (as of its install time — expiry guards installs, not restarts; a key removed from
/// the policy stops its apps), and the unpacked tree (re-extracted from the blob if damaged). An
/// app whose active release fails falls back to its newest intact previous release, and the index
/// is updated to say so; an app with nothing intact is dropped from the index. Damaged files are
/// deleted so they are fetched again.
pub fn load_active(
    store: &Store,
    policy: &TrustPolicy,
    limits: &Limits,
) -> (Vec<ServableRelease>, Vec<Unservable>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for entry in store.apps() {
        let (app, record) = match entry {
            Ok(e) => e,
            Err(e) => {
                bad.push(Unservable {
                    app: "?".into(),
                    problem: e.to_string(),
                });
                continue;
            }
        };
        let candidates: Vec<Digest> = std::iter::once(record.active)
            .chain(record.previous.iter().copied())
            .collect();
        let mut served = None;
        let mut problems = Vec::new();
        for (i, d) in candidates.iter().enumerate() {
            match check_release(store, d, policy, limits) {
                Ok(release) => {
                    served = Some((i, release));
                    break;
                }
                Err(problem) => {
                    tracing::error!(%app, digest = %d, %problem, "installed release is unusable; dropping it");
                    store.remove_files(d);
                    let _ = store.forget_release(d);
                    problems.push(format!("{d}: {problem}"));
                }
            }
        }
        match served {
            Some((i, release)) => {
                if i > 0 {
                    let rec = AppRecord {
                        active: candidates[i],
                        previous: candidates[i + 1..].to_vec(),
                    };
                    if let Err(e) = store.set_app(&app, Some(&rec)) {
                        tracing::error!(%app, error = %e, "cannot record the fallback release");
                    }
                    tracing::warn!(%app, from = %record.active, to = %release.digest, version = %release.version, "serving the previous release");
                }
                ok.push(ServableRelease {
                    dir: store.tree_path(&release.digest),
                    fell_back_from: (i > 0).then_some(record.active),
                    older: candidates[i + 1..].to_vec(),
                    release,
                });
            }
            None => {
                let _ = store.set_app(&app, None);
                bad.push(Unservable {
                    app,
                    problem: problems.join("; "),
                });
            }
        }
    }
    (ok, bad)
}

/// The start-time checks of one installed release (blob sha256, signature under `policy` as of
/// its install time, unpacked tree — re-extracted from the blob if damaged): `load_active` runs
/// them on the active release, and the daemon on an earlier one it falls back to.
pub fn check_release(
    store: &Store,
    d: &Digest,
    policy: &TrustPolicy,
    limits: &Limits,
) -> Result<Release, String> {
    let release = store
        .release(d)
        .map_err(|e| e.to_string())?
        .ok_or("not in the index")?;
    let bundle = store.read_blob(d).map_err(|e| e.to_string())?;
    let sig = store.read_sig(d).map_err(|e| e.to_string())?;
    let signed =
        SignedDoc::parse(&sig, MAX_SIG_FILE).map_err(|e| VerifyError::from(e).to_string())?;
    let verified = sign::verify(
        &signed,
        bundle.len() as u64,
        d,
        policy,
        release.installed_at,
    )
    .map_err(|e| e.to_string())?;
    if verified.doc.app != release.app || verified.doc.version != release.version {
        return Err("index record does not match its signed document".into());
    }
    if let Err(problem) = store.check_tree(d) {
        tracing::warn!(app = %release.app, digest = %d, %problem, "unpacked files damaged; unpacking again from the verified bundle");
        let unpacked = archive::unpack(&bundle, limits).map_err(|e| e.to_string())?;
        store
            .put_tree(d, unpacked.files())
            .map_err(|e| e.to_string())?;
    }
    Ok(release)
}

/// Rebuilds the index after it was lost: every blob on disk whose signature still verifies under
/// `policy` (as of its signing time) is recorded, oldest version first, so the newest version of
/// each app becomes active and the ones before it its rollback history. Blobs that do not verify
/// are deleted. Returns how many releases were recorded.
pub fn rebuild_index(store: &Store, policy: &TrustPolicy, limits: &Limits) -> usize {
    let mut found: Vec<(sign::Version, Release)> = Vec::new();
    for d in store.blob_digests() {
        let checked = (|| -> Result<(sign::ReleaseDoc, Release), String> {
            let bundle = store.read_blob(&d).map_err(|e| e.to_string())?;
            let sig = store.read_sig(&d).map_err(|e| e.to_string())?;
            // Verified as of its signing time: what mattered was whether it verified then.
            let at = SignedDoc::parse(&sig, MAX_SIG_FILE)
                .map_err(|e| VerifyError::from(e).to_string())?
                .doc()
                .created;
            let VerifiedBundle {
                verified,
                digest,
                unpacked,
                components,
            } = verify_bundle(&bundle, &sig, policy, at, limits).map_err(|e| e.to_string())?;
            if digest != d {
                return Err(format!("the blob's content is {digest}, not {d}"));
            }
            let doc = verified.doc;
            if store.check_tree(&d).is_err() {
                store
                    .put_tree(&d, unpacked.files())
                    .map_err(|e| e.to_string())?;
            }
            let release = Release {
                app: doc.app.clone(),
                version: doc.version.clone(),
                tenant: doc.tenant.clone(),
                digest: d,
                size: bundle.len() as u64,
                components,
                installed_at: super::unix_now(),
            };
            Ok((doc, release))
        })();
        match checked {
            Ok((doc, release)) => match doc.parsed_version() {
                Ok(v) => found.push((v, release)),
                Err(e) => {
                    tracing::error!(digest = %d, error = %e, "bundle on disk has no usable version")
                }
            },
            Err(problem) => {
                tracing::error!(digest = %d, %problem, "bundle on disk does not verify; deleting it");
                store.remove_files(&d);
            }
        }
    }
    found.sort_by(|a, b| (&a.1.app, a.0).cmp(&(&b.1.app, b.0)));
    let mut n = 0;
    for (_, release) in found {
        match store.activate(&release) {
            Ok(()) => n += 1,
            Err(e) => tracing::error!(app = %release.app, error = %e, "cannot record release"),
        }
    }
    n
}
