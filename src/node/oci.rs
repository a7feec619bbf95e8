//! `oci://` app sources of the node config (`[[app]] source = "oci://HOST/REPO:TAG"`): pulling
//! an Outpost bundle and the signature files attached to it from a registry (`crate::oci`),
//! under the node's `[registry]` settings, for the install pipeline; and remembering which
//! bundle each reference resolved to, so a start while the registry is unreachable serves the
//! release pulled last instead of nothing.
//!
//! Must not: verify or trust anything itself — the pipeline checks digest, size, signatures and
//! `[trust]` exactly as for a bundle file, whatever the registry sent; log credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};

use crate::bundle::Digest;
use crate::oci::artifact::{PullLimits, pull_bundle};
use crate::oci::{Client, Reference};
use crate::ops::config::RegistryConfig;
use crate::ops::process::ExitError;
use crate::store::Store;
use crate::sync::pipeline::{Checked, Mode, Pipeline, PipelineError};

/// The file in the state directory mapping each pulled reference to its bundle.
const PULLED_FILE: &str = "oci-pulled.json";

/// What a reference resolved to when it was last pulled and installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PulledRecord {
    manifest: Digest,
    bundle: Digest,
}

/// The bytes an `oci://` source gave: the bundle and every signature file attached to it.
struct Fetched {
    bundle: Vec<u8>,
    signatures: Vec<Vec<u8>>,
    manifest: Option<Digest>,
}

/// A registry client for `reference` under the node's `[registry]` settings.
fn client_for(reference: &Reference, cfg: &RegistryConfig) -> Result<Client, ExitError> {
    crate::oci::options_for(cfg, &reference.registry)
        .and_then(|opts| Client::new(&reference.registry, opts))
        .map_err(|e| ExitError::config(anyhow!("{reference}: {e}")))
}

/// Pulls the bundle `raw` names and installs it through `pipeline` (an operator's bundle:
/// [`Mode::Upgrade`]), trying each attached signature file until one is accepted. When the pull
/// fails and this reference was installed before, the release it resolved to is installed again
/// from the store (re-verified), with a warning: a gateway that restarts while its registry is
/// down keeps serving.
pub(crate) async fn install_from_registry(
    raw: &str,
    cfg: &RegistryConfig,
    state_dir: &Path,
    pipeline: &Pipeline,
    on_loading: &(dyn Fn(&crate::store::Release) + Sync),
) -> Result<Checked, ExitError> {
    let reference: Reference = raw.parse().map_err(|e| ExitError::config(anyhow!("{e}")))?;
    let client = client_for(&reference, cfg)?;
    let limits = PullLimits {
        max_bundle: pipeline.limits.max_compressed,
        ..PullLimits::default()
    };
    let record_path = state_dir.join(PULLED_FILE);
    let fetched = match pull_bundle(&client, &reference, &limits, &|_| ()).await {
        Ok(p) => {
            tracing::info!(reference = %raw, manifest = %p.manifest_digest, app = %p.config.app, version = %p.config.version, "pulled bundle from the registry");
            if p.signatures.is_empty() {
                return Err(ExitError::app(anyhow!(
                    "{raw}: no signature is attached to {} (push it with `outpost bundle push`, \
                     which attaches APP.bundle.sig)",
                    p.manifest_digest
                )));
            }
            Fetched {
                bundle: p.bundle,
                signatures: p.signatures,
                manifest: Some(p.manifest_digest),
            }
        }
        Err(e) => {
            let Some(fallback) = from_store(&record_path, raw, &pipeline.store).await else {
                return Err(ExitError::app(anyhow!("{raw}: {e}")));
            };
            tracing::warn!(reference = %raw, error = %e, "cannot pull from the registry; installing the release this reference gave last time, from the store");
            fallback
        }
    };
    let mut last = None;
    for sig in &fetched.signatures {
        let r = pipeline
            .install(
                fetched.bundle.clone(),
                sig.clone(),
                crate::base::clock::unix_now(),
                Mode::Upgrade,
                on_loading,
            )
            .await;
        match r {
            Ok(checked) => {
                if let Some(manifest) = fetched.manifest {
                    remember(
                        &record_path,
                        raw,
                        PulledRecord {
                            manifest,
                            bundle: checked.installed.release.digest,
                        },
                    )
                    .await;
                }
                return Ok(checked);
            }
            // Another attached signature file may be the one this node trusts.
            Err(PipelineError::Install(
                e @ (crate::store::install::InstallError::Signature(_)
                | crate::store::install::InstallError::Verify(_)),
            )) => last = Some(e.to_string()),
            Err(e) => return Err(ExitError::app(anyhow!("{raw}: {e}"))),
        }
    }
    Err(ExitError::app(anyhow!(
        "{raw}: no attached signature is accepted by this node's [trust] ({} tried): {}",
        fetched.signatures.len(),
        last.unwrap_or_default()
    )))
}

/// The bundle and signature file `raw` resolved to when it was last installed, read back from
/// the store; `None` when there is no record or the store no longer holds them.
async fn from_store(record_path: &Path, raw: &str, store: &Arc<Store>) -> Option<Fetched> {
    let record = read_records(record_path).await.remove(raw)?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let bundle = store.read_blob(&record.bundle).ok()?;
        let sig = std::fs::read(store.sig_path(&record.bundle)).ok()?;
        Some(Fetched {
            bundle,
            signatures: vec![sig],
            manifest: None,
        })
    })
    .await
    .ok()
    .flatten()
}

async fn read_records(path: &Path) -> BTreeMap<String, PulledRecord> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

/// Records what `raw` resolved to (atomically; a failure only costs the offline fallback).
async fn remember(path: &Path, raw: &str, record: PulledRecord) {
    let mut records = read_records(path).await;
    if records.get(raw) == Some(&record) {
        return;
    }
    records.insert(raw.to_owned(), record);
    let path: PathBuf = path.to_owned();
    let bytes = serde_json::to_vec_pretty(&records).unwrap_or_default();
    let written =
        tokio::task::spawn_blocking(move || crate::base::atomic::write_file(&path, &bytes, 0o600))
            .await;
    if !matches!(written, Ok(Ok(()))) {
        tracing::warn!(reference = %raw, "cannot record the pulled release; a start without the registry will not find it");
    }
}
