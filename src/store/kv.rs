//! The embedded key-value backend's bytes on disk: one sled database, `<state_dir>/kv`, with a
//! tree per app and store label, named `kv/<app>/<label>`.
//!
//! Owns: opening that database, the tree naming (app names are `[a-z0-9-]`, labels
//! `[A-Za-z0-9_]`, so `/` never occurs in either and a name is unambiguous), the reads and
//! writes, counting what an app holds, and the flush that makes writes durable.
//! Must not: decide limits, quotas or grants (`runtime::kv` does), or know about guests.
//!
//! Why not a tree in the store index (`<state_dir>/store/index`): a damaged index is moved aside
//! and rebuilt from the blobs, which hold everything it records; key-value data exists nowhere
//! else, so it must never share that repair. A database of its own also keeps guests' write
//! flushes off the index's commits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// The key-value database.
#[derive(Debug, Clone)]
pub struct KvDb {
    db: sled::Db,
    /// Where it lives, for errors (`None`: temporary, `outpost serve`).
    path: Option<PathBuf>,
    /// Group commit: see [`KvDb::flush`].
    commit: Arc<GroupCommit>,
}

/// Writers that want their writes durable take a ticket; one flush at a time runs, and covers
/// every ticket taken before it started, so writers that wait while a flush runs share the
/// next one instead of each paying an fsync.
#[derive(Debug, Default)]
struct GroupCommit {
    /// Tickets taken (each after its writer's write).
    taken: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
    /// Held while a flush runs.
    gate: tokio::sync::Mutex<()>,
}

/// What an app holds in its stores: keys, and bytes counted as key length + value length.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub keys: u64,
    pub bytes: u64,
}

impl KvDb {
    /// Opens (creating if needed) the database at `dir`. A database sled reports as corrupt is
    /// an error, never moved aside: it is the apps' data, and an operator decides.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::open(dir).map_err(|source| StoreError::KeyValue {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            db,
            path: Some(dir.to_owned()),
            commit: Arc::default(),
        })
    }

    /// A database that lives in a temporary file and is gone when the process ends (`outpost
    /// serve --no-cache`, which writes nothing to disk). sled puts it in `/dev/shm` (else the
    /// temp directory).
    pub fn temporary() -> Result<Self, StoreError> {
        Self::temporary_with(
            sled::Config::new(),
            PathBuf::from("(temporary key-value database)"),
        )
    }

    /// A temporary database in a directory of `parent`'s, removed when it is dropped: for
    /// `outpost run --check`, whose user may write its state directory and nothing else (a
    /// sandboxed service has no writable `/dev/shm`).
    pub fn temporary_in(parent: &Path) -> Result<Self, StoreError> {
        let dir = parent.join(format!(".kv-check-{}", std::process::id()));
        Self::temporary_with(sled::Config::new().path(&dir), dir)
    }

    fn temporary_with(config: sled::Config, shown: PathBuf) -> Result<Self, StoreError> {
        let db = config
            .temporary(true)
            .open()
            .map_err(|source| StoreError::KeyValue {
                path: shown,
                source,
            })?;
        Ok(Self {
            db,
            path: None,
            commit: Arc::default(),
        })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::KeyValue {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("(temporary key-value database)")),
            source,
        }
    }

    /// The tree of `app`'s store `label` (created on first use).
    pub fn tree(&self, app: &str, label: &str) -> Result<KvTree, StoreError> {
        let tree = self
            .db
            .open_tree(tree_name(app, label))
            .map_err(|e| self.err(e))?;
        Ok(KvTree {
            tree,
            db: self.clone(),
        })
    }

    /// Counts what `app` holds in all its stores (a scan; run once per app per process).
    pub fn usage(&self, app: &str) -> Result<Usage, StoreError> {
        let prefix = format!("kv/{app}/");
        let mut usage = Usage::default();
        for name in self.db.tree_names() {
            if !name.starts_with(prefix.as_bytes()) {
                continue;
            }
            let tree = self.db.open_tree(&name).map_err(|e| self.err(e))?;
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| self.err(e))?;
                usage.keys += 1;
                usage.bytes += (k.len() + v.len()) as u64;
            }
        }
        Ok(usage)
    }

    /// Makes every write made before this call durable: sled's log written and fsynced (on
    /// tokio's blocking pool). Group commit: a caller whose writes a flush started after them
    /// already covered returns without one, so concurrent writers share fsyncs. Not sled's own
    /// `flush_async`: its completion wakes the waiting task while holding its lock and before
    /// marking itself done, and under load a request awaiting it was never woken again.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let c = &self.commit;
        let ticket = c.taken.fetch_add(1, Ordering::SeqCst) + 1;
        let _gate = c.gate.lock().await;
        if c.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to `upto` was taken after its write, so this flush covers them all.
        let upto = c.taken.load(Ordering::SeqCst);
        self.flush_now().await?;
        c.durable.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    async fn flush_now(&self) -> Result<(), StoreError> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.db.flush().map(drop).map_err(|e| self.err(e));
        };
        let db = self.db.clone();
        match rt.spawn_blocking(move || db.flush()).await {
            Ok(r) => r.map(drop).map_err(|e| self.err(e)),
            Err(e) => Err(self.err(sled::Error::ReportableBug(format!(
                "key-value flush task: {e}"
            )))),
        }
    }
}

fn tree_name(app: &str, label: &str) -> String {
    format!("kv/{app}/{label}")
}

/// One app's store.
#[derive(Debug, Clone)]
pub struct KvTree {
    tree: sled::Tree,
    db: KvDb,
}

impl KvTree {
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.db.err(e))
    }

    /// Length of the value under `key`, if any.
    pub fn value_len(&self, key: &str) -> Result<Option<usize>, StoreError> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.len()))
            .map_err(|e| self.db.err(e))
    }

    pub fn contains(&self, key: &str) -> Result<bool, StoreError> {
        self.tree.contains_key(key).map_err(|e| self.db.err(e))
    }

    /// Sets `key`; returns the length of the value it replaced. Not durable until
    /// [`KvDb::flush`].
    pub fn insert(&self, key: &str, value: &[u8]) -> Result<Option<usize>, StoreError> {
        self.tree
            .insert(key, value)
            .map(|old| old.map(|v| v.len()))
            .map_err(|e| self.db.err(e))
    }

    /// Removes `key`; returns the length of the value it held. Not durable until
    /// [`KvDb::flush`].
    pub fn remove(&self, key: &str) -> Result<Option<usize>, StoreError> {
        self.tree
            .remove(key)
            .map(|old| old.map(|v| v.len()))
            .map_err(|e| self.db.err(e))
    }

    /// Every key, in byte order. Keys are written from guest strings, so they are UTF-8; one
    /// that is not (a damaged tree) is skipped.
    pub fn keys(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for k in self.tree.iter().keys() {
            let k = k.map_err(|e| self.db.err(e))?;
            if let Ok(s) = String::from_utf8(k.to_vec()) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The database this tree belongs to (for [`KvDb::flush`]).
    pub fn db(&self) -> &KvDb {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_scoped_by_app_and_label_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = KvDb::open(&dir.path().join("kv")).expect("open");
        let a = db.tree("app-a", "default").expect("tree");
        let b = db.tree("app-b", "default").expect("tree");
        let a2 = db.tree("app-a", "other").expect("tree");
        assert_eq!(a.insert("k", b"12345").expect("set"), None);
        assert_eq!(a.insert("k", b"123").expect("set"), Some(5));
        a2.insert("kk", b"1").expect("set");
        assert_eq!(b.get("k").expect("get"), None, "apps never share a store");
        assert_eq!(
            db.usage("app-a").expect("usage"),
            Usage {
                keys: 2,
                bytes: 1 + 3 + 2 + 1
            }
        );
        assert_eq!(db.usage("app").expect("usage"), Usage::default());
        assert_eq!(a.remove("k").expect("del"), Some(3));
        assert_eq!(a2.keys().expect("keys"), ["kk"]);
    }
}
