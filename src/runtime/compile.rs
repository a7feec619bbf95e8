//! Component loading and the on-disk compiled-code cache.
//!
//! Owns: reading a `.wasm`, telling a component from a core module or garbage, compiling it, and
//! caching the machine code on disk keyed by (sha256 of the wasm, engine fingerprint) so that a
//! restart never recompiles. Artifacts carry a sha256 of their own bytes, checked before use.
//! Must not: decide what is trusted to run (that is the caller's job) or know about apps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::LoadError;

const ARTIFACT_MAGIC: &[u8; 8] = b"OPSTCWA2";

/// Where compiled artifacts live, and the fingerprint of the engine that made them.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: Option<PathBuf>,
    fingerprint: String,
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
        if let Some(d) = &dir {
            if let Err(e) = std::fs::create_dir_all(d) {
                tracing::warn!(dir = %d.display(), error = %e, "compiled-code cache disabled: cannot create directory");
                return Self {
                    dir: None,
                    fingerprint,
                };
            }
            let swept = crate::store::atomic::sweep_temp_files(d);
            if swept > 0 {
                tracing::info!(dir = %d.display(), swept, "removed partial cache files left by a crash");
            }
        }
        Self { dir, fingerprint }
    }

    /// Loads `path` (a `.wasm` component, or WAT text) for `engine`, from cache when possible.
    pub fn load_file(
        &self,
        engine: &Engine,
        path: &Path,
    ) -> Result<(Component, LoadInfo), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_bytes(engine, path, &bytes)
    }

    /// Loads wasm `bytes`; `path` is only for error messages.
    pub fn load_bytes(
        &self,
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(Component, LoadInfo), LoadError> {
        let start = Instant::now();
        classify(path, bytes)?;
        let digest = hex::encode(Sha256::digest(bytes));
        let artifact = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", self.fingerprint)));

        if let Some(a) = &artifact {
            match read_artifact(engine, a) {
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
                }
            }
        }

        let component = Component::new(engine, bytes).map_err(|e| LoadError::Invalid {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })?;
        if let Some(a) = &artifact
            && let Err(e) = write_artifact(&component, a)
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

/// Rejects core modules and non-wasm early, with an error that says what to do.
pub(crate) fn classify(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.starts_with(b"\0asm") {
        // Bytes 4..8: version + layer. Core modules are version 1, layer 0; components layer 1.
        return match bytes.get(4..8) {
            Some([1, 0, 0, 0]) => Err(LoadError::CoreModule {
                path: path.to_owned(),
            }),
            Some([_, _, 1, 0]) => Ok(()),
            _ => Err(LoadError::Invalid {
                path: path.to_owned(),
                reason: "unknown WebAssembly binary version".into(),
            }),
        };
    }
    // WAT text is accepted (useful for tests and hand-written components); anything else is not.
    let looks_like_text = std::str::from_utf8(bytes)
        .map(|s| s.trim_start().starts_with('(') || s.trim_start().starts_with(";;"))
        .unwrap_or(false);
    if looks_like_text {
        let is_module = std::str::from_utf8(bytes)
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with(";;"))
                    .is_some_and(|l| l.starts_with("(module"))
            })
            .unwrap_or(false);
        if is_module {
            return Err(LoadError::CoreModule {
                path: path.to_owned(),
            });
        }
        return Ok(());
    }
    Err(LoadError::NotWasm {
        path: path.to_owned(),
    })
}

/// The checksum file next to an artifact: `<artifact>.sum`.
fn sum_path(artifact: &Path) -> PathBuf {
    let mut p = artifact.as_os_str().to_owned();
    p.push(".sum");
    PathBuf::from(p)
}

/// Writes the artifact as wasmtime serialized it (so it can be mapped, not read) and its sha256
/// in a `.sum` file next to it. The sum goes first: a crash between the two leaves a sum without
/// an artifact (recompiled next time), never an artifact without its sum being checked.
fn write_artifact(component: &Component, path: &Path) -> anyhow::Result<()> {
    let code = component.serialize()?;
    let sum = format!(
        "{} {}\n",
        std::str::from_utf8(ARTIFACT_MAGIC)?,
        hex::encode(Sha256::digest(&code))
    );
    crate::store::atomic::write_file(&sum_path(path), sum.as_bytes(), 0o600)?;
    crate::store::atomic::write_file(path, &code, 0o600)?;
    Ok(())
}

/// `Ok(None)` = no artifact yet; `Err` = an artifact exists but is unusable (torn, bit-rotted,
/// or made by an incompatible engine).
fn read_artifact(engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open: {e}")),
    };
    let sum = std::fs::read_to_string(sum_path(path)).map_err(|e| format!("checksum file: {e}"))?;
    let want = sum
        .strip_prefix(std::str::from_utf8(ARTIFACT_MAGIC).unwrap_or_default())
        .map(str::trim)
        .filter(|h| h.len() == 64)
        .ok_or("checksum file: bad header")?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).map_err(|e| format!("read: {e}"))?;
    if hex::encode(h.finalize()) != want {
        return Err("checksum mismatch (corrupted on disk)".into());
    }
    deserialize_verified(engine, path)
        .map(Some)
        .map_err(|e| format!("{e:#}"))
}

/// The one place Outpost turns bytes into executable machine code without compiling them. The
/// file is mapped (`Component::deserialize_file`), not read: the code pages are file-backed, so
/// the kernel can share and evict them instead of holding a private copy per app.
///
/// Soundness: wasmtime requires that the file came from `Component::serialize` of a compatible
/// engine and was not tampered with. Both hold here: (1) the only writer of the cache directory
/// is `write_artifact` above, which stores the output of `Component::serialize` for this very
/// engine (the file name carries the engine fingerprint, and wasmtime re-checks its own
/// compatibility header on load) compiled from a component this node loaded — from an app the
/// operator configured or a bundle whose signature it verified; (2) the sha256 written next to
/// the code at that time was just re-checked over the file's bytes, so they are exactly what this
/// process family wrote — a torn write or a flipped bit on an SD card is caught before we get
/// here. The directory is private to the daemon (0700 state dir, files 0600); someone who can
/// write to it between the check and the mapping can also replace the binary.
#[allow(unsafe_code)]
fn deserialize_verified(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see the function documentation above.
    unsafe { Component::deserialize_file(engine, path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_rejects_core_modules_and_garbage() {
        let p = Path::new("x.wasm");
        assert!(matches!(
            classify(p, b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(matches!(
            classify(p, b"(module)"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(matches!(
            classify(p, b"MZ\x90\0"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(classify(p, b"\0asm\x0d\0\x01\0").is_ok());
        assert!(classify(p, b"(component)").is_ok());
    }
}
