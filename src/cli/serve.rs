//! `outpost serve PATH...`: development mode, like `spin up`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{CliError, CliResult};
use crate::ops::metrics::Metrics;
use crate::runtime::app::{AppSource, load_app};
use crate::runtime::{Runtime, RuntimeSettings, sizing};
use crate::serve::{HostPattern, Router, ServeState};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// App directories (containing outpost.toml) or bare .wasm components. Several apps may be
    /// served at once as long as their routes do not collide.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Address to listen on (repeatable). Port 0 picks a free port; the bound address is printed.
    #[arg(
        long,
        short = 'l',
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: Vec<SocketAddr>,
    /// Directory for compiled code, so restarts skip compilation.
    /// [default: $XDG_CACHE_HOME/outpost/compiled or ~/.cache/outpost/compiled]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile on every start; write nothing to disk.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::ops::units::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(args: ServeArgs) -> CliResult {
    let hw = sizing::detect();
    let sizing = sizing::derive(&hw, &sizing::Overrides::default()).map_err(CliError::config)?;
    let cache = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(super::default_cache_dir)
    };
    let sources = args
        .paths
        .iter()
        .map(|p| AppSource::from_path(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::app)?;

    super::log_sizing(&sizing);
    let rt = super::tokio_runtime(sizing.worker_threads.value)?;
    rt.block_on(async move {
        let metrics = Metrics::new();
        let runtime = Runtime::new(RuntimeSettings::from_sizing(&sizing, cache), metrics.clone())
            .map_err(CliError::runtime)?;
        let mut apps = Vec::with_capacity(sources.len());
        for src in &sources {
            let app = load_app(&runtime, src).await.map_err(CliError::app)?;
            apps.push((vec![HostPattern::Any], app));
        }
        let router = Router::new(apps).map_err(|e| CliError::app(anyhow::anyhow!(e)))?;
        let listeners = crate::serve::bind_all(&args.listen)
            .await
            .map_err(CliError::runtime)?;
        for l in &listeners {
            if let Ok(a) = l.local_addr() {
                super::announce("listening on", a);
            }
        }
        for app in router.apps() {
            for c in &app.components {
                tracing::info!(app = %app.name, version = %app.version, component = %c.component.id, routes = ?c.routes, "serving");
            }
        }
        let state = Arc::new(ServeState::new(router, metrics));
        crate::serve::serve(
            listeners,
            state,
            crate::serve::ServeOptions {
                max_connections: sizing.max_connections.value as usize,
                drain: args.drain_timeout,
                threads: sizing.worker_threads.value,
            },
            super::shutdown_signal(),
        )
        .await
        .map_err(CliError::runtime)?;
        drop(runtime);
        Ok(())
    })
}
