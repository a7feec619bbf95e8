//! Logging setup: `tracing-subscriber` to stderr, human-readable or JSON lines.
//!
//! Owns: the subscriber and its filter. `OUTPOST_LOG` (or `RUST_LOG`) overrides the level with the
//! usual `target=level` directives.
//! Must not: decide what gets logged elsewhere.

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    Human,
    /// One JSON object per line (for journald, Loki, Elasticsearch...).
    Json,
}

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = std::env::var("OUTPOST_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| {
            // wasmtime's own crates are chatty at debug; keep them at warn unless asked.
            EnvFilter::new(format!(
                "{default_level},wasmtime=warn,cranelift=warn,wasmtime_wasi_http=warn"
            ))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
