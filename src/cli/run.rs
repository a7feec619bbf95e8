//! `outpost run`: the daemon.
//!
//! Order matters: parse and validate the config, derive the sizing, load and link every app, and
//! only then bind ports — a bad config or a broken app never leaves a half-started daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{CliError, CliResult};
use crate::ops::admin::{self, AdminState};
use crate::ops::config::{self, Config};
use crate::ops::metrics::Metrics;
use crate::runtime::app::{AppSource, load_app};
use crate::runtime::{Runtime, RuntimeSettings, sizing};
use crate::serve::{Router, ServeState};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Daemon config file (TOML). Without it, the embedded default config serves the built-in demo
    /// app on 127.0.0.1:8080 and the admin endpoints on 127.0.0.1:9090.
    #[arg(long, short = 'c', value_name = "FILE", env = "OUTPOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Validate the config and load every app, then exit without serving.
    #[arg(long)]
    pub check: bool,
    /// Print the embedded default config and exit.
    #[arg(long)]
    pub print_default_config: bool,
}

/// The `[runtime]` table of `cfg` as sizing overrides.
pub(super) fn overrides_from(cfg: &Config) -> Result<sizing::Overrides, CliError> {
    let table = config::normalise_runtime_table(cfg.runtime_table()).map_err(CliError::config)?;
    sizing::Overrides::deserialize(toml::Value::Table(table))
        .map_err(|e| CliError::config(anyhow::anyhow!("{}: runtime: {e}", cfg.origin())))
}

pub fn run(args: RunArgs) -> CliResult {
    if args.print_default_config {
        print!("{}", config::DEFAULT_CONFIG);
        return Ok(());
    }
    let cfg = match &args.config {
        Some(p) => Config::load(p).map_err(CliError::config)?,
        None => {
            tracing::info!(
                "no --config given: using the embedded default config (built-in demo app)"
            );
            Config::embedded_default()
        }
    };
    let overrides = overrides_from(&cfg)?;
    let hw = sizing::detect();
    let sizing = sizing::derive(&hw, &overrides).map_err(CliError::config)?;
    let state_dir = config::resolve_state_dir(&cfg, |k| std::env::var_os(k));
    let mut apps_cfg = Vec::new();
    for (i, a) in cfg.apps().iter().enumerate() {
        let hosts = a
            .hosts
            .iter()
            .map(|h| crate::serve::router::parse_host_pattern(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                CliError::config(anyhow::anyhow!("{}: app[{i}].hosts: {e}", cfg.origin()))
            })?;
        let src = AppSource::from_path(&cfg.resolve_source(&a.source)).map_err(CliError::app)?;
        apps_cfg.push((hosts, src));
    }

    super::log_sizing(&sizing);
    let rt = super::tokio_runtime(sizing.worker_threads.value)?;
    rt.block_on(async move {
        if let Err(e) = std::fs::create_dir_all(&state_dir) {
            return Err(CliError::config(anyhow::anyhow!(
                "state_dir {}: cannot create: {e}",
                state_dir.display()
            )));
        }
        let metrics = Metrics::new();
        let runtime = Runtime::new(
            RuntimeSettings::from_sizing(&sizing, Some(state_dir.join("compiled"))),
            metrics.clone(),
        )
        .map_err(CliError::runtime)?;
        let mut apps = Vec::with_capacity(apps_cfg.len());
        for (hosts, src) in &apps_cfg {
            let app = load_app(&runtime, src).await.map_err(CliError::app)?;
            apps.push((hosts.clone(), app));
        }
        let router = Router::new(apps).map_err(|e| CliError::config(anyhow::anyhow!(e)))?;
        if args.check {
            println!(
                "config ok: {} app(s), {} component(s)",
                router.apps().count(),
                router.component_count()
            );
            return Ok(());
        }

        let listeners = crate::serve::bind_all(cfg.http_listen())
            .await
            .map_err(CliError::runtime)?;
        let admin_listener = match cfg.admin_listen() {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                CliError::runtime(anyhow::anyhow!("cannot listen on {a} (admin): {e}"))
            })?),
            None => None,
        };
        for l in &listeners {
            if let Ok(a) = l.local_addr() {
                super::announce("listening on", a);
            }
        }
        if let Some(l) = &admin_listener
            && let Ok(a) = l.local_addr()
        {
            super::announce("admin listening on", a);
        }

        let app_count = router.apps().count();
        let admin_state = Arc::new(AdminState {
            metrics: metrics.clone(),
            ready: Default::default(),
        });
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = admin_listener.map(|l| {
            tokio::spawn(admin::serve(l, admin_state.clone(), async {
                let _ = admin_stopped.await;
            }))
        });
        let state = Arc::new(ServeState::new(router, metrics));
        admin_state.ready.store(true, Ordering::Release);
        tracing::info!(apps = app_count, state_dir = %state_dir.display(), "outpost ready");

        let admin_for_drain = admin_state.clone();
        let left = crate::serve::serve(
            listeners,
            state,
            crate::serve::ServeOptions {
                max_connections: sizing.max_connections.value as usize,
                drain: cfg.drain_timeout(),
                threads: sizing.worker_threads.value,
            },
            async move {
                super::shutdown_signal().await;
                // Not ready while draining, so load balancers stop sending traffic.
                admin_for_drain.ready.store(false, Ordering::Release);
            },
        )
        .await
        .map_err(CliError::runtime)?;
        let _ = stop_admin.send(());
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        drop(runtime);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "exited with connections cut at the drain deadline"
            );
        }
        Ok(())
    })
}

use serde::Deserialize as _;
