//! Guest threads: where CPU-heavy guests run, away from the serving threads.
//!
//! Owns: a set of OS threads, each a single-threaded tokio runtime with its own fair lane
//! ([`super::fair::Lane`]), at a lower OS priority than the serving threads; placing a guest on
//! the least loaded of them; and [`Running`], a request's guest inline on the calling (serving)
//! thread until its meter asks it to move, then on a guest thread.
//! Must not: know about sockets, HTTP or apps' routes; decide *which* guest is heavy (that is
//! [`super::fair::Meter`] and the app's [`super::fair::Account`]).
//!
//! # Why separate threads
//! A serving thread runs the network (accepts, TLS, HTTP parsing, QUIC) and, inline, the guests
//! of the requests it reads: for the short handlers that are nearly all traffic this is the
//! fastest path there is. But wasmtime can stop a guest only at an epoch check in its code, and
//! a single host call — a `memory.fill` of 30 MiB, page faults included, or an instantiation that
//! touches a large image — runs for tens of milliseconds with no check at all. On a serving
//! thread that stalls every connection of the thread, whatever the scheduler does. On a guest
//! thread the kernel preempts it, since the serving threads have the higher priority.
//!
//! So a guest that is still running at an epoch tick after its minimum slice leaves the serving
//! thread for a guest thread, and an app whose requests recently needed more than
//! [`super::fair::HEAVY_CPU`] each starts its requests on a guest thread directly. On a guest
//! thread, guests of different apps take turns by virtual time exactly as
//! [`super::fair`] describes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::fair::Meter;

/// How much lower the guest threads' OS priority is than the serving threads' (a nice value
/// added to the process's). Under contention the kernel gives a nice-0 thread 1024 shares to
/// this one's 335: the network and short handlers first, heavy guests still moving.
pub const GUEST_THREAD_NICE: i32 = 5;

pub use super::fair::on_guest_thread;

/// The guest threads of one [`super::Runtime`]. They end when this is dropped (after finishing
/// the poll they are in).
pub struct GuestThreads {
    threads: Vec<GuestThread>,
}

struct GuestThread {
    handle: tokio::runtime::Handle,
    /// Guests placed on this thread and not yet finished.
    load: Arc<AtomicUsize>,
    /// Dropped with the set: the thread's runtime then shuts down.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for GuestThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestThreads")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl GuestThreads {
    /// Starts `n` (at least one) guest threads, each `nice` below the process's priority.
    pub fn start(n: usize, nice: i32) -> std::io::Result<Self> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("outpost-guest-{i}"))
                .spawn(move || {
                    super::fair::mark_guest_thread();
                    lower_priority(nice);
                    rt.block_on(async move {
                        let _ = stopped.await;
                    });
                    // Guests still placed here are dropped with the runtime, where they stand.
                    drop(rt);
                })?;
            threads.push(GuestThread {
                handle,
                load: Arc::default(),
                _stop: stop,
            });
        }
        Ok(Self { threads })
    }

    /// Runs `guest` on the least loaded guest thread. Dropping the returned handle aborts it
    /// (at its next yield); [`Placed::detach`] lets it run to its end instead.
    pub fn spawn<F>(&self, guest: F) -> Placed<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let t = self
            .threads
            .iter()
            .min_by_key(|t| t.load.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("GuestThreads::start makes at least one"));
        t.load.fetch_add(1, Ordering::Relaxed);
        let load = Load(t.load.clone());
        let task = t.handle.spawn(async move {
            let _load = load;
            guest.await
        });
        Placed {
            task: Some(task),
            abort_on_drop: true,
        }
    }
}

/// Counts a guest on its thread until it ends, however it ends.
struct Load(Arc<AtomicUsize>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Best effort: a thread that cannot lower its priority (a seccomp filter, say) still serves;
/// the kernel then shares the CPU between guest and serving threads evenly.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), (now + nice).min(19)) {
        tracing::debug!(error = %e, "cannot lower the priority of a guest thread");
    }
}

/// A guest placed on a guest thread: resolves to its output.
pub struct Placed<T> {
    task: Option<tokio::task::JoinHandle<T>>,
    abort_on_drop: bool,
}

impl<T> Placed<T> {
    /// Lets the guest run to its end even if nobody waits for it any more.
    pub fn detach(mut self) {
        self.abort_on_drop = false;
    }
}

impl<T> Future for Placed<T> {
    /// `None` if the guest panicked or its thread went away.
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(task).poll(cx) {
            Poll::Ready(r) => {
                self.task = None;
                Poll::Ready(r.ok())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for Placed<T> {
    fn drop(&mut self) {
        if self.abort_on_drop
            && let Some(t) = &self.task
        {
            t.abort();
        }
    }
}

/// One request's guest, wherever it runs: inline on the calling (serving) thread until its
/// meter asks it to move (it ran past its slice at an epoch tick, see [`Meter::on_epoch`]), then
/// on a guest thread. Dropping it cancels the guest, wherever it is.
pub struct Running<G: Future> {
    here: Option<G>,
    there: Option<Placed<G::Output>>,
    meter: Arc<Meter>,
    threads: Arc<GuestThreads>,
}

impl<G> Running<G>
where
    G: Future + Send + Unpin + 'static,
    G::Output: Send + 'static,
{
    /// Starts `guest` on this thread, or on a guest thread when `heavy`.
    pub fn start(guest: G, heavy: bool, meter: Arc<Meter>, threads: Arc<GuestThreads>) -> Self {
        let (here, there) = if heavy {
            meter.note_offload(false);
            (None, Some(threads.spawn(guest)))
        } else {
            meter.set_movable();
            (Some(guest), None)
        };
        Self {
            here,
            there,
            meter,
            threads,
        }
    }

    /// Drives the guest one step; `Ready(None)` if it panicked or its thread went away.
    pub fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<G::Output>> {
        if let Some(g) = self.here.as_mut() {
            if let Poll::Ready(out) = Pin::new(g).poll(cx) {
                self.here = None;
                return Poll::Ready(Some(out));
            }
            if !self.meter.take_move() {
                return Poll::Pending;
            }
            if let Some(g) = self.here.take() {
                self.meter.note_offload(true);
                self.there = Some(self.threads.spawn(g));
            }
        }
        match self.there.as_mut() {
            Some(p) => Pin::new(p).poll(cx),
            None => Poll::Ready(None),
        }
    }

    /// Lets the guest run to its end with nobody waiting for it (it streams a body whose
    /// response was handed over). It stays where it is, and still moves if it must.
    pub fn detach(mut self) {
        if let Some(p) = self.there.take() {
            p.detach();
            return;
        }
        if self.here.is_some() {
            tokio::spawn(async move {
                let mut this = self;
                std::future::poll_fn(|cx| this.poll_step(cx)).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fair::{Accounts, Metered, TickMode};
    use std::time::{Duration, Instant};

    fn meter() -> Arc<Meter> {
        let cv = prometheus::CounterVec::new(
            prometheus::Opts::new("outpost_guest_cpu_seconds_total", "test"),
            &["app"],
        )
        .unwrap();
        let ticks: Arc<TickMode> = Arc::default();
        let accounts = Accounts::new(cv, Accounts::test_offloaded(), ticks.clone());
        Meter::new(accounts.get("app"), ticks)
    }

    fn serving_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// What a guest does between epoch ticks in the tests below.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Between {
        /// Answers before any tick.
        Nothing,
        /// Runs on the CPU.
        Spins,
        /// Is off the CPU: blocked in the kernel, or its thread preempted.
        Blocks,
    }

    /// A guest still running on the CPU at epoch ticks after its minimum slice leaves the
    /// serving thread and finishes on a guest thread; a light one, or one whose poll lasted long
    /// only because its thread was off the CPU, finishes where it started.
    #[test]
    fn a_guest_past_its_slice_moves_to_a_guest_thread() {
        let threads = Arc::new(GuestThreads::start(2, 0).unwrap());
        serving_thread().block_on(async {
            for between in [Between::Nothing, Between::Spins, Between::Blocks] {
                let m = meter();
                let epoch = m.clone();
                let mut ticks = 0;
                let guest = std::future::poll_fn(move |cx| {
                    // Five ticks at most, 300 µs apart, each past the minimum slice.
                    while between != Between::Nothing && !on_guest_thread() && ticks < 5 {
                        ticks += 1;
                        match between {
                            Between::Spins => {
                                let t = Instant::now();
                                while t.elapsed() < Duration::from_micros(300) {}
                            }
                            _ => std::thread::sleep(Duration::from_micros(300)),
                        }
                        if let wasmtime::UpdateDeadline::Yield(_) = epoch.on_epoch() {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                    Poll::Ready(on_guest_thread())
                });
                let mut run = Running::start(
                    Metered::new(Box::pin(guest), m.clone()),
                    false,
                    m,
                    threads.clone(),
                );
                let ran_on_guest_thread = std::future::poll_fn(|cx| run.poll_step(cx))
                    .await
                    .expect("the guest finished");
                assert_eq!(
                    ran_on_guest_thread,
                    between == Between::Spins,
                    "{between:?}"
                );
            }
        });
    }

    /// A heavy app's guest starts on a guest thread, and dropping the request cancels it there.
    #[test]
    fn a_heavy_guest_starts_away_and_is_cancelled_with_its_request() {
        let threads = Arc::new(GuestThreads::start(1, 0).unwrap());
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel::<bool>();
        struct OnDrop(std::sync::mpsc::Sender<bool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(on_guest_thread());
            }
        }
        serving_thread().block_on(async {
            let m = meter();
            let guard = OnDrop(dropped_tx);
            let (started_tx, started_rx) = oneshot::channel();
            let guest = Box::pin(async move {
                let _guard = guard;
                let _ = started_tx.send(on_guest_thread());
                std::future::pending::<()>().await;
            });
            let run = Running::start(guest, true, m, threads.clone());
            assert!(started_rx.await.unwrap(), "started on a guest thread");
            drop(run);
        });
        let dropped_on_guest_thread = dropped_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the guest was cancelled");
        assert!(dropped_on_guest_thread);
    }
}
