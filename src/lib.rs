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
//! - [`bundle`]: the app manifest, the bundle archive, release signatures and trust policy, the
//!   signed desired state and signed control-plane requests — pure code, no I/O, `now` passed in.
//! - [`store`]: the on-disk cache: content-addressed blobs, sled index, atomic writes, GC.
//! - [`sync`]: the node agent inside `outpost run`: poll the control plane, fetch, verify,
//!   install, swap, report health.
//! - [`control`]: the reference control plane (`outpost control-plane`): enrolment, desired
//!   state, rollouts.
//! - [`ops`]: daemon config, metrics, admin endpoints, logging.
//! - [`cli`]: one file per subcommand; glue only.
#![deny(unsafe_code)]

pub mod bundle;
pub mod cli;
pub mod control;
pub mod ops;
pub mod runtime;
pub mod serve;
pub mod store;
pub mod sync;
