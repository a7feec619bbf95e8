//! A signed-request client for the control-plane API, used by the node agent (`sync`) and
//! the operator commands.
//!
//! Owns: the reqwest client (rustls with ring, the platform's web PKI roots plus an optional
//! extra CA for a self-signed control plane), request signing with [`crate::bundle::request_auth`],
//! JSON bodies, response size caps and typed errors; and the unsigned downloads of bundle
//! mirrors ([`Client::download_url`]), which share the roots, caps and deadlines but never the
//! signed `Authorization` header.
//! Must not: retry, sleep or decide policy — callers own backoff.
#![forbid(unsafe_code)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::ApiError;
use crate::bundle::request_auth::{Role, sign_request};
use crate::bundle::sign::SigningKey;

/// Largest JSON response read (desired states, rollout status, node lists).
pub const MAX_JSON_RESPONSE: u64 = 8 << 20;

/// Most redirects a mirror download follows.
pub const MAX_MIRROR_REDIRECTS: usize = 5;

/// What went wrong talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control-plane URL {url:?}: {problem}")]
    Url { url: String, problem: String },
    #[error("control plane CA {path}: {problem}")]
    Ca { path: String, problem: String },
    /// Shown with reqwest's causes: its own message alone ("error decoding response body")
    /// hides whether the connection was refused, reset or timed out.
    #[error("{method} {url}: {}", with_causes(source))]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The control plane answered with an error status; `message` is its `{"error": ...}`.
    #[error("{method} {url}: {status}: {message}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{method} {url}: response larger than {limit} bytes")]
    TooLarge {
        method: &'static str,
        url: String,
        limit: u64,
    },
    #[error("{method} {url}: unexpected response: {problem}")]
    Decode {
        method: &'static str,
        url: String,
        problem: String,
    },
    /// A download that made no progress for `stall` (or ran past its whole deadline).
    #[error("{method} {url}: timed out: {what}")]
    TimedOut {
        method: &'static str,
        url: String,
        what: String,
    },
}

impl ClientError {
    /// The HTTP status of an error response, if that is what it was.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Deadlines of one [`Client::download`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadTiming {
    /// The whole download, headers included.
    pub total: Duration,
    /// Longest wait for the next bytes of the body.
    pub stall: Duration,
}

impl DownloadTiming {
    /// Slowest link a bundle download is planned for: 32 KiB/s (a poor cellular uplink).
    pub const MIN_RATE: u64 = 32 << 10;

    /// For `size` bytes with the client's request timeout `request_timeout`: the transfer may
    /// take as long as `size` needs at [`Self::MIN_RATE`], plus one request timeout; it may
    /// pause for at most one request timeout.
    pub fn for_size(size: u64, request_timeout: Duration) -> Self {
        Self {
            total: request_timeout + Duration::from_secs(size.div_ceil(Self::MIN_RATE)),
            stall: request_timeout,
        }
    }
}

/// `e` and each distinct message in its source chain, joined by ": ".
fn with_causes(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let msg = c.to_string();
        // hyper and reqwest often wrap an error in one that repeats it.
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}

/// A response body with the headers callers look at.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub etag: Option<String>,
    /// The server held the request as asked (`Preference-Applied: wait=N`, see
    /// [`Client::send_held`]).
    pub held: bool,
    pub body: Bytes,
}

/// A client bound to one control plane and one signing key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// For mirrors: the same roots and timeouts, a few redirects (CDNs and object stores
    /// redirect to the bytes), and no request of it is ever signed.
    mirrors: reqwest::Client,
    /// The control plane's URLs (replicas), in order; `current` indexes the one in use.
    bases: std::sync::Arc<[String]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    key: std::sync::Arc<SigningKey>,
    role: Role,
    /// The request timeout every exchange gets (a held one gets its hold on top).
    timeout: Duration,
}

impl Client {
    /// `base` is the control plane's URL (`https://cp.example:7070`; `http://` only for
    /// loopback tests); `ca_pem` adds a trusted root (PEM) for a self-signed control plane.
    pub fn new(
        base: &str,
        key: SigningKey,
        role: Role,
        ca_pem: Option<(&str, &[u8])>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        check_base(base)?;
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .timeout(timeout)
                .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
        };
        let mut roots = Vec::new();
        if let Some((path, pem)) = ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| ClientError::Ca {
                    path: path.to_owned(),
                    problem: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClientError::Ca {
                    path: path.to_owned(),
                    problem: "no PEM certificates in the file".into(),
                });
            }
            roots = certs;
        }
        let build = |b: reqwest::ClientBuilder| {
            roots
                .iter()
                .fold(b, |b, c| b.add_root_certificate(c.clone()))
                .build()
                .map_err(|e| ClientError::Url {
                    url: base.to_owned(),
                    problem: e.to_string(),
                })
        };
        let http = build(builder().redirect(reqwest::redirect::Policy::none()))?;
        let mirrors =
            build(builder().redirect(reqwest::redirect::Policy::limited(MAX_MIRROR_REDIRECTS)))?;
        Ok(Self {
            http,
            mirrors,
            bases: std::sync::Arc::from([base.trim_end_matches('/').to_owned()]),
            current: std::sync::Arc::default(),
            key: std::sync::Arc::new(key),
            role,
            timeout,
        })
    }

    /// The same control plane, connection pools and timeouts, signing as `key` in `role`:
    /// many identities over one set of pools (the fleet simulator's thousands of nodes).
    pub fn with_key(&self, key: SigningKey, role: Role) -> Self {
        Self {
            key: std::sync::Arc::new(key),
            role,
            ..self.clone()
        }
    }

    /// Adds replicas of the same control plane after the URL given to [`Client::new`]: when
    /// the one in use cannot be reached (or answers 502/503/504), a request moves to the next,
    /// and the client stays there. Each must be a URL `new` would take.
    pub fn with_replicas(mut self, urls: &[String]) -> Result<Self, ClientError> {
        let mut bases: Vec<String> = self.bases.to_vec();
        for u in urls {
            check_base(u)?;
            let u = u.trim_end_matches('/').to_owned();
            if !bases.contains(&u) {
                bases.push(u);
            }
        }
        self.bases = std::sync::Arc::from(bases);
        Ok(self)
    }

    /// The control-plane URL in use.
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Sends a signed request and reads at most `limit` bytes of the response. Statuses 2xx and
    /// 304 are returned; others become [`ClientError::Status`].
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
        limit: u64,
    ) -> Result<Response, ClientError> {
        self.send_failover(method, path, Bytes::from(body), headers, limit, None)
            .await
    }

    /// Like [`Client::send`], asking the server to hold the request up to `hold` while it has
    /// nothing new (`Prefer: wait=N`, whole seconds); the exchange may take the request
    /// timeout plus `hold`. [`Response::held`] says whether the server does this.
    pub async fn send_held(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
        limit: u64,
        hold: Duration,
    ) -> Result<Response, ClientError> {
        let mut headers = headers.to_vec();
        headers.push(("prefer", format!("wait={}", hold.as_secs())));
        let timing = DownloadTiming {
            total: self.timeout + hold,
            stall: self.timeout + hold,
        };
        self.send_failover(
            method,
            path,
            Bytes::from(body),
            &headers,
            limit,
            Some(timing),
        )
        .await
    }

    /// `GET path` of a large body (a bundle), at most `limit` bytes. Unlike [`Client::send`],
    /// whose whole exchange must fit the client's request timeout, a download may take up to
    /// `timing.total` as long as bytes keep arriving: it fails only when nothing came for
    /// `timing.stall`. A 20 MiB bundle over a 2 Mbit/s uplink takes 80 s, and must not time out
    /// on every retry.
    pub async fn download(
        &self,
        path: &str,
        limit: u64,
        timing: DownloadTiming,
    ) -> Result<Response, ClientError> {
        self.send_failover(
            reqwest::Method::GET,
            path,
            Bytes::new(),
            &[],
            limit,
            Some(timing),
        )
        .await
    }

    /// `GET url` of a bundle mirror, as [`Client::download`] (at most `limit` bytes, `timing`'s
    /// deadline and stall limit) but unsigned: a mirror is anyone's static server and gets no
    /// credential of the node's. `url` is absolute (`http(s)://…`).
    pub async fn download_url(
        &self,
        url: &str,
        limit: u64,
        timing: DownloadTiming,
    ) -> Result<Response, ClientError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| ClientError::Url {
            url: url.to_owned(),
            problem: e.to_string(),
        })?;
        let req = self.mirrors.get(parsed).timeout(timing.total);
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            method: "GET",
            url: url.to_owned(),
            source,
        })?;
        read_response(resp, "GET", url.to_owned(), limit, Some(timing), false).await
    }

    /// Like [`Client::send`] for a large body (a bundle upload): sent in chunks, with
    /// `progress(bytes_sent)` called as the transport takes each one.
    pub async fn send_streamed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, String)],
        limit: u64,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<Response, ClientError> {
        const CHUNK: usize = 256 << 10;
        let auth = self.authorization(&method, path, &body);
        let chunks: Vec<Bytes> = (0..body.len())
            .step_by(CHUNK)
            .map(|i| body.slice(i..(i + CHUNK).min(body.len())))
            .collect();
        let mut sent = 0u64;
        let stream = futures::stream::iter(chunks).map(move |c| {
            sent += c.len() as u64;
            progress(sent);
            Ok::<_, std::io::Error>(c)
        });
        let mut headers = headers.to_vec();
        headers.push(("content-length", body.len().to_string()));
        let body = reqwest::Body::wrap_stream(stream);
        // A stream cannot be sent twice: an upload goes to the URL in use only.
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.send_to(i, method, path, auth, Some(body), &headers, limit, None)
            .await
    }

    /// The `Authorization` header for a request, signed now with a fresh nonce.
    fn authorization(&self, method: &reqwest::Method, path: &str, body: &[u8]) -> String {
        let mut nonce = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        sign_request(
            &self.key,
            self.role,
            method_name(method),
            path,
            body,
            crate::base::clock::unix_now(),
            nonce,
        )
    }

    /// Sends a request signed afresh for each try, to the URL in use and then, while a try
    /// fails in a way another replica may not ([`moves_on`]), to the next ones in order; the
    /// client stays on the one that answered. One URL: exactly one try.
    async fn send_failover(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Bytes,
        headers: &[(&str, String)],
        limit: u64,
        timing: Option<DownloadTiming>,
    ) -> Result<Response, ClientError> {
        use std::sync::atomic::Ordering;
        let first = self.current.load(Ordering::Relaxed);
        let n = self.bases.len();
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let auth = self.authorization(&method, path, &body);
            let b = (!body.is_empty()).then(|| reqwest::Body::from(body.clone()));
            let r = self
                .send_to(i, method.clone(), path, auth, b, headers, limit, timing)
                .await;
            match r {
                Err(e) if n > 1 && moves_on(&e) => {
                    let next = &self.bases[(i + 1) % n];
                    tracing::warn!(url = %self.bases[i], next = %next, error = %e, "control plane unreachable; trying the next URL");
                    // Only if no other request moved it meanwhile.
                    let _ = self.current.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Url {
            url: self.base().to_owned(),
            problem: "no control-plane URL".into(),
        }))
    }

    // Private, with thin public wrappers; a parameter struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    async fn send_to(
        &self,
        base: usize,
        method: reqwest::Method,
        path: &str,
        auth: String,
        body: Option<reqwest::Body>,
        headers: &[(&str, String)],
        limit: u64,
        timing: Option<DownloadTiming>,
    ) -> Result<Response, ClientError> {
        let m = method_name(&method);
        let url = format!("{}{path}", self.bases[base % self.bases.len()]);
        let mut req = self
            .http
            .request(method, &url)
            .header(http::header::AUTHORIZATION, auth);
        if let Some(t) = timing {
            req = req.timeout(t.total);
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let transport = |source| ClientError::Transport {
            method: m,
            url: url.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        read_response(resp, m, url, limit, timing, true).await
    }

    /// `GET path` → JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let r = self
            .send(
                reqwest::Method::GET,
                path,
                Vec::new(),
                &[],
                MAX_JSON_RESPONSE,
            )
            .await?;
        self.decode("GET", path, &r.body)
    }

    /// `POST path` with a JSON body → JSON.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            method: "POST",
            url: format!("{}{path}", self.base()),
            problem: e.to_string(),
        })?;
        let r = self
            .send(
                reqwest::Method::POST,
                path,
                bytes,
                &[("content-type", "application/json".into())],
                MAX_JSON_RESPONSE,
            )
            .await?;
        self.decode("POST", path, &r.body)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: &[u8],
    ) -> Result<T, ClientError> {
        serde_json::from_slice(body).map_err(|e| ClientError::Decode {
            method,
            url: format!("{}{path}", self.base()),
            problem: e.to_string(),
        })
    }
}

/// A control-plane URL the client takes: `http(s)://host[:port]`.
fn check_base(base: &str) -> Result<(), ClientError> {
    let url = reqwest::Url::parse(base).map_err(|e| ClientError::Url {
        url: base.to_owned(),
        problem: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ClientError::Url {
            url: base.to_owned(),
            problem: "expected http(s)://host[:port]".into(),
        });
    }
    Ok(())
}

/// Whether a failed exchange may succeed on another replica: no connection, a timeout or a
/// broken transfer, or a proxy's or draining server's 502/503/504. Any other answer is the
/// control plane's, and another replica would give it too.
fn moves_on(e: &ClientError) -> bool {
    match e {
        ClientError::Transport { .. } | ClientError::TimedOut { .. } => true,
        ClientError::Status { status, .. } => matches!(status, 502..=504),
        _ => false,
    }
}

fn method_name(m: &reqwest::Method) -> &'static str {
    match *m {
        reqwest::Method::GET => "GET",
        reqwest::Method::POST => "POST",
        reqwest::Method::PUT => "PUT",
        reqwest::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Reads a response of at most `limit` bytes (within `timing`, for downloads). 2xx and 304
/// are returned; other statuses become [`ClientError::Status`], with the control plane's
/// `{"error": ...}` message when `api`, else the status's reason (a mirror's error page says
/// nothing the status does not).
async fn read_response(
    resp: reqwest::Response,
    m: &'static str,
    url: String,
    limit: u64,
    timing: Option<DownloadTiming>,
    api: bool,
) -> Result<Response, ClientError> {
    let transport = |source| ClientError::Transport {
        method: m,
        url: url.clone(),
        source,
    };
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let held = resp
        .headers()
        .get("preference-applied")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().starts_with("wait=")));
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(ClientError::TooLarge {
            method: m,
            url,
            limit,
        });
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    loop {
        let next = match timing {
            None => stream.next().await,
            Some(t) => tokio::time::timeout(t.stall, stream.next())
                .await
                .map_err(|_| ClientError::TimedOut {
                    method: m,
                    url: url.clone(),
                    what: format!(
                        "no data for {:?} after {} of {} bytes",
                        t.stall,
                        body.len(),
                        limit
                    ),
                })?,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(transport)?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(ClientError::TooLarge {
                method: m,
                url,
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    if (200..300).contains(&status) || status == 304 {
        return Ok(Response {
            status,
            etag,
            held,
            body: body.into(),
        });
    }
    let message = if api {
        serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
    } else {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error status")
            .to_owned()
    };
    Err(ClientError::Status {
        method: m,
        url,
        status,
        message,
    })
}
