//! Trust: the node's [`TrustPolicy`] (pinned keys, per-tenant keys, k-of-n thresholds),
//! [`verify`] of a signature file against a bundle's length and digest at a given `now`, and the
//! rollback rules ([`check_not_older`], [`check_same_tenant`]).
//!
//! Owns: every decision of whether a release may be installed or served.
//! Must not: read the clock (`now` is passed in) or look inside the bundle: [`verify`] sees only
//! its length and digest, so callers check the signature before decompressing untrusted data.

use std::collections::BTreeMap;

use super::doc::{DocError, ReleaseDoc, SignedDoc, Version, name_problem};
use super::keys::{KeyId, VerifyingKey};
use crate::base::units::quote;
use crate::bundle::Digest;
use crate::bundle::manifest::is_valid_name;

/// How far in the future a document's `created` may be before it is refused, in seconds: the
/// signer's clock and this node's may disagree by this much.
pub const MAX_CLOCK_SKEW: u64 = 300;

// === trust ===

/// Which keys this node believes.
///
/// `keys` are the pinned keys. `tenant_keys` names, per tenant, the key ids that may sign that
/// tenant's apps; a key named there is a *tenant key* and counts only for the tenants that name
/// it. Every other pinned key is an *operator key* and counts for every release — untenanted,
/// of a listed tenant or not. So a tenant's key can never sign another tenant's or the
/// operator's apps, and the operator's keys need not be repeated in each tenant's list.
/// `threshold` valid signatures by keys that count are required (k of n; default 1).
#[derive(Debug, Clone)]
pub struct TrustPolicy {
    keys: Vec<VerifyingKey>,
    tenant_keys: BTreeMap<String, Vec<KeyId>>,
    threshold: usize,
}

/// Why a trust policy is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("key {0} is listed twice")]
    DuplicateKey(KeyId),
    #[error("threshold must be at least 1")]
    ZeroThreshold,
    #[error("threshold {threshold} is more than the {keys} trusted key(s)")]
    ThresholdTooHigh { threshold: usize, keys: usize },
    #[error("tenant {tenant:?}: {problem}")]
    Tenant { tenant: String, problem: String },
}

impl TrustPolicy {
    /// Trusts `keys` as operator keys, threshold 1. An empty policy trusts nothing.
    pub fn new(keys: Vec<VerifyingKey>) -> Result<Self, PolicyError> {
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.id == key.id) {
                return Err(PolicyError::DuplicateKey(key.id));
            }
        }
        Ok(Self {
            keys,
            tenant_keys: BTreeMap::new(),
            threshold: 1,
        })
    }

    /// Requires `k` valid signatures by keys that count: at least 1 and at most the number of
    /// pinned keys (1 is allowed with no keys).
    pub fn with_threshold(mut self, k: usize) -> Result<Self, PolicyError> {
        if k == 0 {
            return Err(PolicyError::ZeroThreshold);
        }
        if k > self.keys.len().max(1) {
            return Err(PolicyError::ThresholdTooHigh {
                threshold: k,
                keys: self.keys.len(),
            });
        }
        self.threshold = k;
        Ok(self)
    }

    /// Makes `ids` (pinned keys) tenant keys of `tenant`. A key may belong to several tenants.
    pub fn with_tenant_keys(mut self, tenant: &str, ids: Vec<KeyId>) -> Result<Self, PolicyError> {
        let problem = |problem: String| PolicyError::Tenant {
            tenant: quote(tenant),
            problem,
        };
        if !is_valid_name(tenant) {
            return Err(problem(name_problem(tenant)));
        }
        if self.tenant_keys.contains_key(tenant) {
            return Err(problem("listed twice".to_owned()));
        }
        if ids.is_empty() {
            return Err(problem("no key ids".to_owned()));
        }
        for (i, id) in ids.iter().enumerate() {
            if self.key(id).is_none() {
                return Err(problem(format!("key {id} is not a trusted key")));
            }
            if ids[..i].contains(id) {
                return Err(problem(format!("key {id} is listed twice")));
            }
        }
        self.tenant_keys.insert(tenant.to_owned(), ids);
        Ok(self)
    }

    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The tenant keys of `tenant`, if it has any.
    pub fn tenant_keys(&self, tenant: &str) -> Option<&[KeyId]> {
        self.tenant_keys.get(tenant).map(Vec::as_slice)
    }

    /// The pinned key with this id.
    pub fn key(&self, id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.iter().find(|k| k.id == *id)
    }

    fn is_tenant_key(&self, id: &KeyId) -> bool {
        self.tenant_keys.values().any(|ids| ids.contains(id))
    }

    /// The keys that count for a release of `tenant`: the operator keys, plus that tenant's keys.
    pub fn keys_for(&self, tenant: Option<&str>) -> Vec<KeyId> {
        let tenant_ids = tenant.and_then(|t| self.tenant_keys(t)).unwrap_or_default();
        self.keys
            .iter()
            .map(|k| k.id)
            .filter(|id| !self.is_tenant_key(id) || tenant_ids.contains(id))
            .collect()
    }
}

/// A document that passed [`verify`], with the keys whose signatures counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub doc: ReleaseDoc,
    pub keys: Vec<KeyId>,
}

/// Why a release is refused. Every message names the release and the keys involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed signature file: {0}")]
    Malformed(#[from] DocError),
    #[error("{release} is unsigned: its signature file has no signature lines")]
    Unsigned { release: String },
    #[error("{release} is signed only by unknown keys: {}; trusted keys: {}", list(.keys), list(.trusted))]
    UnknownKeys {
        release: String,
        keys: Vec<KeyId>,
        trusted: Vec<KeyId>,
    },
    #[error(
        "{release}: the signature by key {key} does not verify; the signature file was altered or corrupted"
    )]
    BadSignature { release: String, key: KeyId },
    #[error("{release}: key(s) {} may not sign {scope}", list(.keys))]
    KeyNotAllowed {
        release: String,
        scope: String,
        keys: Vec<KeyId>,
    },
    #[error(
        "{release} has {valid} valid signature(s) by keys that count ({}), but {threshold} of \
         {allowed} are required{ignored}",
        list(.keys)
    )]
    BelowThreshold {
        release: String,
        valid: usize,
        threshold: usize,
        allowed: usize,
        keys: Vec<KeyId>,
        /// `"; ignored: ..."` or empty.
        ignored: String,
    },
    #[error(
        "{release}: the signature covers {signed_digest} ({signed_size} bytes) but the bundle is \
         {actual_digest} ({actual_size} bytes)"
    )]
    BundleMismatch {
        release: String,
        signed_digest: Digest,
        signed_size: u64,
        actual_digest: Digest,
        actual_size: u64,
    },
    #[error(
        "{release} was created at {created}, more than {MAX_CLOCK_SKEW}s after this node's clock \
         ({now}); is a clock wrong?"
    )]
    CreatedInFuture {
        release: String,
        created: u64,
        now: u64,
    },
    #[error("{release}: the signature expired at {expires} (now {now})")]
    Expired {
        release: String,
        expires: u64,
        now: u64,
    },
    #[error("{app}: refusing {new}, which is older than the installed {installed}")]
    Rollback {
        app: String,
        new: String,
        installed: String,
    },
    #[error(
        "{app} {version}: bundle {new} claims the version of the installed bundle {installed}; \
         a changed bundle needs a new version"
    )]
    SameVersionDifferentDigest {
        app: String,
        version: String,
        new: Digest,
        installed: Digest,
    },
    #[error(
        "{app}: the installed release belongs to {installed} but {new_release} belongs to {new}"
    )]
    TenantChanged {
        app: String,
        new_release: String,
        installed: String,
        new: String,
    },
    #[error("{app}: the installed version {version:?} is not MAJOR.MINOR.PATCH")]
    BadInstalledVersion { app: String, version: String },
}

impl VerifyError {
    /// A short, stable name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unsigned { .. } => "unsigned",
            Self::UnknownKeys { .. } => "unknown_key",
            Self::BadSignature { .. } => "bad_signature",
            Self::KeyNotAllowed { .. } => "key_not_allowed",
            Self::BelowThreshold { .. } => "below_threshold",
            Self::BundleMismatch { .. } => "bundle_mismatch",
            Self::CreatedInFuture { .. } => "not_yet_valid",
            Self::Expired { .. } => "expired",
            Self::Rollback { .. } | Self::SameVersionDifferentDigest { .. } => "rollback",
            Self::TenantChanged { .. } => "tenant_changed",
            Self::BadInstalledVersion { .. } => "internal",
        }
    }
}

fn list(keys: &[KeyId]) -> String {
    if keys.is_empty() {
        return "none".to_owned();
    }
    keys.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn scope(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) => format!("apps of tenant {t:?}"),
        None => "apps without a tenant".to_owned(),
    }
}

/// Decides whether `signed` releases the bundle of `bundle_len` bytes with `bundle_digest`,
/// under `policy`, at unix time `now`. Needs nothing but the bundle's length and digest, so it
/// runs before anything is decompressed. Checks, in order:
///
/// 1. there is at least one signature;
/// 2. each signature: an unknown key is ignored; a pinned key's signature must verify
///    (`verify_strict`) or the whole file is refused; a key that does not count for the
///    release's tenant is ignored;
/// 3. at least `threshold` signatures counted — if none did, the error says whether the keys
///    were unknown or not allowed for the tenant;
/// 4. the document's digest and size are the bundle's;
/// 5. `created` is at most [`MAX_CLOCK_SKEW`] seconds after `now`;
/// 6. `now` is before `expires`.
pub fn verify(
    signed: &SignedDoc,
    bundle_len: u64,
    bundle_digest: &Digest,
    policy: &TrustPolicy,
    now: u64,
) -> Result<Verified, VerifyError> {
    let doc = &signed.doc;
    let release = doc.release_name();
    if signed.signatures.is_empty() {
        return Err(VerifyError::Unsigned { release });
    }
    let allowed = policy.keys_for(doc.tenant.as_deref());
    let (mut counted, mut unknown, mut not_allowed) = (Vec::new(), Vec::new(), Vec::new());
    for (id, signature) in &signed.signatures {
        let Some(key) = policy.key(id) else {
            unknown.push(*id);
            continue;
        };
        if !key.verifies(&signed.doc_bytes, signature) {
            return Err(VerifyError::BadSignature { release, key: *id });
        }
        if allowed.contains(id) {
            counted.push(*id);
        } else {
            not_allowed.push(*id);
        }
    }
    if counted.len() < policy.threshold {
        if counted.is_empty() && !not_allowed.is_empty() {
            return Err(VerifyError::KeyNotAllowed {
                release,
                scope: scope(doc.tenant.as_deref()),
                keys: not_allowed,
            });
        }
        if counted.is_empty() {
            return Err(VerifyError::UnknownKeys {
                release,
                keys: unknown,
                trusted: policy.keys.iter().map(|k| k.id).collect(),
            });
        }
        let mut ignored = Vec::new();
        if !not_allowed.is_empty() {
            ignored.push(format!(
                "{} (may not sign {})",
                list(&not_allowed),
                scope(doc.tenant.as_deref())
            ));
        }
        if !unknown.is_empty() {
            ignored.push(format!("{} (unknown)", list(&unknown)));
        }
        return Err(VerifyError::BelowThreshold {
            release,
            valid: counted.len(),
            threshold: policy.threshold,
            allowed: allowed.len(),
            keys: counted,
            ignored: if ignored.is_empty() {
                String::new()
            } else {
                format!("; ignored: {}", ignored.join(", "))
            },
        });
    }
    if doc.size != bundle_len || doc.digest != *bundle_digest {
        return Err(VerifyError::BundleMismatch {
            release,
            signed_digest: doc.digest,
            signed_size: doc.size,
            actual_digest: *bundle_digest,
            actual_size: bundle_len,
        });
    }
    if doc.created > now.saturating_add(MAX_CLOCK_SKEW) {
        return Err(VerifyError::CreatedInFuture {
            release,
            created: doc.created,
            now,
        });
    }
    if now >= doc.expires {
        return Err(VerifyError::Expired {
            release,
            expires: doc.expires,
            now,
        });
    }
    Ok(Verified {
        doc: doc.clone(),
        keys: counted,
    })
}

/// The rollback rule for replacing the installed release of `new.app`: a strictly older version
/// is refused, and so is the same version with a different bundle (a version names one bundle);
/// the same version and digest is fine (a re-install), a newer version is fine.
pub fn check_not_older(
    new: &ReleaseDoc,
    installed_version: &str,
    installed_digest: &Digest,
) -> Result<(), VerifyError> {
    let installed: Version =
        installed_version
            .parse()
            .map_err(|_| VerifyError::BadInstalledVersion {
                app: new.app.clone(),
                version: quote(installed_version),
            })?;
    let new_version = new.parsed_version().map_err(|e| {
        VerifyError::Malformed(DocError::Invalid {
            field: "version",
            problem: e.to_string(),
        })
    })?;
    match new_version.cmp(&installed) {
        std::cmp::Ordering::Less => Err(VerifyError::Rollback {
            app: new.app.clone(),
            new: new.version.clone(),
            installed: installed_version.to_owned(),
        }),
        std::cmp::Ordering::Equal if new.digest != *installed_digest => {
            Err(VerifyError::SameVersionDifferentDigest {
                app: new.app.clone(),
                version: new.version.clone(),
                new: new.digest,
                installed: *installed_digest,
            })
        }
        _ => Ok(()),
    }
}

/// An app keeps its tenant: a release of another tenant (or of none) may not replace it, even
/// when validly signed — otherwise a tenant key could take over another tenant's app name.
pub fn check_same_tenant(
    new: &ReleaseDoc,
    installed_tenant: Option<&str>,
) -> Result<(), VerifyError> {
    if new.tenant.as_deref() == installed_tenant {
        return Ok(());
    }
    let describe = |t: Option<&str>| match t {
        Some(t) => format!("tenant {t:?}"),
        None => "no tenant".to_owned(),
    };
    Err(VerifyError::TenantChanged {
        app: new.app.clone(),
        new_release: new.release_name(),
        installed: describe(installed_tenant),
        new: describe(new.tenant.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::*;
    use super::*;

    #[test]
    fn a_valid_release_verifies() {
        let a = key(1);
        let v = check(&reparse(&signed_by(doc(), &[&a])), &policy(&[&a])).expect("verify");
        assert_eq!(v.doc, doc());
        assert_eq!(v.keys, vec![a.id()]);
    }

    #[test]
    fn unsigned_and_unknown_keys() {
        let (a, b, c) = (key(1), key(2), key(3));
        let unsigned = SignedDoc::new(doc()).expect("new");
        let err = check(&unsigned, &policy(&[&a])).expect_err("unsigned");
        assert_eq!(
            err,
            VerifyError::Unsigned {
                release: "hello 1.2.3".to_owned()
            }
        );
        let err = check(&signed_by(doc(), &[&b, &c]), &policy(&[&a])).expect_err("unknown");
        assert!(
            matches!(&err, VerifyError::UnknownKeys { keys, .. } if *keys == vec![b.id(), c.id()])
        );
        let msg = err.to_string();
        assert!(
            msg.contains("hello 1.2.3 is signed only by unknown keys"),
            "{msg}"
        );
        assert!(
            msg.contains(&b.id().to_string()) && msg.contains(&a.id().to_string()),
            "{msg}"
        );
        // An unknown signer next to a trusted one is ignored.
        let v = check(&signed_by(doc(), &[&b, &a]), &policy(&[&a])).expect("verify");
        assert_eq!(v.keys, vec![a.id()]);
        // An empty policy trusts nothing.
        let empty = TrustPolicy::new(Vec::new()).expect("empty");
        assert!(matches!(
            check(&signed_by(doc(), &[&a]), &empty),
            Err(VerifyError::UnknownKeys { .. })
        ));
    }

    #[test]
    fn altered_files_fail_signature_checks() {
        let (a, b) = (key(1), key(2));
        let signed = signed_by(doc(), &[&a]);
        let text = String::from_utf8(signed.encode()).expect("ascii");
        // The document edited after signing: still well-formed, no longer signed.
        let tampered = text.replace("version=1.2.3", "version=1.2.4");
        let parsed = SignedDoc::parse(tampered.as_bytes(), MAX_SIGNED_DOC_LEN).expect("parse");
        let err = check(&parsed, &policy(&[&a])).expect_err("tampered");
        assert_eq!(
            err,
            VerifyError::BadSignature {
                release: "hello 1.2.4".to_owned(),
                key: a.id()
            }
        );
        // A signature line claiming a trusted key but made by another.
        let mut forged = signed_by(doc(), &[&b]);
        forged.signatures[0].0 = a.id();
        assert!(matches!(
            check(&reparse(&forged), &policy(&[&a, &b])),
            Err(VerifyError::BadSignature { key, .. }) if key == a.id()
        ));
        // A bad signature by a trusted key refuses the file even if others would suffice.
        let mut mixed = signed_by(doc(), &[&a, &b]);
        let mut sig = mixed.signatures[1].1.to_bytes();
        sig[0] ^= 1;
        mixed.signatures[1].1 = Signature::from_bytes(&sig);
        assert!(matches!(
            check(&reparse(&mixed), &policy(&[&a, &b])),
            Err(VerifyError::BadSignature { key, .. }) if key == b.id()
        ));
        // A malleated signature (s + L) is refused by verify_strict.
        let mut malleated = signed_by(doc(), &[&a]);
        let mut sig = malleated.signatures[0].1.to_bytes();
        add_group_order(&mut sig[32..]);
        malleated.signatures[0].1 = Signature::from_bytes(&sig);
        assert!(matches!(
            check(&malleated, &policy(&[&a])),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    /// Adds the Ed25519 group order L to a little-endian scalar (mod 2^256).
    fn add_group_order(s: &mut [u8]) {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (b, l) in s.iter_mut().zip(L) {
            let sum = u16::from(*b) + u16::from(l) + carry;
            *b = sum as u8;
            carry = sum >> 8;
        }
    }

    #[test]
    fn thresholds_count_distinct_trusted_keys() {
        let (a, b, c, x) = (key(1), key(2), key(3), key(9));
        let p = policy_with(&[&a, &b, &c], &[], 2).expect("2 of 3");
        let err = check(&signed_by(doc(), &[&a, &x]), &p).expect_err("1 of 3");
        assert!(matches!(
            &err,
            VerifyError::BelowThreshold {
                valid: 1,
                threshold: 2,
                allowed: 3,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains("has 1 valid signature(s)"), "{msg}");
        assert!(msg.contains("but 2 of 3 are required"), "{msg}");
        assert!(
            msg.contains(&format!("ignored: {} (unknown)", x.id())),
            "{msg}"
        );
        let v = check(&signed_by(doc(), &[&c, &a]), &p).expect("2 of 3");
        assert_eq!(v.keys, vec![c.id(), a.id()]);
        let v = check(&signed_by(doc(), &[&a, &b, &c]), &p).expect("3 of 3");
        assert_eq!(v.keys.len(), 3);
    }

    #[test]
    fn tenant_keys_count_only_for_their_tenants() {
        let (ops, acme, globex) = (key(1), key(2), key(3));
        let tenants: &[(&str, &[&SigningKey])] = &[("acme", &[&acme]), ("globex", &[&globex])];
        let p = policy_with(&[&ops, &acme, &globex], tenants, 1).expect("policy");
        let for_tenant = |t: Option<&str>| {
            let mut d = doc();
            d.tenant = t.map(str::to_owned);
            d
        };
        assert_eq!(p.keys_for(Some("acme")), vec![ops.id(), acme.id()]);
        assert_eq!(p.keys_for(Some("other")), vec![ops.id()]);
        assert_eq!(p.keys_for(None), vec![ops.id()]);
        assert_eq!(p.tenant_keys("acme"), Some(&[acme.id()][..]));

        // A tenant key signs its tenant's apps; the operator key signs anything.
        assert!(check(&signed_by(for_tenant(Some("acme")), &[&acme]), &p).is_ok());
        assert!(check(&signed_by(for_tenant(Some("acme")), &[&ops]), &p).is_ok());
        assert!(check(&signed_by(for_tenant(Some("other")), &[&ops]), &p).is_ok());
        assert!(check(&signed_by(for_tenant(None), &[&ops]), &p).is_ok());

        // ... but not another tenant's, an unlisted tenant's, or the operator's apps.
        for (tenant, scope) in [
            (Some("globex"), "apps of tenant \"globex\""),
            (Some("other"), "apps of tenant \"other\""),
            (None, "apps without a tenant"),
        ] {
            let err = check(&signed_by(for_tenant(tenant), &[&acme]), &p).expect_err(scope);
            assert_eq!(
                err,
                VerifyError::KeyNotAllowed {
                    release: "hello 1.2.3".to_owned(),
                    scope: scope.to_owned(),
                    keys: vec![acme.id()],
                }
            );
            assert!(
                err.to_string()
                    .contains(&format!("key(s) {} may not sign {scope}", acme.id()))
            );
        }

        // With a threshold of 2, a not-allowed key does not help reach it.
        let p2 = policy_with(&[&ops, &acme, &globex], tenants, 2).expect("2");
        let err = check(&signed_by(for_tenant(Some("globex")), &[&ops, &acme]), &p2)
            .expect_err("1 counts");
        assert!(
            err.to_string()
                .contains("may not sign apps of tenant \"globex\""),
            "{err}"
        );
        assert!(
            check(
                &signed_by(for_tenant(Some("globex")), &[&ops, &globex]),
                &p2
            )
            .is_ok()
        );
    }

    #[test]
    fn the_bundle_must_match_the_signed_digest_and_size() {
        let a = key(1);
        let signed = signed_by(doc(), &[&a]);
        let p = policy(&[&a]);
        let other = crate::bundle::digest(b"bundlf");
        let err = verify(&signed, 6, &other, &p, NOW).expect_err("digest");
        assert_eq!(
            err.to_string(),
            format!(
                "hello 1.2.3: the signature covers {} (6 bytes) but the bundle is {other} (6 bytes)",
                doc().digest
            )
        );
        let err = verify(&signed, 7, &doc().digest, &p, NOW).expect_err("size");
        assert!(matches!(
            err,
            VerifyError::BundleMismatch { actual_size: 7, .. }
        ));
        assert_eq!(err.label(), "bundle_mismatch");
    }

    #[test]
    fn time_window_is_enforced() {
        let a = key(1);
        let p = policy(&[&a]);
        let signed = signed_by(doc(), &[&a]);
        let d = doc();
        let at = |now| verify(&signed, 6, &d.digest, &p, now);
        assert!(at(d.created - MAX_CLOCK_SKEW).is_ok(), "within the skew");
        assert_eq!(
            at(d.created - MAX_CLOCK_SKEW - 1),
            Err(VerifyError::CreatedInFuture {
                release: "hello 1.2.3".to_owned(),
                created: d.created,
                now: d.created - MAX_CLOCK_SKEW - 1
            })
        );
        assert!(at(d.expires - 1).is_ok());
        assert_eq!(
            at(d.expires),
            Err(VerifyError::Expired {
                release: "hello 1.2.3".to_owned(),
                expires: d.expires,
                now: d.expires
            })
        );
        assert!(at(u64::MAX).is_err());
        assert!(at(0).is_err());
    }

    #[test]
    fn policy_construction_is_checked() {
        let (a, b) = (key(1), key(2));
        assert_eq!(
            TrustPolicy::new(vec![a.verifying_key(), a.verifying_key()]).map(|_| ()),
            Err(PolicyError::DuplicateKey(a.id()))
        );
        let p = policy(&[&a, &b]);
        assert_eq!(p.threshold(), 1);
        assert_eq!(p.keys().len(), 2);
        assert_eq!(p.key(&b.id()), Some(&b.verifying_key()));
        assert_eq!(p.key(&key(5).id()), None);
        assert_eq!(
            policy_with(&[&a, &b], &[], 0).map(|_| ()),
            Err(PolicyError::ZeroThreshold)
        );
        assert_eq!(
            policy_with(&[&a, &b], &[], 3).map(|_| ()),
            Err(PolicyError::ThresholdTooHigh {
                threshold: 3,
                keys: 2
            })
        );
        assert_eq!(policy_with(&[&a, &b], &[], 2).expect("2").threshold(), 2);
        assert!(policy_with(&[], &[], 1).is_ok(), "no keys, threshold 1");
        assert!(policy_with(&[], &[], 2).is_err());
        let tenant_err = |r: Result<TrustPolicy, PolicyError>| match r {
            Err(PolicyError::Tenant { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        assert!(tenant_err(policy_with(&[&a], &[("Acme", &[&a])], 1)).contains("valid name"));
        assert!(tenant_err(policy_with(&[&a], &[("acme", &[])], 1)).contains("no key ids"));
        assert!(
            tenant_err(policy_with(&[&a], &[("acme", &[&b])], 1)).contains("is not a trusted key")
        );
        assert!(tenant_err(policy_with(&[&a], &[("acme", &[&a, &a])], 1)).contains("listed twice"));
        let twice: &[(&str, &[&SigningKey])] = &[("acme", &[&a]), ("acme", &[&b])];
        assert!(tenant_err(policy_with(&[&a, &b], twice, 1)).contains("listed twice"));
    }

    #[test]
    fn rollback_rules() {
        let d = doc(); // 1.2.3
        let same = d.digest;
        let other = crate::bundle::digest(b"other");
        assert_eq!(check_not_older(&d, "1.2.3", &same), Ok(()));
        assert_eq!(check_not_older(&d, "1.2.2", &other), Ok(()));
        assert_eq!(check_not_older(&d, "0.99.99", &other), Ok(()));
        assert_eq!(
            check_not_older(&d, "1.10.0", &other),
            Err(VerifyError::Rollback {
                app: "hello".to_owned(),
                new: "1.2.3".to_owned(),
                installed: "1.10.0".to_owned()
            })
        );
        let err = check_not_older(&d, "1.2.3", &other).expect_err("same version");
        assert_eq!(
            err,
            VerifyError::SameVersionDifferentDigest {
                app: "hello".to_owned(),
                version: "1.2.3".to_owned(),
                new: same,
                installed: other
            }
        );
        assert_eq!(err.label(), "rollback");
        assert!(matches!(
            check_not_older(&d, "1.2", &same),
            Err(VerifyError::BadInstalledVersion { .. })
        ));
        let mut bad = doc();
        bad.version = "x".to_owned();
        assert!(matches!(
            check_not_older(&bad, "1.2.3", &same),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn tenant_may_not_change() {
        let mut d = doc();
        assert_eq!(check_same_tenant(&d, None), Ok(()));
        d.tenant = Some("acme".to_owned());
        assert_eq!(check_same_tenant(&d, Some("acme")), Ok(()));
        let err = check_same_tenant(&d, None).expect_err("changed");
        assert_eq!(
            err.to_string(),
            "hello: the installed release belongs to no tenant but hello 1.2.3 belongs to tenant \"acme\""
        );
        assert!(check_same_tenant(&d, Some("globex")).is_err());
    }
}
