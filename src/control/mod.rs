//! The reference control plane (`outpost control-plane`): bundles, node enrolment, per-node signed
//! desired state and rollouts in waves with health gates and automatic rollback.
//!
//! Owns: the control plane's HTTP API server, its sled-backed records and the rollout engine.
//! Must not: run wasm or serve tenant traffic. See `docs/rollout.md`.
//!
//! # Layout
//! - [`api`]: wire types and endpoint paths (shared with the node agent and the CLI).
//! - [`client`]: the signed-request client (node agent, operator commands).
//! - [`config`]: the control plane's config file.
//! - [`rollout`]: the wave engine, a pure state machine.
//! - [`db`]: sled records and the transactions that must be atomic.
//! - [`service`]: the operations, independent of HTTP.
//! - [`server`]: HTTP/1.1 + HTTP/2 (optionally TLS), request authentication, body caps, the
//!   engine ticker and graceful shutdown.
//! - [`daemon`]: the control plane put together (`outpost control-plane`).
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod db;
pub mod rollout;
pub mod server;
pub mod service;
