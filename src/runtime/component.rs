//! A loaded component and per-request execution.
//!
//! Owns: the pre-instantiated component (linking done once at load: a WASI 0.2
//! `wasi:http/incoming-handler` or a WASI 0.3 `wasi:http/handler`, [`HandlerPre`]), its limits
//! and grants, its measured memory footprint, admission (per-component concurrency with a bounded
//! queue, then the node's pool by footprint and fair share), and the life of one request: its
//! turn on the thread's fair CPU lane, fresh `Store` + instance metered for CPU, streamed request
//! and response bodies, wall-clock deadline, mapping guest failures to a [`RequestError`] that
//! says who caused it. Both WASI versions share all of it; only the call differs.
//! Must not: know about sockets, protocols or routing.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime::component::{InstancePre, Resource};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{IncomingRequest, ResponseOutparam, Scheme};
use wasmtime_wasi_http::p3::bindings::ServicePre;

use super::admission::{Lease, Pool, Reclaim, Refused};
use super::error::{RequestError, RequestErrorKind};
use super::fair::{Account, Meter, Metered, TickMode};
use super::host::{CtxPool, Grants, Host};
use super::offload::{GuestThreads, Running, on_guest_thread};
use crate::ops::metrics::{Metrics, RequestMetrics};

mod worker;

/// The body type of every response the runtime produces, guest-made or not.
pub type ResponseBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// Limits of one component, after defaults from the sizing have been applied.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most linear memory one instance may hold, all its memories together, bytes.
    pub memory_limit: u64,
    /// Wall-clock budget for the whole request, streaming included.
    pub timeout: Duration,
    /// Requests of this component executing at once.
    pub max_concurrency: u32,
    /// Requests that may wait for a slot; beyond this, 503 at once.
    pub max_queue: u32,
    /// How long a queued request waits before a 503.
    pub queue_timeout: Duration,
    /// Largest request body, bytes (413 beyond).
    pub max_request_body: u64,
    /// Requests one instance may serve, one after another (1: a fresh instance per request).
    pub reuse: u32,
    /// How long an instance kept for reuse waits for its next request before it is dropped.
    pub reuse_idle_timeout: Duration,
    /// Requests one WASI 0.3 instance serves at once (1: one after another; see [`worker`]).
    pub reuse_concurrency: u32,
}

/// What one instance holds besides its linear memory's growth: the store, WASI and HTTP
/// contexts, the touched part of its fiber stack and of its initial memory image (copy-on-write,
/// so untouched pages cost nothing). The same figure sizes the pool (see
/// [`crate::sizing::MIN_INSTANCE_FOOTPRINT`]).
pub const INSTANCE_OVERHEAD: u64 = crate::sizing::MIN_INSTANCE_FOOTPRINT;

/// An instance whose linear memory grew by more than this is released off the serving thread
/// (see where it is used). Handlers that stay within their initial image never are.
const OFFLOAD_RELEASE_ABOVE: u64 = 4 << 20;

/// CPU time a request's guest used, in the response's extensions (for the request log line).
#[derive(Debug, Clone)]
pub struct GuestCpu(Arc<Meter>);

impl GuestCpu {
    pub fn get(&self) -> Duration {
        self.0.cpu()
    }
}

/// A component's pre-linked handler, chosen at load by what the component exports.
pub enum HandlerPre {
    /// WASI 0.2: `wasi:http/incoming-handler` (the `wasi:http/proxy` world).
    P2(ProxyPre<Host>),
    /// WASI 0.3: `wasi:http/handler` (native async: request and response bodies are streams).
    P3(ServicePre<Host>),
}

impl HandlerPre {
    /// The handler `pre` exports: WASI 0.3 if it has `wasi:http/handler`, else WASI 0.2's
    /// `wasi:http/incoming-handler`. The error names what is missing for both.
    pub fn new(pre: InstancePre<Host>) -> Result<Self, String> {
        match ServicePre::new(pre.clone()) {
            Ok(p3) => Ok(Self::P3(p3)),
            Err(p3) => ProxyPre::new(pre)
                .map(Self::P2)
                .map_err(|p2| format!("{p2:#}; {p3:#}")),
        }
    }

    /// `"0.2"` or `"0.3"`: the WASI version of the handler, for the "component loaded" log line.
    pub fn wasi_version(&self) -> &'static str {
        match self {
            Self::P2(_) => "0.2",
            Self::P3(_) => "0.3",
        }
    }

    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Self::P2(p) => p.engine(),
            Self::P3(p) => p.engine(),
        }
    }

    /// Instantiates without calling the handler (the load probe).
    async fn instantiate(&self, store: &mut Store<Host>) -> wasmtime::Result<()> {
        match self {
            Self::P2(p) => p.instantiate_async(store).await.map(drop),
            Self::P3(p) => p.instantiate_async(store).await.map(drop),
        }
    }
}

/// How a guest answered its request, set by whoever sees the answer (the WASI 0.2 outparam's
/// callback, [`serve_p3`]).
#[derive(Default)]
struct AnswerSeen(std::sync::atomic::AtomicU8);

impl AnswerSeen {
    const NONE: u8 = 0;
    const ERROR: u8 = 1;
    const RESPONSE: u8 = 2;

    fn set(&self, response: bool) {
        let v = if response {
            Self::RESPONSE
        } else {
            Self::ERROR
        };
        self.0.store(v, Ordering::Relaxed);
    }

    /// `None`: no answer at all; `Some(true)`: a response; `Some(false)`: an error code.
    fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            Self::NONE => None,
            v => Some(v == Self::RESPONSE),
        }
    }
}

/// A live instance's handle into its store, for calling its handler again (`reuse` > 1).
enum Instance {
    P2(wasmtime_wasi_http::p2::bindings::Proxy),
    P3(wasmtime_wasi_http::p3::bindings::Service),
}

/// An instance kept between requests, with the pool lease it still holds (so admission keeps
/// counting it: a kept instance occupies its engine's pool slot).
struct Kept {
    // Dropped in this order: the store (which resets the slot) before the lease that counts it.
    store: Store<Host>,
    instance: Instance,
    /// Requests it has served.
    served: u32,
    lease: Lease,
    since: Instant,
}

/// The idle instances one component keeps for reuse (`docs/reuse.md`): the most recently used
/// first, each dropped after the component's `reuse_idle_timeout`, or at once when the node's
/// pool has no room for a request (see [`Reclaim`]). Never shared: each component has its own,
/// so state a guest keeps in its memory never reaches another component or tenant.
pub(crate) struct IdleInstances {
    kept: Mutex<Vec<Kept>>,
    /// A sweeper task is running (at most one per component: sequential traffic empties and
    /// refills the list on every request, and must not spawn a task each time).
    sweeping: AtomicBool,
    idle_timeout: Duration,
    discards: prometheus::IntCounterVec,
    app: Arc<str>,
}

impl IdleInstances {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn discarded(&self, reason: &str, n: usize) {
        if n > 0 {
            self.discards
                .with_label_values(&[&*self.app, reason])
                .inc_by(n as u64);
        }
    }

    /// The most recently used kept instance that has not idled too long; expired ones are
    /// dropped on the way.
    fn take(&self) -> Option<Kept> {
        let (kept, expired) = {
            let mut v = self.lock();
            let expired = self.drain_expired(&mut v);
            (v.pop(), expired)
        };
        self.discarded("idle", expired.len());
        drop(expired);
        kept
    }

    /// Moves the instances idle past the timeout out of `v` (to be dropped without the lock).
    fn drain_expired(&self, v: &mut Vec<Kept>) -> Vec<Kept> {
        let timeout = self.idle_timeout;
        let first_fresh = v.partition_point(|k| k.since.elapsed() >= timeout);
        v.drain(..first_fresh).collect()
    }

    /// Keeps `k` for the next request; starts the sweeper unless one runs.
    fn put(self: &Arc<Self>, k: Kept) {
        self.lock().push(k);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(sweep(Arc::downgrade(self), self.idle_timeout))),
                // No runtime to sweep on: expired instances go at the next `take`.
                Err(_) => self.sweeping.store(false, Ordering::Release),
            }
        }
    }
}

/// Drops a component's instances as they pass their idle timeout; ends when none is kept (the
/// next one kept starts it again) or the component is gone.
async fn sweep(idle: Weak<IdleInstances>, every: Duration) {
    loop {
        tokio::time::sleep(every / 2).await;
        let Some(idle) = idle.upgrade() else { return };
        let (expired, empty) = {
            let mut v = idle.lock();
            let expired = idle.drain_expired(&mut v);
            (expired, v.is_empty())
        };
        idle.discarded("idle", expired.len());
        drop(expired);
        if empty {
            idle.sweeping.store(false, Ordering::Release);
            // One kept after the look above but before the flag cleared would have no sweeper:
            // take the job back if so.
            if idle.lock().is_empty() || idle.sweeping.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

impl Reclaim for IdleInstances {
    fn reclaim(&self) -> usize {
        let all = std::mem::take(&mut *self.lock());
        self.discarded("pool_contended", all.len());
        all.len()
    }
}

/// What a guest answers: a response whose body streams from the guest, or the error code it
/// returned instead (shown as text: the two WASI versions have different `error-code` types).
type Answer = Result<http::Response<ResponseBody>, String>;

/// One request as its handler's WASI version takes it. Built once per request and moved into the
/// guest's future at once, so the size difference of the variants costs nothing to keep.
#[allow(clippy::large_enum_variant)]
enum Call<B> {
    /// Resources in the store's table; the answer comes through the outparam's callback.
    P2 {
        req: Resource<IncomingRequest>,
        out: Resource<ResponseOutparam>,
    },
    /// The request itself (absolute URI); the response is sent on `answer`.
    P3 {
        req: http::Request<B>,
        answer: tokio::sync::oneshot::Sender<Answer>,
        ok: Arc<AnswerSeen>,
    },
}

/// Identifies a request in logs and in the client-visible error body.
#[derive(Debug, Clone, Copy)]
pub struct RequestCtx {
    pub id: u64,
    pub https: bool,
}

/// A request id as the `x-request-id` header and every log line show it: 16 hex digits.
pub fn fmt_request_id(id: u64) -> impl std::fmt::Display {
    format!("{id:016x}")
}

/// One loaded component, ready to serve.
pub struct AppComponent {
    pub app: Arc<str>,
    pub id: Arc<str>,
    /// "app/component" for logs.
    pub label: Arc<str>,
    /// sha256 of the wasm.
    pub digest: String,
    pre: HandlerPre,
    grants: Arc<Grants>,
    ctx_pool: CtxPool,
    pub limits: Limits,
    concurrency: Arc<Semaphore>,
    queued: AtomicU32,
    /// The app's CPU account (the app is the unit of fairness).
    account: Arc<Account>,
    ticks: Arc<TickMode>,
    pool: Arc<Pool>,
    /// Where guests that run long go, off the serving threads.
    guests: Arc<GuestThreads>,
    /// Bytes one live instance is expected to hold: [`INSTANCE_OVERHEAD`] plus the linear memory
    /// recent instances grew by beyond their initial image. Rises at once, decays by 1/16 of the
    /// gap per request.
    footprint: AtomicU64,
    metrics: Metrics,
    /// This component's `outpost_requests_inflight` series, resolved once.
    inflight: prometheus::IntGauge,
    /// This app's `outpost_instance_memory_peak_bytes` series, resolved once.
    memory_peak: prometheus::Histogram,
    /// Per-request counters and histograms, recorded by the front door.
    pub request_metrics: RequestMetrics,
    /// Instances kept for reuse, one request at a time; `None` unless `reuse` > 1 (and
    /// `workers` is `None`).
    idle: Option<Arc<IdleInstances>>,
    /// Shared WASI 0.3 instances, several requests at once; `None` unless `reuse` > 1 and
    /// `reuse_concurrency` > 1.
    workers: Option<Arc<worker::Workers>>,
    /// This app's `outpost_instance_reuse_hits_total` series, resolved once.
    reuse_hits: prometheus::IntCounter,
    /// Set when a kept instance showed that this component cannot serve twice: reuse stops.
    reuse_unsupported: AtomicBool,
}

impl std::fmt::Debug for AppComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppComponent")
            .field("label", &self.label)
            .field("digest", &self.digest)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AppComponent {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        app: &str,
        tenant: Option<&str>,
        id: &str,
        digest: String,
        pre: HandlerPre,
        grants: Grants,
        limits: Limits,
        account: Arc<Account>,
        ticks: Arc<TickMode>,
        pool: Arc<Pool>,
        guests: Arc<GuestThreads>,
        metrics: Metrics,
    ) -> Self {
        let concurrency = Arc::new(Semaphore::new(limits.max_concurrency as usize));
        let inflight = metrics.inflight.with_label_values(&[app]);
        let memory_peak = metrics.instance_memory.with_label_values(&[app]);
        let request_metrics = RequestMetrics::new(&metrics, tenant, app, id);
        let label: Arc<str> = format!("{app}/{id}").into();
        let concurrent =
            limits.reuse > 1 && limits.reuse_concurrency > 1 && matches!(pre, HandlerPre::P3(_));
        let workers = concurrent.then(|| {
            let workers = Arc::new(worker::Workers::new());
            let weak: Weak<dyn Reclaim> = Arc::downgrade(&workers) as Weak<worker::Workers>;
            pool.register_reclaimer(weak);
            workers
        });
        let idle = (limits.reuse > 1 && !concurrent).then(|| {
            let idle = Arc::new(IdleInstances {
                kept: Mutex::default(),
                sweeping: AtomicBool::new(false),
                idle_timeout: limits.reuse_idle_timeout,
                discards: metrics.reuse_discards.clone(),
                app: app.into(),
            });
            let weak: Weak<dyn Reclaim> = Arc::downgrade(&idle) as Weak<IdleInstances>;
            pool.register_reclaimer(weak);
            idle
        });
        let reuse_hits = metrics.reuse_hits.with_label_values(&[app]);
        Self {
            idle,
            workers,
            reuse_hits,
            reuse_unsupported: AtomicBool::new(false),
            inflight,
            memory_peak,
            request_metrics,
            app: app.into(),
            id: id.into(),
            ctx_pool: CtxPool::new(label.clone()),
            label,
            digest,
            pre,
            grants: Arc::new(grants),
            limits,
            concurrency,
            queued: AtomicU32::new(0),
            account,
            ticks,
            pool,
            guests,
            footprint: AtomicU64::new(INSTANCE_OVERHEAD),
            metrics,
        }
    }

    /// The WASI version of this component's HTTP handler: `"0.2"` or `"0.3"`.
    pub fn wasi_version(&self) -> &'static str {
        self.pre.wasi_version()
    }

    /// Bytes one live instance of this component is expected to hold (see the field).
    pub fn footprint(&self) -> u64 {
        self.footprint.load(Ordering::Relaxed)
    }

    /// Folds one instance's growth beyond its initial memory into the footprint estimate.
    fn observe_growth(&self, grown: u64) {
        let seen = INSTANCE_OVERHEAD.saturating_add(grown);
        let _ = self
            .footprint
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if seen >= old {
                    seen
                } else {
                    old - (old - seen) / 16
                })
            });
    }

    /// Serves one request with a fresh instance. The response body streams from the guest; the
    /// guest keeps running (holding its permits) until it finishes writing it or hits its
    /// deadline.
    pub async fn handle<B>(
        self: &Arc<Self>,
        req: http::Request<B>,
        ctx: RequestCtx,
    ) -> Result<http::Response<ResponseBody>, RequestError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limit = self.limits.max_request_body;
        if let Some(len) = content_length(req.headers())
            && len > limit
        {
            return Err(RequestError::new(
                RequestErrorKind::BodyTooLarge,
                format!("content-length {len} exceeds max_request_body {limit}"),
            ));
        }

        let own = self.admit_component().await?;
        let deadline = Instant::now() + self.limits.timeout;

        let too_large = Arc::new(AtomicBool::new(false));
        let req = req.map(|b| LimitedBody {
            inner: b,
            remaining: limit,
            limit,
            tripped: too_large.clone(),
        });

        if let Some(workers) = &self.workers {
            let result = self
                .handle_shared(workers, req, ctx, own, deadline, &too_large)
                .await;
            if let Err(e) = &result {
                self.metrics
                    .request_errors
                    .with_label_values(&[&*self.app, e.kind.label()])
                    .inc();
            }
            return result;
        }

        let t0 = Instant::now();
        let meter = Meter::new(self.account.clone(), self.ticks.clone());
        // An instance kept from an earlier request of this component (it still holds its pool
        // lease), else room in the pool and a fresh store.
        let (mut store, kept_instance, served, lease) = match self
            .idle
            .as_ref()
            .filter(|_| !self.reuse_unsupported.load(Ordering::Relaxed))
            .and_then(|i| i.take())
        {
            Some(k) => {
                self.reuse_hits.inc();
                let mut store = k.store;
                store.data_mut().limiter.begin_request();
                arm_store(&mut store, &meter);
                (store, Some(k.instance), k.served, k.lease)
            }
            None => {
                let lease = self.admit_pool().await?;
                let store = self
                    .new_store(&meter)
                    .map_err(|e| internal(format!("creating store state: {e:#}")))?;
                (store, None, 0, lease)
            }
        };

        // How the guest answered (a response, an error code, or not at all): only an instance
        // that answered with a response may serve again.
        let answered = Arc::new(AnswerSeen::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<Answer>();
        let call = match &self.pre {
            HandlerPre::P2(_) => {
                let scheme = if ctx.https {
                    Scheme::Https
                } else {
                    Scheme::Http
                };
                let mut http = store.data_mut().http();
                let req = http
                    .new_incoming_request(scheme, req)
                    .map_err(|e| internal(format!("incoming request: {e:#}")))?;
                let ok = answered.clone();
                let out = http
                    .new_response_outparam_from_callback(move |answer| {
                        ok.set(answer.is_ok());
                        let _ = tx.send(answer.map_err(|code| format!("{code:?}")));
                    })
                    .map_err(|e| internal(format!("response outparam: {e:#}")))?;
                Call::P2 { req, out }
            }
            HandlerPre::P3(_) => Call::P3 {
                req: absolute_uri(req, ctx.https)?,
                answer: tx,
                ok: answered.clone(),
            },
        };

        let this = self.clone();
        // Counted by a guard: the request future may be dropped mid-way (client gone).
        let gauges = InflightGauge::new(self.inflight.clone());
        let (turn, meter_done) = (meter.clone(), meter.clone());
        let guest = async move {
            let _gauges = gauges;
            // The linear memory the instance had when this request began (a kept instance's
            // memory stays as its earlier requests left it, and counts against the limit).
            let mut initial = store.data().limiter.total;
            let run = async {
                // Behind lighter apps' parked guests, if any (usually: straight through).
                turn.turn_to_start().await;
                // The linear memory an instance starts with, and the instantiation time.
                let mut instantiated = |store: &Store<Host>| {
                    initial = store.data().limiter.total;
                    this.metrics
                        .instantiate_duration
                        .observe(t0.elapsed().as_secs_f64());
                };
                match (&this.pre, call, kept_instance) {
                    (HandlerPre::P2(pre), Call::P2 { req, out }, kept) => {
                        let proxy = match kept {
                            Some(Instance::P2(proxy)) => proxy,
                            _ => {
                                let proxy = pre.instantiate_async(&mut store).await?;
                                instantiated(&store);
                                proxy
                            }
                        };
                        proxy
                            .wasi_http_incoming_handler()
                            .call_handle(&mut store, req, out)
                            .await?;
                        Ok(Instance::P2(proxy))
                    }
                    (HandlerPre::P3(pre), Call::P3 { req, answer, ok }, kept) => {
                        let service = match kept {
                            Some(Instance::P3(service)) => service,
                            _ => {
                                let service = pre.instantiate_async(&mut store).await?;
                                instantiated(&store);
                                service
                            }
                        };
                        let keeping = this.idle.is_some();
                        store
                            .run_concurrent(async move |acc| {
                                serve_p3(acc, &service, req, answer, &ok).await?;
                                // A WASI 0.3 guest may go on working after its response (tasks
                                // it spawned). An instance to be kept must finish that first,
                                // within this request's deadline: the next request must not
                                // find it still running (nor run beside it).
                                if keeping {
                                    std::future::poll_fn(|cx| acc.poll_no_interesting_tasks(cx))
                                        .await;
                                }
                                Ok(Instance::P3(service))
                            })
                            .await?
                    }
                    _ => Err(wasmtime::format_err!(
                        "a request prepared for the other WASI version"
                    )),
                }
            };
            let (outcome, instance) = match LazyDeadline::new(std::pin::pin!(run), deadline).await {
                Some(Ok(instance)) => (GuestOutcome::Returned, Some(instance)),
                Some(Err(e)) => (GuestOutcome::Failed(e), None),
                None => (GuestOutcome::TimedOut, None),
            };
            let hit_memory_limit = store.data().limiter.hit;
            let peak = store.data().limiter.peak;
            this.memory_peak.observe(peak as f64);
            this.observe_growth(peak.saturating_sub(initial) as u64);
            let returned = matches!(outcome, GuestOutcome::Returned);
            // An instance that trapped, timed out, hit its memory limit or answered with an
            // error is never kept; one that served `reuse` requests has done its share.
            if let Some(idle) = &this.idle {
                let why_not = match &outcome {
                    _ if hit_memory_limit => Some("memory_limit"),
                    GuestOutcome::TimedOut => Some("timeout"),
                    GuestOutcome::Failed(_) => Some("trap"),
                    // Returned without answering on its first reuse: a guest that cannot serve
                    // twice (StarlingMonkey, bytecodealliance/StarlingMonkey#247). Stop reusing
                    // this component's instances; this one request is the only one it costs.
                    GuestOutcome::Returned if served == 1 && answered.get().is_none() => {
                        if !this.reuse_unsupported.swap(true, Ordering::Relaxed) {
                            tracing::warn!(component = %this.label, "a kept instance returned without answering its second request: this component cannot serve more than one request per instance; reuse turned off for it");
                        }
                        Some("unsupported")
                    }
                    GuestOutcome::Returned if answered.get() != Some(true) => Some("error"),
                    GuestOutcome::Returned if served + 1 >= this.limits.reuse => {
                        Some("max_requests")
                    }
                    GuestOutcome::Returned => None,
                };
                match (why_not, instance) {
                    (None, Some(instance)) if !this.reuse_unsupported.load(Ordering::Relaxed) => {
                        idle.put(Kept {
                            store,
                            instance,
                            served: served + 1,
                            lease,
                            since: Instant::now(),
                        });
                        // Requests waiting for room come first (see `Pool::contended`).
                        if this.pool.contended() {
                            idle.reclaim();
                        }
                        drop(own);
                        return (outcome, hit_memory_limit);
                    }
                    (why_not, _) => idle.discarded(why_not.unwrap_or("unsupported"), 1),
                }
            }
            let owner = this.clone();
            // Dropping the store resets its pool slot; for an instance that grew its memory
            // that is an madvise of the grown pages, kernel work of milliseconds that would
            // stall every connection of a serving thread. It is done where heavy work runs, at
            // the guest threads' priority: right here if the guest is on a guest thread (its
            // own app's time), else handed to one. Not on tokio's blocking pool, whose threads
            // run at the serving threads' priority and took the CPU from them (profiled beside
            // `/grow/30`). The permits go with it, so the slot counts as used until it is free.
            let release = move || {
                if returned {
                    store.into_data().recycle(&owner.ctx_pool);
                } else {
                    drop(store);
                }
                drop(lease);
                drop(own);
            };
            let big = peak.saturating_sub(initial) as u64 > OFFLOAD_RELEASE_ABOVE;
            if big && !on_guest_thread() && tokio::runtime::Handle::try_current().is_ok() {
                this.guests.spawn(async move { release() }).detach();
            } else if big {
                release();
            } else {
                // Resetting a slot can wait for the process's memory-map lock while other
                // threads grow or release big instances: that wait is not this request's work,
                // and must not make its app look heavy (see `Meter::exclude`).
                let t = Instant::now();
                release();
                meter_done.exclude(t.elapsed());
            }
            if let GuestOutcome::TimedOut = outcome {
                static TIMEOUTS: crate::ops::logging::LogLimiter =
                    crate::ops::logging::LogLimiter::new(20, Duration::from_secs(10));
                if let crate::ops::logging::LogDecision::Log { suppressed } = TIMEOUTS.check() {
                    tracing::warn!(request_id = %fmt_request_id(ctx.id), component = %this.label, timeout = ?this.limits.timeout, cpu = ?meter_done.cpu(), suppressed, "request hit its wall-clock timeout; instance dropped");
                }
            }
            (outcome, hit_memory_limit)
        };

        // Run the guest inline on this task until it answers: most handlers set their response
        // and finish their body in one go, and a spawn plus cross-task wakeups would cost more
        // than the guest itself. A guest still running after answering (a streaming body) goes
        // on in a task of its own, keeping its permits until it is done. A guest that runs past
        // its slice, or whose app's requests are heavy, runs on a guest thread instead (see
        // `offload`). Every poll of the guest is CPU time of this app.
        let mut run = Running::start(
            Metered::new(Box::pin(guest), meter.clone()),
            self.account.is_heavy(),
            meter.clone(),
            self.guests.clone(),
        );
        let mut rx = rx;
        let first = std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = run.poll_step(cx) {
                return Poll::Ready(First::Guest(out));
            }
            Pin::new(&mut rx).poll(cx).map(First::Answer)
        })
        .await;
        let (answer, finished) = match first {
            First::Guest(out) => (rx.try_recv().ok(), Some(out)),
            First::Answer(Ok(answer)) => {
                run.detach();
                (Some(answer), None)
            }
            // The outparam was dropped without an answer: the guest is ending; see how.
            First::Answer(Err(_)) => (
                None,
                Some(std::future::poll_fn(|cx| run.poll_step(cx)).await),
            ),
        };
        // A guest whose thread went away (or that panicked) has no outcome.
        let finished = finished.map(|f| f.ok_or(()));

        let result = match (answer, finished) {
            (Some(Ok(mut resp)), _) => {
                if too_large.load(Ordering::Relaxed) {
                    Err(RequestError::new(
                        RequestErrorKind::BodyTooLarge,
                        format!("request body exceeded max_request_body {limit}"),
                    ))
                } else {
                    // Only the debug request line reads it; an extensions map costs an
                    // allocation per response.
                    if tracing::enabled!(tracing::Level::DEBUG) {
                        resp.extensions_mut().insert(GuestCpu(meter.clone()));
                    }
                    Ok(resp)
                }
            }
            (Some(Err(code)), _) => Err(RequestError::new(
                RequestErrorKind::Trap,
                format!("guest answered with error code {code}"),
            )),
            (None, outcome) => Err(match outcome {
                _ if too_large.load(Ordering::Relaxed) => RequestError::new(
                    RequestErrorKind::BodyTooLarge,
                    format!("request body exceeded max_request_body {limit}"),
                ),
                Some(Ok((GuestOutcome::TimedOut, _))) => RequestError::new(
                    RequestErrorKind::Timeout,
                    format!("no response within {:?}", self.limits.timeout),
                ),
                Some(Ok((GuestOutcome::Failed(e), true))) => RequestError::new(
                    RequestErrorKind::MemoryLimit,
                    format!(
                        "guest exceeded memory_limit {} bytes: {e:?}",
                        self.limits.memory_limit
                    ),
                ),
                Some(Ok((GuestOutcome::Failed(e), false))) => {
                    RequestError::new(RequestErrorKind::Trap, format!("{e:?}"))
                }
                Some(Ok((GuestOutcome::Returned, _))) => RequestError::new(
                    RequestErrorKind::NoResponse,
                    "guest returned without setting a response",
                ),
                Some(Err(())) => internal("the guest's thread ended before it did"),
                None => internal("guest ended without an outcome"),
            }),
        };
        if let Err(e) = &result {
            self.metrics
                .request_errors
                .with_label_values(&[&*self.app, e.kind.label()])
                .inc();
        }
        result
    }

    /// Creates and drops one instance without calling it. Run at load so a component that cannot
    /// be instantiated under its limits (say, initial memory above `memory_limit`) fails then,
    /// not at its first request; also what the instantiate benchmark measures.
    pub async fn probe(&self) -> Result<Duration, String> {
        let t0 = Instant::now();
        let meter = Meter::new(self.account.clone(), self.ticks.clone());
        let mut store = self.new_store(&meter).map_err(|e| format!("{e:#}"))?;
        Metered::new(std::pin::pin!(self.pre.instantiate(&mut store)), meter)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(t0.elapsed())
    }

    /// A fresh store with this component's grants and limits, whose guest gives its thread back
    /// through `meter` (see [`super::fair`]).
    fn new_store(&self, meter: &Arc<Meter>) -> wasmtime::Result<Store<Host>> {
        let host = Host::new(
            self.grants.clone(),
            self.limits.memory_limit,
            &self.ctx_pool,
        )?;
        let mut store = Store::new(self.pre.engine(), host);
        store.limiter(|h| &mut h.limiter);
        arm_store(&mut store, meter);
        Ok(store)
    }

    /// Admission control, first half: a permit of this component (bounded queue). The second
    /// half is [`Self::admit_pool`], unless a kept instance (which holds its lease) serves.
    async fn admit_component(&self) -> Result<OwnedSemaphorePermit, RequestError> {
        let own = match self.concurrency.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
                let _dequeue = Dequeue(&self.queued);
                if waiting >= self.limits.max_queue {
                    return Err(saturated(format!(
                        "{} requests executing and {waiting} queued (max_queue {})",
                        self.limits.max_concurrency, self.limits.max_queue
                    )));
                }
                tokio::time::timeout(
                    self.limits.queue_timeout,
                    self.concurrency.clone().acquire_owned(),
                )
                .await
                .map_err(|_| {
                    saturated(format!(
                        "no free slot of max_concurrency {} within {:?}",
                        self.limits.max_concurrency, self.limits.queue_timeout
                    ))
                })?
                .map_err(|_| internal("component semaphore closed"))?
            }
        };
        Ok(own)
    }

    /// Admission control, second half: room in the node's pool for this component's
    /// footprint, within the app's fair share when it is contended.
    async fn admit_pool(&self) -> Result<Lease, RequestError> {
        self.pool
            .admit(&self.account, self.footprint(), self.limits.queue_timeout)
            .await
            .map_err(|e| match e {
                Refused::Timeout(_) => saturated(format!("instance pool exhausted: {e}")),
                _ => saturated(e.to_string()),
            })
    }
}

/// Points a store's epoch callback at this request's `meter`: at every epoch tick the meter
/// decides whether a guest that has run its minimum slice parks in the thread's fair lane (so
/// other apps and the network get the thread, and the wall-clock timeout can cancel it); one that
/// has not goes on. The deadline must be set too: a new store's is epoch 0, long past, so without
/// it every instance would stop at its first epoch check — a needless callback on every request.
fn arm_store(store: &mut Store<Host>, meter: &Arc<Meter>) {
    store.set_epoch_deadline(1);
    let meter = meter.clone();
    store.epoch_deadline_callback(move |_| Ok(meter.on_epoch()));
}

/// One WASI 0.3 request, inside the store's event loop: hand the request to the guest's
/// `handle`, send its response on `answer`, then keep the event loop running until the response
/// body is done — the guest writes the body from tasks of its own after `handle` returns, and
/// only this loop moves those bytes to the client. Returns when the client has the whole body or
/// has gone away (the body dropped).
async fn serve_p3<B>(
    acc: &wasmtime::component::Accessor<Host>,
    service: &wasmtime_wasi_http::p3::bindings::Service,
    req: http::Request<B>,
    answer: tokio::sync::oneshot::Sender<Answer>,
    answered: &AnswerSeen,
) -> wasmtime::Result<()>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    // The incoming headers are filtered by the default hooks: the store's own hooks differ only
    // in how they send outbound requests, and borrowing them here would tie the request's I/O
    // future to the store borrow.
    let (req, request_io) =
        wasmtime_wasi_http::p3::Request::from_http(wasmtime_wasi_http::default_hooks(), req);
    let response = match service.handle(acc, req).await? {
        Ok(response) => response,
        Err(code) => {
            answered.set(false);
            let _ = answer.send(Err(format!("{code:?}")));
            return Ok(());
        }
    };
    let response = acc.with(|mut s| response.into_http(&mut s, request_io))?;
    answered.set(true);
    let (done, body_done) = tokio::sync::oneshot::channel::<()>();
    let response = response.map(|body| {
        DoneBody {
            inner: body,
            _done: done,
        }
        .boxed_unsync()
    });
    if answer.send(Ok(response)).is_ok() {
        // Resolves (with an error: nothing is ever sent) once the body is dropped.
        let _ = body_done.await;
    }
    Ok(())
}

/// A response body that tells, by being dropped, that the client is done with it.
struct DoneBody {
    inner: ResponseBody,
    _done: tokio::sync::oneshot::Sender<()>,
}

impl Body for DoneBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request with an absolute URI, as a WASI 0.3 guest reads it: the scheme the client used
/// and the authority from the URI (HTTP/2, HTTP/3) or the `Host` header (HTTP/1.x; the front door
/// has already refused requests without one).
fn absolute_uri<B>(req: http::Request<B>, https: bool) -> Result<http::Request<B>, RequestError> {
    let (mut parts, body) = req.into_parts();
    let authority = match parts.uri.authority() {
        Some(a) => a.clone(),
        None => parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .ok_or_else(|| internal("no valid authority in the URI or the Host header"))?,
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    uri.authority = Some(authority);
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    parts.uri = http::Uri::from_parts(uri).map_err(|e| internal(format!("request URI: {e}")))?;
    Ok(http::Request::from_parts(parts, body))
}

/// `tokio::time::timeout_at`, except that the timer is armed only once the inner future first
/// returns `Pending`. Most handlers answer within their first poll, and for them a timer-wheel
/// entry (insert + remove on every request) would be pure overhead. A future that does wait —
/// I/O, or an epoch-tick yield of a CPU-bound guest — gets the timer from its first wait on,
/// and the deadline is the one fixed before the first poll, so nothing is lost by arming late.
///
/// The timer belongs to the runtime of the thread that armed it; a guest that moved to a guest
/// thread since gets a new one there, so it never depends on a serving thread's timer (which is
/// gone once that thread's runtime shuts down).
struct LazyDeadline<F> {
    inner: F,
    deadline: Instant,
    timer: Option<(std::thread::ThreadId, Pin<Box<tokio::time::Sleep>>)>,
}

impl<F: Future + Unpin> LazyDeadline<F> {
    fn new(inner: F, deadline: Instant) -> Self {
        Self {
            inner,
            deadline,
            timer: None,
        }
    }
}

impl<F: Future + Unpin> Future for LazyDeadline<F> {
    /// `None` when the deadline passed first.
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(v) = Pin::new(&mut this.inner).poll(cx) {
            return Poll::Ready(Some(v));
        }
        let deadline = this.deadline;
        let here = std::thread::current().id();
        if this.timer.as_ref().is_some_and(|(armed, _)| *armed != here) {
            this.timer = None;
        }
        let (_, timer) = this
            .timer
            .get_or_insert_with(|| (here, Box::pin(tokio::time::sleep_until(deadline.into()))));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

enum First<G, A> {
    Guest(G),
    Answer(A),
}

enum GuestOutcome {
    Returned,
    Failed(wasmtime::Error),
    TimedOut,
}

/// Keeps `outpost_requests_inflight` true even when a request is cancelled (the pool keeps
/// `outpost_pool_slots_used` itself).
struct InflightGauge(prometheus::IntGauge);

impl InflightGauge {
    fn new(app: prometheus::IntGauge) -> Self {
        app.inc();
        Self(app)
    }
}

impl Drop for InflightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Dequeue<'a>(&'a AtomicU32);
impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn saturated(detail: String) -> RequestError {
    RequestError::new(RequestErrorKind::Saturated, detail)
}

fn internal(detail: impl Into<String>) -> RequestError {
    RequestError::new(RequestErrorKind::Internal, detail)
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A request body that fails once more than `limit` bytes have arrived, and records that it did
/// so the runtime can answer 413 instead of blaming the guest.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    tripped: Arc<AtomicBool>,
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.tripped.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.limit)),
                        )));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete, non-guest response (errors, 404s).
pub fn plain_response(status: http::StatusCode, body: String) -> http::Response<ResponseBody> {
    let mut resp = http::Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::app::{AppSource, load_app};
    use crate::runtime::{Runtime, RuntimeSettings};
    use crate::sizing;

    /// A handler that answers without waiting for anything must finish within the first poll
    /// of its request: no yield to the scheduler, no deadline timer. This broke once without
    /// anyone noticing — a new store's epoch deadline was left at 0, so every instance yielded
    /// at its first epoch check — and cost every request a scheduler round trip and a timer.
    ///
    /// A real epoch tick landing inside a poll makes that one attempt yield, legitimately; so
    /// the test asks for one attempt in 20 that finishes in one poll (before the fix: none).
    #[test]
    fn a_request_that_waits_for_nothing_finishes_in_its_first_poll() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = sizing::derive(&sizing::detect(), &sizing::Overrides::default()).unwrap();
        let runtime =
            Arc::new(Runtime::new(RuntimeSettings::from_sizing(&s, None), Metrics::new()).unwrap());
        // Past epoch 0 for certain, so a deadline left at 0 is in the past.
        runtime.wasi02_engine().increment_epoch();
        let app = rt.block_on(load_app(&runtime, &AppSource::Demo)).unwrap();
        let c = app.components[0].component.clone();

        let mut first_poll_ready = 0;
        for _ in 0..20 {
            let req = http::Request::builder()
                .uri("http://test.local/")
                .body(http_body_util::Empty::<Bytes>::new().map_err(
                    |e: std::convert::Infallible| -> wasmtime_wasi_http::Error { match e {} },
                ))
                .unwrap();
            rt.block_on(async {
                let mut fut = std::pin::pin!(c.handle(
                    req,
                    RequestCtx {
                        id: 1,
                        https: false
                    }
                ));
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let resp = match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => {
                        first_poll_ready += 1;
                        r
                    }
                    Poll::Pending => fut.await,
                };
                let body = resp.unwrap().into_body().collect().await.unwrap();
                assert_eq!(&body.to_bytes()[..], b"hello from outpost\n");
            });
        }
        assert!(
            first_poll_ready > 0,
            "every one of 20 hello requests yielded before answering"
        );
    }
}
