//! The process around a server subcommand (`outpost run`, `serve`, `control-plane`): the error
//! that carries its exit code, its async runtime, the signals that stop it, and the address lines
//! on stdout that supervisors and tests read.
//!
//! Owns: exit codes (64 config, 65 app or bundle, 1 runtime), SIGTERM/SIGINT, the
//! `listening on SCHEME://ADDR` line format.
//! Must not: know what the process serves — each composition root (`node`, `control::daemon`)
//! wires its own parts.
#![forbid(unsafe_code)]

/// An error with the process exit code it maps to: 64 for a config problem, 65 for a bad app or
/// bundle, 1 for a runtime failure.
#[derive(Debug)]
pub struct ExitError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl ExitError {
    pub fn config(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 64,
            error: e.into(),
        }
    }
    pub fn app(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 65,
            error: e.into(),
        }
    }
    pub fn runtime(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: e.into(),
        }
    }
}

/// A multi-threaded tokio runtime with `threads` workers.
pub fn tokio_runtime(threads: usize) -> Result<tokio::runtime::Runtime, ExitError> {
    tokio_runtime_with(threads, None)
}

/// [`tokio_runtime`] with at most `max_blocking` threads in the blocking pool (tokio's default
/// is 512): where every blocking task ends up waiting on one lock anyway, hundreds of threads
/// add only their stacks and allocator arenas to the RSS.
pub fn tokio_runtime_with(
    threads: usize,
    max_blocking: Option<usize>,
) -> Result<tokio::runtime::Runtime, ExitError> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(threads.max(1))
        .thread_name("outpost-worker")
        .enable_all();
    if let Some(n) = max_blocking {
        b.max_blocking_threads(n.max(1));
    }
    b.build()
        .map_err(|e| ExitError::runtime(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = i.recv() => tracing::info!("SIGINT received; shutting down"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Prints a bound address on stdout — the contract supervisors and tests rely on (port 0 works).
pub fn announce(what: &str, addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} http://{addr}");
    let _ = out.flush();
}

/// Prints a bound address with its scheme (`https://`, `h3://`) on stdout, like [`announce`].
pub fn announce_scheme(what: &str, scheme: &str, addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} {scheme}://{addr}");
    let _ = out.flush();
}
