//! The HTTP front door: cleartext TCP listeners (HTTP/1.1, h2c prior knowledge), TLS listeners
//! (HTTP/1.1 and HTTP/2 by ALPN) and QUIC endpoints (HTTP/3) on the TLS ports, all routing each
//! request through one pipeline ([`ServeState::handle`]) to a component.
//!
//! Owns: binding, accept loops (through [`door`]: a connection permit is taken *before* accept,
//! so a flood waits in the kernel backlog or quinn's bounded queue rather than in our memory;
//! header and idle deadlines; eviction under pressure), handing
//! connections to serving threads, per-connection tasks, request ids, `Alt-Svc`, the
//! client-visible error bodies, per-request metrics, the protocol-independent request rules
//! ([`guard`]: Host, `HEAD`, request bodies over their limit), and graceful drain with a deadline
//! for every protocol.
//! Must not: compile wasm, verify signatures, read config files, or do a TLS or QUIC handshake
//! in an accept loop.
#![forbid(unsafe_code)]

pub mod certs;
pub mod door;
pub mod guard;
pub mod h3;
pub mod router;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use crate::ops::metrics::{Metrics, Protocol, RequestMetrics};
use crate::runtime::component::{
    AppComponent, GuestCpu, RequestCtx, ResponseBody, fmt_request_id, plain_response,
};
use crate::runtime::error::{Cause, RequestError, RequestErrorKind};
pub use router::{HostPattern, Router};

/// Shared by every connection: the current routing table (swapped whole on reload), metrics and
/// the request-id counter.
pub struct ServeState {
    router: RwLock<Arc<Router>>,
    metrics: Metrics,
    /// Metrics of requests no app serves (404s).
    unrouted: RequestMetrics,
    next_id: AtomicU64,
    /// High bits of request ids: differs per process start so ids do not repeat across restarts.
    id_base: u64,
    /// The serving threads' runtimes while [`serve`] runs (for the liveness probe).
    serving: std::sync::Mutex<Vec<tokio::runtime::Handle>>,
}

impl std::fmt::Debug for ServeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeState").finish_non_exhaustive()
    }
}

impl ServeState {
    pub fn new(router: Router, metrics: Metrics) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        metrics
            .components_loaded
            .set(router.component_count() as i64);
        Self {
            router: RwLock::new(Arc::new(router)),
            unrouted: RequestMetrics::new(&metrics, None, "-", "-"),
            metrics,
            next_id: AtomicU64::new(0),
            id_base: (nanos ^ u64::from(std::process::id())) << 24,
            serving: Default::default(),
        }
    }

    /// Liveness probe (the systemd watchdog's): true when every serving thread runs a no-op task
    /// within `within` — a thread wedged in a guest or a blocking call fails it. False when
    /// [`serve`] is not running.
    pub async fn serving_threads_answer(&self, within: Duration) -> bool {
        let handles = self
            .serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        !handles.is_empty() && crate::ops::systemd::runtimes_answer(&handles, within).await
    }

    fn set_serving_threads(&self, handles: Vec<tokio::runtime::Handle>) {
        *self
            .serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = handles;
    }

    /// The current routing table.
    pub fn router(&self) -> Arc<Router> {
        self.router
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Atomically replaces the routing table: new requests use `router`, requests already routed
    /// finish on the components they hold.
    pub fn swap_router(&self, router: Router) {
        self.metrics
            .components_loaded
            .set(router.component_count() as i64);
        *self
            .router
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(router);
    }

    /// Answers one request: check its host, route, run, map errors, record metrics. Every
    /// protocol comes through here — hyper's bodies for HTTP/1.1 and HTTP/2, [`h3::H3Body`] for
    /// HTTP/3 — so routing, limits, errors and metrics cannot drift apart. `https` is true for
    /// TLS and QUIC connections (the guest sees the `https` scheme).
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        https: bool,
    ) -> http::Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let start = Instant::now();
        let id = self
            .id_base
            .wrapping_add(self.next_id.fetch_add(1, Ordering::Relaxed));
        let protocol = match req.version() {
            http::Version::HTTP_3 => Protocol::Http3,
            http::Version::HTTP_2 => Protocol::Http2,
            http::Version::HTTP_10 => Protocol::Http10,
            _ => Protocol::Http1,
        };
        let head = req.method() == http::Method::HEAD;
        // For the log lines; both clones are reference-count bumps.
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let router = self.router();
        // The head alone decides refusal (400) and route (404 without one); the fuzz target
        // `http_head` drives the same function.
        let decision = router.route_request(&req);
        let component = decision.as_ref().ok().and_then(|d| d.target.cloned());
        let host = decision.map(|d| d.host);
        let mut resp = match (host, &component) {
            (Err(e), _) => {
                self.client_error(e.label(), id, &method, uri.path(), &e);
                plain_response(
                    http::StatusCode::BAD_REQUEST,
                    format!("bad request: {e} (request id {})\n", fmt_id(id)),
                )
            }
            (Ok(host), None) => {
                tracing::debug!(request_id = %fmt_id(id), host = host.unwrap_or(""), path = uri.path(), "no route");
                plain_response(
                    http::StatusCode::NOT_FOUND,
                    format!("no app serves {}\n", uri.path()),
                )
            }
            (Ok(host), Some(c)) => {
                let missing = host.is_none();
                let req = with_default_authority(req, missing);
                self.run(c, req, id, https, &method, uri.path()).await
            }
        };
        if head {
            let body = guard::head_body(resp.body());
            *resp.body_mut() = body;
        }
        if let Ok(v) = http::HeaderValue::from_str(&fmt_id(id)) {
            resp.headers_mut().insert("x-request-id", v);
        }
        let metrics = component
            .as_ref()
            .map_or(&self.unrouted, |c| &c.request_metrics);
        let elapsed = start.elapsed();
        metrics.record(resp.status(), protocol, elapsed.as_secs_f64());
        // One line per request at debug (the response head; the body may still be streaming, so
        // `cpu_micros` is the guest's CPU time up to the head).
        tracing::debug!(
            request_id = %fmt_id(id),
            %method,
            path = uri.path(),
            component = component.as_ref().map_or("-", |c| &*c.label),
            protocol = protocol.label(),
            status = resp.status().as_u16(),
            micros = elapsed.as_micros() as u64,
            cpu_micros = resp
                .extensions()
                .get::<GuestCpu>()
                .map_or(0, |c| c.get().as_micros() as u64),
            "request"
        );
        resp
    }

    /// Runs `req` on `c` and maps its failure to an error response. A request body that may
    /// grow past the component's `max_request_body` is watched: past it, a response not yet
    /// sent becomes a 413 and one already streaming is aborted (see [`guard::cut_if_over`]).
    async fn run<B>(
        &self,
        c: &Arc<AppComponent>,
        req: http::Request<B>,
        id: u64,
        https: bool,
        method: &http::Method,
        path: &str,
    ) -> http::Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let ctx = RequestCtx { id, https };
        let fail = |e: RequestError| {
            if e.kind.cause() == Cause::Client {
                self.metrics
                    .client_errors
                    .with_label_values(&[e.kind.label()])
                    .inc();
            }
            log_failure(&e, id, &c.label, method, path);
            error_response(&e, id)
        };
        if req.body().is_end_stream() {
            return c.handle(req, ctx).await.unwrap_or_else(fail);
        }
        let limit = c.limits.max_request_body;
        let over = guard::OverLimit::default();
        let req = req.map(|b| guard::WatchedBody::new(b, limit, over.clone()));
        let resp = match c.handle(req, ctx).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        if over.tripped() {
            // Over the limit before anything was sent: the client gets its 413.
            return fail(RequestError::new(
                RequestErrorKind::BodyTooLarge,
                format!("request body exceeded max_request_body {limit}"),
            ));
        }
        let (errors, label, rid) = (
            self.metrics.client_errors.clone(),
            c.label.clone(),
            fmt_id(id),
        );
        resp.map(|body| {
            guard::cut_if_over(body, over, limit, move || {
                errors.with_label_values(&["body_too_large"]).inc();
                tracing::info!(request_id = %rid, component = %label, kind = "body_too_large", limit, "request body exceeded max_request_body after the response started; response aborted");
            })
        })
    }

    /// Counts and logs a request the front door refuses as the client's fault.
    fn client_error(
        &self,
        label: &str,
        id: u64,
        method: &http::Method,
        path: &str,
        e: &dyn std::fmt::Display,
    ) {
        self.metrics.client_errors.with_label_values(&[label]).inc();
        tracing::info!(request_id = %fmt_id(id), %method, path, kind = label, detail = %e, "request refused");
    }
}

/// An HTTP/1.0 request without `Host` gets [`guard::DEFAULT_AUTHORITY`] as its `Host`, so the
/// guest sees an authority as it does for every other request.
fn with_default_authority<B>(mut req: http::Request<B>, missing: bool) -> http::Request<B> {
    if missing {
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static(guard::DEFAULT_AUTHORITY),
        );
    }
    req
}

/// The request id as the `x-request-id` header, error bodies and every log line show it.
fn fmt_id(id: u64) -> String {
    fmt_request_id(id).to_string()
}

fn log_failure(e: &RequestError, id: u64, label: &str, method: &http::Method, path: &str) {
    use crate::ops::logging::{LogDecision, LogLimiter};
    // A guest that traps on every request must not turn the journal into a copy of the traffic:
    // per cause, 20 lines per 10 s, then a count of what was left out.
    static GUEST: LogLimiter = LogLimiter::new(20, Duration::from_secs(10));
    static HOST: LogLimiter = LogLimiter::new(20, Duration::from_secs(10));
    let rid = fmt_id(id);
    // `detail` may hold a multi-line wasm backtrace; Debug-quoting keeps each event on one line
    // (journald, grep, and the per-line rate limit all assume that).
    match e.kind.cause() {
        Cause::Client | Cause::Overload => {
            tracing::info!(request_id = %rid, component = label, %method, path, kind = e.kind.label(), detail = ?e.detail, "request refused")
        }
        Cause::Guest | Cause::Timeout => {
            if let LogDecision::Log { suppressed } = GUEST.check() {
                tracing::warn!(request_id = %rid, component = label, %method, path, kind = e.kind.label(), detail = ?e.detail, suppressed, "guest failed")
            }
        }
        Cause::Host => {
            if let LogDecision::Log { suppressed } = HOST.check() {
                tracing::error!(request_id = %rid, component = label, %method, path, kind = e.kind.label(), detail = ?e.detail, suppressed, "internal error")
            }
        }
    }
}

/// The client sees a status, a generic sentence and the request id — never guest internals.
fn error_response(e: &RequestError, id: u64) -> http::Response<ResponseBody> {
    let mut resp = plain_response(
        e.kind.status(),
        format!("{} (request id {})\n", e.kind.public_message(), fmt_id(id)),
    );
    if e.kind.cause() == Cause::Overload {
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    resp
}

/// Binds every address, failing with the address that could not be bound.
pub async fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
        out.push(l);
    }
    Ok(out)
}

/// A socket that could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}{what}: {source}")]
    Io {
        addr: SocketAddr,
        /// "" for TCP, " (UDP, HTTP/3)" for QUIC.
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("listen.https needs TLS certificates, but none were set up")]
    NoTls,
}

/// Every tenant socket, bound before serving starts (so the addresses can be announced).
#[derive(Default)]
pub struct Listeners {
    /// Cleartext HTTP/1.1 and h2c.
    pub http: Vec<TcpListener>,
    /// TLS: HTTP/1.1 and HTTP/2 by ALPN, each with its HTTP/3 endpoint when h3 is on.
    pub https: Vec<HttpsListener>,
    tls: Option<tls::Handshaker>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("http", &self.http_addrs())
            .field("https", &self.https_addrs())
            .field("h3", &self.h3_addrs())
            .finish()
    }
}

/// A TLS listener and, with HTTP/3 on, the QUIC endpoint on the same port number.
pub struct HttpsListener {
    pub tcp: TcpListener,
    pub quic: Option<quinn::Endpoint>,
}

impl From<Vec<TcpListener>> for Listeners {
    fn from(http: Vec<TcpListener>) -> Self {
        Self {
            http,
            ..Self::default()
        }
    }
}

impl Listeners {
    /// Binds the cleartext listeners and, with `tls`, the TLS listeners and their QUIC
    /// endpoints. A TLS listener on port 0 gets a free port that is also free for UDP, so
    /// HTTP/3 always shares the TLS port number (what `Alt-Svc` advertises).
    pub async fn bind(
        http: &[SocketAddr],
        https: &[SocketAddr],
        tls: Option<&tls::TlsSetup>,
    ) -> Result<Self, BindError> {
        let io = |addr: SocketAddr, what: &'static str| {
            move |source| BindError::Io { addr, what, source }
        };
        let mut out = Listeners::default();
        for &a in http {
            out.http
                .push(TcpListener::bind(a).await.map_err(io(a, ""))?);
        }
        if https.is_empty() {
            return Ok(out);
        }
        let tls = tls.ok_or(BindError::NoTls)?;
        out.tls = Some(tls.handshaker());
        for &a in https {
            out.https.push(bind_https(a, tls.quic.as_ref()).await?);
        }
        Ok(out)
    }

    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.http
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn https_addrs(&self) -> Vec<SocketAddr> {
        self.https
            .iter()
            .filter_map(|l| l.tcp.local_addr().ok())
            .collect()
    }

    pub fn h3_addrs(&self) -> Vec<SocketAddr> {
        self.https
            .iter()
            .filter_map(|l| l.quic.as_ref()?.local_addr().ok())
            .collect()
    }
}

/// Port-0 retries: another process may hold the UDP port the kernel gave us for TCP.
const SAME_PORT_ATTEMPTS: usize = 16;

async fn bind_https(
    addr: SocketAddr,
    quic: Option<&quinn::ServerConfig>,
) -> Result<HttpsListener, BindError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError::Io {
                addr,
                what: "",
                source,
            })?;
        let Some(cfg) = quic else {
            return Ok(HttpsListener { tcp, quic: None });
        };
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(addr.port());
        let udp_addr = SocketAddr::new(addr.ip(), port);
        let udp_err = |source| BindError::Io {
            addr: udp_addr,
            what: " (UDP, HTTP/3)",
            source,
        };
        let socket = match std::net::UdpSocket::bind(udp_addr) {
            Ok(s) => s,
            Err(e)
                if addr.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < SAME_PORT_ATTEMPTS =>
            {
                continue;
            }
            Err(e) => return Err(udp_err(e)),
        };
        socket.set_nonblocking(true).map_err(udp_err)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(cfg.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(udp_err)?;
        return Ok(HttpsListener {
            tcp,
            quic: Some(endpoint),
        });
    }
}

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Connection cap (TCP and QUIC together), header and idle deadlines, per-client cap.
    pub door: door::DoorPolicy,
    /// How long in-flight requests get after the shutdown signal.
    pub drain: Duration,
    /// Serving threads (each a single-threaded runtime); at least 1.
    pub threads: usize,
}

/// What a connection needs to know about the listener that accepted it.
struct ListenerCtx {
    /// `Some` on TLS listeners: the handshake runs in the connection's task.
    tls: Option<tls::Handshaker>,
    /// `Alt-Svc` for every response, when HTTP/3 is on.
    alt_svc: Option<http::HeaderValue>,
}

/// An accepted connection on its way to a serving thread.
enum Accepted {
    Tcp {
        tcp: std::net::TcpStream,
        peer: SocketAddr,
        /// The permit and the door's registry entry.
        ticket: door::Ticket,
        watcher: Watcher,
        listener: Arc<ListenerCtx>,
    },
    Quic {
        permit: OwnedSemaphorePermit,
        /// Boxed: a connection attempt is a large struct, and TCP connections are the common
        /// case on this channel.
        incoming: Box<quinn::Incoming>,
        handshaking: h3::Handshaking,
        handshake_timeout: Duration,
        drain: watch::Receiver<bool>,
    },
}

/// Test-only fault injection, compiled into debug builds only (release binaries have none):
/// `OUTPOST_DEBUG_WEDGE_SERVING_THREAD_AFTER_MS=N` blocks serving thread 0 for good N ms after
/// start, as a host bug would — what the systemd watchdog test needs, since no guest can.
#[cfg(debug_assertions)]
fn debug_failpoints(handles: &[tokio::runtime::Handle]) {
    let Some(ms) = std::env::var("OUTPOST_DEBUG_WEDGE_SERVING_THREAD_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if let Some(h) = handles.first() {
        h.spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            tracing::warn!("failpoint: wedging serving thread 0");
            loop {
                std::thread::park();
            }
        });
    }
}

/// The sending side of one serving thread.
struct ServingThread {
    tx: mpsc::UnboundedSender<Accepted>,
    /// Connections this thread has open; new ones go to the thread with the fewest.
    open: Arc<AtomicUsize>,
}

/// Serves tenant traffic on `listeners` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `opts.drain`. Returns the number of connections that were
/// still open when the deadline passed (and were closed).
///
/// Threading: the accept loops run on the calling runtime and hand each connection to one of
/// `opts.threads` serving threads — the one with the fewest open connections. Each serving
/// thread is a single-threaded tokio runtime, so a connection, its TLS or QUIC handshake, its
/// requests and the guests answering them never leave the thread that got it: no cross-thread
/// wake-ups per request (about a fifth of the throughput of a work-stealing pool, see
/// `docs/runtime.md`). A CPU-bound guest still shares its thread fairly: it parks in the
/// thread's fair lane at epoch ticks (`runtime::fair`). Assignment by open-connection count rather than `SO_REUSEPORT` hashing
/// keeps a few long-lived keep-alive connections from piling onto one core.
///
/// Drain: TCP connections finish their in-flight requests (hyper's graceful shutdown); QUIC
/// endpoints stop taking connections, each connection sends GOAWAY, lets its streams finish and
/// closes with `H3_NO_ERROR`; at the deadline the endpoints close what is left with the same
/// code and get [`h3::CLOSE_GRACE`] to tell the clients.
pub async fn serve(
    listeners: Listeners,
    state: Arc<ServeState>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<usize> {
    let graceful = Arc::new(GracefulShutdown::new());
    // QUIC connections hold a receiver each; `closed()` tells when the last one is gone.
    let (quic_drain, _) = watch::channel(false);
    let quic_drain = Arc::new(quic_drain);
    let door = door::Door::new(
        "tenant",
        opts.door,
        Some(state.metrics.connections_closed.clone()),
    );
    let max_connections = door.policy().max_connections;
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut threads = Vec::with_capacity(opts.threads.max(1));
    let mut joins = Vec::with_capacity(opts.threads.max(1));
    let mut handles = Vec::with_capacity(opts.threads.max(1));
    for t in 0..opts.threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start serving thread {t}: {e}"))?;
        handles.push(rt.handle().clone());
        let (state, thread_open, stop) = (state.clone(), open.clone(), stop_rx.clone());
        let join = std::thread::Builder::new()
            .name(format!("outpost-serve-{t}"))
            .spawn(move || rt.block_on(serving_thread(rx, state, thread_open, stop)))
            .map_err(|e| anyhow::anyhow!("cannot start serving thread {t}: {e}"))?;
        threads.push(ServingThread { tx, open });
        joins.push(join);
    }
    let threads = Arc::new(threads);
    #[cfg(debug_assertions)]
    debug_failpoints(&handles);
    state.set_serving_threads(handles);

    // Cleartext listeners advertise the first HTTP/3 port; TLS listeners their own.
    let first_h3 = listeners.h3_addrs().first().map(|a| a.port());
    let mut accept_tasks = Vec::new();
    let mut endpoints = Vec::new();
    // The reaper keeps closing slow and idle connections through the drain too.
    let (stop_reaper, reaper_stop) = watch::channel(false);
    let reaper = tokio::spawn(door.clone().reap(reaper_stop));
    let spawn_tcp = |l: TcpListener, ctx: ListenerCtx, stop: watch::Receiver<bool>| {
        let (door, threads, graceful) = (door.clone(), threads.clone(), graceful.clone());
        let ctx = Arc::new(ctx);
        let mut stop = stop;
        tokio::spawn(async move {
            accept_loop(l, &door, &threads, &graceful, &ctx, &mut stop).await;
        })
    };
    for l in listeners.http {
        let ctx = ListenerCtx {
            tls: None,
            alt_svc: first_h3.and_then(alt_svc),
        };
        accept_tasks.push(spawn_tcp(l, ctx, stop_rx.clone()));
    }
    let handshakes = Arc::new(QuicHandshakes {
        in_progress: Arc::new(AtomicUsize::new(0)),
        // Above this many QUIC handshakes in progress, clients must prove their address first.
        retry_above: (max_connections / 16).max(16),
        timeout: listeners
            .tls
            .as_ref()
            .map_or(tls::HANDSHAKE_TIMEOUT, |t| t.timeout),
    });
    for h in listeners.https {
        let own_h3 = h
            .quic
            .as_ref()
            .and_then(|e| e.local_addr().ok())
            .map(|a| a.port());
        let ctx = ListenerCtx {
            tls: listeners.tls.clone(),
            alt_svc: own_h3.or(first_h3).and_then(alt_svc),
        };
        accept_tasks.push(spawn_tcp(h.tcp, ctx, stop_rx.clone()));
        if let Some(endpoint) = h.quic {
            let (door, threads, drain, handshakes) = (
                door.clone(),
                threads.clone(),
                quic_drain.clone(),
                handshakes.clone(),
            );
            let mut stop = stop_rx.clone();
            let ep = endpoint.clone();
            accept_tasks.push(tokio::spawn(async move {
                quic_accept_loop(ep, &door, &threads, &drain, &handshakes, &mut stop).await;
            }));
            endpoints.push(endpoint);
        }
    }

    shutdown.await;
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // New QUIC connection attempts are refused from here on — CONNECTION_REFUSED, so a client
    // tries another node (or TCP) at once instead of waiting out its handshake timeout, which is
    // what an endpoint without a server config would make it do. Open connections carry on.
    let refusers: Vec<_> = endpoints
        .iter()
        .map(|e| {
            let e = e.clone();
            tokio::spawn(async move {
                while let Some(incoming) = e.accept().await {
                    incoming.refuse();
                }
            })
        })
        .collect();
    // Every accept loop has ended, so this is the last reference.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    let open = graceful.count() + quic_drain.receiver_count();
    tracing::info!(open_connections = open, deadline = ?opts.drain, "draining");
    let _ = quic_drain.send(true);
    let all_closed = async {
        tokio::join!(graceful.shutdown(), quic_drain.closed());
    };
    let left = tokio::select! {
        _ = all_closed => {
            tracing::info!("drained: all connections closed");
            0
        }
        _ = tokio::time::sleep(opts.drain) => {
            let left = door.in_use();
            tracing::warn!(connections = left, "drain deadline passed; closing remaining connections");
            left
        }
    };
    // QUIC connections still open are closed with H3_NO_ERROR while their drivers (on the
    // serving threads) still run, so the clients hear it instead of waiting for a timeout.
    for e in &endpoints {
        e.close(
            quinn::VarInt::from_u32(h3::H3_NO_ERROR),
            b"server shutting down",
        );
    }
    let idle = futures::future::join_all(endpoints.iter().map(|e| e.wait_idle()));
    let _ = tokio::time::timeout(h3::CLOSE_GRACE, idle).await;
    for r in refusers {
        r.abort();
    }
    let _ = stop_reaper.send(true);
    let _ = reaper.await;
    // Closing the channels ends the serving threads; dropping their runtimes closes whatever
    // connections are left.
    drop(threads);
    state.set_serving_threads(Vec::new());
    let _ = tokio::task::spawn_blocking(move || {
        for j in joins {
            let _ = j.join();
        }
    })
    .await;
    Ok(left)
}

/// `h3=":PORT"`: HTTP/3 is available on the same host at that UDP port (RFC 7838; the default
/// max-age of 24 h applies).
fn alt_svc(port: u16) -> Option<http::HeaderValue> {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"")).ok()
}

/// Hands `conn` to the serving thread with the fewest open connections; ties go round-robin so
/// an idle server spreads evenly too.
fn dispatch(threads: &[ServingThread], next: &mut usize, conn: Accepted) {
    *next = next.wrapping_add(1);
    let n = threads.len();
    let Some(target) = (0..n)
        .map(|i| &threads[(*next + i) % n])
        .min_by_key(|t| t.open.load(Ordering::Relaxed))
    else {
        return;
    };
    target.open.fetch_add(1, Ordering::Relaxed);
    if target.tx.send(conn).is_err() {
        target.open.fetch_sub(1, Ordering::Relaxed);
        tracing::error!("serving thread is gone; connection dropped");
    }
}

/// Takes connections from `listener` through the tenant door (permit first, per-client cap) and
/// hands them to serving threads.
async fn accept_loop(
    listener: TcpListener,
    door: &Arc<door::Door>,
    threads: &[ServingThread],
    graceful: &GracefulShutdown,
    ctx: &Arc<ListenerCtx>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut next = 0usize;
    while let Some(door::Admitted { tcp, peer, ticket }) = door.accept(&listener, stop).await {
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand over connection");
                continue;
            }
        };
        let conn = Accepted::Tcp {
            tcp,
            peer,
            ticket,
            watcher: graceful.watcher(),
            listener: ctx.clone(),
        };
        dispatch(threads, &mut next, conn);
    }
}

/// QUIC handshakes across every endpoint: how many are in progress, when a flood starts, and how
/// long one may take.
struct QuicHandshakes {
    in_progress: Arc<AtomicUsize>,
    retry_above: usize,
    timeout: Duration,
}

/// Takes QUIC connection attempts from `endpoint` — a permit first, like TCP — and hands them to
/// serving threads, which run the handshake. Under a handshake flood (more than `retry_above`
/// in progress), clients that have not proven their address get a Retry first: a spoofed
/// flood cannot answer it, a real client pays one round trip.
async fn quic_accept_loop(
    endpoint: quinn::Endpoint,
    door: &door::Door,
    threads: &[ServingThread],
    drain: &watch::Sender<bool>,
    handshakes: &Arc<QuicHandshakes>,
    stop: &mut watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let Some(permit) = door.permit(stop).await else {
            return;
        };
        let incoming = tokio::select! {
            _ = stop.changed() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        if handshakes.in_progress.load(Ordering::Relaxed) >= handshakes.retry_above
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            continue;
        }
        let conn = Accepted::Quic {
            permit,
            incoming: Box::new(incoming),
            handshaking: h3::Handshaking::new(&handshakes.in_progress),
            handshake_timeout: handshakes.timeout,
            drain: drain.subscribe(),
        };
        dispatch(threads, &mut next, conn);
    }
}

/// Counts an open connection (the thread's balance and the gauge) until dropped.
struct OpenConn {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl OpenConn {
    fn new(open: Arc<AtomicUsize>, gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self { open, gauge }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.gauge.dec();
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One serving thread's loop: takes connections from the accept loops and serves each on a task
/// of this thread's runtime. Ends when the accept side closes the channel; open connections are
/// then closed when the runtime is dropped (after the drain).
async fn serving_thread(
    mut rx: mpsc::UnboundedReceiver<Accepted>,
    state: Arc<ServeState>,
    open: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    while let Some(conn) = rx.recv().await {
        let guard = OpenConn::new(open.clone(), state.metrics.connections.clone());
        match conn {
            Accepted::Tcp {
                tcp,
                peer,
                ticket,
                watcher,
                listener,
            } => {
                let tcp = match tcp
                    .set_nonblocking(true)
                    .and_then(|()| TcpStream::from_std(tcp))
                {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot register connection");
                        continue;
                    }
                };
                let (state, builder, mut stop) = (state.clone(), builder.clone(), stop.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    // The door's deadlines cover the handshake and every request head; it
                    // closes the connection (dropping this future) when one passes.
                    let served = ticket.run(async {
                        match &listener.tls {
                            None => {
                                serve_http(
                                    &builder,
                                    TokioIo::new(ticket.io(tcp)),
                                    &ticket,
                                    peer,
                                    watcher,
                                    state,
                                    &listener,
                                    false,
                                )
                                .await
                            }
                            Some(hs) => {
                                let Some(tls) =
                                    tls::handshake(hs, tcp, peer, &mut stop, &state.metrics).await
                                else {
                                    return;
                                };
                                serve_http(
                                    &builder,
                                    TokioIo::new(ticket.io(tls)),
                                    &ticket,
                                    peer,
                                    watcher,
                                    state,
                                    &listener,
                                    true,
                                )
                                .await
                            }
                        }
                    });
                    if let Err(reason) = served.await {
                        tracing::debug!(%peer, reason = reason.label(), "connection closed by the server");
                    }
                });
            }
            Accepted::Quic {
                permit,
                incoming,
                handshaking,
                handshake_timeout,
                drain,
            } => {
                let state = state.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _guard = guard;
                    h3::serve_connection(*incoming, handshaking, handshake_timeout, state, drain)
                        .await;
                });
            }
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 (detected from the first bytes) on `io` until the client goes or
/// the drain asks it to finish.
#[allow(clippy::too_many_arguments)]
async fn serve_http<I>(
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    io: I,
    ticket: &door::Ticket,
    peer: SocketAddr,
    watcher: Watcher,
    state: Arc<ServeState>,
    listener: &ListenerCtx,
    https: bool,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let alt_svc = listener.alt_svc.clone();
    let svc = ticket.service(move |req| {
        let state = state.clone();
        let alt_svc = alt_svc.clone();
        async move {
            let mut resp = state.handle(req, https).await;
            if let Some(v) = alt_svc {
                resp.headers_mut().insert(http::header::ALT_SVC, v);
            }
            resp
        }
    });
    let conn = builder.serve_connection(io, svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
}
