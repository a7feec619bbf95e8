//! The media types Outpost reads and writes, in one place: its own artifact types, the OCI and
//! Docker manifest types a registry may answer with, and the Wasm ecosystem's (CNCF Wasm OCI
//! artifact layout, Spin) for the foreign artifacts `artifact::kind_of` recognises.
//!
//! Must not: hold any logic; these are names.

// === Outpost ===

/// An Outpost bundle (`bundle::archive`: a deterministic gzip-compressed ustar) as an OCI layer.
pub const OUTPOST_BUNDLE_LAYER: &str = "application/vnd.outpost.bundle.v1.tar+gzip";
/// The config blob of an Outpost bundle manifest: JSON naming the app, version, bundle digest
/// and size ([`super::artifact::BundleConfig`]). Informational: nothing trusts it.
pub const OUTPOST_BUNDLE_CONFIG: &str = "application/vnd.outpost.bundle.config.v1+json";
/// The `artifactType` of the manifest that carries a bundle's detached signature file and names
/// the bundle manifest as its `subject`.
pub const OUTPOST_SIGNATURE_ARTIFACT: &str = "application/vnd.outpost.signature.v1";
/// The signature file (`APP.bundle.sig`: the signed release document and its signature lines)
/// as the single layer of a signature artifact.
pub const OUTPOST_SIGNATURE_LAYER: &str = "application/vnd.outpost.signature.v1+text";

// === OCI and Docker ===

/// OCI image manifest (image-spec v1.1).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (image-spec v1.1); also the body of the referrers API and its fallback tag.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI empty descriptor's media type: a config for artifacts that need none.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The bytes of the OCI empty blob.
pub const OCI_EMPTY_BLOB: &[u8] = b"{}";
/// Docker image manifest v2, schema 2 (same shape as the OCI image manifest).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (same shape as the OCI image index).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a manifest GET accepts: both image manifest types and both index types.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

// === Wasm ecosystem (foreign artifacts: `artifact::kind_of`, `artifact::pull_component`) ===

/// CNCF Wasm OCI artifact layout: the config of a component pushed by `wkg oci push`/wasmCloud.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// CNCF Wasm OCI artifact layout: the component itself.
pub const WASM_LAYER: &str = "application/wasm";
/// Spin (`spin registry push`): the locked app, as the config (older Spins) or as a layer.
pub const SPIN_APP_CONFIG: &str = "application/vnd.fermyon.spin.application.v1+config";
/// Spin: a component's wasm.
pub const SPIN_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Spin: a static file.
pub const SPIN_DATA_LAYER: &str = "application/vnd.wasm.content.layer.v1+data";
/// Spin: a gzip-compressed tar of a component's files (`SPIN_OCI_ARCHIVE_LAYERS`, or over
/// 500 layers); recognised and refused.
pub const SPIN_ARCHIVE_LAYER: &str = "application/vnd.wasm.content.bundle.v1.tar+gzip";
