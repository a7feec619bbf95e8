//! The control plane's durable records in sled: nodes (identity, labels, assignments, latest
//! report, sealed desired state), enrolment tokens (their sha256 only), rollouts, the current
//! release per group and app, counters, and seen request nonces.
//!
//! Owns: the tree layout, JSON encoding of records, the multi-tree transactions that must be
//! atomic (consume a token + create the node; persist a rollout + the node assignments it
//! changed; bump the desired-state sequence + store the sealed document) and flushing.
//! Must not: decide anything — validation and policy live in [`super::service`]. Uploaded bundles
//! are files, not records (see `service`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::Transactional as _;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::api::SyncReport;
use super::rollout::{Release, Rollout};
use crate::bundle::desired::DesiredApp;

/// A node as the control plane knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its key id (16 hex).
    pub id: String,
    /// `outpost-public-key-v1 ...`: verifies its requests.
    pub public_key: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub enrolled: u64,
    pub revoked: bool,
    /// Unix seconds of the latest sync.
    pub last_seen: Option<u64>,
    #[serde(default)]
    pub report: SyncReport,
    /// app → assigned release: the node's desired apps.
    #[serde(default)]
    pub apps: BTreeMap<String, Release>,
    /// The desired state last sealed for it.
    pub sealed: Option<Sealed>,
}

/// A signed desired-state document as sent to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub sequence: u64,
    /// Unix seconds.
    pub issued: u64,
    pub expires: u64,
    /// What it says, to tell whether the assignments changed since.
    pub apps: Vec<DesiredApp>,
    /// The envelope bytes (JSON text).
    pub envelope: String,
}

/// An unused enrolment token (stored under its sha256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub expires: u64,
}

/// The release a group runs after a rollout succeeded: nodes enrolling into it later get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRelease {
    pub group: String,
    pub release: Release,
    /// Unix milliseconds; where two groups assign the same app, the later one wins.
    pub since_ms: u64,
}

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sled(#[from] sled::Error),
    #[error("database: {tree} record {key:?} is corrupt: {problem}")]
    Corrupt {
        tree: &'static str,
        key: String,
        problem: String,
    },
    #[error("cannot encode a {0} record: {1}")]
    Encode(&'static str, String),
}

/// Why an enrolment transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// No such token, or already used.
    #[error("unknown or already used enrolment token")]
    UnknownToken,
    #[error("enrolment token expired")]
    Expired,
    /// Refused by the caller's check on the token (e.g. invalid labels).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

const META_SEQUENCE: &[u8] = b"sequence";
const META_ROLLOUT_ID: &[u8] = b"rollout_id";

/// The open database.
/// sled's page cache for the control plane's records.
const SLED_CACHE_BYTES: u64 = 64 << 20;

pub struct Db {
    db: sled::Db,
    nodes: sled::Tree,
    tokens: sled::Tree,
    rollouts: sled::Tree,
    current: sled::Tree,
    meta: sled::Tree,
    nonces: sled::Tree,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, DbError> {
    serde_json::to_vec(v).map_err(|e| DbError::Encode(what, e.to_string()))
}

fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], v: &[u8]) -> Result<T, DbError> {
    serde_json::from_slice(v).map_err(|e| DbError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        problem: e.to_string(),
    })
}

fn u64_value(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Maps a transaction error whose abort type is `E` through `f`.
fn tx_err<E>(e: TransactionError<E>, f: impl FnOnce(E) -> EnrollError) -> EnrollError {
    match e {
        TransactionError::Abort(e) => f(e),
        TransactionError::Storage(e) => EnrollError::Db(DbError::Sled(e)),
    }
}

impl Db {
    /// Opens (or creates) the database in `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Self, DbError> {
        // sled's page cache defaults to 1 GiB, which it fills as records are rewritten (every
        // sync rewrites its node's report); the records of a 10 000-node fleet are a few tens
        // of MiB, so a smaller cache bounds the RSS without more reads.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()?;
        Ok(Self {
            nodes: db.open_tree("nodes")?,
            tokens: db.open_tree("tokens")?,
            rollouts: db.open_tree("rollouts")?,
            current: db.open_tree("current")?,
            meta: db.open_tree("meta")?,
            nonces: db.open_tree("nonces")?,
            db,
        })
    }

    /// Makes every write so far durable. Called before acknowledging anything that matters.
    pub fn flush(&self) -> Result<(), DbError> {
        self.db.flush()?;
        Ok(())
    }

    fn load<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str) -> Result<Vec<T>, DbError> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(name, &k, &v)
            })
            .collect()
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, DbError> {
        Self::load(&self.nodes, "nodes")
    }

    pub fn rollouts(&self) -> Result<Vec<Rollout>, DbError> {
        Self::load(&self.rollouts, "rollouts")
    }

    pub fn current_releases(&self) -> Result<Vec<CurrentRelease>, DbError> {
        Self::load(&self.current, "current")
    }

    /// The last desired-state sequence handed out (0: none yet).
    pub fn sequence(&self) -> Result<u64, DbError> {
        Ok(u64_value(self.meta.get(META_SEQUENCE)?))
    }

    /// The last rollout id handed out (0: none yet).
    pub fn last_rollout_id(&self) -> Result<u64, DbError> {
        Ok(u64_value(self.meta.get(META_ROLLOUT_ID)?))
    }

    /// Stores a node record (reports, revocation). Not flushed: callers flush what matters.
    pub fn put_node(&self, node: &NodeRecord) -> Result<(), DbError> {
        self.nodes
            .insert(node.id.as_bytes(), encode("node", node)?)?;
        Ok(())
    }

    /// Stores a node with a newly sealed document and the sequence counter it used, atomically
    /// (a sequence is never handed out twice, also across a crash).
    pub fn put_sealed_node(&self, node: &NodeRecord, sequence: u64) -> Result<(), DbError> {
        let value = encode("node", node)?;
        (&self.nodes, &self.meta)
            .transaction(|(nodes, meta)| {
                nodes.insert(node.id.as_bytes(), value.clone())?;
                meta.insert(META_SEQUENCE, &sequence.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => DbError::Encode("node", "aborted".into()),
                TransactionError::Storage(e) => DbError::Sled(e),
            })
    }

    pub fn put_tokens(&self, tokens: &[(String, TokenRecord)]) -> Result<(), DbError> {
        let mut batch = sled::Batch::default();
        for (hash, t) in tokens {
            batch.insert(hash.as_bytes(), encode("token", t)?);
        }
        self.tokens.apply_batch(batch)?;
        Ok(())
    }

    /// Drops tokens that expired before `now`; returns how many.
    pub fn prune_tokens(&self, now: u64) -> Result<usize, DbError> {
        let mut n = 0;
        for kv in self.tokens.iter() {
            let (k, v) = kv?;
            let expired =
                decode::<TokenRecord>("tokens", &k, &v).map_or(true, |t| t.expires <= now);
            if expired {
                self.tokens.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Consumes the token stored under `hash` and stores the node `make` builds from it, in one
    /// transaction: a token enrols exactly one node, even under concurrent attempts.
    pub fn enroll(
        &self,
        hash: &str,
        now: u64,
        make: impl Fn(&TokenRecord) -> Result<NodeRecord, String>,
    ) -> Result<NodeRecord, EnrollError> {
        #[derive(Debug)]
        enum Abort {
            Unknown,
            Expired,
            Refused(String),
            Db(DbError),
        }
        let result = (&self.tokens, &self.nodes).transaction(|(tokens, nodes)| {
            let abort = ConflictableTransactionError::Abort;
            let Some(raw) = tokens.get(hash.as_bytes())? else {
                return Err(abort(Abort::Unknown));
            };
            let token: TokenRecord =
                decode("tokens", hash.as_bytes(), &raw).map_err(|e| abort(Abort::Db(e)))?;
            tokens.remove(hash.as_bytes())?;
            if token.expires <= now {
                // The abort rolls the removal back; the pruner drops expired tokens.
                return Err(abort(Abort::Expired));
            }
            let node = make(&token).map_err(|e| abort(Abort::Refused(e)))?;
            let value = encode("node", &node).map_err(|e| abort(Abort::Db(e)))?;
            nodes.insert(node.id.as_bytes(), value)?;
            Ok(node)
        });
        result.map_err(|e| {
            tx_err(e, |a| match a {
                Abort::Unknown => EnrollError::UnknownToken,
                Abort::Expired => EnrollError::Expired,
                Abort::Refused(m) => EnrollError::Refused(m),
                Abort::Db(e) => EnrollError::Db(e),
            })
        })
    }

    /// Stores a rollout with the node records its actions changed, the group's new current
    /// release (on success) and the rollout id counter, atomically.
    pub fn put_rollout(
        &self,
        rollout: &Rollout,
        nodes: &[&NodeRecord],
        current: Option<&CurrentRelease>,
    ) -> Result<(), DbError> {
        let r = encode("rollout", rollout)?;
        let ns = nodes
            .iter()
            .map(|n| Ok((n.id.as_bytes().to_vec(), encode("node", n)?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        let c = current
            .map(|c| {
                Ok::<_, DbError>((current_key(&c.group, &c.release.app), encode("current", c)?))
            })
            .transpose()?;
        (&self.rollouts, &self.nodes, &self.current, &self.meta)
            .transaction(|(rollouts, nodes, current, meta)| {
                rollouts.insert(&rollout.id.to_be_bytes(), r.clone())?;
                for (k, v) in &ns {
                    nodes.insert(k.clone(), v.clone())?;
                }
                if let Some((k, v)) = &c {
                    current.insert(k.clone(), v.clone())?;
                }
                let last = u64_value(meta.get(META_ROLLOUT_ID)?);
                if rollout.id > last {
                    meta.insert(META_ROLLOUT_ID, &rollout.id.to_be_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => DbError::Encode("rollout", "aborted".into()),
                TransactionError::Storage(e) => DbError::Sled(e),
            })
    }

    /// Remembers a request nonce until `expires` (unix seconds). Durable with the next flush.
    pub fn put_nonce(&self, nonce: &str, expires: u64) -> Result<(), DbError> {
        self.nonces
            .insert(nonce.as_bytes(), &expires.to_be_bytes())?;
        Ok(())
    }

    /// Seen nonces that are still within their window.
    pub fn nonces(&self, now: u64) -> Result<Vec<(String, u64)>, DbError> {
        let mut out = Vec::new();
        for kv in self.nonces.iter() {
            let (k, v) = kv?;
            let exp = u64_value(Some(v));
            if exp > now {
                out.push((String::from_utf8_lossy(&k).into_owned(), exp));
            }
        }
        Ok(out)
    }

    pub fn remove_nonces(&self, nonces: &[String]) -> Result<(), DbError> {
        let mut batch = sled::Batch::default();
        for n in nonces {
            batch.remove(n.as_bytes());
        }
        self.nonces.apply_batch(batch)?;
        Ok(())
    }
}

fn current_key(group: &str, app: &str) -> Vec<u8> {
    let mut k = group.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(app.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Opens the database again once the previous handle is gone. sled releases its file lock
    /// only when its background flusher thread lets go of the last reference, a moment after the
    /// handle is dropped; on a loaded machine a reopen can come first and find the lock held.
    fn reopen(dir: &Path) -> Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Db::open(dir) {
                Ok(db) => return db,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopening {}: {e}", dir.display()),
            }
        }
    }

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: "k".into(),
            name: "n".into(),
            labels: BTreeMap::new(),
            enrolled: 1,
            revoked: false,
            last_seen: None,
            report: SyncReport::default(),
            apps: BTreeMap::new(),
            sealed: None,
        }
    }

    #[test]
    fn tokens_enrol_once_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            let t = TokenRecord {
                labels: BTreeMap::new(),
                expires: 100,
            };
            db.put_tokens(&[("h1".into(), t.clone()), ("h2".into(), t)])
                .unwrap();
            let n = db.enroll("h1", 50, |_| Ok(node("a"))).unwrap();
            assert_eq!(n.id, "a");
            assert!(matches!(
                db.enroll("h1", 50, |_| Ok(node("b"))),
                Err(EnrollError::UnknownToken)
            ));
            assert!(matches!(
                db.enroll("h2", 100, |_| Ok(node("b"))),
                Err(EnrollError::Expired)
            ));
            assert!(matches!(
                db.enroll("h2", 50, |_| Err("bad labels".into())),
                Err(EnrollError::Refused(_))
            ));
            // Refused and expired attempts roll back: the token is still there until pruned.
            assert_eq!(db.prune_tokens(100).unwrap(), 1);
            db.put_sealed_node(&node("c"), 41).unwrap();
            db.put_nonce("n1", 200).unwrap();
            db.flush().unwrap();
        }
        let db = reopen(dir.path());
        let ids: Vec<String> = db.nodes().unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, vec!["a", "c"]);
        assert_eq!(db.sequence().unwrap(), 41);
        assert_eq!(db.nonces(150).unwrap(), vec![("n1".to_owned(), 200)]);
        assert!(db.nonces(200).unwrap().is_empty());
    }
}
