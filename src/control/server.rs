//! The control plane's HTTP front door: HTTP/1.1 and HTTP/2 (hyper-util auto), plain on
//! loopback or rustls, request authentication, routing, body caps and the engine ticker.
//!
//! Owns: the control plane's door policy (connection cap, header and idle deadlines — the
//! accept loops, TLS handshakes in the connection's own task and the deadlines themselves are
//! the shared [`crate::serve::door`]'s), body read timeouts, `Content-Length` and
//! streaming body caps (JSON 1 MiB, bundles `max_bundle_size`), the `Authorization` check
//! (signature, clock window, nonce replay, role), JSON and error bodies, ranged bundle
//! downloads streamed from disk, the 200 ms rollout tick, and graceful shutdown.
//! Must not: hold state or decide policy ([`super::service`] does), or run blocking work on an
//! async worker — database and file work goes to the blocking pool.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::api::{self, CreateRollout, EnrollRequest, SyncReport, TokenRequest};
use super::config::{ListenLimits, TlsFiles};
use super::service::{Command, ControlError, ControlPlane, SyncReply};
use crate::base::clock::now_ms;
use crate::bundle::Digest;
use crate::bundle::request_auth::{RequestAuth, Role};
use crate::bundle::sign::{self, KeyId, VerifyingKey};
use crate::serve::certs::{CertPaths, CertSpec, CertStore, DefaultCert, provider};
use crate::serve::door::{Door, DoorPolicy, serve_small};

/// Largest JSON request body (reports, rollouts, enrolments are a few KiB).
pub const MAX_JSON_BODY: u64 = 1 << 20;
/// How long a JSON body may take to arrive.
pub const JSON_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a bundle upload may take: 64 MiB at ~100 KiB/s, a slow uplink.
pub const BUNDLE_BODY_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How often the rollout engine looks at the reports.
pub const TICK: Duration = Duration::from_millis(200);
/// How often expired nonces and tokens are dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(60);
/// How long in-flight requests get after SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(10);
/// Bundle downloads are streamed in chunks of this size.
const CHUNK: usize = 64 << 10;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What the request handlers share.
#[derive(Debug)]
pub struct Server {
    pub cp: Arc<ControlPlane>,
    pub max_bundle_size: u64,
    /// Set when the server drains: held syncs answer at once.
    stopping: watch::Sender<bool>,
    /// Syncs held open right now (`GET /v1/health` reports it).
    held: std::sync::atomic::AtomicUsize,
}

impl Server {
    pub fn new(cp: Arc<ControlPlane>, max_bundle_size: u64) -> Self {
        Self {
            cp,
            max_bundle_size,
            stopping: watch::channel(false).0,
            held: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

/// Why a TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error(transparent)]
    Cert(#[from] crate::serve::certs::CertError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A TLS acceptor (ALPN h2, http/1.1) serving the `[tls]` certificate, and its store (for
/// reloading on change or SIGHUP).
pub fn tls_acceptor(files: &TlsFiles) -> Result<(TlsAcceptor, Arc<CertStore>), ServerTlsError> {
    let store = Arc::new(CertStore::load(CertSpec {
        default: Some(DefaultCert::Files(CertPaths {
            cert: files.cert.clone(),
            key: files.key.clone(),
        })),
        tenants: Vec::new(),
    })?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(cfg)), store))
}

/// Serves `listeners` until `shutdown` resolves, with the rollout engine ticking meanwhile;
/// then stops accepting and gives open requests [`DRAIN`] to finish.
pub async fn run(
    listeners: Vec<TcpListener>,
    tls: Option<TlsAcceptor>,
    srv: Arc<Server>,
    limits: ListenLimits,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(64);
    let builder = Arc::new(builder);

    let ticker = tokio::spawn(engine(srv.cp.clone(), stop_rx.clone()));
    let door = Door::new(
        "control_plane",
        DoorPolicy {
            max_connections: limits.max_connections,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            max_per_ip: None,
        },
        None,
    );
    let srv_stopping = srv.stopping.clone();
    let svc = move |req| handle(srv.clone(), req);
    let server = tokio::spawn(serve_small(
        door, listeners, tls, builder, svc, stop_rx, DRAIN,
    ));
    shutdown.await;
    tracing::info!(deadline = ?DRAIN, "draining");
    srv_stopping.send_replace(true);
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = ticker.await;
}

/// The rollout engine: one tick every [`TICK`], on the blocking pool.
async fn engine(cp: Arc<ControlPlane>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_housekeeping = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let housekeeping = last_housekeeping.elapsed() >= HOUSEKEEPING;
        if housekeeping {
            last_housekeeping = std::time::Instant::now();
        }
        let cp = cp.clone();
        let r = tokio::task::spawn_blocking(move || {
            cp.tick(now_ms())?;
            if housekeeping {
                cp.housekeeping(crate::base::clock::unix_now())?;
            }
            Ok::<_, ControlError>(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "rollout engine step failed"),
            Err(e) => tracing::error!(error = %e, "rollout engine step panicked"),
        }
    }
}

// === routing ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Health,
    Key,
    Enroll,
    Sync,
    GetBundle(Digest),
    PutBundle(Digest),
    Tokens,
    Nodes,
    Revoke(String),
    CreateRollout,
    ListRollouts,
    GetRollout(u64),
    RolloutCommand(u64, &'static str),
}

impl Route {
    /// Who may call it: `None` is unauthenticated.
    fn roles(&self) -> Option<&'static [Role]> {
        match self {
            Self::Health | Self::Key => None,
            Self::Enroll | Self::Sync => Some(&[Role::Node]),
            Self::GetBundle(_) => Some(&[Role::Node, Role::Operator]),
            _ => Some(&[Role::Operator]),
        }
    }
}

fn route(method: &Method, path: &str) -> Result<Route, ControlError> {
    let not_found = || ControlError::NotFound(format!("no endpoint {path}"));
    let wrong_method =
        || ControlError::MethodNotAllowed(format!("{method} is not allowed on {path}"));
    let is = |m: &Method| method == m;
    let r = match path {
        api::HEALTH if is(&Method::GET) => Route::Health,
        api::KEY if is(&Method::GET) => Route::Key,
        api::ENROLL if is(&Method::POST) => Route::Enroll,
        api::SYNC if is(&Method::POST) => Route::Sync,
        api::TOKENS if is(&Method::POST) => Route::Tokens,
        api::NODES if is(&Method::GET) => Route::Nodes,
        api::ROLLOUTS if is(&Method::POST) => Route::CreateRollout,
        api::ROLLOUTS if is(&Method::GET) => Route::ListRollouts,
        api::HEALTH
        | api::KEY
        | api::ENROLL
        | api::SYNC
        | api::TOKENS
        | api::NODES
        | api::ROLLOUTS => return Err(wrong_method()),
        _ => {
            if let Some(d) = path.strip_prefix(api::BUNDLES) {
                let d: Digest = d.parse().map_err(|e: crate::bundle::DigestParseError| {
                    ControlError::BadRequest(e.to_string())
                })?;
                return match *method {
                    Method::GET => Ok(Route::GetBundle(d)),
                    Method::PUT => Ok(Route::PutBundle(d)),
                    _ => Err(wrong_method()),
                };
            }
            if let Some(rest) = path
                .strip_prefix(api::NODES)
                .and_then(|r| r.strip_prefix('/'))
            {
                let id = rest.strip_suffix("/revoke").ok_or_else(not_found)?;
                if !is(&Method::POST) {
                    return Err(wrong_method());
                }
                return Ok(Route::Revoke(id.to_owned()));
            }
            if let Some(rest) = path
                .strip_prefix(api::ROLLOUTS)
                .and_then(|r| r.strip_prefix('/'))
            {
                let (id, cmd) = match rest.split_once('/') {
                    Some((id, cmd)) => (id, Some(cmd)),
                    None => (rest, None),
                };
                let id: u64 = id.parse().map_err(|_| not_found())?;
                return match (cmd, method) {
                    (None, &Method::GET) => Ok(Route::GetRollout(id)),
                    (Some("pause"), &Method::POST) => Ok(Route::RolloutCommand(id, "pause")),
                    (Some("resume"), &Method::POST) => Ok(Route::RolloutCommand(id, "resume")),
                    (Some("abort"), &Method::POST) => Ok(Route::RolloutCommand(id, "abort")),
                    (None | Some("pause" | "resume" | "abort"), _) => Err(wrong_method()),
                    _ => Err(not_found()),
                };
            }
            return Err(not_found());
        }
    };
    Ok(r)
}

// === handlers ===

async fn handle(srv: Arc<Server>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let resp = match dispatch(&srv, req).await {
        Ok(r) => r,
        Err(e) => {
            if let ControlError::Internal(detail) = &e {
                tracing::error!(%method, %path, error = %detail, "request failed");
            } else {
                tracing::debug!(%method, %path, status = e.status(), error = %e, "request refused");
            }
            error_response(&e)
        }
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), elapsed = ?started.elapsed(), "request");
    resp
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Internal(format!("worker failed: {e}")))?
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::BadRequest(format!("invalid JSON: {e}")))
}

async fn dispatch(
    srv: &Arc<Server>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ControlError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_owned());
    let route = route(&method, &path)?;
    let Some(roles) = route.roles() else {
        return Ok(match route {
            Route::Key => text_response(StatusCode::OK, srv.cp.public_key_text()),
            _ => json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "held_syncs": srv.held.load(std::sync::atomic::Ordering::Relaxed),
                }),
            ),
        });
    };
    let auth = RequestAuth::parse(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
    .map_err(|e| ControlError::Unauthorized(e.to_string()))?;
    if !roles.contains(&auth.role) {
        return Err(ControlError::Forbidden(format!(
            "{method} {path} is not for {} keys",
            auth.role
        )));
    }
    // The signer is resolved before the body is read: nobody unknown gets to upload.
    let key: Option<VerifyingKey> = match auth.role {
        Role::Operator => Some(srv.cp.operator_key(&auth.key).cloned().ok_or_else(|| {
            ControlError::Unauthorized(format!(
                "operator key {} is not configured on this control plane",
                auth.key
            ))
        })?),
        // Enrolment is signed by the key in its body.
        Role::Node if route == Route::Enroll => None,
        Role::Node => match srv.cp.cached_node_key(&auth.key) {
            Some(k) => Some(k),
            None => {
                let cp = srv.cp.clone();
                let id = auth.key;
                Some(blocking(move || cp.node_key(&id)).await?.0)
            }
        },
    };
    let (limit, timeout) = match route {
        Route::PutBundle(_) => (srv.max_bundle_size, BUNDLE_BODY_TIMEOUT),
        _ => (MAX_JSON_BODY, JSON_BODY_TIMEOUT),
    };
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit, timeout).await?;
    let mut enroll = None;
    let key = match key {
        Some(k) => k,
        None => {
            let r: EnrollRequest = parse_json(&body)?;
            let k = sign::parse_public_key(r.public_key.trim_end())
                .map_err(|e| ControlError::BadRequest(format!("public_key: {e}")))?;
            if k.id() != auth.key {
                return Err(ControlError::Unauthorized(format!(
                    "enrolment must be signed by the enrolling key {}, not {}",
                    k.id(),
                    auth.key
                )));
            }
            enroll = Some(r);
            k
        }
    };
    let now = crate::base::clock::unix_now();
    auth.verify(&key, method.as_str(), &path_and_query, &body, now)
        .map_err(|e| ControlError::Unauthorized(e.to_string()))?;
    // A sync (most requests by far) checks its nonce and the node in the same blocking call
    // as the sync itself: one hand-off to the blocking pool instead of three.
    if route != Route::Sync {
        let (cp, nonce) = (srv.cp.clone(), auth.nonce.clone());
        blocking(move || cp.check_nonce(&nonce, now)).await?;
        if auth.role == Role::Node && route != Route::Enroll && srv.cp.is_revoked(&auth.key) {
            return Err(ControlError::Forbidden(format!(
                "node {} is revoked",
                auth.key
            )));
        }
    }
    let cp = srv.cp.clone();
    match route {
        Route::Enroll => {
            let r = enroll.ok_or_else(|| ControlError::Internal("enrolment body lost".into()))?;
            let resp = blocking(move || cp.enroll(r, &key, now)).await?;
            Ok(json_response(StatusCode::OK, &resp))
        }
        Route::Sync => {
            let report: SyncReport = parse_json(&body)?;
            let inm = if_none_match(&parts.headers);
            let hold = prefer_wait(&parts.headers).map(|w| w.min(cp.max_sync_hold()));
            let id = auth.key;
            let reply = {
                let (cp, report, nonce) = (cp.clone(), report.clone(), auth.nonce.clone());
                // `sync` refuses a revoked node itself.
                blocking(move || {
                    cp.check_nonce(&nonce, now)?;
                    cp.sync(&id, report, inm, now)
                })
                .await?
            };
            let reply = match (reply, hold) {
                (SyncReply::NotModified(seq), Some(hold)) if !hold.is_zero() => {
                    held_sync(srv, id, seq, report, inm, hold).await?
                }
                (reply, _) => reply,
            };
            let mut r = match reply {
                SyncReply::NotModified(seq) => {
                    with_etag(empty(StatusCode::NOT_MODIFIED), &format!("\"{seq}\""))
                }
                SyncReply::Desired { sequence, envelope } => {
                    let mut r = bytes_response(StatusCode::OK, envelope.into());
                    set(&mut r, header::CONTENT_TYPE, "application/json");
                    with_etag(r, &format!("\"{sequence}\""))
                }
            };
            if let Some(hold) = hold {
                let applied = format!("wait={}", hold.as_secs());
                set(&mut r, PREFERENCE_APPLIED, &applied);
            }
            Ok(r)
        }
        Route::GetBundle(d) => get_bundle(&cp, &d, &parts.headers).await,
        Route::PutBundle(d) => {
            let sig = parts
                .headers
                .get(api::BUNDLE_SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let resp = blocking(move || cp.upload(&d, &body, sig.as_deref())).await?;
            Ok(json_response(StatusCode::OK, &resp))
        }
        Route::Tokens => {
            let req: TokenRequest = parse_json(&body)?;
            let resp = blocking(move || cp.create_tokens(&req, now)).await?;
            Ok(json_response(StatusCode::OK, &resp))
        }
        Route::Nodes => {
            let nodes = blocking(move || Ok(cp.nodes(now))).await?;
            Ok(json_response(StatusCode::OK, &nodes))
        }
        Route::Revoke(id) => {
            let node = blocking(move || cp.revoke(&id)).await?;
            Ok(json_response(StatusCode::OK, &node))
        }
        Route::CreateRollout => {
            let req: CreateRollout = parse_json(&body)?;
            let status = blocking(move || cp.create_rollout(&req, now_ms())).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        Route::ListRollouts => {
            let all = blocking(move || Ok(cp.rollouts())).await?;
            Ok(json_response(StatusCode::OK, &all))
        }
        Route::GetRollout(id) => {
            let s = blocking(move || cp.rollout(id)).await?;
            Ok(json_response(StatusCode::OK, &s))
        }
        Route::RolloutCommand(id, cmd) => {
            let by = auth.key.to_string();
            let s = blocking(move || {
                let c = match cmd {
                    "pause" => Command::Pause,
                    "resume" => Command::Resume,
                    _ => Command::Abort { by: &by },
                };
                cp.command(id, c, now_ms())
            })
            .await?;
            Ok(json_response(StatusCode::OK, &s))
        }
        Route::Health | Route::Key => Err(ControlError::Internal("unreachable route".into())),
    }
}

/// Holds a sync that had nothing new for node `id` (at `sequence`) until its assignments
/// change, `hold` passes or the server drains, then answers it as a fresh sync would. The
/// report was recorded by the first pass; the second records it again (and the node's
/// `last_seen` with it).
async fn held_sync(
    srv: &Arc<Server>,
    id: KeyId,
    sequence: u64,
    report: SyncReport,
    inm: Option<u64>,
    hold: Duration,
) -> Result<SyncReply, ControlError> {
    use std::sync::atomic::Ordering;
    struct Held<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    srv.held.fetch_add(1, Ordering::Relaxed);
    let _held = Held(&srv.held);
    let deadline = tokio::time::Instant::now() + hold;
    let wakeup = srv.cp.sync_wakeup(&id);
    let mut stopping = srv.stopping.subscribe();
    loop {
        // Registered before the check: a change between the two still wakes this one.
        let notified = wakeup.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = crate::base::clock::unix_now();
        // On the blocking pool: the records' lock may be held across a flush. Only this
        // node's changes wake it, so a push to a wave costs one check per node in the wave.
        let cp = srv.cp.clone();
        if blocking(move || Ok(cp.sync_news(&id, sequence, now))).await? {
            let cp = srv.cp.clone();
            return blocking(move || cp.sync(&id, report, inm, now)).await;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => return Ok(SyncReply::NotModified(sequence)),
            _ = stopping.wait_for(|s| *s) => return Ok(SyncReply::NotModified(sequence)),
        }
    }
}

/// `Prefer: wait=N` (RFC 7240): how long the client lets a sync be held.
fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim().eq_ignore_ascii_case("wait"))
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .map(Duration::from_secs)
}

const PREFER: header::HeaderName = header::HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: header::HeaderName =
    header::HeaderName::from_static("preference-applied");

/// Reads a request body of at most `limit` bytes within `timeout`: `Content-Length` is checked
/// first (413 without reading), then the stream as it arrives (chunked bodies).
async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, ControlError> {
    let too_large = || ControlError::TooLarge(format!("request body is larger than {limit} bytes"));
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ControlError::SlowClient(format!(
            "request body not received within {timeout:?}"
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ControlError::BadRequest(format!("reading the body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn if_none_match(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.trim_matches('"').parse().ok()
}

/// A byte range request: `bytes=a-b`, `bytes=a-` or `bytes=-n`.
#[derive(Debug, PartialEq, Eq)]
enum RangeReq {
    /// No (usable) Range header: the whole file.
    Full,
    /// Inclusive start and end.
    Part(u64, u64),
    Unsatisfiable,
}

fn parse_range(value: Option<&str>, size: u64) -> RangeReq {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    // Several ranges: serving the whole file is allowed (RFC 9110 §14.2) and simpler.
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match parse(b) {
            Some(0) => RangeReq::Unsatisfiable,
            Some(n) if size > 0 => RangeReq::Part(size.saturating_sub(n), size - 1),
            Some(_) => RangeReq::Unsatisfiable,
            None => RangeReq::Full,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeReq::Full;
            };
            let end = if b.is_empty() {
                Some(size.saturating_sub(1))
            } else {
                parse(b)
            };
            match end {
                None => RangeReq::Full,
                Some(_) if start >= size => RangeReq::Unsatisfiable,
                Some(end) if end < start => RangeReq::Full,
                Some(end) => RangeReq::Part(start, end.min(size - 1)),
            }
        }
        (true, true) => RangeReq::Full,
    }
}

async fn get_bundle(
    cp: &ControlPlane,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response<Body>, ControlError> {
    let path = cp.bundle_path(digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ControlError::NotFound(format!("no bundle {digest}")));
        }
        Err(e) => return Err(ControlError::Internal(format!("{}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| ControlError::Internal(format!("{}: {e}", path.display())))?
        .len();
    let etag = format!("\"{digest}\"");
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, start, len) = match range {
        RangeReq::Full => (StatusCode::OK, 0, size),
        RangeReq::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeReq::Unsatisfiable => {
            let mut r = json_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                &api::ApiError {
                    error: format!("range not satisfiable; the bundle is {size} bytes"),
                },
            );
            set(&mut r, header::CONTENT_RANGE, &format!("bytes */{size}"));
            return Ok(r);
        }
    };
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| ControlError::Internal(format!("{}: {e}", path.display())))?;
    }
    let stream = futures::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = vec![0u8; want];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "bundle file shrank while being sent",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    });
    // Every bundle byte the control plane serves is named here, so an operator (and the
    // mirror tests) can see what the mirrors took off it.
    tracing::info!(%digest, bytes = len, offset = start, "sending bundle");
    let mut r = Response::new(StreamBody::new(stream.boxed()).boxed_unsync());
    *r.status_mut() = status;
    set(&mut r, header::CONTENT_TYPE, "application/octet-stream");
    set(&mut r, header::CONTENT_LENGTH, &len.to_string());
    set(&mut r, header::ACCEPT_RANGES, "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            &mut r,
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    Ok(with_etag(r, &etag))
}

// === responses ===

fn set(r: &mut Response<Body>, name: header::HeaderName, value: &str) {
    if let Ok(v) = header::HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn with_etag(mut r: Response<Body>, etag: &str) -> Response<Body> {
    set(&mut r, header::ETAG, etag);
    r
}

fn bytes_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    bytes_response(status, Bytes::new())
}

fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_vec(v) {
        Ok(b) => {
            let mut r = bytes_response(status, b.into());
            set(&mut r, header::CONTENT_TYPE, "application/json");
            r
        }
        Err(e) => error_response(&ControlError::Internal(e.to_string())),
    }
}

fn text_response(status: StatusCode, text: String) -> Response<Body> {
    let mut r = bytes_response(status, text.into());
    set(&mut r, header::CONTENT_TYPE, "text/plain; charset=utf-8");
    r
}

fn error_response(e: &ControlError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&api::ApiError {
        error: e.public_message(),
    })
    .unwrap_or_default();
    let mut r = bytes_response(status, body.into());
    set(&mut r, header::CONTENT_TYPE, "application/json");
    if status == StatusCode::UNAUTHORIZED {
        set(
            &mut r,
            header::WWW_AUTHENTICATE,
            crate::bundle::request_auth::SCHEME,
        );
    }
    r
}

/// Binds every address, naming the one that failed.
pub async fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, std::io::Error> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        out.push(
            TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Part(0, 3));
        assert_eq!(parse_range(Some("bytes=4-"), 10), Part(4, 9));
        assert_eq!(parse_range(Some("bytes=4-100"), 10), Part(4, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Part(0, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn routes() {
        let d = crate::bundle::digest(b"x");
        let p = format!("{}{d}", api::BUNDLES);
        assert_eq!(route(&Method::GET, &p).unwrap(), Route::GetBundle(d));
        assert_eq!(route(&Method::PUT, &p).unwrap(), Route::PutBundle(d));
        assert_eq!(route(&Method::DELETE, &p).unwrap_err().status(), 405);
        assert_eq!(
            route(&Method::GET, "/v1/bundles/nope")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            route(&Method::POST, "/v1/rollouts/3/abort").unwrap(),
            Route::RolloutCommand(3, "abort")
        );
        assert_eq!(
            route(&Method::GET, "/v1/rollouts/3").unwrap(),
            Route::GetRollout(3)
        );
        assert_eq!(
            route(&Method::POST, "/v1/rollouts/3/x")
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(
            route(&Method::GET, "/v1/rollouts/x").unwrap_err().status(),
            404
        );
        assert_eq!(
            route(&Method::POST, "/v1/nodes/00112233aabbccdd/revoke").unwrap(),
            Route::Revoke("00112233aabbccdd".into())
        );
        assert_eq!(route(&Method::GET, "/v1/sync").unwrap_err().status(), 405);
        assert_eq!(route(&Method::GET, "/nope").unwrap_err().status(), 404);
        assert_eq!(route(&Method::GET, api::HEALTH).unwrap().roles(), None);
    }

    #[test]
    fn prefer_wait_reads_rfc_7240() {
        let h = |v: &[&str]| {
            let mut m = HeaderMap::new();
            for v in v {
                m.append(PREFER, v.parse().unwrap());
            }
            prefer_wait(&m)
        };
        assert_eq!(h(&[]), None);
        assert_eq!(h(&["wait=10"]), Some(Duration::from_secs(10)));
        assert_eq!(
            h(&["respond-async, Wait = 7"]),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            h(&["return=minimal", "wait=3"]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(h(&["wait=soon"]), None);
        assert_eq!(h(&["wait=-1"]), None);
    }

    #[test]
    fn etags() {
        let mut h = HeaderMap::new();
        assert_eq!(if_none_match(&h), None);
        h.insert(header::IF_NONE_MATCH, "\"42\"".parse().unwrap());
        assert_eq!(if_none_match(&h), Some(42));
        h.insert(header::IF_NONE_MATCH, "W/\"7\"".parse().unwrap());
        assert_eq!(if_none_match(&h), Some(7));
        h.insert(header::IF_NONE_MATCH, "*".parse().unwrap());
        assert_eq!(if_none_match(&h), None);
    }
}
