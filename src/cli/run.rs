//! `outpost run`: the daemon's arguments; the daemon itself is [`crate::node::run`].

use std::path::PathBuf;

use super::{CliError, CliResult};
use crate::ops::config::{self, Config};

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
    crate::node::run::run(
        cfg,
        crate::node::run::RunOptions {
            config_path: args.config,
            check: args.check,
        },
    )
}
