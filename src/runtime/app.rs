//! Apps: a manifest's components, loaded and ready to route.
//!
//! Owns: turning an app source (a directory with `outpost.toml` — or, without one, a Spin
//! `spin.toml`, read through `bundle::spin` — a bare `.wasm`, or the built-in demo) into loaded
//! components with their routes, filling in the app's variables, resolving manifest paths
//! against the app directory and refusing paths that escape it.
//! Must not: bind sockets or choose between apps (that is the router's job).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::manifest::{ComponentSpec, MANIFEST_FILE_NAME, Manifest, ManifestError, Route};
use crate::bundle::spin::{SPIN_MANIFEST_FILE_NAME, SpinApp};

use super::compile::LoadInfo;
use super::component::AppComponent;
use super::error::LoadError;
use super::{ComponentSettings, Runtime};

/// The demo app compiled into the binary (`testbed/apps/hello`), served by the embedded default
/// config so `outpost run` works on a fresh machine with nothing else.
pub const DEMO_WASM: &[u8] = include_bytes!(env!("OUTPOST_DEMO_WASM"));

/// Where an app comes from.
#[derive(Debug, Clone)]
pub enum AppSource {
    /// A directory holding `outpost.toml` (or `spin.toml`) and the files it names.
    Dir(PathBuf),
    /// A single component served at `/` with no grants.
    Wasm(PathBuf),
    /// The built-in demo app.
    Demo,
}

impl std::fmt::Display for AppSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) | Self::Wasm(p) => write!(f, "{}", p.display()),
            Self::Demo => f.write_str("builtin:demo"),
        }
    }
}

/// Why an app could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    #[error(
        "{0}: not an app: expected a directory containing outpost.toml or spin.toml, or a .wasm \
         component file"
    )]
    NotAnApp(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{manifest}: component.{component}.{key}: {problem}")]
    Path {
        manifest: PathBuf,
        component: String,
        key: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A component failed to load; named, since the wasm path alone does not say which
    /// component of the manifest it is.
    #[error("component {component}: {source}")]
    Component {
        component: String,
        #[source]
        source: LoadError,
    },
    /// The blocking load task panicked or was cancelled (a bug, or the daemon shutting down).
    #[error("the load task did not finish: {0}")]
    Task(String),
}

impl AppSource {
    /// Classifies a path given on the command line or in config.
    pub fn from_path(p: &Path) -> Result<Self, AppError> {
        if p.as_os_str() == "builtin:demo" {
            return Ok(Self::Demo);
        }
        let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AppError::NotFound(p.to_owned()),
            _ => AppError::Io {
                path: p.to_owned(),
                source: e,
            },
        })?;
        if meta.is_dir() {
            if p.join(MANIFEST_FILE_NAME).is_file() || p.join(SPIN_MANIFEST_FILE_NAME).is_file() {
                Ok(Self::Dir(p.to_owned()))
            } else {
                Err(AppError::NotAnApp(p.to_owned()))
            }
        } else {
            Ok(Self::Wasm(p.to_owned()))
        }
    }
}

/// A component and the routes it answers.
#[derive(Debug, Clone)]
pub struct RoutedComponent {
    pub routes: Vec<Route>,
    pub component: Arc<AppComponent>,
}

/// An app whose every component is compiled, linked and pre-instantiated.
#[derive(Debug, Clone)]
pub struct LoadedApp {
    pub name: String,
    pub version: String,
    pub source: String,
    pub components: Vec<RoutedComponent>,
}

/// Loads every component of the app at `src`. Fails as a whole: an app is served complete or not
/// at all. For an app without a tenant (config directories, bare `.wasm`, the demo).
pub async fn load_app(rt: &Arc<Runtime>, src: &AppSource) -> Result<LoadedApp, AppError> {
    load_tenant_app(rt, src, None).await
}

/// [`load_app`] for a release of `tenant` (from its signed document): the tenant labels the
/// app's request metrics. The manifest cannot name it — only the signature vouches for it.
///
/// The blocking part ([`compile_app`]: reading the manifest and the files, compiling with
/// Cranelift or deserializing from the code cache) runs on tokio's blocking pool, so the async
/// workers keep accepting; then every component is instantiated once (the probe) on this task.
pub async fn load_tenant_app(
    rt: &Arc<Runtime>,
    src: &AppSource,
    tenant: Option<&str>,
) -> Result<LoadedApp, AppError> {
    load_app_with(rt, src, tenant, &BTreeMap::new()).await
}

/// [`load_tenant_app`] with values for the app's variables (`[variables]`, from node config or
/// `outpost serve --var`); a required variable without a value fails the load, naming it.
pub async fn load_app_with(
    rt: &Arc<Runtime>,
    src: &AppSource,
    tenant: Option<&str>,
    variables: &BTreeMap<String, String>,
) -> Result<LoadedApp, AppError> {
    let (rt_owned, src_owned) = (rt.clone(), src.clone());
    let tenant_owned = tenant.map(str::to_owned);
    let variables = variables.clone();
    let (app, infos) = tokio::task::spawn_blocking(move || {
        compile_app(&rt_owned, &src_owned, tenant_owned.as_deref(), &variables)
    })
    .await
    .map_err(|e| AppError::Task(e.to_string()))??;
    for (routed, info) in app.components.iter().zip(&infos) {
        let component = &routed.component;
        component
            .probe()
            .await
            .map_err(|reason| AppError::Component {
                component: info.id.clone(),
                source: LoadError::Instantiate {
                    path: info.path.clone(),
                    reason,
                },
            })?;
        tracing::info!(
            app = %app.name,
            component = %info.id,
            wasi = component.wasi_version(),
            digest = %&info.load.digest[..12],
            cached = info.load.cache_hit,
            ms = info.load.elapsed.as_millis() as u64,
            "component loaded"
        );
    }
    Ok(app)
}

/// What [`compile_app`] did for one component, for the probe's error and the "component loaded"
/// line.
#[derive(Debug)]
pub struct CompiledComponent {
    pub id: String,
    /// The wasm file (`builtin:demo` for the embedded demo).
    pub path: PathBuf,
    pub load: LoadInfo,
}

/// The blocking half of [`load_tenant_app`]: reads the app's manifest, resolves its paths, and
/// compiles (or deserializes from the code cache) and links every component. Plain sync code
/// doing file I/O and Cranelift work: call it from a blocking context. The components are not
/// instantiated yet.
pub fn compile_app(
    rt: &Runtime,
    src: &AppSource,
    tenant: Option<&str>,
    variables: &BTreeMap<String, String>,
) -> Result<(LoadedApp, Vec<CompiledComponent>), AppError> {
    // `mpath`: the manifest file errors name (`outpost.toml`, or the Spin app's `spin.toml`).
    let (manifest, base, demo, mpath) = match src {
        AppSource::Dir(dir) => {
            let m = read_dir_manifest(dir)?;
            for note in &m.notes {
                tracing::info!(path = %m.path.display(), "{note}");
            }
            // Values given with the source (`[[app]] variables`, `--var`) win over the ones
            // node config supplies by app name (`[variables.APP]`).
            let mut values = rt.app_variables(&m.manifest.application.name);
            values.extend(variables.iter().map(|(k, v)| (k.clone(), v.clone())));
            let manifest = m
                .manifest
                .resolve_variables(&values, &m.path.display().to_string())?;
            (manifest, dir.clone(), false, m.path)
        }
        AppSource::Wasm(file) => {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "app.wasm".into());
            let base = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned();
            let mpath = base.join(MANIFEST_FILE_NAME);
            (Manifest::for_bare_wasm(&name), base, false, mpath)
        }
        AppSource::Demo => (
            Manifest::for_bare_wasm("demo.wasm"),
            PathBuf::from("."),
            true,
            PathBuf::from(MANIFEST_FILE_NAME),
        ),
    };

    let mut components = Vec::with_capacity(manifest.components.len());
    let mut infos = Vec::with_capacity(manifest.components.len());
    for spec in &manifest.components {
        let wasm_path = if demo {
            PathBuf::from("builtin:demo")
        } else {
            resolve(&mpath, spec, "source", &base, &spec.source)?
        };
        let settings = settings_for(&mpath, spec, &base)?;
        let named = |source| AppError::Component {
            component: spec.id.clone(),
            source,
        };
        let (component, load) = rt
            .load_component(
                &manifest.application.name,
                tenant,
                &spec.id,
                &wasm_path,
                demo.then_some(DEMO_WASM),
                settings,
            )
            .map_err(named)?;
        infos.push(CompiledComponent {
            id: spec.id.clone(),
            path: wasm_path,
            load,
        });
        components.push(RoutedComponent {
            routes: spec.routes.clone(),
            component,
        });
    }
    let app = LoadedApp {
        name: manifest.application.name.clone(),
        version: manifest.application.version.clone(),
        source: src.to_string(),
        components,
    };
    Ok((app, infos))
}

/// An app directory's manifest as read by [`read_dir_manifest`].
#[derive(Debug)]
pub struct DirManifest {
    pub manifest: Manifest,
    /// The `outpost.toml` text the manifest was parsed from (for a Spin app: the converted one).
    pub text: String,
    /// The file it came from, for messages: `outpost.toml`, else `spin.toml`.
    pub path: PathBuf,
    /// What the Spin import ignored or changed (empty for an `outpost.toml`).
    pub notes: Vec<String>,
}

/// Reads the manifest of app directory `dir`: `outpost.toml`, or, when there is none, the
/// `spin.toml` mapped onto one (`bundle::spin`; its file globs are expanded against the
/// directory's files). Variables are not filled in yet.
pub fn read_dir_manifest(dir: &Path) -> Result<DirManifest, AppError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => AppError::NotAnApp(dir.to_owned()),
            _ => AppError::Io {
                path: path.to_owned(),
                source,
            },
        })
    };
    let outpost = dir.join(MANIFEST_FILE_NAME);
    if outpost.is_file() || !dir.join(SPIN_MANIFEST_FILE_NAME).is_file() {
        let text = read(&outpost)?;
        let manifest = Manifest::parse(&text, &outpost.display().to_string())?;
        return Ok(DirManifest {
            manifest,
            text,
            path: outpost,
            notes: Vec::new(),
        });
    }
    read_spin_manifest(dir)
}

/// Reads `dir`'s `spin.toml` mapped onto an `outpost.toml` (whether or not the directory also
/// has one): its file globs are expanded against the directory's files.
pub fn read_spin_manifest(dir: &Path) -> Result<DirManifest, AppError> {
    let path = dir.join(SPIN_MANIFEST_FILE_NAME);
    let text = std::fs::read_to_string(&path).map_err(|source| AppError::Io {
        path: path.clone(),
        source,
    })?;
    let spin = SpinApp::parse(&text, &path.display().to_string())?;
    let files = if spin.grants_files() {
        list_files(dir).map_err(|source| AppError::Io {
            path: dir.to_owned(),
            source,
        })?
    } else {
        Vec::new()
    };
    let converted = spin.convert(&files)?;
    Ok(DirManifest {
        manifest: converted.manifest,
        text: converted.text,
        path,
        notes: converted.notes,
    })
}

/// Most files [`list_files`] reads from one app directory (a runaway `node_modules` or build
/// tree should fail loudly, not stall the load).
const MAX_LISTED_FILES: usize = 200_000;

/// Every file under `dir` (relative, `/`-separated, sorted), for Spin's file globs. Symlinked
/// directories are not followed (the grant's own resolution refuses escapes anyway).
fn list_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), child));
            } else if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
                out.push(child);
                if out.len() > MAX_LISTED_FILES {
                    return Err(std::io::Error::other(format!(
                        "more than {MAX_LISTED_FILES} files; too many to match spin.toml's file \
                         patterns against"
                    )));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn settings_for(
    mpath: &Path,
    spec: &ComponentSpec,
    base: &Path,
) -> Result<ComponentSettings, AppError> {
    let mut files = Vec::with_capacity(spec.files.len());
    for m in &spec.files {
        let host = resolve(mpath, spec, "files", base, &m.source)?;
        files.push((host, m.destination.clone()));
    }
    Ok(ComponentSettings {
        outbound: spec.outbound_policy(),
        files,
        variables: spec
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        key_value_stores: spec.key_value_stores.clone(),
        environment: spec
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        memory_limit: spec.limits.memory_limit,
        timeout: spec.limits.timeout,
        max_concurrency: spec.limits.max_concurrency,
        max_request_body: spec.limits.max_request_body,
        reuse: spec.limits.reuse,
        reuse_idle_timeout: spec.limits.reuse_idle_timeout,
        reuse_concurrency: spec.limits.reuse_concurrency,
    })
}

/// Resolves a manifest-relative path and makes sure it stays inside the app directory even after
/// following symlinks.
fn resolve(
    mpath: &Path,
    spec: &ComponentSpec,
    key: &'static str,
    base: &Path,
    rel: &Path,
) -> Result<PathBuf, AppError> {
    let joined = base.join(rel);
    let err = |problem: String| AppError::Path {
        manifest: mpath.to_owned(),
        component: spec.id.clone(),
        key,
        problem,
    };
    let real = joined.canonicalize().map_err(|e| {
        err(format!(
            "{}: {}",
            joined.display(),
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
                _ => e.to_string(),
            }
        ))
    })?;
    let real_base = base
        .canonicalize()
        .map_err(|e| err(format!("{}: {e}", base.display())))?;
    if !real.starts_with(&real_base) {
        return Err(err(format!(
            "{} resolves outside the app directory {}",
            rel.display(),
            real_base.display()
        )));
    }
    Ok(real)
}
