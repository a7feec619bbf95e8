//! `outpost run` on SIGHUP: re-read the config file and apply what can change while serving —
//! the `[[app]]` apps and their hosts and routes, `[trust]`, `[fairness]`, `[log] level` — with
//! one atomic swap of the routing table (requests already routed finish on the components they
//! hold, so none is dropped). TLS certificate files are re-read by their own SIGHUP handler
//! (`serve::certs::CertStore::spawn_reloader`). What only a restart can change (listener
//! addresses and deadlines, `[node]`, `[store]`, `[runtime]`, `[tls]` file lists,
//! `[control_plane]`) is named in the log and left as it is.
//!
//! Owns: the comparison of the running config with the new one, loading the new config apps,
//! and handing them to whoever owns the routing table (this daemon, or the node agent when it
//! runs).
//! Must not: bind or close listeners, exit the daemon, or replace anything when any part of the
//! new config fails to parse, verify or load — a bad config is refused as a whole, logged, and
//! the old one keeps serving.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bundle::sign::TrustPolicy;
use crate::ops::config::Config;
use crate::ops::metrics::Metrics;
use crate::ops::process::ExitError;
use crate::runtime::Runtime;
use crate::runtime::app::{AppSource, LoadedApp, load_app_with};
use crate::serve::{HostPattern, Router, ServeState};
use crate::store::{Release, Store};
use crate::sync::pipeline::{Checked, Mode, Pipeline};

/// Apps with the host patterns they serve.
pub(super) type HostedApps = Vec<(Vec<HostPattern>, LoadedApp)>;

/// The `[[app]]` entries of a config, split into app sources (directories, `.wasm`, built-ins)
/// and bundle files (installed into the store first), each with its parsed host patterns.
pub(super) type ConfigApps = (Vec<ConfigSource>, Vec<ConfigBundle>);

/// An `[[app]]` bundle: its host patterns, where it comes from and the values of its variables
/// (for the app the bundle holds, known once it is opened).
pub(super) type ConfigBundle = (
    Vec<HostPattern>,
    BundleOrigin,
    std::collections::BTreeMap<String, String>,
);

/// Where an `[[app]]` bundle comes from.
#[derive(Debug, Clone)]
pub(super) enum BundleOrigin {
    /// `APP.bundle`, its signature file next to it.
    File(PathBuf),
    /// `oci://HOST/REPO[:TAG][@sha256:…]`, its signature files attached in the registry.
    Oci(String),
}

impl std::fmt::Display for BundleOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Oci(r) => f.write_str(r),
        }
    }
}

/// Verifies, installs and loads a config bundle through `pipeline` (an operator's bundle, so
/// [`Mode::Upgrade`]); `variables` apply to the app it holds.
pub(super) async fn install_config_bundle(
    pipeline: &Pipeline,
    origin: &BundleOrigin,
    variables: &std::collections::BTreeMap<String, String>,
    cfg: &Config,
) -> Result<Checked, ExitError> {
    let runtime = pipeline.runtime.clone();
    let on_loading = move |r: &Release| runtime.add_app_variables(&r.app, variables);
    match origin {
        BundleOrigin::File(path) => pipeline
            .install_file(
                path,
                &crate::store::install::sig_path_for(path),
                crate::base::clock::unix_now(),
                Mode::Upgrade,
                on_loading,
            )
            .await
            .map_err(|e| ExitError::app(anyhow::anyhow!("{}: {e}", path.display()))),
        BundleOrigin::Oci(raw) => {
            super::oci::install_from_registry(
                raw,
                &cfg.registry,
                &cfg.state_dir(),
                pipeline,
                &on_loading,
            )
            .await
        }
    }
}

/// An `[[app]]` source: its host patterns, where it comes from and the values of its variables.
pub(super) type ConfigSource = (
    Vec<HostPattern>,
    AppSource,
    std::collections::BTreeMap<String, String>,
);

/// Parses the `[[app]]` entries of `cfg` (host patterns, sources) without loading anything.
pub(super) fn config_apps(cfg: &Config) -> Result<ConfigApps, ExitError> {
    let mut sources = Vec::new();
    let mut bundles = Vec::new();
    for (i, a) in cfg.apps().iter().enumerate() {
        let hosts = a
            .hosts
            .iter()
            .map(|h| crate::serve::router::parse_host_pattern(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                ExitError::config(anyhow::anyhow!("{}: app[{i}].hosts: {e}", cfg.origin()))
            })?;
        if let crate::ops::config::AppLocation::Oci(r) = &a.source {
            bundles.push((hosts, BundleOrigin::Oci(r.clone()), a.variables.clone()));
            continue;
        }
        let path = cfg.resolve_source(&a.source);
        if path.extension().is_some_and(|e| e == "bundle") {
            bundles.push((hosts, BundleOrigin::File(path), a.variables.clone()));
            continue;
        }
        let src = AppSource::from_path(&path).map_err(ExitError::app)?;
        sources.push((hosts, src, a.variables.clone()));
    }
    Ok((sources, bundles))
}

/// Where the routing table is rebuilt after a reload.
pub(super) enum TableOwner {
    /// No node agent: this daemon builds the table from the config apps and `others` (store
    /// apps no `[[app]]` names, as loaded at start, with their releases).
    Daemon {
        others: HostedApps,
        others_releases: Vec<Release>,
        /// Tells systemd the new app counts (`STATUS=`), like the agent's swaps do.
        on_swap: Option<crate::sync::OnSwap>,
    },
    /// The node agent owns the table; reloads are sent to it.
    Agent(tokio::sync::mpsc::UnboundedSender<crate::sync::ConfigReload>),
}

/// What a reload needs from the running daemon.
pub(super) struct Reloader {
    /// The config file; `None` when running on the embedded default (nothing to re-read).
    pub path: Option<PathBuf>,
    /// The config the daemon started with: restart-only sections are compared against it.
    pub started: Config,
    pub runtime: Arc<Runtime>,
    pub store: Arc<Store>,
    pub limits: crate::bundle::archive::Limits,
    pub serve: Arc<ServeState>,
    pub metrics: Metrics,
    pub owner: TableOwner,
    /// Told when a reload starts and when it ends, whatever its outcome (systemd's
    /// `RELOADING=1` … `READY=1`).
    pub on_phase: Option<Arc<dyn Fn(ReloadPhase) + Send + Sync>>,
}

/// Where a reload is, for [`Reloader::on_phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReloadPhase {
    Started,
    Finished,
}

/// The new config's apps, loaded and ready to route.
struct Loaded {
    fixed: HostedApps,
    fixed_releases: Vec<Release>,
    config_store_apps: BTreeSet<String>,
    policy: TrustPolicy,
}

impl Reloader {
    /// Reloads on every signal `hup` delivers, until the task is dropped.
    pub async fn run(self, mut hup: tokio::signal::unix::Signal) {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading the configuration");
            if let Some(f) = &self.on_phase {
                f(ReloadPhase::Started);
            }
            self.reload().await;
            if let Some(f) = &self.on_phase {
                f(ReloadPhase::Finished);
            }
        }
    }

    /// One reload; every outcome is logged, none ends the daemon.
    pub async fn reload(&self) {
        let Some(path) = &self.path else {
            tracing::info!(
                "running on the embedded default config: no config file to re-read (TLS certificates are still reloaded)"
            );
            return;
        };
        let cfg = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; still serving the previous configuration");
                return;
            }
        };
        // The loads below (and every later one) use the new values; a refused reload puts the
        // previous ones back.
        let previous = self.runtime.set_app_variables(cfg.variables.clone());
        let loaded = match self.load(&cfg).await {
            Ok(l) => l,
            Err(e) => {
                self.runtime.set_app_variables(previous);
                tracing::error!(error = %format!("{:#}", e.error), "config reload refused; still serving the previous configuration");
                return;
            }
        };
        let apps = loaded.fixed.len();
        let reloaded: BTreeSet<String> = loaded.fixed.iter().map(|(_, a)| a.name.clone()).collect();
        match self.swap(loaded).await {
            Ok(()) => {
                for app in changed_variables(&previous, &self.runtime, &reloaded) {
                    tracing::warn!(
                        %app,
                        "variables changed for an app this reload does not load again (not named by [[app]]); they apply when its next release loads or at restart"
                    );
                }
                crate::ops::logging::apply_config_level_logged(cfg.log.level.as_deref(), true);
                self.runtime.set_cpu_weights(
                    cfg.fairness
                        .cpu_weight
                        .iter()
                        .map(|(app, w)| (app.clone(), *w))
                        .collect(),
                );
                for section in restart_only_changes(&self.started, &cfg) {
                    tracing::warn!(
                        section,
                        "config change needs a restart; not applied (still running with the previous value)"
                    );
                }
                let router = self.serve.router();
                tracing::info!(
                    config_apps = apps,
                    apps = router.apps().count(),
                    components = router.component_count(),
                    "configuration reloaded"
                );
            }
            Err(e) => {
                self.runtime.set_app_variables(previous);
                tracing::error!(error = %e, "config reload refused; still serving the previous configuration");
            }
        }
    }

    /// Loads every app the new config names — sources first (no side effects), then bundles,
    /// which are verified under the new trust policy and installed like at start.
    async fn load(&self, cfg: &Config) -> Result<Loaded, ExitError> {
        let policy = super::trust::node_trust_policy(cfg)?;
        let (sources, bundles) = config_apps(cfg)?;
        let mut fixed = Vec::with_capacity(sources.len() + bundles.len());
        for (hosts, src, variables) in &sources {
            let app = load_app_with(&self.runtime, src, None, variables)
                .await
                .map_err(ExitError::app)?;
            fixed.push((hosts.clone(), app));
        }
        let mut fixed_releases = Vec::new();
        let mut config_store_apps = BTreeSet::new();
        for (hosts, origin, variables) in bundles {
            let (release, app) = self
                .install_bundle(&origin, &policy, &variables, cfg)
                .await?;
            config_store_apps.insert(release.app.clone());
            fixed_releases.push(release);
            fixed.push((hosts, app));
        }
        Ok(Loaded {
            fixed,
            fixed_releases,
            config_store_apps,
            policy,
        })
    }

    /// Verifies and installs a config bundle (unchanged when it already is the active release)
    /// and loads it.
    async fn install_bundle(
        &self,
        origin: &BundleOrigin,
        policy: &TrustPolicy,
        variables: &std::collections::BTreeMap<String, String>,
        cfg: &Config,
    ) -> Result<(Release, LoadedApp), ExitError> {
        let pipeline = Pipeline {
            store: self.store.clone(),
            runtime: self.runtime.clone(),
            policy: Arc::new(policy.clone()),
            limits: self.limits,
        };
        let Checked { installed, app } =
            install_config_bundle(&pipeline, origin, variables, cfg).await?;
        let release = installed.release;
        if !installed.unchanged {
            tracing::info!(app = %release.app, version = %release.version, digest = %release.digest, "installed bundle");
        }
        Ok((release, app))
    }

    /// Puts the new config apps in force: one routing swap, or nothing at all.
    async fn swap(&self, loaded: Loaded) -> Result<(), String> {
        match &self.owner {
            TableOwner::Daemon {
                others,
                others_releases,
                on_swap,
            } => {
                let mut apps = loaded.fixed;
                apps.extend(others.iter().cloned());
                let router = Router::new(apps).map_err(|e| e.to_string())?;
                self.serve.swap_router(router);
                if let Some(f) = on_swap {
                    (f.0)();
                }
                self.metrics.set_app_releases(
                    loaded
                        .fixed_releases
                        .iter()
                        .chain(others_releases)
                        .map(|r| (r.app.as_str(), r.version.as_str(), r.digest.to_string())),
                );
                Ok(())
            }
            TableOwner::Agent(tx) => {
                let (done, answer) = tokio::sync::oneshot::channel();
                tx.send(crate::sync::ConfigReload {
                    fixed: loaded.fixed,
                    fixed_releases: loaded.fixed_releases,
                    config_store_apps: loaded.config_store_apps,
                    policy: Arc::new(loaded.policy),
                    done,
                })
                .map_err(|_| "the node agent has stopped".to_owned())?;
                answer
                    .await
                    .map_err(|_| "the node agent has stopped".to_owned())?
            }
        }
    }
}

/// The apps outside `reloaded` whose variable values differ between `previous` and what
/// `runtime` holds now: they keep the values they were loaded with until they load again.
fn changed_variables(
    previous: &crate::runtime::AppVariables,
    runtime: &Runtime,
    reloaded: &BTreeSet<String>,
) -> Vec<String> {
    let now = runtime.all_app_variables();
    let mut names: BTreeSet<&String> = previous.keys().collect();
    names.extend(now.keys());
    names
        .into_iter()
        .filter(|app| !reloaded.contains(*app) && previous.get(*app) != now.get(*app))
        .cloned()
        .collect()
}

/// The config sections that differ between `old` and `new` but only take effect at a start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let (a, b) = (&old.listen, &new.listen);
    let listen = [
        ("listen.http", a.http != b.http),
        ("listen.https", a.https != b.https),
        ("listen.h3", a.h3 != b.h3),
        ("listen.admin", a.admin != b.admin),
        ("listen.drain_timeout", a.drain_timeout != b.drain_timeout),
        (
            "listen.header_timeout",
            a.header_timeout != b.header_timeout,
        ),
        ("listen.idle_timeout", a.idle_timeout != b.idle_timeout),
        (
            "listen.max_connections_per_ip",
            a.max_connections_per_ip != b.max_connections_per_ip,
        ),
        (
            "listen.admin_max_connections",
            a.admin_max_connections != b.admin_max_connections,
        ),
    ];
    out.extend(listen.into_iter().filter(|(_, c)| *c).map(|(k, _)| k));
    if old.node != new.node {
        out.push("node");
    }
    if old.store != new.store {
        out.push("store");
    }
    if old.key_value != new.key_value {
        out.push("key_value");
    }
    if old.tls != new.tls {
        out.push("tls (certificate files are re-read; which files are used is fixed at start)");
    }
    if old.control_plane != new.control_plane {
        out.push("control_plane");
    }
    if old.registry != new.registry && new.control_plane.is_some() {
        out.push(
            "registry (for control-plane releases; [[app]] oci:// sources use the new settings)",
        );
    }
    if old.runtime_table() != new.runtime_table() {
        out.push("runtime");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap()
    }

    #[test]
    fn only_restart_only_sections_are_reported() {
        let base = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n";
        let old = cfg(base);
        // Apps, trust and fairness apply live: nothing to report.
        let live = cfg(&format!(
            "{base}[fairness]\ncpu_weight = {{ a = 5 }}\n[[app]]\nsource = \"builtin:demo\"\nhosts = [\"x\"]\n"
        ));
        assert!(restart_only_changes(&old, &live).is_empty());
        let moved = cfg(
            "[listen]\nhttp = [\"127.0.0.1:8081\"]\nheader_timeout = \"2s\"\n[runtime]\nmax_connections = 5\n",
        );
        assert_eq!(
            restart_only_changes(&old, &moved),
            ["listen.http", "listen.header_timeout", "runtime"]
        );
    }
}
