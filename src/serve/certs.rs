//! Server certificates for the TLS and QUIC listeners, chosen per handshake by server name (SNI).
//!
//! Owns: loading PEM certificate chains and keys, the name → certificate table (exact names, then
//! the most specific `*.suffix`, then the default certificate), refusing handshakes no
//! certificate covers (logged, rate-limited), reloading changed files (polled, or at once on
//! SIGHUP) without touching open connections, and generating the self-signed development
//! certificate.
//! Must not: parse the daemon config (the CLI hands over paths), or let a bad file on reload
//! replace a good certificate — the old one stays and the log says why.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::ops::metrics::Metrics;

/// At most one "no certificate for this name" warning per this interval; the rest are counted
/// and reported with the next one (scanners probe with random names all day).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Names the development certificate is issued for.
pub const SELF_SIGNED_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A certificate chain file and its private key file (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where every certificate comes from.
#[derive(Debug, Default)]
pub struct CertSpec {
    /// Served when the client sends no server name or one nothing else covers.
    pub default: Option<DefaultCert>,
    /// Per-tenant certificates: canonical host names (`app.example.com`, `*.example.net`) and
    /// their files.
    pub tenants: Vec<(Vec<String>, CertPaths)>,
}

/// The default certificate: files, or one generated at start.
#[derive(Debug)]
pub enum DefaultCert {
    Files(CertPaths),
    SelfSigned(SelfSigned),
}

/// Why certificates could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    #[error("cannot generate the self-signed certificate: {0}")]
    Generate(String),
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The rustls crypto provider every listener uses: ring, the one stack that cross-compiles
/// statically for aarch64-musl.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// === impl SelfSigned ===

/// A freshly generated self-signed certificate (development only).
pub struct SelfSigned {
    key: Arc<CertifiedKey>,
    /// The certificate in PEM, for clients to trust (`curl --cacert`).
    pub cert_pem: String,
    /// SHA-256 of the certificate (DER), colon-separated hex.
    pub fingerprint: String,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl SelfSigned {
    /// A new key pair and a certificate for [`SELF_SIGNED_NAMES`].
    pub fn generate() -> Result<Self, CertError> {
        let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| (*s).to_owned()).collect();
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let der = made.cert.der().clone();
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let certified = CertifiedKey::from_der(vec![der.clone()], key, &provider())
            .map_err(|e| CertError::Generate(e.to_string()))?;
        Ok(Self {
            key: Arc::new(certified),
            cert_pem: made.cert.pem(),
            fingerprint: fingerprint(&der),
        })
    }

    /// Writes the certificate (not the key) to `path` atomically, creating its directory.
    pub fn write_pem(&self, path: &Path) -> Result<(), CertError> {
        let write = |source| CertError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        crate::base::atomic::write_file(path, self.cert_pem.as_bytes(), 0o644).map_err(write)
    }
}

/// SHA-256 of a DER certificate as `AB:CD:…`, the form browsers and `openssl x509 -fingerprint
/// -sha256` show.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

// === impl CertStore ===

/// The certificates of every TLS and QUIC listener; a rustls [`ResolvesServerCert`].
///
/// Handshakes read an immutable [`CertTable`] behind an `Arc` (a read lock held for one clone);
/// a reload builds a new table and swaps it, so a handshake sees either the old or the new
/// certificates, and established connections never notice.
pub struct CertStore {
    table: RwLock<Arc<CertTable>>,
    /// What to reload; only the reloader takes this lock.
    sources: Mutex<Vec<Source>>,
    provider: Arc<CryptoProvider>,
    refusals: Throttle,
    /// Attached once the daemon's metrics exist (certificates load earlier, with the config).
    metrics: std::sync::OnceLock<Metrics>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

/// One configured certificate and what was last loaded from it.
struct Source {
    /// Empty for the default certificate.
    hosts: Vec<String>,
    /// `None` for a generated certificate, which never reloads.
    paths: Option<CertPaths>,
    /// File stamps of what is being served, and of the last attempt (so a broken file is
    /// reported once, not at every poll).
    loaded: Option<(Stamp, Stamp)>,
    attempted: Option<(Stamp, Stamp)>,
    key: Arc<CertifiedKey>,
}

impl Source {
    fn describe(&self) -> String {
        let what = if self.hosts.is_empty() {
            "default certificate".to_owned()
        } else {
            format!("certificate for {}", self.hosts.join(", "))
        };
        match &self.paths {
            Some(p) => format!("{what} ({})", p.cert.display()),
            None => what,
        }
    }
}

/// The name → certificate lookup table, rebuilt whole on reload.
#[derive(Debug, Default)]
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    fn build(sources: &[Source]) -> Self {
        let mut t = CertTable::default();
        for s in sources {
            if s.hosts.is_empty() {
                t.default = Some(s.key.clone());
            }
            for h in &s.hosts {
                match h.strip_prefix("*.") {
                    Some(suffix) => t.wildcard.insert(suffix.to_owned(), s.key.clone()),
                    None => t.exact.insert(h.clone(), s.key.clone()),
                };
            }
        }
        t
    }

    /// Exact name, else the most specific wildcard covering it (any depth below the suffix, as
    /// for app hosts; never the suffix itself), else the default.
    fn lookup(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        if let Some(k) = self.exact.get(name) {
            return Some(k);
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k);
            }
            rest = parent;
        }
        self.default.as_ref()
    }
}

impl CertStore {
    /// Loads every certificate in `spec`. Any unreadable or invalid file fails the whole load
    /// (at start a bad certificate is a config error); see [`CertStore::reload`] for later.
    pub fn load(spec: CertSpec) -> Result<Self, CertError> {
        let provider = provider();
        let mut sources = Vec::new();
        if let Some(d) = spec.default {
            sources.push(match d {
                DefaultCert::Files(paths) => {
                    let (key, stamps) = load_pair(&paths, &provider)?;
                    Source {
                        hosts: Vec::new(),
                        paths: Some(paths),
                        loaded: Some(stamps),
                        attempted: Some(stamps),
                        key: Arc::new(key),
                    }
                }
                DefaultCert::SelfSigned(s) => Source {
                    hosts: Vec::new(),
                    paths: None,
                    loaded: None,
                    attempted: None,
                    key: s.key,
                },
            });
        }
        for (hosts, paths) in spec.tenants {
            let (key, stamps) = load_pair(&paths, &provider)?;
            warn_uncovered(&key, &hosts, &paths);
            sources.push(Source {
                hosts,
                paths: Some(paths),
                loaded: Some(stamps),
                attempted: Some(stamps),
                key: Arc::new(key),
            });
        }
        Ok(Self {
            table: RwLock::new(Arc::new(CertTable::build(&sources))),
            sources: Mutex::new(sources),
            provider,
            refusals: Throttle::new(REFUSAL_LOG_INTERVAL),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Counts refused handshakes in `metrics` from now on (the first call wins).
    pub fn set_metrics(&self, metrics: Metrics) {
        let _ = self.metrics.set(metrics);
    }

    /// Whether a handshake for `server_name` (none: the client sent no SNI) gets a certificate.
    pub fn covers(&self, server_name: Option<&str>) -> bool {
        self.lookup(server_name).is_some()
    }

    fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let name = server_name.map(canonical_name);
        table.lookup(name.as_deref()).cloned()
    }

    /// Re-reads certificate files whose stamp (mtime, size, inode) changed since the last
    /// attempt — or all of them when `force` (SIGHUP). A file that fails to load keeps the
    /// certificate already served and is logged once per change. Returns how many certificates
    /// were replaced.
    pub fn reload(&self, force: bool) -> usize {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut replaced = 0;
        for s in sources.iter_mut() {
            let Some(paths) = s.paths.clone() else {
                continue;
            };
            let now = match (stamp(&paths.cert), stamp(&paths.key)) {
                (Ok(c), Ok(k)) => Some((c, k)),
                _ => None,
            };
            // Unchanged since the last attempt (for a missing file: still missing, and
            // already reported).
            if !force && now == s.attempted {
                continue;
            }
            s.attempted = now;
            match load_pair(&paths, &self.provider) {
                Ok((key, stamps)) => {
                    if s.loaded == Some(stamps) && !force {
                        continue;
                    }
                    warn_uncovered(&key, &s.hosts, &paths);
                    s.key = Arc::new(key);
                    s.loaded = Some(stamps);
                    s.attempted = Some(stamps);
                    replaced += 1;
                    tracing::info!(certificate = %s.describe(), "certificate reloaded; new connections use it");
                }
                Err(e) => {
                    tracing::warn!(certificate = %s.describe(), error = %e, "certificate not reloaded; still serving the previous one");
                }
            }
        }
        if replaced > 0 {
            let table = Arc::new(CertTable::build(&sources));
            *self
                .table
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = table;
        }
        replaced
    }

    /// Reloads changed files every `interval`, and all files at once on SIGHUP, until `stop`
    /// changes. The SIGHUP handler is installed before this returns, so a signal sent after
    /// the daemon announced its addresses is never lost (or fatal).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload only when their files change");
                None
            }
        };
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                let force = tokio::select! {
                    _ = stop.changed() => return,
                    _ = tick.tick() => false,
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        tracing::info!("SIGHUP received; reloading certificates");
                        true
                    }
                };
                let store = this.clone();
                let _ = tokio::task::spawn_blocking(move || store.reload(force)).await;
            }
        })
    }

    fn refuse(&self, server_name: Option<&str>) {
        if let Some(m) = self.metrics.get() {
            m.tls_handshake_failures
                .with_label_values(&["unknown_server_name"])
                .inc();
        }
        if let Some(suppressed) = self.refusals.allow() {
            tracing::warn!(
                server_name = ?server_name.unwrap_or("(none)"),
                similar_refusals_not_logged = suppressed,
                "TLS handshake refused: no certificate covers this server name and there is no default certificate"
            );
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name();
        let found = self.lookup(name);
        if found.is_none() {
            self.refuse(name);
        }
        found
    }
}

/// Whether a handshake error is the refusal [`CertStore`] already counted and logged.
pub(super) fn is_refusal(message: &str) -> bool {
    message.contains("no server certificate chain resolved")
}

/// Lowercase, without a trailing dot: the form hosts are stored in.
fn canonical_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// (modified time, length, inode): changes whenever a file is rewritten or replaced, including
/// the symlink swaps Kubernetes and certbot use (metadata follows symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(Option<SystemTime>, u64, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp(m.modified().ok(), m.len(), m.ino()))
}

/// Reads and checks a certificate chain and its key: PEM parses, at least one certificate, the
/// leaf parses as X.509, and the key matches the leaf.
fn load_pair(
    paths: &CertPaths,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, (Stamp, Stamp)), CertError> {
    let read = |path: &Path| -> Result<(Vec<u8>, Stamp), CertError> {
        let err = |source| CertError::Read {
            path: path.to_owned(),
            source,
        };
        // Stamp first: if the file changes while it is read, the next poll sees a newer stamp.
        let s = stamp(path).map_err(err)?;
        let bytes = std::fs::read(path).map_err(err)?;
        Ok((bytes, s))
    };
    let invalid = |path: &Path, problem: String| CertError::Invalid {
        path: path.to_owned(),
        problem,
    };
    let (cert_pem, cert_stamp) = read(&paths.cert)?;
    let (key_pem, key_stamp) = read(&paths.key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&paths.cert, format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(
            &paths.cert,
            "no certificate found; expected PEM \"BEGIN CERTIFICATE\" blocks, leaf first".into(),
        ));
    };
    ParsedCertificate::try_from(leaf)
        .map_err(|e| invalid(&paths.cert, format!("leaf certificate does not parse: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            &paths.key,
            format!("no usable private key (expected PEM PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        invalid(
            &paths.key,
            format!("does not go with {}: {e}", paths.cert.display()),
        )
    })?;
    Ok((certified, (cert_stamp, key_stamp)))
}

/// Logs configured hosts the certificate is not valid for: clients would reject it.
fn warn_uncovered(key: &CertifiedKey, hosts: &[String], paths: &CertPaths) {
    let Ok(leaf) = key.end_entity_cert() else {
        return;
    };
    let Ok(parsed) = ParsedCertificate::try_from(leaf) else {
        return;
    };
    for h in hosts {
        // A wildcard host is checked with a name one label below it.
        let probe = match h.strip_prefix("*.") {
            Some(suffix) => format!("outpost-check.{suffix}"),
            None => h.clone(),
        };
        let Ok(name) = ServerName::try_from(probe) else {
            continue;
        };
        if rustls::client::verify_server_name(&parsed, &name).is_err() {
            tracing::warn!(host = %h, certificate = %paths.cert.display(), "certificate is not valid for a host it is configured for; clients will reject it");
        }
    }
}

/// Lets one event through per interval and counts the ones it held back.
struct Throttle {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds since `start` before which nothing is let through.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when this event may be logged.
    fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A certificate and key for `names`, written as PEM files in `dir` under `stem`.
    fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> (CertPaths, Vec<u8>) {
        let made = rcgen::generate_simple_self_signed(
            names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let paths = CertPaths {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        // Write-then-rename, like certbot: a new inode, whatever the clock granularity.
        for (path, text) in [
            (&paths.cert, made.cert.pem()),
            (&paths.key, made.signing_key.serialize_pem()),
        ] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (paths, made.cert.der().to_vec())
    }

    fn served(store: &CertStore, name: Option<&str>) -> Option<Vec<u8>> {
        store
            .lookup(name)
            .map(|k| k.end_entity_cert().unwrap().to_vec())
    }

    #[test]
    fn sni_picks_exact_then_most_specific_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_der) = write_cert(dir.path(), "a", &["app.example.com"]);
        let (b, b_der) = write_cert(dir.path(), "b", &["*.tenant-b.example"]);
        let (c, c_der) = write_cert(dir.path(), "c", &["*.deep.tenant-b.example"]);
        let (d, d_der) = write_cert(dir.path(), "d", &["default.example"]);
        let store = CertStore::load(CertSpec {
            default: Some(DefaultCert::Files(d)),
            tenants: vec![
                (vec!["app.example.com".into()], a),
                (vec!["*.tenant-b.example".into()], b),
                (vec!["*.deep.tenant-b.example".into()], c),
            ],
        })
        .unwrap();
        assert_eq!(served(&store, Some("app.example.com")), Some(a_der.clone()));
        assert_eq!(served(&store, Some("APP.Example.com.")), Some(a_der));
        assert_eq!(
            served(&store, Some("x.tenant-b.example")),
            Some(b_der.clone())
        );
        assert_eq!(served(&store, Some("x.y.tenant-b.example")), Some(b_der));
        assert_eq!(served(&store, Some("x.deep.tenant-b.example")), Some(c_der));
        // The apex is not covered by its wildcard.
        assert_eq!(
            served(&store, Some("tenant-b.example")),
            Some(d_der.clone())
        );
        assert_eq!(served(&store, None), Some(d_der));
    }

    #[test]
    fn unknown_names_without_default_are_refused_and_throttled() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = write_cert(dir.path(), "a", &["app.example.com"]);
        let metrics = Metrics::new();
        let store = CertStore::load(CertSpec {
            default: None,
            tenants: vec![(vec!["app.example.com".into()], a)],
        })
        .unwrap();
        store.set_metrics(metrics.clone());
        assert!(store.covers(Some("app.example.com")));
        assert!(!store.covers(Some("other.example.com")));
        assert!(!store.covers(None));
        store.refuse(Some("x"));
        store.refuse(Some("y"));
        store.refuse(None);
        assert_eq!(
            metrics
                .tls_handshake_failures
                .with_label_values(&["unknown_server_name"])
                .get(),
            3
        );
        // The first is logged, the next two held back until the interval passes.
        assert_eq!(store.refusals.suppressed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn reload_swaps_changed_files_and_keeps_the_old_one_on_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_der) = write_cert(dir.path(), "a", &["app.example.com"]);
        let store = CertStore::load(CertSpec {
            default: None,
            tenants: vec![(vec!["app.example.com".into()], a.clone())],
        })
        .unwrap();
        assert_eq!(store.reload(false), 0, "nothing changed");

        // A new certificate in place.
        let (_, new_der) = write_cert(dir.path(), "a", &["app.example.com"]);
        assert_ne!(new_der, a_der);
        assert_eq!(store.reload(false), 1);
        assert_eq!(
            served(&store, Some("app.example.com")),
            Some(new_der.clone())
        );

        // Garbage keeps the last good certificate.
        std::fs::write(&a.cert, "not a certificate").unwrap();
        assert_eq!(store.reload(false), 0);
        assert_eq!(store.reload(true), 0);
        assert_eq!(
            served(&store, Some("app.example.com")),
            Some(new_der.clone())
        );

        // A key that does not match its certificate is refused too.
        let (other, _) = write_cert(dir.path(), "other", &["app.example.com"]);
        let (_, fresh_der) = write_cert(dir.path(), "a", &["app.example.com"]);
        std::fs::copy(&other.key, &a.key).unwrap();
        assert_eq!(store.reload(true), 0);
        assert_eq!(served(&store, Some("app.example.com")), Some(new_der));
        assert_ne!(fresh_der, a_der);

        // Missing files too.
        std::fs::remove_file(&a.key).unwrap();
        assert_eq!(store.reload(true), 0);
        assert!(store.covers(Some("app.example.com")));
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = write_cert(dir.path(), "a", &["a.example"]);
        let (b, _) = write_cert(dir.path(), "b", &["b.example"]);
        let load = |paths: CertPaths| {
            CertStore::load(CertSpec {
                default: Some(DefaultCert::Files(paths)),
                tenants: vec![],
            })
            .unwrap_err()
            .to_string()
        };
        let missing = dir.path().join("missing.pem");
        let msg = load(CertPaths {
            cert: missing.clone(),
            key: a.key.clone(),
        });
        assert!(
            msg.starts_with(&format!("{}: cannot read", missing.display())),
            "{msg}"
        );
        let msg = load(CertPaths {
            cert: a.key.clone(),
            key: a.key.clone(),
        });
        assert!(msg.contains("no certificate found"), "{msg}");
        let msg = load(CertPaths {
            cert: a.cert.clone(),
            key: a.cert.clone(),
        });
        assert!(msg.contains("no usable private key"), "{msg}");
        let msg = load(CertPaths {
            cert: a.cert.clone(),
            key: b.key.clone(),
        });
        assert!(msg.contains("does not go with"), "{msg}");
    }

    #[test]
    fn self_signed_covers_localhost_and_writes_its_pem() {
        let s = SelfSigned::generate().unwrap();
        assert_eq!(s.fingerprint.len(), 32 * 3 - 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls/self-signed.pem");
        s.write_pem(&path).unwrap();
        let der = CertificateDer::pem_file_iter(&path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(fingerprint(&der), s.fingerprint);
        let parsed = ParsedCertificate::try_from(&der).unwrap();
        for name in ["localhost", "127.0.0.1"] {
            let n = ServerName::try_from(name).unwrap();
            assert!(
                rustls::client::verify_server_name(&parsed, &n).is_ok(),
                "{name}"
            );
        }
        let store = CertStore::load(CertSpec {
            default: Some(DefaultCert::SelfSigned(s)),
            tenants: vec![],
        })
        .unwrap();
        assert!(store.covers(None));
        assert!(store.covers(Some("anything.example")));
        assert_eq!(
            store.reload(true),
            0,
            "a generated certificate never reloads"
        );
    }
}
