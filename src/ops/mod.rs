//! Operations: daemon config, metrics, the admin listener and logging.
//!
//! Owns: how the daemon is configured and observed.
//! Must not: run wasm or route tenant traffic.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod units;
