//! The `outpost` binary: everything lives in the library; this only hands over to the CLI.
#![forbid(unsafe_code)]

/// mimalloc: per-request allocation is on the hot path, and the static musl builds would
/// otherwise use musl's malloc, which serialises threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    outpost::cli::main()
}
