//! Outpost: an edge-node daemon that serves standard `wasi:http/proxy` components from
//! wasmtime instance pools sized to the machine it runs on.
//!
//! # Layout
//!
//! Folders name capabilities; each module's `//!` header says what it owns and what it must not do.
//!
//! - [`runtime`]: wasmtime engine defaults, hardware sizing, component loading and the on-disk
//!   compiled-code cache, per-request instantiation, limits and capability grants.
//! - [`serve`]: listeners, HTTP/1.1 + HTTP/2 front door, routing host + path → component,
//!   graceful drain.
//! - [`bundle`]: the app manifest (`outpost.toml`) — pure parsing, no I/O beyond what the caller
//!   hands in.
//! - [`store`]: atomic on-disk writes (temp → fsync → rename → fsync dir).
//! - [`ops`]: daemon config, metrics, admin endpoints, logging.
//! - [`cli`]: one file per subcommand; glue only.
#![deny(unsafe_code)]

pub mod bundle;
pub mod cli;
pub mod ops;
pub mod runtime;
pub mod serve;
pub mod store;
