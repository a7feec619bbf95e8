//! Release signatures: who said that a bundle is release `APP VERSION`, and whether this node
//! believes them.
//!
//! Owns: Ed25519 key wrappers and their one-line text forms ([`SigningKey`], [`VerifyingKey`],
//! [`KeyId`]), the canonical release document ([`ReleaseDoc`]) and the detached signature file
//! around it ([`SignedDoc`]), the node's [`TrustPolicy`] (pinned keys, per-tenant keys, k-of-n),
//! [`verify`] and the rollback checks ([`check_not_older`], [`check_same_tenant`]).
//! Must not: do I/O (the CLI writes key files with mode 0600), read the clock (`now` is passed
//! in), or look inside the bundle — [`verify`] sees only the bundle's length and digest, so a
//! caller checks the signature before decompressing a byte of untrusted data.
//!
//! In three parts: [`keys`] (key types and their text forms), [`doc`] (the release document and
//! the signature file) and [`trust`] (the trust policy, verification and rollback checks). This
//! file only lists their public names.
#![forbid(unsafe_code)]

pub mod doc;
pub mod keys;
pub mod trust;

pub use doc::{
    DOC_HEADER, DocError, MAX_SIGNATURES, MAX_SIGNED_DOC_LEN, ReleaseDoc, SignedDoc, Version,
    VersionError,
};
pub use ed25519_dalek::Signature;
pub use keys::{
    KeyError, KeyId, PUBLIC_KEY_PREFIX, SECRET_KEY_PREFIX, SigningKey, VerifyingKey,
    parse_public_key, parse_secret_key,
};
pub use trust::{
    MAX_CLOCK_SKEW, PolicyError, TrustPolicy, Verified, VerifyError, check_not_older,
    check_same_tenant, verify,
};

#[cfg(test)]
mod testkit {
    //! Keys, documents and policies shared by the tests of the three parts.
    use super::*;

    pub(super) const NOW: u64 = 1_750_000_000;

    pub(super) fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    pub(super) fn doc() -> ReleaseDoc {
        ReleaseDoc {
            app: "hello".to_owned(),
            version: "1.2.3".to_owned(),
            digest: crate::bundle::digest(b"bundle"),
            size: 6,
            created: NOW - 60,
            expires: NOW + 86_400,
            tenant: None,
        }
    }

    pub(super) fn signed_by(doc: ReleaseDoc, keys: &[&SigningKey]) -> SignedDoc {
        let mut s = SignedDoc::new(doc).expect("valid doc");
        for k in keys {
            s.add_signature(k).expect("sign");
        }
        s
    }

    pub(super) fn policy(keys: &[&SigningKey]) -> TrustPolicy {
        TrustPolicy::new(keys.iter().map(|k| k.verifying_key()).collect()).expect("policy")
    }

    pub(super) fn policy_with(
        keys: &[&SigningKey],
        tenants: &[(&str, &[&SigningKey])],
        threshold: usize,
    ) -> Result<TrustPolicy, PolicyError> {
        let mut p = TrustPolicy::new(keys.iter().map(|k| k.verifying_key()).collect())?
            .with_threshold(threshold)?;
        for (tenant, ks) in tenants {
            p = p.with_tenant_keys(tenant, ks.iter().map(|k| k.id()).collect())?;
        }
        Ok(p)
    }

    pub(super) fn check(signed: &SignedDoc, policy: &TrustPolicy) -> Result<Verified, VerifyError> {
        verify(signed, 6, &crate::bundle::digest(b"bundle"), policy, NOW)
    }

    /// Re-parses the encoded file, as a node would see it.
    pub(super) fn reparse(signed: &SignedDoc) -> SignedDoc {
        SignedDoc::parse(&signed.encode(), MAX_SIGNED_DOC_LEN).expect("reparse")
    }
}
