//! The door every TCP listener goes through — tenant (cleartext and TLS), admin and control
//! plane: a connection permit taken *before* accept, an optional per-client-IP cap, a total
//! header deadline (from accept, or from the first byte of the next request on a keep-alive
//! connection, to the complete request head — TLS handshake included), a keep-alive idle
//! timeout, and, under connection pressure, shorter deadlines and the eviction of idle and
//! partial-header connections (oldest first) so that a flood of slow clients cannot hold every
//! permit while new clients wait.
//!
//! Owns: the connection permits and the registry of open connections with their state (busy,
//! idle, reading a head), the reaper that closes connections past their deadline, the
//! `outpost_connections_closed_total` counts, and the small wrappers (IO, service, body) that
//! tell the registry what a connection is doing.
//! Must not: parse HTTP, route, know what service runs behind it, or run a TLS handshake in an
//! accept loop (the handshake runs in the connection's task, inside [`Ticket::run`]).
//!
//! How state is learned without parsing HTTP: a request reaching the service marks the
//! connection busy until its response body is dropped (hyper drops it once the body is sent or
//! the connection dies); bytes read while not busy mark the start of the next request head
//! (HTTP/1.x only: an HTTP/2 connection reads PINGs and SETTINGS while idle, and h2 bounds its
//! own header frames).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::ops::logging::{LogDecision, LogLimiter};

pub use crate::ops::config::{
    DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};
/// Pressure starts when this many quarters of the permits are in use.
const PRESSURE_QUARTERS: usize = 3;
/// Under pressure, a connection with no request in flight gets this fraction (1/N) of the
/// shorter of the two deadlines, whether it is idle or sending a head.
const PRESSURE_DIVISOR: u32 = 4;

/// What a listener's connections may do. Validated by the config parser; [`Door::new`] clamps
/// what would make no sense (0 connections, 0 timeouts) instead of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorPolicy {
    /// Open connections at most; at the cap the next accept waits for a permit (and evicts an
    /// idle or partial-header connection to get one).
    pub max_connections: usize,
    /// Connect (or first byte of the next request) → complete request head.
    pub header_timeout: Duration,
    /// No request in flight on a keep-alive connection for this long → closed.
    pub idle_timeout: Duration,
    /// Open connections per client IP address at most; `None`: no per-client cap.
    pub max_per_ip: Option<usize>,
}

impl DoorPolicy {
    /// The defaults with `max_connections` permits and no per-client cap.
    pub fn with_cap(max_connections: usize) -> Self {
        Self {
            max_connections,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_per_ip: None,
        }
    }
}

/// Why the server closed a connection (the `reason` label of
/// `outpost_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The request head (or the TLS handshake before it) did not arrive in time.
    HeaderTimeout = 1,
    /// No request in flight for the idle timeout.
    IdleTimeout = 2,
    /// At the connection cap, closed (idle or partial head, oldest first) to admit a new one.
    Evicted = 3,
    /// The client IP already holds its maximum of connections.
    PerIpLimit = 4,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::Evicted => "evicted",
            Self::PerIpLimit => "per_ip_limit",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::HeaderTimeout,
            2 => Self::IdleTimeout,
            3 => Self::Evicted,
            4 => Self::PerIpLimit,
            _ => return None,
        })
    }
}

/// One listener group's permits, registry and policy. Shared (`Arc`) by its accept loops, the
/// connection tasks (through their [`Ticket`]s) and the reaper.
pub struct Door {
    /// `listener` label of the metrics: `tenant`, `admin`, `control_plane`.
    name: &'static str,
    policy: DoorPolicy,
    permits: Arc<Semaphore>,
    /// Times are kept as milliseconds since this instant (+1, so 0 means "not set").
    epoch: Instant,
    next_id: AtomicU64,
    /// Every open connection admitted through this door, by id. Locked by accept (insert),
    /// ticket drop (remove), the reaper and eviction (scan); never across an await.
    conns: Mutex<HashMap<u64, Arc<Track>>>,
    /// Open connections per client IP (only with `policy.max_per_ip`).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// `outpost_connections_closed_total{listener, reason}`; `None` where no metrics are kept
    /// (the control plane).
    closed: Option<prometheus::IntCounterVec>,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("name", &self.name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What the registry knows about one connection. Written by the connection's wrappers (atomics,
/// no locks on the request path), read by the reaper.
#[derive(Debug)]
struct Track {
    /// Requests whose response body has not been dropped yet.
    inflight: AtomicU64,
    /// When the head now awaited started: accept, or the first byte after the connection went
    /// idle (ms since the door's epoch, +1; 0: no head awaited).
    head_since: AtomicU64,
    /// When the last request finished (ms since the door's epoch, +1).
    idle_since: AtomicU64,
    /// The client spoke HTTP/2 (bytes read while idle do not start a head).
    h2: AtomicBool,
    /// Whether the first bytes have been looked at for the HTTP/2 preface.
    sniffed: AtomicBool,
    /// Why the server closed it (0: it did not).
    reason: AtomicU8,
    close: Notify,
}

/// A snapshot of a connection's state, for the pure deadline decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    inflight: u64,
    head_since: u64,
    idle_since: u64,
}

/// The deadlines in force (shortened under pressure), in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Deadlines {
    header_ms: u64,
    idle_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Deadlines {
    fn new(policy: &DoorPolicy, under_pressure: bool) -> Self {
        if under_pressure {
            let short = ms(policy.header_timeout.min(policy.idle_timeout) / PRESSURE_DIVISOR);
            Self {
                header_ms: short.max(1),
                idle_ms: short.max(1),
            }
        } else {
            Self {
                header_ms: ms(policy.header_timeout),
                idle_ms: ms(policy.idle_timeout),
            }
        }
    }
}

/// Whether a connection in `s` must be closed at `now` (ms since the epoch, +1). Busy
/// connections have no deadline here (request and body time limits belong to whoever serves
/// the request).
fn verdict(s: State, now: u64, d: Deadlines) -> Option<CloseReason> {
    if s.inflight > 0 {
        return None;
    }
    if s.head_since != 0 {
        return (now.saturating_sub(s.head_since) >= d.header_ms)
            .then_some(CloseReason::HeaderTimeout);
    }
    (now.saturating_sub(s.idle_since) >= d.idle_ms).then_some(CloseReason::IdleTimeout)
}

/// The connection to close to admit a new one: among those with no request in flight, the one
/// waiting longest (for its head or in idle). `None` when every connection is busy.
fn victim(conns: impl Iterator<Item = (u64, State)>) -> Option<u64> {
    conns
        .filter(|(_, s)| s.inflight == 0)
        .min_by_key(|(_, s)| {
            if s.head_since != 0 {
                s.head_since
            } else {
                s.idle_since
            }
        })
        .map(|(id, _)| id)
}

impl Track {
    fn state(&self) -> State {
        State {
            inflight: self.inflight.load(Ordering::Acquire),
            head_since: self.head_since.load(Ordering::Acquire),
            idle_since: self.idle_since.load(Ordering::Acquire),
        }
    }

    /// Marks the connection for closing with `reason`; false if it already was.
    fn close(&self, reason: CloseReason) -> bool {
        let first = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.close.notify_one();
        }
        first
    }
}

/// An admitted connection.
#[derive(Debug)]
pub struct Admitted {
    pub tcp: TcpStream,
    pub peer: SocketAddr,
    pub ticket: Ticket,
}

impl Door {
    /// A door named `name` (the metrics' `listener` label) with `policy`; `closed` is
    /// `outpost_connections_closed_total` where metrics are kept.
    pub fn new(
        name: &'static str,
        mut policy: DoorPolicy,
        closed: Option<prometheus::IntCounterVec>,
    ) -> Arc<Self> {
        policy.max_connections = policy.max_connections.max(1);
        policy.header_timeout = policy.header_timeout.max(Duration::from_millis(1));
        policy.idle_timeout = policy.idle_timeout.max(Duration::from_millis(1));
        policy.max_per_ip = policy.max_per_ip.map(|n| n.max(1));
        Arc::new(Self {
            name,
            policy,
            permits: Arc::new(Semaphore::new(policy.max_connections)),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::default(),
            per_ip: Mutex::default(),
            closed,
        })
    }

    pub fn policy(&self) -> &DoorPolicy {
        &self.policy
    }

    /// Permits in use: open connections, plus one an accept loop may hold while it waits.
    pub fn in_use(&self) -> usize {
        self.policy
            .max_connections
            .saturating_sub(self.permits.available_permits())
    }

    fn now(&self) -> u64 {
        ms(self.epoch.elapsed()).saturating_add(1)
    }

    fn under_pressure(&self) -> bool {
        self.in_use() * 4 >= self.policy.max_connections * PRESSURE_QUARTERS
    }

    fn count(&self, reason: CloseReason) {
        if let Some(c) = &self.closed {
            c.with_label_values(&[self.name, reason.label()]).inc();
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Track>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection permit, or `None` once `stop` changes. With none free, the connection that
    /// has waited longest without a request in flight is closed to make room — so at the cap
    /// a new client displaces a slow or idle one instead of queueing behind it.
    pub async fn permit(&self, stop: &mut watch::Receiver<bool>) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        self.evict_one();
        tokio::select! {
            _ = stop.changed() => None,
            p = self.permits.clone().acquire_owned() => p.ok(),
        }
    }

    fn evict_one(&self) {
        let conns = self.conns();
        let chosen = victim(conns.iter().map(|(id, t)| (*id, t.state())));
        if let Some(t) = chosen.and_then(|id| conns.get(&id))
            && t.close(CloseReason::Evicted)
        {
            self.count(CloseReason::Evicted);
        }
    }

    /// Accepts the next connection on `listener` — permit first — and registers it; `None` once
    /// `stop` changes. Connections over the per-client-IP cap are closed here (counted), and
    /// accept errors (EMFILE and friends) back off instead of spinning.
    pub async fn accept(
        self: &Arc<Self>,
        listener: &TcpListener,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Admitted> {
        loop {
            // Backpressure before work: no permit, no accept.
            let permit = self.permit(stop).await?;
            let (tcp, peer) = tokio::select! {
                _ = stop.changed() => return None,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        static ACCEPT: LogLimiter = LogLimiter::new(5, Duration::from_secs(60));
                        if let LogDecision::Log { suppressed } = ACCEPT.check() {
                            tracing::warn!(listener = self.name, error = %e, suppressed, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            match self.admit(permit, peer) {
                Some(ticket) => return Some(Admitted { tcp, peer, ticket }),
                None => {
                    self.count(CloseReason::PerIpLimit);
                    static PER_IP: LogLimiter = LogLimiter::new(5, Duration::from_secs(60));
                    if let LogDecision::Log { suppressed } = PER_IP.check() {
                        tracing::info!(listener = self.name, %peer, suppressed, "per-client connection cap reached; connection closed");
                    }
                }
            }
        }
    }

    /// Registers a connection from `peer` holding `permit`; `None` over the per-IP cap.
    pub fn admit(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        peer: SocketAddr,
    ) -> Option<Ticket> {
        let ip = peer.ip();
        if let Some(cap) = self.policy.max_per_ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= cap {
                return None;
            }
            *n += 1;
        }
        let now = self.now();
        let track = Arc::new(Track {
            inflight: AtomicU64::new(0),
            head_since: AtomicU64::new(now),
            idle_since: AtomicU64::new(now),
            h2: AtomicBool::new(false),
            sniffed: AtomicBool::new(false),
            reason: AtomicU8::new(0),
            close: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns().insert(id, track.clone());
        Some(Ticket {
            id,
            ip,
            track,
            door: self.clone(),
            _permit: permit,
        })
    }

    /// Runs the reaper until `stop` changes: every tick, connections past their (pressure-aware)
    /// deadline are told to close.
    pub async fn reap(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Fine enough that a deadline is kept to within an eighth of the shorter timeout.
        let tick = (self.policy.header_timeout.min(self.policy.idle_timeout) / 8)
            .clamp(Duration::from_millis(20), Duration::from_millis(500));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = interval.tick() => {}
            }
            self.reap_once();
        }
    }

    fn reap_once(&self) {
        let deadlines = Deadlines::new(&self.policy, self.under_pressure());
        let now = self.now();
        let mut closed = [0u64; 2];
        for t in self.conns().values() {
            if let Some(reason) = verdict(t.state(), now, deadlines)
                && t.close(reason)
            {
                closed[usize::from(reason == CloseReason::IdleTimeout)] += 1;
            }
        }
        for (i, reason) in [CloseReason::HeaderTimeout, CloseReason::IdleTimeout]
            .into_iter()
            .enumerate()
        {
            if closed[i] > 0
                && let Some(c) = &self.closed
            {
                c.with_label_values(&[self.name, reason.label()])
                    .inc_by(closed[i]);
            }
        }
    }
}

/// One admitted connection's hold on its door: the permit, the per-IP slot and the registry
/// entry, all given back on drop.
pub struct Ticket {
    id: u64,
    ip: IpAddr,
    track: Arc<Track>,
    door: Arc<Door>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.door.conns().remove(&self.id);
        if self.door.policy.max_per_ip.is_some() {
            let mut per_ip = self
                .door
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

impl Ticket {
    /// Runs `fut` (the handshake and the serving of the connection) until it ends or the door
    /// closes the connection; `Err` with the reason in the second case (`fut` is dropped, which
    /// closes the socket).
    pub async fn run<F: Future>(&self, fut: F) -> Result<F::Output, CloseReason> {
        tokio::select! {
            out = fut => Ok(out),
            () = self.track.close.notified() => Err(
                CloseReason::from_u8(self.track.reason.load(Ordering::Acquire))
                    .unwrap_or(CloseReason::Evicted)
            ),
        }
    }

    /// Wraps the connection's byte stream (plain TCP or TLS) so that reads tell the door when
    /// the next request head starts.
    pub fn io<T>(&self, inner: T) -> Tracked<T> {
        Tracked {
            inner,
            track: self.track.clone(),
            epoch: self.door.epoch,
        }
    }

    /// Wraps a service so the door knows when requests are in flight: from the call until the
    /// response body is dropped.
    pub fn service<F, Fut, ReqB, B>(
        &self,
        f: F,
    ) -> impl hyper::service::Service<
        http::Request<ReqB>,
        Response = http::Response<Guarded<B>>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<Guarded<B>>, Infallible>>
                 + Send
                 + use<F, Fut, ReqB, B>,
    > + Clone
    + use<F, Fut, ReqB, B>
    where
        F: Fn(http::Request<ReqB>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = http::Response<B>> + Send + 'static,
        ReqB: Body,
        B: Body + Unpin,
    {
        let track = self.track.clone();
        let epoch = self.door.epoch;
        hyper::service::service_fn(move |req| {
            let guard = InFlight::start(track.clone(), epoch);
            let fut = f(req);
            async move {
                let resp = fut.await;
                Ok::<_, Infallible>(resp.map(|inner| Guarded {
                    inner,
                    _guard: guard,
                }))
            }
        })
    }
}

/// Marks a request in flight until dropped; the connection goes idle when the last one ends.
#[derive(Debug)]
struct InFlight {
    track: Arc<Track>,
    epoch: Instant,
}

impl InFlight {
    fn start(track: Arc<Track>, epoch: Instant) -> Self {
        track.inflight.fetch_add(1, Ordering::AcqRel);
        track.head_since.store(0, Ordering::Release);
        Self { track, epoch }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Idle from now; stored before the count drops so the reaper never sees an idle
        // connection with a stale idle time.
        let now = ms(self.epoch.elapsed()).saturating_add(1);
        self.track.idle_since.store(now, Ordering::Release);
        self.track.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`InFlight`] mark until hyper drops it.
#[derive(Debug)]
pub struct Guarded<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream, noting when a request head starts (see the module docs).
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    track: Arc<Track>,
    epoch: Instant,
}

/// The HTTP/2 connection preface starts with this.
const H2_PREFACE_START: &[u8] = b"PRI ";

impl<T> Tracked<T> {
    fn saw(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if !self.track.sniffed.swap(true, Ordering::AcqRel) && bytes.starts_with(H2_PREFACE_START) {
            self.track.h2.store(true, Ordering::Release);
        }
        if self.track.inflight.load(Ordering::Acquire) == 0
            && self.track.head_since.load(Ordering::Acquire) == 0
            && !self.track.h2.load(Ordering::Acquire)
        {
            let now = ms(self.epoch.elapsed()).saturating_add(1);
            self.track.head_since.store(now, Ordering::Release);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            self.saw(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A small server on the calling runtime for the listeners that are not tenant traffic (admin,
/// control plane): every connection through `door`, optionally TLS (the handshake in the
/// connection's task, inside the door's header deadline), HTTP/1.1 and HTTP/2 by hyper-util's
/// auto builder, `svc` per request. Returns once `stop` is set and open connections finished
/// (or `drain` passed).
pub async fn serve_small<F, Fut, B>(
    door: Arc<Door>,
    listeners: Vec<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    svc: F,
    stop: watch::Receiver<bool>,
    drain: Duration,
) where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::TokioIo;
    use hyper_util::server::graceful::GracefulShutdown;
    let graceful = Arc::new(GracefulShutdown::new());
    let reaper = tokio::spawn(door.clone().reap(stop.clone()));
    let mut accepts = Vec::new();
    for l in listeners {
        let (door, tls, builder, svc, graceful) = (
            door.clone(),
            tls.clone(),
            builder.clone(),
            svc.clone(),
            graceful.clone(),
        );
        let mut stop = stop.clone();
        accepts.push(tokio::spawn(async move {
            while let Some(Admitted { tcp, peer, ticket }) = door.accept(&l, &mut stop).await {
                let (tls, builder, svc) = (tls.clone(), builder.clone(), svc.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let service = ticket.service(svc);
                    let served = ticket.run(async {
                        match tls {
                            None => {
                                let conn =
                                    builder.serve_connection(TokioIo::new(ticket.io(tcp)), service);
                                watcher.watch(conn.into_owned()).await
                            }
                            Some(acceptor) => match acceptor.accept(tcp).await {
                                Ok(s) => {
                                    let conn = builder
                                        .serve_connection(TokioIo::new(ticket.io(s)), service);
                                    watcher.watch(conn.into_owned()).await
                                }
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    Ok(())
                                }
                            },
                        }
                    });
                    match served.await {
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "connection ended with error")
                        }
                        Ok(Ok(())) => {}
                        Err(reason) => {
                            tracing::debug!(%peer, reason = reason.label(), "connection closed")
                        }
                    }
                });
            }
        }));
    }
    for a in accepts {
        let _ = a.await;
    }
    let _ = reaper.await;
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = door.name,
            "drain deadline passed; closing remaining connections"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(header_ms: u64, idle_ms: u64) -> Deadlines {
        Deadlines { header_ms, idle_ms }
    }

    #[test]
    fn busy_connections_have_no_deadline() {
        let s = State {
            inflight: 1,
            head_since: 0,
            idle_since: 1,
        };
        assert_eq!(verdict(s, 1_000_000, d(10, 10)), None);
    }

    #[test]
    fn a_head_must_complete_within_the_header_deadline() {
        let s = State {
            inflight: 0,
            head_since: 100,
            idle_since: 100,
        };
        assert_eq!(verdict(s, 100 + 9_999, d(10_000, 60_000)), None);
        assert_eq!(
            verdict(s, 100 + 10_000, d(10_000, 60_000)),
            Some(CloseReason::HeaderTimeout)
        );
    }

    #[test]
    fn idle_connections_get_the_idle_timeout() {
        let s = State {
            inflight: 0,
            head_since: 0,
            idle_since: 500,
        };
        assert_eq!(verdict(s, 500 + 59_999, d(10_000, 60_000)), None);
        assert_eq!(
            verdict(s, 500 + 60_000, d(10_000, 60_000)),
            Some(CloseReason::IdleTimeout)
        );
    }

    #[test]
    fn pressure_shortens_both_deadlines_to_a_quarter_of_the_shorter() {
        let p = DoorPolicy {
            max_connections: 10,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_per_ip: None,
        };
        assert_eq!(Deadlines::new(&p, false), d(10_000, 60_000));
        assert_eq!(Deadlines::new(&p, true), d(2_500, 2_500));
    }

    #[test]
    fn the_victim_is_the_longest_waiting_connection_without_a_request() {
        let busy = State {
            inflight: 2,
            head_since: 0,
            idle_since: 1,
        };
        let slow_head = State {
            inflight: 0,
            head_since: 10,
            idle_since: 10,
        };
        let idle = State {
            inflight: 0,
            head_since: 0,
            idle_since: 20,
        };
        let fresh = State {
            inflight: 0,
            head_since: 900,
            idle_since: 900,
        };
        let all = [(1, busy), (2, fresh), (3, idle), (4, slow_head)];
        assert_eq!(victim(all.into_iter()), Some(4));
        assert_eq!(
            victim([(1, busy), (2, fresh), (3, idle)].into_iter()),
            Some(3)
        );
        assert_eq!(victim([(1, busy)].into_iter()), None);
    }

    #[tokio::test]
    async fn per_ip_cap_refuses_and_frees_on_drop() {
        let door = Door::new(
            "test",
            DoorPolicy {
                max_per_ip: Some(2),
                ..DoorPolicy::with_cap(10)
            },
            None,
        );
        let peer: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let permit = || door.permits.clone().try_acquire_owned().unwrap();
        let a = door.admit(permit(), peer).unwrap();
        let _b = door.admit(permit(), peer).unwrap();
        assert!(door.admit(permit(), peer).is_none());
        assert!(door.admit(permit(), other).is_some());
        drop(a);
        assert!(door.admit(permit(), peer).is_some());
    }

    #[tokio::test]
    async fn at_the_cap_a_permit_evicts_an_idle_connection() {
        let door = Door::new("test", DoorPolicy::with_cap(2), None);
        let peer: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let (_tx, mut stop) = watch::channel(false);
        let first = door
            .admit(door.permit(&mut stop).await.unwrap(), peer)
            .unwrap();
        let second = door
            .admit(door.permit(&mut stop).await.unwrap(), peer)
            .unwrap();
        // The first connection is busy, the second is waiting for its head: the second goes.
        let _busy = InFlight::start(first.track.clone(), door.epoch);
        let waiter = tokio::spawn({
            let door = door.clone();
            async move {
                let mut stop = stop;
                door.permit(&mut stop).await.is_some()
            }
        });
        assert_eq!(
            second.run(std::future::pending::<()>()).await,
            Err(CloseReason::Evicted)
        );
        drop(second);
        assert!(waiter.await.unwrap());
        assert_eq!(
            CloseReason::from_u8(first.track.reason.load(Ordering::Acquire)),
            None
        );
    }
}
