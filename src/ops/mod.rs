//! Operations: daemon config, metrics, the admin listener, logging, systemd integration and the
//! process around a server (exit codes, signals, address lines).
//!
//! Owns: how the daemon is configured and observed.
//! Must not: run wasm or route tenant traffic.
// `deny`, not `forbid`: the one exception is `systemd::adopt_inherited_fd` (socket activation
// hands us raw fd numbers, and std has no safe way to own one).
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod systemd;
