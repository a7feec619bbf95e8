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

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
pub use ed25519_dalek::Signature;
use ed25519_dalek::Signer as _;
use rand_core::CryptoRngCore;
use sha2::{Digest as _, Sha256};

use super::Digest;
use super::manifest::is_valid_name;
use crate::base::units::quote;

/// First word of a secret key line: `outpost-secret-key-v1 <key id> <base64 seed>`.
pub const SECRET_KEY_PREFIX: &str = "outpost-secret-key-v1";
/// First word of a public key line: `outpost-public-key-v1 <key id> <base64 key>`.
pub const PUBLIC_KEY_PREFIX: &str = "outpost-public-key-v1";
/// First line of a release document; it doubles as the signature's domain separator.
pub const DOC_HEADER: &str = "outpost-release-v1";
/// Default cap on a signature file's size: a document plus 32 signature lines is under 4 KiB.
pub const MAX_SIGNED_DOC_LEN: usize = 64 << 10;
/// Most signature lines in one signature file.
pub const MAX_SIGNATURES: usize = 32;
/// How far in the future a document's `created` may be before it is refused, in seconds: the
/// signer's clock and this node's may disagree by this much.
pub const MAX_CLOCK_SKEW: u64 = 300;

const SIGNATURE_FIELD: &str = "signature=";
/// The document's fields after the header line, in their only allowed order.
const DOC_FIELDS: [&str; 7] = [
    "app", "version", "digest", "size", "created", "expires", "tenant",
];

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
    key: ed25519_dalek::VerifyingKey,
    id: KeyId,
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

// === release documents ===

/// A release version, `MAJOR.MINOR.PATCH`: decimal numbers without leading zeros or signs,
/// ordered numerically (1.10.0 is newer than 1.9.0). Pre-release and build suffixes are not
/// accepted in release documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

/// Why a version string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid version {input:?}; expected MAJOR.MINOR.PATCH with decimal numbers without leading \
     zeros, like \"1.4.0\""
)]
pub struct VersionError {
    pub input: String,
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('.').map(canonical_u64);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) => Ok(Self {
                major,
                minor,
                patch,
            }),
            _ => Err(VersionError { input: quote(s) }),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The statement a signer signs: "the bundle with this digest and size is release `version` of
/// `app` (of `tenant`), valid from `created` until `expires`". Its only byte form is
/// [`ReleaseDoc::encode`]:
///
/// ```text
/// outpost-release-v1
/// app=<app>
/// version=<MAJOR.MINOR.PATCH>
/// digest=sha256:<64 hex>
/// size=<bytes>
/// created=<unix seconds>
/// expires=<unix seconds>
/// tenant=<tenant, or nothing>
/// ```
///
/// Every line ends in `\n`; `app` and `tenant` are `[a-z0-9][a-z0-9-]{0,62}`; numbers are
/// decimal without leading zeros. No value can hold `\n` or `=`, so the layout is unambiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDoc {
    pub app: String,
    /// `MAJOR.MINOR.PATCH`; see [`Version`].
    pub version: String,
    pub digest: Digest,
    /// Bundle length in bytes.
    pub size: u64,
    /// Unix seconds when it was signed.
    pub created: u64,
    /// Unix seconds from which it is no longer valid; after `created`.
    pub expires: u64,
    pub tenant: Option<String>,
}

/// Why a release document or signature file is malformed, or a document cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("signature file is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("more than {max} signatures")]
    TooManySignatures { max: usize },
    #[error("line {line}: a second signature by key {key}")]
    DuplicateSignature { line: usize, key: KeyId },
}

impl ReleaseDoc {
    /// `app version`, for messages.
    pub fn release_name(&self) -> String {
        format!("{} {}", self.app, self.version)
    }

    /// The version as a number triple.
    pub fn parsed_version(&self) -> Result<Version, VersionError> {
        self.version.parse()
    }

    /// Checks every field against the rules in the type's docs.
    pub fn validate(&self) -> Result<(), DocError> {
        let invalid = |field, problem: String| DocError::Invalid { field, problem };
        if !is_valid_name(&self.app) {
            return Err(invalid("app", name_problem(&self.app)));
        }
        self.parsed_version()
            .map_err(|e| invalid("version", e.to_string()))?;
        if let Some(tenant) = &self.tenant
            && !is_valid_name(tenant)
        {
            return Err(invalid("tenant", name_problem(tenant)));
        }
        if self.expires <= self.created {
            return Err(invalid(
                "expires",
                format!(
                    "{} is not after created ({}); a document must expire after it is created",
                    self.expires, self.created
                ),
            ));
        }
        Ok(())
    }

    /// The canonical bytes, the only form that is signed.
    pub fn encode(&self) -> Result<Vec<u8>, DocError> {
        self.validate()?;
        Ok(format!(
            "{DOC_HEADER}\napp={}\nversion={}\ndigest={}\nsize={}\ncreated={}\nexpires={}\ntenant={}\n",
            self.app,
            self.version,
            self.digest,
            self.size,
            self.created,
            self.expires,
            self.tenant.as_deref().unwrap_or("")
        )
        .into_bytes())
    }

    /// Parses exactly one canonical document; `encode` of the result gives `bytes` back.
    pub fn parse(bytes: &[u8]) -> Result<Self, DocError> {
        let mut lines = Lines::new(bytes);
        let doc = parse_doc(&mut lines)?;
        if lines.pos != bytes.len() {
            return Err(DocError::Line {
                line: lines.number + 1,
                problem: "unexpected text after the document".to_owned(),
            });
        }
        Ok(doc)
    }
}

fn name_problem(name: &str) -> String {
    format!(
        "{:?} is not a valid name; expected lowercase letters, digits and '-', starting with a \
         letter or digit, at most 63 characters",
        quote(name)
    )
}

/// Decimal without sign or leading zeros; `None` for anything else or on overflow.
fn canonical_u64(s: &str) -> Option<u64> {
    let digits_only = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A cursor over `\n`-terminated lines of printable ASCII.
struct Lines<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// 1-based number of the last line returned.
    number: usize,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            number: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }

    fn error(&self, problem: impl Into<String>) -> DocError {
        DocError::Line {
            line: self.number,
            problem: problem.into(),
        }
    }

    /// The next line without its `\n`.
    fn next_line(&mut self) -> Result<&'a str, DocError> {
        self.number += 1;
        let rest = &self.bytes[self.pos..];
        if rest.is_empty() {
            return Err(self.error("missing; the document ends early"));
        }
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.error("does not end with a newline"));
        };
        let line = &rest[..end];
        if let Some(b) = line.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
            return Err(self.error(format!(
                "contains byte 0x{b:02x}; only printable ASCII is allowed"
            )));
        }
        self.pos += end + 1;
        std::str::from_utf8(line).map_err(|_| self.error("is not ASCII"))
    }
}

fn parse_doc(lines: &mut Lines<'_>) -> Result<ReleaseDoc, DocError> {
    let header = lines.next_line()?;
    if header != DOC_HEADER {
        return Err(lines.error(format!("expected {DOC_HEADER:?}, got {:?}", quote(header))));
    }
    let mut values = [""; DOC_FIELDS.len()];
    for (slot, field) in values.iter_mut().zip(DOC_FIELDS) {
        let line = lines.next_line()?;
        let Some(value) = line
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix('='))
        else {
            let got = line.split_once('=').map_or(line, |(name, _)| name);
            return Err(lines.error(format!(
                "expected the field {field:?}, got {:?}; fields must appear once each, in the \
                 order {}",
                quote(got),
                DOC_FIELDS.join(", ")
            )));
        };
        *slot = value;
    }
    let [app, version, digest, size, created, expires, tenant] = values;
    // Errors name the line: the header is line 1, `app` line 2, and so on.
    let at = |index: usize, problem: String| DocError::Line {
        line: index + 2,
        problem,
    };
    let number = |index: usize, value: &str| {
        canonical_u64(value).ok_or_else(|| {
            at(
                index,
                format!(
                    "{}: {:?} is not a decimal number without sign or leading zeros (at most {})",
                    DOC_FIELDS[index],
                    quote(value),
                    u64::MAX
                ),
            )
        })
    };
    let doc = ReleaseDoc {
        app: app.to_owned(),
        version: version.to_owned(),
        digest: digest
            .parse()
            .map_err(|e: super::DigestParseError| at(2, format!("digest: {e}")))?,
        size: number(3, size)?,
        created: number(4, created)?,
        expires: number(5, expires)?,
        tenant: (!tenant.is_empty()).then(|| tenant.to_owned()),
    };
    doc.validate().map_err(|e| {
        let index = match &e {
            DocError::Invalid { field, .. } => {
                DOC_FIELDS.iter().position(|f| f == field).unwrap_or(0)
            }
            _ => 0,
        };
        at(index, e.to_string())
    })?;
    Ok(doc)
}

// === signature files ===

/// A detached signature file (`APP.bundle.sig`): the canonical document followed by one line
/// `signature=<key id> <base64 of the 64-byte signature>` per signer. Each signature covers the
/// document bytes only, so signers can add their lines independently (k-of-n).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDoc {
    doc: ReleaseDoc,
    doc_bytes: Vec<u8>,
    signatures: Vec<(KeyId, Signature)>,
}

impl SignedDoc {
    /// An unsigned file for `doc`; add signatures with [`SignedDoc::add_signature`].
    pub fn new(doc: ReleaseDoc) -> Result<Self, DocError> {
        let doc_bytes = doc.encode()?;
        Ok(Self {
            doc,
            doc_bytes,
            signatures: Vec::new(),
        })
    }

    /// Parses an untrusted signature file. The size cap is checked first; then the document
    /// (strictly canonical), then the signature lines: at most [`MAX_SIGNATURES`], one per key.
    /// Zero signatures parse (so a signer can add the first); [`verify`] refuses them.
    pub fn parse(bytes: &[u8], max_len: usize) -> Result<Self, VerifyError> {
        Ok(Self::parse_doc_error(bytes, max_len)?)
    }

    fn parse_doc_error(bytes: &[u8], max_len: usize) -> Result<Self, DocError> {
        if bytes.len() > max_len {
            return Err(DocError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        let mut lines = Lines::new(bytes);
        let doc = parse_doc(&mut lines)?;
        let doc_bytes = bytes[..lines.pos].to_vec();
        let mut signatures: Vec<(KeyId, Signature)> = Vec::new();
        while !lines.at_end() {
            let line = lines.next_line()?;
            if signatures.len() == MAX_SIGNATURES {
                return Err(DocError::TooManySignatures {
                    max: MAX_SIGNATURES,
                });
            }
            let (id, signature) = parse_signature_line(line).map_err(|p| lines.error(p))?;
            if signatures.iter().any(|(k, _)| *k == id) {
                return Err(DocError::DuplicateSignature {
                    line: lines.number,
                    key: id,
                });
            }
            signatures.push((id, signature));
        }
        Ok(Self {
            doc,
            doc_bytes,
            signatures,
        })
    }

    /// The file's bytes: the document, then the signature lines in order.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.doc_bytes.clone();
        for (id, signature) in &self.signatures {
            out.extend_from_slice(
                format!(
                    "{SIGNATURE_FIELD}{id} {}\n",
                    BASE64.encode(signature.to_bytes())
                )
                .as_bytes(),
            );
        }
        out
    }

    /// Signs the document with `key`, replacing that key's earlier signature if there is one
    /// (in place), else appending a line.
    pub fn add_signature(&mut self, key: &SigningKey) -> Result<(), DocError> {
        let signature = key.sign(&self.doc_bytes);
        if let Some(slot) = self.signatures.iter_mut().find(|(id, _)| *id == key.id()) {
            slot.1 = signature;
            return Ok(());
        }
        if self.signatures.len() == MAX_SIGNATURES {
            return Err(DocError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        self.signatures.push((key.id(), signature));
        Ok(())
    }

    pub fn doc(&self) -> &ReleaseDoc {
        &self.doc
    }

    /// The exact bytes every signature covers.
    pub fn doc_bytes(&self) -> &[u8] {
        &self.doc_bytes
    }

    pub fn signatures(&self) -> &[(KeyId, Signature)] {
        &self.signatures
    }
}

/// `signature=<16 hex> <88 base64 chars>`.
fn parse_signature_line(line: &str) -> Result<(KeyId, Signature), String> {
    let expected = "expected \"signature=<key id> <base64 signature>\"";
    let Some(rest) = line.strip_prefix(SIGNATURE_FIELD) else {
        return Err(format!(
            "{expected} after the document, got {:?}",
            quote(line)
        ));
    };
    let Some((id, b64)) = rest.split_once(' ') else {
        return Err(format!("{expected}; the space after the key id is missing"));
    };
    let id: KeyId = id.parse().map_err(|e: KeyError| e.to_string())?;
    let bytes = BASE64
        .decode(b64)
        .map_err(|_| format!("the signature by {id} is not valid base64 (standard, padded)"))?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("the signature by {id} is {} bytes; expected 64", b.len()))?;
    Ok((id, Signature::from_bytes(&bytes)))
}

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
    use super::*;

    const NOW: u64 = 1_750_000_000;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    fn doc() -> ReleaseDoc {
        ReleaseDoc {
            app: "hello".to_owned(),
            version: "1.2.3".to_owned(),
            digest: super::super::digest(b"bundle"),
            size: 6,
            created: NOW - 60,
            expires: NOW + 86_400,
            tenant: None,
        }
    }

    fn signed_by(doc: ReleaseDoc, keys: &[&SigningKey]) -> SignedDoc {
        let mut s = SignedDoc::new(doc).expect("valid doc");
        for k in keys {
            s.add_signature(k).expect("sign");
        }
        s
    }

    fn policy(keys: &[&SigningKey]) -> TrustPolicy {
        TrustPolicy::new(keys.iter().map(|k| k.verifying_key()).collect()).expect("policy")
    }

    fn policy_with(
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

    fn check(signed: &SignedDoc, policy: &TrustPolicy) -> Result<Verified, VerifyError> {
        verify(signed, 6, &super::super::digest(b"bundle"), policy, NOW)
    }

    /// Re-parses the encoded file, as a node would see it.
    fn reparse(signed: &SignedDoc) -> SignedDoc {
        SignedDoc::parse(&signed.encode(), MAX_SIGNED_DOC_LEN).expect("reparse")
    }

    // --- keys ---

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

    // --- documents ---

    #[test]
    fn doc_encoding_is_exact_and_round_trips() {
        let mut d = doc();
        d.tenant = Some("acme".to_owned());
        let bytes = d.encode().expect("encode");
        let expected = format!(
            "outpost-release-v1\napp=hello\nversion=1.2.3\ndigest={}\nsize=6\ncreated={}\n\
             expires={}\ntenant=acme\n",
            d.digest,
            NOW - 60,
            NOW + 86_400
        );
        assert_eq!(String::from_utf8(bytes.clone()).expect("ascii"), expected);
        assert_eq!(ReleaseDoc::parse(&bytes), Ok(d.clone()));
        let untenanted = doc().encode().expect("encode");
        assert!(untenanted.ends_with(b"\ntenant=\n"));
        let parsed = ReleaseDoc::parse(&untenanted).expect("parse");
        assert_eq!(parsed.tenant, None);
        assert_eq!(parsed.encode().expect("encode"), untenanted);
        assert_eq!(d.release_name(), "hello 1.2.3");
    }

    /// The canonical text of `doc()` with `from` replaced by `to`.
    fn edited(from: &str, to: &str) -> Vec<u8> {
        let text = String::from_utf8(doc().encode().expect("encode")).expect("ascii");
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1).into_bytes()
    }

    #[test]
    fn doc_parsing_is_strict() {
        let created = format!("created={}\n", NOW - 60);
        let expires = format!("expires={}\n", NOW + 86_400);
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (
                edited("outpost-release-v1", "outpost-release-v2"),
                1,
                "expected \"outpost-release-v1\"",
            ),
            (
                edited("app=hello\n", ""),
                2,
                "expected the field \"app\", got \"version\"",
            ),
            (
                edited("app=hello\n", "app=hello\napp=hello\n"),
                3,
                "expected the field \"version\", got \"app\"",
            ),
            (
                edited("app=hello\nversion=1.2.3\n", "version=1.2.3\napp=hello\n"),
                2,
                "expected the field \"app\"",
            ),
            (
                edited("tenant=\n", "tenant=\nextra=1\n"),
                9,
                "unexpected text",
            ),
            (edited("tenant=\n", "tenant=\n\n"), 9, "unexpected text"),
            (
                edited("tenant=\n", "tenant="),
                8,
                "does not end with a newline",
            ),
            (edited("tenant=\n", ""), 8, "missing"),
            (edited("\n", "\r\n"), 1, "0x0d"),
            (edited("app=hello", "app=héllo"), 2, "0xc3"),
            (
                edited("app=hello", "app = hello"),
                2,
                "expected the field \"app\"",
            ),
            (
                edited("app=hello", "APP=hello"),
                2,
                "expected the field \"app\"",
            ),
            (edited("app=hello", "app=Hello"), 2, "not a valid name"),
            (edited("app=hello", "app="), 2, "not a valid name"),
            (edited("app=hello", "app=hello=x"), 2, "not a valid name"),
            (edited("version=1.2.3", "version=1.2"), 3, "invalid version"),
            (
                edited("version=1.2.3", "version=01.2.3"),
                3,
                "invalid version",
            ),
            (
                edited("version=1.2.3", "version=1.2.3-beta"),
                3,
                "invalid version",
            ),
            (
                edited("version=1.2.3", "version=1.2.+3"),
                3,
                "invalid version",
            ),
            (
                edited("version=1.2.3", "version=v1.2.3"),
                3,
                "invalid version",
            ),
            (
                edited("digest=sha256:", "digest=SHA256:"),
                4,
                "digest: invalid digest",
            ),
            (
                edited("size=6", "size=06"),
                5,
                "size: \"06\" is not a decimal number",
            ),
            (edited("size=6", "size=+6"), 5, "not a decimal number"),
            (edited("size=6", "size="), 5, "not a decimal number"),
            (edited("size=6", "size=-6"), 5, "not a decimal number"),
            (
                edited("size=6", "size=18446744073709551616"),
                5,
                "not a decimal number",
            ),
            (edited(&created, "created= 1\n"), 6, "not a decimal number"),
            (edited(&expires, "expires=1\n"), 7, "is not after created"),
            (edited("tenant=", "tenant=Acme"), 8, "not a valid name"),
            (edited("tenant=", "tenant= acme"), 8, "not a valid name"),
        ];
        for (bytes, line, problem) in cases {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            match ReleaseDoc::parse(&bytes) {
                Err(DocError::Line {
                    line: l,
                    problem: p,
                }) => {
                    assert_eq!(l, line, "{text}: {p}");
                    assert!(p.contains(problem), "{text}: {p}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // The largest number is fine.
        let max = edited(&expires, &format!("expires={}\n", u64::MAX));
        assert_eq!(ReleaseDoc::parse(&max).expect("max").expires, u64::MAX);
    }

    #[test]
    fn invalid_docs_cannot_be_encoded_or_signed() {
        let mut d = doc();
        d.app = "a\nversion=9.9.9".to_owned();
        assert!(matches!(
            d.encode(),
            Err(DocError::Invalid { field: "app", .. })
        ));
        assert!(SignedDoc::new(d).is_err());
        let mut d = doc();
        d.version = "1.0".to_owned();
        assert!(matches!(
            d.validate(),
            Err(DocError::Invalid {
                field: "version",
                ..
            })
        ));
        let mut d = doc();
        d.tenant = Some(String::new());
        assert!(matches!(
            d.validate(),
            Err(DocError::Invalid {
                field: "tenant",
                ..
            })
        ));
        let mut d = doc();
        d.expires = d.created;
        assert!(matches!(
            d.validate(),
            Err(DocError::Invalid {
                field: "expires",
                ..
            })
        ));
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s: &str| s.parse::<Version>().expect(s);
        assert!(v("1.10.0") > v("1.9.0"));
        assert!(v("2.0.0") > v("1.99.99"));
        assert!(v("0.0.1") > v("0.0.0"));
        assert_eq!(v("1.2.3").to_string(), "1.2.3");
        assert_eq!(v("18446744073709551615.0.0").major, u64::MAX);
        for bad in [
            "", "1", "1.2", "1.2.3.4", "1..3", "1.2.x", "-1.2.3", "1.2.3 ", "00.1.1",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    // --- signature files ---

    #[test]
    fn signature_files_round_trip_byte_for_byte() {
        let (a, b) = (key(1), key(2));
        let signed = signed_by(doc(), &[&a, &b]);
        let bytes = signed.encode();
        let text = String::from_utf8(bytes.clone()).expect("ascii");
        let doc_text = String::from_utf8(doc().encode().expect("encode")).expect("ascii");
        assert!(text.starts_with(&doc_text));
        let sig_lines: Vec<&str> = text[doc_text.len()..].lines().collect();
        assert_eq!(sig_lines.len(), 2);
        assert!(sig_lines[0].starts_with(&format!("signature={} ", a.id())));
        assert!(sig_lines[1].starts_with(&format!("signature={} ", b.id())));
        let parsed = SignedDoc::parse(&bytes, MAX_SIGNED_DOC_LEN).expect("parse");
        assert_eq!(parsed, signed);
        assert_eq!(parsed.encode(), bytes);
        assert_eq!(parsed.doc(), &doc());
        assert_eq!(parsed.doc_bytes(), doc_text.as_bytes());
        assert_eq!(parsed.signatures().len(), 2);
    }

    #[test]
    fn signers_append_independently_and_re_signing_replaces() {
        let (a, b) = (key(1), key(2));
        let mut first = reparse(&signed_by(doc(), &[&a]));
        first.add_signature(&b).expect("second signer");
        let mut both = reparse(&first);
        assert_eq!(both.signatures().len(), 2);
        let before = both.encode();
        both.add_signature(&a).expect("re-sign");
        assert_eq!(both.signatures().len(), 2);
        assert_eq!(
            both.encode(),
            before,
            "Ed25519 is deterministic; a replaced line is identical"
        );
        // An unsigned file parses; it is verify that refuses it.
        let unsigned = SignedDoc::new(doc()).expect("new");
        assert_eq!(reparse(&unsigned).signatures().len(), 0);
    }

    #[test]
    fn signature_file_limits() {
        let mut signed = SignedDoc::new(doc()).expect("new");
        for n in 0..MAX_SIGNATURES as u8 {
            signed.add_signature(&key(n)).expect("sign");
        }
        assert_eq!(
            signed.add_signature(&key(200)),
            Err(DocError::TooManySignatures { max: 32 })
        );
        let bytes = signed.encode();
        assert!(bytes.len() < 4096, "{}", bytes.len());
        assert!(SignedDoc::parse(&bytes, MAX_SIGNED_DOC_LEN).is_ok());
        assert_eq!(
            SignedDoc::parse(&bytes, 100),
            Err(VerifyError::Malformed(DocError::TooLarge {
                len: bytes.len(),
                max: 100
            }))
        );
        let mut one_more = bytes.clone();
        let extra = signed_by(doc(), &[&key(200)]).encode();
        one_more.extend_from_slice(&extra[doc().encode().expect("encode").len()..]);
        assert_eq!(
            SignedDoc::parse(&one_more, MAX_SIGNED_DOC_LEN),
            Err(VerifyError::Malformed(DocError::TooManySignatures {
                max: 32
            }))
        );
    }

    #[test]
    fn malformed_signature_lines_are_refused() {
        let a = key(1);
        let good = signed_by(doc(), &[&a]).encode();
        let text = String::from_utf8(good).expect("ascii");
        let line = text.lines().last().expect("sig line").to_owned();
        let b64 = line.rsplit(' ').next().expect("b64").to_owned();
        let cases: Vec<(String, &str)> = vec![
            (format!("{text}{line}\n"), "a second signature by key"),
            (
                text.replace(&line, &line.replace("signature=", "signature ")),
                "expected \"signature=",
            ),
            (
                text.replace(&line, &line.replace(' ', "")),
                "space after the key id is missing",
            ),
            (
                text.replace(&line, &format!("{line} x")),
                "not valid base64",
            ),
            (
                text.replace(&line, &line.replace(&b64, &b64[..b64.len() - 4])),
                "is 63 bytes",
            ),
            (text.replace(&b64, &BASE64.encode([0u8; 65])), "is 65 bytes"),
            (
                text.replace(&line, &line.replace(&a.id().to_string(), "0123")),
                "invalid key id",
            ),
            (text.trim_end().to_owned(), "does not end with a newline"),
            (format!("{text}\n"), "expected \"signature="),
            (format!("{text}# comment\n"), "expected \"signature="),
        ];
        for (bytes, problem) in cases {
            let err = SignedDoc::parse(bytes.as_bytes(), MAX_SIGNED_DOC_LEN).expect_err(problem);
            assert!(err.to_string().contains(problem), "{problem}: {err}");
            assert_eq!(err.label(), "malformed");
        }
    }

    // --- verification ---

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
        let other = super::super::digest(b"bundlf");
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

    // --- rollback ---

    #[test]
    fn rollback_rules() {
        let d = doc(); // 1.2.3
        let same = d.digest;
        let other = super::super::digest(b"other");
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
