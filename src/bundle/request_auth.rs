//! Signed control-plane requests: how a node or an operator proves who sent a request.
//!
//! Owns: the `Authorization: Outpost <role> <key id> <unix time> <nonce> <signature>` header, the
//! canonical message it signs (role, method, path and query, time, nonce and the body's sha256,
//! after a domain-separating header line), and its checks (signature, clock window).
//! Must not: do I/O, read the clock, or remember nonces — the control plane keeps the seen-nonce
//! set for the clock window so a captured request cannot be replayed. See `docs/rollout.md`
//! ("Authentication").
#![forbid(unsafe_code)]

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest as _, Sha256};

use super::sign::{KeyId, Signature, SigningKey, VerifyingKey};

/// The header's scheme word.
pub const SCHEME: &str = "Outpost";
/// First line of every signed request message (the signature's domain separator).
pub const REQUEST_HEADER: &str = "outpost-request-v1";
/// How far a request's time may be from the receiver's clock, in seconds (either way).
pub const MAX_REQUEST_SKEW: u64 = 300;

/// Who signs: a node (key enrolled with the control plane) or an operator (key in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `Authorization` header (not yet verified).
#[derive(Debug, Clone)]
pub struct RequestAuth {
    pub role: Role,
    pub key: KeyId,
    pub time: u64,
    /// 32 lowercase hex digits.
    pub nonce: String,
    signature: Signature,
}

/// Why a request's authentication was refused. Messages are safe to return to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing Authorization header (expected \"{SCHEME} <role> <key id> <time> <nonce> <signature>\")"
    )]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("request time {time} is more than {MAX_REQUEST_SKEW}s from the server's clock ({now})")]
    Clock { time: u64, now: u64 },
    #[error("request signature does not verify under key {0}")]
    BadSignature(KeyId),
}

fn message(
    role: Role,
    method: &str,
    path_and_query: &str,
    time: u64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    format!(
        "{REQUEST_HEADER}\n{role}\n{method}\n{path_and_query}\n{time}\n{nonce}\n{}\n",
        hex::encode(Sha256::digest(body))
    )
    .into_bytes()
}

/// The `Authorization` header value for a request signed by `key` at `now` with a fresh random
/// `nonce`.
pub fn sign_request(
    key: &SigningKey,
    role: Role,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    now: u64,
    nonce: [u8; 16],
) -> String {
    let nonce = hex::encode(nonce);
    let sig = key.sign(&message(role, method, path_and_query, now, &nonce, body));
    format!(
        "{SCHEME} {role} {} {now} {nonce} {}",
        key.id(),
        BASE64.encode(sig.to_bytes())
    )
}

impl RequestAuth {
    /// Parses a header value; `None` (no header) is [`AuthError::Missing`].
    pub fn parse(value: Option<&str>) -> Result<Self, AuthError> {
        let value = value.ok_or(AuthError::Missing)?;
        if value.len() > 512 {
            return Err(AuthError::Malformed("too long"));
        }
        let mut it = value.split(' ');
        if it.next() != Some(SCHEME) {
            return Err(AuthError::Malformed("scheme is not \"Outpost\""));
        }
        let role = match it.next() {
            Some("node") => Role::Node,
            Some("operator") => Role::Operator,
            _ => return Err(AuthError::Malformed("role is not \"node\" or \"operator\"")),
        };
        let key = it
            .next()
            .and_then(|k| k.parse::<KeyId>().ok())
            .ok_or(AuthError::Malformed("key id is not 16 hex digits"))?;
        let time = it
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or(AuthError::Malformed("time is not unix seconds"))?;
        let nonce = it
            .next()
            .filter(|n| n.len() == 32 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or(AuthError::Malformed("nonce is not 32 lowercase hex digits"))?
            .to_owned();
        let sig: [u8; 64] = it
            .next()
            .and_then(|s| BASE64.decode(s).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or(AuthError::Malformed("signature is not 64 bytes of base64"))?;
        if it.next().is_some() {
            return Err(AuthError::Malformed("trailing fields"));
        }
        Ok(Self {
            role,
            key,
            time,
            nonce,
            signature: Signature::from_bytes(&sig),
        })
    }

    /// Checks the clock window and the signature over this request under `key` (looked up by
    /// the caller from [`RequestAuth::key`] and [`RequestAuth::role`]).
    pub fn verify(
        &self,
        key: &VerifyingKey,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), AuthError> {
        if self.time.abs_diff(now) > MAX_REQUEST_SKEW {
            return Err(AuthError::Clock {
                time: self.time,
                now,
            });
        }
        let msg = message(
            self.role,
            method,
            path_and_query,
            self.time,
            &self.nonce,
            body,
        );
        if key.id() != self.key || !key.verifies(&msg, &self.signature) {
            return Err(AuthError::BadSignature(self.key));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_tampering() {
        let k = SigningKey::from_seed(&[7; 32]);
        let h = sign_request(&k, Role::Node, "POST", "/v1/sync", b"{}", 1000, [1; 16]);
        let a = RequestAuth::parse(Some(&h)).unwrap();
        assert_eq!(a.role, Role::Node);
        assert_eq!(a.key, k.id());
        let vk = k.verifying_key();
        a.verify(&vk, "POST", "/v1/sync", b"{}", 1100).unwrap();
        // Any change to what was signed breaks it.
        for (m, p, b) in [
            ("GET", "/v1/sync", &b"{}"[..]),
            ("POST", "/v1/sync?x", b"{}"),
            ("POST", "/v1/sync", b"{ }"),
        ] {
            assert_eq!(
                a.verify(&vk, m, p, b, 1000),
                Err(AuthError::BadSignature(k.id()))
            );
        }
        // The same signature claimed for the operator role fails too.
        let as_operator = h.replace(" node ", " operator ");
        let b = RequestAuth::parse(Some(&as_operator)).unwrap();
        assert!(b.verify(&vk, "POST", "/v1/sync", b"{}", 1000).is_err());
        // Another key.
        let other = SigningKey::from_seed(&[8; 32]).verifying_key();
        assert!(a.verify(&other, "POST", "/v1/sync", b"{}", 1000).is_err());
        assert!(matches!(
            a.verify(&vk, "POST", "/v1/sync", b"{}", 1000 + MAX_REQUEST_SKEW + 1),
            Err(AuthError::Clock { .. })
        ));
    }

    #[test]
    fn malformed_headers() {
        assert_eq!(RequestAuth::parse(None).unwrap_err(), AuthError::Missing);
        for h in [
            "Bearer x",
            "Outpost root 0011223344556677 1 00000000000000000000000000000000 AA==",
            "Outpost node zz 1 00000000000000000000000000000000 AA==",
            "Outpost node 0011223344556677 x 00000000000000000000000000000000 AA==",
            "Outpost node 0011223344556677 1 short AA==",
            "Outpost node 0011223344556677 1 00000000000000000000000000000000 AA==",
        ] {
            assert!(
                matches!(RequestAuth::parse(Some(h)), Err(AuthError::Malformed(_))),
                "{h}"
            );
        }
    }
}
