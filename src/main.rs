//! The `outpost` binary: everything lives in the library; this only hands over to the CLI.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    outpost::cli::main()
}
