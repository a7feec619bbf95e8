//! The HTTP front door: TCP listeners speaking HTTP/1.1 and HTTP/2 (h2c prior knowledge), routing
//! each request to a component and answering errors for it.
//!
//! Owns: accept loops (a connection permit is taken *before* accept, so a flood waits in the
//! kernel backlog rather than in our memory), per-connection tasks, request ids, the
//! client-visible error bodies, per-request metrics, and graceful drain with a deadline.
//! Must not: compile wasm, verify signatures or read config files.
#![forbid(unsafe_code)]

pub mod router;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::ops::metrics::{Metrics, Protocol, RequestMetrics};
use crate::runtime::component::{RequestCtx, ResponseBody, plain_response};
use crate::runtime::error::{Cause, RequestError};
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
            unrouted: RequestMetrics::new(&metrics, "-", "-"),
            metrics,
            next_id: AtomicU64::new(0),
            id_base: (nanos ^ u64::from(std::process::id())) << 24,
        }
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

    /// Answers one request: route, run, map errors, record metrics.
    pub async fn handle(
        &self,
        req: http::Request<Incoming>,
        https: bool,
    ) -> http::Response<ResponseBody> {
        let start = Instant::now();
        let id = self
            .id_base
            .wrapping_add(self.next_id.fetch_add(1, Ordering::Relaxed));
        let protocol = match req.version() {
            http::Version::HTTP_2 => Protocol::Http2,
            http::Version::HTTP_10 => Protocol::Http10,
            _ => Protocol::Http1,
        };
        let router = self.router();
        let component = router.route(request_host(&req), req.uri().path()).cloned();
        let mut resp = match &component {
            None => {
                tracing::debug!(request_id = %fmt_id(id), host = request_host(&req).unwrap_or(""), path = req.uri().path(), "no route");
                plain_response(
                    http::StatusCode::NOT_FOUND,
                    format!("no app serves {}\n", req.uri().path()),
                )
            }
            Some(c) => {
                // Kept for the log line of a failure; both clones are reference-count bumps.
                let (method, uri) = (req.method().clone(), req.uri().clone());
                match c.handle(req, RequestCtx { id, https }).await {
                    Ok(r) => r,
                    Err(e) => {
                        log_failure(&e, id, &c.label, &method, uri.path());
                        error_response(&e, id)
                    }
                }
            }
        };
        if let Ok(v) = http::HeaderValue::from_str(&fmt_id(id)) {
            resp.headers_mut().insert("x-request-id", v);
        }
        let metrics = component
            .as_ref()
            .map_or(&self.unrouted, |c| &c.request_metrics);
        metrics.record(resp.status(), protocol, start.elapsed().as_secs_f64());
        resp
    }
}

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or the `Host` header.
fn request_host<B>(req: &http::Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn fmt_id(id: u64) -> String {
    format!("{id:016x}")
}

fn log_failure(e: &RequestError, id: u64, label: &str, method: &http::Method, path: &str) {
    let rid = fmt_id(id);
    match e.kind.cause() {
        Cause::Client | Cause::Overload => {
            tracing::info!(request_id = %rid, component = label, %method, path, kind = e.kind.label(), detail = %e.detail, "request refused")
        }
        Cause::Guest | Cause::Timeout => {
            tracing::warn!(request_id = %rid, component = label, %method, path, kind = e.kind.label(), detail = %e.detail, "guest failed")
        }
        Cause::Host => {
            tracing::error!(request_id = %rid, component = label, %method, path, kind = e.kind.label(), detail = %e.detail, "internal error")
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

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Open connections at most; the next accept waits for one to close.
    pub max_connections: usize,
    /// How long in-flight requests get after the shutdown signal.
    pub drain: Duration,
    /// Serving threads (each a single-threaded runtime); at least 1.
    pub threads: usize,
}

/// An accepted connection on its way to a serving thread.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    watcher: Watcher,
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
/// thread is a single-threaded tokio runtime, so a connection, its requests and the guests
/// answering them never leave the thread that got it: no cross-thread wake-ups per request
/// (about a fifth of the throughput of a work-stealing pool, see `docs/runtime.md`). A CPU-bound
/// guest still shares its thread fairly, because it yields at every epoch tick. Assignment by
/// open-connection count rather than `SO_REUSEPORT` hashing keeps a few long-lived keep-alive
/// connections from piling onto one core.
pub async fn serve(
    listeners: Vec<TcpListener>,
    state: Arc<ServeState>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<usize> {
    let graceful = Arc::new(GracefulShutdown::new());
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let mut threads = Vec::with_capacity(opts.threads.max(1));
    let mut joins = Vec::with_capacity(opts.threads.max(1));
    for t in 0..opts.threads.max(1) {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start serving thread {t}: {e}"))?;
        let (state, thread_open) = (state.clone(), open.clone());
        let join = std::thread::Builder::new()
            .name(format!("outpost-serve-{t}"))
            .spawn(move || rt.block_on(serving_thread(rx, state, thread_open)))
            .map_err(|e| anyhow::anyhow!("cannot start serving thread {t}: {e}"))?;
        threads.push(ServingThread { tx, open });
        joins.push(join);
    }
    let threads = Arc::new(threads);

    let accept_tasks: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let (permits, threads, graceful) = (permits.clone(), threads.clone(), graceful.clone());
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                accept_loop(l, permits, &threads, &graceful, &mut stop).await;
            })
        })
        .collect();

    shutdown.await;
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // Every accept loop has ended, so this is the last reference.
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    let open = graceful.count();
    tracing::info!(open_connections = open, deadline = ?opts.drain, "draining");
    let left = tokio::select! {
        _ = graceful.shutdown() => {
            tracing::info!("drained: all connections closed");
            0
        }
        _ = tokio::time::sleep(opts.drain) => {
            let left = permits_in_use(&permits, opts.max_connections);
            tracing::warn!(connections = left, "drain deadline passed; closing remaining connections");
            left
        }
    };
    // Closing the channels ends the serving threads; dropping their runtimes closes whatever
    // connections are left.
    drop(threads);
    let _ = tokio::task::spawn_blocking(move || {
        for j in joins {
            let _ = j.join();
        }
    })
    .await;
    Ok(left)
}

fn permits_in_use(permits: &Semaphore, max: usize) -> usize {
    max.saturating_sub(permits.available_permits())
}

async fn accept_loop(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    threads: &[ServingThread],
    graceful: &GracefulShutdown,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        // Backpressure before work: no permit, no accept.
        let permit = tokio::select! {
            _ = stop.changed() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand over connection");
                continue;
            }
        };
        // The least-loaded thread; ties go round-robin so an idle server spreads evenly too.
        next = next.wrapping_add(1);
        let n = threads.len();
        let Some(target) = (0..n)
            .map(|i| &threads[(next + i) % n])
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
        else {
            return;
        };
        target.open.fetch_add(1, Ordering::Relaxed);
        let conn = Accepted {
            tcp,
            peer,
            permit,
            watcher: graceful.watcher(),
        };
        if target.tx.send(conn).is_err() {
            target.open.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(%peer, "serving thread is gone; connection dropped");
        }
    }
}

/// One serving thread's loop: takes connections from the accept loops and serves each on a task
/// of this thread's runtime. Ends when the accept side closes the channel; open connections are
/// then closed when the runtime is dropped (after the drain).
async fn serving_thread(
    mut rx: mpsc::UnboundedReceiver<Accepted>,
    state: Arc<ServeState>,
    open: Arc<AtomicUsize>,
) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    while let Some(Accepted {
        tcp,
        peer,
        permit,
        watcher,
    }) = rx.recv().await
    {
        let tcp = match tcp
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(tcp))
        {
            Ok(t) => t,
            Err(e) => {
                open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "cannot register connection");
                continue;
            }
        };
        let (state, builder, open) = (state.clone(), builder.clone(), open.clone());
        state.metrics.connections.inc();
        tokio::spawn(async move {
            let _permit = permit;
            let svc_state = state.clone();
            let svc = service_fn(move |req| {
                let state = svc_state.clone();
                async move { Ok::<_, Infallible>(state.handle(req, false).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
            state.metrics.connections.dec();
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
