//! Key-value stores for guests: `wasi:keyvalue` (store, atomics, batch) and Spin's
//! `fermyon:spin/key-value@2.0.0` over the same stores, and Spin's `fermyon:spin/variables@2.0.0`
//! over a component's variables (see docs/key-value.md).
//!
//! Owns: which backend holds each store label (the operator's choice in node config, never the
//! app's), the limits (key and value size) and quotas (keys and bytes per app) guests write under,
//! the grant check at open (deny by default), the per-app metrics, and the host side of those
//! interfaces ([`guest`]).
//! Must not: keep bytes on disk itself (the embedded backend's database is
//! [`crate::store::kv`]'s) or know about listeners and the control plane.
//!
//! A store is `(app, label)`: the label a guest opens is looked up among its component's
//! `key_value_stores` grant, and the app name comes from the loaded app, never from the guest, so
//! two apps' `default` stores never share data.

pub mod guest;
mod redis_backend;
mod sled_backend;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::ops::config::{KeyValueConfig, KvBackendConfig};
use crate::ops::metrics::Metrics;
use crate::store::kv::{KvDb, Usage};

pub use redis_backend::RedisBackend;
pub use sled_backend::SledBackend;

/// What a backend operation returns.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// Why a key-value operation failed. The guest sees each as its interface's `other(message)`
/// (neither interface has a variant for them); the backend's own message stays in the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    #[error("key is {len} bytes; this node allows at most {max}")]
    KeyTooLarge { len: usize, max: u64 },
    #[error("value is {len} bytes; this node allows at most {max}")]
    ValueTooLarge { len: usize, max: u64 },
    #[error("quota exceeded: the app's key-value stores may hold at most {0}")]
    Quota(String),
    /// The operation does not apply to the value (an increment of a value that is not a
    /// decimal number, or one that would overflow).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (I/O, Redis unreachable); details are logged, not shown to the guest.
    #[error("key-value backend error: {0}")]
    Backend(String),
}

impl KvError {
    /// The `outcome` label of `outpost_kv_operations_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::KeyTooLarge { .. } | Self::ValueTooLarge { .. } => "too_large",
            Self::Quota(_) => "quota",
            Self::Invalid(_) => "invalid",
            Self::Backend(_) => "error",
        }
    }

    /// What the guest is told.
    pub fn guest_message(&self) -> String {
        match self {
            Self::Backend(_) => "key-value backend unavailable".to_owned(),
            other => other.to_string(),
        }
    }
}

/// What one app may hold, all its stores together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_keys: u64,
    pub max_bytes: u64,
}

impl Quota {
    /// Checks a write that takes `app` from `before` to `after`: a new key must fit under
    /// `max_keys`, and growth under `max_bytes` (shrinking is always allowed, so an app over its
    /// quota — after the operator lowered it — can still delete and overwrite with less).
    fn check(&self, before: Usage, after: Usage) -> Result<(), KvError> {
        if after.keys > before.keys && after.keys > self.max_keys {
            return Err(self.keys_exceeded());
        }
        if after.bytes > before.bytes && after.bytes > self.max_bytes {
            return Err(self.bytes_exceeded());
        }
        Ok(())
    }

    fn keys_exceeded(&self) -> KvError {
        KvError::Quota(format!("{} keys", self.max_keys))
    }

    fn bytes_exceeded(&self) -> KvError {
        KvError::Quota(crate::base::units::format_bytes(self.max_bytes))
    }
}

/// A key-value backend: where the stores of some labels live. Every operation names the app and
/// the store; writes check `quota` and return the app's usage after them (for the metrics).
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `"sled"` or `"redis"`, for logs.
    fn kind(&self) -> &'static str;
    fn get<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
    ) -> KvFuture<'a, Option<Vec<u8>>>;
    fn set<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
        value: &'a [u8],
        quota: Quota,
    ) -> KvFuture<'a, Usage>;
    fn delete<'a>(&'a self, app: &'a str, store: &'a str, key: &'a str) -> KvFuture<'a, Usage>;
    fn exists<'a>(&'a self, app: &'a str, store: &'a str, key: &'a str) -> KvFuture<'a, bool>;
    /// Every key of the store, sorted.
    fn keys<'a>(&'a self, app: &'a str, store: &'a str) -> KvFuture<'a, Vec<String>>;
    /// Adds `delta` to the decimal number stored under `key` (absent: 0); returns the new value
    /// and the app's usage.
    fn increment<'a>(
        &'a self,
        app: &'a str,
        store: &'a str,
        key: &'a str,
        delta: u64,
        quota: Quota,
    ) -> KvFuture<'a, (u64, Usage)>;
}

/// The node's key-value stores: a backend for each label, the limits, the metrics. One per node,
/// shared by every component.
#[derive(Debug)]
pub struct KeyValue {
    /// Labels not named in `[key_value.stores]` live here.
    embedded: Arc<dyn Backend>,
    by_label: HashMap<String, Arc<dyn Backend>>,
    max_key_size: u64,
    max_value_size: u64,
    quota: Quota,
    metrics: Metrics,
}

impl KeyValue {
    /// The stores `cfg` describes, the embedded ones in `db`. Connects to nothing: a Redis
    /// backend connects on its first operation (and again after a failure), so a Redis server
    /// that is down delays no start; guests see its errors instead.
    pub fn new(cfg: &KeyValueConfig, db: KvDb, metrics: Metrics) -> Result<Self, KvError> {
        let embedded: Arc<dyn Backend> = Arc::new(SledBackend::new(db));
        let mut by_label: HashMap<String, Arc<dyn Backend>> = HashMap::new();
        // One connection per Redis URL, whatever the number of labels on it.
        let mut redis: HashMap<&str, Arc<dyn Backend>> = HashMap::new();
        for (label, backend) in &cfg.stores {
            let b = match backend {
                KvBackendConfig::Sled => embedded.clone(),
                KvBackendConfig::Redis { url } => match redis.get(url.as_str()) {
                    Some(b) => b.clone(),
                    None => {
                        let b: Arc<dyn Backend> = Arc::new(RedisBackend::new(url)?);
                        redis.insert(url, b.clone());
                        b
                    }
                },
            };
            by_label.insert(label.clone(), b);
        }
        Ok(Self {
            embedded,
            by_label,
            max_key_size: cfg.max_key_size,
            max_value_size: cfg.max_value_size,
            quota: Quota {
                max_keys: cfg.max_keys_per_app,
                max_bytes: cfg.max_bytes_per_app,
            },
            metrics,
        })
    }

    fn backend(&self, label: &str) -> &Arc<dyn Backend> {
        self.by_label.get(label).unwrap_or(&self.embedded)
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.len() as u64 > self.max_key_size {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                max: self.max_key_size,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() as u64 > self.max_value_size {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                max: self.max_value_size,
            });
        }
        Ok(())
    }

    fn record<T>(&self, app: &str, store: &str, op: &str, r: &Result<T, KvError>) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(e) => {
                if let KvError::Backend(detail) = e {
                    tracing::warn!(app, store, op, error = %detail, "key-value backend error");
                }
                e.outcome()
            }
        };
        self.metrics
            .kv_operations
            .with_label_values(&[app, store, op, outcome])
            .inc();
    }

    fn record_usage(&self, app: &str, u: Usage) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .kv_keys
            .with_label_values(&[app])
            .set(clamp(u.keys));
        self.metrics
            .kv_bytes
            .with_label_values(&[app])
            .set(clamp(u.bytes));
    }

    /// Counts an `open` (granted or denied).
    pub fn record_open(&self, app: &str, store: &str, granted: bool) {
        let outcome = if granted { "ok" } else { "denied" };
        self.metrics
            .kv_operations
            .with_label_values(&[app, store, "open", outcome])
            .inc();
    }
}

/// What one component may open: its app's stores named in its `key_value_stores`.
#[derive(Debug, Clone)]
pub struct KvAccess {
    /// `None`: this runtime has no key-value stores (a loader that serves nothing); opening any
    /// store fails.
    pub kv: Option<Arc<KeyValue>>,
    pub app: Arc<str>,
    pub labels: Vec<String>,
}

/// An open store, as a guest holds it (`wasi:keyvalue/store.bucket`,
/// `fermyon:spin/key-value.store`).
#[derive(Debug, Clone)]
pub struct OpenStore {
    kv: Arc<KeyValue>,
    app: Arc<str>,
    label: Arc<str>,
}

impl KvAccess {
    /// Opens `label` if granted: `Ok(None)` when it is not (the guest gets `access-denied`),
    /// `Err` when the node has no stores.
    pub fn open(&self, label: &str) -> Result<Option<OpenStore>, KvError> {
        let Some(kv) = &self.kv else {
            return Err(KvError::Backend(
                "no key-value stores on this runtime".into(),
            ));
        };
        let granted = self.labels.iter().any(|l| l == label);
        // A denied label is guest input: counted under one label value, not its own.
        kv.record_open(&self.app, if granted { label } else { "" }, granted);
        Ok(granted.then(|| OpenStore {
            kv: kv.clone(),
            app: self.app.clone(),
            label: label.into(),
        }))
    }
}

// === impl OpenStore ===

impl OpenStore {
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let r = match self.kv.check_key(key) {
            Ok(()) => {
                self.kv
                    .backend(&self.label)
                    .get(&self.app, &self.label, key)
                    .await
            }
            Err(e) => Err(e),
        };
        self.kv.record(&self.app, &self.label, "get", &r);
        r
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.set_op(key, value, "set").await
    }

    async fn set_op(&self, key: &str, value: &[u8], op: &str) -> Result<(), KvError> {
        let r = match self
            .kv
            .check_key(key)
            .and_then(|()| self.kv.check_value(value))
        {
            Ok(()) => {
                self.kv
                    .backend(&self.label)
                    .set(&self.app, &self.label, key, value, self.kv.quota)
                    .await
            }
            Err(e) => Err(e),
        };
        self.kv.record(&self.app, &self.label, op, &r);
        r.map(|u| self.kv.record_usage(&self.app, u))
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.delete_op(key, "delete").await
    }

    async fn delete_op(&self, key: &str, op: &str) -> Result<(), KvError> {
        let r = match self.kv.check_key(key) {
            Ok(()) => {
                self.kv
                    .backend(&self.label)
                    .delete(&self.app, &self.label, key)
                    .await
            }
            Err(e) => Err(e),
        };
        self.kv.record(&self.app, &self.label, op, &r);
        r.map(|u| self.kv.record_usage(&self.app, u))
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        let r = match self.kv.check_key(key) {
            Ok(()) => {
                self.kv
                    .backend(&self.label)
                    .exists(&self.app, &self.label, key)
                    .await
            }
            Err(e) => Err(e),
        };
        self.kv.record(&self.app, &self.label, "exists", &r);
        r
    }

    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        let r = self
            .kv
            .backend(&self.label)
            .keys(&self.app, &self.label)
            .await;
        self.kv.record(&self.app, &self.label, "list", &r);
        r
    }

    pub async fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        let r = match self.kv.check_key(key) {
            Ok(()) => {
                self.kv
                    .backend(&self.label)
                    .increment(&self.app, &self.label, key, delta, self.kv.quota)
                    .await
            }
            Err(e) => Err(e),
        };
        self.kv.record(&self.app, &self.label, "increment", &r);
        r.map(|(n, u)| {
            self.kv.record_usage(&self.app, u);
            n
        })
    }

    /// `set` for each pair, in order, stopping at the first failure (pairs before it stay set:
    /// `wasi:keyvalue/batch` promises no atomicity). Every key and value is checked against
    /// the limits before any is written.
    pub async fn set_many(&self, pairs: &[(String, Vec<u8>)]) -> Result<(), KvError> {
        for (k, v) in pairs {
            if let Err(e) = self.kv.check_key(k).and_then(|()| self.kv.check_value(v)) {
                self.kv
                    .record::<()>(&self.app, &self.label, "set_many", &Err(e.clone()));
                return Err(e);
            }
        }
        for (k, v) in pairs {
            self.set_op(k, v, "set_many").await?;
        }
        Ok(())
    }

    pub async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        for k in keys {
            self.delete_op(k, "delete_many").await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(cfg: KeyValueConfig) -> Arc<KeyValue> {
        Arc::new(KeyValue::new(&cfg, KvDb::temporary().expect("db"), Metrics::new()).expect("kv"))
    }

    fn access(kv: &Arc<KeyValue>, app: &str, labels: &[&str]) -> KvAccess {
        KvAccess {
            kv: Some(kv.clone()),
            app: app.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn stores_are_granted_scoped_limited_and_counted() {
        let kv = kv(KeyValueConfig {
            max_key_size: 8,
            max_value_size: 16,
            max_keys_per_app: 3,
            max_bytes_per_app: 30,
            ..Default::default()
        });
        let a = access(&kv, "a", &["default"]);
        let b = access(&kv, "b", &["default"]);
        assert!(a.open("other").expect("open").is_none(), "not granted");
        let sa = a.open("default").expect("open").expect("granted");
        let sb = b.open("default").expect("open").expect("granted");
        sa.set("k", b"v1").await.expect("set");
        assert_eq!(sa.get("k").await.expect("get"), Some(b"v1".to_vec()));
        assert_eq!(sb.get("k").await.expect("get"), None, "apps never share");
        assert!(matches!(
            sa.set("123456789", b"").await,
            Err(KvError::KeyTooLarge { len: 9, max: 8 })
        ));
        assert!(matches!(
            sa.set("k", &[0; 17]).await,
            Err(KvError::ValueTooLarge { len: 17, max: 16 })
        ));
        sa.set("k2", b"x").await.expect("set");
        sa.set("k3", b"x").await.expect("set");
        assert!(matches!(sa.set("k4", b"x").await, Err(KvError::Quota(_))));
        // Overwriting within the byte quota is fine; growing past it is not.
        sa.set("k", &[1; 16]).await.expect("set 16");
        assert!(matches!(
            sa.set("k2", &[1; 16]).await,
            Err(KvError::Quota(_))
        ));
        sa.delete("k").await.expect("delete");
        assert!(!sa.exists("k").await.expect("exists"));
        assert_eq!(sa.keys().await.expect("keys"), ["k2", "k3"]);
        assert_eq!(sa.increment("n", 5).await.expect("incr"), 5);
        assert_eq!(sa.increment("n", 2).await.expect("incr"), 7);
        assert_eq!(sa.get("n").await.expect("get"), Some(b"7".to_vec()));
        assert!(matches!(
            sa.increment("k2", 1).await,
            Err(KvError::Invalid(_))
        ));
        // b has its own quota.
        for k in ["x", "y", "z"] {
            sb.set(k, b"1").await.expect("b set");
        }
    }
}
