//! Ed25519 keys and their one-line text forms: [`SigningKey`], [`VerifyingKey`], [`KeyId`],
//! `outpost-secret-key-v1 <id> <base64>` and `outpost-public-key-v1 <id> <base64>`.
//!
//! Owns: key generation from a caller's RNG, the key id (sha256 prefix of the public key), the
//! text forms and their strict parsing, with errors that never echo secret material.
//! Must not: do I/O (the CLI writes key files with mode 0600) or decide whom to trust (`trust`).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signature;
use ed25519_dalek::Signer as _;
use rand_core::CryptoRngCore;
use sha2::{Digest as _, Sha256};

use crate::base::units::quote;

/// First word of a secret key line: `outpost-secret-key-v1 <key id> <base64 seed>`.
pub const SECRET_KEY_PREFIX: &str = "outpost-secret-key-v1";
/// First word of a public key line (defined with the config vocabulary that tells a key line
/// from a key file path).
pub use crate::base::keyline::PUBLIC_KEY_PREFIX;

// === keys ===

/// A key's short name: the first 8 bytes of sha256(public key bytes), shown as 16 lowercase hex
/// digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

/// An Ed25519 secret key with its id. `Debug` shows only the id.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    id: KeyId,
}

/// An Ed25519 public key with its id: a pinned, trusted key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyingKey {
    pub(super) key: ed25519_dalek::VerifyingKey,
    pub(super) id: KeyId,
}

/// Why a key line or key id was rejected. Never quotes secret key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an outpost {kind} key; expected one line \"{prefix} <key id> <base64>\"")]
    WrongPrefix {
        kind: &'static str,
        prefix: &'static str,
    },
    #[error(
        "this is a secret key, but a public key (\"{PUBLIC_KEY_PREFIX} ...\") is expected; \
         keep secret keys out of configs"
    )]
    SecretNotPublic,
    #[error("this is a public key, but a secret key (\"{SECRET_KEY_PREFIX} ...\") is expected")]
    PublicNotSecret,
    #[error("malformed {kind} key line: {problem}")]
    Malformed {
        kind: &'static str,
        problem: &'static str,
    },
    #[error("invalid key id {input:?}; expected 16 lowercase hex digits")]
    BadKeyId { input: String },
    #[error("{kind} key is not valid base64 (standard alphabet, padded)")]
    Base64 { kind: &'static str },
    #[error("{kind} key is {got} bytes; expected 32")]
    Length { kind: &'static str, got: usize },
    #[error("public key is not a valid Ed25519 point")]
    InvalidPoint,
    #[error("public key is a weak (small-order) Ed25519 key")]
    WeakKey,
    #[error("{kind} key line says key id {stated}, but the key's id is {actual}")]
    IdMismatch {
        kind: &'static str,
        stated: KeyId,
        actual: KeyId,
    },
}

const SECRET: &str = "secret";
const PUBLIC: &str = "public";

impl KeyId {
    fn of(public: &[u8; 32]) -> Self {
        let hash = Sha256::digest(public);
        let mut id = [0u8; 8];
        id.copy_from_slice(&hash[..8]);
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeyError::BadKeyId { input: quote(s) };
        if s.len() != 16
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        let mut id = [0u8; 8];
        hex::decode_to_slice(s, &mut id).map_err(|_| bad())?;
        Ok(Self(id))
    }
}

impl SigningKey {
    /// A fresh key; pass `&mut rand_core::OsRng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::generate(rng))
    }

    /// The key for a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let id = KeyId::of(key.verifying_key().as_bytes());
        Self { key, id }
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            key: self.key.verifying_key(),
            id: self.id,
        }
    }

    /// The secret key file's contents: `outpost-secret-key-v1 <key id> <base64 seed>\n`.
    pub fn to_secret_text(&self) -> String {
        format!(
            "{SECRET_KEY_PREFIX} {} {}\n",
            self.id,
            BASE64.encode(self.key.to_bytes())
        )
    }

    /// Raw signature over `message`. Callers put a domain-separating header line first
    /// (`outpost-release-v1`, `outpost-desired-state-v1`, `outpost-request-v1`), so a signature
    /// made for one kind of message never verifies as another.
    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

impl VerifyingKey {
    /// Refuses encodings that are not a curve point and small-order (weak) keys, which would
    /// let one signature verify for many messages.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidPoint)?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(Self {
            key,
            id: KeyId::of(bytes),
        })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key line: `outpost-public-key-v1 <key id> <base64 key>\n`.
    pub fn to_public_text(&self) -> String {
        format!(
            "{PUBLIC_KEY_PREFIX} {} {}\n",
            self.id,
            BASE64.encode(self.key.as_bytes())
        )
    }

    /// Strict verification: refuses non-canonical signatures and small-order components, so a
    /// signature cannot be malleated into a second valid one.
    pub(crate) fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify_strict(message, signature).is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.id)
    }
}

impl FromStr for VerifyingKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_public_key(s)
    }
}

/// Parses a secret key line (`outpost-secret-key-v1 <key id> <base64 seed>`, one trailing
/// newline optional) and checks that the id matches the key.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, KeyError> {
    let (stated, bytes) = split_key_line(text, SECRET, SECRET_KEY_PREFIX)?;
    let key = SigningKey::from_seed(&bytes);
    if key.id != stated {
        return Err(KeyError::IdMismatch {
            kind: SECRET,
            stated,
            actual: key.id,
        });
    }
    Ok(key)
}

/// Parses a public key line (`outpost-public-key-v1 <key id> <base64 key>`, one trailing
/// newline optional) and checks that the id matches the key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let (stated, bytes) = split_key_line(text, PUBLIC, PUBLIC_KEY_PREFIX)?;
    let key = VerifyingKey::from_bytes(&bytes)?;
    if key.id != stated {
        return Err(KeyError::IdMismatch {
            kind: PUBLIC,
            stated,
            actual: key.id,
        });
    }
    Ok(key)
}

/// Splits `<prefix> <key id> <base64 of 32 bytes>[\n]` into the stated id and the bytes.
fn split_key_line(
    text: &str,
    kind: &'static str,
    prefix: &'static str,
) -> Result<(KeyId, [u8; 32]), KeyError> {
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    let malformed = |problem| KeyError::Malformed { kind, problem };
    let mut parts = line.split(' ');
    let first = parts.next().unwrap_or_default();
    if first != prefix {
        return Err(match first {
            SECRET_KEY_PREFIX => KeyError::SecretNotPublic,
            PUBLIC_KEY_PREFIX => KeyError::PublicNotSecret,
            _ => KeyError::WrongPrefix { kind, prefix },
        });
    }
    if line.contains(['\n', '\r']) {
        return Err(malformed("expected a single line"));
    }
    let (Some(id), Some(b64), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed(
            "expected three fields separated by single spaces: prefix, key id, base64 key",
        ));
    };
    let id: KeyId = id.parse()?;
    let bytes = BASE64.decode(b64).map_err(|_| KeyError::Base64 { kind })?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError::Length { kind, got: b.len() })?;
    Ok((id, bytes))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn key_id_is_the_sha256_prefix_of_the_public_key() {
        let k = key(1);
        let public = k.verifying_key().to_bytes();
        let expected = hex::encode(&Sha256::digest(public)[..8]);
        assert_eq!(k.id().to_string(), expected);
        assert_eq!(k.verifying_key().id(), k.id());
        assert_eq!(expected.parse::<KeyId>().expect("id"), k.id());
        assert_eq!(format!("{:?}", k.id()), format!("KeyId({expected})"));
        let upper = expected.to_uppercase();
        let longer = format!("{expected}0");
        for bad in [
            "",
            "abc",
            upper.as_str(),
            longer.as_str(),
            "zzzzzzzzzzzzzzzz",
        ] {
            assert!(
                matches!(bad.parse::<KeyId>(), Err(KeyError::BadKeyId { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn key_text_round_trips() {
        let k = key(7);
        let secret = k.to_secret_text();
        let public = k.verifying_key().to_public_text();
        assert!(secret.starts_with(&format!("outpost-secret-key-v1 {} ", k.id())));
        assert!(public.starts_with(&format!("outpost-public-key-v1 {} ", k.id())));
        assert!(secret.ends_with('\n') && secret.lines().count() == 1);
        let parsed = parse_secret_key(&secret).expect("secret");
        assert_eq!(parsed.id(), k.id());
        assert_eq!(parsed.to_secret_text(), secret);
        let parsed = parse_public_key(&public).expect("public");
        assert_eq!(parsed, k.verifying_key());
        assert_eq!(parsed.to_public_text(), public);
        // Without the newline (as pasted into a config), or with CRLF.
        assert!(parse_public_key(public.trim_end()).is_ok());
        assert!(parse_public_key(&public.replace('\n', "\r\n")).is_ok());
        assert_eq!(
            public.trim_end().parse::<VerifyingKey>().expect("FromStr"),
            parsed
        );
        // Debug never shows the secret.
        let debug = format!("{k:?}");
        assert_eq!(debug, format!("SigningKey({})", k.id()));
    }

    #[test]
    fn generated_keys_are_distinct() {
        let a = SigningKey::generate(&mut rand_core::OsRng);
        let b = SigningKey::generate(&mut rand_core::OsRng);
        assert_ne!(a.id(), b.id());
        assert_eq!(
            parse_secret_key(&a.to_secret_text()).expect("parse").id(),
            a.id()
        );
    }

    #[test]
    fn key_parse_errors_are_specific() {
        let k = key(3);
        let public = k.verifying_key().to_public_text();
        let secret = k.to_secret_text();
        let other = key(4).verifying_key().to_public_text();
        let b64 = |line: &str| line.trim_end().rsplit(' ').next().expect("b64").to_owned();
        let id = k.id().to_string();

        assert_eq!(parse_public_key(&secret), Err(KeyError::SecretNotPublic));
        assert_eq!(
            parse_secret_key(&public).map(|k| k.id()),
            Err(KeyError::PublicNotSecret)
        );
        assert!(matches!(
            parse_public_key("ssh-ed25519 AAAA"),
            Err(KeyError::WrongPrefix { .. })
        ));
        assert!(matches!(
            parse_public_key(""),
            Err(KeyError::WrongPrefix { .. })
        ));
        assert!(matches!(
            parse_public_key(&format!(" {public}")),
            Err(KeyError::WrongPrefix { .. })
        ));
        for malformed in [
            format!("{PUBLIC_KEY_PREFIX} {id}"),
            format!("{PUBLIC_KEY_PREFIX} {id}  {}", b64(&public)),
            format!("{PUBLIC_KEY_PREFIX} {id} {} extra", b64(&public)),
            format!("{}\n", public),
            format!("{PUBLIC_KEY_PREFIX} {id} {}\r", b64(&public)),
        ] {
            assert!(
                matches!(
                    parse_public_key(&malformed),
                    Err(KeyError::Malformed { .. } | KeyError::Base64 { .. })
                ),
                "{malformed:?}: {:?}",
                parse_public_key(&malformed)
            );
        }
        assert!(matches!(
            parse_public_key(&format!(
                "{PUBLIC_KEY_PREFIX} {} {}",
                &id[..15],
                b64(&public)
            )),
            Err(KeyError::BadKeyId { .. })
        ));
        assert_eq!(
            parse_public_key(&format!("{PUBLIC_KEY_PREFIX} {id} not*base64")),
            Err(KeyError::Base64 { kind: "public" })
        );
        // Unpadded or with non-zero trailing bits: not the canonical encoding.
        let unpadded = b64(&public).trim_end_matches('=').to_owned();
        assert_eq!(
            parse_public_key(&format!("{PUBLIC_KEY_PREFIX} {id} {unpadded}")),
            Err(KeyError::Base64 { kind: "public" })
        );
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut noncanonical = b64(&public).into_bytes();
        let last = noncanonical.len() - 2; // the char before '=': its low 2 bits are padding
        let index = ALPHABET
            .iter()
            .position(|&c| c == noncanonical[last])
            .expect("alphabet");
        noncanonical[last] = ALPHABET[index | 1];
        let noncanonical = String::from_utf8(noncanonical).expect("ascii");
        assert_eq!(
            parse_public_key(&format!("{PUBLIC_KEY_PREFIX} {id} {noncanonical}")),
            Err(KeyError::Base64 { kind: "public" })
        );
        assert_eq!(
            parse_public_key(&format!(
                "{PUBLIC_KEY_PREFIX} {id} {}",
                BASE64.encode([1u8; 31])
            )),
            Err(KeyError::Length {
                kind: "public",
                got: 31
            })
        );
        assert_eq!(
            parse_secret_key(&format!(
                "{SECRET_KEY_PREFIX} {id} {}",
                BASE64.encode([1u8; 33])
            ))
            .map(|k| k.id()),
            Err(KeyError::Length {
                kind: "secret",
                got: 33
            })
        );
        // The id of another key.
        let swapped = format!("{PUBLIC_KEY_PREFIX} {} {}", key(4).id(), b64(&public));
        assert_eq!(
            parse_public_key(&swapped),
            Err(KeyError::IdMismatch {
                kind: "public",
                stated: key(4).id(),
                actual: k.id()
            })
        );
        let swapped = format!("{SECRET_KEY_PREFIX} {} {}", key(4).id(), b64(&secret));
        assert!(matches!(
            parse_secret_key(&swapped),
            Err(KeyError::IdMismatch { kind: "secret", .. })
        ));
        assert!(parse_public_key(&other).is_ok());
    }

    #[test]
    fn secret_key_errors_do_not_echo_the_key() {
        let secret = key(9).to_secret_text();
        let b64 = secret
            .trim_end()
            .rsplit(' ')
            .next()
            .expect("b64")
            .to_owned();
        let broken = secret.replace(&b64, &format!("{b64}!"));
        let err = parse_secret_key(&broken).map(|k| k.id()).expect_err("bad");
        assert!(!err.to_string().contains(&b64[..20]), "{err}");
        let err = parse_public_key(&secret).expect_err("secret as public");
        assert!(!err.to_string().contains(&b64[..20]), "{err}");
    }

    #[test]
    fn invalid_and_weak_public_keys_are_refused() {
        // The identity point (y = 1) is small-order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(VerifyingKey::from_bytes(&identity), Err(KeyError::WeakKey));
        let line = format!(
            "{PUBLIC_KEY_PREFIX} {} {}",
            KeyId::of(&identity),
            BASE64.encode(identity)
        );
        assert_eq!(parse_public_key(&line), Err(KeyError::WeakKey));
        // Some y has no matching x on the curve; find one.
        let not_a_point = (2u8..=255)
            .map(|b| {
                let mut bytes = [0u8; 32];
                bytes[0] = b;
                bytes
            })
            .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
            .expect("some encoding is not a point");
        assert_eq!(
            VerifyingKey::from_bytes(&not_a_point),
            Err(KeyError::InvalidPoint)
        );
    }
}
