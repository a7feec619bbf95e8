//! The wasmtime host.
//!
//! Owns: the engine (one place for its defaults: [`engine`], configured from the derived
//! [`crate::sizing::Sizing`]), component loading with an on-disk compiled-code cache
//! ([`compile`]), apps as sets of routed components ([`app`]), per-request instantiation under
//! limits ([`component`]), fair scheduling across tenants ([`fair`], [`admission`]) and the
//! capabilities guests may be granted ([`host`], and [`connect`], which opens a guest's granted
//! outbound connections under the patterns of [`crate::base::outbound`]).
//! Must not: know about listeners, the serving side's sockets and TLS, or the control plane.
#![deny(unsafe_code)]

pub mod admission;
pub mod app;
pub mod compile;
pub mod component;
pub mod connect;
pub mod engine;
pub mod error;
pub mod fair;
pub mod host;
pub mod kv;
pub mod offload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::ops::metrics::Metrics;
use crate::sizing;
use compile::{CodeCache, LoadInfo};
use component::{AppComponent, HandlerPre, Limits};
use error::LoadError;
use host::{Grants, Host};

/// Limits applied to components whose manifest does not set them.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub memory_limit: u64,
    pub timeout: Duration,
    pub max_concurrency: u32,
    pub max_request_body: u64,
    pub queue_timeout: Duration,
}

/// Everything the runtime needs to start, derived from [`sizing::Sizing`].
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Pool dimensions as `sizing` derived them; `None`: on-demand allocation.
    pub pool: Option<sizing::PoolSizing>,
    /// The linear-memory layout (with either allocator).
    pub memory: sizing::MemoryLayout,
    /// The WASI 0.3 engine's pool (`None`: on demand) and memory layout.
    pub wasi03_pool: Option<sizing::PoolSizing>,
    pub wasi03_memory: sizing::MemoryLayout,
    /// Instances that may execute at once; equals the pool's slots when pooling.
    pub instance_slots: u32,
    /// Ceiling for any component's `memory_limit`.
    pub max_memory_per_instance: u64,
    /// Bytes that live instances may reserve together (admission; see [`admission`]).
    pub memory_budget: u64,
    /// Threads that run CPU-heavy guests off the serving threads (one per serving thread).
    pub guest_threads: usize,
    pub defaults: Defaults,
    /// Compiled-code cache directory; `None` disables it.
    pub cache_dir: Option<PathBuf>,
}

impl RuntimeSettings {
    pub fn from_sizing(s: &sizing::Sizing, cache_dir: Option<PathBuf>) -> Self {
        Self {
            memory: s.memory.clone(),
            instance_slots: s.instance_slots.value,
            max_memory_per_instance: s.max_memory_per_instance.value,
            memory_budget: s.memory_budget.value,
            guest_threads: s.worker_threads.value,
            pool: s.pooling.clone(),
            wasi03_pool: s.wasi03.pooling.clone(),
            wasi03_memory: s.wasi03.memory.clone(),
            defaults: Defaults {
                memory_limit: s.default_memory_limit.value,
                timeout: Duration::from_millis(s.default_timeout_ms.value),
                max_concurrency: s.default_max_concurrency.value,
                max_request_body: 16 << 20,
                queue_timeout: Duration::from_secs(2),
            },
            cache_dir,
        }
    }
}

/// What a component is granted and how it is limited, as declared (before defaults).
#[derive(Debug, Default)]
pub struct ComponentSettings {
    pub outbound: crate::base::outbound::OutboundPolicy,
    /// (absolute host directory, absolute guest path)
    pub files: Vec<(PathBuf, String)>,
    pub variables: Vec<(String, String)>,
    /// Key-value store labels the component may open (of its app's stores).
    pub key_value_stores: Vec<String>,
    /// The guest's whole environment (`wasi:cli/environment`).
    pub environment: Vec<(String, String)>,
    pub memory_limit: Option<u64>,
    pub timeout: Option<Duration>,
    pub max_concurrency: Option<u32>,
    pub max_request_body: Option<u64>,
    /// Requests one instance may serve (`None`/1: fresh instance per request).
    pub reuse: Option<u32>,
    pub reuse_idle_timeout: Option<Duration>,
    /// Requests one WASI 0.3 instance may serve at once (`None`/1: one after another).
    pub reuse_concurrency: Option<u32>,
}

/// One step of loading a component, for a progress display (`bundle install` shows which
/// component compiles and how long it took: a Python or JavaScript component takes seconds).
#[derive(Debug)]
pub enum LoadEvent<'a> {
    /// About to compile (or read from the code cache) `bytes` of wasm.
    Start {
        app: &'a str,
        component: &'a str,
        bytes: usize,
    },
    /// Compiled or read from the cache.
    Done {
        app: &'a str,
        component: &'a str,
        info: &'a LoadInfo,
    },
}

/// Receives the [`LoadEvent`]s of every component this runtime loads.
pub type LoadObserver = Arc<dyn Fn(LoadEvent<'_>) + Send + Sync>;

/// How long an instance kept for reuse waits for its next request unless the manifest says.
pub const DEFAULT_REUSE_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// An engine with its linker and compiled-code cache. There is one for each WASI HTTP version
/// (`docs/wasi-p3.md`): WASI 0.3 needs wasmtime's concurrency support, which would slow every
/// WASI 0.2 request down if the one engine had it on.
struct Flavor {
    engine: Engine,
    linker: Linker<Host>,
    cache: CodeCache,
}

impl Flavor {
    fn new(engine: Engine, wasi03: bool, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker, wasi03).map_err(|e| anyhow::anyhow!("linker: {e:#}"))?;
        let cache = CodeCache::new(cache_dir, engine::fingerprint(&engine));
        Ok(Self {
            engine,
            linker,
            cache,
        })
    }
}

/// The engines (one per WASI version) with their linkers, the instance pool's admission and the
/// apps' CPU accounts.
pub struct Runtime {
    /// WASI 0.2 components: the pooling allocator sized for this machine, no concurrency support.
    wasi02: Flavor,
    /// WASI 0.3 components: concurrency support, a pool of its own as large as WASI 0.2's when
    /// the address space holds both (else on demand); admission is shared.
    wasi03: Flavor,
    pool: Arc<admission::Pool>,
    accounts: Arc<fair::Accounts>,
    guests: Arc<offload::GuestThreads>,
    settings: RuntimeSettings,
    metrics: Metrics,
    observer: std::sync::OnceLock<LoadObserver>,
    /// The node's key-value stores ([`Runtime::set_key_value`]); without them a component's
    /// open of any store fails with `other`.
    kv: std::sync::OnceLock<Arc<kv::KeyValue>>,
    /// Values for apps' `[variables]` the node config supplies by app name
    /// ([`Runtime::set_app_variables`]); every load of that app uses them, whatever its source.
    app_variables: std::sync::RwLock<AppVariables>,
    _ticker: engine::EpochTicker,
}

/// App name → variable name → value: what node config supplies for apps' `[variables]`. The
/// values may be secrets: never logged.
pub type AppVariables =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(settings: RuntimeSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let engine = engine::build_engine(settings.pool.as_ref(), &settings.memory, false)
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the wasmtime engine{}: {e:#}",
                    if settings.pool.is_some() {
                        " with the pooling allocator (set [runtime] pooling = \"off\" or smaller \
                     instance_slots / memory_reservation to fit this machine)"
                    } else {
                        ""
                    }
                )
            })?;
        let wasi03_engine =
            engine::build_engine(settings.wasi03_pool.as_ref(), &settings.wasi03_memory, true)
                .map_err(|e| anyhow::anyhow!("cannot create the WASI 0.3 engine: {e:#}"))?;
        let wasi02 = Flavor::new(engine, false, settings.cache_dir.clone())?;
        let wasi03 = Flavor::new(wasi03_engine, true, settings.cache_dir.clone())?;
        let ticks = Arc::new(fair::TickMode::default());
        let ticker = engine::EpochTicker::start(
            vec![wasi02.engine.clone(), wasi03.engine.clone()],
            ticks.clone(),
        )?;
        metrics
            .pool_slots_total
            .set(i64::from(settings.instance_slots));
        metrics
            .pool_memory_budget
            .set(i64::try_from(settings.memory_budget).unwrap_or(i64::MAX));
        let accounts = Arc::new(fair::Accounts::new(
            metrics.guest_cpu_seconds.clone(),
            metrics.guest_thread_requests.clone(),
            ticks,
        ));
        let guests = Arc::new(
            offload::GuestThreads::start(settings.guest_threads, offload::GUEST_THREAD_NICE)
                .map_err(|e| anyhow::anyhow!("cannot start the guest threads: {e}"))?,
        );
        Ok(Self {
            guests,
            pool: admission::Pool::new(
                settings.instance_slots,
                settings.memory_budget,
                accounts.clone(),
                metrics.pool_slots_used.clone(),
                metrics.pool_memory_reserved.clone(),
            ),
            accounts,
            wasi02,
            wasi03,
            settings,
            metrics,
            observer: std::sync::OnceLock::new(),
            kv: std::sync::OnceLock::new(),
            app_variables: Default::default(),
            _ticker: ticker,
        })
    }

    /// The WASI 0.2 engine (the built-in demo's).
    pub fn wasi02_engine(&self) -> &Engine {
        &self.wasi02.engine
    }

    /// Sets the apps' CPU weights (`[fairness] cpu_weight`); apps not named get
    /// [`fair::DEFAULT_WEIGHT`]. Applies to requests from now on.
    pub fn set_cpu_weights(&self, weights: std::collections::HashMap<String, u32>) {
        self.accounts.set_weights(weights);
    }

    /// Replaces the variable values node config supplies by app name, returning the previous
    /// ones (a reload puts them back when it fails). Apps already loaded keep the values they
    /// were loaded with; every load from now on uses these.
    pub fn set_app_variables(&self, values: AppVariables) -> AppVariables {
        let mut guard = self
            .app_variables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *guard, values)
    }

    /// Adds `values` for `app` over what is set for it (an `[[app]]` bundle's own `variables`,
    /// known by app name only once the bundle is opened).
    pub fn add_app_variables(
        &self,
        app: &str,
        values: &std::collections::BTreeMap<String, String>,
    ) {
        if values.is_empty() {
            return;
        }
        let mut guard = self
            .app_variables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = guard.entry(app.to_owned()).or_default();
        entry.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// The variable values node config supplies for `app` (empty when none).
    pub fn app_variables(&self, app: &str) -> std::collections::BTreeMap<String, String> {
        self.app_variables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(app)
            .cloned()
            .unwrap_or_default()
    }

    /// Every app's values, as [`Runtime::app_variables`] gives them one app at a time.
    pub fn all_app_variables(&self) -> AppVariables {
        self.app_variables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends the [`LoadEvent`]s of every component loaded from now on to `observer` (once per
    /// runtime; a second observer is ignored).
    pub fn observe_loads(&self, observer: LoadObserver) {
        let _ = self.observer.set(observer);
    }

    /// Gives components loaded from now on the node's key-value stores (once per runtime; a
    /// second set is ignored).
    pub fn set_key_value(&self, kv: Arc<kv::KeyValue>) {
        let _ = self.kv.set(kv);
    }

    /// Loads, links and pre-instantiates a component from `wasm` bytes (`path` names it in
    /// errors). Every problem a request could hit later because of the component itself —
    /// missing imports, wrong world, bad limits, missing file grants — is reported here.
    #[allow(clippy::too_many_arguments)]
    pub fn load_component(
        &self,
        app: &str,
        tenant: Option<&str>,
        id: &str,
        path: &Path,
        wasm: Option<&[u8]>,
        cfg: ComponentSettings,
    ) -> Result<(Arc<AppComponent>, LoadInfo), LoadError> {
        let limits = self.limits_for(&format!("{app}/{id}"), &cfg)?;
        for (host_dir, _) in &cfg.files {
            if !host_dir.is_dir() {
                return Err(LoadError::Files {
                    path: path.to_owned(),
                    host_dir: host_dir.clone(),
                    reason: "not a directory (or not readable)".into(),
                });
            }
        }
        let read;
        let bytes = match wasm {
            Some(bytes) => bytes,
            None => {
                read = std::fs::read(path).map_err(|source| LoadError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                &read
            }
        };
        // A component that exports the WASI 0.2 handler goes to the WASI 0.2 engine; everything
        // else (WASI 0.3, WAT text, components that export neither) to the WASI 0.3 one, which
        // parses all of it — the load errors say what is wrong.
        let flavor = match crate::bundle::wasm::http_handler(bytes) {
            Some(crate::bundle::wasm::HttpHandler::Wasi02) => &self.wasi02,
            _ => &self.wasi03,
        };
        let observer = self.observer.get();
        if let Some(o) = observer {
            o(LoadEvent::Start {
                app,
                component: id,
                bytes: bytes.len(),
            });
        }
        let (component, info) = flavor.cache.load_bytes(&flavor.engine, path, bytes)?;
        if let Some(o) = observer {
            o(LoadEvent::Done {
                app,
                component: id,
                info: &info,
            });
        }
        let pre = flavor
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })?;
        let pre = HandlerPre::new(pre).map_err(|reason| LoadError::NotProxy {
            path: path.to_owned(),
            reason,
        })?;
        if limits.reuse_concurrency > 1 && matches!(pre, HandlerPre::P2(_)) {
            return Err(LoadError::Limits {
                component: format!("{app}/{id}"),
                reason: format!(
                    "reuse_concurrency {} applies to WASI 0.3 components only: a WASI 0.2 \
                     instance serves one request at a time (remove it, or keep reuse alone)",
                    limits.reuse_concurrency
                ),
            });
        }
        let grants = Grants {
            outbound: cfg.outbound,
            files: cfg.files,
            variables: cfg.variables.iter().cloned().collect(),
            spin_variables: cfg.variables.into_iter().collect(),
            kv: kv::KvAccess {
                kv: self.kv.get().cloned(),
                app: app.into(),
                labels: cfg.key_value_stores,
            },
            environment: cfg.environment,
        };
        let c = AppComponent::new(
            app,
            tenant,
            id,
            info.digest.clone(),
            pre,
            grants,
            limits,
            self.accounts.get(app),
            self.accounts.ticks().clone(),
            self.pool.clone(),
            self.guests.clone(),
            self.metrics.clone(),
        );
        Ok((Arc::new(c), info))
    }

    fn limits_for(&self, label: &str, cfg: &ComponentSettings) -> Result<Limits, LoadError> {
        let d = &self.settings.defaults;
        let memory_limit = cfg.memory_limit.unwrap_or(d.memory_limit);
        if memory_limit > self.settings.max_memory_per_instance {
            return Err(LoadError::Limits {
                component: label.to_string(),
                reason: format!(
                    "memory_limit {memory_limit} bytes exceeds this node's max_memory_per_instance \
                     {} bytes (see `outpost info`; raise it in [runtime] if the machine allows)",
                    self.settings.max_memory_per_instance
                ),
            });
        }
        let max_concurrency = cfg
            .max_concurrency
            .unwrap_or(d.max_concurrency)
            .clamp(1, self.settings.instance_slots.max(1));
        Ok(Limits {
            memory_limit,
            timeout: cfg.timeout.unwrap_or(d.timeout),
            max_concurrency,
            // Queue as many as may execute: enough to absorb a burst, bounded so a stuck app
            // cannot pile up unbounded work.
            max_queue: max_concurrency,
            queue_timeout: d.queue_timeout,
            max_request_body: cfg.max_request_body.unwrap_or(d.max_request_body),
            reuse: cfg.reuse.unwrap_or(1).max(1),
            reuse_idle_timeout: cfg.reuse_idle_timeout.unwrap_or(DEFAULT_REUSE_IDLE_TIMEOUT),
            reuse_concurrency: cfg.reuse_concurrency.unwrap_or(1).max(1),
        })
    }
}
