//! The control plane put together (`outpost control-plane`): config → operator keys → TLS →
//! state (sled, signing key) → listeners → rollout engine → drain.
//!
//! Owns: the order in which the control plane's parts are built, started and stopped.
//! Must not: parse arguments (that is `cli`), or hold logic the API or the rollout engine needs.

use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::config::ControlConfig;
use super::server::{self, Server};
use super::service::ControlPlane;
use crate::bundle::sign::{self, VerifyingKey};
use crate::ops::process::ExitError;

/// Operator keys from `operators`: key lines, or `.pub` files holding one.
fn operator_keys(cfg: &ControlConfig) -> Result<Vec<VerifyingKey>, ExitError> {
    let mut keys: Vec<VerifyingKey> = Vec::with_capacity(cfg.operators.len());
    for (key_path, k) in &cfg.operators {
        let text = crate::base::keyline::read_text(k)
            .map_err(|e| ExitError::config(anyhow!("{}: {key_path}: {e}", cfg.origin())))?;
        let key = sign::parse_public_key(&text)
            .map_err(|e| anyhow!("{}: {key_path}: {k}: {e}", cfg.origin()))
            .map_err(ExitError::config)?;
        if !keys.iter().any(|x| x.id() == key.id()) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Runs the control plane `cfg` describes until SIGTERM or SIGINT. Everything that can be wrong
/// with the config (operator keys, TLS files) is found before any port is bound.
/// The control plane's blocking pool (see `run`).
const MAX_BLOCKING_THREADS: usize = 32;

pub fn run(cfg: ControlConfig) -> Result<(), ExitError> {
    let operators = operator_keys(&cfg)?;
    let tls = match &cfg.tls {
        Some(files) => Some(
            server::tls_acceptor(files)
                .map_err(|e| anyhow!("{}: tls: {e}", cfg.origin()))
                .map_err(ExitError::config)?,
        ),
        None => None,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    // Every service call takes the one records lock, and bundle reads are short: a small
    // blocking pool does the same work as tokio's 512 threads without their memory (a push to
    // thousands of held syncs would otherwise grow the pool and the RSS with it).
    let rt = crate::ops::process::tokio_runtime_with(threads, Some(MAX_BLOCKING_THREADS))?;
    rt.block_on(async move {
        let cp = ControlPlane::open(&cfg, operators.clone())
            .context("opening the control plane's state")
            .map_err(ExitError::runtime)?;
        let cp = Arc::new(cp);
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "control-plane key: {}", cp.public_key_text());
            let _ = out.flush();
        }
        let listeners = server::bind(&cfg.listen)
            .await
            .map_err(ExitError::runtime)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        for l in &listeners {
            if let Ok(a) = l.local_addr() {
                crate::ops::process::announce_scheme("control plane listening on", scheme, a);
            }
        }
        tracing::info!(
            state_dir = %cfg.state_dir.display(),
            operators = %operators.iter().map(|k| k.id().to_string()).collect::<Vec<_>>().join(","),
            tls = tls.is_some(),
            desired_state_ttl = ?cfg.desired_state_ttl,
            max_bundle_size = cfg.max_bundle_size,
            max_connections = cfg.limits.max_connections,
            header_timeout = ?cfg.limits.header_timeout,
            idle_timeout = ?cfg.limits.idle_timeout,
            "control plane started"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (acceptor, reloader) = match tls {
            Some((acceptor, store)) => (
                Some(acceptor),
                Some(store.spawn_reloader(std::time::Duration::from_secs(60), stop_rx)),
            ),
            None => (None, None),
        };
        let srv = Arc::new(Server::new(cp.clone(), cfg.max_bundle_size));
        server::run(
            listeners,
            acceptor,
            srv,
            cfg.limits,
            crate::ops::process::shutdown_signal(),
        )
        .await;
        let _ = stop_tx.send(true);
        if let Some(r) = reloader {
            let _ = r.await;
        }
        if let Err(e) = cp.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!("control plane stopped");
        Ok(())
    })
}
