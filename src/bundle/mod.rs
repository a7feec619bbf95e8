//! Apps as shipped: the app manifest (`outpost.toml`), the bundle archive that carries an app to a
//! node, and the detached signature documents that say which bundle a signer released.
//!
//! Owns: turning untrusted manifest text, bundle bytes and signature files into validated, typed
//! values — [`manifest`] (the app description), [`spin`] (a Spin app's `spin.toml` mapped onto
//! one), [`archive`] (deterministic `.tar.gz` packing and capped, strict unpacking), [`sign`]
//! (keys, the canonical release document, k-of-n trust verification and the rollback check),
//! [`wasm`] (whether bytes are a component at all) — and the content [`Digest`] the store names
//! bundles by.
//! Must not: do I/O, read the clock, touch the network, or load wasm — callers read files, pass
//! bytes and `now` in, and write results out, so everything here is easy to test and to fuzz.
//! See `docs/bundle-format.md`.
#![forbid(unsafe_code)]

pub mod archive;
pub mod desired;
pub mod manifest;
pub mod request_auth;
pub mod sign;
pub mod spin;
pub mod spin_locked;
pub mod wasm;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// The text before the hex in a [`Digest`]'s display form.
const DIGEST_PREFIX: &str = "sha256:";

/// The sha256 of a bundle's bytes: what a signature covers and what the store names blobs by.
/// Displays, parses, serializes and deserializes as `sha256:<64 lowercase hex digits>`; only
/// that exact form parses, so the text form of a digest is unique.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

/// Why a string is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {problem}; expected \"sha256:\" and 64 lowercase hex digits")]
pub struct DigestParseError {
    /// The offending text, truncated.
    pub input: String,
    pub problem: &'static str,
}

/// The sha256 of `bytes`.
pub fn digest(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

// === impl Digest ===

impl Digest {
    /// The 64 lowercase hex digits, without the `sha256:` prefix (file names in the store).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DIGEST_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem| DigestParseError {
            input: crate::base::units::quote(s),
            problem,
        };
        let hex_part = s
            .strip_prefix(DIGEST_PREFIX)
            .ok_or_else(|| err("missing the \"sha256:\" prefix"))?;
        if hex_part.len() != 64 {
            return Err(err("wrong length"));
        }
        // Uppercase hex would decode too, but then two strings would name one digest.
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err("not lowercase hex"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| err("not lowercase hex"))?;
        Ok(Self(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digest_of_empty_input_is_the_known_value() {
        assert_eq!(digest(b"").to_string(), EMPTY);
        assert_eq!(format!("{:?}", digest(b"")), format!("Digest({EMPTY})"));
        assert_eq!(digest(b"").hex(), &EMPTY[7..]);
    }

    #[test]
    fn digest_text_round_trips_and_is_strict() {
        let d: Digest = EMPTY.parse().expect("parse");
        assert_eq!(d, digest(b""));
        assert_eq!(d.to_string(), EMPTY);

        let upper = format!("sha256:{}", EMPTY[7..].to_uppercase());
        for (bad, problem) in [
            (&EMPTY[7..], "prefix"),
            ("sha256:", "wrong length"),
            (&EMPTY[..70], "wrong length"),
            (&format!("{EMPTY}0") as &str, "wrong length"),
            (&upper as &str, "lowercase"),
            (&EMPTY.replace('e', "g") as &str, "lowercase"),
            (&EMPTY.replace("sha256", "SHA256") as &str, "prefix"),
            (&format!(" {EMPTY}") as &str, "prefix"),
        ] {
            let err = bad.parse::<Digest>().expect_err(bad);
            assert!(err.to_string().contains(problem), "{bad}: {err}");
        }
    }

    #[test]
    fn digest_serde_uses_the_text_form() {
        let d = digest(b"abc");
        let json = serde_json::to_string(&d).expect("serialize");
        assert_eq!(json, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, d);
        let err = serde_json::from_str::<Digest>("\"sha256:00\"").expect_err("short");
        assert!(err.to_string().contains("wrong length"), "{err}");
        assert!(serde_json::from_str::<Digest>("[1,2]").is_err());
    }
}
