//! Admission to the instance pool, by memory and by fair share.
//!
//! Owns: the node-wide budget of live instances — a slot count (what the pooling allocator was
//! built with) and a memory budget in bytes (derived from the machine or cgroup) — each request's
//! reservation against both (its component's measured footprint), the apps' fair shares of them
//! (by `cpu_weight`), and who waits or is refused when the pool is contended.
//! Must not: run guests, know about sockets or HTTP.
//!
//! # Policy
//! - While a request fits, it is admitted: the pool is work-conserving, one app alone may use all
//!   of it.
//! - When it does not fit (or others already wait), an app at or above its fair share — the
//!   budget × its weight / the weights of every app holding or waiting for capacity — is refused
//!   at once (503 + `Retry-After`), and so are its requests already waiting; an app below its
//!   share waits (bounded by the queue timeout) and capacity that frees up goes to the waiting app
//!   furthest below its share. The app that overloads the node gets the 503s, not its neighbours.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::fair::Account;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "instance pool contended and app {app} holds its share ({slots} of {share_slots} slots, \
         {bytes} of {share_bytes} bytes)"
    )]
    OverShare {
        app: String,
        slots: u32,
        share_slots: u32,
        bytes: u64,
        share_bytes: u64,
    },
    #[error("no room in the instance pool within {0:?}")]
    Timeout(Duration),
    #[error("request needs {need} bytes but the node's memory budget is {budget} bytes")]
    TooBig { need: u64, budget: u64 },
}

/// The pool's capacity and who holds it.
pub struct Pool {
    slots: u32,
    budget: u64,
    state: Mutex<State>,
    used_gauge: prometheus::IntGauge,
    bytes_gauge: prometheus::IntGauge,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("slots", &self.slots)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    slots: u32,
    bytes: u64,
    /// Apps holding or waiting for capacity.
    apps: Vec<AppUse>,
}

struct AppUse {
    tenant: Arc<Account>,
    slots: u32,
    bytes: u64,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    bytes: u64,
    tx: oneshot::Sender<Result<(), Refused>>,
}

impl AppUse {
    fn idle(&self) -> bool {
        self.slots == 0 && self.waiting.iter().all(|w| w.tx.is_closed())
    }
}

/// A request's hold on the pool, given back on drop.
pub struct Lease {
    pool: Arc<Pool>,
    tenant: Arc<Account>,
    bytes: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("app", &self.tenant.name())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Pool {
    pub fn new(
        slots: u32,
        budget: u64,
        used_gauge: prometheus::IntGauge,
        bytes_gauge: prometheus::IntGauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots: slots.max(1),
            budget: budget.max(1),
            state: Mutex::default(),
            used_gauge,
            bytes_gauge,
        })
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Admits a request of `tenant` that will hold about `bytes`, waiting up to `wait` when the
    /// pool is contended and the app is below its share.
    pub async fn admit(
        self: &Arc<Self>,
        tenant: &Arc<Account>,
        bytes: u64,
        wait: Duration,
    ) -> Result<Lease, Refused> {
        // A request bigger than the whole budget could never be admitted; let it run alone
        // rather than refuse an app whose estimate is simply above a tiny budget.
        let bytes = bytes.min(self.budget);
        let rx = {
            let mut st = self.lock();
            let i = st.app_index(tenant);
            let contended = st.apps.iter().any(|a| !a.waiting.is_empty()) || !self.fits(&st, bytes);
            if !contended {
                self.take(&mut st, i, bytes);
                return Ok(self.lease(tenant, bytes));
            }
            if let Some(refused) = self.over_share(&st, i, 1, bytes) {
                st.forget_if_idle(i);
                return Err(refused);
            }
            let (tx, rx) = oneshot::channel();
            st.apps[i].waiting.push_back(Waiter { bytes, tx });
            // A new app waiting shrinks everyone's share: apps now over it lose their queue.
            self.refuse_over_share_waiters(&mut st);
            self.grant_waiters(&mut st);
            rx
        };
        let mut rx = rx;
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(Ok(()))) => Ok(self.lease(tenant, bytes)),
            Ok(Ok(Err(refused))) => Err(refused),
            // The sender went away without an answer: only when the pool itself is dropped.
            Ok(Err(_)) => Err(Refused::Timeout(wait)),
            Err(_) => {
                // Closing first settles the race with a grant: either it landed (take it) or it
                // can no longer land.
                rx.close();
                if let Ok(Ok(())) = rx.try_recv() {
                    return Ok(self.lease(tenant, bytes));
                }
                let mut st = self.lock();
                let i = st.app_index(tenant);
                st.apps[i].waiting.retain(|w| !w.tx.is_closed());
                st.forget_if_idle(i);
                Err(Refused::Timeout(wait))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lease(self: &Arc<Self>, tenant: &Arc<Account>, bytes: u64) -> Lease {
        Lease {
            pool: self.clone(),
            tenant: tenant.clone(),
            bytes,
        }
    }

    fn fits(&self, st: &State, bytes: u64) -> bool {
        st.slots < self.slots && st.bytes.saturating_add(bytes) <= self.budget
    }

    fn take(&self, st: &mut State, i: usize, bytes: u64) {
        st.slots += 1;
        st.bytes += bytes;
        st.apps[i].slots += 1;
        st.apps[i].bytes += bytes;
        self.used_gauge.set(i64::from(st.slots));
        self.bytes_gauge.set(st.bytes as i64);
    }

    /// `Some` when app `i` holding `slots` more and `bytes` more would be above its share while
    /// another app waits. An app that only competes with itself is never refused for its share:
    /// it waits, as it would with no fairness at all.
    fn over_share(&self, st: &State, i: usize, slots: u32, bytes: u64) -> Option<Refused> {
        let others_wait = st
            .apps
            .iter()
            .enumerate()
            .any(|(j, a)| j != i && a.waiting.iter().any(|w| !w.tx.is_closed()));
        if !others_wait {
            return None;
        }
        let (share_slots, share_bytes) = self.share(st, i);
        let a = &st.apps[i];
        let (s, b) = (a.slots + slots, a.bytes + bytes);
        (s > share_slots || b > share_bytes).then(|| Refused::OverShare {
            app: a.tenant.name().to_string(),
            slots: a.slots,
            share_slots,
            bytes: a.bytes,
            share_bytes,
        })
    }

    /// App `i`'s fair share of slots and bytes among the apps holding or waiting for capacity.
    fn share(&self, st: &State, i: usize) -> (u32, u64) {
        let total: u64 = st
            .apps
            .iter()
            .enumerate()
            .filter(|(j, a)| *j == i || !a.idle())
            .map(|(_, a)| u64::from(a.tenant.weight()))
            .sum();
        let w = u64::from(st.apps[i].tenant.weight());
        let total = total.max(w).max(1);
        let slots = (u64::from(self.slots) * w / total).max(1);
        let bytes = (u128::from(self.budget) * u128::from(w) / u128::from(total)) as u64;
        (u32::try_from(slots).unwrap_or(u32::MAX), bytes)
    }

    fn refuse_over_share_waiters(&self, st: &mut State) {
        for i in 0..st.apps.len() {
            if st.apps[i].waiting.is_empty() {
                continue;
            }
            if let Some(refused) = self.over_share(st, i, 1, 0) {
                for w in st.apps[i].waiting.drain(..) {
                    let _ = w.tx.send(Err(refused.clone()));
                }
            }
        }
    }

    /// Hands free capacity to waiters, the app furthest below its share first.
    fn grant_waiters(&self, st: &mut State) {
        loop {
            for a in &mut st.apps {
                a.waiting.retain(|w| !w.tx.is_closed());
            }
            let best = (0..st.apps.len())
                .filter(|&i| !st.apps[i].waiting.is_empty())
                .min_by_key(|&i| {
                    let (ss, sb) = self.share(st, i);
                    let a = &st.apps[i];
                    // Use as a fraction of share, in parts per million; the larger of the two.
                    let s = u64::from(a.slots) * 1_000_000 / u64::from(ss.max(1));
                    let b = (u128::from(a.bytes) * 1_000_000 / u128::from(sb.max(1))) as u64;
                    s.max(b)
                });
            let Some(i) = best else { return };
            let need = st.apps[i].waiting.front().map_or(0, |w| w.bytes);
            if !self.fits(st, need) {
                return;
            }
            let Some(w) = st.apps[i].waiting.pop_front() else {
                return;
            };
            self.take(st, i, w.bytes);
            if w.tx.send(Ok(())).is_err() {
                // Gone in the meantime: undo.
                self.give_back(st, i, w.bytes);
            }
        }
    }

    fn give_back(&self, st: &mut State, i: usize, bytes: u64) {
        st.slots -= 1;
        st.bytes -= bytes;
        st.apps[i].slots -= 1;
        st.apps[i].bytes -= bytes;
        self.used_gauge.set(i64::from(st.slots));
        self.bytes_gauge.set(st.bytes as i64);
    }
}

impl State {
    fn app_index(&mut self, tenant: &Arc<Account>) -> usize {
        if let Some(i) = self
            .apps
            .iter()
            .position(|a| Arc::ptr_eq(&a.tenant, tenant))
        {
            return i;
        }
        self.apps.push(AppUse {
            tenant: tenant.clone(),
            slots: 0,
            bytes: 0,
            waiting: VecDeque::new(),
        });
        self.apps.len() - 1
    }

    fn forget_if_idle(&mut self, i: usize) {
        if self.apps[i].idle() {
            self.apps.swap_remove(i);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pool = self.pool.clone();
        let mut st = pool.lock();
        let i = st.app_index(&self.tenant);
        pool.give_back(&mut st, i, self.bytes);
        pool.grant_waiters(&mut st);
        let i = st.app_index(&self.tenant);
        st.forget_if_idle(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fair::Accounts;

    fn setup(slots: u32, budget: u64) -> (Arc<Pool>, Accounts) {
        let cv = prometheus::CounterVec::new(prometheus::Opts::new("c", "c"), &["app"]).unwrap();
        let g = || prometheus::IntGauge::new("g", "g").unwrap();
        (
            Pool::new(slots, budget, g(), g()),
            Accounts::new(cv, Arc::default()),
        )
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn one_app_alone_may_fill_the_pool_then_waits() {
        let (pool, ts) = setup(4, 1 << 30);
        let a = ts.get("a");
        let mut leases = Vec::new();
        for _ in 0..4 {
            leases.push(pool.admit(&a, 1000, WAIT).await.unwrap());
        }
        // Full; alone it is at its share, not over it, so it waits — and gets the slot freed.
        let p = pool.clone();
        let a2 = a.clone();
        let waiting = tokio::spawn(async move { p.admit(&a2, 1000, WAIT).await });
        tokio::task::yield_now().await;
        leases.pop();
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn the_app_over_its_share_is_refused_and_its_neighbour_served() {
        let (pool, ts) = setup(4, 1 << 30);
        let (hog, light) = (ts.get("hog"), ts.get("light"));
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.admit(&hog, 1000, WAIT).await.unwrap());
        }
        // The hog queues one more (alone, it is within its share).
        let p = pool.clone();
        let h = hog.clone();
        let hog_queued = tokio::spawn(async move { p.admit(&h, 1000, WAIT).await });
        tokio::task::yield_now().await;
        // The light app arrives: it waits; the hog's queued request is refused at once.
        let p = pool.clone();
        let l = light.clone();
        let light_waiting = tokio::spawn(async move { p.admit(&l, 1000, WAIT).await });
        let refused = hog_queued.await.unwrap().unwrap_err();
        assert!(matches!(refused, Refused::OverShare { ref app, .. } if app == "hog"));
        // New hog requests are refused without waiting.
        assert!(matches!(
            pool.admit(&hog, 1000, WAIT).await,
            Err(Refused::OverShare { .. })
        ));
        // A slot frees: it goes to the light app.
        held.pop();
        assert!(light_waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn memory_binds_before_slots() {
        let (pool, ts) = setup(1000, 10 << 20);
        let (big, small) = (ts.get("big"), ts.get("small"));
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(pool.admit(&big, 1 << 20, WAIT).await.unwrap());
        }
        // Budget used up by 10 slots of 1000: the small app waits, the big one is over share.
        let p = pool.clone();
        let s = small.clone();
        let small_waiting = tokio::spawn(async move { p.admit(&s, 64 << 10, WAIT).await });
        tokio::task::yield_now().await;
        assert!(matches!(
            pool.admit(&big, 1 << 20, WAIT).await,
            Err(Refused::OverShare { .. })
        ));
        held.pop();
        assert!(small_waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_the_queue_timeout() {
        let (pool, ts) = setup(1, 1 << 30);
        let (a, b) = (ts.get("a"), ts.get("b"));
        let _held = pool.admit(&a, 1, WAIT).await.unwrap();
        let r = pool.admit(&b, 1, Duration::from_millis(100)).await;
        assert_eq!(r.unwrap_err(), Refused::Timeout(Duration::from_millis(100)));
        // Nothing leaked: b's entry is gone, and a fits again once it gives back.
        drop(_held);
        assert!(pool.admit(&b, 1, WAIT).await.is_ok());
    }

    #[tokio::test]
    async fn weights_divide_the_pool() {
        let (pool, ts) = setup(8, 1 << 30);
        ts.set_weights(std::collections::HashMap::from([("gold".to_string(), 300)]));
        let (gold, base) = (ts.get("gold"), ts.get("base"));
        let st = {
            let mut st = pool.lock();
            let g = st.app_index(&gold);
            let b = st.app_index(&base);
            // Both active.
            st.apps[b].slots = 1;
            st.apps[g].slots = 1;
            (pool.share(&st, g), pool.share(&st, b))
        };
        assert_eq!((st.0.0, st.1.0), (6, 2));
    }
}
