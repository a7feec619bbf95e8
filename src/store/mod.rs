//! On-disk state: verified bundles, their unpacked files, and the index of what is installed and
//! active.
//!
//! Owns: the layout under `<state_dir>/store`, content-addressed blobs (bundle bytes + their
//! detached signature file, named by the bundle's sha256), unpacked app trees (one directory per
//! digest, with a listing of every file's sha256), the sled index (releases, the active and
//! previous release per app), crash safety, corruption handling and GC with a disk budget.
//! Every write is atomic (temp → fsync → rename → fsync dir) and the index is updated last, in one
//! transaction, and flushed: a kill -9 or a power cut at any point leaves the old or the new state.
//! Must not: parse HTTP, compile wasm, or make trust decisions of its own — whether a bundle may be
//! installed or served is decided by `bundle::sign::verify` under the caller's trust policy
//! (`install.rs` runs that pipeline; `load_active` re-runs the signature check at every start).
#![forbid(unsafe_code)]

pub mod install;
pub mod kv;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::base::atomic;
use crate::base::clock::unix_now;
use crate::bundle::Digest;

/// How many earlier releases of an app are kept for rollback (besides the active one).
pub const KEEP_PREVIOUS: usize = 2;

/// Name of the listing file inside an unpacked tree.
const LISTING: &str = ".outpost-files";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store index {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// The key-value database (`kv.rs`).
    #[error("key-value database {path}: {source}")]
    KeyValue {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("store index record {key}: {problem}")]
    Record { key: String, problem: String },
    #[error("blob {digest}: {problem}")]
    Blob { digest: Digest, problem: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One installed release: what the index knows about a verified bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Release {
    pub app: String,
    pub version: String,
    pub tenant: Option<String>,
    pub digest: Digest,
    /// Bundle size in bytes.
    pub size: u64,
    /// sha256 (hex) of every `.wasm` in the bundle: which compiled artifacts this release needs.
    pub components: Vec<String>,
    /// Unix seconds when this node installed it (the signature was valid then).
    pub installed_at: u64,
}

/// The index record of one app: its active release and the ones before it, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppRecord {
    pub active: Digest,
    pub previous: Vec<Digest>,
}

/// Key, in sled's default tree, of the number of app-record commits so far (u64, big-endian).
/// It changes in the same transaction as the app records, and `apps.snapshot` carries the
/// number of the commit it records: a snapshot exactly one commit behind means a writer was
/// killed between the two (the index is the newer state), anything else means damage.
const COMMIT_KEY: &[u8] = b"app_commits";

/// `apps.snapshot`: the app records after commit `commit`. Snapshots written before commits were
/// numbered hold the bare map (`commit` unknown).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Snapshot {
    Numbered {
        commit: u64,
        apps: BTreeMap<String, AppRecord>,
    },
    Bare(BTreeMap<String, AppRecord>),
}

/// What `open` found and repaired.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// The index could not be opened and was moved aside; it must be rebuilt (`rebuild_index`).
    pub index_recovered: Option<String>,
    /// Partial files and directories left by a crashed writer, removed.
    pub swept: usize,
}

/// The on-disk store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db: sled::Db,
    releases: sled::Tree,
    apps: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the store at `root`. Removes what crashed writers left behind.
    /// An index sled cannot open is moved aside to `index.corrupt-<unix>` and replaced by an empty
    /// one; the report says so and the caller rebuilds it from the blobs.
    pub fn open(root: &Path) -> Result<(Self, OpenReport), StoreError> {
        let mut report = OpenReport::default();
        for d in [root.join("blobs"), root.join("unpacked")] {
            fs::create_dir_all(&d).map_err(io(&d))?;
            set_private(&d);
        }
        set_private(root);
        report.swept += atomic::sweep_temp_files(&root.join("blobs"));
        report.swept += atomic::sweep_temp_dirs(&root.join("unpacked"));

        let index = root.join("index");
        let db = match sled::open(&index) {
            Ok(db) => db,
            // Only damage is repaired; anything else (a lock held by a running daemon, a full
            // disk, permissions) is reported as it is.
            Err(e @ sled::Error::Corruption { .. }) => {
                let aside = root.join(format!("index.corrupt-{}", unix_now()));
                tracing::error!(index = %index.display(), error = %e, moved_to = %aside.display(), "store index unreadable; moving it aside and rebuilding from the blobs");
                fs::rename(&index, &aside).map_err(io(&index))?;
                report.index_recovered = Some(e.to_string());
                sled::open(&index).map_err(|source| StoreError::Index {
                    path: index.clone(),
                    source,
                })?
            }
            Err(source) => {
                return Err(StoreError::Index {
                    path: index.clone(),
                    source,
                });
            }
        };
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Index {
                path: index.clone(),
                source,
            })
        };
        let (releases, apps) = (tree("releases")?, tree("apps")?);
        let store = Self {
            root: root.to_owned(),
            db,
            releases,
            apps,
        };
        // sled opens some damaged files as an empty or partial database without an error, so
        // the index is also checked against the snapshot of app records written after every
        // commit (and, for an index with no snapshot, against the blobs on disk).
        if report.index_recovered.is_none()
            && let Some(problem) = store.index_mismatch()
        {
            tracing::error!(index = %index.display(), %problem, "store index is damaged; rebuilding it from the blobs");
            let aside = root.join(format!("index.corrupt-{}", unix_now()));
            drop(store);
            fs::rename(&index, &aside).map_err(io(&index))?;
            report.index_recovered = Some(problem);
            return Self::open_index_only(root, report);
        }
        Ok((store, report))
    }

    /// Opens a fresh index after the old one was moved aside.
    fn open_index_only(root: &Path, report: OpenReport) -> Result<(Self, OpenReport), StoreError> {
        let index = root.join("index");
        let err = |source| StoreError::Index {
            path: index.clone(),
            source,
        };
        let db = sled::open(&index).map_err(err)?;
        let releases = db.open_tree("releases").map_err(err)?;
        let apps = db.open_tree("apps").map_err(err)?;
        Ok((
            Self {
                root: root.to_owned(),
                db,
                releases,
                apps,
            },
            report,
        ))
    }

    fn snapshot_path(&self) -> PathBuf {
        self.root.join("apps.snapshot")
    }

    /// The app records as the index holds them, by name (`None` if any record is unreadable).
    fn app_records(&self) -> Option<BTreeMap<String, AppRecord>> {
        self.apps().into_iter().map(Result::ok).collect()
    }

    /// How many app-record commits the index holds (0 for one from before they were counted).
    fn commits(&self) -> Option<u64> {
        match self.db.get(COMMIT_KEY) {
            Ok(None) => Some(0),
            Ok(Some(v)) => Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)),
            Err(_) => None,
        }
    }

    /// Why the index cannot be trusted, if it cannot.
    fn index_mismatch(&self) -> Option<String> {
        let Some(records) = self.app_records() else {
            return Some("unreadable app records".into());
        };
        let Some(commits) = self.commits() else {
            return Some("unreadable commit counter".into());
        };
        match fs::read(self.snapshot_path()) {
            Ok(bytes) => match serde_json::from_slice::<Snapshot>(&bytes) {
                Ok(Snapshot::Numbered { commit, apps }) if commit == commits && apps == records => {
                    None
                }
                // Killed after the index committed and before the snapshot was replaced: the
                // index is the newer of two consistent states. Record it, so the next open
                // compares against it.
                Ok(Snapshot::Numbered { commit, .. }) if commit.checked_add(1) == Some(commits) => {
                    tracing::info!(
                        commit = commits,
                        "store index is one commit ahead of its snapshot (a writer stopped between the two); keeping the index"
                    );
                    match self.write_snapshot() {
                        Ok(()) => None,
                        Err(e) => Some(format!("apps.snapshot: {e}")),
                    }
                }
                Ok(Snapshot::Numbered { commit, apps }) => Some(format!(
                    "the index holds {} app(s) after commit {commits} but the snapshot recorded \
                     {} after commit {commit}",
                    records.len(),
                    apps.len()
                )),
                Ok(Snapshot::Bare(snap)) if snap == records => None,
                Ok(Snapshot::Bare(snap)) => Some(format!(
                    "the index holds {} app(s) but the last commit recorded {}",
                    records.len(),
                    snap.len()
                )),
                Err(e) => Some(format!("apps.snapshot: {e}")),
            },
            Err(_) if records.is_empty() && !self.blob_digests().is_empty() => {
                Some("the index is empty but bundles are on disk".into())
            }
            Err(_) => None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a bundle's bytes live.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("{}.bundle", hex::encode(d.0)))
    }

    /// Where a bundle's detached signature file lives.
    pub fn sig_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("{}.sig", hex::encode(d.0)))
    }

    /// Where a bundle's files are unpacked.
    pub fn tree_path(&self, d: &Digest) -> PathBuf {
        self.root.join("unpacked").join(hex::encode(d.0))
    }

    /// Writes the bundle and its signature file (content-addressed; a no-op if already there and
    /// intact).
    pub fn put_blob(&self, d: &Digest, bundle: &[u8], sig: &[u8]) -> Result<(), StoreError> {
        let p = self.blob_path(d);
        if self.read_blob(d).is_err() {
            atomic::write_file(&p, bundle, 0o600).map_err(io(&p))?;
        }
        let s = self.sig_path(d);
        atomic::write_file(&s, sig, 0o600).map_err(io(&s))
    }

    /// Reads a bundle, checking its sha256 against its name: a blob that rotted on disk is an
    /// error, never returned.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let bytes = fs::read(&p).map_err(io(&p))?;
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        if actual != d.0 {
            return Err(StoreError::Blob {
                digest: *d,
                problem: format!(
                    "content hashes to sha256:{} (corrupted on disk)",
                    hex::encode(actual)
                ),
            });
        }
        Ok(bytes)
    }

    /// Reads a bundle's signature file.
    pub fn read_sig(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.sig_path(d);
        fs::read(&p).map_err(io(&p))
    }

    /// Writes `files` as the unpacked tree of `d`: into a temp directory, every file and the
    /// directory fsynced, then renamed into place. An existing intact tree is kept.
    pub fn put_tree(
        &self,
        d: &Digest,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), StoreError> {
        let dest = self.tree_path(d);
        if self.check_tree(d).is_ok() {
            return Ok(());
        }
        let parent = self.root.join("unpacked");
        let tmp = parent.join(format!(".{}.tmp-{}", hex::encode(d.0), std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let result = (|| {
            fs::create_dir(&tmp).map_err(io(&tmp))?;
            let mut listing = String::new();
            let mut dirs = BTreeSet::new();
            for (path, bytes) in files {
                let target = tmp.join(path);
                if let Some(dir) = target.parent()
                    && dir != tmp
                {
                    fs::create_dir_all(dir).map_err(io(dir))?;
                    dirs.insert(dir.to_owned());
                }
                write_synced(&target, bytes)?;
                listing.push_str(&format!(
                    "{} {} {path}\n",
                    hex::encode(Sha256::digest(bytes)),
                    bytes.len()
                ));
            }
            write_synced(&tmp.join(LISTING), listing.as_bytes())?;
            for dir in dirs.iter().rev() {
                atomic::sync_dir(dir).map_err(io(dir))?;
            }
            atomic::sync_dir(&tmp).map_err(io(&tmp))?;
            if dest.exists() {
                // A damaged tree: replace it whole.
                fs::remove_dir_all(&dest).map_err(io(&dest))?;
            }
            fs::rename(&tmp, &dest).map_err(io(&dest))?;
            atomic::sync_dir(&parent).map_err(io(&parent))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Checks an unpacked tree against its listing (every file present with its sha256).
    pub fn check_tree(&self, d: &Digest) -> Result<(), String> {
        let dir = self.tree_path(d);
        let listing = fs::read_to_string(dir.join(LISTING)).map_err(|e| format!("listing: {e}"))?;
        for line in listing.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(sum), Some(_len), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("listing: malformed line {line:?}"));
            };
            let mut f = fs::File::open(dir.join(path)).map_err(|e| format!("{path}: {e}"))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = f.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            if hex::encode(h.finalize()) != sum {
                return Err(format!("{path}: content changed on disk"));
            }
        }
        Ok(())
    }

    /// Records `release` and makes it the active release of its app (the one it replaces moves to
    /// the front of `previous`), in one transaction, flushed before returning.
    pub fn activate(&self, release: &Release) -> Result<(), StoreError> {
        let rel_key = release.digest.to_string();
        let rel_val = serde_json::to_vec(release).map_err(|e| StoreError::Record {
            key: rel_key.clone(),
            problem: e.to_string(),
        })?;
        let current = self.app(&release.app)?;
        let record = match current {
            Some(mut r) if r.active != release.digest => {
                r.previous.retain(|d| *d != release.digest);
                r.previous.insert(0, r.active);
                r.previous.truncate(KEEP_PREVIOUS);
                r.active = release.digest;
                r
            }
            Some(r) => r,
            None => AppRecord {
                active: release.digest,
                previous: Vec::new(),
            },
        };
        self.write_app(&release.app, Some(&record), Some((&rel_key, &rel_val)))
    }

    /// Points `app` at an earlier release it still has (rollback), or removes the app when
    /// `record` is `None`.
    pub fn set_app(&self, app: &str, record: Option<&AppRecord>) -> Result<(), StoreError> {
        self.write_app(app, record, None)
    }

    fn write_app(
        &self,
        app: &str,
        record: Option<&AppRecord>,
        release: Option<(&str, &[u8])>,
    ) -> Result<(), StoreError> {
        use sled::Transactional;
        let app_val =
            record
                .map(serde_json::to_vec)
                .transpose()
                .map_err(|e| StoreError::Record {
                    key: app.to_owned(),
                    problem: e.to_string(),
                })?;
        let meta: &sled::Tree = &self.db;
        let res: sled::transaction::TransactionResult<(), ()> = (&self.releases, &self.apps, meta)
            .transaction(|(rels, apps, meta)| {
                if let Some((k, v)) = release {
                    rels.insert(k.as_bytes(), v)?;
                }
                match &app_val {
                    Some(v) => apps.insert(app.as_bytes(), v.as_slice())?,
                    None => apps.remove(app.as_bytes())?,
                };
                let commits = meta
                    .get(COMMIT_KEY)?
                    .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)))
                    .unwrap_or(0);
                meta.insert(COMMIT_KEY, &commits.wrapping_add(1).to_be_bytes())?;
                Ok(())
            });
        res.map_err(|e| match e {
            sled::transaction::TransactionError::Storage(source) => self.index_err(source),
            sled::transaction::TransactionError::Abort(()) => StoreError::Record {
                key: app.to_owned(),
                problem: "transaction aborted".into(),
            },
        })?;
        self.db.flush().map_err(|e| self.index_err(e))?;
        self.write_snapshot()
    }

    /// Records the app records just committed, for [`Store::index_mismatch`].
    fn write_snapshot(&self) -> Result<(), StoreError> {
        let snapshot = Snapshot::Numbered {
            commit: self.commits().unwrap_or(0),
            apps: self.app_records().unwrap_or_default(),
        };
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| StoreError::Record {
            key: "apps.snapshot".into(),
            problem: e.to_string(),
        })?;
        let p = self.snapshot_path();
        atomic::write_file(&p, &bytes, 0o600).map_err(io(&p))
    }

    fn index_err(&self, source: sled::Error) -> StoreError {
        StoreError::Index {
            path: self.root.join("index"),
            source,
        }
    }

    /// The index record of `app`, if installed.
    pub fn app(&self, app: &str) -> Result<Option<AppRecord>, StoreError> {
        let Some(v) = self.apps.get(app).map_err(|e| self.index_err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Record {
                key: format!("apps/{app}"),
                problem: e.to_string(),
            })
    }

    /// Every installed app and its record. Records that do not parse are reported as errors.
    pub fn apps(&self) -> Vec<Result<(String, AppRecord), StoreError>> {
        self.apps
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.index_err(e))?;
                let name = String::from_utf8_lossy(&k).into_owned();
                let rec = serde_json::from_slice(&v).map_err(|e| StoreError::Record {
                    key: format!("apps/{name}"),
                    problem: e.to_string(),
                })?;
                Ok((name, rec))
            })
            .collect()
    }

    /// The release recorded under `d`.
    pub fn release(&self, d: &Digest) -> Result<Option<Release>, StoreError> {
        let key = d.to_string();
        let Some(v) = self.releases.get(&key).map_err(|e| self.index_err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| StoreError::Record {
                key: format!("releases/{key}"),
                problem: e.to_string(),
            })
    }

    /// Drops a release from the index (its app record must no longer point at it).
    pub fn forget_release(&self, d: &Digest) -> Result<(), StoreError> {
        self.releases
            .remove(d.to_string())
            .map_err(|e| self.index_err(e))?;
        self.db.flush().map_err(|e| self.index_err(e))?;
        Ok(())
    }

    /// Removes a release's files (blob, signature, tree).
    pub fn remove_files(&self, d: &Digest) {
        let _ = fs::remove_file(self.blob_path(d));
        let _ = fs::remove_file(self.sig_path(d));
        let _ = fs::remove_dir_all(self.tree_path(d));
    }

    /// Digests of every blob on disk (by file name).
    pub fn blob_digests(&self) -> Vec<Digest> {
        let Ok(entries) = fs::read_dir(self.root.join("blobs")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.strip_suffix(".bundle")?;
                format!("sha256:{hex}").parse().ok()
            })
            .collect()
    }

    /// Removes everything no app references and, if the store is still over `budget` bytes,
    /// the oldest previous releases. Active releases are never removed. Compiled artifacts in
    /// `code_dir` (`<wasm sha256>-<fingerprint>.cwasm`) not needed by any kept release go too.
    /// `keep_wasm` names (sha256 hex) further components whose artifacts must stay — those of
    /// apps served from outside the store.
    pub fn gc(
        &self,
        budget: u64,
        code_dir: Option<&Path>,
        keep_wasm: &BTreeSet<String>,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut records = Vec::new();
        for r in self.apps() {
            records.push(r?);
        }
        // Over budget: trim `previous` lists, oldest first, until the kept set fits.
        loop {
            let kept: BTreeSet<Digest> = records
                .iter()
                .flat_map(|(_, r)| std::iter::once(r.active).chain(r.previous.iter().copied()))
                .collect();
            let size: u64 = kept.iter().map(|d| self.disk_size(d)).sum();
            report.bytes_kept = size;
            if size <= budget {
                break;
            }
            // The app whose last previous release is the oldest installed.
            let victim = records
                .iter_mut()
                .filter(|(_, r)| !r.previous.is_empty())
                .min_by_key(|(_, r)| {
                    r.previous
                        .last()
                        .and_then(|d| self.release(d).ok().flatten())
                        .map_or(0, |rel| rel.installed_at)
                });
            let Some((app, rec)) = victim else {
                report.over_budget = true;
                break;
            };
            rec.previous.pop();
            self.set_app(app, Some(rec))?;
        }
        let kept: BTreeSet<Digest> = records
            .iter()
            .flat_map(|(_, r)| std::iter::once(r.active).chain(r.previous.iter().copied()))
            .collect();

        let mut wasm_needed = keep_wasm.clone();
        for d in &kept {
            if let Some(rel) = self.release(d)? {
                wasm_needed.extend(rel.components);
            }
        }
        // Releases in the index that no app keeps.
        let indexed: Vec<Digest> = self
            .releases
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .filter_map(|k| String::from_utf8_lossy(&k).parse().ok())
            .collect();
        for d in indexed {
            if !kept.contains(&d) {
                self.forget_release(&d)?;
            }
        }
        // Files on disk that no kept release names.
        let mut on_disk: BTreeSet<Digest> = self.blob_digests().into_iter().collect();
        if let Ok(entries) = fs::read_dir(self.root.join("unpacked")) {
            on_disk.extend(entries.flatten().filter_map(|e| {
                format!("sha256:{}", e.file_name().to_string_lossy())
                    .parse::<Digest>()
                    .ok()
            }));
        }
        for d in on_disk {
            if !kept.contains(&d) {
                report.bytes_freed += self.disk_size(&d);
                self.remove_files(&d);
                report.releases_removed += 1;
            }
        }
        if let Some(dir) = code_dir
            && let Ok(entries) = fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(stem) = name
                    .strip_suffix(".cwasm")
                    .or_else(|| name.strip_suffix(".cwasm.sum"))
                else {
                    continue;
                };
                let wasm = stem.split('-').next().unwrap_or_default();
                if !wasm_needed.contains(wasm) {
                    report.bytes_freed += e.metadata().map_or(0, |m| m.len());
                    if fs::remove_file(e.path()).is_ok() {
                        report.artifacts_removed += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Bytes a release occupies (blob + signature + unpacked tree).
    fn disk_size(&self, d: &Digest) -> u64 {
        let file = |p: PathBuf| fs::metadata(p).map_or(0, |m| m.len());
        file(self.blob_path(d)) + file(self.sig_path(d)) + dir_size(&self.tree_path(d))
    }
}

/// What a GC pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub releases_removed: usize,
    pub artifacts_removed: usize,
    pub bytes_freed: u64,
    pub bytes_kept: u64,
    /// The active releases alone exceed the budget (nothing more may be removed).
    pub over_budget: bool,
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(store: &Store, app: &str, version: &str, body: &[u8], at: u64) -> Release {
        let d = crate::bundle::digest(body);
        store.put_blob(&d, body, b"sig").unwrap();
        let mut files = BTreeMap::new();
        files.insert("outpost.toml".to_owned(), body.to_vec());
        files.insert("static/a.txt".to_owned(), b"a".to_vec());
        store.put_tree(&d, &files).unwrap();
        Release {
            app: app.into(),
            version: version.into(),
            tenant: None,
            digest: d,
            size: body.len() as u64,
            components: vec![hex::encode(version)],
            installed_at: at,
        }
    }

    #[test]
    fn activate_keeps_a_bounded_history_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let rels: Vec<_> = (1..=4)
            .map(|i| {
                release(
                    &store,
                    "a",
                    &format!("{i}.0.0"),
                    format!("v{i}").as_bytes(),
                    i,
                )
            })
            .collect();
        for r in &rels {
            store.activate(r).unwrap();
        }
        drop(store);
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.index_recovered.is_none());
        let rec = store.app("a").unwrap().unwrap();
        assert_eq!(rec.active, rels[3].digest);
        assert_eq!(rec.previous, vec![rels[2].digest, rels[1].digest]);
        assert_eq!(store.release(&rels[3].digest).unwrap().unwrap(), rels[3]);
    }

    /// A writer killed between the index commit and the snapshot leaves the snapshot one commit
    /// behind: that is the newer of two consistent states, not damage. A snapshot further off
    /// (the index lost commits, or is another index) still is.
    #[test]
    fn a_snapshot_one_commit_behind_is_an_interrupted_commit_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("apps.snapshot");
        let (store, _) = Store::open(dir.path()).unwrap();
        let rels: Vec<_> = (1..=3)
            .map(|i| release(&store, "a", &format!("{i}.0.0"), &[i], u64::from(i)))
            .collect();
        store.activate(&rels[0]).unwrap();
        let after_first = fs::read(&snap).unwrap();
        store.activate(&rels[1]).unwrap();
        drop(store);
        // As if killed after the second commit, before its snapshot.
        fs::write(&snap, &after_first).unwrap();
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.index_recovered.is_none(), "{report:?}");
        assert_eq!(store.app("a").unwrap().unwrap().active, rels[1].digest);
        // ... and the snapshot was brought up to date.
        assert_ne!(fs::read(&snap).unwrap(), after_first);
        store.activate(&rels[2]).unwrap();
        drop(store);
        // Two commits behind: not something a kill can cause.
        fs::write(&snap, &after_first).unwrap();
        let (_, report) = Store::open(dir.path()).unwrap();
        let problem = report.index_recovered.expect("detected");
        assert!(
            problem.contains("after commit 3") && problem.contains("after commit 1"),
            "{problem}"
        );
    }

    #[test]
    fn blobs_and_trees_are_checked_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let r = release(&store, "a", "1.0.0", b"payload", 1);
        assert_eq!(store.read_blob(&r.digest).unwrap(), b"payload");
        assert!(store.check_tree(&r.digest).is_ok());
        std::fs::write(store.blob_path(&r.digest), b"paylode").unwrap();
        let e = store.read_blob(&r.digest).unwrap_err().to_string();
        assert!(e.contains("corrupted on disk"), "{e}");
        std::fs::write(store.tree_path(&r.digest).join("static/a.txt"), b"b").unwrap();
        let e = store.check_tree(&r.digest).unwrap_err();
        assert!(e.contains("static/a.txt"), "{e}");
    }

    #[test]
    fn open_sweeps_partial_writes() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        std::fs::create_dir(dir.path().join("unpacked/.abc.tmp-1")).unwrap();
        std::fs::write(dir.path().join("blobs/.x.bundle.tmp-1-0"), b"half").unwrap();
        let (_, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.swept, 2);
    }

    #[test]
    fn gc_removes_what_no_app_keeps_and_trims_history_to_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let code = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let big = vec![7u8; 10_000];
        let mut rels = Vec::new();
        for i in 1..=3u8 {
            let mut body = big.clone();
            body[0] = i;
            let r = release(&store, "a", &format!("{i}.0.0"), &body, u64::from(i));
            store.activate(&r).unwrap();
            let w = hex::encode(format!("{i}.0.0"));
            std::fs::write(code.path().join(format!("{w}-fp.cwasm")), b"x").unwrap();
            std::fs::write(code.path().join(format!("{w}-fp.cwasm.sum")), b"x").unwrap();
            rels.push(r);
        }
        // An orphan blob (a crash after the blob write, before the index) and a stray artifact.
        let orphan = release(&store, "b", "1.0.0", b"orphan", 9);
        std::fs::write(code.path().join("stray-fp.cwasm"), b"x").unwrap();
        let keep_outside = BTreeSet::from(["stray".to_owned()]);

        let r = store
            .gc(u64::MAX, Some(code.path()), &BTreeSet::new())
            .unwrap();
        assert_eq!(r.releases_removed, 1);
        assert!(!store.blob_path(&orphan.digest).exists());
        assert!(!code.path().join("stray-fp.cwasm").exists());
        assert!(
            store.blob_path(&rels[0].digest).exists(),
            "history kept within budget"
        );

        // A budget for about two releases: the oldest previous one goes, the active one stays.
        let two = rels
            .iter()
            .take(2)
            .map(|r| store.disk_size(&r.digest))
            .sum::<u64>()
            + 10;
        std::fs::write(code.path().join("stray-fp.cwasm"), b"x").unwrap();
        let r = store.gc(two, Some(code.path()), &keep_outside).unwrap();
        assert!(!r.over_budget);
        assert!(!store.blob_path(&rels[0].digest).exists());
        assert!(store.blob_path(&rels[2].digest).exists());
        let art = |v: &str| code.path().join(format!("{}-fp.cwasm", hex::encode(v)));
        assert!(!art("1.0.0").exists());
        assert!(
            !code
                .path()
                .join(format!("{}-fp.cwasm.sum", hex::encode("1.0.0")))
                .exists()
        );
        assert!(art("3.0.0").exists());
        assert!(
            code.path().join("stray-fp.cwasm").exists(),
            "kept for an app outside the store"
        );
        assert_eq!(
            store.app("a").unwrap().unwrap().previous,
            vec![rels[1].digest]
        );

        // Nothing fits: the active release still stays.
        let r = store.gc(1, Some(code.path()), &BTreeSet::new()).unwrap();
        assert!(r.over_budget);
        assert!(store.blob_path(&rels[2].digest).exists());
    }
}
