//! The signed desired state: what the control plane says one node should run.
//!
//! Owns: the [`DesiredState`] document (node id, monotonic sequence, issue and expiry times, and
//! per app the bundle digest, size, detached release signature, host names and the mirrors the
//! bytes may come from), the kinds of bundle [`Source`] a node knows, its signed JSON
//! envelope ([`seal`]), and the node's checks ([`open`], [`check_fresh`]): signed by a pinned
//! control-plane key, addressed to this node, not older than what the node applied (replay),
//! not expired (freeze).
//! Must not: do I/O, read the clock (`now` is passed in), or decide whether a bundle may run —
//! that is still the release signature's job ([`super::sign::verify`]) under the node's trust
//! policy. A desired state only says *which* verified releases go where.
//! See `docs/rollout.md` ("Desired state").
#![forbid(unsafe_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::Digest;
use super::manifest::is_valid_name;
use super::sign::{KeyId, MAX_CLOCK_SKEW, Signature, SigningKey, VerifyingKey};

/// Signed bytes are this header followed by the payload: the signature's domain separator.
pub const DESIRED_HEADER: &[u8] = b"outpost-desired-state-v1\n";
/// Largest envelope a node accepts (a few hundred apps with their signature files).
pub const MAX_DESIRED_LEN: usize = 1 << 20;
/// Most apps in one desired state.
pub const MAX_APPS: usize = 256;
/// Most host patterns per app.
pub const MAX_HOSTS: usize = 64;
/// Most mirror sources per app.
pub const MAX_SOURCES: usize = 16;
/// Longest mirror source, in bytes.
pub const MAX_SOURCE_LEN: usize = 2048;

/// What one node should run. Apps are unique by name and listed in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// The node's id (its key id); a document for another node is refused.
    pub node: String,
    /// Grows with every change the control plane makes for this node; a node never applies a
    /// sequence lower than the one it applied last.
    pub sequence: u64,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds; an expired document is not applied (the node keeps what it runs).
    pub expires: u64,
    pub apps: Vec<DesiredApp>,
}

/// One app on the node: which release, and which host names route to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredApp {
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub version: String,
    pub digest: Digest,
    pub size: u64,
    /// The bundle's detached release signature file, base64: the node verifies it against its
    /// own trust policy, exactly as for a bundle installed by hand.
    pub signature: String,
    /// Host patterns (`example.com`, `*.example.com`, `*`); empty means every host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Mirrors of the bundle file, tried in order before the control plane's own
    /// `GET /v1/bundles/<digest>` (see [`Source`]). Trusted for nothing: whatever serves the
    /// bytes, the node checks their size, digest and release signature. Left out of the JSON
    /// when empty, so a node of the release before mirrors (whose `deny_unknown_fields` refuses
    /// the field) still opens every document that names none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// Where a node may fetch a release's bundle bytes from. The one place a kind of source is
/// named: a new kind (an OCI reference) is a variant here, a prefix in [`Source::parse`], and a
/// fetch in the node agent (`sync::agent`, `Agent::fetch_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A plain `https://` (or `http://`) URL of the bundle file on a static host or CDN.
    Http(&'a str),
    /// `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`: the bundle as `outpost bundle push` puts it
    /// in an OCI registry (shape-checked here; the registry client parses it).
    Oci(&'a str),
    /// The control plane's own `GET /v1/bundles/<digest>`; never listed, always tried last.
    ControlPlane,
}

/// The kind of a [`Source`], as a metric label and in the node's health report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Mirror,
    Registry,
    ControlPlane,
}

impl SourceKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Mirror => "mirror",
            Self::Registry => "registry",
            Self::ControlPlane => "control_plane",
        }
    }
}

/// Why a listed source cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A scheme this node does not know (a newer control plane may list kinds an older node
    /// skips: the other sources are still tried).
    #[error(
        "unsupported source {0:?} (this node fetches http:// and https:// URLs and oci:// \
         references)"
    )]
    Unsupported(String),
    #[error("invalid source URL {url:?}: {problem}")]
    Invalid { url: String, problem: &'static str },
}

impl<'a> Source<'a> {
    /// Checks one listed source. Pure and strict about what it accepts: `http(s)://host[:port]`
    /// then an optional path, no user info (credentials in the desired state would reach every
    /// node), no whitespace or control characters.
    pub fn parse(s: &'a str) -> Result<Self, SourceError> {
        let invalid = |problem| SourceError::Invalid {
            url: s.to_owned(),
            problem,
        };
        let scheme = |p: &str| s.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        let oci = scheme("oci://");
        let rest = if scheme("https://") {
            s.get(8..).unwrap_or_default()
        } else if scheme("http://") {
            s.get(7..).unwrap_or_default()
        } else if oci {
            s.get(6..).unwrap_or_default()
        } else {
            let shown: String = s.chars().take(64).collect();
            return Err(SourceError::Unsupported(shown));
        };
        if s.len() > MAX_SOURCE_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("whitespace or control characters"));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.starts_with(':') {
            return Err(invalid("no host"));
        }
        if authority.contains('@') {
            return Err(invalid(
                "user info in the URL (it would be sent to every node)",
            ));
        }
        if oci {
            let repo = rest.split_once('/').map(|(_, r)| r).unwrap_or_default();
            if repo.is_empty() {
                return Err(invalid("no repository (expected oci://HOST/REPO:TAG)"));
            }
            return Ok(Self::Oci(s));
        }
        Ok(Self::Http(s))
    }

    pub fn kind(self) -> SourceKind {
        match self {
            Self::Http(_) => SourceKind::Mirror,
            Self::Oci(_) => SourceKind::Registry,
            Self::ControlPlane => SourceKind::ControlPlane,
        }
    }
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(url) | Self::Oci(url) => f.write_str(url),
            Self::ControlPlane => f.write_str("control plane"),
        }
    }
}

impl DesiredApp {
    /// Where to fetch this release from, in order: the listed sources as they parse (an
    /// unusable one as its error, so the caller reports it and goes on), then the control
    /// plane.
    pub fn fetch_order(&self) -> Vec<Result<Source<'_>, SourceError>> {
        self.sources
            .iter()
            .map(|s| Source::parse(s))
            .chain(std::iter::once(Ok(Source::ControlPlane)))
            .collect()
    }
}

/// The signed envelope, as sent over the wire and kept on the node's disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    /// base64 of the payload JSON.
    payload: String,
    /// Key id of the signer.
    key: String,
    /// base64 Ed25519 signature over [`DESIRED_HEADER`] + payload bytes.
    signature: String,
}

/// Why a desired state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error("desired state is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed desired state: {0}")]
    Malformed(String),
    #[error(
        "desired state is signed by key {0}, which is not the pinned control-plane key \
         ([control_plane] key)"
    )]
    UnknownKey(KeyId),
    #[error("desired state signature does not verify under control-plane key {0}")]
    BadSignature(KeyId),
    #[error("desired state is for node {got}, but this node is {expected}")]
    WrongNode { expected: String, got: String },
    #[error(
        "desired state sequence {sequence} is older than the applied sequence {applied} \
         (replayed or stale document)"
    )]
    Replay { sequence: u64, applied: u64 },
    #[error("desired state sequence {sequence} repeats the applied one with different contents")]
    Conflict { sequence: u64 },
    #[error("desired state expired at {expires} (now {now}); keeping the current state")]
    Expired { expires: u64, now: u64 },
    #[error("desired state is issued at {issued}, in the future (now {now})")]
    FromFuture { issued: u64, now: u64 },
    #[error("invalid desired state: {0}")]
    Invalid(String),
}

impl DesiredState {
    /// Structural checks shared by the signer and the node: names, uniqueness, order, sizes.
    pub fn validate(&self) -> Result<(), DesiredError> {
        let bad = |m: String| Err(DesiredError::Invalid(m));
        if self.node.parse::<KeyId>().is_err() {
            return bad(format!("node {:?} is not a key id", self.node));
        }
        if self.expires <= self.issued {
            return bad(format!(
                "expires {} is not after issued {}",
                self.expires, self.issued
            ));
        }
        if self.apps.len() > MAX_APPS {
            return bad(format!("{} apps; at most {MAX_APPS}", self.apps.len()));
        }
        for w in self.apps.windows(2) {
            if w[0].app >= w[1].app {
                return bad(format!(
                    "apps must be unique and in name order ({:?} then {:?})",
                    w[0].app, w[1].app
                ));
            }
        }
        for a in &self.apps {
            if !is_valid_name(&a.app) {
                return bad(format!("app name {:?} is not a valid name", a.app));
            }
            if let Some(t) = &a.tenant
                && !is_valid_name(t)
            {
                return bad(format!("app {}: tenant {t:?} is not a valid name", a.app));
            }
            if a.hosts.len() > MAX_HOSTS {
                return bad(format!("app {}: more than {MAX_HOSTS} hosts", a.app));
            }
            if a.hosts.iter().any(|h| h.is_empty() || h.len() > 253) {
                return bad(format!("app {}: empty or overlong host pattern", a.app));
            }
            if a.version.is_empty() || a.version.len() > 64 {
                return bad(format!("app {}: bad version {:?}", a.app, a.version));
            }
            // Only the shape: a source of a kind this node does not know is skipped when
            // fetching, not a reason to refuse the whole document.
            if a.sources.len() > MAX_SOURCES {
                return bad(format!("app {}: more than {MAX_SOURCES} sources", a.app));
            }
            if a.sources.iter().any(|s| {
                s.is_empty() || s.len() > MAX_SOURCE_LEN || s.chars().any(char::is_control)
            }) {
                return bad(format!(
                    "app {}: empty, overlong or unprintable source",
                    a.app
                ));
            }
        }
        Ok(())
    }

    /// The release signature file of `app`, decoded.
    pub fn signature_file(app: &DesiredApp) -> Result<Vec<u8>, DesiredError> {
        BASE64.decode(&app.signature).map_err(|_| {
            DesiredError::Malformed(format!("app {}: signature is not base64", app.app))
        })
    }
}

/// Signs `state` with the control plane's key; returns the envelope bytes (JSON).
pub fn seal(state: &DesiredState, key: &SigningKey) -> Result<Vec<u8>, DesiredError> {
    state.validate()?;
    let payload = serde_json::to_vec(state).map_err(|e| DesiredError::Malformed(e.to_string()))?;
    Ok(seal_payload(&payload, key))
}

/// The envelope around `payload` exactly as given, signed with `key`: [`seal`] without the
/// checks, for what must reach [`open`]'s checks behind a good signature (a buggy or
/// compromised control plane; the fuzz target `desired_payload`).
pub fn seal_payload(payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let mut signed = DESIRED_HEADER.to_vec();
    signed.extend_from_slice(payload);
    let env = Envelope {
        payload: BASE64.encode(payload),
        key: key.id().to_string(),
        signature: BASE64.encode(key.sign(&signed).to_bytes()),
    };
    // Three strings: serialising cannot fail.
    serde_json::to_vec(&env).unwrap_or_default()
}

/// Checks the envelope's size, signer and signature against the `trusted` control-plane keys and
/// returns the validated document. Freshness is [`check_fresh`]'s job (a node restarting offline
/// re-opens its last applied document without it).
pub fn open(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<DesiredState, DesiredError> {
    if bytes.len() > MAX_DESIRED_LEN {
        return Err(DesiredError::TooLarge {
            size: bytes.len(),
            limit: MAX_DESIRED_LEN,
        });
    }
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| DesiredError::Malformed(e.to_string()))?;
    let id: KeyId = env
        .key
        .parse()
        .map_err(|_| DesiredError::Malformed(format!("key id {:?}", env.key)))?;
    let key = trusted
        .iter()
        .find(|k| k.id() == id)
        .ok_or(DesiredError::UnknownKey(id))?;
    let payload = BASE64
        .decode(&env.payload)
        .map_err(|_| DesiredError::Malformed("payload is not base64".into()))?;
    let sig_bytes: [u8; 64] = BASE64
        .decode(&env.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DesiredError::Malformed("signature is not 64 bytes of base64".into()))?;
    let mut signed = DESIRED_HEADER.to_vec();
    signed.extend_from_slice(&payload);
    if !key.verifies(&signed, &Signature::from_bytes(&sig_bytes)) {
        return Err(DesiredError::BadSignature(id));
    }
    let state: DesiredState =
        serde_json::from_slice(&payload).map_err(|e| DesiredError::Malformed(e.to_string()))?;
    state.validate()?;
    Ok(state)
}

/// The node's freshness checks on an opened document: addressed to `node`, not expired, not
/// issued in the future, and not older than `applied` (the last applied document, if any). A
/// document with the applied sequence must be identical to it apart from its times (the control
/// plane re-signs to extend expiry). Returns whether it changes anything.
pub fn check_fresh(
    state: &DesiredState,
    node: &str,
    applied: Option<&DesiredState>,
    now: u64,
) -> Result<bool, DesiredError> {
    if state.node != node {
        return Err(DesiredError::WrongNode {
            expected: node.to_owned(),
            got: state.node.clone(),
        });
    }
    if state.issued > now.saturating_add(MAX_CLOCK_SKEW) {
        return Err(DesiredError::FromFuture {
            issued: state.issued,
            now,
        });
    }
    if state.expires <= now {
        return Err(DesiredError::Expired {
            expires: state.expires,
            now,
        });
    }
    let Some(applied) = applied else {
        return Ok(true);
    };
    if state.sequence < applied.sequence {
        return Err(DesiredError::Replay {
            sequence: state.sequence,
            applied: applied.sequence,
        });
    }
    if state.sequence == applied.sequence {
        if state.apps != applied.apps {
            return Err(DesiredError::Conflict {
                sequence: state.sequence,
            });
        }
        return Ok(false);
    }
    Ok(state.apps != applied.apps)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_seed(&[seed; 32])
    }

    fn state(node: &SigningKey, seq: u64) -> DesiredState {
        DesiredState {
            node: node.id().to_string(),
            sequence: seq,
            issued: 1000,
            expires: 2000,
            apps: vec![DesiredApp {
                app: "hello".into(),
                tenant: Some("acme".into()),
                version: "1.0.0".into(),
                digest: super::super::digest(b"bundle"),
                size: 6,
                signature: BASE64.encode(b"sig"),
                hosts: vec!["*.example.com".into()],
                sources: Vec::new(),
            }],
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let cp = key(1);
        let node = key(2);
        let s = state(&node, 5);
        let bytes = seal(&s, &cp).unwrap();
        let opened = open(&bytes, &[cp.verifying_key()]).unwrap();
        assert_eq!(opened, s);
        assert!(check_fresh(&opened, &node.id().to_string(), None, 1500).unwrap());
    }

    #[test]
    fn foreign_key_and_tampering_are_refused() {
        let cp = key(1);
        let other = key(3);
        let node = key(2);
        let bytes = seal(&state(&node, 5), &other).unwrap();
        assert!(matches!(
            open(&bytes, &[cp.verifying_key()]),
            Err(DesiredError::UnknownKey(_))
        ));
        // Same key id claimed, payload swapped: the signature no longer matches.
        let good = seal(&state(&node, 5), &cp).unwrap();
        let mut env: Envelope = serde_json::from_slice(&good).unwrap();
        let mut s = state(&node, 6);
        s.apps.clear();
        env.payload = BASE64.encode(serde_json::to_vec(&s).unwrap());
        let forged = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            open(&forged, &[cp.verifying_key()]),
            Err(DesiredError::BadSignature(_))
        ));
        assert!(matches!(
            open(b"{", &[cp.verifying_key()]),
            Err(DesiredError::Malformed(_))
        ));
        assert!(matches!(
            open(&vec![b' '; MAX_DESIRED_LEN + 1], &[cp.verifying_key()]),
            Err(DesiredError::TooLarge { .. })
        ));
    }

    #[test]
    fn freshness_rules() {
        let node = key(2);
        let id = node.id().to_string();
        let applied = state(&node, 5);
        let older = state(&node, 4);
        assert!(matches!(
            check_fresh(&older, &id, Some(&applied), 1500),
            Err(DesiredError::Replay {
                sequence: 4,
                applied: 5
            })
        ));
        // Same sequence, same apps, later expiry: accepted, nothing to do.
        let mut refreshed = state(&node, 5);
        refreshed.expires = 3000;
        assert!(!check_fresh(&refreshed, &id, Some(&applied), 1500).unwrap());
        let mut changed = state(&node, 5);
        changed.apps.clear();
        assert!(matches!(
            check_fresh(&changed, &id, Some(&applied), 1500),
            Err(DesiredError::Conflict { sequence: 5 })
        ));
        assert!(check_fresh(&changed_seq(&node, 6), &id, Some(&applied), 1500).unwrap());
        assert!(matches!(
            check_fresh(&applied, &id, None, 2000),
            Err(DesiredError::Expired { .. })
        ));
        assert!(matches!(
            check_fresh(&applied, &key(9).id().to_string(), None, 1500),
            Err(DesiredError::WrongNode { .. })
        ));
        let mut future = state(&node, 7);
        future.issued = 1500 + MAX_CLOCK_SKEW + 1;
        future.expires = future.issued + 10;
        assert!(matches!(
            check_fresh(&future, &id, None, 1500),
            Err(DesiredError::FromFuture { .. })
        ));
    }

    #[test]
    fn a_good_signature_does_not_make_a_bad_document_good() {
        let cp = key(1);
        let node = key(2);
        let open_payload =
            |payload: &[u8]| open(&seal_payload(payload, &cp), &[cp.verifying_key()]);
        // What `seal` would make: opens.
        let good = serde_json::to_vec(&state(&node, 5)).unwrap();
        assert_eq!(open_payload(&good).unwrap(), state(&node, 5));
        // Signed, but not a document, or one `seal` would have refused: still refused.
        assert!(matches!(
            open_payload(b"not json"),
            Err(DesiredError::Malformed(_))
        ));
        let mut twice = state(&node, 5);
        twice.apps.push(twice.apps[0].clone());
        assert!(matches!(
            open_payload(&serde_json::to_vec(&twice).unwrap()),
            Err(DesiredError::Invalid(m)) if m.contains("unique and in name order")
        ));
        let extra = String::from_utf8(good)
            .unwrap()
            .replacen('{', "{\"admin\":true,", 1);
        assert!(matches!(
            open_payload(extra.as_bytes()),
            Err(DesiredError::Malformed(m)) if m.contains("unknown field")
        ));
    }

    fn changed_seq(node: &SigningKey, seq: u64) -> DesiredState {
        let mut s = state(node, seq);
        s.apps[0].version = "1.0.1".into();
        s
    }

    #[test]
    fn validation() {
        let node = key(2);
        let mut s = state(&node, 1);
        s.apps.push(s.apps[0].clone());
        assert!(matches!(s.validate(), Err(DesiredError::Invalid(_))));
        let mut s = state(&node, 1);
        s.apps[0].app = "../x".into();
        assert!(s.validate().is_err());
        let mut s = state(&node, 1);
        s.expires = s.issued;
        assert!(s.validate().is_err());
        let mut s = state(&node, 1);
        s.node = "nope".into();
        assert!(s.validate().is_err());
    }

    /// `DesiredApp` as the release before mirrors had it, `deny_unknown_fields` and all: what an
    /// old node parses the control plane's documents into.
    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct OldApp {
        app: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        version: String,
        digest: Digest,
        size: u64,
        signature: String,
        #[serde(default)]
        hosts: Vec<String>,
    }

    #[test]
    fn documents_without_sources_read_the_same_in_both_releases() {
        let node = key(2);
        let new = state(&node, 1).apps[0].clone();
        // New → old: no `sources` key at all, so an old node opens the document.
        let json = serde_json::to_string(&new).unwrap();
        assert!(!json.contains("sources"), "{json}");
        let old: OldApp = serde_json::from_str(&json).unwrap();
        assert_eq!(old.digest, new.digest);
        // Old → new: the field defaults to no mirrors (old sled records, old control planes).
        let old_json = serde_json::to_string(&old).unwrap();
        let back: DesiredApp = serde_json::from_str(&old_json).unwrap();
        assert_eq!(back, new);
        assert!(back.sources.is_empty());
    }

    #[test]
    fn documents_with_sources_round_trip_and_an_old_node_refuses_them_whole() {
        let cp = key(1);
        let node = key(2);
        let mut s = state(&node, 3);
        s.apps[0].sources = vec![
            "https://cdn.example.com/b/sha256-ab.bundle".into(),
            "http://10.0.0.5:8080/sha256-ab.bundle".into(),
        ];
        let opened = open(&seal(&s, &cp).unwrap(), &[cp.verifying_key()]).unwrap();
        assert_eq!(opened, s);
        // Changing only the mirrors is a change the node applies (its sequence grows).
        let mut moved = s.clone();
        moved.sequence = 4;
        moved.apps[0].sources.reverse();
        assert!(check_fresh(&moved, &node.id().to_string(), Some(&s), 1500).unwrap());
        // What a node of the release before does: refuses the document (and keeps what it
        // runs), so nodes are upgraded before releases name mirrors.
        let json = serde_json::to_string(&s.apps[0]).unwrap();
        let e = serde_json::from_str::<OldApp>(&json).unwrap_err();
        assert!(e.to_string().contains("unknown field `sources`"), "{e}");
    }

    #[test]
    fn sources_parse_strictly_and_unknown_kinds_are_skipped_not_fatal() {
        assert_eq!(
            Source::parse("https://cdn.example.com/x.bundle"),
            Ok(Source::Http("https://cdn.example.com/x.bundle"))
        );
        assert_eq!(
            Source::parse("HTTP://127.0.0.1:80/x").unwrap().kind(),
            SourceKind::Mirror
        );
        for bad in [
            "https://",
            "https:///x",
            "http://:80/x",
            "https://user:pw@cdn.example.com/x",
            "https://cdn.example.com/a b",
        ] {
            assert!(
                matches!(Source::parse(bad), Err(SourceError::Invalid { .. })),
                "{bad}"
            );
        }
        let long = format!("https://h/{}", "a".repeat(MAX_SOURCE_LEN));
        assert!(matches!(
            Source::parse(&long),
            Err(SourceError::Invalid { .. })
        ));
        assert_eq!(
            Source::parse("oci://ghcr.io/acme/app@sha256:00"),
            Ok(Source::Oci("oci://ghcr.io/acme/app@sha256:00"))
        );
        assert_eq!(
            Source::parse("oci://127.0.0.1:5000/a:1").unwrap().kind(),
            SourceKind::Registry
        );
        assert!(matches!(
            Source::parse("oci://ghcr.io"),
            Err(SourceError::Invalid { .. })
        ));
        for other in ["ipfs://h/x", "ftp://h/x", "ht", "é"] {
            assert!(
                matches!(Source::parse(other), Err(SourceError::Unsupported(_))),
                "{other}"
            );
        }
        // A document may name a kind this node does not know: it opens, and the fetch order
        // reports that source unusable and goes on to the next and the control plane.
        let cp = key(1);
        let node = key(2);
        let mut s = state(&node, 1);
        s.apps[0].sources = vec!["ipfs://bafy/app".into(), "https://m/x".into()];
        let opened = open(&seal(&s, &cp).unwrap(), &[cp.verifying_key()]).unwrap();
        let order = opened.apps[0].fetch_order();
        assert!(matches!(order[0], Err(SourceError::Unsupported(_))));
        assert_eq!(order[1], Ok(Source::Http("https://m/x")));
        assert_eq!(order[2], Ok(Source::ControlPlane));
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn source_lists_are_bounded() {
        let node = key(2);
        let mut s = state(&node, 1);
        s.apps[0].sources = vec!["https://m/x".into(); MAX_SOURCES + 1];
        assert!(matches!(s.validate(), Err(DesiredError::Invalid(m)) if m.contains("sources")));
        for bad in [
            String::new(),
            "https://m/\u{7}".into(),
            "x".repeat(MAX_SOURCE_LEN + 1),
        ] {
            let mut s = state(&node, 1);
            s.apps[0].sources = vec![bad];
            assert!(s.validate().is_err());
        }
    }
}
