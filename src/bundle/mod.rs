//! Apps as shipped: the app manifest (`outpost.toml`) and, later, the bundle format and its
//! signatures.
//!
//! Owns: turning untrusted manifest text into validated, typed app descriptions.
//! Must not: do I/O, touch the network, or load wasm — callers read files and pass the text in,
//! so everything here is easy to test and to fuzz.

pub mod manifest;
