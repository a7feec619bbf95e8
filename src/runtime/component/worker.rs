//! Shared WASI 0.3 instances: one instance serving several requests of its component at once
//! (`reuse_concurrency` > 1, `docs/reuse.md`).
//!
//! Owns: the instances ("workers") of one WASI 0.3 component that take requests concurrently —
//! each a task that owns the store and runs its event loop, fed by a channel; which worker a
//! request goes to (one that is idle, or whose requests all wait on I/O, and below
//! `reuse_concurrency`); every request's deadline, enforced from outside the event loop (a
//! guest spinning in one request blocks the loop, so the loop cannot time itself out); when a
//! worker stops taking requests (it served `reuse`, a request was answered with an error code
//! or not at all, it hit its memory limit, it idled for `reuse_idle_timeout`, or the pool needs
//! its room) and when it is killed (a trap, or a request past its deadline: every request it
//! still serves fails with it).
//! Must not: know about sockets, protocols or routing; share an instance across components.
//!
//! Why a task per instance: a store is driven by one future at a time, and concurrent requests
//! must share its event loop (`Store::run_concurrent`). The price is a hop between tasks per
//! request, which the sequential reuse of the parent module does not pay; for handlers that
//! answer without waiting that makes sequential reuse the faster choice, and concurrency the
//! one that holds fewer instances while requests wait on I/O (`docs/benchmarks.md`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use wasmtime::Store;

use super::{
    Answer, AnswerSeen, AppComponent, HandlerPre, InflightGauge, LimitedBody,
    OFFLOAD_RELEASE_ABOVE, RequestCtx, ResponseBody, absolute_uri, internal, saturated, serve_p3,
};
use crate::runtime::admission::{Lease, Reclaim};
use crate::runtime::error::{RequestError, RequestErrorKind};
use crate::runtime::fair::{Meter, Metered, turn_to_start};
use crate::runtime::host::Host;
use crate::runtime::offload::{Running, on_guest_thread};

/// A request body as a worker takes it: one type for every listener's body.
type JobBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, wasmtime_wasi_http::Error>;

/// The workers of one component (only WASI 0.3 components with `reuse_concurrency` > 1 have
/// them). Never shared: each component has its own, so state an instance keeps never reaches
/// another component or tenant.
pub(crate) struct Workers {
    /// Live workers, oldest first; closed ones are dropped from it as dispatchers pass.
    list: Mutex<Vec<Arc<Worker>>>,
}

/// What a worker shares with the requests that look for one.
struct Worker {
    /// Where requests go; `None` once it takes no new ones (it finishes those it has).
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// Takes a request now: it is idle, or its requests all wait on I/O, and it serves fewer
    /// than `reuse_concurrency`. A dispatcher claims it (sets it false); the worker sets it
    /// again when its event loop next waits.
    available: AtomicBool,
    /// The pool needs room: stop once idle.
    stop: AtomicBool,
    /// Wakes the worker's task for `stop`.
    wake: AtomicWaker,
}

/// One request handed to a worker.
struct Job {
    req: http::Request<JobBody>,
    answer: oneshot::Sender<Answer>,
    deadline: Instant,
    /// The component's concurrency permit and the in-flight gauge: held until the request is
    /// done, body included.
    hold: (OwnedSemaphorePermit, InflightGauge),
    /// What happened to it if no answer comes.
    fate: Arc<Fate>,
    /// Gives the job back to its request if its worker ends before taking it (the request then
    /// tries another worker).
    bounce: Option<oneshot::Sender<Job>>,
}

impl Job {
    /// Back to its request, untouched; dropped (the request sees no answer) if it is gone.
    fn send_back(mut self) {
        if let Some(back) = self.bounce.take() {
            let _ = back.send(self);
        }
    }
}

/// How many workers a request tries before it starts one of its own, or gives up with a 503
/// (a worker killed with requests still in its channel gives them back).
const MAX_DISPATCHES: usize = 3;

/// Why a request's answer never came, told by the worker. The answer may be dropped before the
/// worker knows why (a trap ends the event loop, and the requests in it, first), so the request
/// waits for this too; dropped unset, it means the guest returned without answering.
struct Fate(Mutex<Option<oneshot::Sender<RequestError>>>);

impl Fate {
    fn new() -> (Arc<Self>, oneshot::Receiver<RequestError>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(Self(Mutex::new(Some(tx)))), rx)
    }

    /// Tells the request why; the first word counts.
    fn set(&self, e: RequestError) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(e);
        }
    }
}

// === impl Workers ===

impl Workers {
    pub(crate) fn new() -> Self {
        Self {
            list: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Worker>>> {
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `job` to a worker that takes it now, the most recent first (the others idle out);
    /// gives it back if none does.
    fn dispatch(&self, mut job: Job) -> Option<Job> {
        let mut list = self.lock();
        list.retain(|w| w.is_open());
        for w in list.iter().rev() {
            if !w.available.swap(false, Ordering::AcqRel) {
                continue;
            }
            let tx = w.lock_tx();
            if let Some(tx) = tx.as_ref() {
                match tx.send(job) {
                    Ok(()) => return None,
                    Err(mpsc::error::SendError(back)) => job = back,
                }
            }
        }
        Some(job)
    }
}

impl Drop for Workers {
    /// The component is unloaded: its workers take no more requests and end once those they
    /// have are done (not counted as discards, like the idle instances of an unloaded
    /// component without `reuse_concurrency`).
    fn drop(&mut self) {
        for w in self.lock().iter() {
            if w.close() {
                w.stop.store(true, Ordering::Release);
                w.wake.wake();
            }
        }
    }
}

impl Reclaim for Workers {
    /// Asks the idle workers to stop. They give their leases back as their tasks end, which
    /// grants the pool's waiters; nothing is free yet when this returns.
    fn reclaim(&self) -> usize {
        for w in self.lock().iter() {
            w.stop.store(true, Ordering::Release);
            w.wake.wake();
        }
        0
    }
}

// === impl Worker ===

impl Worker {
    fn lock_tx(&self) -> std::sync::MutexGuard<'_, Option<mpsc::UnboundedSender<Job>>> {
        self.tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_open(&self) -> bool {
        self.lock_tx().is_some()
    }

    /// Takes no new requests from now on; true if it took some until now.
    fn close(&self) -> bool {
        self.available.store(false, Ordering::Release);
        self.lock_tx().take().is_some()
    }
}

/// The requests a worker serves, shared by its event loop and the watch around it.
#[derive(Default)]
struct Serving {
    /// Deadline and sequence number of every request started and not done.
    deadlines: BTreeMap<(Instant, u64), Arc<Fate>>,
    /// CPU the worker had used when each request started, by sequence number.
    cpu_at_start: BTreeMap<u64, Duration>,
    /// Since when nothing runs in the instance (no request, no task it spawned).
    idle_since: Option<Instant>,
    /// The latest deadline of the requests done since the instance was last quiet: tasks a
    /// guest spawned to go on after its response must end by then (post-response work within
    /// the request's timeout, as for a fresh instance) or the instance is killed.
    post_return: Option<Instant>,
    /// Why it took no more requests, once it did not (for the discard metric).
    closed_because: Option<&'static str>,
}

/// How a worker's life ended.
enum Exit {
    /// Its event loop ended: it was closed and everything in it finished, or it trapped.
    Ended(wasmtime::Result<()>),
    /// A request passed its deadline (its sequence number; 0: the post-response work of the
    /// requests done passed theirs).
    TimedOut(u64),
}

// === impl AppComponent (the shared-instance path) ===

impl AppComponent {
    /// Serves `req` on a shared WASI 0.3 instance: one that takes it now, else a new one.
    pub(super) async fn handle_shared<B>(
        self: &Arc<Self>,
        workers: &Arc<Workers>,
        req: http::Request<LimitedBody<B>>,
        ctx: RequestCtx,
        own: OwnedSemaphorePermit,
        deadline: Instant,
        too_large: &AtomicBool,
    ) -> Result<http::Response<ResponseBody>, RequestError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let req = absolute_uri(req, ctx.https)?.map(|b| b.boxed_unsync());
        // Behind lighter apps' parked guests, if any (usually: straight through).
        turn_to_start(&self.account).await;
        let (answer, rx) = oneshot::channel::<Answer>();
        let (fate, fate_rx) = Fate::new();
        let mut job = Job {
            req,
            answer,
            deadline,
            hold: (own, InflightGauge::new(self.inflight.clone())),
            fate,
            bounce: None,
        };
        for tries in 1.. {
            if tries > MAX_DISPATCHES {
                return Err(saturated(format!(
                    "{MAX_DISPATCHES} instances ended before taking the request"
                )));
            }
            let (back, mut bounced) = oneshot::channel::<Job>();
            job.bounce = Some(back);
            match workers.dispatch(job) {
                Some(mine) => {
                    let lease = self.admit_pool().await?;
                    self.start_worker(workers, lease, mine)?;
                }
                None => self.reuse_hits.inc(),
            }
            // Taken by the worker (the bounce sender goes with the rest of the job), or given
            // back because the worker ended first.
            tokio::select! {
                biased;
                back = &mut bounced => match back {
                    Ok(back) => job = back,
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => break,
            }
        }
        let limit = self.limits.max_request_body;
        let body_too_large = || {
            RequestError::new(
                RequestErrorKind::BodyTooLarge,
                format!("request body exceeded max_request_body {limit}"),
            )
        };
        let answered = async {
            match rx.await {
                Ok(answer) => Ok(answer),
                Err(_) => Err(fate_rx.await.ok()),
            }
        };
        match tokio::time::timeout_at(deadline.into(), answered).await {
            Ok(Ok(Ok(_))) | Ok(Err(_)) if too_large.load(Ordering::Relaxed) => {
                Err(body_too_large())
            }
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(code))) => Err(RequestError::new(
                RequestErrorKind::Trap,
                format!("guest answered with error code {code}"),
            )),
            Ok(Err(Some(e))) => Err(e),
            Ok(Err(None)) => Err(RequestError::new(
                RequestErrorKind::NoResponse,
                "guest returned without setting a response",
            )),
            Err(_) => Err(RequestError::new(
                RequestErrorKind::Timeout,
                format!("no response within {:?}", self.limits.timeout),
            )),
        }
    }

    /// Starts a worker with `first` as its first request: a task on this thread, which moves to
    /// a guest thread if it runs long (or starts there for a heavy app), like any guest.
    fn start_worker(
        self: &Arc<Self>,
        workers: &Arc<Workers>,
        lease: Lease,
        first: Job,
    ) -> Result<(), RequestError> {
        let meter = Meter::shared(self.account.clone(), self.ticks.clone());
        let store = self
            .new_store(&meter)
            .map_err(|e| internal(format!("creating store state: {e:#}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Arc::new(Worker {
            tx: Mutex::new(Some(tx)),
            available: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: AtomicWaker::new(),
        });
        workers.lock().push(worker.clone());
        let HandlerPre::P3(pre) = &self.pre else {
            return Err(internal(
                "a WASI 0.2 component cannot serve requests concurrently",
            ));
        };
        let life = Life {
            pre: pre.clone(),
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
            app: self.app.clone(),
            label: self.label.clone(),
            pool: self.pool.clone(),
            guests: self.guests.clone(),
            memory_peak: self.memory_peak.clone(),
            component: Arc::downgrade(self),
        }
        .run(worker, store, lease, rx, first, meter.clone());
        Running::start(
            Metered::new(Box::pin(life), meter.clone()),
            self.account.is_heavy(),
            meter,
            self.guests.clone(),
        )
        .detach();
        Ok(())
    }
}

/// What a worker needs of its component. It holds no strong reference to the component: when
/// the component is unloaded (an upgrade, a removed app), its [`Workers`] are dropped and every
/// worker ends as soon as the requests it has are done, instead of idling on with a pool slot.
struct Life {
    pre: wasmtime_wasi_http::p3::bindings::ServicePre<Host>,
    limits: super::Limits,
    metrics: crate::ops::metrics::Metrics,
    app: Arc<str>,
    label: Arc<str>,
    pool: Arc<crate::runtime::admission::Pool>,
    guests: Arc<crate::runtime::offload::GuestThreads>,
    memory_peak: prometheus::Histogram,
    /// For its footprint estimate, while it is loaded.
    component: std::sync::Weak<AppComponent>,
}

impl Life {
    /// A worker's whole life: instantiate, serve until closed or killed, release.
    async fn run(
        self,
        worker: Arc<Worker>,
        mut store: Store<Host>,
        lease: Lease,
        mut rx: mpsc::UnboundedReceiver<Job>,
        first: Job,
        meter: Arc<Meter>,
    ) {
        let t0 = Instant::now();
        let service = match self.pre.instantiate_async(&mut store).await {
            Ok(s) => s,
            Err(e) => {
                worker.close();
                let hit = store.data().limiter.hit;
                let err = self.instance_failed(&e, hit);
                first.fate.set(err.clone());
                drop(first);
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    job.send_back();
                }
                self.metrics
                    .reuse_discards
                    .with_label_values(&[&*self.app, if hit { "memory_limit" } else { "trap" }])
                    .inc();
                drop(store);
                drop(lease);
                return;
            }
        };
        self.metrics
            .instantiate_duration
            .observe(t0.elapsed().as_secs_f64());
        let initial = store.data().limiter.total;

        let serving = Mutex::new(Serving::default());
        let lock = || {
            serving
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let limits = &self.limits;
        let close = |why: &'static str| {
            if worker.close() {
                lock().closed_because.get_or_insert(why);
            }
        };

        let exit = {
            let event_loop = store.run_concurrent(async |acc| {
                let func = *service.wasi_http_handler().func_handle().func();
                let service = &service;
                let mut jobs = FuturesUnordered::new();
                let mut first = Some(first);
                let mut seq = 0u64;
                std::future::poll_fn(|cx| {
                    loop {
                        // Finished requests first: one that ended badly stops this instance
                        // from taking more before anything else is looked at.
                        match jobs.poll_next_unpin(cx) {
                            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                            Poll::Ready(Some(Ok((n, answered)))) => {
                                {
                                    let mut s = lock();
                                    let done = s.deadlines.keys().find(|&&(_, m)| m == n).copied();
                                    if let Some(key) = done {
                                        s.deadlines.remove(&key);
                                        s.post_return = s.post_return.max(Some(key.0));
                                    }
                                    // Its weight for the app's heaviness: the instance's CPU
                                    // while it ran, split among the requests still running.
                                    if let Some(start) = s.cpu_at_start.remove(&n) {
                                        let share = meter.cpu().saturating_sub(start);
                                        meter.note_share(share / (s.deadlines.len() as u32 + 1));
                                    }
                                }
                                if answered != Some(true) {
                                    close("error");
                                }
                                if acc.with(|mut s| s.data_mut().limiter.hit) {
                                    close("memory_limit");
                                }
                                continue;
                            }
                            Poll::Ready(None) | Poll::Pending => {}
                        }
                        // Requests handed to this worker are taken once the instance can start
                        // a call (a guest may hold back new calls, or be inside a sync one).
                        if acc.poll_ready_for_concurrent_call(func, cx).is_ready() {
                            let next = match first.take() {
                                Some(job) => Poll::Ready(Some(job)),
                                None => rx.poll_recv(cx),
                            };
                            if let Poll::Ready(Some(job)) = next {
                                seq += 1;
                                let n = seq;
                                {
                                    let mut s = lock();
                                    s.idle_since = None;
                                    s.deadlines.insert((job.deadline, n), job.fate.clone());
                                    s.cpu_at_start.insert(n, meter.cpu());
                                }
                                if seq >= u64::from(limits.reuse) {
                                    close("max_requests");
                                }
                                jobs.push(async move {
                                    let Job {
                                        req, answer, hold, ..
                                    } = job;
                                    let ok = AnswerSeen::default();
                                    let served = serve_p3(acc, service, req, answer, &ok).await;
                                    drop(hold);
                                    served.map(|()| (n, ok.get()))
                                });
                                continue;
                            }
                            if let Poll::Ready(None) = next {
                                // Closed, and every request handed over is taken: once the
                                // instance is quiet, this worker is done.
                                if jobs.is_empty() && acc.poll_no_interesting_tasks(cx).is_ready() {
                                    return Poll::Ready(Ok(()));
                                }
                                return Poll::Pending;
                            }
                        }
                        if jobs.is_empty() && acc.poll_no_interesting_tasks(cx).is_ready() {
                            let mut s = lock();
                            s.idle_since.get_or_insert_with(Instant::now);
                            s.post_return = None;
                        }
                        return Poll::Pending;
                    }
                })
                .await
            });
            let mut event_loop = std::pin::pin!(event_loop);
            let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
            let mut rested = false;
            std::future::poll_fn(|cx| {
                loop {
                    if let Poll::Ready(r) = event_loop.as_mut().poll(cx) {
                        return Poll::Ready(Exit::Ended(r.and_then(|r| r)));
                    }
                    // The loop waits: on I/O, a timer, the guest's next epoch slice, or the
                    // next request. Deadlines are checked here, where a spinning guest cannot
                    // keep them from being seen.
                    worker.wake.register(cx.waker());
                    let now = Instant::now();
                    let (earliest, idle_since, inflight) = {
                        let s = lock();
                        // With no request running, what runs is post-response work.
                        let post_return = s.post_return.filter(|_| s.deadlines.is_empty());
                        (
                            s.deadlines
                                .keys()
                                .next()
                                .copied()
                                .or(post_return.map(|d| (d, 0))),
                            s.idle_since,
                            s.deadlines.len(),
                        )
                    };
                    if let Some((d, n)) = earliest
                        && d <= now
                    {
                        return Poll::Ready(Exit::TimedOut(n));
                    }
                    let mut wake_at = earliest.map(|(d, _)| d);
                    if let Some(since) = idle_since {
                        if !rested {
                            meter.rest();
                            rested = true;
                        }
                        let why = if worker.stop.load(Ordering::Acquire) || self.pool.contended() {
                            Some("pool_contended")
                        } else if now >= since + limits.reuse_idle_timeout {
                            Some("idle")
                        } else {
                            None
                        };
                        if let Some(why) = why
                            && worker.is_open()
                        {
                            close(why);
                            // Its event loop sees the channel closed and ends.
                            continue;
                        }
                        let idle_end = since + limits.reuse_idle_timeout;
                        wake_at = Some(wake_at.map_or(idle_end, |w| w.min(idle_end)));
                    } else {
                        rested = false;
                    }
                    worker.available.store(
                        inflight < limits.reuse_concurrency as usize && worker.is_open(),
                        Ordering::Release,
                    );
                    if let Some(at) = wake_at {
                        let here = timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
                        if here.deadline() != at.into() {
                            here.as_mut().reset(at.into());
                        }
                        if here.as_mut().poll(cx).is_ready() {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
            })
            .await
        };

        // Whoever still waits for an answer learns why none comes, before the answers are
        // dropped with the event loop above; requests handed over but not taken, likewise.
        let hit = store.data().limiter.hit;
        let (verdict, reason) = match &exit {
            Exit::Ended(Ok(())) => (None, None),
            Exit::Ended(Err(e)) => (
                Some(self.instance_failed(e, hit)),
                Some(if hit { "memory_limit" } else { "trap" }),
            ),
            Exit::TimedOut(_) => (
                Some(RequestError::new(
                    RequestErrorKind::Timeout,
                    format!(
                        "the instance serving it was dropped: a request it served at the same \
                         time passed its timeout of {:?}",
                        self.limits.timeout
                    ),
                )),
                Some("timeout"),
            ),
        };
        worker.close();
        let (fates, closed_because) = {
            let mut s = lock();
            (std::mem::take(&mut s.deadlines), s.closed_because.take())
        };
        if let Some(verdict) = &verdict {
            for ((_, n), fate) in fates {
                fate.set(match &exit {
                    Exit::TimedOut(culprit) if *culprit == n => RequestError::new(
                        RequestErrorKind::Timeout,
                        format!("no response within {:?}", self.limits.timeout),
                    ),
                    _ => verdict.clone(),
                });
            }
        }
        rx.close();
        while let Ok(job) = rx.try_recv() {
            job.send_back();
        }
        if let Some(why) = reason.or(closed_because) {
            self.metrics
                .reuse_discards
                .with_label_values(&[&*self.app, why])
                .inc();
        }
        if let Exit::TimedOut(_) = exit {
            tracing::warn!(component = %self.label, timeout = ?self.limits.timeout, "a request on a shared instance hit its wall-clock timeout; the instance and the requests it served were dropped");
        }

        let peak = store.data().limiter.peak;
        self.memory_peak.observe(peak as f64);
        let grown = peak.saturating_sub(initial) as u64;
        if let Some(component) = self.component.upgrade() {
            component.observe_growth(grown);
        }
        // As in the parent's release: a big reset is kernel work that must not stall a serving
        // thread.
        let release = move || {
            drop(store);
            drop(lease);
        };
        if grown > OFFLOAD_RELEASE_ABOVE && !on_guest_thread() {
            self.guests.spawn(async move { release() }).detach();
        } else {
            release();
        }
    }

    /// The error every request of an instance that trapped (or failed to start) gets.
    fn instance_failed(&self, e: &wasmtime::Error, hit_memory_limit: bool) -> RequestError {
        if hit_memory_limit {
            RequestError::new(
                RequestErrorKind::MemoryLimit,
                format!(
                    "guest exceeded memory_limit {} bytes: {e:?}",
                    self.limits.memory_limit
                ),
            )
        } else {
            RequestError::new(RequestErrorKind::Trap, format!("{e:?}"))
        }
    }
}
