//! The one install-and-load-check pipeline: every path that turns a signed bundle into a
//! release this node may serve — `outpost bundle install`, the `[[app]] source = "X.bundle"`
//! bundles at start and on SIGHUP, and the agent's releases from a desired state — runs
//! [`install`].
//!
//! Steps: verify and write the release (`store::install::stage`: size cap, signature before any
//! decompression, archive and manifest rules, rollback rules; blob, tree) on the blocking pool;
//! load every component with this node's runtime (compile or deserialize, link, instantiate
//! once); then, for an upgrade, make it the active release (the index commit, on the blocking
//! pool). A release that does not load is never activated, so the app keeps what it served; an
//! upgrade's staged files are removed again unless an older record still names them (a desired
//! release's stay for GC, so a retry does not download it again).
//!
//! Owns: the order of those steps and what a failure at each leaves behind.
//! Must not: serve, route or swap anything (the caller puts the loaded app in its routing table),
//! or do blocking work on an async worker. It sits in `sync` because the agent, below the
//! composition root, runs it for every release; the CLI and the start path call the same
//! function.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;

use crate::bundle::archive::Limits;
use crate::bundle::desired::DesiredApp;
use crate::bundle::sign::TrustPolicy;
use crate::runtime::Runtime;
use crate::runtime::app::{AppError, AppSource, LoadedApp, load_tenant_app};
use crate::store::install::{self, InstallError, InstallMode, Installed};
use crate::store::{Release, Store};

/// What the pipeline works with: the node's store, runtime, release trust policy and bundle
/// limits.
#[derive(Clone)]
pub struct Pipeline {
    pub store: Arc<Store>,
    pub runtime: Arc<Runtime>,
    pub policy: Arc<TrustPolicy>,
    pub limits: Limits,
}

/// How the release relates to the app's active one.
#[derive(Debug, Clone)]
pub enum Mode {
    /// An operator's bundle (`bundle install`, config bundles): never older than the active
    /// release, and activated once it loads.
    Upgrade,
    /// A release a verified desired state names: it must be exactly that entry, may be older
    /// (a rollback), and is *not* activated here — the agent activates it when it swaps.
    Desired(DesiredApp),
}

/// Why the pipeline refused a bundle.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Refused before anything loaded: verification, the store, or the rollback rules.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// Verified and written, but it does not load on this node; not activated.
    #[error(
        "{} {} cannot be loaded on this node, so it was not activated (the active release, if \
         any, stays): {error:#}",
        release.app,
        release.version
    )]
    Load {
        release: Box<Release>,
        error: AppError,
    },
    /// The already active release does not load on this node (any more): nothing was changed.
    #[error(
        "{} {} (already active) cannot be loaded on this node: {error:#}",
        release.app,
        release.version
    )]
    ActiveUnloadable {
        release: Box<Release>,
        error: AppError,
    },
    /// A blocking step panicked or was cancelled (a bug, or the daemon shutting down).
    #[error("the install task did not finish: {0}")]
    Task(String),
}

/// A release that passed every step, with its components loaded.
pub struct Checked {
    pub installed: Installed,
    pub app: LoadedApp,
}

impl Pipeline {
    /// Runs the pipeline over `bundle` and its signature file `sig` at time `now`.
    /// `on_loading` is called once the release is verified and written, before its components
    /// load (the CLI shows "compiling APP VERSION"). The already active bundle is loaded but
    /// not written or activated again (`installed.unchanged`).
    pub async fn install(
        &self,
        bundle: Vec<u8>,
        sig: Vec<u8>,
        now: u64,
        mode: Mode,
        on_loading: impl FnOnce(&Release),
    ) -> Result<Checked, PipelineError> {
        let (store, policy, limits) = (self.store.clone(), self.policy.clone(), self.limits);
        let staged_mode = mode.clone();
        let installed = self
            .blocking(move || {
                let m = match &staged_mode {
                    Mode::Upgrade => InstallMode::Upgrade,
                    Mode::Desired(e) => InstallMode::Desired(e),
                };
                install::stage(&store, &bundle, &sig, &policy, now, &limits, m)
            })
            .await??;
        let release = installed.release.clone();
        on_loading(&release);
        let dir = self.store.tree_path(&release.digest);
        let app = match load_tenant_app(
            &self.runtime,
            &AppSource::Dir(dir),
            release.tenant.as_deref(),
        )
        .await
        {
            Ok(app) => app,
            Err(error) if installed.unchanged => {
                return Err(PipelineError::ActiveUnloadable {
                    release: Box::new(release),
                    error,
                });
            }
            Err(error) => {
                // An upgrade's staged files are garbage now. A desired release's stay until GC:
                // the control plane may name it again, and the blob is not downloaded twice.
                if matches!(mode, Mode::Upgrade) {
                    self.discard(&release).await;
                }
                return Err(PipelineError::Load {
                    release: Box::new(release),
                    error,
                });
            }
        };
        if matches!(mode, Mode::Upgrade) && !installed.unchanged {
            let store = self.store.clone();
            self.blocking(move || store.activate(&release))
                .await?
                .map_err(InstallError::Store)?;
        }
        Ok(Checked { installed, app })
    }

    /// [`Pipeline::install`] of the bundle file `bundle` and its signature file `sig` (both read
    /// on the blocking pool, the bundle capped at the limits before it is read).
    pub async fn install_file(
        &self,
        bundle: &Path,
        sig: &Path,
        now: u64,
        mode: Mode,
        on_loading: impl FnOnce(&Release),
    ) -> Result<Checked, PipelineError> {
        let (b, s, max) = (
            bundle.to_owned(),
            sig.to_owned(),
            self.limits.max_compressed,
        );
        let (bytes, sig_bytes) = self
            .blocking(move || -> Result<_, PipelineError> {
                let bytes = install::read_bundle_file(&b, max)?;
                let sig_bytes = install::read_required_sig_file(&b, &s)?;
                Ok((bytes, sig_bytes))
            })
            .await??;
        self.install(bytes, sig_bytes, now, mode, on_loading).await
    }

    /// Staged but never activated: unless another record still names these files (a previous
    /// release of the same bytes), they are garbage now, and leaving them would let an index
    /// rebuild pick them up as the newest release.
    async fn discard(&self, release: &Release) {
        let store = self.store.clone();
        let digest = release.digest;
        let _ = self
            .blocking(move || {
                if !matches!(store.release(&digest), Ok(Some(_))) {
                    store.remove_files(&digest);
                }
            })
            .await;
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PipelineError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))
    }
}
