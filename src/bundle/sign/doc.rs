//! The signed release document: [`ReleaseDoc`] (`outpost-release-v1`, canonical text naming
//! app, version, digest, size, validity window and tenant), [`Version`], and the detached
//! signature file around it ([`SignedDoc`]: the document plus `signature=<key id> <base64>`
//! lines).
//!
//! Owns: the exact encoding (one byte string per document, so signatures are over canonical
//! bytes), strict parsing with size and count caps, signing and appending signatures.
//! Must not: decide whether a signature is trusted or a document is current (`trust`), or read
//! the clock.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signature;

use super::keys::{KeyError, KeyId, SigningKey};
use crate::base::units::quote;
use crate::bundle::Digest;
use crate::bundle::manifest::is_valid_name;

/// First line of a release document; it doubles as the signature's domain separator.
pub const DOC_HEADER: &str = "outpost-release-v1";
/// Default cap on a signature file's size: a document plus 32 signature lines is under 4 KiB.
pub const MAX_SIGNED_DOC_LEN: usize = 64 << 10;
/// Most signature lines in one signature file.
pub const MAX_SIGNATURES: usize = 32;

const SIGNATURE_FIELD: &str = "signature=";
/// The document's fields after the header line, in their only allowed order.
const DOC_FIELDS: [&str; 7] = [
    "app", "version", "digest", "size", "created", "expires", "tenant",
];

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

pub(super) fn name_problem(name: &str) -> String {
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
            .map_err(|e: crate::bundle::DigestParseError| at(2, format!("digest: {e}")))?,
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
    pub(super) doc: ReleaseDoc,
    pub(super) doc_bytes: Vec<u8>,
    pub(super) signatures: Vec<(KeyId, Signature)>,
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
    /// A caller that reports it as a verification failure wraps it in
    /// `VerifyError::Malformed` (`From`).
    pub fn parse(bytes: &[u8], max_len: usize) -> Result<Self, DocError> {
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

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

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
            Err(DocError::TooLarge {
                len: bytes.len(),
                max: 100
            })
        );
        let mut one_more = bytes.clone();
        let extra = signed_by(doc(), &[&key(200)]).encode();
        one_more.extend_from_slice(&extra[doc().encode().expect("encode").len()..]);
        assert_eq!(
            SignedDoc::parse(&one_more, MAX_SIGNED_DOC_LEN),
            Err(DocError::TooManySignatures { max: 32 })
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
            assert_eq!(super::super::VerifyError::from(err).label(), "malformed");
        }
    }
}
