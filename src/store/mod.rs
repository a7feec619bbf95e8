//! On-disk state.
//!
//! Owns: how bytes reach the disk so that a kill -9 or a power cut at any point leaves either the
//! old or the new file, never a torn one.
//! Must not: parse HTTP, compile wasm, or decide what is trusted.
#![forbid(unsafe_code)]

pub mod atomic;
