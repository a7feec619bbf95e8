//! The registry client: distribution spec v1.1 requests over reqwest (rustls, ring, webpki
//! roots plus an optional private CA), with the challenge flow of [`super::auth`].
//!
//! Owns: one [`Client`] per registry host; `GET /v2/`; manifests by tag or digest (GET with the
//! OCI and Docker `Accept` types, PUT); blobs by digest (HEAD; GET streamed into the caller's
//! writer, every byte hashed, the size held to the descriptor, resumed with `Range` after a
//! dropped or stalled body; upload by POST + PUT, or POST + PATCH chunks + PUT for large ones);
//! tag lists; referrers (the API, else the `sha256-<hex>` tag of the referrers tag schema).
//! Caps are checked before a body is read (announced sizes) and while it is read (counted).
//! Must not: decide where bytes go on disk, follow a redirect loop, send `Authorization` to
//! another host (reqwest drops it on a cross-host redirect), or retry a refused credential more
//! than once. Blob mounts across repositories are not attempted (an upload is always correct).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::auth::{self, Challenge, Credentials};
use super::error::{OciError, chain};
use super::manifest::{Descriptor, FetchedManifest, ImageIndex, Manifest};
use super::media;
use crate::bundle::Digest;

/// Largest manifest read (the distribution reference registry's own limit is 4 MiB).
pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest registry error body or token response read.
const MAX_SMALL_BODY: u64 = 64 << 10;
/// Pages of a tag list followed at most.
const MAX_TAG_PAGES: usize = 100;

/// How a [`Client`] talks to its registry.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Plain HTTP instead of HTTPS (`--insecure`, as Spin and oras call it). HTTPS is the default
    /// for every registry, `localhost` and `127.0.0.1` included.
    pub insecure: bool,
    /// A PEM file of extra CA certificates trusted beside the webpki roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Explicit credentials; they win over the Docker config file.
    pub credentials: Option<Credentials>,
    /// Look up credentials in the Docker config file when none are given explicitly.
    pub docker_config: bool,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout for everything but blob bodies, and the wait for a blob's headers.
    pub request_timeout: Duration,
    /// A blob body that sends nothing for this long is dropped and resumed.
    pub stall_timeout: Duration,
    /// Resumes (with `Range`) of one blob download after a dropped or stalled body.
    pub max_resumes: u32,
    /// Redirects followed for one request (blob storage, CDNs).
    pub max_redirects: usize,
    /// Manifests over this size are refused before reading.
    pub max_manifest_size: u64,
    /// Blobs over this size are uploaded in PATCH chunks of this size.
    pub chunk_size: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            ca_file: None,
            credentials: None,
            docker_config: true,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            max_resumes: 3,
            max_redirects: 5,
            max_manifest_size: DEFAULT_MAX_MANIFEST_SIZE,
            chunk_size: 16 << 20,
        }
    }
}

/// A client for one registry host. Cheap to share by reference across tasks; its token cache
/// is behind a mutex.
pub struct Client {
    http: reqwest::Client,
    /// `https://host:port` or `http://host:port`.
    base: String,
    registry: String,
    opts: ClientOptions,
    credentials: Option<Credentials>,
    /// The `Authorization` value per repository (a bearer token's scope is a repository and its
    /// actions; basic credentials are stored under every repository they were asked for).
    auth: Mutex<HashMap<String, String>>,
}

/// Where [`Client::referrers`] found the referrers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferrersSource {
    /// `GET /v2/<name>/referrers/<digest>` (OCI distribution 1.1).
    Api,
    /// The `sha256-<hex>` tag of the referrers tag schema (registries without the API).
    FallbackTag,
}

/// What a manifest PUT returned.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub digest: Digest,
    /// The registry answered `OCI-Subject`: it indexes referrers itself (the API exists).
    pub subject_indexed: bool,
}

// === impl Client ===

impl std::fmt::Debug for Client {
    // By hand: the derived form would print the cached tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `registry` (`host[:port]`, as in a [`super::Reference`]). Reads the CA file
    /// and the Docker config file now, so a bad one is reported before any request.
    pub fn new(registry: &str, opts: ClientOptions) -> Result<Self, OciError> {
        let max_redirects = opts.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let shown = |u: &Url| format!("{}{}", u.host_str().unwrap_or("?"), u.path());
            if attempt.previous().iter().any(|u| u == attempt.url()) {
                let msg = format!("redirect loop: sent back to {}", shown(attempt.url()));
                attempt.error(msg)
            } else if attempt.previous().len() > max_redirects {
                let msg = format!("more than {max_redirects} redirects");
                attempt.error(msg)
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .redirect(policy)
            .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &opts.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                OciError::Setup(format!("{}: cannot read CA file: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                OciError::Setup(format!(
                    "{}: not a PEM certificate file: {}",
                    path.display(),
                    chain(&e)
                ))
            })?;
            if certs.is_empty() {
                return Err(OciError::Setup(format!(
                    "{}: no PEM certificate in the CA file",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            OciError::Setup(format!("cannot set up the HTTP client: {}", chain(&e)))
        })?;
        let credentials = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None if opts.docker_config => {
                Credentials::from_docker_config(registry).map_err(OciError::Credentials)?
            }
            None => None,
        };
        let scheme = if opts.insecure { "http" } else { "https" };
        Ok(Self {
            http,
            base: format!("{scheme}://{registry}"),
            registry: registry.to_owned(),
            opts,
            credentials,
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The registry host this client talks to.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The options it was made with (credentials included; `Debug` hides the password).
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    fn at(&self, repo: &str) -> String {
        if repo.is_empty() {
            self.registry.clone()
        } else {
            format!("{}/{repo}", self.registry)
        }
    }

    fn url(&self, repo: &str, tail: &str) -> String {
        format!("{}/v2/{repo}/{tail}", self.base)
    }

    /// `GET /v2/`: the registry answers and accepts our credentials (or needs none).
    pub async fn ping(&self) -> Result<(), OciError> {
        let url = format!("{}/v2/", self.base);
        let resp = self
            .send("", "API version check", &|| self.http.get(&url), true)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            _ => Err(self
                .status_error("", "API version check (GET /v2/)", resp)
                .await),
        }
    }

    // --- manifests ---

    /// A manifest by tag or digest. Fetched by digest, its bytes must hash to it; fetched by
    /// tag, its digest is computed from the bytes received (never taken from a header).
    pub async fn get_manifest(
        &self,
        repo: &str,
        target: &str,
    ) -> Result<FetchedManifest, OciError> {
        let what = format!("manifest {repo}:{target}");
        let url = self.url(repo, &format!("manifests/{target}"));
        let resp = self
            .send(
                repo,
                &what,
                &|| self.http.get(&url).header(ACCEPT, media::MANIFEST_ACCEPT),
                true,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(repo, &what, resp).await);
        }
        let header = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = self
            .read_capped(repo, &what, resp, self.opts.max_manifest_size)
            .await?;
        let digest = crate::bundle::digest(&bytes);
        if let Ok(expected) = target.parse::<Digest>()
            && expected != digest
        {
            return Err(OciError::DigestMismatch {
                at: self.at(repo),
                what,
                expected,
                got: digest,
            });
        }
        let (manifest, media_type) =
            Manifest::parse(&bytes, header.as_deref()).map_err(|detail| OciError::Invalid {
                at: self.at(repo),
                what: what.clone(),
                detail,
            })?;
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
            manifest,
        })
    }

    /// Puts a manifest under `target` (a tag, or its own digest) with `media_type`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        target: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<PutManifest, OciError> {
        let digest = crate::bundle::digest(&bytes);
        let what = format!("manifest {repo}:{target} ({digest})");
        let url = self.url(repo, &format!("manifests/{target}"));
        let resp = self
            .send(
                repo,
                &what,
                &|| {
                    self.http
                        .put(&url)
                        .header(CONTENT_TYPE, media_type)
                        .body(bytes.clone())
                },
                true,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error(repo, &what, resp).await);
        }
        self.check_digest_header(repo, &what, &resp, &digest)?;
        Ok(PutManifest {
            digest,
            subject_indexed: resp.headers().contains_key("oci-subject"),
        })
    }

    // --- blobs ---

    /// `HEAD` a blob: its size when the registry has it, `None` when it does not.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, OciError> {
        let what = format!("blob {digest}");
        let url = self.url(repo, &format!("blobs/{digest}"));
        let resp = self
            .send(repo, &what, &|| self.http.head(&url), true)
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            _ => Err(self.status_error(repo, &what, resp).await),
        }
    }

    /// Streams the blob `desc` names into `out`: refused before the request when `desc.size`
    /// is over `max`; every byte hashed; more or fewer bytes than `desc.size`, or another digest,
    /// is an error (after which `out` holds bytes that must be thrown away). A body that drops or
    /// stalls is resumed with `Range` up to [`ClientOptions::max_resumes`] times. `progress` is
    /// called with the bytes received so far.
    pub async fn get_blob<W>(
        &self,
        repo: &str,
        desc: &Descriptor,
        max: u64,
        out: &mut W,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), OciError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let what = format!("blob {}", desc.digest);
        if desc.size > max {
            return Err(OciError::TooLarge {
                at: self.at(repo),
                what,
                size: desc.size,
                limit: max,
            });
        }
        let url = self.url(repo, &format!("blobs/{}", desc.digest));
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut resumes = 0;
        loop {
            let from = received;
            let sent = self
                .send(
                    repo,
                    &what,
                    &|| {
                        let r = self.http.get(&url);
                        if from > 0 {
                            r.header(RANGE, format!("bytes={from}-"))
                        } else {
                            r
                        }
                    },
                    false,
                )
                .await;
            let resp = match sent {
                Ok(r) => r,
                // A resume that cannot connect (the pool's connection was the one that broke,
                // the registry restarts) counts as one more interruption, not the end.
                Err(OciError::Transport { detail, .. }) if resumes > 0 => {
                    resumes += 1;
                    if resumes > self.opts.max_resumes {
                        return Err(self.interrupted(repo, &what, detail, received, resumes - 1));
                    }
                    // A moment before reconnecting, longer each time.
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(resumes))).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Bytes of this response already received before (a 200 to a range request).
            let mut skip = 0;
            match resp.status() {
                StatusCode::OK => {
                    skip = from;
                    if let Some(len) = content_length(&resp)
                        && len != desc.size
                    {
                        return Err(if len > max {
                            OciError::TooLarge {
                                at: self.at(repo),
                                what,
                                size: len,
                                limit: max,
                            }
                        } else {
                            OciError::SizeMismatch {
                                at: self.at(repo),
                                what,
                                expected: desc.size,
                                got: len,
                            }
                        });
                    }
                }
                StatusCode::PARTIAL_CONTENT if from > 0 => {
                    let start = resp
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("bytes "))
                        .and_then(|v| v.split('-').next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if start != Some(from) {
                        return Err(OciError::Invalid {
                            at: self.at(repo),
                            what,
                            detail: format!(
                                "asked to resume at byte {from}, the registry answered \
                                 Content-Range {start:?}"
                            ),
                        });
                    }
                }
                _ => return Err(self.status_error(repo, &what, resp).await),
            }
            let mut resp = resp;
            let interrupted = loop {
                let chunk = match tokio::time::timeout(self.opts.stall_timeout, resp.chunk()).await
                {
                    Err(_) => break Some(format!("no data for {:?}", self.opts.stall_timeout)),
                    Ok(Err(e)) => break Some(chain(&e)),
                    Ok(Ok(None)) => break None,
                    Ok(Ok(Some(c))) => c,
                };
                let mut chunk = &chunk[..];
                if skip > 0 {
                    let n = skip.min(chunk.len() as u64);
                    skip -= n;
                    chunk = &chunk[n as usize..];
                }
                let got = received + chunk.len() as u64;
                if got > desc.size {
                    return Err(OciError::SizeMismatch {
                        at: self.at(repo),
                        what,
                        expected: desc.size,
                        got,
                    });
                }
                hasher.update(chunk);
                out.write_all(chunk)
                    .await
                    .map_err(|source| OciError::Write {
                        what: format!("{} {what}", self.at(repo)),
                        source,
                    })?;
                received = got;
                progress(received);
            };
            match interrupted {
                None if skip > 0 || received < desc.size => {
                    return Err(OciError::SizeMismatch {
                        at: self.at(repo),
                        what,
                        expected: desc.size,
                        got: received,
                    });
                }
                None => break,
                Some(detail) => {
                    resumes += 1;
                    if resumes > self.opts.max_resumes {
                        return Err(self.interrupted(repo, &what, detail, received, resumes - 1));
                    }
                    tracing::debug!(
                        registry = %self.registry, %repo, %what, received, %detail,
                        "resuming blob download"
                    );
                }
            }
        }
        let got = Digest(hasher.finalize().into());
        if got != desc.digest {
            return Err(OciError::DigestMismatch {
                at: self.at(repo),
                what,
                expected: desc.digest,
                got,
            });
        }
        out.flush().await.map_err(|source| OciError::Write {
            what: format!("{} {what}", self.at(repo)),
            source,
        })?;
        Ok(())
    }

    fn interrupted(
        &self,
        repo: &str,
        what: &str,
        detail: String,
        received: u64,
        resumes: u32,
    ) -> OciError {
        OciError::Interrupted {
            at: self.at(repo),
            what: what.to_owned(),
            detail,
            received,
            resumes,
        }
    }

    /// [`Self::get_blob`] into memory.
    pub async fn get_blob_bytes(
        &self,
        repo: &str,
        desc: &Descriptor,
        max: u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<u8>, OciError> {
        let mut out = Vec::with_capacity(desc.size.min(max).min(64 << 20) as usize);
        self.get_blob(repo, desc, max, &mut out, progress).await?;
        Ok(out)
    }

    /// Uploads `bytes` as a blob (unless the registry has it already) and returns its
    /// descriptor with `media_type`. Blobs over [`ClientOptions::chunk_size`] go in chunks.
    pub async fn push_blob(
        &self,
        repo: &str,
        media_type: &str,
        bytes: Bytes,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Descriptor, OciError> {
        let desc = Descriptor::of(media_type, &bytes);
        if self.blob_size(repo, &desc.digest).await? == Some(desc.size) {
            progress(desc.size);
            return Ok(desc);
        }
        let what = format!("upload of blob {}", desc.digest);
        let start = self.url(repo, "blobs/uploads/");
        let resp = self
            .send(
                repo,
                &what,
                &|| self.http.post(&start).header(CONTENT_LENGTH, "0"),
                true,
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(repo, &what, resp).await);
        }
        let mut location = self.location(repo, &what, &resp)?;
        let chunk = self.opts.chunk_size.max(1) as usize;
        let mut final_body = bytes.clone();
        if bytes.len() > chunk {
            let mut offset = 0;
            while offset < bytes.len() {
                let end = (offset + chunk).min(bytes.len());
                let part = bytes.slice(offset..end);
                let loc = location.clone();
                let resp = self
                    .send(
                        repo,
                        &what,
                        &|| {
                            self.http
                                .patch(loc.clone())
                                .header(CONTENT_TYPE, "application/octet-stream")
                                .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
                                .body(part.clone())
                        },
                        true,
                    )
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(self.status_error(repo, &what, resp).await);
                }
                location = self.location(repo, &what, &resp)?;
                offset = end;
                progress(offset as u64);
            }
            final_body = Bytes::new();
        }
        location
            .query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let resp = self
            .send(
                repo,
                &what,
                &|| {
                    self.http
                        .put(location.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .body(final_body.clone())
                },
                true,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_error(repo, &what, resp).await);
        }
        self.check_digest_header(repo, &what, &resp, &desc.digest)?;
        progress(desc.size);
        Ok(desc)
    }

    // --- tags and referrers ---

    /// Every tag of `repo`, following `Link: <…>; rel="next"` pages.
    pub async fn list_tags(&self, repo: &str) -> Result<Vec<String>, OciError> {
        #[derive(serde::Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let what = format!("tag list of {repo}");
        let mut url = self.url(repo, "tags/list");
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let page = url.clone();
            let resp = self
                .send(repo, &what, &|| self.http.get(&page), true)
                .await?;
            if !resp.status().is_success() {
                return Err(self.status_error(repo, &what, resp).await);
            }
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once('<'))
                .and_then(|(_, v)| v.split_once('>'))
                .map(|(v, _)| v.to_owned());
            let body = self
                .read_capped(repo, &what, resp, self.opts.max_manifest_size)
                .await?;
            let page: Tags = serde_json::from_slice(&body).map_err(|e| OciError::Invalid {
                at: self.at(repo),
                what: what.clone(),
                detail: format!("not a tag list: {e}"),
            })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(n) => {
                    url = Url::parse(&self.base)
                        .and_then(|b| b.join(&n))
                        .map(String::from)
                        .map_err(|e| OciError::Invalid {
                            at: self.at(repo),
                            what: what.clone(),
                            detail: format!("Link header {n:?}: {e}"),
                        })?;
                }
                None => return Ok(tags),
            }
        }
        Ok(tags)
    }

    /// The manifests that name `subject` as their subject, optionally only those of
    /// `artifact_type`: from the referrers API, or — on a registry without it (a 404) — from
    /// the image index at the `sha256-<hex>` tag. No referrers is an empty list.
    pub async fn referrers(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Vec<Descriptor>, ReferrersSource), OciError> {
        let what = format!("referrers of {subject}");
        let mut url = self.url(repo, &format!("referrers/{subject}"));
        if let Some(t) = artifact_type {
            url = format!("{url}?artifactType={}", form_encode(t));
        }
        let resp = self
            .send(
                repo,
                &what,
                &|| self.http.get(&url).header(ACCEPT, media::OCI_INDEX),
                true,
            )
            .await?;
        let (index, source) = if resp.status() == StatusCode::NOT_FOUND {
            match self.get_manifest(repo, &fallback_tag(subject)).await {
                Ok(m) => match m.manifest {
                    Manifest::Index(i) => (i, ReferrersSource::FallbackTag),
                    // A tag that points at one manifest (as some tools tag a signature
                    // directly) names that manifest as the only referrer.
                    Manifest::Image(i) => {
                        let mut d = Descriptor::of(&m.media_type, &m.bytes);
                        d.artifact_type = Some(i.effective_artifact_type().to_owned());
                        let mut index = ImageIndex::new();
                        index.manifests.push(d);
                        (index, ReferrersSource::FallbackTag)
                    }
                },
                Err(e) if e.is_not_found() => (ImageIndex::new(), ReferrersSource::FallbackTag),
                Err(e) => return Err(e),
            }
        } else if resp.status().is_success() {
            let bytes = self
                .read_capped(repo, &what, resp, self.opts.max_manifest_size)
                .await?;
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| OciError::Invalid {
                    at: self.at(repo),
                    what: what.clone(),
                    detail: format!("not an image index: {e}"),
                })?;
            (index, ReferrersSource::Api)
        } else {
            return Err(self.status_error(repo, &what, resp).await);
        };
        let found = index
            .manifests
            .into_iter()
            .filter(|d| artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t)))
            .collect();
        Ok((found, source))
    }

    /// Adds `referrer` to the image index at `subject`'s `sha256-<hex>` tag (the referrers tag
    /// schema, for registries without the referrers API), creating it if needed.
    pub async fn add_fallback_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: Descriptor,
    ) -> Result<(), OciError> {
        let tag = fallback_tag(subject);
        let mut index = match self.get_manifest(repo, &tag).await {
            Ok(FetchedManifest {
                manifest: Manifest::Index(i),
                ..
            }) => i,
            Ok(_) => ImageIndex::new(),
            Err(e) if e.is_not_found() => ImageIndex::new(),
            Err(e) => return Err(e),
        };
        if index.manifests.iter().any(|d| d.digest == referrer.digest) {
            return Ok(());
        }
        index.manifests.push(referrer);
        self.put_manifest(repo, &tag, media::OCI_INDEX, Bytes::from(index.to_bytes()))
            .await?;
        Ok(())
    }

    // --- plumbing ---

    /// Sends a request built by `build` (called again for a retry), answering one 401
    /// challenge: basic credentials, or a bearer token fetched from the challenge's realm. A
    /// second 401 after that is an error, never another round. `whole` puts the request
    /// timeout on the whole exchange (a blob body has the stall timeout instead).
    async fn send(
        &self,
        repo: &str,
        what: &str,
        build: &(dyn Fn() -> reqwest::RequestBuilder + Sync),
        whole: bool,
    ) -> Result<reqwest::Response, OciError> {
        let mut fresh = false;
        loop {
            let header = self.cached_auth(repo);
            let mut request = build();
            if whole {
                request = request.timeout(self.opts.request_timeout);
            }
            if let Some(h) = &header {
                request = request.header(AUTHORIZATION, h);
            }
            let resp = match tokio::time::timeout(self.opts.request_timeout, request.send()).await {
                Err(_) => {
                    return Err(OciError::Transport {
                        at: self.at(repo),
                        what: what.to_owned(),
                        detail: format!("no response within {:?}", self.opts.request_timeout),
                    });
                }
                Ok(Err(e)) => return Err(self.transport_error(repo, what, &e)),
                Ok(Ok(r)) => r,
            };
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(auth::parse_challenge);
            let unauthorized = |detail: String| OciError::Unauthorized {
                at: self.at(repo),
                what: what.to_owned(),
                detail,
            };
            if fresh {
                return Err(unauthorized(match (&self.credentials, challenge) {
                    (Some(c), Some(Ok(Challenge::Basic))) => format!(
                        "the registry refused the credentials of user {:?} (wrong user name or \
                         password?)",
                        c.username
                    ),
                    (_, _) => "still 401 Unauthorized after authenticating with the token the \
                               registry issued; giving up (the account may lack access to this \
                               repository)"
                        .to_owned(),
                }));
            }
            let challenge = match challenge {
                None => {
                    return Err(unauthorized(
                        "401 Unauthorized without a WWW-Authenticate challenge".to_owned(),
                    ));
                }
                Some(Err(e)) => return Err(unauthorized(e)),
                Some(Ok(c)) => c,
            };
            let value = match challenge {
                Challenge::Basic => match &self.credentials {
                    Some(c) => c.basic_header(),
                    None => return Err(unauthorized(no_credentials(&self.registry))),
                },
                Challenge::Bearer {
                    realm,
                    service,
                    scope,
                } => {
                    let token = self
                        .fetch_token(repo, what, &realm, service.as_deref(), scope.as_deref())
                        .await?;
                    format!("Bearer {token}")
                }
            };
            self.auth
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(repo.to_owned(), value);
            fresh = true;
        }
    }

    fn cached_auth(&self, repo: &str) -> Option<String> {
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(repo)
            .cloned()
    }

    /// `GET realm?service=…&scope=…`, with basic credentials when there are any.
    async fn fetch_token(
        &self,
        repo: &str,
        what: &str,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, OciError> {
        let mut url = Url::parse(realm).map_err(|e| OciError::Unauthorized {
            at: self.at(repo),
            what: what.to_owned(),
            detail: format!("token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            if let Some(s) = scope {
                q.append_pair("scope", s);
            }
        }
        let mut request = self.http.get(url).timeout(self.opts.request_timeout);
        if let Some(c) = &self.credentials {
            request = request.header(AUTHORIZATION, c.basic_header());
        }
        let token_what = format!("{what}: token from {}", realm_host(realm));
        let resp = request
            .send()
            .await
            .map_err(|e| self.transport_error(repo, &token_what, &e))?;
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(OciError::Unauthorized {
                    at: self.at(repo),
                    what: token_what,
                    detail: match &self.credentials {
                        Some(c) => format!(
                            "the token service refused the credentials of user {:?}",
                            c.username
                        ),
                        None => no_credentials(&self.registry),
                    },
                });
            }
            s if !s.is_success() => return Err(self.status_error(repo, &token_what, resp).await),
            _ => {}
        }
        let body = self
            .read_capped(repo, &token_what, resp, MAX_SMALL_BODY)
            .await?;
        let token: auth::TokenResponse =
            serde_json::from_slice(&body).map_err(|e| OciError::Invalid {
                at: self.at(repo),
                what: token_what.clone(),
                detail: format!("not a token response: {e}"),
            })?;
        token
            .token
            .or(token.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OciError::Invalid {
                at: self.at(repo),
                what: token_what,
                detail: "the token response holds no token".to_owned(),
            })
    }

    /// Reads a whole body, refusing it before reading when `Content-Length` is over `max` and
    /// as soon as the count passes `max`.
    async fn read_capped(
        &self,
        repo: &str,
        what: &str,
        mut resp: reqwest::Response,
        max: u64,
    ) -> Result<Bytes, OciError> {
        let too_large = |size| OciError::TooLarge {
            at: self.at(repo),
            what: what.to_owned(),
            size,
            limit: max,
        };
        if let Some(len) = content_length(&resp)
            && len > max
        {
            return Err(too_large(len));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.transport_error(repo, what, &e))?
        {
            if (out.len() + chunk.len()) as u64 > max {
                return Err(too_large((out.len() + chunk.len()) as u64));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    }

    /// The error for an unexpected status, with the registry's own error code and message.
    async fn status_error(&self, repo: &str, what: &str, resp: reqwest::Response) -> OciError {
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<ErrorEntry>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorEntry {
            code: Option<String>,
            message: Option<String>,
        }
        let status = resp.status();
        let body = self
            .read_capped(repo, what, resp, MAX_SMALL_BODY)
            .await
            .unwrap_or_default();
        let detail = serde_json::from_slice::<Errors>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next())
            .map(|e| {
                let text = [e.code, e.message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                format!(": {}", text.chars().take(300).collect::<String>())
            })
            .unwrap_or_else(|| {
                // Go's TLS server answers a plain-HTTP request with a 400 and this text (a
                // HEAD gets the 400 alone).
                if self.opts.insecure
                    && status == StatusCode::BAD_REQUEST
                    && (body.is_empty() || String::from_utf8_lossy(&body).contains("HTTPS server"))
                {
                    ": does the registry speak HTTPS? then leave out --insecure".to_owned()
                } else {
                    String::new()
                }
            });
        let at = self.at(repo);
        let what = what.to_owned();
        match status {
            StatusCode::NOT_FOUND => OciError::NotFound { at, what, detail },
            StatusCode::FORBIDDEN => OciError::Unauthorized {
                at,
                what,
                detail: format!("403 Forbidden{detail}"),
            },
            s => OciError::Status {
                at,
                what,
                status: s.as_u16(),
                detail,
            },
        }
    }

    fn transport_error(&self, repo: &str, what: &str, e: &reqwest::Error) -> OciError {
        let mut detail = chain(e);
        if e.is_redirect() {
            return OciError::Redirect {
                at: self.at(repo),
                what: what.to_owned(),
                detail,
            };
        }
        if !self.opts.insecure && detail.contains("InvalidContentType") {
            detail.push_str(" (is it a plain-HTTP registry? then pass --insecure)");
        }
        if detail.contains("UnknownIssuer") || detail.contains("invalid peer certificate") {
            detail.push_str(
                " (the registry's certificate is not signed by a trusted CA; pass --ca-file \
                 with the CA's PEM certificate)",
            );
        }
        OciError::Transport {
            at: self.at(repo),
            what: what.to_owned(),
            detail,
        }
    }

    /// The upload `Location`, resolved against the registry (it may be relative).
    fn location(&self, repo: &str, what: &str, resp: &reqwest::Response) -> Result<Url, OciError> {
        let invalid = |detail: String| OciError::Invalid {
            at: self.at(repo),
            what: what.to_owned(),
            detail,
        };
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| invalid("the upload answer has no Location header".to_owned()))?;
        Url::parse(&self.base)
            .and_then(|b| b.join(loc))
            .map_err(|e| invalid(format!("upload Location {loc:?}: {e}")))
    }

    fn check_digest_header(
        &self,
        repo: &str,
        what: &str,
        resp: &reqwest::Response,
        digest: &Digest,
    ) -> Result<(), OciError> {
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        match header.map(str::parse::<Digest>) {
            Some(Ok(got)) if &got != digest => Err(OciError::DigestMismatch {
                at: self.at(repo),
                what: what.to_owned(),
                expected: *digest,
                got,
            }),
            _ => Ok(()),
        }
    }
}

/// The tag the referrers tag schema uses for `subject`: `sha256-<hex>`.
pub fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

fn content_length(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn no_credentials(registry: &str) -> String {
    format!(
        "the registry requires credentials: pass --username and --password (or \
         OUTPOST_REGISTRY_PASSWORD), or add an auths entry for {registry} to the Docker config \
         file ($DOCKER_CONFIG/config.json or ~/.docker/config.json; credential helpers are not \
         run)"
    )
}

fn realm_host(realm: &str) -> String {
    Url::parse(realm)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "the token realm".to_owned())
}

/// Percent-encodes a query value (media types hold `+` and `/`).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
