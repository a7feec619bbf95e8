//! OCI distribution client: references, registry auth, manifests and blobs by digest — the
//! network half of carrying Outpost bundles (and the plain Wasm components other tools push)
//! through any registry that speaks the OCI distribution spec v1.1 (or the Docker registry API
//! v2 it grew from).
//!
//! Owns: parsing `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]` ([`reference`]), credentials and
//! the `WWW-Authenticate` challenge flow ([`auth`]), manifest and descriptor shapes
//! ([`manifest`]), the media types Outpost reads and writes ([`media`]), the HTTP client with its
//! caps, timeouts, digest checks, redirects and resumes ([`client`]), and the layout of an
//! Outpost bundle as an OCI artifact with its attached signature, and of a CNCF Wasm component
//! signed after the fact ([`artifact`]).
//! Must not: touch the disk layout (it streams into writers the caller gives; where files go is
//! the caller's business), verify signatures or decide trust (`bundle::sign` does that from the
//! bytes this module returns), or panic on anything a registry sends. Every byte it hands back
//! has been checked against the digest and size that named it, so a malicious registry can
//! withhold or delay content but never substitute it.
//!
//! ```text
//! let client = Client::new(&reference.registry, ClientOptions::default())?;
//! let pulled = artifact::pull_bundle(&client, &reference, &artifact::PullLimits::default(), |_| ()).await?;
//! ```
#![forbid(unsafe_code)]

pub mod artifact;
pub mod auth;
pub mod client;
mod error;
pub mod manifest;
pub mod media;
pub mod reference;

pub use auth::Credentials;
pub use client::{Client, ClientOptions};
pub use error::OciError;
pub use manifest::{Descriptor, FetchedManifest, ImageIndex, ImageManifest, Manifest};
pub use reference::{Reference, ReferenceError};

/// The client options the node config's `[registry]` gives for `registry` (`host[:port]` of a
/// [`Reference`]): plain HTTP for the hosts listed `insecure` (`host:port`, or `host` for any
/// port), the extra CA, and credentials
/// from its `docker_config` file (else the default Docker config file of the daemon's user).
pub fn options_for(
    cfg: &crate::ops::config::RegistryConfig,
    registry: &str,
) -> Result<ClientOptions, OciError> {
    let host = registry.to_ascii_lowercase();
    let credentials = match &cfg.docker_config {
        Some(path) => Credentials::from_docker_config_file(path, registry)
            .map_err(|e| OciError::Credentials(format!("[registry] docker_config: {e}")))?,
        None => None,
    };
    // An entry without a port covers every port of its host.
    let bare = host
        .rsplit_once(':')
        .filter(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host.as_str(), |(h, _)| h);
    Ok(ClientOptions {
        insecure: cfg.insecure.iter().any(|h| *h == host || *h == bare),
        ca_file: cfg.ca.clone(),
        docker_config: cfg.docker_config.is_none(),
        credentials,
        ..ClientOptions::default()
    })
}
