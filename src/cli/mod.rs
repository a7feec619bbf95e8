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
mod run;
mod serve;
mod spin;

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
    /// Serve apps for development: each PATH is an app directory (with outpost.toml, or a Spin
    /// app's spin.toml), a bare .wasm component (served at /), a signed bundle, or an oci://
    /// reference to one. Like `spin up`.
    Serve(serve::ServeArgs),
    /// Run the daemon from a config file; with no --config, an embedded default config serves
    /// the built-in demo app on 127.0.0.1:8080 with the admin listener on 127.0.0.1:9090.
    Run(run::RunArgs),
    /// Print the detected hardware and every pool size derived from it, with the reason.
    Info(info::InfoArgs),
    /// Make, sign, verify, inspect and install signed app bundles; push them to and pull them
    /// from OCI registries.
    Bundle(bundle::BundleArgs),
    /// Spin apps: print the outpost.toml a spin.toml is served as.
    Spin(spin::SpinArgs),
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

/// A duration argument (`"90d"`, `"1m30s"`, milliseconds as an integer), for clap.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    crate::base::units::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_log_level(s: &str) -> Result<String, String> {
    logging::check_directives(s).map(|()| s.to_owned())
}

/// An error with the exit code it maps to (every subcommand's error type).
pub use crate::ops::process::ExitError as CliError;

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
        Command::Spin(a) => spin::run(a),
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

/// Where `outpost serve` caches compiled code: `$XDG_CACHE_HOME/outpost` or `~/.cache/outpost`.
fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("outpost").join("compiled"))
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
