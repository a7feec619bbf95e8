//! Command-line interface: argument parsing, logging setup, exit codes. One file per subcommand;
//! this module holds only what they share.
//!
//! Exit codes: 0 success; 1 runtime failure; 64 bad usage or bad config (reported before any port
//! is bound); 65 an app could not be loaded (bad manifest, bad wasm, missing files).
//! Must not: hold logic other modules need.
#![forbid(unsafe_code)]

mod bundle;
mod control;
mod fleet;
mod info;
mod reload;
mod run;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::ops::logging::{self, LogFormat};

/// Outpost: serve standard wasi:http components at the edge.
///
/// Apps are WASI 0.2 `wasi:http/proxy` components (what `wasmtime serve` and Spin run). Each request
/// gets a fresh, isolated instance from a pool sized to this machine; apps get no files, network,
/// environment or variables unless their manifest (`outpost.toml`) grants them.
#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "OUTPOST_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level: error, warn, info, debug, trace or off, or target=level directives
    /// ("info,outpost::serve=debug"). Overrides the config's [log] level (which SIGHUP
    /// re-applies) and is overridden by OUTPOST_LOG / RUST_LOG. Default: info.
    #[arg(long, global = true, value_parser = parse_log_level)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve apps for development: each PATH is an app directory (with outpost.toml) or a bare
    /// .wasm component (served at /). Like `spin up`.
    Serve(serve::ServeArgs),
    /// Run the daemon from a config file; with no --config, an embedded default config serves
    /// the built-in demo app on 127.0.0.1:8080 with the admin listener on 127.0.0.1:9090.
    Run(run::RunArgs),
    /// Print the detected hardware and every pool size derived from it, with the reason.
    Info(info::InfoArgs),
    /// Make, sign, verify, inspect and install signed app bundles.
    Bundle(bundle::BundleArgs),
    /// Run the control plane: enrolment, signed desired state per node, rollouts in waves.
    ControlPlane(control::ControlArgs),
    /// Upload a signed bundle to the control plane and roll it out to a group in waves,
    /// following the rollout live.
    Push(fleet::PushArgs),
    /// Show, list, pause, resume or abort rollouts.
    Rollout(fleet::RolloutArgs),
    /// Create one-time enrolment tokens for nodes.
    Token(fleet::TokenArgs),
    /// List or revoke enrolled nodes.
    Nodes(fleet::NodesArgs),
}

fn parse_log_level(s: &str) -> Result<String, String> {
    logging::check_directives(s).map(|()| s.to_owned())
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl CliError {
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

pub type CliResult = Result<(), CliError>;

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.log_level.as_deref());
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Run(a) => run::run(a),
        Command::Info(a) => info::run(a),
        Command::Bundle(a) => bundle::run(a),
        Command::ControlPlane(a) => control::run(a),
        Command::Push(a) => fleet::push(a),
        Command::Rollout(a) => fleet::rollout(a),
        Command::Token(a) => fleet::token(a),
        Command::Nodes(a) => fleet::nodes(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = error_text(&e.error);
            tracing::error!("{text}");
            // Also plainly on stderr: the error must be readable with logging filtered or JSON.
            eprintln!("error: {text}");
            ExitCode::from(e.code)
        }
    }
}

/// An error and its causes on one line, `outer: cause: cause`, each message once. Many typed
/// errors embed their source in their own message (`"{path}: {source}"`, so that `{e}` alone
/// is complete in a log field) and also report it as their `source()`; printing the whole chain
/// would say those causes twice. A cause whose text already ends the line so far is left out.
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !cause.is_empty() && !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// A multi-threaded tokio runtime with `threads` workers.
fn tokio_runtime(threads: usize) -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("outpost-worker")
        .enable_all()
        .build()
        .map_err(|e| CliError::runtime(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
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

/// Where `outpost serve` caches compiled code: `$XDG_CACHE_HOME/outpost` or `~/.cache/outpost`.
fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("outpost").join("compiled"))
}

/// One log line with the numbers that shape the node, and why the allocator is what it is (on a
/// 39-bit Raspberry Pi kernel this is where "reservations shrunk" or "on-demand" shows up).
fn log_sizing(s: &crate::sizing::Sizing) {
    use crate::sizing::human_bytes;
    tracing::info!(
        worker_threads = s.worker_threads.value,
        instance_slots = s.instance_slots.value,
        memory_reservation = %human_bytes(s.memory.memory_reservation.value),
        max_memory_per_instance = %human_bytes(s.max_memory_per_instance.value),
        allocator = ?s.allocator.value,
        reason = %s.allocator.reason,
        "sized for this machine (details: outpost info)"
    );
}

/// Prints a bound address on stdout — the contract supervisors and tests rely on (port 0 works).
fn announce(what: &str, addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} http://{addr}");
    let _ = out.flush();
}

/// Prints a bound address with its scheme (`https://`, `h3://`) on stdout, like [`announce`].
fn announce_scheme(what: &str, scheme: &str, addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} {scheme}://{addr}");
    let _ = out.flush();
}

/// Announces every tenant listener: `listening on http://…`, `https://…`, `h3://…`.
fn announce_listeners(listeners: &crate::serve::Listeners) {
    for a in listeners.http_addrs() {
        announce("listening on", a);
    }
    for a in listeners.https_addrs() {
        announce_scheme("listening on", "https", a);
    }
    for a in listeners.h3_addrs() {
        announce_scheme("listening on", "h3", a);
    }
}

/// Certificates and TLS/QUIC configs for the https listeners, loaded (or generated) and checked
/// before any port is bound: a missing or broken certificate is a config error (exit 64).
/// `self_signed_pem`: where to write a generated development certificate for clients to trust
/// (`None`: write nothing).
fn tls_setup(
    mut spec: crate::serve::certs::CertSpec,
    self_signed: bool,
    self_signed_pem: Option<&std::path::Path>,
    h3: bool,
    sizing: &crate::sizing::Sizing,
    handshake_timeout: std::time::Duration,
) -> Result<crate::serve::tls::TlsSetup, CliError> {
    use crate::serve::certs::{CertStore, DefaultCert, SELF_SIGNED_NAMES, SelfSigned};
    if self_signed {
        let cert = SelfSigned::generate().map_err(CliError::runtime)?;
        let written = match self_signed_pem {
            Some(path) => match cert.write_pem(path) {
                Ok(()) => Some(path.display().to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the self-signed certificate for clients to trust");
                    None
                }
            },
            None => None,
        };
        tracing::warn!(
            names = %SELF_SIGNED_NAMES.join(", "),
            sha256 = %cert.fingerprint,
            pem = written.as_deref().unwrap_or("(not written)"),
            "generated a self-signed TLS certificate (development only: clients must be told to trust it)"
        );
        spec.default = Some(DefaultCert::SelfSigned(cert));
    }
    let certs = CertStore::load(spec).map_err(CliError::config)?;
    let limits = h3.then(|| {
        crate::serve::h3::QuicLimits::from_sizing(&sizing.quic, sizing.max_connections.value)
    });
    crate::serve::tls::TlsSetup::new(
        std::sync::Arc::new(certs),
        limits.as_ref(),
        handshake_timeout,
    )
    .map_err(CliError::runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("component {component}: {source}")]
    struct Embeds {
        component: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn error_text_says_each_cause_once() {
        let inner = std::io::Error::other("/x.wasm: not a WebAssembly file");
        let e = anyhow::Error::new(Embeds {
            component: "a",
            source: inner,
        });
        assert_eq!(
            error_text(&e),
            "component a: /x.wasm: not a WebAssembly file"
        );
        // A context that does not embed its cause still gets it appended.
        let e = anyhow::Error::new(std::io::Error::other("denied")).context("/etc/outpost.toml");
        assert_eq!(error_text(&e), "/etc/outpost.toml: denied");
    }
}
