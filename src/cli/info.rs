//! `outpost info`: the detected hardware and every derived number, with reasons.

use std::path::PathBuf;

use super::{CliError, CliResult};
use crate::ops::config::Config;
use crate::sizing;

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Apply the [runtime] overrides of this daemon config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: InfoArgs) -> CliResult {
    let overrides = match &args.config {
        Some(p) => {
            let cfg = Config::load(p).map_err(CliError::config)?;
            crate::node::run::overrides_from(&cfg)?
        }
        None => sizing::Overrides::default(),
    };
    let hw = sizing::detect();
    let s = sizing::derive(&hw, &overrides).map_err(CliError::config)?;
    if args.json {
        let text = serde_json::to_string_pretty(&s).map_err(CliError::runtime)?;
        println!("{text}");
    } else {
        print!("{}", s.render_text());
    }
    Ok(())
}
