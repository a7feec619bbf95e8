//! Shared vocabulary: the small, pure pieces every layer speaks — byte sizes and durations and
//! the TOML field readers that report `<key path>: <problem>` ([`units`]), atomic file writes
//! ([`atomic`]), the wall clock ([`clock`]), keys named in configs as a key line or a file
//! ([`keyline`]), and host and outbound-network patterns ([`outbound`]).
//!
//! Owns: only what at least two layers above need and what has no opinion of its own about
//! apps, bundles, the network or the fleet.
//! Must not: import any other Outpost module (it is the ground floor of `docs/architecture.md`),
//! hold state, or grow a helper that only one caller uses — that helper belongs to its caller.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod clock;
pub mod keyline;
pub mod outbound;
pub mod units;
