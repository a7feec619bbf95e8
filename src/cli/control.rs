//! `outpost control-plane --config FILE`: the arguments; the control plane is put together in
//! `control::daemon`.

use std::path::PathBuf;

use super::{CliError, CliResult};
use crate::control::config::ControlConfig;

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The control plane's config file (see config/control-plane.toml).
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
}

pub fn run(args: ControlArgs) -> CliResult {
    let cfg = ControlConfig::load(&args.config).map_err(CliError::config)?;
    crate::control::daemon::run(cfg)
}
