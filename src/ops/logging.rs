//! Logging setup: `tracing-subscriber` to stderr, human-readable or JSON lines.
//!
//! Owns: the subscriber, its filter and the filter's live reloads. Where the level comes from,
//! first match wins: `OUTPOST_LOG` (or `RUST_LOG`), `--log-level`, the config's `[log] level`
//! (re-applied on every SIGHUP reload), then `info`. The first two pin the level for the life of
//! the process: a reload says so in the log instead of overriding what the operator set by hand.
//! Must not: decide what gets logged elsewhere.

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    Human,
    /// One JSON object per line (for journald, Loki, Elasticsearch...).
    Json,
}

/// The level when nothing sets one.
pub const DEFAULT_LEVEL: &str = "info";

/// Crates that are chatty below warn; kept at warn unless a directive names them.
const QUIET: &[&str] = &["wasmtime", "cranelift", "wasmtime_wasi_http"];

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Checks a level setting: comma-separated directives, each a level (`debug`) or
/// `target=level` (`outpost::serve=debug`). A bare word that is not a level is refused: the
/// filter syntax would read `verbose` as "everything from a target named verbose".
pub fn check_directives(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!(
            "empty log level; expected one of {}, or target=level directives",
            LEVELS.join(", ")
        ));
    }
    for d in s.split(',').map(str::trim) {
        let level = match d.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level.trim(),
            Some(_) => return Err(format!("log directive {d:?} has no target before '='")),
            None => d,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown log level {level:?} in {s:?}; expected one of {}, or target=level \
                 directives such as \"info,outpost::serve=debug\"",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(s)
        .map(drop)
        .map_err(|e| format!("invalid log directives {s:?}: {e}"))
}

/// The filter for directives `s`, with [`QUIET`] crates at warn unless `s` names them.
fn filter_for(s: &str) -> Result<EnvFilter, String> {
    let mut full = String::new();
    for q in QUIET {
        if !s.contains(q) {
            full.push_str(q);
            full.push_str("=warn,");
        }
    }
    full.push_str(s);
    EnvFilter::try_new(&full).map_err(|e| format!("invalid log directives {s:?}: {e}"))
}

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// The installed subscriber's filter handle and what set the level.
struct Installed {
    reload: Reload,
    /// `OUTPOST_LOG`, `RUST_LOG` or `--log-level`: the level is not the config's to change.
    pinned_by: Option<&'static str>,
    /// The directives in force.
    current: Mutex<String>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the global subscriber. `cli_level` is `--log-level` (already checked by
/// [`check_directives`]). Safe to call once; later calls are ignored.
pub fn init(format: LogFormat, cli_level: Option<&str>) {
    let from_env = ["OUTPOST_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|v| std::env::var(v).ok().map(|s| (v, s)));
    let mut bad_env = None;
    let (pinned_by, directives, filter) = match from_env {
        // Full directives from the environment, as given: the operator's own words.
        Some((var, s)) => match EnvFilter::try_new(&s) {
            Ok(f) => (Some(var), s, f),
            Err(e) => {
                bad_env = Some(format!("{var}={s:?} ignored: {e}"));
                let level = cli_level.unwrap_or(DEFAULT_LEVEL);
                (None, level.to_owned(), quiet_filter(level))
            }
        },
        None => match cli_level {
            Some(level) => (Some("--log-level"), level.to_owned(), quiet_filter(level)),
            None => (None, DEFAULT_LEVEL.to_owned(), quiet_filter(DEFAULT_LEVEL)),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = match format {
        LogFormat::Human => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| -> Reload {
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
            })
        }
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map(|()| -> Reload {
                Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()))
            })
        }
    };
    if let Ok(reload) = installed {
        let _ = INSTALLED.set(Installed {
            reload,
            pinned_by,
            current: Mutex::new(directives),
        });
    }
    if let Some(msg) = bad_env {
        tracing::warn!("{msg}; using the level from --log-level or the config");
    }
}

/// The filter for a level already checked, falling back to [`DEFAULT_LEVEL`].
fn quiet_filter(level: &str) -> EnvFilter {
    filter_for(level)
        .or_else(|_| filter_for(DEFAULT_LEVEL))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LEVEL))
}

/// What [`apply_config_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The level in force is already that one (or no subscriber is installed).
    Unchanged,
    /// The filter now uses `to`.
    Changed { from: String, to: String },
    /// The config asks for another level, but `by` (an environment variable or `--log-level`)
    /// set it by hand.
    Pinned { by: &'static str, wanted: String },
}

/// Applies the config's `[log] level` (`None`: the default) unless the level is pinned.
pub fn apply_config_level(level: Option<&str>) -> Result<LevelChange, String> {
    let Some(installed) = INSTALLED.get() else {
        return Ok(LevelChange::Unchanged);
    };
    let wanted = level.unwrap_or(DEFAULT_LEVEL);
    let mut current = installed
        .current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *current == wanted {
        return Ok(LevelChange::Unchanged);
    }
    if let Some(by) = installed.pinned_by {
        return Ok(match level {
            Some(l) => LevelChange::Pinned {
                by,
                wanted: l.to_owned(),
            },
            None => LevelChange::Unchanged,
        });
    }
    check_directives(wanted)?;
    (installed.reload)(filter_for(wanted)?)?;
    let from = std::mem::replace(&mut *current, wanted.to_owned());
    Ok(LevelChange::Changed {
        from,
        to: wanted.to_owned(),
    })
}

/// Applies the config's level and logs the outcome: on a reload a level change at warn (so it
/// shows whatever the new level), and a pinned level at info.
pub fn apply_config_level_logged(level: Option<&str>, reload: bool) {
    match apply_config_level(level) {
        Ok(LevelChange::Unchanged) => {}
        Ok(LevelChange::Changed { .. }) if !reload => {}
        Ok(LevelChange::Changed { from, to }) => {
            tracing::warn!(from = %from, to = %to, "log level changed");
        }
        Ok(LevelChange::Pinned { by, wanted }) => {
            tracing::info!(
                pinned_by = by,
                config_level = %wanted,
                "[log] level not applied: the level was set by {by}"
            );
        }
        Err(e) => tracing::error!(error = %e, "log level not changed"),
    }
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
    fn directives_are_levels_or_target_equals_level() {
        for ok in [
            "info",
            "DEBUG",
            "warn,outpost::serve=debug",
            "outpost=trace",
            "off",
        ] {
            assert_eq!(check_directives(ok), Ok(()), "{ok}");
        }
        for (bad, needle) in [
            ("verbose", "unknown log level \"verbose\""),
            ("info,outpost=loud", "unknown log level \"loud\""),
            ("=debug", "no target before '='"),
            ("", "empty log level"),
        ] {
            let e = check_directives(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn quiet_crates_stay_at_warn_unless_named() {
        let f = filter_for("debug").unwrap().to_string();
        assert!(f.contains("wasmtime=warn") && f.contains("debug"), "{f}");
        let f = filter_for("debug,wasmtime=info").unwrap().to_string();
        assert!(!f.contains("wasmtime=warn"), "{f}");
    }

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
