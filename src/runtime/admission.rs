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
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::fair::{Account, Accounts};

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
}

/// Holds leases it can give back on demand: the idle instances components keep for reuse
/// (`docs/reuse.md`). Kept instances are a convenience, never a claim: when a request finds no
/// room, the pool asks every holder to drop its idle instances before anyone waits.
pub trait Reclaim: Send + Sync {
    /// Drops the idle instances (and so their leases); returns how many.
    fn reclaim(&self) -> usize;
}

/// The pool's capacity and who holds it.
///
/// Concurrency: what is held lives in atomics (here and in each [`Account`]), so admitting and
/// releasing while nobody waits takes no lock — every request of every serving thread passes
/// here. The mutex guards only the waiters; `waiting` announces them to releasers. An admitter
/// that finds the pool full announces itself *before* it looks again, and a releaser gives back
/// *before* it looks at `waiting` (both sequentially consistent): so either the admitter sees the
/// room or the releaser sees the waiter.
pub struct Pool {
    slots: u32,
    budget: u64,
    used_slots: AtomicU32,
    used_bytes: AtomicU64,
    /// Waiters queued plus admitters about to check again under the lock.
    waiting: AtomicUsize,
    queues: Mutex<Vec<AppQueue>>,
    accounts: Arc<Accounts>,
    used_gauge: prometheus::IntGauge,
    bytes_gauge: prometheus::IntGauge,
    /// Holders of idle leases, asked to give them back when a request finds no room.
    reclaimers: Mutex<Vec<Weak<dyn Reclaim>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("slots", &self.slots)
            .field("budget", &self.budget)
            .field("used_slots", &self.used_slots.load(SeqCst))
            .field("used_bytes", &self.used_bytes.load(SeqCst))
            .finish_non_exhaustive()
    }
}

/// One app's waiting requests, oldest first.
struct AppQueue {
    account: Arc<Account>,
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    bytes: u64,
    tx: oneshot::Sender<Result<(), Refused>>,
}

/// A request's hold on the pool, given back on drop.
pub struct Lease {
    pool: Arc<Pool>,
    account: Arc<Account>,
    bytes: u64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("app", &self.account.name())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Pool {
    pub fn new(
        slots: u32,
        budget: u64,
        accounts: Arc<Accounts>,
        used_gauge: prometheus::IntGauge,
        bytes_gauge: prometheus::IntGauge,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots: slots.max(1),
            budget: budget.max(1),
            used_slots: AtomicU32::new(0),
            used_bytes: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            queues: Mutex::default(),
            accounts,
            used_gauge,
            bytes_gauge,
            reclaimers: Mutex::default(),
        })
    }

    /// Registers a holder of idle leases (see [`Reclaim`]); forgotten once it is dropped.
    pub fn register_reclaimer(&self, r: Weak<dyn Reclaim>) {
        let mut v = self
            .reclaimers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.retain(|w| w.strong_count() > 0);
        v.push(r);
    }

    /// Whether requests wait for room: a holder of idle leases must not keep one now (see
    /// [`Reclaim`]; it checks after keeping, and a waiter reclaims after announcing itself, so
    /// one of the two always sees the other).
    pub fn contended(&self) -> bool {
        self.waiting.load(SeqCst) > 0
    }

    /// Asks every holder of idle leases to give them back; how many came back.
    fn reclaim_idle(&self) -> usize {
        let holders: Vec<_> = {
            let mut v = self
                .reclaimers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            v.retain(|w| w.strong_count() > 0);
            v.iter().filter_map(Weak::upgrade).collect()
        };
        // Called with no lock held: the leases given back take the waiters' lock as they go.
        holders.iter().map(|h| h.reclaim()).sum()
    }

    /// Admits a request of `account` that will hold about `bytes`, waiting up to `wait` when the
    /// pool is contended and the app is below its share.
    pub async fn admit(
        self: &Arc<Self>,
        account: &Arc<Account>,
        bytes: u64,
        wait: Duration,
    ) -> Result<Lease, Refused> {
        // A request bigger than the whole budget could never be admitted; let it run alone
        // rather than refuse an app whose estimate is simply above a tiny budget.
        let bytes = bytes.min(self.budget);
        if self.waiting.load(SeqCst) == 0 && self.try_take(account, bytes) {
            return Ok(self.lease(account, bytes));
        }
        // No room: idle instances kept for reuse give theirs back before anyone waits.
        if self.reclaim_idle() > 0
            && self.waiting.load(SeqCst) == 0
            && self.try_take(account, bytes)
        {
            return Ok(self.lease(account, bytes));
        }
        let mut rx = {
            let mut q = self.lock();
            self.waiting.fetch_add(1, SeqCst);
            let none_queued = q.iter().all(|a| a.waiters.iter().all(|w| w.tx.is_closed()));
            if none_queued && self.try_take(account, bytes) {
                self.settle(&q);
                return Ok(self.lease(account, bytes));
            }
            if let Some(refused) = self.over_share(&q, account, bytes) {
                self.settle(&q);
                return Err(refused);
            }
            let (tx, rx) = oneshot::channel();
            match q.iter_mut().find(|a| Arc::ptr_eq(&a.account, account)) {
                Some(a) => a.waiters.push_back(Waiter { bytes, tx }),
                None => q.push(AppQueue {
                    account: account.clone(),
                    waiters: VecDeque::from([Waiter { bytes, tx }]),
                }),
            }
            // A new app waiting shrinks everyone's share: apps now over it lose their queue.
            self.refuse_over_share_waiters(&mut q);
            self.grant_waiters(&mut q);
            self.settle(&q);
            rx
        };
        // An instance kept for reuse after the look above holds what this request waits for:
        // now that the wait is announced, its holder either sees it (and keeps nothing) or is
        // asked here. The leases given back grant the waiters, this one included.
        self.reclaim_idle();
        match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(Ok(()))) => Ok(self.lease(account, bytes)),
            Ok(Ok(Err(refused))) => Err(refused),
            // The sender went away without an answer: only when the pool itself is dropped.
            Ok(Err(_)) => Err(Refused::Timeout(wait)),
            Err(_) => {
                // Closing first settles the race with a grant: either it landed (take it) or it
                // can no longer land.
                rx.close();
                if let Ok(Ok(())) = rx.try_recv() {
                    return Ok(self.lease(account, bytes));
                }
                let mut q = self.lock();
                purge(&mut q);
                self.settle(&q);
                Err(Refused::Timeout(wait))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AppQueue>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lease(self: &Arc<Self>, account: &Arc<Account>, bytes: u64) -> Lease {
        Lease {
            pool: self.clone(),
            account: account.clone(),
            bytes,
        }
    }

    /// Takes a slot and `bytes` if both are free.
    fn try_take(&self, account: &Account, bytes: u64) -> bool {
        let slots = self.slots;
        if self
            .used_slots
            .fetch_update(SeqCst, SeqCst, |s| (s < slots).then_some(s + 1))
            .is_err()
        {
            return false;
        }
        let budget = self.budget;
        if self
            .used_bytes
            .fetch_update(SeqCst, SeqCst, |b| {
                b.checked_add(bytes).filter(|&n| n <= budget)
            })
            .is_err()
        {
            self.used_slots.fetch_sub(1, SeqCst);
            return false;
        }
        account.held_slots.fetch_add(1, SeqCst);
        account.held_bytes.fetch_add(bytes, SeqCst);
        self.update_gauges();
        true
    }

    fn give_back(&self, account: &Account, bytes: u64) {
        account.held_slots.fetch_sub(1, SeqCst);
        account.held_bytes.fetch_sub(bytes, SeqCst);
        self.used_bytes.fetch_sub(bytes, SeqCst);
        self.used_slots.fetch_sub(1, SeqCst);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.used_gauge.set(i64::from(self.used_slots.load(SeqCst)));
        self.bytes_gauge
            .set(i64::try_from(self.used_bytes.load(SeqCst)).unwrap_or(i64::MAX));
    }

    /// Makes `waiting` the number of queued waiters again (called before the lock is released).
    fn settle(&self, q: &[AppQueue]) {
        self.waiting
            .store(q.iter().map(|a| a.waiters.len()).sum(), SeqCst);
    }

    /// `Some` when `account` holding one slot and `bytes` more would be above its share while
    /// another app waits. An app that only competes with itself is never refused for its share:
    /// it waits, as it would with no fairness at all.
    fn over_share(&self, q: &[AppQueue], account: &Arc<Account>, bytes: u64) -> Option<Refused> {
        let others_wait = q.iter().any(|a| {
            !Arc::ptr_eq(&a.account, account) && a.waiters.iter().any(|w| !w.tx.is_closed())
        });
        if !others_wait {
            return None;
        }
        let (share_slots, share_bytes) = self.share(q, self.active_weight(q), account);
        let (slots, held) = (
            account.held_slots.load(SeqCst),
            account.held_bytes.load(SeqCst),
        );
        (slots + 1 > share_slots || held.saturating_add(bytes) > share_bytes).then(|| {
            Refused::OverShare {
                app: account.name().to_string(),
                slots,
                share_slots,
                bytes: held,
                share_bytes,
            }
        })
    }

    /// The weights of every app holding or waiting for capacity (one pass over the accounts; the
    /// slow path only).
    fn active_weight(&self, q: &[AppQueue]) -> u64 {
        self.accounts
            .all()
            .iter()
            .filter(|a| is_active(q, a))
            .map(|a| u64::from(a.weight()))
            .sum()
    }

    /// `account`'s fair share of slots and bytes, given `active` = [`Pool::active_weight`]; the
    /// account counts as active itself.
    fn share(&self, q: &[AppQueue], active: u64, account: &Arc<Account>) -> (u32, u64) {
        let w = u64::from(account.weight());
        let total = if is_active(q, account) {
            active
        } else {
            active + w
        }
        .max(w)
        .max(1);
        let slots = (u64::from(self.slots) * w / total).max(1);
        let bytes = (u128::from(self.budget) * u128::from(w) / u128::from(total)) as u64;
        (u32::try_from(slots).unwrap_or(u32::MAX), bytes)
    }

    fn refuse_over_share_waiters(&self, q: &mut [AppQueue]) {
        for i in 0..q.len() {
            if q[i].waiters.is_empty() {
                continue;
            }
            let account = q[i].account.clone();
            if let Some(refused) = self.over_share(q, &account, 0) {
                for w in q[i].waiters.drain(..) {
                    let _ = w.tx.send(Err(refused.clone()));
                }
            }
        }
    }

    /// Hands free capacity to waiters, the app furthest below its share first.
    fn grant_waiters(&self, q: &mut Vec<AppQueue>) {
        loop {
            purge(q);
            let active = self.active_weight(q);
            let best = (0..q.len()).min_by_key(|&i| {
                let a = &q[i].account;
                let (ss, sb) = self.share(q, active, a);
                // Use as a fraction of share, in parts per million; the larger of the two.
                let s = u64::from(a.held_slots.load(SeqCst)) * 1_000_000 / u64::from(ss.max(1));
                let b = (u128::from(a.held_bytes.load(SeqCst)) * 1_000_000 / u128::from(sb.max(1)))
                    as u64;
                s.max(b)
            });
            let Some(i) = best else { return };
            let account = q[i].account.clone();
            let need = q[i].waiters.front().map_or(0, |w| w.bytes);
            if !self.try_take(&account, need) {
                return;
            }
            let Some(w) = q[i].waiters.pop_front() else {
                self.give_back(&account, need);
                return;
            };
            if w.tx.send(Ok(())).is_err() {
                // Gone in the meantime: undo.
                self.give_back(&account, need);
            }
        }
    }
}

/// Whether `a` holds capacity or has requests waiting for it.
fn is_active(q: &[AppQueue], a: &Arc<Account>) -> bool {
    a.held_slots.load(SeqCst) > 0
        || q.iter()
            .any(|x| Arc::ptr_eq(&x.account, a) && !x.waiters.is_empty())
}

/// Drops waiters whose request has gone (timed out, cancelled) and apps with none left.
fn purge(q: &mut Vec<AppQueue>) {
    for a in q.iter_mut() {
        a.waiters.retain(|w| !w.tx.is_closed());
    }
    q.retain(|a| !a.waiters.is_empty());
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pool = &self.pool;
        pool.give_back(&self.account, self.bytes);
        if pool.waiting.load(SeqCst) > 0 {
            let mut q = pool.lock();
            pool.grant_waiters(&mut q);
            pool.settle(&q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(slots: u32, budget: u64) -> (Arc<Pool>, Arc<Accounts>) {
        let cv = prometheus::CounterVec::new(prometheus::Opts::new("c", "c"), &["app"]).unwrap();
        let g = || prometheus::IntGauge::new("g", "g").unwrap();
        let accounts = Arc::new(Accounts::new(
            cv,
            Accounts::test_offloaded(),
            Arc::default(),
        ));
        (
            Pool::new(slots, budget, accounts.clone(), g(), g()),
            accounts,
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
        // Both active.
        let _g = pool.admit(&gold, 1, WAIT).await.unwrap();
        let _b = pool.admit(&base, 1, WAIT).await.unwrap();
        let q = pool.lock();
        let active = pool.active_weight(&q);
        assert_eq!(
            (
                pool.share(&q, active, &gold).0,
                pool.share(&q, active, &base).0
            ),
            (6, 2)
        );
    }

    #[tokio::test]
    async fn leases_give_everything_back() {
        let (pool, ts) = setup(3, 1000);
        let a = ts.get("a");
        let leases: Vec<_> = futures::future::join_all((0..3).map(|_| pool.admit(&a, 300, WAIT)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(pool.used_slots.load(SeqCst), 3);
        drop(leases);
        assert_eq!(
            (
                pool.used_slots.load(SeqCst),
                pool.used_bytes.load(SeqCst),
                a.held_slots.load(SeqCst),
                pool.waiting.load(SeqCst)
            ),
            (0, 0, 0, 0)
        );
    }
}
