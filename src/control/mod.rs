//! The reference control plane (`outpost control-plane`): bundles, node enrolment, per-node signed
//! desired state and rollouts in waves with health gates and automatic rollback.
//!
//! Owns: the control plane's HTTP API server, its sled-backed records and the rollout engine.
//! Must not: run wasm or serve tenant traffic. See `docs/rollout.md`.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
