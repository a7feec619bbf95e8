//! Outpost: an edge-node daemon that serves standard `wasi:http/proxy` components from
//! wasmtime instance pools sized to the machine it runs on.
//!
//! # Layout
//!
//! Folders name capabilities; each module's `//!` header says what it owns and what it must not do.
//! Listed top to bottom: a module imports only modules listed below it (`docs/architecture.md`,
//! held by `tests/architecture.rs`).
//!
//! - [`cli`]: argument parsing and printing, one file per subcommand.
//! - [`node`]: the composition root of `outpost run` (config → sizing → runtime → store →
//!   listeners → agent → drain) and its SIGHUP reload.
//! - [`sync`]: the node agent inside `outpost run`: poll the control plane, fetch, verify,
//!   install, swap, report health.
//! - [`control`]: the reference control plane (`outpost control-plane`): enrolment, desired
//!   state, rollouts.
//! - [`serve`]: listeners behind one accept path, HTTP/1.1 + HTTP/2 + HTTP/3, routing host +
//!   path → component, graceful drain.
//! - [`runtime`]: wasmtime engine defaults, component loading and the on-disk compiled-code
//!   cache, per-request instantiation, limits, fair scheduling and capability grants.
//! - [`store`]: the on-disk cache: content-addressed blobs, unpacked trees, sled index, GC.
//! - [`oci`]: the OCI distribution client: references, registry auth, manifests and blobs by
//!   digest, and the layout of a signed bundle as an OCI artifact (network I/O, no disk layout).
//! - [`bundle`]: the app manifest, the bundle archive, release signatures and trust policy, the
//!   signed desired state and signed control-plane requests — pure code, no I/O, `now` passed in.
//! - [`sizing`]: hardware detection, the pure derivation of every pool and limit, and its
//!   rendering for `outpost info`.
//! - [`ops`]: config files, metrics, admin endpoints, logging, systemd.
//! - [`base`]: shared vocabulary — units and TOML fields, atomic writes, the clock, host and
//!   outbound patterns.
#![deny(unsafe_code)]

pub mod base;
pub mod bundle;
pub mod cli;
pub mod control;
pub mod node;
pub mod oci;
pub mod ops;
pub mod runtime;
pub mod serve;
pub mod sizing;
pub mod store;
pub mod sync;
