//! The daemon `outpost run` starts.
//!
//! Order matters: parse and validate the config, derive the sizing, load and link every app, and
//! only then bind ports — a bad config or a broken app never leaves a half-started daemon.
//! With `[control_plane]`, the node agent's files (pinned keys, node key, enrolment, the last
//! applied desired state) are checked before binding too; the agent itself starts once the
//! listeners are up, so readiness never waits for the control plane.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::ops::admin::{self, AdminState};
use crate::ops::config::{self, Config};
use crate::ops::metrics::Metrics;
use crate::ops::process::ExitError;
use crate::ops::systemd::{self, Notify};
use crate::runtime::app::{AppSource, load_app_with, load_tenant_app};
use crate::runtime::{Runtime, RuntimeSettings};
use crate::serve::{Router, ServeState};
use crate::sizing;
use crate::sync::pipeline::Pipeline;

/// The `[runtime]` table of `cfg` as sizing overrides.
pub fn overrides_from(cfg: &Config) -> Result<sizing::Overrides, ExitError> {
    let table = config::normalise_runtime_table(cfg.runtime_table()).map_err(ExitError::config)?;
    sizing::Overrides::deserialize(toml::Value::Table(table))
        .map_err(|e| ExitError::config(anyhow::anyhow!("{}: runtime: {e}", cfg.origin())))
}

/// How `outpost run` was started, beyond the config itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file, re-read on SIGHUP; `None` for the embedded default (nothing to re-read).
    pub config_path: Option<PathBuf>,
    /// Validate the config and load every app, then return without binding a port.
    pub check: bool,
}

/// Runs the node `cfg` describes until SIGTERM or SIGINT, then drains.
/// Sockets passed in by systemd (`outpost.socket`) replace the configured ones of their role.
pub fn run(cfg: Config, opts: RunOptions) -> Result<(), ExitError> {
    let node = Node::from_config(cfg, opts)?;
    let sockets = systemd::take_listeners()
        .map_err(|e| ExitError::config(anyhow::anyhow!(e)))?
        .unwrap_or_default();
    if !sockets.http.is_empty() {
        tracing::info!(
            sockets = sockets.http.len(),
            "tenant HTTP sockets from systemd; listen.http not bound"
        );
    }
    let rt = crate::ops::process::tokio_runtime(node.sizing.worker_threads.value)?;
    rt.block_on(node.run(sockets, crate::ops::process::shutdown_signal()))
}

pub use crate::ops::systemd::Sockets;

/// A node whose config validated: sizing derived, trust policy, apps and TLS certificates read,
/// the control plane's pinned keys checked — everything that can be wrong with the config is
/// found here, before an async runtime exists or a port is bound.
pub struct Node {
    cfg: Config,
    opts: RunOptions,
    sizing: sizing::Sizing,
    state_dir: PathBuf,
    apps_cfg: Vec<super::reload::ConfigSource>,
    bundle_cfg: Vec<super::reload::ConfigBundle>,
    policy: crate::bundle::sign::TrustPolicy,
    tls: Option<crate::serve::tls::TlsSetup>,
}

impl Node {
    /// The node's key-value stores: the embedded ones in `<state_dir>/kv` (for `--check`, which
    /// must not take the lock of a running daemon's, a temporary database in the state
    /// directory, the one place its user may write), the rest as `[key_value.stores]` says.
    fn open_key_value(
        cfg: &Config,
        state_dir: &std::path::Path,
        check: bool,
        metrics: &Metrics,
    ) -> Result<Arc<crate::runtime::kv::KeyValue>, ExitError> {
        let db = if check {
            crate::store::kv::KvDb::temporary_in(state_dir)
        } else {
            crate::store::kv::KvDb::open(&state_dir.join("kv"))
        }
        .map_err(ExitError::runtime)?;
        crate::runtime::kv::KeyValue::new(&cfg.key_value, db, metrics.clone())
            .map(Arc::new)
            .map_err(|e| ExitError::config(anyhow::anyhow!("key_value: {e}")))
    }

    /// Validates `cfg` into a node that [`Node::run`] starts. Applies the config's log level.
    pub fn from_config(cfg: Config, opts: RunOptions) -> Result<Self, ExitError> {
        crate::ops::logging::apply_config_level_logged(cfg.log.level.as_deref(), false);
        let overrides = overrides_from(&cfg)?;
        let hw = sizing::detect();
        let sizing = sizing::derive(&hw, &overrides).map_err(ExitError::config)?;
        let state_dir = config::resolve_state_dir(&cfg, |k| std::env::var_os(k));
        // Bundles named in the config are installed into the store (verified first) and served
        // from there, like every release the store holds; `hosts` of such an entry apply to its
        // app.
        let (apps_cfg, bundle_cfg) = super::reload::config_apps(&cfg)?;
        let policy = super::trust::node_trust_policy(&cfg)?;
        if let Some(cp) = &cfg.control_plane {
            crate::sync::files::pinned_keys(&cp.keys).map_err(cp_error(&cfg))?;
        }
        let tls = tls_from_config(&cfg, &sizing, (!opts.check).then(|| state_dir.join("tls")))?;
        Ok(Self {
            cfg,
            opts,
            sizing,
            state_dir,
            apps_cfg,
            bundle_cfg,
            policy,
            tls,
        })
    }

    /// Starts the node: the store and its installs, every app loaded, the listeners, systemd
    /// readiness, the agent; serves until `shutdown` resolves, then drains. `sockets` given
    /// (already bound) replace the configured listen addresses of their role; the rest are
    /// bound from the config. With [`RunOptions::check`], returns once every app loaded,
    /// without binding a port.
    pub async fn run(
        self,
        sockets: Sockets,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ExitError> {
        let Self {
            cfg,
            opts,
            sizing,
            state_dir,
            apps_cfg,
            bundle_cfg,
            policy,
            tls,
        } = self;
        let check = opts.check;
        let cp_error = cp_error(&cfg);
        super::log_sizing(&sizing);
        // Outside systemd both are `None`; a malformed value is logged, not fatal: the unit's
        // start/watchdog timeout then tells the operator more than a refusal to start would.
        let notifier = systemd::Notifier::from_env()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "systemd notifications off");
                None
            })
            .map(Arc::new);
        let watchdog_every = systemd::watchdog_interval_from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "systemd watchdog off");
            None
        });
        // SIGHUP reloads from here on, and never kills: the handler is installed before anything
        // is loaded or announced (long before READY), and signals that arrive before the reload
        // task runs wait in the stream.
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the config cannot be reloaded");
                None
            }
        };
        if let Err(e) = std::fs::create_dir_all(&state_dir) {
            return Err(ExitError::config(anyhow::anyhow!(
                "state_dir {}: cannot create: {e}",
                state_dir.display()
            )));
        }
        let setup = match (&cfg.control_plane, check) {
            (Some(cp), false) => {
                let mut setup = crate::sync::Setup::prepare(cp, cfg.node_name(), &state_dir)
                    .map_err(&cp_error)?;
                setup.registry = cfg.registry.clone();
                Some(setup)
            }
            _ => None,
        };
        let metrics = Metrics::new();
        let runtime = Arc::new(
            Runtime::new(
                RuntimeSettings::from_sizing(&sizing, Some(state_dir.join("compiled"))),
                metrics.clone(),
            )
            .map_err(ExitError::runtime)?,
        );
        runtime.set_key_value(Self::open_key_value(&cfg, &state_dir, check, &metrics)?);
        runtime.set_app_variables(cfg.variables.clone());
        runtime.set_cpu_weights(
            cfg.fairness
                .cpu_weight
                .iter()
                .map(|(app, w)| (app.clone(), *w))
                .collect(),
        );
        let mut apps = Vec::with_capacity(apps_cfg.len());
        for (hosts, src, variables) in &apps_cfg {
            let app = load_app_with(&runtime, src, None, variables)
                .await
                .map_err(ExitError::app)?;
            apps.push((hosts.clone(), app));
        }
        let store_dir = state_dir.join("store");
        let limits = crate::bundle::archive::Limits {
            max_compressed: cfg.store.max_bundle_size,
            ..Default::default()
        };
        // A config bundle is loaded once before it becomes active (like `outpost bundle
        // install`), so a broken one never replaces the release that served before.
        let (store, stored, mut config_loaded) =
            open_store_and_install(&store_dir, &runtime, &policy, &limits, &bundle_cfg, &cfg)
                .await?;
        let config_store_apps: std::collections::BTreeSet<String> =
            config_loaded.keys().cloned().collect();
        // Apps the control plane assigns (store apps not named by a config bundle) take their
        // host names from the last applied desired state; one it does not name is not served
        // (the agent drops its record when it re-applies that state).
        let mut managed = Vec::new();
        let mut releases = Vec::new();
        // Store apps no `[[app]]` names, served without an agent: kept as they are by reloads.
        let mut others = Vec::new();
        let mut others_releases = Vec::new();
        for (hosts, r) in &stored {
            let from_cp = setup.is_some() && !config_store_apps.contains(&r.release.app);
            let hosts = match setup.as_ref().filter(|_| from_cp) {
                Some(s) if s.applied.is_some() => match s.applied_hosts(&r.release.app) {
                    Some(h) => h,
                    None => {
                        tracing::info!(app = %r.release.app, "installed app is not in the applied desired state; not serving it");
                        continue;
                    }
                },
                _ => hosts.clone(),
            };
            let loaded = if let Some(app) = config_loaded
                .remove(&r.release.app)
                .filter(|(digest, _)| *digest == r.release.digest)
            {
                // The pipeline just loaded this very release: serve what it loaded.
                Some((r.release.clone(), app.1))
            } else if config_store_apps.contains(&r.release.app) {
                // The operator named this bundle in [[app]]: like any configured app, it
                // loads or the start fails.
                let app = load_tenant_app(
                    &runtime,
                    &AppSource::Dir(r.dir.clone()),
                    r.release.tenant.as_deref(),
                )
                .await
                .map_err(|e| {
                    ExitError::app(anyhow::anyhow!(
                        "installed release {} {} ({}): {e:#}",
                        r.release.app,
                        r.release.version,
                        r.release.digest
                    ))
                })?;
                Some((r.release.clone(), app))
            } else {
                load_stored(&runtime, &store, &policy, &limits, &metrics, r).await
            };
            let Some((release, app)) = loaded else {
                continue;
            };
            tracing::info!(app = %release.app, version = %release.version, digest = %release.digest, "serving installed release");
            releases.push(release.clone());
            if from_cp {
                managed.push(crate::sync::Managed {
                    release,
                    app,
                    hosts,
                });
            } else {
                if !config_store_apps.contains(&release.app) {
                    others.push((hosts.clone(), app.clone()));
                    others_releases.push(release);
                }
                apps.push((hosts, app));
            }
        }
        metrics.set_app_releases(
            releases
                .iter()
                .map(|r| (r.app.as_str(), r.version.as_str(), r.digest.to_string())),
        );
        // Config apps stay as they are; the agent rebuilds the table around them.
        let fixed = apps.clone();
        let fixed_releases: Vec<_> = releases
            .iter()
            .filter(|r| config_store_apps.contains(&r.app))
            .cloned()
            .collect();
        apps.extend(managed.iter().map(|m| (m.hosts.clone(), m.app.clone())));
        if apps.is_empty() {
            tracing::warn!(store = %store_dir.display(), "no apps configured or installed; every request will get 404");
        }
        // Compiled code of every loaded component stays; the rest is the store's to trim.
        let keep_wasm = apps
            .iter()
            .flat_map(|(_, a)| a.components.iter().map(|c| c.component.digest.clone()))
            .collect();
        let router = Router::new(apps).map_err(|e| ExitError::config(anyhow::anyhow!(e)))?;
        if check {
            println!(
                "config ok: {} app(s), {} component(s)",
                router.apps().count(),
                router.component_count()
            );
            return Ok(());
        }
        let code_dir = state_dir.join("compiled");
        let budget = cfg.store.disk_budget;
        let gc_store = store.clone();
        let gc =
            tokio::task::spawn_blocking(move || run_gc(&gc_store, &code_dir, budget, &keep_wasm));

        // Sockets handed in replace the configured ones of their role.
        let activated = sockets;
        let http_addrs = if activated.http.is_empty() {
            cfg.http_listen()
        } else {
            &[]
        };
        let mut listeners =
            crate::serve::Listeners::bind(http_addrs, cfg.https_listen(), tls.as_ref())
                .await
                .map_err(ExitError::runtime)?;
        for l in activated.http {
            listeners.http.push(adopt(l, "tenant HTTP")?);
        }
        // Certificate files are watched from here on (and reloaded on SIGHUP) until exit.
        let (_stop_reloader, reloader_stop) = tokio::sync::watch::channel(false);
        if let Some(t) = &tls {
            t.certs.set_metrics(metrics.clone());
            t.certs
                .spawn_reloader(cfg.tls.reload_interval, reloader_stop);
        }
        let admin_listener = match (activated.admin, cfg.admin_listen()) {
            (Some(l), _) => Some(adopt(l, "admin")?),
            (None, Some(a)) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                ExitError::runtime(anyhow::anyhow!("cannot listen on {a} (admin): {e}"))
            })?),
            (None, None) => None,
        };
        // The serving state (and with it the component gauges) exists before any address is
        // announced, so a scrape right after the admin address appears sees the loaded apps.
        let app_count = router.apps().count();
        let state = Arc::new(ServeState::new(router, metrics.clone()));
        let reload_state = state.clone();
        super::announce_listeners(&listeners);
        if let Some(l) = &admin_listener
            && let Ok(a) = l.local_addr()
        {
            crate::ops::process::announce("admin listening on", a);
        }

        let tenant_addrs = [listeners.http_addrs(), listeners.https_addrs()].concat();
        let admin_state = Arc::new(AdminState {
            metrics: metrics.clone(),
            ready: Default::default(),
        });
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let admin_task = admin_listener.map(|l| {
            let door = crate::serve::door::Door::new(
                "admin",
                crate::serve::door::DoorPolicy {
                    max_connections: cfg.listen.admin_max_connections,
                    header_timeout: cfg.listen.header_timeout,
                    idle_timeout: cfg.listen.idle_timeout,
                    max_per_ip: None,
                },
                Some(metrics.connections_closed.clone()),
            );
            let admin_state = admin_state.clone();
            let svc = move |req: http::Request<hyper::body::Incoming>| {
                let resp = admin::respond_to(&admin_state, &req);
                async move { resp }
            };
            tokio::spawn(crate::serve::door::serve_small(
                door,
                vec![l],
                None,
                Arc::new(hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )),
                svc,
                admin_stopped,
                std::time::Duration::from_secs(1),
            ))
        });
        let status_line = notifier.as_ref().map(|n| {
            Arc::new(StatusLine {
                notifier: n.clone(),
                addrs: tenant_addrs,
                serve: state.clone(),
                phase: std::sync::Mutex::new(Phase::Starting),
            })
        });
        // The listeners are bound: the agent may swap the router from here on.
        let (stop_agent, agent_stop) = tokio::sync::watch::channel(false);
        let on_swap = status_line
            .clone()
            .map(|s| crate::sync::OnSwap(Arc::new(move || s.swapped())));
        let owner = match &setup {
            Some(_) => None,
            None => Some(super::reload::TableOwner::Daemon {
                others,
                others_releases,
                on_swap: on_swap.clone(),
            }),
        };
        let (reload_tx, reloads) = tokio::sync::mpsc::unbounded_channel();
        let agent = setup.map(|setup| {
            let parts = crate::sync::Parts {
                setup,
                store: store.clone(),
                policy: Arc::new(policy),
                limits,
                runtime: runtime.clone(),
                metrics: metrics.clone(),
                serve: state.clone(),
                fixed,
                fixed_releases,
                config_store_apps,
                managed,
                reloads,
                on_swap,
            };
            // After the start-up GC pass, which would take the agent's not yet activated
            // installs for garbage.
            tokio::spawn(async move {
                let _ = gc.await;
                let _ = crate::sync::spawn(parts, agent_stop).await;
            })
        });
        let reloader = hup.map(|hup| {
            let reloader = super::reload::Reloader {
                path: opts.config_path.clone(),
                started: cfg.clone(),
                runtime: runtime.clone(),
                store: store.clone(),
                limits,
                serve: reload_state.clone(),
                metrics: metrics.clone(),
                owner: owner.unwrap_or(super::reload::TableOwner::Agent(reload_tx)),
                on_phase: status_line.clone().map(|s| {
                    Arc::new(move |p| s.reload_phase(p))
                        as Arc<dyn Fn(super::reload::ReloadPhase) + Send + Sync>
                }),
            };
            tokio::spawn(reloader.run(hup))
        });
        admin_state.ready.store(true, Ordering::Release);
        tracing::info!(apps = app_count, state_dir = %state_dir.display(), "outpost ready");

        let admin_for_drain = admin_state.clone();
        let probe_state = state.clone();
        let mut watchdog = None;
        let left = crate::serve::serve(
            listeners,
            state,
            crate::serve::ServeOptions {
                door: crate::serve::door::DoorPolicy {
                    max_connections: sizing.max_connections.value as usize,
                    header_timeout: cfg.listen.header_timeout,
                    idle_timeout: cfg.listen.idle_timeout,
                    max_per_ip: cfg.listen.max_connections_per_ip,
                },
                drain: cfg.drain_timeout(),
                threads: sizing.worker_threads.value,
            },
            async {
                // First polled once `serve` has started its serving threads and accept loops.
                if let Some(s) = &status_line {
                    s.ready();
                }
                if let (Some(n), Some(every)) = (&notifier, watchdog_every) {
                    watchdog = Some(tokio::spawn(systemd::run_watchdog(
                        n.clone(),
                        every,
                        move || {
                            let s = probe_state.clone();
                            async move { s.serving_threads_answer(every / 2).await }
                        },
                    )));
                }
                shutdown.await;
                let _ = stop_agent.send(true);
                // Not ready while draining, so load balancers stop sending traffic.
                admin_for_drain.ready.store(false, Ordering::Release);
                if let Some(s) = &status_line {
                    s.stopping();
                }
            },
        )
        .await
        .map_err(ExitError::runtime)?;
        if let Some(w) = watchdog {
            w.abort();
        }
        if let Some(r) = reloader {
            r.abort();
        }
        let _ = stop_admin.send(true);
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        if let Some(a) = agent {
            // It stopped at the signal; this only collects the task (bounded, in case an
            // install is finishing on a blocking thread).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), a).await;
        }
        drop(runtime);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "exited with connections cut at the drain deadline"
            );
        }
        Ok(())
    }
}

/// A socket handed in, made non-blocking and registered with the async runtime.
fn adopt(l: std::net::TcpListener, role: &str) -> Result<tokio::net::TcpListener, ExitError> {
    l.set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(l))
        .map_err(|e| ExitError::runtime(anyhow::anyhow!("handed-in {role} socket: {e}")))
}

/// Maps an agent setup error to a config error naming the file.
fn cp_error(cfg: &Config) -> impl Fn(crate::sync::SyncError) -> ExitError + use<> {
    let origin = cfg.origin().to_owned();
    move |e| ExitError::config(anyhow::anyhow!("{origin}: {e}"))
}

use serde::Deserialize as _;

/// Where the daemon is in its life, as far as systemd's STATUS line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before READY: a swap sends nothing, READY carries the counts of the table then.
    Starting,
    Ready,
    /// After STOPPING: "draining" must stay the last word, whatever the agent still swaps.
    Stopping,
}

/// systemd's `STATUS=` line follows the routing table: sent with READY and again after every
/// swap the node agent makes (installs, removals, rollbacks change the counts). The lock orders
/// the messages, and each one reads the table current when it is sent, so the last STATUS
/// systemd sees is never an older table's.
struct StatusLine {
    notifier: Arc<systemd::Notifier>,
    addrs: Vec<std::net::SocketAddr>,
    serve: Arc<ServeState>,
    phase: std::sync::Mutex<Phase>,
}

impl StatusLine {
    fn serving(&self) -> Notify {
        let router = self.serve.router();
        Notify::Status(systemd::serving_status(
            router.apps().count(),
            router.component_count(),
            &self.addrs,
        ))
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ready(&self) {
        let mut phase = self.phase();
        if *phase == Phase::Starting {
            *phase = Phase::Ready;
            self.notifier.send_or_log(&[Notify::Ready, self.serving()]);
        }
    }

    fn swapped(&self) {
        let phase = self.phase();
        if *phase == Phase::Ready {
            self.notifier.send_or_log(&[self.serving()]);
        }
    }

    /// A SIGHUP reload: `RELOADING=1` when it starts, `READY=1` and the (maybe new) app counts
    /// when it ends, refused or not. Nothing while starting or stopping.
    fn reload_phase(&self, p: super::reload::ReloadPhase) {
        let phase = self.phase();
        if *phase != Phase::Ready {
            return;
        }
        match p {
            super::reload::ReloadPhase::Started => self.notifier.send_or_log(&[
                Notify::Reloading {
                    monotonic_usec: systemd::monotonic_usec(),
                },
                Notify::Status("reloading the configuration".into()),
            ]),
            super::reload::ReloadPhase::Finished => {
                self.notifier.send_or_log(&[Notify::Ready, self.serving()]);
            }
        }
    }

    fn stopping(&self) {
        let mut phase = self.phase();
        *phase = Phase::Stopping;
        self.notifier
            .send_or_log(&[Notify::Stopping, Notify::Status("draining".into())]);
    }
}

/// The TLS setup for `listen.https` (`None` without TLS listeners); a generated development
/// certificate is saved under `pem_dir` for clients to trust.
fn tls_from_config(
    cfg: &Config,
    sizing: &sizing::Sizing,
    pem_dir: Option<PathBuf>,
) -> Result<Option<crate::serve::tls::TlsSetup>, ExitError> {
    use crate::serve::certs::{CertPaths, CertSpec, DefaultCert};
    if cfg.https_listen().is_empty() {
        return Ok(None);
    }
    let paths = |f: &config::CertFiles| CertPaths {
        cert: f.cert.clone(),
        key: f.key.clone(),
    };
    let spec = CertSpec {
        default: cfg
            .tls
            .default_cert
            .as_ref()
            .map(|f| DefaultCert::Files(paths(f))),
        tenants: cfg
            .tls
            .certs
            .iter()
            .map(|c| (c.hosts.clone(), paths(&c.files)))
            .collect(),
    };
    let pem = pem_dir.map(|d| d.join("self-signed-localhost.pem"));
    super::tls_setup(
        spec,
        cfg.tls.self_signed,
        pem.as_deref(),
        cfg.h3(),
        sizing,
        cfg.tls.handshake_timeout,
    )
    .map(Some)
    .map_err(|e| ExitError {
        code: e.code,
        error: e.error.context(format!("{}: tls", cfg.origin())),
    })
}

/// Opens the store, installs the bundles named in the config, and returns every release to
/// serve with its host patterns.
type Servable = (
    Vec<crate::serve::HostPattern>,
    crate::store::install::ServableRelease,
);

/// The store, what it serves, and the apps named by config bundles with the release the
/// pipeline loaded for each (its digest and the loaded app, so the start does not load it twice).
type OpenedStore = (
    Arc<crate::store::Store>,
    Vec<Servable>,
    std::collections::BTreeMap<String, (crate::bundle::Digest, crate::runtime::app::LoadedApp)>,
);

async fn open_store_and_install(
    store_dir: &std::path::Path,
    runtime: &Arc<Runtime>,
    policy: &crate::bundle::sign::TrustPolicy,
    limits: &crate::bundle::archive::Limits,
    bundles: &[super::reload::ConfigBundle],
    cfg: &Config,
) -> Result<OpenedStore, ExitError> {
    use crate::store::{Store, install};
    let blocking =
        |e: tokio::task::JoinError| ExitError::runtime(anyhow::anyhow!("store task: {e}"));
    let (dir, p, l) = (store_dir.to_owned(), policy.clone(), *limits);
    let store = tokio::task::spawn_blocking(move || {
        let (store, report) = Store::open(&dir)
            .map_err(|e| ExitError::runtime(anyhow::anyhow!("store {}: {e}", dir.display())))?;
        if report.swept > 0 {
            tracing::info!(
                swept = report.swept,
                "removed partial files left by an interrupted install"
            );
        }
        if report.index_recovered.is_some() {
            let n = install::rebuild_index(&store, &p, &l);
            tracing::warn!(
                releases = n,
                "store index rebuilt from the verified bundles on disk"
            );
        }
        Ok::<_, ExitError>(Arc::new(store))
    })
    .await
    .map_err(blocking)??;
    let pipeline = Pipeline {
        store: store.clone(),
        runtime: runtime.clone(),
        policy: Arc::new(policy.clone()),
        limits: *limits,
    };
    let mut hosts_by_app = std::collections::BTreeMap::new();
    let mut loaded = std::collections::BTreeMap::new();
    for (hosts, origin, variables) in bundles {
        let checked =
            super::reload::install_config_bundle(&pipeline, origin, variables, cfg).await?;
        let installed = checked.installed;
        loaded.insert(
            installed.release.app.clone(),
            (installed.release.digest, checked.app),
        );
        if !installed.unchanged {
            tracing::info!(app = %installed.release.app, version = %installed.release.version, digest = %installed.release.digest, "installed bundle");
        }
        hosts_by_app.insert(installed.release.app.clone(), hosts.clone());
    }
    let (s, p, l) = (store.clone(), policy.clone(), *limits);
    let (ok, bad) = tokio::task::spawn_blocking(move || install::load_active(&s, &p, &l))
        .await
        .map_err(blocking)?;
    for b in bad {
        tracing::error!(app = %b.app, problem = %b.problem, "installed app cannot be served");
    }
    let servable = ok
        .into_iter()
        .map(|r| {
            let hosts = hosts_by_app
                .get(&r.release.app)
                .cloned()
                .unwrap_or_else(|| vec![crate::serve::HostPattern::Any]);
            (hosts, r)
        })
        .collect();
    Ok((store, servable, loaded))
}

/// Loads a release the store serves (one no `[[app]]` names). One that does not load must not
/// stop the daemon: it is logged and counted, and the app's newest earlier release that passes
/// the store's checks and loads serves instead; with none, the app is skipped. The index is left
/// as it is, so the next start tries the active release again (a fixed host may load it) and
/// GC keeps every release involved.
async fn load_stored(
    runtime: &Arc<Runtime>,
    store: &crate::store::Store,
    policy: &crate::bundle::sign::TrustPolicy,
    limits: &crate::bundle::archive::Limits,
    metrics: &Metrics,
    r: &crate::store::install::ServableRelease,
) -> Option<(crate::store::Release, crate::runtime::app::LoadedApp)> {
    let app_name = r.release.app.as_str();
    let failed = |release: &crate::store::Release, error: &str| {
        metrics
            .app_load_failures
            .with_label_values(&[app_name])
            .inc();
        tracing::error!(app = %release.app, version = %release.version, digest = %release.digest, %error, "installed release cannot be loaded");
    };
    match load_tenant_app(
        runtime,
        &AppSource::Dir(r.dir.clone()),
        r.release.tenant.as_deref(),
    )
    .await
    {
        Ok(app) => return Some((r.release.clone(), app)),
        Err(e) => failed(&r.release, &format!("{e:#}")),
    }
    for d in &r.older {
        let release = match crate::store::install::check_release(store, d, policy, limits) {
            Ok(release) => release,
            Err(problem) => {
                tracing::warn!(app = %app_name, digest = %d, %problem, "previous release is not usable either");
                continue;
            }
        };
        match load_tenant_app(
            runtime,
            &AppSource::Dir(store.tree_path(d)),
            release.tenant.as_deref(),
        )
        .await
        {
            Ok(app) => {
                tracing::warn!(app = %app_name, from = %r.release.version, to = %release.version, digest = %release.digest, "serving the previous release instead");
                return Some((release, app));
            }
            Err(e) => failed(&release, &format!("{e:#}")),
        }
    }
    tracing::error!(app = %app_name, "no installed release of the app loads; not serving it");
    None
}

/// One GC pass over the store and the compiled-code cache, logged.
fn run_gc(
    store: &crate::store::Store,
    code_dir: &std::path::Path,
    budget: u64,
    keep_wasm: &std::collections::BTreeSet<String>,
) {
    match store.gc(budget, Some(code_dir), keep_wasm) {
        Ok(r) if r.releases_removed + r.artifacts_removed > 0 || r.over_budget => {
            tracing::info!(
                removed_releases = r.releases_removed,
                removed_artifacts = r.artifacts_removed,
                freed_bytes = r.bytes_freed,
                kept_bytes = r.bytes_kept,
                over_budget = r.over_budget,
                "store GC"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "store GC failed"),
    }
}
