//! An Outpost bundle as an OCI artifact, its detached signature file as a referrer of it, and
//! the plain Wasm components other tools push, signed by Outpost after the fact.
//!
//! Layout (see `docs/distribution.md`):
//! - the **bundle manifest**: an OCI image manifest whose config is a small JSON
//!   [`BundleConfig`] (`media::OUTPOST_BUNDLE_CONFIG`) and whose one layer is the bundle archive
//!   (`media::OUTPOST_BUNDLE_LAYER`), pushed under the reference's tag;
//! - the **signature manifest**: an OCI image manifest with `artifactType`
//!   `media::OUTPOST_SIGNATURE_ARTIFACT`, the empty config, one layer holding the signature file
//!   (`media::OUTPOST_SIGNATURE_LAYER`) and `subject` = the bundle manifest's descriptor, pushed
//!   by digest; registries with the referrers API index it themselves, for the others it is
//!   added to the image index at the `sha256-<hex>` tag (the referrers tag schema).
//!
//! Foreign artifacts: [`kind_of`] tells an Outpost bundle from a plain component in the CNCF
//! Wasm OCI artifact layout (config `media::WASM_CONFIG`, one `media::WASM_LAYER` layer, as
//! `wkg oci push` and oras write it) and from a Spin app (`spin registry push`'s layout);
//! [`pull_component`] and [`pull_spin_app`] read them and the Outpost signature files attached
//! to their manifests by [`attach_signature`] (`outpost bundle sign oci://…`), which sign the
//! manifest's digest.
//!
//! Owns: pushing and pulling these layouts, checking that what was pulled has that shape.
//! Must not: judge the signature — the bytes go back to the caller, which verifies them with
//! `bundle::sign` against its trust policy; the config is informational and trusted by no one.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::client::{Client, ReferrersSource};
use super::error::OciError;
use super::manifest::{Descriptor, ImageManifest, Manifest};
use super::media;
use super::reference::Reference;
use crate::bundle::Digest;

/// The config blob of a bundle manifest: what the bundle says it is (unsigned; the signature
/// file's document is what is trusted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleConfig {
    pub app: String,
    pub version: String,
    pub digest: Digest,
    pub size: u64,
}

/// Caps on what [`pull_bundle`] reads, each checked before the blob is requested.
#[derive(Debug, Clone, Copy)]
pub struct PullLimits {
    pub max_bundle: u64,
    pub max_signature: u64,
    pub max_config: u64,
}

impl Default for PullLimits {
    fn default() -> Self {
        Self {
            max_bundle: crate::ops::config::DEFAULT_MAX_BUNDLE_SIZE,
            max_signature: 64 << 10,
            max_config: 64 << 10,
        }
    }
}

/// What [`push_bundle`] pushed.
#[derive(Debug, Clone)]
pub struct PushedBundle {
    /// The bundle manifest's descriptor: its digest is what `oci://HOST/REPO@sha256:…` pins.
    pub manifest: Descriptor,
    /// The signature manifest's descriptor.
    pub signature: Descriptor,
    /// Whether the registry indexed the referrer itself (`OCI-Subject`) or the fallback tag
    /// was written.
    pub referrers: ReferrersSource,
}

/// What [`pull_bundle`] fetched: every byte checked against its digest and size.
#[derive(Debug, Clone)]
pub struct PulledBundle {
    pub manifest_digest: Digest,
    pub config: BundleConfig,
    pub bundle: Vec<u8>,
    /// The signature files attached to the bundle manifest, in the order the registry listed
    /// them (a re-signed bundle may carry several).
    pub signatures: Vec<Vec<u8>>,
    pub referrers: ReferrersSource,
}

/// A step of a push or pull, for progress display.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// A named phase ("bundle manifest", "signature", …).
    Phase(&'a str),
    /// Bytes of the bundle layer moved so far, of `total`.
    Bytes { done: u64, total: u64 },
}

/// Pushes `bundle` (with its `config`) under `reference`'s tag, then `signature` as a referrer
/// of the bundle manifest.
pub async fn push_bundle(
    client: &Client,
    reference: &Reference,
    bundle: Bytes,
    signature: Bytes,
    config: &BundleConfig,
    progress: &(dyn Fn(Step<'_>) + Sync),
) -> Result<PushedBundle, OciError> {
    let repo = reference.repository.as_str();
    let target = reference.tag.clone().ok_or_else(|| OciError::Invalid {
        at: format!("{}/{repo}", reference.registry),
        what: reference.to_string(),
        detail: "a push needs a tag (:TAG); the digest is computed from what is pushed".to_owned(),
    })?;
    let config_bytes = Bytes::from(serde_json::to_vec(config).unwrap_or_default());
    progress(Step::Phase("config"));
    let config_desc = client
        .push_blob(repo, media::OUTPOST_BUNDLE_CONFIG, config_bytes, &|_| ())
        .await?;
    let total = bundle.len() as u64;
    progress(Step::Bytes { done: 0, total });
    let mut layer = client
        .push_blob(repo, media::OUTPOST_BUNDLE_LAYER, bundle, &|done| {
            progress(Step::Bytes { done, total })
        })
        .await?;
    layer.annotations.insert(
        "org.opencontainers.image.title".to_owned(),
        format!("{}-{}.bundle", config.app, config.version),
    );
    progress(Step::Phase("bundle manifest"));
    let manifest = ImageManifest::new(config_desc, vec![layer]);
    let manifest_bytes = Bytes::from(manifest.to_bytes());
    let manifest_desc = Descriptor::of(media::OCI_MANIFEST, &manifest_bytes);
    client
        .put_manifest(repo, &target, media::OCI_MANIFEST, manifest_bytes)
        .await?;

    progress(Step::Phase("signature"));
    let attached = attach_signature(client, repo, &manifest_desc, signature).await?;
    Ok(PushedBundle {
        manifest: manifest_desc,
        signature: attached.signature,
        referrers: attached.referrers,
    })
}

/// What [`attach_signature`] pushed.
#[derive(Debug, Clone)]
pub struct AttachedSignature {
    /// The signature manifest's descriptor.
    pub signature: Descriptor,
    /// Whether the registry indexed the referrer itself or the fallback tag was written.
    pub referrers: ReferrersSource,
}

/// Attaches the signature file `sig` to the manifest `subject` describes (in `repo`): a
/// signature manifest (artifact type `media::OUTPOST_SIGNATURE_ARTIFACT`, the empty config,
/// `sig` as its one layer, `subject` as its subject) pushed by digest; on a registry without
/// the referrers API it is also added to the index at the `sha256-<hex>` fallback tag. Each
/// call adds one more signature manifest; what is already attached is left as it is.
pub async fn attach_signature(
    client: &Client,
    repo: &str,
    subject: &Descriptor,
    sig: Bytes,
) -> Result<AttachedSignature, OciError> {
    let empty = client
        .push_blob(
            repo,
            media::OCI_EMPTY,
            Bytes::from_static(media::OCI_EMPTY_BLOB),
            &|_| (),
        )
        .await?;
    let sig_layer = client
        .push_blob(repo, media::OUTPOST_SIGNATURE_LAYER, sig, &|_| ())
        .await?;
    let mut sig_manifest = ImageManifest::new(empty, vec![sig_layer]);
    sig_manifest.artifact_type = Some(media::OUTPOST_SIGNATURE_ARTIFACT.to_owned());
    // The subject descriptor as the spec wants it: media type, digest, size only.
    sig_manifest.subject = Some(Descriptor {
        artifact_type: None,
        annotations: Default::default(),
        ..subject.clone()
    });
    let sig_bytes = Bytes::from(sig_manifest.to_bytes());
    let mut sig_desc = Descriptor::of(media::OCI_MANIFEST, &sig_bytes);
    sig_desc.artifact_type = Some(media::OUTPOST_SIGNATURE_ARTIFACT.to_owned());
    let put = client
        .put_manifest(
            repo,
            &sig_desc.digest.to_string(),
            media::OCI_MANIFEST,
            sig_bytes,
        )
        .await?;
    let referrers = if put.subject_indexed {
        ReferrersSource::Api
    } else {
        client
            .add_fallback_referrer(repo, &subject.digest, sig_desc.clone())
            .await?;
        ReferrersSource::FallbackTag
    };
    Ok(AttachedSignature {
        signature: sig_desc,
        referrers,
    })
}

/// Pulls the bundle `reference` names and the signature files attached to it. Refuses a
/// manifest that is not an Outpost bundle (an index, another config type, another layer type,
/// more than one layer) before fetching any layer.
pub async fn pull_bundle(
    client: &Client,
    reference: &Reference,
    limits: &PullLimits,
    progress: &(dyn Fn(Step<'_>) + Sync),
) -> Result<PulledBundle, OciError> {
    let repo = reference.repository.as_str();
    progress(Step::Phase("manifest"));
    let Image {
        manifest,
        digest,
        len: _,
        at,
        what,
    } = image_manifest(client, reference, "an Outpost bundle").await?;
    if manifest.config.media_type != media::OUTPOST_BUNDLE_CONFIG {
        return Err(OciError::MediaType {
            at,
            what: format!("{what}: config"),
            media_type: manifest.config.media_type,
            expected: media::OUTPOST_BUNDLE_CONFIG.to_owned(),
        });
    }
    let layer = single_layer(
        &manifest,
        media::OUTPOST_BUNDLE_LAYER,
        "an Outpost bundle",
        &at,
        &what,
    )?;
    progress(Step::Phase("config"));
    let config_bytes = client
        .get_blob_bytes(repo, &manifest.config, limits.max_config, &|_| ())
        .await?;
    let config: BundleConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| OciError::Invalid {
            at: at.clone(),
            what: format!("{what}: config"),
            detail: format!("not an Outpost bundle config: {e}"),
        })?;
    if config.digest != layer.digest || config.size != layer.size {
        return Err(OciError::Invalid {
            at,
            what: format!("{what}: config"),
            detail: format!(
                "names bundle {} ({} bytes) but the layer is {} ({} bytes)",
                config.digest, config.size, layer.digest, layer.size
            ),
        });
    }
    let total = layer.size;
    progress(Step::Bytes { done: 0, total });
    let bundle = client
        .get_blob_bytes(repo, &layer, limits.max_bundle, &|done| {
            progress(Step::Bytes { done, total })
        })
        .await?;

    progress(Step::Phase("signature"));
    let (signatures, source) =
        fetch_signatures(client, repo, &digest, limits.max_signature).await?;
    Ok(PulledBundle {
        manifest_digest: digest,
        config,
        bundle,
        signatures,
        referrers: source,
    })
}

/// What an image manifest carries, told by its config media type, for callers that dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactKind {
    /// An Outpost bundle (`media::OUTPOST_BUNDLE_CONFIG`): read it with [`pull_bundle`].
    OutpostBundle,
    /// A plain component in the CNCF Wasm OCI artifact layout (`media::WASM_CONFIG`): read it
    /// with [`pull_component`].
    WasmComponent,
    /// A Spin app pushed by `spin registry push`: its locked app is the config
    /// (`media::SPIN_APP_CONFIG`, older Spins) or a layer of that type (Spin 2.3 and later,
    /// beside an OCI image config); read it with [`pull_spin_app`].
    SpinApp,
    /// Anything else; the config media type found.
    Unknown(String),
}

/// The kind of artifact `manifest` is, from its config media type (and, for a Spin app
/// pushed by a newer Spin, a layer of the locked app's type); the shape is checked by the pull
/// that reads it.
pub fn kind_of(manifest: &ImageManifest) -> ArtifactKind {
    match manifest.config.media_type.as_str() {
        media::OUTPOST_BUNDLE_CONFIG => ArtifactKind::OutpostBundle,
        media::WASM_CONFIG => ArtifactKind::WasmComponent,
        media::SPIN_APP_CONFIG => ArtifactKind::SpinApp,
        _ if manifest
            .layers
            .iter()
            .any(|l| l.media_type == media::SPIN_APP_CONFIG) =>
        {
            ArtifactKind::SpinApp
        }
        other => ArtifactKind::Unknown(other.to_owned()),
    }
}

/// What [`pull_component`] fetched: the component, checked against its layer descriptor, and
/// what an Outpost signature over the manifest is checked against.
#[derive(Debug, Clone)]
pub struct PulledComponent {
    /// The manifest's digest: what `bundle sign oci://…` signs (the manifest names the layer by
    /// digest, so signing it covers the component).
    pub manifest_digest: Digest,
    /// The manifest's length in bytes (the signed document's `size`).
    pub manifest_len: u64,
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// The layer's `org.opencontainers.image.title` annotation, if any (informational).
    pub title: Option<String>,
    /// The Outpost signature files attached to the manifest, in the registry's order.
    pub signatures: Vec<Vec<u8>>,
    pub referrers: ReferrersSource,
}

/// Pulls the plain component `reference` names — an image manifest in the CNCF Wasm OCI
/// artifact layout: config `media::WASM_CONFIG`, exactly one `media::WASM_LAYER` layer — and
/// the Outpost signature files attached to it. The layer is capped at `limits.max_bundle` and
/// checked against its digest; any other shape is refused, naming what was found, before it
/// is fetched. The config blob is not read: nothing in it is needed or trusted.
pub async fn pull_component(
    client: &Client,
    reference: &Reference,
    limits: &PullLimits,
) -> Result<PulledComponent, OciError> {
    let repo = reference.repository.as_str();
    let Image {
        manifest,
        digest,
        len,
        at,
        what,
    } = image_manifest(client, reference, "a Wasm component").await?;
    match kind_of(&manifest) {
        ArtifactKind::WasmComponent => {}
        _ => {
            return Err(OciError::MediaType {
                at,
                what: format!("{what}: config"),
                media_type: manifest.config.media_type,
                expected: format!("{} (a Wasm component)", media::WASM_CONFIG),
            });
        }
    }
    let layer = single_layer(&manifest, media::WASM_LAYER, "a Wasm component", &at, &what)?;
    let wasm = client
        .get_blob_bytes(repo, &layer, limits.max_bundle, &|_| ())
        .await?;
    let (signatures, referrers) =
        fetch_signatures(client, repo, &digest, limits.max_signature).await?;
    Ok(PulledComponent {
        manifest_digest: digest,
        manifest_len: len,
        wasm,
        title: layer
            .annotations
            .get("org.opencontainers.image.title")
            .cloned(),
        signatures,
        referrers,
    })
}

/// Most bytes of a Spin locked app (the JSON naming the app's triggers, components and files;
/// Spin inlines only files under 128 bytes, so a real one is a few kilobytes).
pub const MAX_SPIN_LOCKED_APP: u64 = 1 << 20;
/// Most layers of a Spin app manifest (Spin's own `MAX_LAYER_COUNT`).
pub const MAX_SPIN_LAYERS: usize = 500;

/// What [`pull_spin_app`] fetched: the locked app and every content layer, each checked
/// against its descriptor, and what an Outpost signature over the manifest is checked against.
#[derive(Debug, Clone)]
pub struct PulledSpinApp {
    /// The manifest's digest: what `bundle sign oci://…` signs (the manifest names the locked
    /// app and every layer by digest, so signing it covers the whole app).
    pub manifest_digest: Digest,
    /// The manifest's length in bytes (the signed document's `size`).
    pub manifest_len: u64,
    /// The locked app JSON (read by `bundle::spin_locked`).
    pub locked: Vec<u8>,
    /// The Wasm and data layers by digest.
    pub blobs: std::collections::BTreeMap<Digest, Vec<u8>>,
    /// The Outpost signature files attached to the manifest, in the registry's order.
    pub signatures: Vec<Vec<u8>>,
    pub referrers: ReferrersSource,
}

/// Pulls the Spin app `reference` names — an image manifest as `spin registry push` writes
/// it: the locked app as the config (`media::SPIN_APP_CONFIG`) or as one layer of that type
/// beside an OCI image config, the rest `media::SPIN_WASM_LAYER` and `media::SPIN_DATA_LAYER`
/// layers — and the Outpost signature files attached to it. Every size is checked before
/// anything is fetched (the layers together at most `limits.max_bundle`); Spin's archive
/// layers and any other media type are refused, naming what was found.
pub async fn pull_spin_app(
    client: &Client,
    reference: &Reference,
    limits: &PullLimits,
) -> Result<PulledSpinApp, OciError> {
    let repo = reference.repository.as_str();
    let Image {
        manifest,
        digest,
        len,
        at,
        what,
    } = image_manifest(client, reference, "a Spin app").await?;
    if kind_of(&manifest) != ArtifactKind::SpinApp {
        return Err(OciError::MediaType {
            at,
            what: format!("{what}: config"),
            media_type: manifest.config.media_type,
            expected: format!("{} (a Spin app)", media::SPIN_APP_CONFIG),
        });
    }
    if manifest.layers.len() > MAX_SPIN_LAYERS {
        return Err(OciError::Invalid {
            at,
            what,
            detail: format!(
                "{} layers; a Spin app has at most {MAX_SPIN_LAYERS}",
                manifest.layers.len()
            ),
        });
    }
    let mut locked_desc =
        (manifest.config.media_type == media::SPIN_APP_CONFIG).then(|| manifest.config.clone());
    let mut content = Vec::new();
    let mut total: u64 = 0;
    for l in &manifest.layers {
        match l.media_type.as_str() {
            media::SPIN_APP_CONFIG => {
                if locked_desc.is_some() {
                    return Err(OciError::Invalid {
                        at,
                        what,
                        detail: format!(
                            "more than one locked app ({}); a Spin app has one",
                            media::SPIN_APP_CONFIG
                        ),
                    });
                }
                locked_desc = Some(l.clone());
            }
            media::SPIN_WASM_LAYER | media::SPIN_DATA_LAYER => {
                total = total.saturating_add(l.size);
                content.push(l.clone());
            }
            media::SPIN_ARCHIVE_LAYER => {
                return Err(OciError::Invalid {
                    at,
                    what: format!("{what}: layer {}", l.digest),
                    detail: format!(
                        "an archive layer ({}); Outpost reads Spin apps pushed with a layer \
                         per file (push again without SPIN_OCI_ARCHIVE_LAYERS)",
                        media::SPIN_ARCHIVE_LAYER
                    ),
                });
            }
            other => {
                return Err(OciError::MediaType {
                    at,
                    what: format!("{what}: layer {}", l.digest),
                    media_type: other.to_owned(),
                    expected: format!(
                        "a Spin app's {} or {} layer",
                        media::SPIN_WASM_LAYER,
                        media::SPIN_DATA_LAYER
                    ),
                });
            }
        }
    }
    let Some(locked_desc) = locked_desc else {
        return Err(OciError::Invalid {
            at,
            what,
            detail: format!("no locked app ({})", media::SPIN_APP_CONFIG),
        });
    };
    if total > limits.max_bundle {
        return Err(OciError::TooLarge {
            at,
            what: format!("{what}: the app's layers together"),
            size: total,
            limit: limits.max_bundle,
        });
    }
    let locked = client
        .get_blob_bytes(repo, &locked_desc, MAX_SPIN_LOCKED_APP, &|_| ())
        .await?;
    let mut blobs = std::collections::BTreeMap::new();
    for l in content {
        if blobs.contains_key(&l.digest) {
            continue;
        }
        let bytes = client
            .get_blob_bytes(repo, &l, limits.max_bundle, &|_| ())
            .await?;
        blobs.insert(l.digest, bytes);
    }
    let (signatures, referrers) =
        fetch_signatures(client, repo, &digest, limits.max_signature).await?;
    Ok(PulledSpinApp {
        manifest_digest: digest,
        manifest_len: len,
        locked,
        blobs,
        signatures,
        referrers,
    })
}

/// The Outpost signature files attached to the manifest `subject` in `repo` (each at most
/// `max_signature` bytes), in the order the registry lists their signature manifests, and
/// where the list came from.
async fn fetch_signatures(
    client: &Client,
    repo: &str,
    subject: &Digest,
    max_signature: u64,
) -> Result<(Vec<Vec<u8>>, ReferrersSource), OciError> {
    let (referrers, source) = client
        .referrers(repo, subject, Some(media::OUTPOST_SIGNATURE_ARTIFACT))
        .await?;
    let mut signatures = Vec::new();
    for r in referrers {
        let sig = client.get_manifest(repo, &r.digest.to_string()).await?;
        let Manifest::Image(sig_manifest) = sig.manifest else {
            continue;
        };
        // The referrers list is the registry's word; the manifest itself must say it.
        if sig_manifest.subject.as_ref().map(|s| &s.digest) != Some(subject)
            || sig_manifest.effective_artifact_type() != media::OUTPOST_SIGNATURE_ARTIFACT
        {
            continue;
        }
        for l in &sig_manifest.layers {
            if l.media_type == media::OUTPOST_SIGNATURE_LAYER {
                signatures.push(
                    client
                        .get_blob_bytes(repo, l, max_signature, &|_| ())
                        .await?,
                );
            }
        }
    }
    Ok((signatures, source))
}

/// An image manifest fetched for one of the pulls, with where (`at`) and what (`what`) to name
/// in their errors.
struct Image {
    manifest: ImageManifest,
    digest: Digest,
    /// The manifest's length in bytes.
    len: u64,
    at: String,
    what: String,
}

/// Fetches the manifest `reference` names; an image index is refused as no image manifest of
/// `kind` ("an Outpost bundle").
async fn image_manifest(
    client: &Client,
    reference: &Reference,
    kind: &str,
) -> Result<Image, OciError> {
    let repo = reference.repository.as_str();
    let at = format!("{}/{repo}", reference.registry);
    let fetched = client.get_manifest(repo, &reference.target()).await?;
    let what = format!("manifest {reference} ({})", fetched.digest);
    match fetched.manifest {
        Manifest::Image(manifest) => Ok(Image {
            manifest,
            digest: fetched.digest,
            len: fetched.bytes.len() as u64,
            at,
            what,
        }),
        Manifest::Index(_) => Err(OciError::MediaType {
            at,
            what,
            media_type: fetched.media_type,
            expected: format!("an image manifest of {kind} ({})", media::OCI_MANIFEST),
        }),
    }
}

/// The one layer of `manifest`, which must be of media type `expected`; `kind` names the
/// artifact in the error ("an Outpost bundle"), `at` and `what` say where.
fn single_layer(
    manifest: &ImageManifest,
    expected: &str,
    kind: &str,
    at: &str,
    what: &str,
) -> Result<Descriptor, OciError> {
    match manifest.layers.as_slice() {
        [layer] if layer.media_type == expected => Ok(layer.clone()),
        [layer] => Err(OciError::MediaType {
            at: at.to_owned(),
            what: format!("{what}: layer {}", layer.digest),
            media_type: layer.media_type.clone(),
            expected: expected.to_owned(),
        }),
        layers => Err(OciError::Invalid {
            at: at.to_owned(),
            what: what.to_owned(),
            detail: format!(
                "{} layers ({}); {kind} manifest has exactly one ({expected})",
                layers.len(),
                layers
                    .iter()
                    .map(|l| l.media_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(config_type: &str) -> ImageManifest {
        ImageManifest::new(
            Descriptor::of(config_type, b"{}"),
            vec![Descriptor::of(media::WASM_LAYER, b"\0asm")],
        )
    }

    #[test]
    fn kind_of_tells_artifacts_apart_by_config_type() {
        assert_eq!(
            kind_of(&manifest(media::OUTPOST_BUNDLE_CONFIG)),
            ArtifactKind::OutpostBundle
        );
        assert_eq!(
            kind_of(&manifest(media::WASM_CONFIG)),
            ArtifactKind::WasmComponent
        );
        assert_eq!(
            kind_of(&manifest(media::SPIN_APP_CONFIG)),
            ArtifactKind::SpinApp
        );
        assert_eq!(
            kind_of(&manifest("application/vnd.oci.image.config.v1+json")),
            ArtifactKind::Unknown("application/vnd.oci.image.config.v1+json".to_owned())
        );
        // A newer Spin: an OCI image config, the locked app a layer.
        let mut newer = manifest("application/vnd.oci.image.config.v1+json");
        newer
            .layers
            .push(Descriptor::of(media::SPIN_APP_CONFIG, b"{}"));
        assert_eq!(kind_of(&newer), ArtifactKind::SpinApp);
    }
}
