//! Operations: daemon config, metrics, the admin listener, logging and systemd integration.
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
pub mod systemd;
