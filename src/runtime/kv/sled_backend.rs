//! The embedded backend: a sled tree per app and store in `<state_dir>/kv`
//! ([`crate::store::kv`]).
//!
//! Durability: every write (set, delete, increment, and each pair of a batch) is flushed to disk
//! — sled's log written and fsynced — before the guest's call returns. A value a guest was told
//! is set survives kill -9 and power loss; one whose call had not returned may or may not.
//!
//! Quotas: an app's usage is counted from disk on its first write in this process, then kept in
//! memory; its writes are serialised by one lock per app, so a quota check and the write it
//! admits are one step. Reads take no lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Backend, KvError, KvFuture, Quota};
use crate::store::StoreError;
use crate::store::kv::{KvDb, KvTree, Usage};

/// See the module docs.
#[derive(Debug)]
pub struct SledBackend {
    db: KvDb,
    /// Per app: its usage once counted (`None` before), behind the lock its writes take.
    apps: Mutex<HashMap<String, Arc<Mutex<Option<Usage>>>>>,
}

fn backend_err(e: StoreError) -> KvError {
    KvError::Backend(e.to_string())
}

impl SledBackend {
    pub fn new(db: KvDb) -> Self {
        Self {
            db,
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn tree(&self, app: &str, store: &str) -> Result<KvTree, KvError> {
        self.db.tree(app, store).map_err(backend_err)
    }

    fn app_lock(&self, app: &str) -> Arc<Mutex<Option<Usage>>> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.entry(app.to_owned()).or_default().clone()
    }

    /// Runs `write` under `app`'s lock with its current usage; `write` returns the usage after
    /// it (and a result), which becomes the app's usage when it succeeds.
    fn write<T>(
        &self,
        app: &str,
        write: impl FnOnce(Usage) -> Result<(T, Usage), KvError>,
    ) -> Result<(T, Usage), KvError> {
        let lock = self.app_lock(app);
        let mut usage = lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = match *usage {
            Some(u) => u,
            None => self.db.usage(app).map_err(backend_err)?,
        };
        *usage = Some(before);
        let (out, after) = write(before)?;
        *usage = Some(after);
        Ok((out, after))
    }

    async fn flush(&self) -> Result<(), KvError> {
        self.db.flush().await.map_err(backend_err)
    }
}

/// `usage` with the entry of `key` going from `old` value bytes (absent: `None`) to `new`.
fn replaced(usage: Usage, key: &str, old: Option<usize>, new: Option<usize>) -> Usage {
    let entry = |v: Option<usize>| v.map_or((0, 0), |n| (1, (key.len() + n) as u64));
    let (ok, ob) = entry(old);
    let (nk, nb) = entry(new);
    Usage {
        keys: (usage.keys + nk).saturating_sub(ok),
        bytes: (usage.bytes + nb).saturating_sub(ob),
    }
}

/// A stored counter: decimal text, as wasmtime's own `wasi:keyvalue` keeps it.
fn parse_counter(v: &[u8]) -> Result<u64, KvError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| KvError::Invalid("the value is not a decimal number".into()))
}

impl Backend for SledBackend {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn get<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
    ) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.tree(app, store)?.get(key).map_err(backend_err) })
    }

    fn set<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
        value: &'a [u8],
        quota: Quota,
    ) -> KvFuture<'a, Usage> {
        Box::pin(async move {
            let tree = self.tree(app, store)?;
            let ((), after) = self.write(app, |before| {
                let old = tree.value_len(key).map_err(backend_err)?;
                let after = replaced(before, key, old, Some(value.len()));
                quota.check(before, after)?;
                tree.insert(key, value).map_err(backend_err)?;
                Ok(((), after))
            })?;
            self.flush().await?;
            Ok(after)
        })
    }

    fn delete<'a>(&'a self, app: &'a str, store: &'a str, key: &'a str) -> KvFuture<'a, Usage> {
        Box::pin(async move {
            let tree = self.tree(app, store)?;
            let (removed, after) = self.write(app, |before| {
                let old = tree.remove(key).map_err(backend_err)?;
                Ok((old.is_some(), replaced(before, key, old, None)))
            })?;
            if removed {
                self.flush().await?;
            }
            Ok(after)
        })
    }

    fn exists<'a>(&'a self, app: &'a str, store: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move { self.tree(app, store)?.contains(key).map_err(backend_err) })
    }

    fn keys<'a>(&'a self, app: &'a str, store: &'a str) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move { self.tree(app, store)?.keys().map_err(backend_err) })
    }

    fn increment<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
        delta: u64,
        quota: Quota,
    ) -> KvFuture<'a, (u64, Usage)> {
        Box::pin(async move {
            let tree = self.tree(app, store)?;
            let out = self.write(app, |before| {
                let old = tree.get(key).map_err(backend_err)?;
                let current = old.as_deref().map_or(Ok(0), parse_counter)?;
                let n = current
                    .checked_add(delta)
                    .ok_or_else(|| KvError::Invalid("the increment overflows u64".into()))?;
                let text = n.to_string();
                let after = replaced(before, key, old.map(|v| v.len()), Some(text.len()));
                quota.check(before, after)?;
                tree.insert(key, text.as_bytes()).map_err(backend_err)?;
                Ok((n, after))
            })?;
            self.flush().await?;
            Ok(out)
        })
    }
}
