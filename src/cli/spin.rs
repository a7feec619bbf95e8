//! `outpost spin convert PATH`: prints the `outpost.toml` a Spin app (`spin.toml`) is served as.
//! The mapping is `bundle::spin`; the directory reading (file globs) is
//! `runtime::app::read_dir_manifest`, the same function `outpost serve` and `[[app]]` load with.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::{CliError, CliResult};
use crate::bundle::spin::SPIN_MANIFEST_FILE_NAME;

#[derive(Debug, clap::Args)]
pub struct SpinArgs {
    #[command(subcommand)]
    command: SpinCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SpinCommand {
    /// Print the outpost.toml equivalent of a spin.toml (Spin manifest version 2) on stdout.
    ///
    /// A directory holding spin.toml and no outpost.toml is served as exactly this text by
    /// `outpost serve DIR` and `[[app]] source = "DIR"`, and `outpost bundle pack DIR` puts it
    /// in the bundle as its outpost.toml. HTTP routes keep Spin's meaning: "/..." wildcards
    /// become path prefixes, other routes exact paths ({ exact = "/path" }). Fields outpost
    /// cannot honour (other triggers, SQLite, AI models, remote sources, component dependencies,
    /// environment variables, WAGI) are refused with an error naming the field; `build` and
    /// other metadata are ignored with a note. File globs are mapped onto whole directories,
    /// so the directory is read. See docs/manifest.md, "Spin apps".
    Convert {
        /// The spin.toml, or the app directory holding it.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

pub fn run(args: SpinArgs) -> CliResult {
    match args.command {
        SpinCommand::Convert { path } => convert(&path),
    }
}

fn convert(path: &Path) -> CliResult {
    let (dir, file) = if path.is_dir() {
        (path.to_owned(), path.join(SPIN_MANIFEST_FILE_NAME))
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        (dir, path.to_owned())
    };
    if file
        .file_name()
        .is_none_or(|n| n != SPIN_MANIFEST_FILE_NAME)
    {
        return Err(CliError::config(anyhow!(
            "{}: expected a file named {SPIN_MANIFEST_FILE_NAME}, or the directory holding one",
            path.display()
        )));
    }
    if !file.is_file() {
        return Err(CliError::app(anyhow!("{}: no such file", file.display())));
    }
    let read = crate::runtime::app::read_spin_manifest(&dir).map_err(CliError::app)?;
    for note in &read.notes {
        eprintln!("{}: note: {note}", read.path.display());
    }
    print!("{}", read.text);
    Ok(())
}
