//! `outpost bundle install`: one signed release into the node's store, through the same
//! pipeline a start and the node agent use (`sync::pipeline`), with the engine `outpost run`
//! would build from the same config.
//!
//! Owns: putting that one-shot pipeline together (config → sizing → engine → store) and running
//! it once.
//! Must not: parse arguments or print (`cli::bundle` does both), or activate a release that did
//! not load — the pipeline never does.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};

use crate::base::clock::unix_now;
use crate::bundle::archive::Limits;
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;
use crate::ops::process::ExitError;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::store::install::{self, Installed};
use crate::store::{Release, Store};
use crate::sync::pipeline::{Mode, Pipeline};

/// Verifies `bundle` against its signature file `sig_path` under the node's `[trust]`, writes
/// it to the store in the node's state directory, loads every component with the node's engine
/// settings (which fills the code cache the next start reads), and activates it. `on_loading`
/// is called once the release is verified and written, before its components compile;
/// `on_component` sees each component start and finish compiling.
pub fn install_bundle(
    cfg: &Config,
    bundle: &Path,
    sig_path: &Path,
    on_loading: impl FnOnce(&Release),
    on_component: Option<crate::runtime::LoadObserver>,
) -> Result<Installed, ExitError> {
    let policy = super::trust::node_trust_policy(cfg)?;
    let limits = Limits {
        max_compressed: cfg.store.max_bundle_size,
        ..Default::default()
    };
    let bytes = install::read_bundle_file(bundle, limits.max_compressed).map_err(ExitError::app)?;
    let sig = install::read_required_sig_file(bundle, sig_path).map_err(ExitError::app)?;
    // The engine is set up before anything is written, so a config problem is reported as one
    // (64) and the load check measures only the release.
    let (rt, runtime) = node_runtime(cfg)?;
    if let Some(o) = on_component {
        runtime.observe_loads(o);
    }
    // The node's `[variables.APP]` values: a required variable is checked like at start.
    runtime.set_app_variables(cfg.variables.clone());
    let store_dir = cfg.state_dir().join("store");
    let (store, _) = Store::open(&store_dir)
        .with_context(|| format!("opening the store in {}", store_dir.display()))
        .map_err(ExitError::runtime)?;
    // The load check compiles every component with the daemon's engine settings (so the next
    // start deserializes instead of compiling) and proves the release links against and
    // instantiates on this node's host — before it becomes active, so a signed but broken
    // release never replaces a working one. An already active bundle is loaded too, which
    // refills the code cache if it was trimmed.
    let pipeline = Pipeline {
        store: Arc::new(store),
        runtime,
        policy: Arc::new(policy),
        limits,
    };
    rt.block_on(pipeline.install(bytes, sig, unix_now(), Mode::Upgrade, on_loading))
        .map(|checked| checked.installed)
        .with_context(|| format!("{}", bundle.display()))
        .map_err(ExitError::app)
}

/// The engine `outpost run` would build from `cfg`, with the (current-thread) async runtime it
/// lives in: the pooling allocator's reservations belong to a runtime context.
fn node_runtime(cfg: &Config) -> Result<(tokio::runtime::Runtime, Arc<Runtime>), ExitError> {
    let overrides = super::run::overrides_from(cfg)?;
    let sizing =
        crate::sizing::derive(&crate::sizing::detect(), &overrides).map_err(ExitError::config)?;
    let code_dir = cfg.state_dir().join("compiled");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ExitError::runtime(anyhow!("cannot start the async runtime: {e}")))?;
    let runtime = rt.block_on(async {
        Runtime::new(
            RuntimeSettings::from_sizing(&sizing, Some(code_dir)),
            Metrics::new(),
        )
        .map(Arc::new)
        .map_err(ExitError::runtime)
    })?;
    Ok((rt, runtime))
}
