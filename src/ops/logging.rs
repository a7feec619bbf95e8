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

/// A per-call-site budget for warnings that a client or a guest can trigger at request rate (a
/// trapping guest, a timeout storm, accept errors under fd exhaustion): at most `burst` events per
/// `window`, then silence until the window ends; the first event of the next window carries how
/// many were suppressed. Lock-free; meant to live in a `static`.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window_ms: u64,
    /// Start of the current window, in ms since [`log_epoch`] (+1, so 0 means "never").
    window_start: std::sync::atomic::AtomicU64,
    in_window: std::sync::atomic::AtomicU32,
    suppressed: std::sync::atomic::AtomicU64,
}

/// What [`LogLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Log it; `suppressed` events were dropped since the last logged one.
    Log {
        suppressed: u64,
    },
    Drop,
}

fn log_epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl LogLimiter {
    pub const fn new(burst: u32, window: std::time::Duration) -> Self {
        Self {
            burst,
            window_ms: window.as_millis() as u64,
            window_start: std::sync::atomic::AtomicU64::new(0),
            in_window: std::sync::atomic::AtomicU32::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether to log an event happening now.
    pub fn check(&self) -> LogDecision {
        self.check_at(log_epoch().elapsed().as_millis() as u64 + 1)
    }

    fn check_at(&self, now_ms: u64) -> LogDecision {
        use std::sync::atomic::Ordering::Relaxed;
        let start = self.window_start.load(Relaxed);
        if start == 0 || now_ms.saturating_sub(start) >= self.window_ms {
            // One thread opens the new window; the others count into it.
            if self
                .window_start
                .compare_exchange(start, now_ms, Relaxed, Relaxed)
                .is_ok()
            {
                self.in_window.store(0, Relaxed);
            }
        }
        if self.in_window.fetch_add(1, Relaxed) < self.burst {
            LogDecision::Log {
                suppressed: self.suppressed.swap(0, Relaxed),
            }
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            LogDecision::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limiter_allows_a_burst_per_window_and_reports_what_it_dropped() {
        let l = LogLimiter::new(3, Duration::from_secs(10));
        for _ in 0..3 {
            assert_eq!(l.check_at(1), LogDecision::Log { suppressed: 0 });
        }
        for t in [2, 500, 9_999] {
            assert_eq!(l.check_at(t), LogDecision::Drop);
        }
        assert_eq!(l.check_at(10_001), LogDecision::Log { suppressed: 3 });
        assert_eq!(l.check_at(10_002), LogDecision::Log { suppressed: 0 });
    }
}
