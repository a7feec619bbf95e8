//! The daemon config file (`outpost run --config FILE`) and the embedded default used without one.
//!
//! Owns: parsing and validating the config into [`Config`], resolving its relative paths against
//! the file's directory, and the fallbacks for the state directory and node name.
//! Must not: bind sockets, load apps or interpret `[runtime]` beyond turning human-friendly sizes
//! and durations into plain numbers — `sizing` owns what those numbers mean.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::outbound::HostPattern;
use crate::base::units::{Field, FieldError, Fields, TomlError, parse_document, quote};

mod control_plane;
mod tls;
pub use control_plane::{
    ControlPlaneConfig, DEFAULT_POLL_INTERVAL, DEFAULT_REQUEST_TIMEOUT, NODE_SET_LABELS,
    valid_label,
};
pub use tls::{
    CertFiles, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_RELOAD_INTERVAL, TenantCert, TlsConfig,
};

/// The configuration `outpost run` uses when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");
/// How [`DEFAULT_CONFIG`] is named in errors.
pub const EMBEDDED_ORIGIN: &str = "<embedded default config>";
/// Drain deadline when `listen.drain_timeout` is not set.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `listen.header_timeout`: connect (or the first byte of a keep-alive connection's next
/// request) to a complete request head, TLS handshake included. A real client needs one round
/// trip for a head and a few for a handshake; 10 s covers satellite links with retransmits.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `listen.idle_timeout`: a keep-alive connection with no request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `store.max_bundle_size`, the largest compressed bundle a node downloads or installs:
/// a Python or JavaScript app is 20-60 MiB uncompressed and compresses about 3:1 (the bundle
/// format's own default cap, `bundle::archive::Limits`, and the control plane's upload cap).
pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = 64 << 20;
/// Default `listen.admin_max_connections`: scrapers and probes, never a crowd.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Bounds of `listen.header_timeout`: below 100 ms real clients on slow links fail; above five
/// minutes a slow client holds its permit for no reason.
pub const HEADER_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));
/// Bounds of `listen.idle_timeout`.
pub const IDLE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// Apps compiled into the binary, addressed as `builtin:<name>`.
pub const BUILTIN_APPS: &[&str] = &["demo"];
/// Node name when none is configured and the hostname is unusable.
pub const FALLBACK_NODE_NAME: &str = "outpost";
/// Last-resort state directory: not persistent across reboots, but always writable.
pub const FALLBACK_STATE_DIR: &str = "/tmp/outpost-state";

const TOP_KEYS: &[&str] = &[
    "node",
    "listen",
    "runtime",
    "app",
    "trust",
    "store",
    "tls",
    "control_plane",
    "fairness",
    "log",
    "key_value",
    "variables",
    "registry",
];
const REGISTRY_KEYS: &[&str] = &["ca", "insecure", "docker_config"];
const KEY_VALUE_KEYS: &[&str] = &[
    "max_key_size",
    "max_value_size",
    "max_keys_per_app",
    "max_bytes_per_app",
    "stores",
];
const KV_STORE_KEYS: &[&str] = &["backend", "url"];
const LOG_KEYS: &[&str] = &["level"];
const FAIRNESS_KEYS: &[&str] = &["cpu_weight"];
/// Largest `[fairness] cpu_weight` (the smallest is 1; an app not named gets 100).
pub const MAX_CPU_WEIGHT: u32 = 10_000;
const TRUST_KEYS: &[&str] = &["keys", "threshold", "tenants"];
const STORE_KEYS: &[&str] = &["disk_budget", "max_bundle_size"];
/// Default `[store] disk_budget`.
pub const DEFAULT_DISK_BUDGET: u64 = 1 << 30;
/// Longest key-value key and value a guest may write: Spin's figures (256 bytes, 1 MiB).
pub const DEFAULT_KV_MAX_KEY_SIZE: u64 = 256;
pub const DEFAULT_KV_MAX_VALUE_SIZE: u64 = 1 << 20;
/// What one app may hold in all its key-value stores together: enough for sessions, counters
/// and a cache on a gateway, small next to the disk budget.
pub const DEFAULT_KV_MAX_KEYS_PER_APP: u64 = 100_000;
pub const DEFAULT_KV_MAX_BYTES_PER_APP: u64 = 64 << 20;
const NODE_KEYS: &[&str] = &["state_dir", "name"];
const LISTEN_KEYS: &[&str] = &[
    "http",
    "https",
    "h3",
    "admin",
    "drain_timeout",
    "header_timeout",
    "idle_timeout",
    "max_connections_per_ip",
    "admin_max_connections",
];
const APP_KEYS: &[&str] = &["source", "hosts", "variables"];
/// `[runtime]` keys that take a size; they reach `sizing` as integer bytes.
const RUNTIME_SIZE_KEYS: &[&str] = &[
    "memory_budget",
    "memory_reservation",
    "memory_guard",
    "max_memory_per_instance",
    "default_memory_limit",
    "quic_stream_receive_window",
    "quic_receive_window",
];
/// `[runtime]` keys that take a duration, and the millisecond key each becomes.
const RUNTIME_DURATION_KEYS: &[(&str, &str)] = &[
    ("default_timeout", "default_timeout_ms"),
    ("quic_idle_timeout", "quic_idle_timeout_ms"),
];
/// Longest node name: a full DNS name, since the default is the hostname.
const MAX_NODE_NAME: usize = 253;

/// A validated daemon config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub listen: ListenConfig,
    /// In file order.
    pub apps: Vec<AppConfig>,
    /// `[trust]`: who may sign the bundles this node installs.
    pub trust: TrustConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[tls]`: certificates for the `listen.https` listeners.
    pub tls: TlsConfig,
    /// `[control_plane]`: the node agent (`sync`) runs when this is set.
    pub control_plane: Option<ControlPlaneConfig>,
    /// `[fairness]`: how apps share the node when it is busy.
    pub fairness: FairnessConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[key_value]`: limits and which backend holds each store.
    pub key_value: KeyValueConfig,
    /// `[registry]`: how `oci://` app sources reach their registries.
    pub registry: RegistryConfig,
    /// `[variables.APP]`: values for the `[variables]` of the app named APP, whatever its
    /// source; an `[[app]]`'s own `variables` win over them. Kept out of logs.
    pub variables: AppVariablesConfig,
    /// `[runtime]` with sizes and `default_timeout` already normalised to numbers.
    runtime: toml::Table,
    /// Where the config came from (file path or [`EMBEDDED_ORIGIN`]), for later errors.
    origin: String,
}

/// `[registry]`: how the node reaches OCI registries for `[[app]] source = "oci://…"`. Trust
/// in what they serve comes from `[trust]`, never from the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// A PEM file of CA certificates trusted for registries besides the public roots (a
    /// private registry); absolute after [`Config::load`].
    pub ca: Option<PathBuf>,
    /// Registries (`host:port`, or `host` for every port of it; lowercase) reached over plain
    /// HTTP: a lab registry, or one on the gateway's own network.
    pub insecure: Vec<String>,
    /// The Docker config file holding registry credentials (`auths`), absolute after
    /// [`Config::load`]; `None`: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` of
    /// the daemon's user, as `docker login` and Spin use it.
    pub docker_config: Option<PathBuf>,
}

/// App name → variable name → value.
pub type AppVariablesConfig = BTreeMap<String, BTreeMap<String, String>>;

/// `[log]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// Level directives (checked by [`crate::ops::logging::check_directives`]); `None`: info.
    /// Applied at start and on every SIGHUP reload unless `OUTPOST_LOG` / `--log-level` set it.
    pub level: Option<String>,
}

/// `[key_value]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValueConfig {
    /// Longest key, in bytes (UTF-8).
    pub max_key_size: u64,
    /// Longest value, in bytes.
    pub max_value_size: u64,
    /// Keys one app may hold, all its stores together.
    pub max_keys_per_app: u64,
    /// Bytes (keys + values) one app may hold, all its stores together.
    pub max_bytes_per_app: u64,
    /// `[key_value.stores.LABEL]`: the backend of each store label; labels not named here are
    /// kept in the embedded (sled) backend.
    pub stores: std::collections::BTreeMap<String, KvBackendConfig>,
}

impl Default for KeyValueConfig {
    fn default() -> Self {
        Self {
            max_key_size: DEFAULT_KV_MAX_KEY_SIZE,
            max_value_size: DEFAULT_KV_MAX_VALUE_SIZE,
            max_keys_per_app: DEFAULT_KV_MAX_KEYS_PER_APP,
            max_bytes_per_app: DEFAULT_KV_MAX_BYTES_PER_APP,
            stores: Default::default(),
        }
    }
}

/// Where one key-value store label lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvBackendConfig {
    /// `backend = "sled"` (the default): a sled tree per app and store in the state directory.
    Sled,
    /// `backend = "redis"`: a Redis server shared by the gateways of a site; `url` like
    /// `redis://127.0.0.1:6379` or `redis+unix:///run/redis.sock` (no TLS).
    Redis { url: String },
}

/// `[fairness]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FairnessConfig {
    /// App name → relative CPU (and pool) share when the node is busy; apps not named get 100.
    pub cpu_weight: std::collections::BTreeMap<String, u32>,
}

/// `[node]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// Absolute after [`Config::load`]; see [`resolve_state_dir`] for the default.
    pub state_dir: Option<PathBuf>,
    /// See [`resolve_node_name`] for the default.
    pub name: Option<String>,
}

/// `[listen]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Tenant cleartext HTTP listeners (HTTP/1.1 + h2c). This and `https` hold at least one
    /// address between them.
    pub http: Vec<SocketAddr>,
    /// Tenant TLS listeners (HTTP/1.1 and HTTP/2 by ALPN).
    pub https: Vec<SocketAddr>,
    /// Also serve HTTP/3 (QUIC, UDP) on the port of every `https` listener.
    pub h3: bool,
    /// `/healthz`, `/readyz`, `/metrics`; `None` runs without an admin listener.
    pub admin: Option<SocketAddr>,
    pub drain_timeout: Duration,
    /// Connect (or first byte of the next request) → complete request head, on every listener.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Open tenant connections per client IP address; `None`: no per-client cap.
    pub max_connections_per_ip: Option<usize>,
    /// Open connections on the admin listener at most.
    pub admin_max_connections: usize,
}

/// `[trust]`. Turning the key strings into a trust policy (reading key files, parsing keys) is
/// the CLI's job; here they are only shape-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    /// Each a public key line (`outpost-public-key-v1 ...`) or a path to a file holding one
    /// (absolute after [`Config::load`]); with the key path (`trust.keys[i]`) for errors.
    pub keys: Vec<(String, String)>,
    /// Valid signatures by trusted (and, per tenant, allowed) keys a bundle needs; ≥ 1.
    pub threshold: usize,
    /// `[trust.tenants]`: tenant → its tenant keys (ids). A tenant key signs only its tenant's
    /// apps; trusted keys listed under no tenant are operator keys and sign any app.
    pub tenants: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            threshold: 1,
            tenants: Default::default(),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Bytes the store (bundles, unpacked files, compiled code) may use before GC trims earlier
    /// releases. Active releases are always kept.
    pub disk_budget: u64,
    /// Largest bundle (compressed) a node accepts; checked before anything is read into memory
    /// past it.
    pub max_bundle_size: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            disk_budget: DEFAULT_DISK_BUDGET,
            max_bundle_size: DEFAULT_MAX_BUNDLE_SIZE,
        }
    }
}

/// One `[[app]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub source: AppLocation,
    /// Host names this app answers, validated and canonical (lowercase, no trailing dot): `*`,
    /// `*.example.com` or an exact name; at least one, `["*"]` by default. Matching them is the
    /// router's job.
    pub hosts: Vec<String>,
    /// Values for the app's `[variables]` (its manifest's, or its `spin.toml`'s), by name;
    /// kept out of logs. For a bundle they apply to the app the bundle holds.
    pub variables: BTreeMap<String, String>,
}

/// Where an app comes from. Whether a path is a directory (with `outpost.toml`) or a bare
/// `.wasm` is decided when it is opened, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppLocation {
    /// `builtin:<name>`, one of [`BUILTIN_APPS`].
    Builtin(String),
    /// Absolute after [`Config::load`].
    Path(PathBuf),
    /// `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]`, an artifact in an OCI registry, as written
    /// (shape-checked here; the registry client parses it).
    Oci(String),
}

impl std::fmt::Display for AppLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "builtin:{name}"),
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Oci(r) => f.write_str(r),
        }
    }
}

/// Why a config could not be used. Displays as `<origin>: <key>: <problem>`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: config file not found", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's TOML: syntax, or a key's value.
    #[error(transparent)]
    Toml(#[from] TomlError),
}

impl ConfigError {
    /// The key path the error is about, for validation errors.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Toml(e) => e.key(),
            _ => None,
        }
    }

    fn invalid(origin: &str, e: FieldError) -> Self {
        Self::Toml(TomlError::invalid(origin, e))
    }
}

// === impl Config ===

impl Config {
    /// Parses and validates config `text`; `origin` (usually the file path) prefixes errors.
    /// Relative paths are kept relative; [`Config::load`] resolves them.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let (mut config, raw_runtime) = parse_document(text, origin, parse_table)?;
        config.runtime = normalise_runtime_table_at(&raw_runtime, origin)?;
        config.origin = origin.to_owned();
        Ok(config)
    }

    /// Reads and parses the config file at `path`, resolving relative paths in it against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ConfigError::NotFound {
                path: path.to_owned(),
            },
            _ => ConfigError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or(Path::new(""));
        // Absolute paths make logs and `outpost info` unambiguous; if the working directory is
        // gone, relative ones still work for opening files.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        config.resolve_relative_to(&dir);
        Ok(config)
    }

    /// The embedded default config ([`DEFAULT_CONFIG`]).
    pub fn embedded_default() -> Self {
        // A unit test asserts the embedded text parses to exactly `builtin_default()`, so this
        // fallback only exists to keep a panic out of the startup path.
        Self::parse(DEFAULT_CONFIG, EMBEDDED_ORIGIN).unwrap_or_else(|_| builtin_default())
    }

    /// Makes relative `state_dir`, app and certificate paths relative to `base` instead of the
    /// working directory.
    pub fn resolve_relative_to(&mut self, base: &Path) {
        if let Some(dir) = &mut self.node.state_dir
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        self.tls.resolve_relative_to(base);
        if let Some(cp) = &mut self.control_plane {
            cp.resolve_relative_to(base);
        }
        for app in &mut self.apps {
            if let AppLocation::Path(p) = &mut app.source
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        }
        for (_, key) in &mut self.trust.keys {
            crate::base::keyline::resolve_relative(key, base);
        }
        for p in [&mut self.registry.ca, &mut self.registry.docker_config]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// `[runtime]`, already normalised by [`normalise_runtime_table`] (which is idempotent);
    /// empty when absent. The caller deserializes it into `sizing::Overrides`.
    pub fn runtime_table(&self) -> &toml::Table {
        &self.runtime
    }

    /// Where this config came from: the path given to [`Config::parse`] / [`Config::load`], or
    /// [`EMBEDDED_ORIGIN`]. Callers prefix it to errors they find later (e.g. in `[runtime]`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn apps(&self) -> &[AppConfig] {
        &self.apps
    }

    pub fn http_listen(&self) -> &[SocketAddr] {
        &self.listen.http
    }

    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.listen.admin
    }

    /// TLS listeners (HTTP/1.1 and HTTP/2); HTTP/3 shares their ports when [`Config::h3`].
    pub fn https_listen(&self) -> &[SocketAddr] {
        &self.listen.https
    }

    /// Whether HTTP/3 is served on the `https` ports.
    pub fn h3(&self) -> bool {
        self.listen.h3
    }

    pub fn drain_timeout(&self) -> Duration {
        self.listen.drain_timeout
    }

    /// The app source as a path for `runtime::app::AppSource::from_path`: the (already
    /// resolved) path, or `builtin:<name>` literally, which that function recognises.
    pub fn resolve_source(&self, source: &AppLocation) -> PathBuf {
        match source {
            AppLocation::Builtin(_) => PathBuf::from(source.to_string()),
            AppLocation::Path(p) => p.clone(),
            AppLocation::Oci(r) => PathBuf::from(r),
        }
    }

    /// The node name: configured, else the kernel hostname, else [`FALLBACK_NODE_NAME`].
    pub fn node_name(&self) -> String {
        resolve_node_name(self, || {
            std::fs::read_to_string("/proc/sys/kernel/hostname").ok()
        })
    }

    /// The state directory, resolved against the process environment.
    pub fn state_dir(&self) -> PathBuf {
        resolve_state_dir(self, |k| std::env::var(k).ok())
    }
}

/// The same config as `config/default.toml`, built by hand.
fn builtin_default() -> Config {
    Config {
        node: NodeConfig::default(),
        listen: ListenConfig {
            http: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            https: vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            h3: true,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections_per_ip: None,
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        },
        apps: vec![AppConfig {
            source: AppLocation::Builtin("demo".to_owned()),
            hosts: vec!["*".to_owned()],
            variables: BTreeMap::new(),
        }],
        trust: TrustConfig::default(),
        store: StoreConfig::default(),
        key_value: KeyValueConfig::default(),
        variables: AppVariablesConfig::new(),
        registry: RegistryConfig::default(),
        tls: TlsConfig {
            self_signed: true,
            ..TlsConfig::default()
        },
        control_plane: None,
        fairness: FairnessConfig::default(),
        log: LogConfig::default(),
        runtime: toml::Table::new(),
        origin: EMBEDDED_ORIGIN.to_owned(),
    }
}

/// The state directory: `node.state_dir`, else `$STATE_DIRECTORY` (first entry; systemd's
/// `StateDirectory=`), else `$XDG_STATE_HOME/outpost`, else `$HOME/.local/state/outpost`, else
/// [`FALLBACK_STATE_DIR`]. Environment values that are empty or relative are skipped, as the XDG
/// spec asks. `env` may return `String`s (`std::env::var(k).ok()`) or `OsString`s
/// (`std::env::var_os(k)`).
pub fn resolve_state_dir<S: Into<OsString>>(
    cfg: &Config,
    env: impl Fn(&str) -> Option<S>,
) -> PathBuf {
    if let Some(dir) = &cfg.node.state_dir {
        return dir.clone();
    }
    let var = |k: &str| env(k).map(Into::into);
    let absolute = |p: PathBuf| p.is_absolute().then_some(p);
    let from_systemd = var("STATE_DIRECTORY")
        .and_then(|v| std::env::split_paths(&v).next())
        .and_then(absolute);
    let from_xdg = || {
        var("XDG_STATE_HOME")
            .and_then(|v| absolute(PathBuf::from(v)))
            .map(|p| p.join("outpost"))
    };
    let from_home = || {
        var("HOME")
            .and_then(|v| absolute(PathBuf::from(v)))
            .map(|p| p.join(".local/state/outpost"))
    };
    from_systemd
        .or_else(from_xdg)
        .or_else(from_home)
        .unwrap_or_else(|| PathBuf::from(FALLBACK_STATE_DIR))
}

/// The node name: `node.name`, else `hostname()` if it is a valid name, else
/// [`FALLBACK_NODE_NAME`].
pub fn resolve_node_name(cfg: &Config, hostname: impl FnOnce() -> Option<String>) -> String {
    if let Some(name) = &cfg.node.name {
        return name.clone();
    }
    hostname()
        .map(|h| h.trim().to_owned())
        .filter(|h| is_valid_node_name(h))
        .unwrap_or_else(|| FALLBACK_NODE_NAME.to_owned())
}

/// A path field: absolute, or relative to the config file (resolved by [`Config::load`]).
fn path_field(f: Field) -> Result<PathBuf, FieldError> {
    let key = f.key.clone();
    host_path(&f.string()?).map_err(|problem| FieldError { key, problem })
}

/// A node name field (`[node] name`, `[control_plane] name`).
fn node_name_field(f: Field) -> Result<String, FieldError> {
    let key = f.key.clone();
    let name = f.string()?;
    if !is_valid_node_name(&name) {
        return Err(FieldError {
            key,
            problem: format!(
                "invalid node name {:?}; expected 1 to {MAX_NODE_NAME} letters, digits, \
                 '.', '-' or '_'",
                quote(&name)
            ),
        });
    }
    Ok(name)
}

fn is_valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NODE_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Turns the size keys of `[runtime]` (`memory_budget`, `memory_reservation`, `memory_guard`,
/// `max_memory_per_instance`, `default_memory_limit`, `quic_stream_receive_window`,
/// `quic_receive_window`) from strings like `"256MiB"` into integer bytes, and the durations
/// `default_timeout` and `quic_idle_timeout` (a duration string or milliseconds) into
/// `default_timeout_ms` and `quic_idle_timeout_ms`.
/// Other keys pass through untouched for the caller's typed deserialization to judge.
///
/// Idempotent. [`Config::parse`] already applies it (with the file as origin), so
/// [`Config::runtime_table`] is normalised and this cannot fail on it; errors from a table built
/// elsewhere name the origin `[runtime]`.
pub fn normalise_runtime_table(table: &toml::Table) -> Result<toml::Table, ConfigError> {
    normalise_runtime_table_at(table, "[runtime]")
}

fn normalise_runtime_table_at(
    table: &toml::Table,
    origin: &str,
) -> Result<toml::Table, ConfigError> {
    let invalid = |e: FieldError| ConfigError::invalid(origin, e);
    let field = |key: &str, value: &toml::Value| Field {
        key: format!("runtime.{key}"),
        value: value.clone(),
    };
    let too_large = |key: &str, what: &str| FieldError {
        key: format!("runtime.{key}"),
        problem: format!("{what} is too large; expected at most {}", i64::MAX),
    };
    let mut out = table.clone();
    for &key in RUNTIME_SIZE_KEYS {
        if let Some(value) = table.get(key) {
            let bytes = field(key, value).bytes().map_err(invalid)?;
            let bytes = i64::try_from(bytes)
                .map_err(|_| invalid(too_large(key, &format!("{bytes} bytes"))))?;
            out.insert(key.to_owned(), toml::Value::Integer(bytes));
        }
    }
    for &(key, ms_key) in RUNTIME_DURATION_KEYS {
        let Some(value) = out.remove(key) else {
            continue;
        };
        if table.contains_key(ms_key) {
            return Err(invalid(FieldError {
                key: format!("runtime.{key}"),
                problem: format!("set either {key} or {ms_key}, not both"),
            }));
        }
        let d = field(key, &value).duration().map_err(invalid)?;
        let ms = i64::try_from(d.as_millis())
            .map_err(|_| invalid(too_large(key, &format!("{}ms", d.as_millis()))))?;
        out.insert(ms_key.to_owned(), toml::Value::Integer(ms));
    }
    Ok(out)
}

// === parsing ===

fn parse_table(table: toml::Table) -> Result<(Config, toml::Table), FieldError> {
    let mut top = Fields::new("", table);
    let node = match top.take("node") {
        Some(f) => parse_node(f.table()?)?,
        None => NodeConfig::default(),
    };
    let listen = parse_listen(
        top.required(
            "listen",
            "a [listen] table with http = [\"127.0.0.1:8080\"]",
        )?
        .table()?,
    )?;
    let runtime = match top.take("runtime") {
        Some(f) => f.table()?.into_table(),
        None => toml::Table::new(),
    };
    let mut apps = Vec::new();
    if let Some(f) = top.take("app") {
        if matches!(f.value, toml::Value::Table(_)) {
            return Err(f.error("expected an array of tables, written [[app]] (two brackets)"));
        }
        for item in f.array()? {
            apps.push(parse_app(item.table()?)?);
        }
    }
    let trust = match top.take("trust") {
        Some(f) => parse_trust(f.table()?)?,
        None => TrustConfig::default(),
    };
    let store = match top.take("store") {
        Some(f) => parse_store(f.table()?)?,
        None => StoreConfig::default(),
    };
    let (tls, tls_present) = match top.take("tls") {
        Some(f) => (tls::parse_tls(f.table()?, TOP_KEYS)?, true),
        None => (TlsConfig::default(), false),
    };
    tls::check_with_listen(&listen, &tls, tls_present)?;
    let control_plane = match top.take("control_plane") {
        Some(f) => Some(control_plane::parse_control_plane(f.table()?, TOP_KEYS)?),
        None => None,
    };
    let fairness = match top.take("fairness") {
        Some(f) => parse_fairness(f.table()?)?,
        None => FairnessConfig::default(),
    };
    let log = match top.take("log") {
        Some(f) => parse_log(f.table()?)?,
        None => LogConfig::default(),
    };
    let key_value = match top.take("key_value") {
        Some(f) => parse_key_value(f.table()?)?,
        None => KeyValueConfig::default(),
    };
    let variables = match top.take("variables") {
        Some(f) => parse_app_variables(f.table()?)?,
        None => AppVariablesConfig::new(),
    };
    let registry = match top.take("registry") {
        Some(f) => parse_registry(f.table()?)?,
        None => RegistryConfig::default(),
    };
    top.finish(TOP_KEYS)?;
    Ok((
        Config {
            registry,
            variables,
            fairness,
            log,
            key_value,
            node,
            listen,
            apps,
            trust,
            store,
            tls,
            control_plane,
            runtime: toml::Table::new(),
            origin: String::new(),
        },
        runtime,
    ))
}

fn parse_trust(mut t: Fields) -> Result<TrustConfig, FieldError> {
    let mut out = TrustConfig::default();
    if let Some(f) = t.take("keys") {
        for (key, s) in f.strings()? {
            if s.trim().is_empty() {
                return Err(FieldError {
                    key,
                    problem: "empty; expected a public key line or a key file path".into(),
                });
            }
            out.keys.push((key, s));
        }
    }
    if let Some(f) = t.take("threshold") {
        out.threshold = f.integer_in(1u32, 32)? as usize;
    }
    if let Some(f) = t.take("tenants") {
        for (tenant, ids) in f.table()?.drain() {
            let ids = ids.strings()?.into_iter().map(|(_, s)| s).collect();
            out.tenants.insert(tenant, ids);
        }
    }
    t.finish_section(TRUST_KEYS, TOP_KEYS)?;
    if out.threshold > out.keys.len().max(1) {
        return Err(FieldError {
            key: "trust.threshold".into(),
            problem: format!(
                "{} signatures required but only {} key(s) trusted",
                out.threshold,
                out.keys.len()
            ),
        });
    }
    Ok(out)
}

fn parse_fairness(mut t: Fields) -> Result<FairnessConfig, FieldError> {
    let mut out = FairnessConfig::default();
    if let Some(f) = t.take("cpu_weight") {
        for (app, w) in f.table()?.drain() {
            out.cpu_weight
                .insert(app, w.integer_in(1u32, MAX_CPU_WEIGHT)?);
        }
    }
    t.finish_section(FAIRNESS_KEYS, TOP_KEYS)?;
    Ok(out)
}

fn parse_key_value(mut t: Fields) -> Result<KeyValueConfig, FieldError> {
    let mut out = KeyValueConfig::default();
    let at_least_one = |f: Field| -> Result<u64, FieldError> {
        let key = f.key.clone();
        let n = f.bytes()?;
        if n == 0 {
            return Err(FieldError {
                key,
                problem: "must be greater than zero".into(),
            });
        }
        Ok(n)
    };
    if let Some(f) = t.take("max_key_size") {
        out.max_key_size = at_least_one(f)?;
    }
    if let Some(f) = t.take("max_value_size") {
        out.max_value_size = at_least_one(f)?;
    }
    if let Some(f) = t.take("max_keys_per_app") {
        out.max_keys_per_app = u64::from(f.integer_in(1u32, u32::MAX)?);
    }
    if let Some(f) = t.take("max_bytes_per_app") {
        out.max_bytes_per_app = at_least_one(f)?;
    }
    if let Some(f) = t.take("stores") {
        for (label, store) in f.table()?.drain() {
            if !crate::base::units::is_store_label(&label) {
                return Err(store.error(format_args!(
                    "invalid store label; expected words of letters and digits joined by '_', \
                     each starting with a letter (like \"default\" or \"user_sessions\")"
                )));
            }
            let store_key = store.key.clone();
            let mut st = store.table()?;
            let backend = match st.take("backend") {
                Some(b) => {
                    let key = b.key.clone();
                    let name = b.string()?;
                    match name.as_str() {
                        "sled" | "redis" => name,
                        _ => {
                            return Err(FieldError {
                                key,
                                problem: format!(
                                    "unknown backend {:?}; expected \"sled\" or \"redis\"",
                                    crate::base::units::quote(&name)
                                ),
                            });
                        }
                    }
                }
                None => "sled".to_owned(),
            };
            let url = st.take("url");
            st.finish_section(KV_STORE_KEYS, TOP_KEYS)?;
            let cfg = match (backend.as_str(), url) {
                ("redis", Some(u)) => {
                    let key = u.key.clone();
                    let url = u.string()?;
                    check_redis_url(&url).map_err(|problem| FieldError { key, problem })?;
                    KvBackendConfig::Redis { url }
                }
                ("redis", None) => {
                    return Err(FieldError {
                        key: format!("{store_key}.url"),
                        problem: "missing; the redis backend needs a url like \
                                  \"redis://127.0.0.1:6379\""
                            .into(),
                    });
                }
                (_, Some(u)) => {
                    return Err(u.error("only applies with backend = \"redis\""));
                }
                (_, None) => KvBackendConfig::Sled,
            };
            out.stores.insert(label, cfg);
        }
    }
    t.finish_section(KEY_VALUE_KEYS, TOP_KEYS)?;
    Ok(out)
}

/// A Redis URL the backend can use: `redis://` or `redis+unix://`/`unix://` (no TLS: one TLS
/// stack, and a site's Redis is on the local network).
fn check_redis_url(url: &str) -> Result<(), String> {
    if url.starts_with("rediss://") {
        return Err("TLS (rediss://) is not supported; use redis:// on a trusted network".into());
    }
    if !["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        return Err(format!(
            "{:?} is not a Redis URL; expected redis://HOST:PORT or redis+unix:///PATH",
            crate::base::units::quote(url)
        ));
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("invalid Redis URL: {e}"))
}

fn parse_log(mut t: Fields) -> Result<LogConfig, FieldError> {
    let mut out = LogConfig::default();
    if let Some(f) = t.take("level") {
        let key = f.key.clone();
        let level = f.string()?;
        crate::ops::logging::check_directives(&level)
            .map_err(|problem| FieldError { key, problem })?;
        out.level = Some(level);
    }
    t.finish_section(LOG_KEYS, TOP_KEYS)?;
    Ok(out)
}

fn parse_registry(mut t: Fields) -> Result<RegistryConfig, FieldError> {
    let mut out = RegistryConfig::default();
    if let Some(f) = t.take("ca") {
        out.ca = Some(path_field(f)?);
    }
    if let Some(f) = t.take("docker_config") {
        out.docker_config = Some(path_field(f)?);
    }
    if let Some(f) = t.take("insecure") {
        for (key, host) in f.strings()? {
            let host = host.to_ascii_lowercase();
            let (name, port) = match host.rsplit_once(':') {
                Some((n, p)) if !n.ends_with(']') || n.starts_with('[') => (n, Some(p)),
                _ => (host.as_str(), None),
            };
            let name_ok = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':')
                });
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
            if !name_ok || !port_ok {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "{:?} is not a registry address; expected a host or host:port, like \
                         \"127.0.0.1:5000\" or \"registry.lan\" (no scheme, no path)",
                        quote(&host)
                    ),
                });
            }
            out.insecure.push(host);
        }
    }
    t.finish_section(REGISTRY_KEYS, TOP_KEYS)?;
    Ok(out)
}

fn parse_store(mut t: Fields) -> Result<StoreConfig, FieldError> {
    let mut out = StoreConfig::default();
    if let Some(f) = t.take("disk_budget") {
        out.disk_budget = f.bytes()?;
    }
    if let Some(f) = t.take("max_bundle_size") {
        out.max_bundle_size = f.bytes()?;
    }
    t.finish_section(STORE_KEYS, TOP_KEYS)?;
    Ok(out)
}

fn parse_node(mut t: Fields) -> Result<NodeConfig, FieldError> {
    let state_dir = t.take("state_dir").map(path_field).transpose()?;
    let name = t.take("name").map(node_name_field).transpose()?;
    t.finish_section(NODE_KEYS, TOP_KEYS)?;
    Ok(NodeConfig { state_dir, name })
}

fn parse_listen(mut t: Fields) -> Result<ListenConfig, FieldError> {
    let expected_http = "a list of addresses like [\"127.0.0.1:8080\"]";
    // Cleartext listeners may be left out when there are TLS listeners.
    let http_field = if t.contains("https") {
        t.take("http")
    } else {
        Some(t.required("http", expected_http)?)
    };
    let mut http: Vec<SocketAddr> = Vec::new();
    let mut http_keys: Vec<String> = Vec::new();
    let mut http_key = "listen.http".to_owned();
    if let Some(http_field) = http_field {
        http_key = http_field.key.clone();
        for (key, raw) in http_field.strings()? {
            let addr = socket_addr(&raw).map_err(|problem| FieldError {
                key: key.clone(),
                problem,
            })?;
            // Two ephemeral-port listeners on one address are fine; anything else would fail to
            // bind.
            if let Some(i) = http.iter().position(|a| *a == addr && addr.port() != 0) {
                return Err(FieldError {
                    key,
                    problem: format!("{addr} is already listed as {}", http_keys[i]),
                });
            }
            http.push(addr);
            http_keys.push(key);
        }
    }
    let (https, https_keys) = match t.take("https") {
        Some(f) => tls::parse_https(f, &http, &http_keys)?,
        None => (Vec::new(), Vec::new()),
    };
    if http.is_empty() && https.is_empty() {
        return Err(FieldError {
            key: http_key,
            problem: "no addresses; expected at least one, like [\"127.0.0.1:8080\"]".to_owned(),
        });
    }
    let h3 = match t.take("h3") {
        Some(f) => tls::boolean(f)?,
        None => false,
    };
    let admin = match t.take("admin") {
        Some(f) => {
            let key = f.key.clone();
            let addr = socket_addr(&f.string()?).map_err(|problem| FieldError {
                key: key.clone(),
                problem,
            })?;
            let tenant = http
                .iter()
                .chain(&https)
                .zip(http_keys.iter().chain(&https_keys))
                .find(|(a, _)| **a == addr && addr.port() != 0);
            if let Some((_, tenant_key)) = tenant {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "{addr} is also a tenant listener ({tenant_key}); expected a separate \
                         address"
                    ),
                });
            }
            Some(addr)
        }
        None => None,
    };
    let drain_timeout = match t.take("drain_timeout") {
        Some(f) => f.duration()?,
        None => DEFAULT_DRAIN_TIMEOUT,
    };
    let header_timeout = match t.take("header_timeout") {
        Some(f) => f.duration_in(HEADER_TIMEOUT_RANGE, "\"10s\"")?,
        None => DEFAULT_HEADER_TIMEOUT,
    };
    let idle_timeout = match t.take("idle_timeout") {
        Some(f) => f.duration_in(IDLE_TIMEOUT_RANGE, "\"60s\"")?,
        None => DEFAULT_IDLE_TIMEOUT,
    };
    let max_connections_per_ip = match t.take("max_connections_per_ip") {
        Some(f) => Some(f.integer_in(1u32, 1_000_000)? as usize),
        None => None,
    };
    let admin_max_connections = match t.take("admin_max_connections") {
        Some(f) => f.integer_in(1u32, 65_536)? as usize,
        None => DEFAULT_ADMIN_MAX_CONNECTIONS,
    };
    t.finish_section(LISTEN_KEYS, TOP_KEYS)?;
    Ok(ListenConfig {
        http,
        https,
        h3,
        admin,
        drain_timeout,
        header_timeout,
        idle_timeout,
        max_connections_per_ip,
        admin_max_connections,
    })
}

/// A duration within `(lo, hi)`, with the range and an `example` in the error.
fn socket_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.parse().map_err(|_| {
        format!(
            "expected an IP address and port like \"127.0.0.1:8080\" or \"[::1]:8080\" \
             (host names are not resolved), got {:?}",
            quote(raw)
        )
    })
}

fn parse_app(mut t: Fields) -> Result<AppConfig, FieldError> {
    let source_field = t.required(
        "source",
        "\"builtin:demo\", a directory containing outpost.toml, or a .wasm file",
    )?;
    let source_key = source_field.key.clone();
    let raw = source_field.string()?;
    let source = app_location(&raw).map_err(|problem| FieldError {
        key: source_key,
        problem,
    })?;

    let hosts = match t.take("hosts") {
        None => vec!["*".to_owned()],
        Some(f) => f
            .distinct_strings(
                app_host,
                |host, first| format!("host {host} is already listed as {first}"),
                "no hosts; expected at least one, like [\"*\"] or [\"example.com\"] \
                 (leave hosts out to answer any host)",
            )?
            .into_iter()
            .map(|(_, host)| host)
            .collect(),
    };
    let variables = match t.take("variables") {
        Some(field) => variable_values(field)?,
        None => BTreeMap::new(),
    };
    t.finish_section(APP_KEYS, TOP_KEYS)?;
    Ok(AppConfig {
        source,
        hosts,
        variables,
    })
}

/// A table of values for an app's `[variables]` (`[[app]] variables`, `[variables.APP]`). The
/// values may be secrets: errors say what is wrong, never what a value was.
fn variable_values(field: Field) -> Result<BTreeMap<String, String>, FieldError> {
    let mut out = BTreeMap::new();
    for (name, value) in field.table()?.drain() {
        // The manifest's rule (`bundle::manifest::is_variable_name`, a layer above).
        let mut bytes = name.bytes();
        let valid = bytes.next().is_some_and(|b| b.is_ascii_lowercase())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(value.error(format_args!(
                "invalid variable name {:?}; expected lowercase letters, digits and '_', \
                 starting with a letter",
                quote(&name)
            )));
        }
        let key = value.key.clone();
        let toml::Value::String(text) = value.value else {
            return Err(FieldError {
                key,
                problem: "expected a string (quote it; the value is not shown)".to_owned(),
            });
        };
        out.insert(name, text);
    }
    Ok(out)
}

/// `[variables]`: app name → values for that app's `[variables]`, whatever its source (a
/// directory, a bundle, a release the control plane assigns).
fn parse_app_variables(mut t: Fields) -> Result<AppVariablesConfig, FieldError> {
    let mut out = AppVariablesConfig::new();
    for (app, table) in t.drain() {
        // The manifest's app name rule (`[a-z0-9][a-z0-9-]{0,62}`, a layer above).
        let valid = !app.is_empty()
            && app.len() <= 63
            && !app.starts_with('-')
            && app
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(table.error(format_args!(
                "invalid app name {:?}; expected the app's name as its manifest gives it \
                 (lowercase letters, digits and '-'), with a table of variable values, like \
                 [variables.shop] token = \"...\"",
                quote(&app)
            )));
        }
        out.insert(app, variable_values(table)?);
    }
    Ok(out)
}

fn app_location(raw: &str) -> Result<AppLocation, String> {
    if let Some(name) = raw.strip_prefix("builtin:") {
        if BUILTIN_APPS.contains(&name) {
            return Ok(AppLocation::Builtin(name.to_owned()));
        }
        let known: Vec<String> = BUILTIN_APPS
            .iter()
            .map(|b| format!("builtin:{b}"))
            .collect();
        return Err(format!(
            "unknown built-in app {:?}; expected one of {}",
            quote(raw),
            known.join(", ")
        ));
    }
    if let Some(rest) = raw.strip_prefix("oci://") {
        let (host, repo) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty()
            || repo.is_empty()
            || raw
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "{:?} is not an OCI reference; expected oci://HOST[:PORT]/REPOSITORY[:TAG] \
                 or …@sha256:DIGEST",
                quote(raw)
            ));
        }
        return Ok(AppLocation::Oci(raw.to_owned()));
    }
    if raw.contains("://") {
        return Err(format!(
            "{:?} looks like a URL; expected \"builtin:demo\", a directory containing \
             outpost.toml, a .wasm file, a .bundle file, or oci://HOST/REPOSITORY[:TAG]",
            quote(raw)
        ));
    }
    host_path(raw).map(AppLocation::Path)
}

/// A file-system path from the config: non-empty, no `~` (nothing here expands it).
fn host_path(raw: &str) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err(
            "empty path; expected an absolute path or one relative to the config file".to_owned(),
        );
    }
    if raw.starts_with('~') {
        return Err(format!(
            "{:?} starts with '~', which is not expanded; expected an absolute path or one \
             relative to the config file",
            quote(raw)
        ));
    }
    if raw.contains('\0') {
        return Err("path contains a NUL byte".to_owned());
    }
    Ok(PathBuf::from(raw))
}

/// Validates an app host and returns its canonical form.
fn app_host(raw: &str) -> Result<String, String> {
    let expected = "expected \"*\", \"*.example.com\" or a host name, without a port";
    // One colon reads as host:port; more is an IPv6 address, which HostPattern explains.
    if !raw.starts_with('[') && raw.matches(':').count() == 1 {
        return Err(format!(
            "{:?}: hosts are matched without the port; {expected}",
            quote(raw)
        ));
    }
    HostPattern::parse(raw)
        .map(|h| h.to_string())
        .map_err(|problem| format!("{:?}: {problem}; {expected}", quote(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const ORIGIN: &str = "/etc/outpost/config.toml";
    const LISTEN: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n";

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, ORIGIN)
    }

    /// Asserts the config fails at `key` with a message containing `needle`, and that the
    /// message names the origin and the key.
    pub(super) fn assert_rejects(text: &str, key: &str, needle: &str) {
        let err = parse(text).expect_err(key);
        let msg = err.to_string();
        assert_eq!(err.key(), Some(key), "{msg}");
        assert!(msg.starts_with(&format!("{ORIGIN}: {key}: ")), "{msg}");
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }

    #[test]
    fn key_value_stores_and_limits() {
        let c = parse(&format!(
            "{LISTEN}[key_value]\nmax_keys_per_app = 10\nmax_value_size = \"2MiB\"\n\
             [key_value.stores.default]\n[key_value.stores.shared]\nbackend = \"redis\"\n\
             url = \"redis://127.0.0.1:6379\"\n"
        ))
        .expect("valid");
        let kv = &c.key_value;
        assert_eq!((kv.max_keys_per_app, kv.max_value_size), (10, 2 << 20));
        assert_eq!(kv.max_key_size, DEFAULT_KV_MAX_KEY_SIZE);
        assert_eq!(kv.stores["default"], KvBackendConfig::Sled);
        assert_eq!(
            kv.stores["shared"],
            KvBackendConfig::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        assert_eq!(
            parse(LISTEN).expect("none").key_value,
            KeyValueConfig::default()
        );
        let kv_with = |t: &str| format!("{LISTEN}{t}");
        assert_rejects(
            &kv_with("[key_value.stores.a]\nbackend = \"redis\"\n"),
            "key_value.stores.a.url",
            "missing",
        );
        assert_rejects(
            &kv_with("[key_value.stores.a]\nurl = \"redis://h:1\"\n"),
            "key_value.stores.a.url",
            "only applies with backend = \"redis\"",
        );
        assert_rejects(
            &kv_with("[key_value.stores.a]\nbackend = \"redis\"\nurl = \"http://h\"\n"),
            "key_value.stores.a.url",
            "not a Redis URL",
        );
        assert_rejects(
            &kv_with("[key_value.stores.a]\nbackend = \"mem\"\n"),
            "key_value.stores.a.backend",
            "unknown backend",
        );
        assert_rejects(
            &kv_with("[key_value.stores.a-b]\n"),
            "key_value.stores.a-b",
            "invalid store label",
        );
        assert_rejects(
            &kv_with("[key_value.stores.a]\nport = 1\n"),
            "key_value.stores.a.port",
            "unknown key",
        );
        assert_rejects(
            &kv_with("[key_value]\nmax_key_size = 0\n"),
            "key_value.max_key_size",
            "greater than zero",
        );
        assert_rejects(
            &kv_with("[key_value]\nmax_keys_per_app = 0\n"),
            "key_value.max_keys_per_app",
            "",
        );
    }

    #[test]
    fn embedded_default_parses_to_the_documented_values() {
        let parsed = Config::parse(DEFAULT_CONFIG, EMBEDDED_ORIGIN).expect("default.toml parses");
        assert_eq!(parsed, builtin_default());
        assert_eq!(Config::embedded_default(), builtin_default());
        assert_eq!(parsed.node.state_dir, None);
        assert_eq!(parsed.listen.drain_timeout, Duration::from_secs(10));
        // The demo answers TLS and HTTP/3 out of the box with a generated localhost certificate.
        assert_eq!(
            parsed.https_listen(),
            ["127.0.0.1:8443".parse().expect("addr")]
        );
        assert!(parsed.h3());
        assert!(parsed.tls.self_signed);
        assert_eq!(parsed.apps[0].source.to_string(), "builtin:demo");
        assert_eq!(parsed.origin(), EMBEDDED_ORIGIN);
        assert_eq!(
            parsed.resolve_source(&parsed.apps[0].source),
            PathBuf::from("builtin:demo")
        );
    }

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../config/example.toml");
        let c = Config::parse(text, "config/example.toml").expect("example.toml parses");
        assert_eq!(c.node.state_dir, Some(PathBuf::from("/var/lib/outpost")));
        assert_eq!(c.node.name.as_deref(), Some("gw-01"));
        assert_eq!(c.listen.http.len(), 2);
        assert_eq!(c.listen.https.len(), 2);
        assert!(c.listen.h3);
        assert_eq!(c.tls.certs.len(), 2);
        assert!(c.tls.default_cert.is_some());
        assert_eq!(c.listen.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.apps.len(), 3);
        assert_eq!(c.fairness.cpu_weight.get("shop"), Some(&300));
    }

    #[test]
    fn parses_a_full_config() {
        let text = r#"
[node]
state_dir = "state"
name = "gw-01"

[listen]
http = ["127.0.0.1:8080", "[::1]:0", "[::1]:0"]
admin = "127.0.0.1:9090"
drain_timeout = 1500

[runtime]
instance_slots = 64
memory_reservation = "4GiB"
memory_guard = 65536
default_timeout = "30s"
pooling = "off"

[[app]]
source = "apps/hello"
hosts = ["Example.COM", "*.example.com", "10.0.0.1", "[::1]"]

[[app]]
source = "/srv/x.wasm"
"#;
        let c = parse(text).expect("valid config");
        assert_eq!(c.node.state_dir, Some(PathBuf::from("state")));
        assert_eq!(c.listen.http.len(), 3);
        assert_eq!(c.listen.http[1], "[::1]:0".parse().expect("addr"));
        assert_eq!(
            c.listen.admin,
            Some("127.0.0.1:9090".parse().expect("addr"))
        );
        assert_eq!(c.listen.drain_timeout, Duration::from_millis(1500));
        let rt = c.runtime_table();
        assert_eq!(rt.get("instance_slots"), Some(&toml::Value::Integer(64)));
        assert_eq!(
            rt.get("memory_reservation"),
            Some(&toml::Value::Integer(4 << 30))
        );
        assert_eq!(rt.get("memory_guard"), Some(&toml::Value::Integer(65536)));
        assert_eq!(
            rt.get("default_timeout_ms"),
            Some(&toml::Value::Integer(30_000))
        );
        assert_eq!(rt.get("default_timeout"), None);
        assert_eq!(rt.get("pooling"), Some(&toml::Value::String("off".into())));
        assert_eq!(
            c.apps[0].hosts,
            ["example.com", "*.example.com", "10.0.0.1", "[::1]"]
        );
        assert_eq!(c.apps[1].hosts, ["*"]);
        assert_eq!(c.apps[1].source, AppLocation::Path("/srv/x.wasm".into()));

        let mut resolved = c.clone();
        resolved.resolve_relative_to(Path::new("/etc/outpost"));
        assert_eq!(
            resolved.node.state_dir,
            Some(PathBuf::from("/etc/outpost/state"))
        );
        assert_eq!(
            resolved.apps[0].source,
            AppLocation::Path("/etc/outpost/apps/hello".into())
        );
        assert_eq!(
            resolved.apps[1].source,
            AppLocation::Path("/srv/x.wasm".into())
        );
    }

    #[test]
    fn runtime_table_deserializes_into_sizing_overrides() {
        let c = parse(&format!(
            "{LISTEN}[runtime]\nmax_memory_per_instance = \"256MiB\"\ndefault_timeout = \"2s\"\n\
             memory_budget = \"512MiB\"\n"
        ))
        .expect("valid");
        let o: crate::sizing::Overrides = toml::Value::Table(c.runtime_table().clone())
            .try_into()
            .expect("overrides");
        assert_eq!(o.max_memory_per_instance, Some(256 << 20));
        assert_eq!(o.default_timeout_ms, Some(2000));
        assert_eq!(o.memory_budget, Some(512 << 20));
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = parse("[listen]\nhttp = [\"127.0.0.1:8080\"\n").expect_err("syntax");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{ORIGIN}:")), "{msg}");
        assert!(msg.contains("invalid TOML"), "{msg}");
        let ConfigError::Toml(TomlError::Syntax { line, column, .. }) = err else {
            panic!("expected a syntax error: {msg}");
        };
        assert!(line >= 2 && column >= 1, "{line}:{column}");
    }

    #[test]
    fn top_level_is_validated() {
        assert_rejects("", "listen", "missing; expected a [listen] table");
        assert_rejects(
            &format!("apps = []\n{LISTEN}"),
            "apps",
            "unknown top-level key; expected one of node, listen, runtime, app, trust, store, tls, control_plane, fairness, log, key_value, variables, registry (did you mean \"app\"?)",
        );
        assert_rejects(
            &format!("node = 1\n{LISTEN}"),
            "node",
            "expected a table, got 1",
        );
        assert_rejects(
            &format!("runtime = \"big\"\n{LISTEN}"),
            "runtime",
            "expected a table, got \"big\"",
        );
        assert_rejects(
            &format!("{LISTEN}[app]\nsource = \"builtin:demo\"\n"),
            "app",
            "[[app]] (two brackets)",
        );
        assert_rejects(
            &format!("app = [1]\n{LISTEN}"),
            "app[0]",
            "expected a table, got 1",
        );
        // The classic TOML slip: a top-level key written under a [table] header.
        assert_rejects(
            &format!("{LISTEN}node = {{ name = \"x\" }}\n"),
            "listen.node",
            "unknown key in [listen]; expected one of http, https, h3, admin, drain_timeout, header_timeout, idle_timeout, max_connections_per_ip, admin_max_connections (\"node\" is a top-level key: move it above the first [table] header)",
        );
    }

    #[test]
    fn node_is_validated() {
        assert_rejects(
            &format!("{LISTEN}[node]\nstate_dir = \"\"\n"),
            "node.state_dir",
            "empty path",
        );
        assert_rejects(
            &format!("{LISTEN}[node]\nstate_dir = \"~/state\"\n"),
            "node.state_dir",
            "not expanded",
        );
        assert_rejects(
            &format!("{LISTEN}[node]\nstate_dir = 5\n"),
            "node.state_dir",
            "expected a string, got 5",
        );
        assert_rejects(
            &format!("{LISTEN}[node]\nname = \"gw 01\"\n"),
            "node.name",
            "invalid node name \"gw 01\"",
        );
        assert_rejects(
            &format!("{LISTEN}[node]\nname = \"\"\n"),
            "node.name",
            "invalid node name",
        );
        assert_rejects(
            &format!("{LISTEN}[node]\nstatedir = \"/x\"\n"),
            "node.statedir",
            "unknown key in [node]; expected one of state_dir, name (did you mean \"state_dir\"?)",
        );
    }

    #[test]
    fn listen_is_validated() {
        assert_rejects("[listen]\n", "listen.http", "missing");
        assert_rejects("[listen]\nhttp = []\n", "listen.http", "no addresses");
        assert_rejects(
            "[listen]\nhttp = \"127.0.0.1:80\"\n",
            "listen.http",
            "expected an array",
        );
        assert_rejects(
            "[listen]\nhttp = [\"localhost:8080\"]\n",
            "listen.http[0]",
            "host names are not resolved), got \"localhost:8080\"",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1\"]\n",
            "listen.http[0]",
            "expected an IP address and port",
        );
        assert_rejects(
            "[listen]\nhttp = [\"::1:8080\"]\n",
            "listen.http[0]",
            "expected an IP address and port",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:65536\"]\n",
            "listen.http[0]",
            "expected an IP address and port",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\", \"127.0.0.1:80\"]\n",
            "listen.http[1]",
            "127.0.0.1:80 is already listed as listen.http[0]",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\nadmin = \"127.0.0.1:80\"\n",
            "listen.admin",
            "also a tenant listener (listen.http[0])",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\nadmin = \"nope\"\n",
            "listen.admin",
            "expected an IP address",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\ndrain_timeout = \"forever\"\n",
            "listen.drain_timeout",
            "expected a duration like",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\ndrain_timeout = -1\n",
            "listen.drain_timeout",
            "negative duration",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\nhttps = \"127.0.0.1:443\"\n",
            "listen.https",
            "expected an array",
        );
        assert_rejects(
            "[listen]\nhttp = []\nhttps = []\n",
            "listen.http",
            "no addresses",
        );
        let c = parse("[listen]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n")
            .expect("port 0 twice is fine");
        assert_eq!(c.listen.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(c.listen.header_timeout, DEFAULT_HEADER_TIMEOUT);
        assert_eq!(c.listen.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(c.listen.max_connections_per_ip, None);
        assert_eq!(
            c.listen.admin_max_connections,
            DEFAULT_ADMIN_MAX_CONNECTIONS
        );
    }

    #[test]
    fn connection_deadlines_and_caps_are_validated() {
        let listen = |extra: &str| format!("[listen]\nhttp = [\"127.0.0.1:80\"]\n{extra}\n");
        for (extra, key, needle) in [
            (
                "header_timeout = \"50ms\"",
                "listen.header_timeout",
                "out of range",
            ),
            (
                "header_timeout = \"10m\"",
                "listen.header_timeout",
                "expected 100ms to 300s",
            ),
            (
                "header_timeout = \"soon\"",
                "listen.header_timeout",
                "expected a duration",
            ),
            ("idle_timeout = 0", "listen.idle_timeout", "out of range"),
            (
                "idle_timeout = \"2h\"",
                "listen.idle_timeout",
                "out of range",
            ),
            (
                "max_connections_per_ip = 0",
                "listen.max_connections_per_ip",
                "from 1 to",
            ),
            (
                "max_connections_per_ip = \"8\"",
                "listen.max_connections_per_ip",
                "integer",
            ),
            (
                "admin_max_connections = 0",
                "listen.admin_max_connections",
                "from 1 to 65536",
            ),
        ] {
            assert_rejects(&listen(extra), key, needle);
        }
        let c = parse(&listen(
            "header_timeout = \"2s\"\nidle_timeout = \"30s\"\nmax_connections_per_ip = 16\n\
             admin_max_connections = 8",
        ))
        .expect("valid");
        assert_eq!(c.listen.header_timeout, Duration::from_secs(2));
        assert_eq!(c.listen.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.listen.max_connections_per_ip, Some(16));
        assert_eq!(c.listen.admin_max_connections, 8);
    }

    #[test]
    fn apps_are_validated() {
        let app = |body: &str| format!("{LISTEN}[[app]]\n{body}\n");
        assert_rejects(
            &app("hosts = [\"*\"]"),
            "app[0].source",
            "missing; expected \"builtin:demo\"",
        );
        assert_rejects(
            &app("source = \"builtin:nope\""),
            "app[0].source",
            "unknown built-in app \"builtin:nope\"; expected one of builtin:demo",
        );
        assert_rejects(
            &app("source = \"https://example.com/app.wasm\""),
            "app[0].source",
            "looks like a URL",
        );
        assert_rejects(
            &app("source = \"oci://registry.lan\""),
            "app[0].source",
            "is not an OCI reference",
        );
        let c =
            parse(&app("source = \"oci://127.0.0.1:5000/shop:1.0\"")).expect("an oci:// source");
        assert_eq!(
            c.apps[0].source,
            AppLocation::Oci("oci://127.0.0.1:5000/shop:1.0".into())
        );
        assert_rejects(&app("source = \"\""), "app[0].source", "empty path");
        assert_rejects(
            &app("source = \"~/apps/x\""),
            "app[0].source",
            "not expanded",
        );
        assert_rejects(
            &app("source = \"x\"\nhosts = []"),
            "app[0].hosts",
            "no hosts",
        );
        assert_rejects(
            &app("source = \"x\"\nhosts = \"*\""),
            "app[0].hosts",
            "expected an array",
        );
        assert_rejects(
            &app("source = \"x\"\nhosts = [\"example.com:8080\"]"),
            "app[0].hosts[0]",
            "matched without the port",
        );
        assert_rejects(
            &app("source = \"x\"\nhosts = [\"a.*.com\"]"),
            "app[0].hosts[0]",
            "\"a.*.com\": a wildcard must be",
        );
        assert_rejects(
            &app("source = \"x\"\nhosts = [\"exa mple.com\"]"),
            "app[0].hosts[0]",
            "not a valid host name",
        );
        assert_rejects(
            &app("source = \"x\"\nhosts = [\"::1\"]"),
            "app[0].hosts[0]",
            "in brackets",
        );
        assert_rejects(
            &app("source = \"x\"\nhosts = [\"a.com\", \"A.com.\"]"),
            "app[0].hosts[1]",
            "host a.com is already listed as app[0].hosts[0]",
        );
        assert_rejects(
            &app("source = \"x\"\nroutes = [\"/\"]"),
            "app[0].routes",
            "unknown key in app[0]; expected one of source, hosts, variables",
        );
        assert_rejects(
            &format!("{LISTEN}[[app]]\nsource = \"builtin:demo\"\n[[app]]\nsource = 5\n"),
            "app[1].source",
            "expected a string, got 5",
        );
        let none = parse(LISTEN).expect("zero apps is valid");
        assert!(none.apps.is_empty());
    }

    #[test]
    fn app_variables() {
        let app = |body: &str| format!("{LISTEN}[[app]]\n{body}\n");
        let c = parse(&app(
            "source = \"x\"\nvariables = { token = \"t\", a_2 = \"\" }",
        ))
        .expect("variables");
        assert_eq!(c.apps[0].variables.len(), 2);
        assert_eq!(c.apps[0].variables["token"], "t");
        assert_rejects(
            &app("source = \"x\"\nvariables = { Token = \"t\" }"),
            "app[0].variables.Token",
            "invalid variable name \"Token\"",
        );
        assert_rejects(
            &app("source = \"x\"\nvariables = { port = 80 }"),
            "app[0].variables.port",
            "expected a string (quote it; the value is not shown)",
        );
        let b = parse(&app("source = \"x.bundle\"\nvariables = { a = \"1\" }"))
            .expect("a bundle's variables");
        assert_eq!(b.apps[0].variables["a"], "1");
    }

    #[test]
    fn registry_section() {
        let c = parse(&format!(
            "{LISTEN}[registry]\nca = \"certs/ca.pem\"\ninsecure = [\"127.0.0.1:5000\", \"Registry.LAN\"]\n"
        ))
        .expect("[registry]");
        assert_eq!(c.registry.ca, Some(PathBuf::from("certs/ca.pem")));
        assert_eq!(c.registry.insecure, ["127.0.0.1:5000", "registry.lan"]);
        assert_eq!(c.registry.docker_config, None);
        assert_rejects(
            &format!("{LISTEN}[registry]\ninsecure = [\"http://x:5000\"]\n"),
            "registry.insecure[0]",
            "is not a registry address",
        );
        assert_rejects(
            &format!("{LISTEN}[registry]\ninsecure = [\"x:0\"]\n"),
            "registry.insecure[0]",
            "is not a registry address",
        );
        assert_rejects(
            &format!("{LISTEN}[registry]\nuser = \"x\"\n"),
            "registry.user",
            "unknown key",
        );
    }

    #[test]
    fn variables_by_app_name() {
        let c = parse(&format!(
            "{LISTEN}[variables.shop]\ntoken = \"s3cret\"\n[variables.blog-2]\n"
        ))
        .expect("[variables.APP]");
        assert_eq!(c.variables["shop"]["token"], "s3cret");
        assert!(c.variables["blog-2"].is_empty());
        assert!(parse(LISTEN).expect("none").variables.is_empty());
        assert_rejects(
            &format!("{LISTEN}[variables.Shop]\ntoken = \"t\"\n"),
            "variables.Shop",
            "invalid app name \"Shop\"",
        );
        assert_rejects(
            &format!("{LISTEN}[variables]\ntoken = \"t\"\n"),
            "variables.token",
            "expected a table",
        );
        assert_rejects(
            &format!("{LISTEN}[variables.shop]\ntoken = 1\n"),
            "variables.shop.token",
            "expected a string (quote it; the value is not shown)",
        );
        assert_rejects(
            &format!("{LISTEN}[variables.shop]\nTok = \"secret-value\"\n"),
            "variables.shop.Tok",
            "invalid variable name \"Tok\"",
        );
    }

    #[test]
    fn runtime_sizes_and_timeouts_are_normalised() {
        let rt = |body: &str| format!("{LISTEN}[runtime]\n{body}\n");
        assert_rejects(
            &rt("memory_guard = \"lots\""),
            "runtime.memory_guard",
            "expected a size like \"64MiB\", got \"lots\"",
        );
        assert_rejects(
            &rt("default_memory_limit = -5"),
            "runtime.default_memory_limit",
            "negative size",
        );
        assert_rejects(
            &rt("max_memory_per_instance = true"),
            "runtime.max_memory_per_instance",
            "got true",
        );
        assert_rejects(
            &rt("memory_reservation = \"16777215TiB\""),
            "runtime.memory_reservation",
            "too large",
        );
        assert_rejects(
            &rt("default_timeout = \"soon\""),
            "runtime.default_timeout",
            "expected a duration like",
        );
        assert_rejects(
            &rt("default_timeout = \"1s\"\ndefault_timeout_ms = 5"),
            "runtime.default_timeout",
            "not both",
        );
        let c = parse(&rt(
            "default_timeout = 250\nworker_threads = 2\n[runtime.extra]\nx = 1",
        ))
        .expect("valid");
        assert_eq!(
            c.runtime_table().get("default_timeout_ms"),
            Some(&toml::Value::Integer(250))
        );
        assert_eq!(
            c.runtime_table().get("worker_threads"),
            Some(&toml::Value::Integer(2))
        );
        assert!(
            c.runtime_table().get("extra").is_some(),
            "unknown keys are left for the caller"
        );
    }

    #[test]
    fn normalise_runtime_table_is_idempotent_and_names_an_origin() {
        let mut t = toml::Table::new();
        t.insert("memory_guard".into(), toml::Value::String("x".into()));
        let err = normalise_runtime_table(&t).expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("[runtime]: runtime.memory_guard: "),
            "{err}"
        );
        let ok = normalise_runtime_table(&toml::Table::new()).expect("empty");
        assert!(ok.is_empty());
        // Normalising the already-normalised table of a parsed config changes nothing.
        let c = parse(&format!(
            "{LISTEN}[runtime]\nmemory_guard = \"1MiB\"\ndefault_timeout = \"1s\"\n"
        ))
        .expect("valid");
        assert_eq!(
            normalise_runtime_table(c.runtime_table()).ok().as_ref(),
            Some(c.runtime_table())
        );
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn state_dir_resolution_order() {
        let mut cfg = builtin_default();
        let all = env(&[
            ("STATE_DIRECTORY", "/var/lib/outpost:/var/lib/other"),
            ("XDG_STATE_HOME", "/home/u/.state"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            resolve_state_dir(&cfg, &all),
            PathBuf::from("/var/lib/outpost")
        );
        let xdg = env(&[("XDG_STATE_HOME", "/home/u/.state"), ("HOME", "/home/u")]);
        assert_eq!(
            resolve_state_dir(&cfg, &xdg),
            PathBuf::from("/home/u/.state/outpost")
        );
        let relative_xdg = env(&[
            ("XDG_STATE_HOME", "rel"),
            ("STATE_DIRECTORY", ""),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(
            resolve_state_dir(&cfg, &relative_xdg),
            PathBuf::from("/home/u/.local/state/outpost")
        );
        assert_eq!(
            resolve_state_dir(&cfg, env(&[])),
            PathBuf::from(FALLBACK_STATE_DIR)
        );
        let os = |k: &str| (k == "HOME").then(|| OsString::from("/home/os"));
        assert_eq!(
            resolve_state_dir(&cfg, os),
            PathBuf::from("/home/os/.local/state/outpost")
        );
        assert_eq!(
            resolve_state_dir(&cfg, env(&[("HOME", "")])),
            PathBuf::from(FALLBACK_STATE_DIR)
        );
        cfg.node.state_dir = Some("/data/outpost".into());
        assert_eq!(
            resolve_state_dir(&cfg, &all),
            PathBuf::from("/data/outpost")
        );
    }

    #[test]
    fn node_name_resolution_order() {
        let mut cfg = builtin_default();
        assert_eq!(resolve_node_name(&cfg, || Some("gw-07\n".into())), "gw-07");
        assert_eq!(resolve_node_name(&cfg, || None), FALLBACK_NODE_NAME);
        assert_eq!(
            resolve_node_name(&cfg, || Some("  \n".into())),
            FALLBACK_NODE_NAME
        );
        assert_eq!(
            resolve_node_name(&cfg, || Some("bad name".into())),
            FALLBACK_NODE_NAME
        );
        cfg.node.name = Some("edge-1".into());
        assert_eq!(resolve_node_name(&cfg, || Some("gw-07".into())), "edge-1");
    }

    #[test]
    fn load_reports_missing_files_and_resolves_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.toml");
        let err = Config::load(&missing).expect_err("missing");
        assert!(matches!(err, ConfigError::NotFound { .. }));
        assert_eq!(
            err.to_string(),
            format!("{}: config file not found", missing.display())
        );

        let path = dir.path().join("outpost.toml");
        std::fs::write(
            &path,
            format!("{LISTEN}[node]\nstate_dir = \"state\"\n[[app]]\nsource = \"apps/a\"\n"),
        )
        .expect("write");
        let c = Config::load(&path).expect("loads");
        assert_eq!(c.origin(), path.display().to_string());
        assert_eq!(c.node.state_dir, Some(dir.path().join("state")));
        assert_eq!(
            c.apps[0].source,
            AppLocation::Path(dir.path().join("apps/a"))
        );

        std::fs::write(&path, "[listen]\nhttp = [1]\n").expect("write");
        let err = Config::load(&path).expect_err("invalid");
        assert!(
            err.to_string()
                .starts_with(&format!("{}: listen.http[0]: ", path.display())),
            "{err}"
        );

        let err = Config::load(dir.path()).expect_err("a directory");
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    }

    fn cp_key() -> String {
        crate::bundle::sign::SigningKey::from_seed(&[7; 32])
            .verifying_key()
            .to_public_text()
            .trim_end()
            .to_owned()
    }

    #[test]
    fn control_plane_parses_with_defaults_and_resolves_paths() {
        let key = cp_key();
        let c = parse(&format!(
            "{LISTEN}[control_plane]\nurl = \"https://cp.example:7070\"\nkey = \"{key}\"\n"
        ))
        .expect("valid");
        let cp = c.control_plane.expect("set");
        assert_eq!(cp.url, "https://cp.example:7070");
        assert_eq!(cp.urls, ["https://cp.example:7070"]);
        assert_eq!(cp.keys, [("control_plane.key".to_owned(), key.clone())]);
        assert_eq!(cp.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(cp.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert!(cp.token.is_none() && cp.token_file.is_none() && cp.ca.is_none());
        assert!(cp.labels.is_empty() && cp.name.is_none());

        let mut c = parse(&format!(
            "{LISTEN}[control_plane]\nurl = \"http://127.0.0.1:7070/\"\n\
             key = [\"{key}\", \"keys/cp-next.pub\"]\ntoken_file = \"token\"\nca = \"/etc/cp.pem\"\n\
             poll_interval = \"200ms\"\nrequest_timeout = 5000\nname = \"gw-9\"\n\
             [control_plane.labels]\nsite = \"lab-1\"\nrack = \"r2\"\n"
        ))
        .expect("valid");
        c.resolve_relative_to(Path::new("/etc/outpost"));
        let cp = c.control_plane.expect("set");
        assert_eq!(cp.keys[1].0, "control_plane.key[1]");
        assert_eq!(cp.keys[1].1, "/etc/outpost/keys/cp-next.pub");
        assert_eq!(cp.keys[0].1, key);
        assert_eq!(cp.token_file, Some(PathBuf::from("/etc/outpost/token")));
        assert_eq!(cp.ca, Some(PathBuf::from("/etc/cp.pem")));
        assert_eq!(cp.poll_interval, Duration::from_millis(200));
        assert_eq!(cp.request_timeout, Duration::from_secs(5));
        assert_eq!(cp.name.as_deref(), Some("gw-9"));
        assert_eq!(cp.labels.get("site").map(String::as_str), Some("lab-1"));
        assert_eq!(cp.labels.len(), 2);
    }

    #[test]
    fn log_level_parses_and_is_validated() {
        let cfg = parse(&format!(
            "{LISTEN}[log]\nlevel = \"warn,outpost::serve=debug\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.log.level.as_deref(), Some("warn,outpost::serve=debug"));
        assert_eq!(parse(LISTEN).unwrap().log, LogConfig::default());
        assert_rejects(
            &format!("{LISTEN}[log]\nlevel = \"verbose\"\n"),
            "log.level",
            "unknown log level \"verbose\"",
        );
        assert_rejects(
            &format!("{LISTEN}[log]\nlevel = 3\n"),
            "log.level",
            "string",
        );
        assert_rejects(
            &format!("{LISTEN}[log]\nformat = \"json\"\n"),
            "log.format",
            "level",
        );
    }

    #[test]
    fn fairness_weights_parse_and_are_validated() {
        let cfg = parse(&format!(
            "{LISTEN}[fairness]\ncpu_weight = {{ shop = 300, batch = 1 }}\n"
        ))
        .unwrap();
        assert_eq!(
            cfg.fairness.cpu_weight.into_iter().collect::<Vec<_>>(),
            [("batch".to_string(), 1), ("shop".to_string(), 300)]
        );
        assert_eq!(parse(LISTEN).unwrap().fairness, FairnessConfig::default());
        assert_rejects(
            &format!("{LISTEN}[fairness]\ncpu_weight = {{ shop = 0 }}\n"),
            "fairness.cpu_weight.shop",
            "from 1 to 10000",
        );
        assert_rejects(
            &format!("{LISTEN}[fairness]\ncpu_weight = {{ shop = \"high\" }}\n"),
            "fairness.cpu_weight.shop",
            "integer",
        );
        assert_rejects(
            &format!("{LISTEN}[fairness]\nbogus = 1\n"),
            "fairness.bogus",
            "expected one of cpu_weight",
        );
    }

    #[test]
    fn control_plane_is_validated() {
        let key = cp_key();
        let cp = |body: &str| format!("{LISTEN}[control_plane]\n{body}\n");
        let with_key = |body: &str| cp(&format!("key = \"{key}\"\n{body}"));
        assert_rejects(
            &cp(&format!("key = \"{key}\"")),
            "control_plane.url",
            "missing",
        );
        assert_rejects(
            &cp("url = \"https://cp\""),
            "control_plane.key",
            "missing; expected the control plane's public key",
        );
        assert_rejects(
            &with_key("url = \"http://cp.example:80\""),
            "control_plane.url",
            "plain http is only allowed to a loopback address",
        );
        assert_rejects(
            &with_key("url = \"ftp://cp.example\""),
            "control_plane.url",
            "expected https://host",
        );
        assert_rejects(
            &with_key("url = \"https://cp.example/api\""),
            "control_plane.url",
            "has a path",
        );
        assert_rejects(
            &with_key("url = \"cp.example\""),
            "control_plane.url",
            "expected https://host",
        );
        // Replicas: a list, in order; each checked, no repeats, not empty.
        let c = parse(&with_key(
            "url = [\"https://cp-a.example:7070\", \"https://cp-b.example:7070/\"]",
        ))
        .expect("valid");
        let replicas = c.control_plane.expect("set");
        assert_eq!(replicas.url, "https://cp-a.example:7070");
        assert_eq!(
            replicas.urls,
            ["https://cp-a.example:7070", "https://cp-b.example:7070"]
        );
        assert_rejects(
            &with_key("url = [\"https://cp-a.example\", \"http://cp-b.example\"]"),
            "control_plane.url[1]",
            "plain http is only allowed to a loopback address",
        );
        assert_rejects(
            &with_key("url = [\"https://cp-a.example\", \"https://cp-a.example/\"]"),
            "control_plane.url[1]",
            "listed twice (first as control_plane.url[0])",
        );
        assert_rejects(&with_key("url = []"), "control_plane.url", "no URLs");
        let url = "url = \"https://cp.example\"";
        assert_rejects(
            &cp(&format!("{url}\nkey = []")),
            "control_plane.key",
            "no keys",
        );
        assert_rejects(
            &cp(&format!("{url}\nkey = [\"{key}\", \"\"]")),
            "control_plane.key[1]",
            "empty",
        );
        assert_rejects(
            &with_key(&format!("{url}\ntoken = \"a\"\ntoken_file = \"t\"")),
            "control_plane.token_file",
            "set either token or token_file, not both",
        );
        assert_rejects(
            &with_key(&format!("{url}\ntoken = \" \"")),
            "control_plane.token",
            "empty token",
        );
        assert_rejects(
            &with_key(&format!("{url}\npoll_interval = \"1ms\"")),
            "control_plane.poll_interval",
            "out of range",
        );
        assert_rejects(
            &with_key(&format!("{url}\nrequest_timeout = \"forever\"")),
            "control_plane.request_timeout",
            "expected a duration",
        );
        assert_rejects(
            &with_key(&format!("{url}\nname = \"a b\"")),
            "control_plane.name",
            "invalid node name",
        );
        assert_rejects(
            &with_key(&format!("{url}\nlabels = {{ arch = \"x86_64\" }}")),
            "control_plane.labels.arch",
            "set by the node itself",
        );
        assert_rejects(
            &with_key(&format!("{url}\nlabels = {{ site = \"a b\" }}")),
            "control_plane.labels.site",
            "invalid label value",
        );
        assert_rejects(
            &with_key(&format!("{url}\nlabels = {{ site = 1 }}")),
            "control_plane.labels.site",
            "expected a string",
        );
        assert_rejects(
            &with_key(&format!("{url}\npoll = \"1s\"")),
            "control_plane.poll",
            "unknown key in [control_plane]",
        );
    }
}
