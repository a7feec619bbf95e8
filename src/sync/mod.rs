//! The node agent inside `outpost run`: enrols with the control plane, polls for its signed
//! desired state, fetches, verifies and installs the bundles it names, swaps the routing table
//! atomically, and reports per-app health on every poll.
//!
//! Owns: the node key and enrolment record, the last applied desired state on disk, the
//! poll/backoff loop and the health report.
//! Must not: serve tenant traffic or trust anything the control plane sends without checking it:
//! desired states are verified against the pinned control-plane key, bundles against the node's
//! own release trust policy. See `docs/rollout.md`.
#![forbid(unsafe_code)]
