//! Manifest and descriptor shapes (OCI image-spec v1.1; Docker schema 2 has the same shape),
//! parsed from untrusted bytes without panicking.
//!
//! Owns: [`Descriptor`], [`ImageManifest`], [`ImageIndex`], telling them apart by media type.
//! Must not: fetch anything or decide what an artifact means ([`super::artifact`] does).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::media;
use crate::bundle::Digest;

/// A content descriptor: what a manifest says about a blob or another manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema 2): a config and layers, optionally a `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI) or manifest list (Docker): a list of manifest descriptors. The
/// referrers API answers with one, and the `sha256-<hex>` fallback tag points at one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A parsed manifest of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

/// A manifest as fetched: its bytes (what its digest covers), digest, media type and parse.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub manifest: Manifest,
}

// === impl Descriptor ===

impl Descriptor {
    /// A descriptor of `bytes` with `media_type`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: crate::bundle::digest(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }
}

// === impl ImageManifest ===

impl ImageManifest {
    /// An OCI image manifest of `config` and `layers`.
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// The canonical JSON bytes (what is pushed and digested).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs of strings, numbers and maps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The `artifactType` as OCI 1.1 defines it: the field, else the config's media type.
    pub fn effective_artifact_type(&self) -> &str {
        self.artifact_type
            .as_deref()
            .unwrap_or(&self.config.media_type)
    }
}

// === impl ImageIndex ===

impl ImageIndex {
    /// An empty OCI image index.
    pub fn new() -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_owned()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// The canonical JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Default for ImageIndex {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Manifest ===

impl Manifest {
    /// Parses manifest bytes. The media type comes from the document's own `mediaType`, else
    /// from the response's `Content-Type` (`header`); an index is told from an image manifest by
    /// it, or by its shape when neither says. Returns the media type used.
    pub fn parse(bytes: &[u8], header: Option<&str>) -> Result<(Self, String), String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde::de::IgnoredAny>,
        }
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
        if probe.schema_version != Some(2) {
            return Err(format!(
                "schemaVersion {:?}; only schema version 2 manifests are read",
                probe.schema_version
            ));
        }
        let header = header
            .map(|h| h.split(';').next().unwrap_or(h).trim().to_owned())
            .filter(|h| !h.is_empty() && h != "application/json" && h != "text/plain");
        let media_type = match (probe.media_type, header) {
            (Some(m), _) => m,
            (None, Some(h)) => h,
            (None, None) if probe.manifests.is_some() => media::OCI_INDEX.to_owned(),
            (None, None) => media::OCI_MANIFEST.to_owned(),
        };
        let parsed = match media_type.as_str() {
            media::OCI_MANIFEST | media::DOCKER_MANIFEST => Self::Image(
                serde_json::from_slice(bytes).map_err(|e| format!("image manifest: {e}"))?,
            ),
            media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => {
                Self::Index(serde_json::from_slice(bytes).map_err(|e| format!("image index: {e}"))?)
            }
            other => {
                return Err(format!(
                    "unknown manifest media type {other:?} (expected an OCI or Docker image \
                     manifest or index)"
                ));
            }
        };
        Ok((parsed, media_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tells_kinds_apart() {
        let config = Descriptor::of(media::OCI_EMPTY, media::OCI_EMPTY_BLOB);
        let mut m = ImageManifest::new(config.clone(), vec![Descriptor::of("x/y", b"abc")]);
        m.subject = Some(config);
        let bytes = m.to_bytes();
        let (back, mt) = Manifest::parse(&bytes, None).expect("parse");
        assert_eq!(mt, media::OCI_MANIFEST);
        assert_eq!(back, Manifest::Image(m));

        let idx = ImageIndex::new();
        let (back, mt) = Manifest::parse(&idx.to_bytes(), Some("text/plain")).expect("index");
        assert_eq!(mt, media::OCI_INDEX);
        assert_eq!(back, Manifest::Index(idx));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for (bytes, needle) in [
            (&b"nope"[..], "not a JSON manifest"),
            (br#"{"schemaVersion":1}"#, "schema version"),
            (br#"{"schemaVersion":2,"mediaType":"x/y"}"#, "unknown manifest media type"),
            (br#"{"schemaVersion":2,"config":{}}"#, "image manifest"),
            (
                br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:00","size":1},"layers":[]}"#,
                "image manifest",
            ),
        ] {
            let e = Manifest::parse(bytes, None).expect_err(needle);
            assert!(e.contains(needle), "{e}");
        }
    }
}
