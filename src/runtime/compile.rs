//! Component loading and the on-disk compiled-code cache.
//!
//! Owns: reading a `.wasm`, telling a component from a core module or garbage, compiling it, and
//! caching the machine code on disk keyed by (sha256 of the wasm, engine fingerprint) so that a
//! restart never recompiles. Each artifact carries an HMAC-SHA256 tag under a secret key this node
//! generated for its cache (`artifact.key`, 0600), checked before the code is mapped: an artifact
//! this node did not write — copied from another node or state directory, planted, torn or
//! bit-rotted — is deleted and recompiled, never loaded.
//! Must not: decide what is trusted to run (that is the caller's job) or know about apps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::LoadError;

/// First field of a `.sum` file. `OPSTCWA2` files held a plain sha256, which anyone can compute
/// for any file; they no longer parse, so such artifacts are recompiled once.
const ARTIFACT_MAGIC: &str = "OPSTCWA3";

/// Name of the cache's secret key file, inside the cache directory.
pub const KEY_FILE: &str = "artifact.key";

type HmacSha256 = Hmac<Sha256>;

/// Where compiled artifacts live, the fingerprint of the engine that made them, and the key
/// that tags them.
#[derive(Clone)]
pub struct CodeCache {
    dir: Option<PathBuf>,
    fingerprint: String,
    key: ArtifactKey,
}

impl std::fmt::Debug for CodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CodeCache")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The secret that makes an artifact's tag unforgeable for anyone who cannot read the cache
/// directory.
#[derive(Clone)]
struct ArtifactKey([u8; 32]);

impl ArtifactKey {
    /// Reads the cache's key, generating it on first use. A concurrent first start of another
    /// process on the same directory is safe: the key is published with `link`, which fails if
    /// one exists, and then everyone reads the one that won.
    fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(KEY_FILE);
        for _ in 0..2 {
            match std::fs::read(&path) {
                Ok(bytes) => match <[u8; 32]>::try_from(bytes.as_slice()) {
                    Ok(k) => return Ok(Self(k)),
                    Err(_) => {
                        // A damaged key can only mean recompiling everything once: replace it.
                        tracing::warn!(key = %path.display(), len = bytes.len(), "compiled-code cache key is damaged; replacing it (every artifact is recompiled)");
                        std::fs::remove_file(&path)?;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            let mut k = [0u8; 32];
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut k)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Self::publish(dir, &path, &k)?;
        }
        std::fs::read(&path)?
            .as_slice()
            .try_into()
            .map(Self)
            .map_err(|_| std::io::Error::other("key file changed while being created"))
    }

    /// Writes `k` to a temp file (0600, fsynced) and links it to `path` unless a key is already
    /// there; the directory is fsynced so the key survives a power cut with the artifacts.
    fn publish(dir: &Path, path: &Path, k: &[u8; 32]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{KEY_FILE}.tmp-{}-{seq}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(k)?;
            f.sync_all()?;
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            crate::base::atomic::sync_dir(dir)
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// The tag of an artifact: over its file name (which names the wasm digest and the engine,
    /// so an artifact cannot be renamed to stand in for another component) and its bytes.
    fn mac(&self, name: &str) -> HmacSha256 {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(ARTIFACT_MAGIC.as_bytes());
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac
    }
}

/// How a component came to be loaded, for logs and metrics.
#[derive(Debug, Clone)]
pub struct LoadInfo {
    /// sha256 of the wasm bytes, hex.
    pub digest: String,
    pub cache_hit: bool,
    pub elapsed: Duration,
}

impl CodeCache {
    /// `dir = None` disables the disk cache (every load compiles).
    pub fn new(dir: Option<PathBuf>, fingerprint: String) -> Self {
        let disabled = |fingerprint| Self {
            dir: None,
            fingerprint,
            key: ArtifactKey([0; 32]),
        };
        let Some(d) = dir else {
            return disabled(fingerprint);
        };
        if let Err(e) = std::fs::create_dir_all(&d) {
            tracing::warn!(dir = %d.display(), error = %e, "compiled-code cache disabled: cannot create directory");
            return disabled(fingerprint);
        }
        let swept = crate::base::atomic::sweep_temp_files(&d);
        if swept > 0 {
            tracing::info!(dir = %d.display(), swept, "removed partial cache files left by a crash");
        }
        // Without its key the cache could not tell this node's artifacts from anyone else's, so
        // it is off rather than trusting untagged code; serving goes on, compiling each start.
        match ArtifactKey::load_or_create(&d) {
            Ok(key) => Self {
                dir: Some(d),
                fingerprint,
                key,
            },
            Err(e) => {
                tracing::warn!(dir = %d.display(), error = %e, "compiled-code cache disabled: cannot read or create its key");
                disabled(fingerprint)
            }
        }
    }

    /// Loads wasm `bytes`; `path` is only for error messages.
    pub fn load_bytes(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(Component, LoadInfo), LoadError> {
        let start = Instant::now();
        crate::bundle::wasm::check_component(path, bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let artifact = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", self.fingerprint)));

        if let Some(a) = &artifact {
            match read_artifact(engine, a, &self.key) {
                Ok(Some(component)) => {
                    return Ok((
                        component,
                        LoadInfo {
                            digest,
                            cache_hit: true,
                            elapsed: start.elapsed(),
                        },
                    ));
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(artifact = %a.display(), %reason, "discarding unusable compiled artifact; recompiling");
                    let _ = std::fs::remove_file(a);
                    let _ = std::fs::remove_file(sum_path(a));
                }
            }
        }

        let component = Component::new(engine, bytes).map_err(|e| LoadError::Invalid {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })?;
        if let Some(a) = &artifact
            && let Err(e) = write_artifact(&component, a, &self.key)
        {
            // The cache is an optimisation: serving must not depend on a writable disk.
            tracing::warn!(artifact = %a.display(), error = %e, "cannot write compiled artifact");
        }
        Ok((
            component,
            LoadInfo {
                digest,
                cache_hit: false,
                elapsed: start.elapsed(),
            },
        ))
    }
}

/// The tag file next to an artifact: `<artifact>.sum`.
fn sum_path(artifact: &Path) -> PathBuf {
    let mut p = artifact.as_os_str().to_owned();
    p.push(".sum");
    PathBuf::from(p)
}

/// The file name an artifact's tag covers.
fn artifact_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Writes the artifact as wasmtime serialized it (so it can be mapped, not read) and its HMAC tag
/// in a `.sum` file next to it. The tag goes first: a crash between the two leaves a tag without
/// an artifact (recompiled next time), never an artifact that is mapped without its tag being
/// checked.
fn write_artifact(component: &Component, path: &Path, key: &ArtifactKey) -> anyhow::Result<()> {
    let code = component.serialize()?;
    let mut mac = key.mac(&artifact_name(path));
    mac.update(&code);
    let sum = format!(
        "{ARTIFACT_MAGIC} {}\n",
        hex::encode(mac.finalize().into_bytes())
    );
    crate::base::atomic::write_file(&sum_path(path), sum.as_bytes(), 0o600)?;
    crate::base::atomic::write_file(path, &code, 0o600)?;
    Ok(())
}

/// `Ok(None)` = no artifact yet; `Err` = an artifact exists but is unusable (not tagged by this
/// cache's key — another node's or state directory's, or planted —, torn, bit-rotted, or made
/// by an incompatible engine).
fn read_artifact(
    engine: &Engine,
    path: &Path,
    key: &ArtifactKey,
) -> Result<Option<Component>, String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open: {e}")),
    };
    // A tag file is one short line; anything bigger is not one of ours.
    let mut sum = String::new();
    {
        use std::io::Read;
        std::fs::File::open(sum_path(path))
            .map_err(|e| format!("tag file: {e}"))?
            .take(256)
            .read_to_string(&mut sum)
            .map_err(|e| format!("tag file: {e}"))?;
    }
    let want = sum
        .strip_prefix(ARTIFACT_MAGIC)
        .and_then(|rest| rest.strip_prefix(' '))
        .map(str::trim_end)
        .and_then(|h| hex::decode(h).ok())
        .filter(|t| t.len() == 32)
        .ok_or("tag file: not an HMAC-SHA256 tag of this Outpost version")?;
    let mut mac = key.mac(&artifact_name(path));
    let mut buf = vec![0u8; 256 << 10];
    loop {
        use std::io::Read;
        let n = file.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        mac.update(&buf[..n]);
    }
    // Constant-time comparison.
    mac.verify_slice(&want).map_err(|_| {
        "tag mismatch (not compiled by this node with this cache's key, or corrupted on disk)"
            .to_owned()
    })?;
    deserialize_verified(engine, path)
        .map(Some)
        .map_err(|e| format!("{e:#}"))
}

/// The one place Outpost turns bytes into executable machine code without compiling them. The
/// file is mapped (`Component::deserialize_file`), not read: the code pages are file-backed, so
/// the kernel can share and evict them instead of holding a private copy per app.
///
/// Soundness: wasmtime requires that the file came from `Component::serialize` of a compatible
/// engine and was not tampered with. Both hold here: (1) the caller just verified the file's
/// HMAC-SHA256 tag under this cache's secret key (`artifact.key`: 32 random bytes generated by
/// this node on first use, mode 0600, never logged or sent anywhere). Only `write_artifact`
/// computes such tags, and only over the output of `Component::serialize` for this very engine
/// (the tagged file name carries the wasm digest and the engine fingerprint, and wasmtime
/// re-checks its own compatibility header on load) of a component this node compiled — from an
/// app the operator configured or a bundle whose signature it verified. So an artifact copied
/// from another node or state directory, written by anyone without the key, renamed to stand for
/// another component, torn or bit-rotted never gets here. (2) The directory is private to the
/// daemon (0700 state dir, files 0600); someone who can write to it between the check and the
/// mapping, or read the key, runs as the daemon's user and can also replace the binary.
#[allow(unsafe_code)]
fn deserialize_verified(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see the function documentation above: the file's tag under this node's secret
    // key was verified by the caller, so it is wasmtime's own serialization made here.
    unsafe { Component::deserialize_file(engine, path) }
}
