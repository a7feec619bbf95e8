//! Fair CPU across tenants.
//!
//! Owns: per-app CPU accounting (time spent polling an app's guests: instantiation, guest code
//! and the host calls it makes), each app's *virtual time* (CPU time divided by its weight, as in
//! CFS and deficit round robin), the per-thread run queue of guests waiting for their turn, the
//! policy of the epoch callback (when a running guest must give its thread back), and the request
//! for fast epoch ticks while a guest runs long.
//! Must not: know about sockets, HTTP or apps' routes; decide admission to the instance pool
//! (that is [`super::admission`]).
//!
//! # How a thread is shared
//! Every serving thread is a single-threaded tokio runtime, and a guest runs inline on the task of
//! the connection that asked for it. A guest that runs longer than [`MIN_SLICE`] is stopped at the
//! next epoch tick (wasmtime's epoch callback) and parks in its thread's [`Lane`]: it is resumed
//! only by that lane's dispatcher, a task that
//! 1. waits until the thread has run every other ready task and polled the I/O driver (a deferred
//!    `yield_now`), so accepts, reads, writes and handshakes never wait behind guests;
//! 2. then resumes parked guests one at a time, always from the app with the lowest virtual time,
//!    until one [`ROUND`] of wall time is used, and goes back to step 1.
//!
//! Requests that finish inline (most) are ordered among apps by each thread's start gate
//! ([`Gate`]): an app that has started more this scheduler pass than any other app waits for the
//! next pass.
//!
//! A request of an app whose virtual time is not below every parked app's waits in the lane too
//! before it starts, so an app cannot get extra slices by opening more requests. An app that was
//! idle re-enters at the lane's minimum virtual time less [`GRACE`]: it is served at once, but
//! cannot bank credit while idle (CFS's "sleeper fairness").
//!
//! Before this module a yielding guest woke itself at once, went straight back onto the run
//! queue, and tokio's current-thread scheduler polls I/O only every 61 task polls: with four
//! spinning guests per thread at 5 ms slices, new input was looked at every ~300 ms
//! (`docs/fairness.md`).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use wasmtime::UpdateDeadline;

/// A guest that has run this long in one go yields at the next epoch tick. Handlers that answer
/// within it (nearly all of them) never yield: no scheduler round trip on the fast path.
pub const MIN_SLICE: Duration = Duration::from_micros(50);

/// How long a lane's dispatcher resumes parked guests before it lets the thread poll the network
/// again. Bounds the extra latency a light request sees beside CPU-bound neighbours.
pub const ROUND: Duration = Duration::from_micros(100);

/// Head start of an app that becomes active again, in virtual nanoseconds: enough for a burst of
/// short requests, too little to starve anyone.
pub const GRACE: Duration = Duration::from_millis(1);

/// An app whose requests recently used more CPU than this each (a moving average) starts its
/// requests on a guest thread ([`super::offload`]) rather than inline on the serving thread.
pub const HEAVY_CPU: Duration = Duration::from_micros(500);
/// See [`Account::note_request`].
const HEAVY_CAP: u64 = 4;

/// The least a request is assumed to cost when the start gate counts it ([`Gate`]).
const MIN_START_COST: Duration = Duration::from_micros(2);

/// The weight of an app that config does not name.
pub const DEFAULT_WEIGHT: u32 = 100;
/// The range of `cpu_weight` (validated by the config module, enforced again here).
pub const MAX_WEIGHT: u32 = crate::ops::config::MAX_CPU_WEIGHT;

/// Nanoseconds since the first call: a cheap monotonic clock that fits an atomic.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

thread_local! {
    static ON_GUEST_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as a guest thread ([`super::offload`] does, for each of its
/// threads): guests there park in the lane instead of moving, and are timed by CPU clock.
pub fn mark_guest_thread() {
    ON_GUEST_THREAD.with(|c| c.set(true));
}

/// Whether the calling thread is a guest thread.
pub fn on_guest_thread() -> bool {
    ON_GUEST_THREAD.with(std::cell::Cell::get)
}

/// CPU time of the calling thread, nanoseconds.
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// When a poll started (see [`Meter::poll_started`]).
#[derive(Clone, Copy)]
struct PollStart {
    wall: u64,
    cpu: Option<u64>,
}

// === impl Account ===

/// One app's CPU account, shared by all its components, requests, threads and releases (a hot
/// swap to a new version keeps the account).
pub struct Account {
    name: Arc<str>,
    /// Relative share of the CPU when the node is busy ([`DEFAULT_WEIGHT`] = one share).
    weight: AtomicU32,
    /// CPU nanoseconds × `DEFAULT_WEIGHT` / weight, ever increasing.
    vtime: AtomicU64,
    /// `outpost_guest_cpu_seconds_total{app}`.
    cpu_seconds: prometheus::Counter,
    /// `outpost_guest_thread_requests_total{app,how}`, how = started / moved.
    started_away: prometheus::IntCounter,
    moved_away: prometheus::IntCounter,
    /// Pool slots and bytes this app's requests hold now (kept by [`super::admission`]).
    pub(super) held_slots: AtomicU32,
    pub(super) held_bytes: AtomicU64,
    /// CPU nanoseconds per request, a moving average over the last ~8 requests.
    recent_cpu: AtomicU64,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("weight", &self.weight.load(Ordering::Relaxed))
            .field("vtime", &self.vtime.load(Ordering::Relaxed))
            .finish()
    }
}

impl Account {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    fn vtime(&self) -> u64 {
        self.vtime.load(Ordering::Relaxed)
    }

    /// Books `ns` of CPU to this app, as a poll on a guest thread does.
    #[cfg(test)]
    fn charge(&self, ns: u64) {
        self.charge_time(ns);
        self.charge_vtime(ns);
    }

    fn charge_time(&self, ns: u64) {
        self.cpu_seconds.inc_by(ns as f64 / 1e9);
    }

    fn charge_vtime(&self, ns: u64) {
        let w = u64::from(self.weight().max(1));
        self.vtime.fetch_add(
            ns.saturating_mul(u64::from(DEFAULT_WEIGHT)) / w,
            Ordering::Relaxed,
        );
    }

    /// Whether this app's requests are heavy enough to start on a guest thread.
    pub fn is_heavy(&self) -> bool {
        self.recent_cpu.load(Ordering::Relaxed) >= HEAVY_CPU.as_nanos() as u64
    }

    /// Folds one finished request's CPU time into the moving average. A request counts for at
    /// most [`HEAVY_CAP`] × [`HEAVY_CPU`]: CPU time is measured as the wall time of the guest's
    /// polls, so a light request whose thread the kernel preempted mid-poll can look long, and
    /// one such request must not make its app heavy (it takes three in a row); a really heavy
    /// app becomes so within three requests and light again within a dozen.
    fn note_request(&self, ns: u64) {
        let ns = ns.min(HEAVY_CAP * HEAVY_CPU.as_nanos() as u64);
        let _ = self
            .recent_cpu
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if ns >= old {
                    old + (ns - old) / 8
                } else {
                    old - (old - ns) / 8
                })
            });
    }

    /// What one request of this app is expected to cost, weighted like virtual time: the
    /// moving average, at least [`MIN_START_COST`] (a new app has no history).
    fn start_cost(&self) -> u64 {
        let ns = self
            .recent_cpu
            .load(Ordering::Relaxed)
            .max(MIN_START_COST.as_nanos() as u64);
        ns.saturating_mul(u64::from(DEFAULT_WEIGHT)) / u64::from(self.weight().max(1))
    }

    /// An app coming back from idle starts no further back than `floor`.
    fn catch_up(&self, floor: u64) {
        self.vtime.fetch_max(floor, Ordering::Relaxed);
    }
}

/// Every app's CPU account, by name, and the state the epoch ticker reads.
pub struct Accounts {
    by_name: Mutex<HashMap<String, Arc<Account>>>,
    weights: Mutex<HashMap<String, u32>>,
    cpu_seconds: prometheus::CounterVec,
    offloaded: prometheus::IntCounterVec,
    ticks: Arc<TickMode>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

impl Accounts {
    /// `cpu_seconds` is labelled by app, `offloaded` by app and how (`started`, `moved`).
    pub fn new(
        cpu_seconds: prometheus::CounterVec,
        offloaded: prometheus::IntCounterVec,
        ticks: Arc<TickMode>,
    ) -> Self {
        Self {
            by_name: Mutex::default(),
            weights: Mutex::default(),
            cpu_seconds,
            offloaded,
            ticks,
        }
    }

    /// Sets the weight of every app named in `weights` (others get [`DEFAULT_WEIGHT`]), for apps
    /// loaded now and later.
    pub fn set_weights(&self, weights: HashMap<String, u32>) {
        let by_name = lock(&self.by_name);
        for (name, t) in by_name.iter() {
            let w = weights.get(name).copied().unwrap_or(DEFAULT_WEIGHT);
            t.weight.store(w.clamp(1, MAX_WEIGHT), Ordering::Relaxed);
        }
        *lock(&self.weights) = weights;
    }

    /// The account of app `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<Account> {
        let mut by_name = lock(&self.by_name);
        if let Some(t) = by_name.get(name) {
            return t.clone();
        }
        let weight = lock(&self.weights)
            .get(name)
            .copied()
            .unwrap_or(DEFAULT_WEIGHT)
            .clamp(1, MAX_WEIGHT);
        let t = Arc::new(Account {
            name: name.into(),
            weight: AtomicU32::new(weight),
            vtime: AtomicU64::new(0),
            cpu_seconds: self.cpu_seconds.with_label_values(&[name]),
            started_away: self.offloaded.with_label_values(&[name, "started"]),
            moved_away: self.offloaded.with_label_values(&[name, "moved"]),
            held_slots: AtomicU32::new(0),
            held_bytes: AtomicU64::new(0),
            recent_cpu: AtomicU64::new(0),
        });
        by_name.insert(name.to_string(), t.clone());
        t
    }

    pub fn ticks(&self) -> &Arc<TickMode> {
        &self.ticks
    }

    /// An unregistered `offloaded` counter, for tests.
    #[cfg(test)]
    pub(super) fn test_offloaded() -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(prometheus::Opts::new("o", "o"), &["app", "how"])
            .expect("valid metric")
    }

    /// Every account, for the pool's share computation (a slow path).
    pub(super) fn all(&self) -> Vec<Arc<Account>> {
        lock(&self.by_name).values().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl TickMode ===

/// What the epoch ticker needs to know: whether some guest is running long (then slices must be
/// short, so ticks come fast), and since when none has.
#[derive(Debug, Default)]
pub struct TickMode {
    long_running: AtomicUsize,
    /// [`now_ns`] when the last long-running guest finished.
    last_long_ns: AtomicU64,
}

impl TickMode {
    /// Whether ticks should come fast now: a guest runs long, or one did within `linger`
    /// (a runaway request that is cut and sent again should not get a slow first slice).
    pub fn fast(&self, linger: Duration) -> bool {
        if self.long_running.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = self.last_long_ns.load(Ordering::Relaxed);
        last != 0 && now_ns().saturating_sub(last) < linger.as_nanos() as u64
    }
}

/// Waits for `tenant`'s turn to start a request on this thread's lane if other apps with less
/// virtual time are waiting; returns at once otherwise (the common case, and always when
/// nothing waits).
pub async fn turn_to_start(tenant: &Arc<Account>) {
    let lane = Lane::current();
    // Guest threads have no start gate: only heavy apps start there, ordered by the lane.
    let cost = (!on_guest_thread()).then(|| tenant.start_cost());
    let rx = loop {
        match lane.may_start(tenant, cost) {
            Ok(rx) => break rx,
            // Over its share of this epoch: wait for the next pass of the scheduler (after
            // every ready task and a poll of the I/O driver), where the epoch turns.
            Err(epoch) => {
                tokio::task::yield_now().await;
                lane.turn_epoch(epoch);
            }
        }
    };
    if let Some(rx) = rx {
        let _ = rx.await;
    }
}

// === impl Meter ===

/// One request's CPU meter: shared by the wrapper that times every poll of the guest
/// ([`Metered`]) and the store's epoch callback ([`Meter::on_epoch`]).
pub struct Meter {
    tenant: Arc<Account>,
    ticks: Arc<TickMode>,
    /// [`now_ns`] at the start of the poll in progress.
    slice_start: AtomicU64,
    /// CPU nanoseconds so far.
    cpu_ns: AtomicU64,
    /// Times the guest was stopped by an epoch tick.
    stops: AtomicU32,
    /// Set at the second stop: the guest counts as running long (fast ticks).
    long: AtomicBool,
    /// Whether whoever polls the guest on a serving thread moves it to a guest thread when asked
    /// ([`super::offload::Running`]); otherwise it parks in the thread's lane.
    movable: AtomicBool,
    /// Set by the epoch callback: move the guest now.
    moving: AtomicBool,
    /// The serving thread's CPU clock and [`now_ns`] when the epoch callback last looked at a
    /// poll that had run past its slice; `u64::MAX` until it has (see [`Meter::confirmed_running`]).
    probe_cpu: AtomicU64,
    probe_wall: AtomicU64,
    /// Part of `cpu_ns` that does not count towards the app being heavy.
    excluded_ns: AtomicU64,
    /// Meters an instance serving many requests (a WASI 0.3 worker), not one request: its
    /// requests are weighed one by one ([`Meter::note_share`]), never its total.
    shared: bool,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("tenant", &self.tenant.name)
            .field("cpu", &self.cpu())
            .finish()
    }
}

impl Meter {
    /// A meter for a request of `tenant`.
    pub fn new(tenant: Arc<Account>, ticks: Arc<TickMode>) -> Arc<Self> {
        Self::build(tenant, ticks, false)
    }

    /// A meter for an instance that serves many requests of `tenant`, several at once (see the
    /// `shared` field).
    pub fn shared(tenant: Arc<Account>, ticks: Arc<TickMode>) -> Arc<Self> {
        Self::build(tenant, ticks, true)
    }

    fn build(tenant: Arc<Account>, ticks: Arc<TickMode>, shared: bool) -> Arc<Self> {
        Arc::new(Self {
            shared,
            tenant,
            ticks,
            slice_start: AtomicU64::new(now_ns()),
            cpu_ns: AtomicU64::new(0),
            stops: AtomicU32::new(0),
            long: AtomicBool::new(false),
            movable: AtomicBool::new(false),
            moving: AtomicBool::new(false),
            probe_cpu: AtomicU64::new(u64::MAX),
            probe_wall: AtomicU64::new(0),
            excluded_ns: AtomicU64::new(0),
        })
    }

    /// Leaves `d` (already booked as CPU) out of the request's weight when its app's
    /// heaviness is judged: for host work whose wall time is mostly waiting on the kernel.
    pub(super) fn exclude(&self, d: Duration) {
        self.excluded_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Weighs one request served by a shared meter's instance, `cpu` its share of the time.
    pub(super) fn note_share(&self, cpu: Duration) {
        self.tenant.note_request(cpu.as_nanos() as u64);
    }

    /// A shared meter's instance went idle: its next busy spell starts afresh (it counts as
    /// running long again only if stopped twice again, so an idle instance never keeps the
    /// node's ticks fast).
    pub(super) fn rest(&self) {
        self.stops.store(0, Ordering::Relaxed);
        if self.long.swap(false, Ordering::Relaxed) {
            self.ticks.last_long_ns.store(now_ns(), Ordering::Relaxed);
            self.ticks.long_running.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// See the `movable` field.
    pub(super) fn set_movable(&self) {
        self.movable.store(true, Ordering::Relaxed);
    }

    /// Whether the epoch callback asked for the guest to move (and clears the request).
    pub(super) fn take_move(&self) -> bool {
        self.moving.load(Ordering::Relaxed) && self.moving.swap(false, Ordering::Relaxed)
    }

    /// Counts this request's guest going to a guest thread: `moved` from a serving thread, or
    /// started there.
    pub(super) fn note_offload(&self, moved: bool) {
        if moved {
            self.tenant.moved_away.inc();
        } else {
            self.tenant.started_away.inc();
        }
    }

    /// CPU time booked to this request so far.
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))
    }

    /// Waits for this app's turn on this thread's lane if other apps with less virtual time are
    /// waiting; returns at once otherwise (the common case, and always when nothing waits).
    pub async fn turn_to_start(&self) {
        turn_to_start(&self.tenant).await;
    }

    /// The epoch callback: continue a guest that has not used its minimum slice; otherwise move
    /// it off a serving thread if it is movable, or park it in its thread's lane until the
    /// dispatcher resumes it.
    pub fn on_epoch(&self) -> UpdateDeadline {
        let ran = now_ns().saturating_sub(self.slice_start.load(Ordering::Relaxed));
        if ran < MIN_SLICE.as_nanos() as u64 {
            return UpdateDeadline::Continue(1);
        }
        if self.movable.load(Ordering::Relaxed) && !on_guest_thread() {
            if !self.confirmed_running() {
                return UpdateDeadline::Continue(1);
            }
            self.mark_long();
            // Pending once, and woken at once: whoever polls sees `moving` and moves it.
            self.moving.store(true, Ordering::Relaxed);
            return UpdateDeadline::Yield(1);
        }
        // The first stop may be the kernel's doing (the thread was preempted mid-poll, which the
        // wall clock counts as running); a guest stopped a second time really is CPU-bound, and
        // only then do ticks go fast — otherwise a busy node would tick fast for nothing.
        if self.stops.fetch_add(1, Ordering::Relaxed) == 1 {
            self.mark_long();
        }
        let rx = Lane::current().enqueue(&self.tenant);
        UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                // An error means the dispatcher is gone (its runtime shut down): carry on.
                let _ = rx.await;
            }),
        )
    }

    /// Counts this guest as running long (fast ticks until it ends), once.
    fn mark_long(&self) {
        if !self.long.swap(true, Ordering::Relaxed) {
            self.ticks.long_running.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether a guest past its slice on a serving thread is really using the CPU. The wall
    /// clock cannot tell: the kernel may have preempted the thread mid-poll (other threads,
    /// other processes), or a host call may be waiting in the kernel (a page fault behind the
    /// memory-map lock). Moving such a guest would send a light request to wait behind heavy
    /// guests — measured as 1 % of a light app's requests moved beside `/grow/30`, each for
    /// tens of milliseconds. So the thread's CPU clock (a system call, made only here) is
    /// sampled at one tick and compared at the next: the guest moves only if the thread ran for
    /// at least half the time between them.
    fn confirmed_running(&self) -> bool {
        let cpu = thread_cpu_ns();
        let wall = now_ns();
        let prev_cpu = self.probe_cpu.swap(cpu, Ordering::Relaxed);
        let prev_wall = self.probe_wall.swap(wall, Ordering::Relaxed);
        if prev_cpu == u64::MAX {
            return false;
        }
        let ran = cpu.saturating_sub(prev_cpu);
        ran.saturating_mul(2) >= wall.saturating_sub(prev_wall)
    }

    /// Starts timing a poll: the wall clock, and on a guest thread the thread's CPU clock too.
    fn poll_started(&self) -> PollStart {
        let t = now_ns();
        self.slice_start.store(t, Ordering::Relaxed);
        self.probe_cpu.store(u64::MAX, Ordering::Relaxed);
        PollStart {
            wall: t,
            cpu: on_guest_thread().then(thread_cpu_ns),
        }
    }

    /// Books a poll's time. On a serving thread that is its wall time: one clock read, and the
    /// kernel rarely preempts a serving thread. A guest thread runs at a lower priority and is
    /// preempted by design, so there the thread's CPU clock is read (a system call, worth it
    /// for the long polls that run there): otherwise an app whose requests run there would be
    /// charged for the time others ran, and look heavy because it was preempted.
    fn poll_ended(&self, started: PollStart) {
        let ns = match started.cpu {
            Some(cpu) => thread_cpu_ns().saturating_sub(cpu),
            None => now_ns().saturating_sub(started.wall),
        };
        self.cpu_ns.fetch_add(ns, Ordering::Relaxed);
        self.tenant.charge_time(ns);
        // Virtual time orders the guests that wait in a lane, and (but for guests driven by
        // hand) guests wait only on guest threads: it counts what an app used there. Light
        // requests finished inline on a serving thread do not compete with the lane's guests
        // (the kernel runs the serving threads first); counting them would put a light app's
        // one moved request behind a spinner until the spinner had caught up with all the
        // light app's inline traffic — seconds.
        if started.cpu.is_some() || !self.movable.load(Ordering::Relaxed) {
            self.tenant.charge_vtime(ns);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // A shared meter's requests were weighed one by one.
        if !self.shared {
            let weighed = self
                .cpu_ns
                .get_mut()
                .saturating_sub(*self.excluded_ns.get_mut());
            self.tenant.note_request(weighed);
        }
        if *self.long.get_mut() {
            self.ticks.last_long_ns.store(now_ns(), Ordering::Relaxed);
            self.ticks.long_running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Times every poll of `inner` and books it to the meter's app.
pub struct Metered<F> {
    inner: F,
    meter: Arc<Meter>,
}

impl<F> Metered<F> {
    pub fn new(inner: F, meter: Arc<Meter>) -> Self {
        Self { inner, meter }
    }
}

impl<F: Future + Unpin> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let started = this.meter.poll_started();
        let out = Pin::new(&mut this.inner).poll(cx);
        this.meter.poll_ended(started);
        out
    }
}

// === impl Lane ===

/// One thread's queue of guests waiting for CPU, by app.
pub struct Lane {
    state: Mutex<LaneState>,
    /// Wakes the dispatcher when the first guest parks.
    kick: Notify,
}

#[derive(Default)]
struct LaneState {
    /// Apps with parked guests, each with its guests in arrival order.
    queues: Vec<(Arc<Account>, VecDeque<oneshot::Sender<()>>)>,
    parked: usize,
    /// Virtual time of the app resumed last: never decreases. Apps re-enter at this less GRACE.
    min_vtime: u64,
    /// Whether a dispatcher task serves this lane.
    dispatching: bool,
    /// Requests starting inline, by app.
    gate: Gate,
}

/// The start gate of a serving thread: how apps share the thread between requests that finish
/// inline, in one poll each.
///
/// Such requests never park in the lane, so the order they run in is the order their
/// connections became ready: an app with 16 connections beside three with 2 each got ~69 % of
/// the requests. The gate counts, per *epoch*, the estimated cost of the requests each app
/// started here ([`Account::start_cost`], weighted). An app may start a request if it has
/// started none in this epoch, or if with this one it stays within the most any other app
/// started in this epoch or the last; otherwise the request waits for the next pass of the
/// scheduler (a deferred `yield_now`: after every ready task and a poll of the I/O driver), and
/// the first one to come back from that wait turns the epoch. So while any app is held back an
/// epoch is one pass, every app starts at least one request a pass, and an app alone — or one
/// no busier than the others — is never held at all (deficit round robin over passes).
#[derive(Default)]
struct Gate {
    epoch: u64,
    apps: Vec<GateEntry>,
}

struct GateEntry {
    app: Arc<Account>,
    /// Weighted cost started in this epoch and in the last.
    cur: u64,
    prev: u64,
}

impl Lane {
    /// The lane of the current thread.
    pub fn current() -> Arc<Lane> {
        thread_local! {
            static LANE: Arc<Lane> = Arc::new(Lane {
                state: Mutex::default(),
                kick: Notify::new(),
            });
        }
        LANE.with(Arc::clone)
    }

    /// Whether a request of `tenant` costing `cost` may start now (see [`Gate`]; `None`: no
    /// gate); if so it is counted, and it may still have to park behind lighter apps' guests
    /// ([`Lane::park_if_behind`]). `Err` carries the epoch to pass to [`Lane::turn_epoch`] after
    /// waiting. One lock for both: this runs at the start of every request.
    fn may_start(
        self: &Arc<Self>,
        tenant: &Arc<Account>,
        cost: Option<u64>,
    ) -> Result<Option<oneshot::Receiver<()>>, u64> {
        let mut st = lock(&self.state);
        if let Some(cost) = cost {
            Self::gate(&mut st.gate, tenant, cost)?;
        }
        Ok(self.park_if_behind(&mut st, tenant))
    }

    /// The start gate's decision; counts the request when it may start.
    fn gate(g: &mut Gate, tenant: &Arc<Account>, cost: u64) -> Result<(), u64> {
        let mut mine = None;
        let mut others: Option<u64> = None;
        for (i, e) in g.apps.iter().enumerate() {
            if Arc::ptr_eq(&e.app, tenant) {
                mine = Some(i);
            } else {
                let most = e.cur.max(e.prev);
                others = Some(others.map_or(most, |o| o.max(most)));
            }
        }
        let i = match mine {
            Some(i) => i,
            None => {
                g.apps.push(GateEntry {
                    app: tenant.clone(),
                    cur: 0,
                    prev: 0,
                });
                g.apps.len() - 1
            }
        };
        let e = &mut g.apps[i];
        let within = others.is_none_or(|o| e.cur.saturating_add(cost) <= o);
        if e.cur == 0 || within {
            e.cur = e.cur.saturating_add(cost);
            Ok(())
        } else {
            Err(g.epoch)
        }
    }

    /// Starts a new gate epoch unless one began since `epoch`: apps that started nothing in
    /// the last two are forgotten.
    fn turn_epoch(&self, epoch: u64) {
        let mut st = lock(&self.state);
        let g = &mut st.gate;
        if g.epoch != epoch {
            return;
        }
        g.epoch += 1;
        g.apps.retain_mut(|e| {
            e.prev = std::mem::take(&mut e.cur);
            e.prev > 0
        });
    }

    /// Parks a guest of `tenant`; the receiver completes when it may run.
    fn enqueue(self: &Arc<Self>, tenant: &Arc<Account>) -> oneshot::Receiver<()> {
        let mut st = lock(&self.state);
        self.park(&mut st, tenant)
    }

    /// For a request about to start: parks it only if another app with no more virtual time is
    /// waiting (so an app cannot jump the queue by starting requests instead of yielding).
    #[cfg(test)]
    fn enqueue_if_behind(self: &Arc<Self>, tenant: &Arc<Account>) -> Option<oneshot::Receiver<()>> {
        let mut st = lock(&self.state);
        self.park_if_behind(&mut st, tenant)
    }

    /// See [`Lane::enqueue_if_behind`].
    fn park_if_behind(
        self: &Arc<Self>,
        st: &mut LaneState,
        tenant: &Arc<Account>,
    ) -> Option<oneshot::Receiver<()>> {
        if st.parked == 0 {
            return None;
        }
        tenant.catch_up(st.min_vtime.saturating_sub(GRACE.as_nanos() as u64));
        let mine = tenant.vtime();
        let behind = st
            .queues
            .iter()
            .any(|(t, q)| !q.is_empty() && t.vtime() <= mine);
        behind.then(|| self.park(st, tenant))
    }

    fn park(self: &Arc<Self>, st: &mut LaneState, tenant: &Arc<Account>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if !st.dispatching {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                // No runtime to dispatch on (a guest driven by hand): never park.
                let _ = tx.send(());
                return rx;
            };
            st.dispatching = true;
            // The guard is made here, not inside the task, so that it runs even if the task is
            // dropped before its first poll.
            rt.spawn(dispatch(Stop(self.clone())));
        }
        match st.queues.iter_mut().find(|(t, _)| Arc::ptr_eq(t, tenant)) {
            Some((_, q)) => q.push_back(tx),
            None => {
                tenant.catch_up(st.min_vtime.saturating_sub(GRACE.as_nanos() as u64));
                st.queues.push((tenant.clone(), VecDeque::from([tx])));
            }
        }
        st.parked += 1;
        if st.parked == 1 {
            self.kick.notify_one();
        }
        rx
    }

    /// Resumes the oldest parked guest of the app with the least virtual time. Returns false
    /// when nothing is parked.
    fn resume_next(&self) -> bool {
        let mut st = lock(&self.state);
        loop {
            let Some(i) = (0..st.queues.len()).min_by_key(|&i| st.queues[i].0.vtime()) else {
                return false;
            };
            let vtime = st.queues[i].0.vtime();
            st.min_vtime = st.min_vtime.max(vtime);
            let tx = st.queues[i].1.pop_front();
            if st.queues[i].1.is_empty() {
                st.queues.swap_remove(i);
            }
            let Some(tx) = tx else { continue };
            st.parked -= 1;
            // A guest whose request was dropped meanwhile (timeout, client gone) has no receiver.
            if tx.send(()).is_ok() {
                return true;
            }
        }
    }

    fn parked(&self) -> usize {
        lock(&self.state).parked
    }
}

/// Ends a lane's dispatcher. On drop (its runtime is shutting down) the lane may start another,
/// and parked guests are released rather than left waiting for a task that is gone.
struct Stop(Arc<Lane>);

impl Drop for Stop {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.dispatching = false;
        st.queues.clear();
        st.parked = 0;
    }
}

/// A lane's dispatcher: see the module docs. Lives as long as its runtime.
async fn dispatch(stop: Stop) {
    let lane = &stop.0;
    loop {
        let kicked = lane.kick.notified();
        if lane.parked() == 0 {
            kicked.await;
            continue;
        }
        drop(kicked);
        // Deferred: runs after every ready task and a poll of the I/O driver.
        tokio::task::yield_now().await;
        let round = Instant::now();
        while lane.resume_next() {
            // Immediately re-queued behind the guest just resumed, so it runs before we look
            // at the clock again.
            YieldOnce(false).await;
            if round.elapsed() >= ROUND {
                break;
            }
        }
    }
}

/// Pending once, waking itself at once (unlike `tokio::task::yield_now`, which waits for the
/// I/O driver).
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A serving thread's kind of runtime.
    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn tenants() -> Accounts {
        let cv = prometheus::CounterVec::new(
            prometheus::Opts::new("outpost_guest_cpu_seconds_total", "test"),
            &["app"],
        )
        .unwrap();
        Accounts::new(cv, Accounts::test_offloaded(), Arc::default())
    }

    fn lane() -> Arc<Lane> {
        Arc::new(Lane {
            state: Mutex::default(),
            kick: Notify::new(),
        })
    }

    /// Turns the lane's gate epoch.
    fn turn(lane: &Lane) {
        let epoch = lane.state.lock().unwrap().gate.epoch;
        lane.turn_epoch(epoch);
    }

    /// Starts requests of `app` until the gate says wait; returns how many started.
    fn start_all(lane: &Arc<Lane>, app: &Arc<Account>, want: usize) -> (usize, Option<u64>) {
        for n in 0..want {
            if let Err(epoch) = lane.may_start(app, Some(app.start_cost())) {
                return (n, Some(epoch));
            }
        }
        (want, None)
    }

    #[test]
    fn the_start_gate_gives_each_busy_app_an_equal_turn_per_epoch() {
        let t = tenants();
        let (a, b, c) = (t.get("a"), t.get("b"), t.get("c"));
        let lane = lane();
        // Alone, an app is never held back.
        assert_eq!(start_all(&lane, &a, 100), (100, None));
        // A second app may always start one; then the first is held until it is even...
        assert_eq!(start_all(&lane, &b, 1), (1, None));
        let (n, epoch) = start_all(&lane, &a, 1);
        assert_eq!(n, 0, "a is 100 requests ahead in this epoch");
        lane.turn_epoch(epoch.unwrap());
        // ...and in the next epoch gets as much as the busiest other app had (b: one).
        assert_eq!(start_all(&lane, &a, 16).0, 1);
        assert_eq!(
            start_all(&lane, &b, 2).0,
            2,
            "b may match a's 100 of the last epoch"
        );
        assert_eq!(start_all(&lane, &c, 1).0, 1);
        // A stale turn does nothing; the current one turns.
        lane.turn_epoch(0);
        let (n, epoch) = start_all(&lane, &a, 16);
        assert_eq!(n, 1, "a matches b's two");
        lane.turn_epoch(epoch.unwrap());
        // Three apps with 16, 1 and 1 requests ready per pass: after one epoch (a may still
        // match b's two of the last), one each per epoch.
        for i in 0..6 {
            let (na, ea) = start_all(&lane, &a, 16);
            let (nb, _) = start_all(&lane, &b, 1);
            let (nc, _) = start_all(&lane, &c, 1);
            assert_eq!(
                (na, nb, nc),
                (if i == 0 { 2 } else { 1 }, 1, 1),
                "epoch {i}"
            );
            lane.turn_epoch(ea.unwrap());
        }
        // Equal apps with four each: nobody waits.
        for _ in 0..2 {
            turn(&lane);
        }
        for _ in 0..3 {
            for app in [&a, &b, &c] {
                assert_eq!(start_all(&lane, app, 4), (4, None));
            }
            turn(&lane);
        }
        // Apps that start nothing for two epochs are forgotten: a is alone again.
        turn(&lane);
        turn(&lane);
        assert_eq!(start_all(&lane, &a, 50), (50, None));
    }

    #[test]
    fn the_start_gate_counts_cost_by_weight() {
        let t = tenants();
        t.set_weights(HashMap::from([("heavy".to_string(), 300)]));
        let (w, d) = (t.get("heavy"), t.get("default"));
        let lane = lane();
        assert_eq!(start_all(&lane, &d, 1).0, 1);
        assert_eq!(
            start_all(&lane, &w, 10).0,
            3,
            "weight 300: three per default app's one"
        );
        // Requests that cost more count for more.
        let x = t.get("costly");
        x.recent_cpu
            .store(4 * MIN_START_COST.as_nanos() as u64, Ordering::Relaxed);
        let lane = super::tests::lane();
        assert_eq!(start_all(&lane, &d, 4).0, 4);
        assert_eq!(
            start_all(&lane, &x, 4).0,
            1,
            "one costly request matches four cheap ones"
        );
    }

    #[test]
    fn charge_divides_by_weight_and_counts_seconds() {
        let ts = tenants();
        ts.set_weights(HashMap::from([("heavy".to_string(), 200)]));
        let (a, b) = (ts.get("heavy"), ts.get("plain"));
        a.charge(1_000_000);
        b.charge(1_000_000);
        assert_eq!((a.vtime(), b.vtime()), (500_000, 1_000_000));
        assert!((a.cpu_seconds.get() - 0.001).abs() < 1e-12);
        // Same account for the same name; weights follow config changes.
        assert!(Arc::ptr_eq(&a, &ts.get("heavy")));
        ts.set_weights(HashMap::new());
        assert_eq!(a.weight(), DEFAULT_WEIGHT);
    }

    /// Parked guests are resumed lightest app first, and an app coming back from idle re-enters
    /// near the lane's minimum instead of with credit banked while it was away.
    #[test]
    fn resumes_the_app_with_least_virtual_time_first() {
        current_thread().block_on(async {
            let ts = tenants();
            let (heavy, light, idle) = (ts.get("heavy"), ts.get("light"), ts.get("idle"));
            heavy.charge(50_000_000);
            light.charge(10_000_000);
            let lane = Lane::current();
            let order = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for (t, n) in [(&heavy, 2), (&light, 2)] {
                for _ in 0..n {
                    let rx = lane.enqueue(t);
                    let (order, t) = (order.clone(), t.clone());
                    tasks.push(tokio::spawn(async move {
                        rx.await.unwrap();
                        lock(&order).push(t.name().to_string());
                        // Each resumed guest "runs" 20 ms.
                        t.charge(20_000_000);
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(
                *lock(&order),
                ["light", "light", "heavy", "heavy"],
                "light (10 ms, then 30 ms) goes before heavy (50 ms)"
            );
            // `idle` never ran: it re-enters at min_vtime - GRACE, not at 0.
            let _rx = lane.enqueue_if_behind(&idle);
            assert!(
                idle.vtime() == 0
                    || idle.vtime() >= lock(&lane.state).min_vtime - GRACE.as_nanos() as u64
            );
        });
    }

    #[test]
    fn a_request_starts_at_once_unless_a_lighter_app_waits() {
        current_thread().block_on(async {
            let ts = tenants();
            let (heavy, light) = (ts.get("h2"), ts.get("l2"));
            let lane = Lane::current();
            // Nothing parked: nobody waits.
            assert!(lane.enqueue_if_behind(&heavy).is_none());
            heavy.charge(100_000_000);
            let parked = lane.enqueue(&heavy);
            // The light app is behind nobody; the heavy one is behind its own parked guest.
            assert!(lane.enqueue_if_behind(&light).is_none());
            let queued = lane
                .enqueue_if_behind(&heavy)
                .expect("heavy waits its turn");
            parked.await.unwrap();
            queued.await.unwrap();
            assert_eq!(lane.parked(), 0);
        });
    }

    #[test]
    fn a_dropped_runtime_releases_parked_guests() {
        let ts = tenants();
        let t = ts.get("x");
        let rx = {
            let rt = current_thread();
            // Inside the runtime (so a dispatcher is spawned), not awaited: the receiver outlives it.
            let _guard = rt.enter();
            Lane::current().enqueue(&t)
        };
        // The dispatcher task died with its runtime: the sender is gone, so the guest goes on.
        assert!(rx.blocking_recv().is_err());
        assert_eq!(Lane::current().parked(), 0);
    }
}
