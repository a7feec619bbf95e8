//! The app manifest, `outpost.toml`: names an app, its components, their routes, capability
//! grants and limits. Close to Spin 2's `spin.toml` so Spin users feel at home.
//!
//! Owns: parsing and validating manifest text into [`Manifest`], the route rules ([`Route`],
//! [`route_matches`]), app variables and their `{{ name }}` templates
//! ([`Manifest::resolve_variables`]) and the implicit manifest of a bare `.wasm`
//! ([`Manifest::for_bare_wasm`]).
//! Must not: do I/O — the caller reads the file and passes its text plus a display name for
//! errors; paths stay relative to the app directory and are resolved (and checked against
//! symlink escapes) by whoever opens them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::base::outbound::{OutboundPattern, OutboundPolicy};
use crate::base::units::{Field, FieldError, Fields, describe, quote};

/// The file name a manifest must have inside an app directory.
pub const MANIFEST_FILE_NAME: &str = "outpost.toml";
/// The only manifest format this build understands.
pub const MANIFEST_VERSION: u32 = 1;
/// Smallest `memory_limit`: below one MiB not even a minimal component's data segments fit.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;
/// Most requests one instance may serve (`reuse`): high enough for any sane use, low enough
/// that state a guest leaks per request cannot pile up unbounded.
pub const MAX_REUSE: u32 = 1_000_000;
/// Most requests one WASI 0.3 instance may serve at once (`reuse_concurrency`).
pub const MAX_REUSE_CONCURRENCY: u32 = 1000;
/// `reuse_idle_timeout` bounds: an idle instance holds a pool slot and its memory.
const REUSE_IDLE_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));
/// Longest app name or component id; 63 keeps them valid as DNS labels and metric label values.
const MAX_NAME_LEN: usize = 63;

const TOP_KEYS: &[&str] = &["manifest_version", "application", "variables", "component"];
const APPLICATION_KEYS: &[&str] = &["name", "version", "description"];
const COMPONENT_KEYS: &[&str] = &[
    "source",
    "routes",
    "allowed_outbound_hosts",
    "allow_private_outbound",
    "files",
    "variables",
    "key_value_stores",
    "environment",
    "memory_limit",
    "timeout",
    "max_concurrency",
    "max_request_body",
    "reuse",
    "reuse_idle_timeout",
    "reuse_concurrency",
];
const FILE_KEYS: &[&str] = &["source", "destination"];
const ROUTE_KEYS: &[&str] = &["exact"];
const VARIABLE_KEYS: &[&str] = &["default", "required", "secret"];

/// A parsed and validated `outpost.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub manifest_version: u32,
    pub application: Application,
    /// The app's variables (`[variables]`), by name; component variables are templates over
    /// them, filled in by [`Manifest::resolve_variables`] when the app is loaded.
    pub variables: BTreeMap<String, VariableDecl>,
    /// At least one, ordered by id.
    pub components: Vec<ComponentSpec>,
}

/// One entry of the app-level `[variables]` table: a value the operator supplies when the app
/// is loaded (node config `[[app]] variables`, `outpost serve --var`), or its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableDecl {
    /// Used when no value is supplied; `None` means the variable is required.
    pub default: Option<String>,
    /// Its value is kept out of errors and logs.
    pub secret: bool,
}

/// A route: a path prefix (the default) or, written `{ exact = "/path" }`, one exact path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Starts with `/`, no trailing `/` (except `/` itself), Spin's `/...` suffix removed.
    pub path: String,
    /// Matches only `path` itself (and `path/`), never the paths below it.
    pub exact: bool,
}

/// The `[application]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// `[a-z0-9][a-z0-9-]{0,62}`
    pub name: String,
    /// `MAJOR.MINOR.PATCH[-pre][+build]`
    pub version: String,
    pub description: Option<String>,
}

/// One `[component.<id>]` table. Everything not granted here is denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    /// The table key; same rule as the app name.
    pub id: String,
    /// The `.wasm` file, relative to the app directory, without `..` or `.` components.
    pub source: PathBuf,
    /// Normalised routes: prefixes, and exact paths. See [`Route::matches`].
    pub routes: Vec<Route>,
    pub allowed_outbound_hosts: Vec<OutboundPattern>,
    /// Granted host names may connect to loopback, link-local, private and unique-local
    /// addresses (without it, only grants that name such an address reach it).
    pub allow_private_outbound: bool,
    /// Read-only preopened directories.
    pub files: Vec<FileMount>,
    /// Exposed through `wasi:config/store` and `fermyon:spin/variables`. As parsed: `{{ name }}` templates over the app's
    /// [`Manifest::variables`]; after [`Manifest::resolve_variables`]: plain values.
    pub variables: BTreeMap<String, String>,
    /// Key-value store labels the component may open (`wasi:keyvalue`, `fermyon:spin/key-value`),
    /// each valid by [`crate::base::units::is_store_label`], no two alike. Scoped to the app: two apps' `default`
    /// stores are different stores.
    pub key_value_stores: Vec<String>,
    /// Environment variables the guest sees (`wasi:cli/environment`), and only these: the
    /// daemon's own environment never reaches a guest.
    pub environment: BTreeMap<String, String>,
    pub limits: LimitSpec,
}

/// A read-only directory preopened for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// Directory relative to the app directory (`.` for the app directory itself).
    pub source: PathBuf,
    /// Absolute, normalised guest path.
    pub destination: String,
}

/// Per-component limits; `None` means the node's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSpec {
    /// Bytes of linear memory, at least [`MIN_MEMORY_LIMIT`].
    pub memory_limit: Option<u64>,
    /// Wall-clock limit per request, greater than zero.
    pub timeout: Option<Duration>,
    /// Requests executing at once, at least 1.
    pub max_concurrency: Option<u32>,
    /// Largest request body accepted, in bytes; 0 refuses any body.
    pub max_request_body: Option<u64>,
    /// Requests one instance may serve, one after another, before it is dropped; `None` or 1:
    /// a fresh instance for every request (`docs/reuse.md`).
    pub reuse: Option<u32>,
    /// How long an instance kept for reuse may wait for its next request.
    pub reuse_idle_timeout: Option<Duration>,
    /// Requests one WASI 0.3 instance may serve at once; `None` or 1: one after another.
    pub reuse_concurrency: Option<u32>,
}

/// Why a manifest was rejected: the shape every TOML document shares, `<origin>: <key path>:
/// <problem>`, or `<origin>:<line>:<column>: ...` for TOML syntax errors.
pub type ManifestError = crate::base::units::TomlError;

// === impl Manifest ===

impl Manifest {
    /// Parses and validates manifest `text`; `origin` (usually the file path) prefixes errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        crate::base::units::parse_document(text, origin, parse_table)
    }

    /// The implicit manifest of a bare component file: named after the file stem, version
    /// `0.0.0`, served at `/`, with no grants and default limits.
    pub fn for_bare_wasm(file_name: &str) -> Self {
        let path = Path::new(file_name);
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let name = sanitise_name(stem);
        let source = path
            .file_name()
            .map_or_else(|| PathBuf::from(file_name), PathBuf::from);
        Self {
            manifest_version: MANIFEST_VERSION,
            application: Application {
                name: name.clone(),
                version: "0.0.0".to_owned(),
                description: None,
            },
            variables: BTreeMap::new(),
            components: vec![ComponentSpec {
                id: name,
                source,
                routes: vec![Route::prefix("/")],
                allowed_outbound_hosts: Vec::new(),
                allow_private_outbound: false,
                files: Vec::new(),
                variables: BTreeMap::new(),
                key_value_stores: Vec::new(),
                environment: BTreeMap::new(),
                limits: LimitSpec::default(),
            }],
        }
    }

    pub fn component(&self, id: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.id == id)
    }

    /// Fills every component variable's `{{ name }}` templates in from `values` (supplied by
    /// the operator), else the variable's default. A required variable without a value is an
    /// error naming it (`<origin>: variables.<name>: ...`); values for variables the app does
    /// not declare are ignored, as Spin's providers do. Values never appear in errors.
    pub fn resolve_variables(
        mut self,
        values: &BTreeMap<String, String>,
        origin: &str,
    ) -> Result<Self, ManifestError> {
        let mut resolved: BTreeMap<&str, &str> = BTreeMap::new();
        let app = &self.application.name;
        for (name, decl) in &self.variables {
            match values.get(name).or(decl.default.as_ref()) {
                Some(v) => {
                    resolved.insert(name, v);
                }
                None => {
                    return Err(ManifestError::invalid(
                        origin,
                        FieldError {
                            key: format!("variables.{name}"),
                            problem: format!(
                                "required, but no value was supplied; set it with `outpost serve \
                                 --var {name}=VALUE`, or in the node config with \
                                 `variables = {{ {name} = \"...\" }}` in its [[app]] or \
                                 `{name} = \"...\"` under [variables.{app}]"
                            ),
                        },
                    ));
                }
            }
        }
        for c in &mut self.components {
            for template in c.variables.values_mut() {
                // Parsing checked every template and every name it uses.
                let parts = parse_template(template).unwrap_or_default();
                let mut out = String::with_capacity(template.len());
                for part in parts {
                    match part {
                        TemplatePart::Text(t) => out.push_str(t),
                        TemplatePart::Variable(n) => out.push_str(resolved.get(n).unwrap_or(&"")),
                    }
                }
                *template = out;
            }
        }
        Ok(self)
    }
}

// === impl Route ===

impl Route {
    /// A path prefix (already normalised).
    pub fn prefix(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            exact: false,
        }
    }

    /// One exact path (already normalised).
    pub fn exact(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            exact: true,
        }
    }

    /// Whether request `path` is this route's: an exact route matches its path with or without
    /// a trailing `/` (as Spin's router does); a prefix, see [`route_matches`].
    pub fn matches(&self, path: &str) -> bool {
        if self.exact {
            path == self.path
                || (self.path != "/" && path.strip_suffix('/') == Some(self.path.as_str()))
        } else {
            route_matches(&self.path, path)
        }
    }
}

/// A plain route string is a path prefix (for tables built by hand: tests, the fuzz target).
impl From<String> for Route {
    fn from(path: String) -> Self {
        Self::prefix(path)
    }
}

impl std::fmt::Display for Route {
    /// As written in `outpost.toml`: `"/api"` for a prefix, `{ exact = "/health" }`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exact {
            write!(f, "{{ exact = {:?} }}", self.path)
        } else {
            write!(f, "{:?}", self.path)
        }
    }
}

impl ComponentSpec {
    pub fn outbound_policy(&self) -> OutboundPolicy {
        OutboundPolicy::new(self.allowed_outbound_hosts.clone())
            .allow_private(self.allow_private_outbound)
    }
}

/// Whether `path` falls under route `prefix`: the prefix itself or anything below it at a `/`
/// boundary, so `/api` matches `/api` and `/api/x` but not `/apix`. `/` matches every path.
/// Picking the longest matching prefix is the router's job.
pub fn route_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether `s` is a valid app name or component id: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && s.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Turns any file stem into a valid name: lowercase, runs of other characters become one `-`.
pub(crate) fn sanitise_name(stem: &str) -> String {
    let mut name = String::with_capacity(stem.len());
    for c in stem.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    name.truncate(MAX_NAME_LEN);
    let name = name.trim_end_matches('-');
    if name.is_empty() {
        "app".to_owned()
    } else {
        name.to_owned()
    }
}

// === parsing ===

const NAME_RULE: &str =
    "lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters";
const VARIABLE_NAME_RULE: &str =
    "expected lowercase letters, digits and '_', starting with a letter";

fn parse_table(table: toml::Table) -> Result<Manifest, FieldError> {
    let mut top = Fields::new("", table);
    if top.contains("trigger") || top.contains("spin_manifest_version") {
        // Spin users will paste their spin.toml; point at the difference instead of a bare
        // "unknown key".
        let key = if top.contains("trigger") {
            "trigger"
        } else {
            "spin_manifest_version"
        };
        return Err(FieldError {
            key: key.to_owned(),
            problem: "this looks like a spin.toml; outpost.toml uses manifest_version = 1 and \
                      sets routes per component (component.<id>.routes) instead of \
                      [[trigger.http]]. Name the file spin.toml (an app directory without \
                      outpost.toml is read as a Spin app), or see `outpost spin convert`"
                .to_owned(),
        });
    }
    let manifest_version =
        parse_version_number(top.required("manifest_version", "manifest_version = 1")?)?;
    let application = parse_application(
        top.required(
            "application",
            "an [application] table with name and version",
        )?
        .table()?,
    )?;
    let components_field = top.required(
        "component",
        "at least one [component.<id>] table with source and routes",
    )?;
    let component_key = components_field.key.clone();
    let variables = match top.take("variables") {
        Some(field) => parse_app_variables(field.table()?)?,
        None => BTreeMap::new(),
    };
    let mut tables = components_field.table()?;
    let entries = tables.drain();
    if entries.is_empty() {
        return Err(FieldError {
            key: component_key,
            problem:
                "no components; expected at least one [component.<id>] table with source and routes"
                    .to_owned(),
        });
    }
    top.finish(TOP_KEYS)?;

    let mut components = Vec::with_capacity(entries.len());
    let mut route_owner: HashMap<Route, String> = HashMap::new();
    for (id, field) in entries {
        if !is_valid_name(&id) {
            return Err(field.error(format_args!(
                "invalid component id {:?}; expected {NAME_RULE}",
                quote(&id)
            )));
        }
        let (spec, route_keys) = parse_component(id, field.table()?, &variables)?;
        for (route, key) in spec.routes.iter().zip(route_keys) {
            if let Some(owner) = route_owner.insert(route.clone(), spec.id.clone()) {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "route {route} is already claimed by component {owner:?}; each route \
                         belongs to one component"
                    ),
                });
            }
        }
        components.push(spec);
    }
    Ok(Manifest {
        manifest_version,
        application,
        variables,
        components,
    })
}

/// The app-level `[variables]`: `name = { default = "..." }` or `name = { required = true }`,
/// either with `secret = true`.
fn parse_app_variables(mut t: Fields) -> Result<BTreeMap<String, VariableDecl>, FieldError> {
    let mut out = BTreeMap::new();
    for (name, field) in t.drain() {
        if !is_variable_name(&name) {
            return Err(field.error(format_args!(
                "invalid variable name {:?}; {VARIABLE_NAME_RULE}",
                quote(&name)
            )));
        }
        let key = field.key.clone();
        let mut d = field.table().map_err(|e| FieldError {
            problem: format!(
                "{}; expected a table like {{ default = \"...\" }} or {{ required = true }}",
                e.problem
            ),
            ..e
        })?;
        let default = d.take("default").map(Field::string).transpose()?;
        let required = d.take("required").map(Field::boolean).transpose()?;
        let secret = d.take("secret").map(Field::boolean).transpose()?;
        d.finish(VARIABLE_KEYS)?;
        let problem = match (&default, required) {
            (Some(_), Some(true)) => Some(
                "has both a default and required = true; a variable \
                                           with a default is never missing, so drop one",
            ),
            (None, None | Some(false)) => Some(
                "has neither a default nor required = true; give \
                                                it one of them",
            ),
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(FieldError {
                key,
                problem: problem.to_owned(),
            });
        }
        out.insert(
            name,
            VariableDecl {
                default,
                secret: secret.unwrap_or(false),
            },
        );
    }
    Ok(out)
}

/// A piece of a component variable's value: text, or a `{{ name }}` reference.
#[derive(Debug, PartialEq, Eq)]
enum TemplatePart<'a> {
    Text(&'a str),
    Variable(&'a str),
}

/// Splits `{{ name }}` references (spaces inside the braces optional) out of a value. `{{`
/// always opens a reference; there is no escape (as in Spin).
fn parse_template(s: &str) -> Result<Vec<TemplatePart<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(TemplatePart::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            "has a '{{' without a closing '}}'; expected a template like \"{{ name }}\"".to_owned()
        })?;
        let name = after[..close].trim();
        if !is_variable_name(name) {
            return Err(format!(
                "refers to {:?}, which is not a variable name; {VARIABLE_NAME_RULE}",
                quote(name)
            ));
        }
        parts.push(TemplatePart::Variable(name));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest));
    }
    Ok(parts)
}

fn parse_version_number(field: Field) -> Result<u32, FieldError> {
    match field.value {
        toml::Value::Integer(v) if v == i64::from(MANIFEST_VERSION) => Ok(MANIFEST_VERSION),
        toml::Value::Integer(v) => Err(field.error(format_args!(
            "unsupported manifest version {v}; this build of outpost understands manifest_version = {MANIFEST_VERSION}"
        ))),
        _ => Err(field.error(format_args!(
            "expected the integer {MANIFEST_VERSION}, got {}",
            describe(&field.value)
        ))),
    }
}

fn parse_application(mut t: Fields) -> Result<Application, FieldError> {
    let name_field = t.required("name", "a name like \"hello\"")?;
    let name_key = name_field.key.clone();
    let name = name_field.string()?;
    if !is_valid_name(&name) {
        return Err(FieldError {
            key: name_key,
            problem: format!("invalid app name {:?}; expected {NAME_RULE}", quote(&name)),
        });
    }
    let version_field = t.required("version", "a version like \"1.0.0\"")?;
    let version_key = version_field.key.clone();
    let version = version_field.string()?;
    if !is_semver(&version) {
        return Err(FieldError {
            key: version_key,
            problem: format!(
                "invalid version {:?}; expected MAJOR.MINOR.PATCH with an optional -prerelease \
                 and +build, like \"1.2.0\" or \"1.2.0-rc.1\"",
                quote(&version)
            ),
        });
    }
    let description = t.take("description").map(Field::string).transpose()?;
    t.finish_section(APPLICATION_KEYS, TOP_KEYS)?;
    Ok(Application {
        name,
        version,
        description,
    })
}

/// `MAJOR.MINOR.PATCH[-pre][+build]` as in semver 2.0: numbers without leading zeros,
/// dot-separated non-empty identifiers of `[0-9A-Za-z-]`.
pub(crate) fn is_semver(s: &str) -> bool {
    let (rest, build) = match s.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (s, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numeric = |n: &str| {
        !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'))
            && n.parse::<u64>().is_ok()
    };
    let idents = |s: &str| {
        s.split('.')
            .all(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| numeric(p))
        && pre.is_none_or(idents)
        && build.is_none_or(idents)
}

/// Parses one component table; also returns the key path of each route, for conflict errors.
fn parse_component(
    id: String,
    mut t: Fields,
    app_variables: &BTreeMap<String, VariableDecl>,
) -> Result<(ComponentSpec, Vec<String>), FieldError> {
    let source_field = t.required(
        "source",
        "the component's .wasm file, relative to the app directory",
    )?;
    let source_key = source_field.key.clone();
    let source = relative_path(&source_field.string()?).map_err(|p| FieldError {
        key: source_key.clone(),
        problem: p,
    })?;
    if source == Path::new(".") {
        return Err(FieldError {
            key: source_key,
            problem: "expected the path of a .wasm file, got the app directory itself".to_owned(),
        });
    }

    let (route_keys, routes): (Vec<String>, Vec<Route>) = parse_routes(t.required(
        "routes",
        "a list of path prefixes like [\"/\"] or [\"/api\"]",
    )?)?
    .into_iter()
    .unzip();

    let mut allowed_outbound_hosts = Vec::new();
    if let Some(field) = t.take("allowed_outbound_hosts") {
        for (key, raw) in field.strings()? {
            let pattern = raw.parse::<OutboundPattern>().map_err(|e| FieldError {
                key,
                problem: e.to_string(),
            })?;
            allowed_outbound_hosts.push(pattern);
        }
    }

    let allow_private_outbound = match t.take("allow_private_outbound") {
        Some(field) => field.boolean()?,
        None => false,
    };

    let files = match t.take("files") {
        Some(field) => parse_files(field)?,
        None => Vec::new(),
    };

    let mut variables = BTreeMap::new();
    if let Some(field) = t.take("variables") {
        for (name, value) in field.table()?.drain() {
            if !is_variable_name(&name) {
                return Err(value.error(format_args!(
                    "invalid variable name {:?}; {VARIABLE_NAME_RULE}",
                    quote(&name)
                )));
            }
            let key = value.key.clone();
            let text = match value.value {
                toml::Value::String(s) => s,
                other => {
                    return Err(FieldError {
                        key,
                        problem: format!(
                            "expected a string (variables are text; quote it, like {name} = \"{}\"), got {}",
                            quote(&other.to_string()),
                            describe(&other)
                        ),
                    });
                }
            };
            for part in parse_template(&text).map_err(|problem| FieldError {
                key: key.clone(),
                problem,
            })? {
                if let TemplatePart::Variable(v) = part
                    && !app_variables.contains_key(v)
                {
                    return Err(FieldError {
                        key,
                        problem: format!(
                            "refers to {{{{ {v} }}}}, which the app does not declare; add it to \
                             the top-level [variables] table, like {v} = {{ default = \"...\" }}"
                        ),
                    });
                }
            }
            variables.insert(name, text);
        }
    }

    let key_value_stores = match t.take("key_value_stores") {
        Some(field) => parse_store_labels(field)?,
        None => Vec::new(),
    };

    let environment = match t.take("environment") {
        Some(field) => parse_environment(field)?,
        None => BTreeMap::new(),
    };

    let mut limits = LimitSpec::default();
    if let Some(field) = t.take("memory_limit") {
        let bytes = field_bytes_at_least(field, MIN_MEMORY_LIMIT, "1MiB")?;
        limits.memory_limit = Some(bytes);
    }
    if let Some(field) = t.take("timeout") {
        let key = field.key.clone();
        let timeout = field.duration()?;
        if timeout.is_zero() {
            return Err(FieldError {
                key,
                problem: "must be greater than zero; expected a duration like \"5s\"".to_owned(),
            });
        }
        limits.timeout = Some(timeout);
    }
    if let Some(field) = t.take("max_concurrency") {
        limits.max_concurrency = Some(field.integer_in(1u32, u32::MAX)?);
    }
    if let Some(field) = t.take("max_request_body") {
        limits.max_request_body = Some(field.bytes()?);
    }
    if let Some(field) = t.take("reuse") {
        limits.reuse = Some(field.integer_in(1u32, MAX_REUSE)?);
    }
    if let Some(field) = t.take("reuse_idle_timeout") {
        let key = field.key.clone();
        limits.reuse_idle_timeout = Some(field.duration_in(REUSE_IDLE_RANGE, "\"10s\"")?);
        if limits.reuse.unwrap_or(1) < 2 {
            return Err(FieldError {
                key,
                problem: "only applies with reuse of 2 or more (reuse = 1, the default, \
                          gives every request a fresh instance)"
                    .to_owned(),
            });
        }
    }
    if let Some(field) = t.take("reuse_concurrency") {
        let key = field.key.clone();
        limits.reuse_concurrency = Some(field.integer_in(1u32, MAX_REUSE_CONCURRENCY)?);
        if limits.reuse.unwrap_or(1) < 2 {
            return Err(FieldError {
                key,
                problem: "only applies with reuse of 2 or more (the requests served at once \
                          count towards reuse)"
                    .to_owned(),
            });
        }
    }
    t.finish_section(COMPONENT_KEYS, TOP_KEYS)?;

    Ok((
        ComponentSpec {
            id,
            source,
            routes,
            allowed_outbound_hosts,
            allow_private_outbound,
            files,
            variables,
            key_value_stores,
            environment,
            limits,
        },
        route_keys,
    ))
}

fn field_bytes_at_least(field: Field, min: u64, min_text: &str) -> Result<u64, FieldError> {
    let key = field.key.clone();
    let bytes = field.bytes()?;
    if bytes < min {
        return Err(FieldError {
            key,
            problem: format!("{bytes} bytes is too small; expected at least {min_text}"),
        });
    }
    Ok(bytes)
}

/// `key_value_stores`: a list of distinct store labels (an empty list grants nothing).
fn parse_store_labels(field: Field) -> Result<Vec<String>, FieldError> {
    let mut labels: Vec<String> = Vec::new();
    for (key, label) in field.strings()? {
        if !crate::base::units::is_store_label(&label) {
            return Err(FieldError {
                key,
                problem: format!(
                    "invalid store label {:?}; expected words of letters and digits joined by '_', \
                     each starting with a letter and all lowercase or all uppercase, at most {} \
                     bytes (like \"default\" or \"user_sessions\")",
                    quote(&label),
                    crate::base::units::MAX_STORE_LABEL
                ),
            });
        }
        if labels.contains(&label) {
            return Err(FieldError {
                key,
                problem: format!("store {:?} is already listed", quote(&label)),
            });
        }
        labels.push(label);
    }
    Ok(labels)
}

/// Whether `s` is a valid variable name: `[a-z][a-z0-9_]*`.
pub fn is_variable_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Longest environment variable name or value: generous for any setting, small enough that a
/// manifest cannot make every instance carry megabytes.
const MAX_ENV_LEN: usize = 4096;

/// `environment = { NAME = "value" }`: names `[A-Za-z_][A-Za-z0-9_]*`, values strings without
/// NUL, both at most [`MAX_ENV_LEN`] bytes.
fn parse_environment(field: Field) -> Result<BTreeMap<String, String>, FieldError> {
    let mut env = BTreeMap::new();
    for (name, value) in field.table()?.drain() {
        let mut bytes = name.bytes();
        let valid = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && name.len() <= MAX_ENV_LEN;
        if !valid {
            return Err(value.error(format_args!(
                "invalid environment variable name {:?}; names are letters, digits and _, \
                 not starting with a digit",
                quote(&name)
            )));
        }
        let key = value.key.clone();
        match value.value {
            toml::Value::String(s) if s.len() <= MAX_ENV_LEN && !s.contains('\0') => {
                env.insert(name, s);
            }
            toml::Value::String(_) => {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "the value is longer than {MAX_ENV_LEN} bytes or contains a NUL byte"
                    ),
                });
            }
            other => {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "expected a string (quote it, like {name} = \"{}\"), got {}",
                        quote(&other.to_string()),
                        describe(&other)
                    ),
                });
            }
        }
    }
    Ok(env)
}

fn parse_files(field: Field) -> Result<Vec<FileMount>, FieldError> {
    let mut mounts: Vec<FileMount> = Vec::new();
    let mut mount_keys: Vec<String> = Vec::new();
    for item in field.array()? {
        let key = item.key.clone();
        let (source_key, raw_source, destination) = match item.value {
            toml::Value::String(s) => (key.clone(), s, None),
            toml::Value::Table(table) => {
                let mut t = Fields::new(key.clone(), table);
                let source = t.required("source", "a directory relative to the app directory")?;
                let source_key = source.key.clone();
                let source = source.string()?;
                let dest = t.required("destination", "an absolute guest path like \"/assets\"")?;
                let dest_key = dest.key.clone();
                let dest = dest.string()?;
                t.finish(FILE_KEYS)?;
                (source_key, source, Some((dest_key, dest)))
            }
            other => {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "expected a directory name like \"static\" or a table like \
                         {{ source = \"assets\", destination = \"/assets\" }}, got {}",
                        describe(&other)
                    ),
                });
            }
        };
        let source = relative_path(&raw_source).map_err(|problem| FieldError {
            key: source_key,
            problem,
        })?;
        let destination = match destination {
            Some((dest_key, dest)) => guest_path(&dest).map_err(|problem| FieldError {
                key: dest_key,
                problem,
            })?,
            // A bare directory appears at the same path under the guest root.
            None => {
                guest_path(&format!("/{}", source.display())).map_err(|problem| FieldError {
                    key: key.clone(),
                    problem,
                })?
            }
        };
        if let Some(i) = mounts.iter().position(|m| m.destination == destination) {
            return Err(FieldError {
                key,
                problem: format!(
                    "destination {destination:?} is already mounted by {}; each guest path can \
                     hold one directory",
                    mount_keys[i]
                ),
            });
        }
        mounts.push(FileMount {
            source,
            destination,
        });
        mount_keys.push(key);
    }
    Ok(mounts)
}

/// Parses `routes`: each a path prefix string or `{ exact = "/path" }`; at least one, no two
/// alike once normalised. Returns each route with its key path.
fn parse_routes(field: Field) -> Result<Vec<(String, Route)>, FieldError> {
    let key = field.key.clone();
    let mut out: Vec<(String, Route)> = Vec::new();
    for item in field.array()? {
        let item_key = item.key.clone();
        let route = match item.value {
            toml::Value::String(s) => {
                Route::prefix(normalise_route(&s).map_err(|problem| FieldError {
                    key: item_key.clone(),
                    problem,
                })?)
            }
            toml::Value::Table(table) => {
                let mut t = Fields::new(item_key.clone(), table);
                let f = t.required("exact", "an exact path like \"/health\"")?;
                let exact_key = f.key.clone();
                let raw = f.string()?;
                t.finish(ROUTE_KEYS)?;
                Route::exact(normalise_exact_route(&raw).map_err(|problem| FieldError {
                    key: exact_key,
                    problem,
                })?)
            }
            other => {
                return Err(FieldError {
                    key: item_key,
                    problem: format!(
                        "expected a path prefix like \"/api\" or a table like \
                         {{ exact = \"/health\" }}, got {}",
                        describe(&other)
                    ),
                });
            }
        };
        if let Some((first, _)) = out.iter().find(|(_, r)| *r == route) {
            return Err(FieldError {
                problem: format!("route {route} is already listed as {first}"),
                key: item_key,
            });
        }
        out.push((item_key, route));
    }
    if out.is_empty() {
        return Err(FieldError {
            key,
            problem: "no routes; expected at least one path prefix like \"/\"".to_owned(),
        });
    }
    Ok(out)
}

/// Normalises an exact route: like a prefix, but a `/...` wildcard makes no sense in it.
pub(crate) fn normalise_exact_route(raw: &str) -> Result<String, String> {
    if raw.ends_with("/...") {
        return Err(format!(
            "{:?} ends with the wildcard \"/...\"; an exact route is one path (write the \
             wildcard as a plain string route instead)",
            quote(raw)
        ));
    }
    normalise_route(raw)
}

/// Validates a path inside the app directory and drops `.` components; `.` alone stays `.`.
pub(crate) fn relative_path(raw: &str) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("empty path; expected a path relative to the app directory".to_owned());
    }
    if raw.contains('\\') {
        return Err(format!(
            "{:?} contains '\\'; expected '/' as the path separator",
            quote(raw)
        ));
    }
    if raw.contains(['*', '?', '[']) {
        return Err(format!(
            "{:?} looks like a glob pattern; expected a plain path (globs are not supported)",
            quote(raw)
        ));
    }
    if raw.contains('\0') {
        return Err("path contains a NUL byte".to_owned());
    }
    let path = Path::new(raw);
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{:?} is absolute; expected a path relative to the app directory",
                    quote(raw)
                ));
            }
            Component::ParentDir => {
                return Err(format!(
                    "{:?} contains '..'; expected a path inside the app directory",
                    quote(raw)
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Ok(out)
}

/// Validates and normalises an absolute guest path: single slashes, no `.`, no trailing `/`.
pub(crate) fn guest_path(raw: &str) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err(format!(
            "{:?} is not absolute; expected a guest path starting with '/', like \"/assets\"",
            quote(raw)
        ));
    }
    if raw.contains('\\') || raw.contains('\0') {
        return Err(format!(
            "{:?} contains '\\' or NUL; expected '/'-separated path segments",
            quote(raw)
        ));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "{:?} contains '..'; expected a plain absolute guest path",
                    quote(raw)
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Normalises a route: Spin's trailing `/...` wildcard is dropped, as is a trailing `/`.
pub(crate) fn normalise_route(raw: &str) -> Result<String, String> {
    let expected = "expected a path prefix starting with '/', like \"/\" or \"/api\"";
    if !raw.starts_with('/') {
        return Err(format!(
            "{:?} does not start with '/'; {expected}",
            quote(raw)
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '*'))
    {
        return Err(format!(
            "{:?} contains {bad:?}; {expected} (no query, fragment, glob or whitespace)",
            quote(raw)
        ));
    }
    let trimmed = raw.strip_suffix("/...").unwrap_or(raw);
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        // A trailing "/" (empty last segment) is tolerated; empty or dot segments elsewhere
        // would never match a normalised request path.
        let bad = match *segment {
            "" => i != last,
            "." | ".." | "..." => true,
            _ => false,
        };
        if bad {
            return Err(format!(
                "{:?} has an empty, '.', '..' or '...' segment; {expected} (a trailing \"/...\" \
                 is allowed and means the same as without it)",
                quote(raw)
            ));
        }
    }
    let route = trimmed.trim_end_matches('/');
    Ok(if route.is_empty() {
        "/".to_owned()
    } else {
        route.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "apps/hello/outpost.toml";

    const FULL: &str = r#"
manifest_version = 1

[application]
name = "hello"
version = "1.2.0"
description = "Says hello"

[component.hello]
source = "hello.wasm"
routes = ["/", "/api/..."]
allowed_outbound_hosts = ["https://api.example.com", "http://*.internal:8080", "https://*:*"]
files = ["static", { source = "assets", destination = "/assets" }]
memory_limit = "64MiB"
timeout = "5s"
max_concurrency = 32
max_request_body = "10MiB"
reuse = 100
reuse_idle_timeout = "30s"
reuse_concurrency = 8

[component.hello.variables]
greeting = "hi"

[component.admin]
source = "./bin/admin.wasm"
routes = ["/admin"]
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, ORIGIN)
    }

    fn minimal_with(component_extra: &str) -> String {
        format!(
            "manifest_version = 1\n[application]\nname = \"hello\"\nversion = \"1.0.0\"\n\
             [component.hello]\nsource = \"hello.wasm\"\nroutes = [\"/\"]\n{component_extra}\n"
        )
    }

    /// Asserts the manifest fails at `key` with a message containing `needle`, and that the
    /// message names the origin and the key.
    fn assert_rejects(text: &str, key: &str, needle: &str) {
        let err = parse(text).expect_err(key);
        let msg = err.to_string();
        assert_eq!(err.key(), Some(key), "{msg}");
        assert!(msg.starts_with(&format!("{ORIGIN}: {key}: ")), "{msg}");
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }

    #[test]
    fn parses_a_full_manifest() {
        let m = parse(FULL).expect("valid manifest");
        assert_eq!(m.manifest_version, 1);
        assert_eq!(m.application.name, "hello");
        assert_eq!(m.application.version, "1.2.0");
        assert_eq!(m.application.description.as_deref(), Some("Says hello"));
        let ids: Vec<&str> = m.components.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["admin", "hello"], "components are ordered by id");

        let admin = m.component("admin").expect("admin");
        assert_eq!(admin.source, PathBuf::from("bin/admin.wasm"));
        assert!(admin.allowed_outbound_hosts.is_empty());
        assert!(admin.outbound_policy().is_empty());
        assert_eq!(admin.limits, LimitSpec::default());

        let hello = m.component("hello").expect("hello");
        assert_eq!(hello.source, PathBuf::from("hello.wasm"));
        assert_eq!(hello.routes, [Route::prefix("/"), Route::prefix("/api")]);
        let hosts: Vec<String> = hello
            .allowed_outbound_hosts
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            hosts,
            [
                "https://api.example.com",
                "http://*.internal:8080",
                "https://*:*"
            ]
        );
        assert_eq!(
            hello.files,
            [
                FileMount {
                    source: "static".into(),
                    destination: "/static".into()
                },
                FileMount {
                    source: "assets".into(),
                    destination: "/assets".into()
                },
            ]
        );
        assert_eq!(
            hello.variables.get("greeting").map(String::as_str),
            Some("hi")
        );
        assert_eq!(
            hello.limits,
            LimitSpec {
                memory_limit: Some(64 << 20),
                timeout: Some(Duration::from_secs(5)),
                max_concurrency: Some(32),
                max_request_body: Some(10 << 20),
                reuse: Some(100),
                reuse_idle_timeout: Some(Duration::from_secs(30)),
                reuse_concurrency: Some(8),
            }
        );
    }

    #[test]
    fn limits_accept_integers() {
        let m = parse(&minimal_with(
            "memory_limit = 2097152\ntimeout = 250\nmax_request_body = 0",
        ))
        .expect("integers");
        let limits = &m.components[0].limits;
        assert_eq!(limits.memory_limit, Some(2 << 20));
        assert_eq!(limits.timeout, Some(Duration::from_millis(250)));
        assert_eq!(limits.max_request_body, Some(0));
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let err = parse("manifest_version = 1\n[application\nname = 1\n").expect_err("syntax");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{ORIGIN}:2:")), "{msg}");
        assert!(msg.contains("invalid TOML"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        let ManifestError::Syntax { line, .. } = err else {
            panic!("expected a syntax error");
        };
        assert_eq!(line, 2);

        let dup = parse("manifest_version = 1\nmanifest_version = 1\n").expect_err("duplicate");
        assert!(
            dup.to_string().starts_with(&format!("{ORIGIN}:2:")),
            "{dup}"
        );
    }

    #[test]
    fn the_spec_example_message() {
        let err = parse(&minimal_with("memory_limit = \"lots\"")).expect_err("lots");
        assert_eq!(
            err.to_string(),
            "apps/hello/outpost.toml: component.hello.memory_limit: expected a size like \"64MiB\", got \"lots\""
        );
    }

    #[test]
    fn manifest_version_is_required_and_must_be_1() {
        let body = "[application]\nname = \"a\"\nversion = \"1.0.0\"\n[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n";
        assert_rejects(
            body,
            "manifest_version",
            "missing; expected manifest_version = 1",
        );
        assert_rejects(
            &format!("manifest_version = 2\n{body}"),
            "manifest_version",
            "unsupported manifest version 2",
        );
        assert_rejects(
            &format!("manifest_version = \"1\"\n{body}"),
            "manifest_version",
            "expected the integer 1, got \"1\"",
        );
    }

    #[test]
    fn application_is_validated() {
        let with_app = |app: &str| {
            format!(
                "manifest_version = 1\n[application]\n{app}\n[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n"
            )
        };
        assert_rejects(
            "manifest_version = 1\n[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n",
            "application",
            "missing",
        );
        assert_rejects(
            "manifest_version = 1\napplication = 5\n",
            "application",
            "expected a table, got 5",
        );
        assert_rejects(
            &with_app("version = \"1.0.0\""),
            "application.name",
            "missing",
        );
        assert_rejects(
            &with_app("name = \"Hello\"\nversion = \"1.0.0\""),
            "application.name",
            "invalid app name \"Hello\"",
        );
        assert_rejects(
            &with_app("name = \"-a\"\nversion = \"1.0.0\""),
            "application.name",
            "invalid app name",
        );
        let long = "a".repeat(64);
        assert_rejects(
            &with_app(&format!("name = \"{long}\"\nversion = \"1.0.0\"")),
            "application.name",
            "at most 63",
        );
        assert_rejects(&with_app("name = \"a\""), "application.version", "missing");
        for bad in [
            "1.0",
            "1.0.0.0",
            "01.0.0",
            "1.0.0-",
            "1.0.0+",
            "v1.0.0",
            "1.0.x",
            "1..0",
            "1.0.0-a..b",
        ] {
            assert_rejects(
                &with_app(&format!("name = \"a\"\nversion = \"{bad}\"")),
                "application.version",
                "expected MAJOR.MINOR.PATCH",
            );
        }
        assert_rejects(
            &with_app("name = \"a\"\nversion = \"1.0.0\"\ndescription = 3"),
            "application.description",
            "expected a string, got 3",
        );
        assert_rejects(
            &with_app("name = \"a\"\nversion = \"1.0.0\"\nauthors = []"),
            "application.authors",
            "unknown key in [application]; expected one of name, version, description",
        );
    }

    #[test]
    fn semver_accepts_prerelease_and_build() {
        for good in [
            "0.0.0",
            "1.2.3",
            "10.20.30",
            "1.0.0-rc.1",
            "1.0.0-alpha-1+build.5",
            "1.0.0+20240101",
        ] {
            assert!(is_semver(good), "{good}");
        }
    }

    #[test]
    fn components_are_required() {
        let head = "manifest_version = 1\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n";
        assert_rejects(
            head,
            "component",
            "missing; expected at least one [component.<id>]",
        );
        assert_rejects(
            &format!("{head}[component]\n"),
            "component",
            "no components",
        );
        assert_rejects(
            "manifest_version = 1\ncomponent = []\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n",
            "component",
            "expected a table",
        );
        assert_rejects(
            &format!("{head}component = []\n"),
            "application.component",
            "\"component\" is a top-level key: move it above the first [table] header",
        );
        assert_rejects(
            &format!("{head}[component.Hello]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n"),
            "component.Hello",
            "invalid component id \"Hello\"",
        );
        assert_rejects(
            &format!("{head}[component.\"a.b\"]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n"),
            "component.\"a.b\"",
            "invalid component id",
        );
        assert_rejects(
            &format!("{head}[component.a]\nroutes = [\"/\"]\n"),
            "component.a.source",
            "missing",
        );
        assert_rejects(
            &format!("{head}[component.a]\nsource = \"a.wasm\"\n"),
            "component.a.routes",
            "missing",
        );
        assert_rejects(
            "manifest_version = 1\ncomponent.a = 1\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n",
            "component.a",
            "expected a table, got 1",
        );
    }

    #[test]
    fn environment_is_granted_variable_by_variable() {
        let m = parse(&minimal_with(
            "[component.hello.environment]\nRUST_LOG = \"info\"\n_X1 = \"\"",
        ))
        .expect("environment");
        let env = &m.components[0].environment;
        assert_eq!(env.len(), 2);
        assert_eq!(env["RUST_LOG"], "info");
        assert_eq!(env["_X1"], "");
        assert!(
            parse(&minimal_with("")).expect("minimal").components[0]
                .environment
                .is_empty(),
            "deny by default"
        );
        assert_rejects(
            &minimal_with("environment = { \"1X\" = \"v\" }"),
            "component.hello.environment.1X",
            "invalid environment variable name",
        );
        assert_rejects(
            &minimal_with("environment = { \"A-B\" = \"v\" }"),
            "component.hello.environment.A-B",
            "invalid environment variable name",
        );
        assert_rejects(
            &minimal_with("environment = { A = 1 }"),
            "component.hello.environment.A",
            "expected a string",
        );
        assert_rejects(
            &minimal_with("environment = { A = \"a\\u0000b\" }"),
            "component.hello.environment.A",
            "NUL",
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_table() {
        assert_rejects(
            &minimal_with("rotues = [\"/x\"]"),
            "component.hello.rotues",
            "unknown key in [component.hello]; expected one of source, routes,",
        );
        assert_rejects(
            &minimal_with("rotues = [\"/x\"]"),
            "component.hello.rotues",
            "did you mean \"routes\"?",
        );
        assert_rejects(
            &format!(
                "{}\nextra = 1\n",
                "manifest_version = 1\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]"
            ),
            "component.a.extra",
            "unknown key in [component.a]",
        );
        assert_rejects(
            "manifest_version = 1\nextra = true\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n[component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n",
            "extra",
            "unknown top-level key; expected one of manifest_version, application, variables, component",
        );
        assert_rejects(
            &minimal_with("files = [{ source = \"a\", destination = \"/a\", mode = \"rw\" }]"),
            "component.hello.files[0].mode",
            "unknown key in component.hello.files[0]; expected one of source, destination",
        );
    }

    #[test]
    fn key_value_stores_are_granted_by_label() {
        let m = parse(&minimal_with(
            "key_value_stores = [\"default\", \"user_sessions\", \"CACHE2\"]",
        ))
        .expect("labels");
        assert_eq!(
            m.components[0].key_value_stores,
            ["default", "user_sessions", "CACHE2"]
        );
        assert!(
            parse(&minimal_with("")).expect("none").components[0]
                .key_value_stores
                .is_empty(),
            "deny by default"
        );
        for bad in ["", "Default", "a-b", "_a", "a__b", "a_", "9a", "a b", "ä"] {
            assert_rejects(
                &minimal_with(&format!("key_value_stores = [{bad:?}]")),
                "component.hello.key_value_stores[0]",
                "invalid store label",
            );
        }
        assert_rejects(
            &minimal_with(&format!("key_value_stores = [\"{}\"]", "a".repeat(64))),
            "component.hello.key_value_stores[0]",
            "invalid store label",
        );
        assert_rejects(
            &minimal_with("key_value_stores = [\"a\", \"a\"]"),
            "component.hello.key_value_stores[1]",
            "already listed",
        );
        assert_rejects(
            &minimal_with("key_value_stores = \"default\""),
            "component.hello.key_value_stores",
            "expected",
        );
    }

    #[test]
    fn spin_manifests_get_a_pointer() {
        let spin = "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n";
        let err = parse(&format!("manifest_version = 1\n{spin}")).expect_err("spin");
        assert!(err.to_string().contains("looks like a spin.toml"), "{err}");
        assert!(err.to_string().starts_with(ORIGIN));
    }

    #[test]
    fn sources_must_stay_inside_the_app_directory() {
        let with_source = |s: &str| {
            format!(
                "manifest_version = 1\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n[component.a]\nsource = '{s}'\nroutes = [\"/\"]\n"
            )
        };
        assert_rejects(
            &with_source("/etc/a.wasm"),
            "component.a.source",
            "is absolute",
        );
        assert_rejects(
            &with_source("../a.wasm"),
            "component.a.source",
            "contains '..'",
        );
        assert_rejects(
            &with_source("x/../../a.wasm"),
            "component.a.source",
            "contains '..'",
        );
        assert_rejects(&with_source(""), "component.a.source", "empty path");
        assert_rejects(
            &with_source("."),
            "component.a.source",
            "the app directory itself",
        );
        assert_rejects(
            &with_source("a\\b.wasm"),
            "component.a.source",
            "path separator",
        );
        assert_rejects(&with_source("*.wasm"), "component.a.source", "glob");
        let m = parse(&with_source("./x//a.wasm")).expect("normalised");
        assert_eq!(m.components[0].source, PathBuf::from("x/a.wasm"));
    }

    #[test]
    fn routes_are_normalised_and_validated() {
        let with_routes =
            |r: &str| minimal_with("").replace("routes = [\"/\"]", &format!("routes = {r}"));
        let m = parse(&with_routes(r#"["/...", "/api/", "/static/..."]"#)).expect("routes");
        assert_eq!(
            m.components[0].routes,
            ["/", "/api", "/static"].map(Route::prefix)
        );
        assert_rejects(&with_routes("[]"), "component.hello.routes", "no routes");
        assert_rejects(
            &with_routes("\"/\""),
            "component.hello.routes",
            "expected an array, got \"/\"",
        );
        assert_rejects(
            &with_routes("[\"/\", 5]"),
            "component.hello.routes[1]",
            "expected a path prefix like \"/api\" or a table like { exact = \"/health\" }, got 5",
        );
        // Alike once normalised: the repeat is named, and so is its first listing.
        assert_rejects(
            &with_routes(r#"["/api", "/static", "/api/"]"#),
            "component.hello.routes[2]",
            "route \"/api\" is already listed as component.hello.routes[0]",
        );
        assert_rejects(
            &with_routes("[\"api\"]"),
            "component.hello.routes[0]",
            "does not start with '/'",
        );
        assert_rejects(
            &with_routes("[\"\"]"),
            "component.hello.routes[0]",
            "does not start with '/'",
        );
        assert_rejects(
            &with_routes("[\"/a?b\"]"),
            "component.hello.routes[0]",
            "contains '?'",
        );
        assert_rejects(
            &with_routes("[\"/a b\"]"),
            "component.hello.routes[0]",
            "contains ' '",
        );
        assert_rejects(
            &with_routes("[\"/a/*\"]"),
            "component.hello.routes[0]",
            "contains '*'",
        );
        assert_rejects(
            &with_routes("[\"//a\"]"),
            "component.hello.routes[0]",
            "empty, '.', '..'",
        );
        assert_rejects(
            &with_routes("[\"/a/../b\"]"),
            "component.hello.routes[0]",
            "segment",
        );
        assert_rejects(
            &with_routes("[\"/a/.../b\"]"),
            "component.hello.routes[0]",
            "segment",
        );
        assert_rejects(
            &with_routes("[\"/api\", \"/api/...\"]"),
            "component.hello.routes[1]",
            "route \"/api\" is already listed as component.hello.routes[0]",
        );
    }

    #[test]
    fn exact_routes() {
        let with_routes =
            |r: &str| minimal_with("").replace("routes = [\"/\"]", &format!("routes = {r}"));
        let m = parse(&with_routes(
            r#"[{ exact = "/health/" }, "/health", { exact = "/" }]"#,
        ))
        .expect("exact routes");
        assert_eq!(
            m.components[0].routes,
            [
                Route::exact("/health"),
                Route::prefix("/health"),
                Route::exact("/")
            ]
        );
        assert_rejects(
            &with_routes(r#"[{ exact = "/a" }, { exact = "/a/" }]"#),
            "component.hello.routes[1]",
            "route { exact = \"/a\" } is already listed as component.hello.routes[0]",
        );
        assert_rejects(
            &with_routes(r#"[{ exact = "/a/..." }]"#),
            "component.hello.routes[0].exact",
            "ends with the wildcard",
        );
        assert_rejects(
            &with_routes(r#"[{ exact = "a" }]"#),
            "component.hello.routes[0].exact",
            "does not start with '/'",
        );
        assert_rejects(
            &with_routes(r#"[{ path = "/a" }]"#),
            "component.hello.routes[0].exact",
            "missing",
        );
        assert_rejects(
            &with_routes(r#"[{ exact = "/a", private = true }]"#),
            "component.hello.routes[0].private",
            "unknown key",
        );
        let e = Route::exact("/a");
        assert!(e.matches("/a") && e.matches("/a/"));
        assert!(!e.matches("/a/b") && !e.matches("/ab") && !e.matches("/"));
        let root = Route::exact("/");
        assert!(root.matches("/") && !root.matches("/a") && !root.matches("//"));
        assert!(Route::prefix("/a").matches("/a/b"));
    }

    #[test]
    fn app_variables_and_templates() {
        let text = minimal_with(
            "[component.hello.variables]\nmsg = \"{{ greeting }}, {{token}}!\"\nplain = \"x}}\"",
        )
        .replacen(
            "manifest_version = 1\n",
            "manifest_version = 1\n[variables]\ngreeting = { default = \"hi\" }\n\
             token = { required = true, secret = true }\n",
            1,
        );
        let m = parse(&text).expect("variables");
        assert_eq!(
            m.variables["greeting"],
            VariableDecl {
                default: Some("hi".into()),
                secret: false
            }
        );
        assert!(m.variables["token"].secret && m.variables["token"].default.is_none());
        let err = m
            .clone()
            .resolve_variables(&BTreeMap::new(), ORIGIN)
            .expect_err("token is required");
        assert_eq!(err.key(), Some("variables.token"));
        assert!(err.to_string().contains("--var token=VALUE"), "{err}");
        let values: BTreeMap<String, String> = [("token", "s3cret"), ("unknown", "x")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let r = m.resolve_variables(&values, ORIGIN).expect("resolved");
        assert_eq!(r.components[0].variables["msg"], "hi, s3cret!");
        assert_eq!(r.components[0].variables["plain"], "x}}");

        let with_vars = |vars: &str, component: &str| {
            format!(
                "manifest_version = 1\n[variables]\n{vars}\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n\
                 [component.a]\nsource = \"a.wasm\"\nroutes = [\"/\"]\n[component.a.variables]\n{component}\n"
            )
        };
        assert_rejects(
            &with_vars("", "x = \"{{ nope }}\""),
            "component.a.variables.x",
            "refers to {{ nope }}, which the app does not declare",
        );
        assert_rejects(
            &with_vars("", "x = \"{{ Nope }}\""),
            "component.a.variables.x",
            "not a variable name",
        );
        assert_rejects(
            &with_vars("", "x = \"{{ open\""),
            "component.a.variables.x",
            "without a closing",
        );
        assert_rejects(
            &with_vars("v = { default = \"a\", required = true }", ""),
            "variables.v",
            "both a default and required",
        );
        assert_rejects(
            &with_vars("v = { secret = true }", ""),
            "variables.v",
            "neither a default nor required",
        );
        assert_rejects(
            &with_vars("v = \"a\"", ""),
            "variables.v",
            "expected a table like { default",
        );
        assert_rejects(
            &with_vars("v = { default = \"a\", deflaut = 1 }", ""),
            "variables.v.deflaut",
            "unknown key",
        );
        assert_rejects(
            &with_vars("V = { default = \"a\" }", ""),
            "variables.V",
            "invalid variable name",
        );
    }

    #[test]
    fn a_route_belongs_to_one_component() {
        let text = "manifest_version = 1\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n\
                    [component.api]\nsource = \"api.wasm\"\nroutes = [\"/api\"]\n\
                    [component.web]\nsource = \"web.wasm\"\nroutes = [\"/\", \"/api/...\"]\n";
        assert_rejects(
            text,
            "component.web.routes[1]",
            "route \"/api\" is already claimed by component \"api\"",
        );
    }

    #[test]
    fn outbound_hosts_are_parsed_with_their_index() {
        assert_rejects(
            &minimal_with(
                "allowed_outbound_hosts = [\"https://ok.example.com\", \"https://example.com/api\"]",
            ),
            "component.hello.allowed_outbound_hosts[1]",
            "\"https://example.com/api\": a path is not allowed here; expected scheme://host[:port]",
        );
        assert_rejects(
            &minimal_with("allowed_outbound_hosts = \"*://*:*\""),
            "component.hello.allowed_outbound_hosts",
            "expected an array",
        );
    }

    #[test]
    fn files_are_validated() {
        let with_files = |f: &str| minimal_with(&format!("files = {f}"));
        let m = parse(&with_files(
            r#"["./static/img/", ".", { source = "a", destination = "//data/./x/" }]"#,
        ))
        .expect("files");
        let got: Vec<(PathBuf, &str)> = m.components[0]
            .files
            .iter()
            .map(|f| (f.source.clone(), f.destination.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (PathBuf::from("static/img"), "/static/img"),
                (PathBuf::from("."), "/"),
                (PathBuf::from("a"), "/data/x"),
            ]
        );
        assert_rejects(
            &with_files("[\"/etc\"]"),
            "component.hello.files[0]",
            "is absolute",
        );
        assert_rejects(
            &with_files("[\"../x\"]"),
            "component.hello.files[0]",
            "contains '..'",
        );
        assert_rejects(
            &with_files("[{ source = \"../x\", destination = \"/x\" }]"),
            "component.hello.files[0].source",
            "contains '..'",
        );
        assert_rejects(
            &with_files("[{ source = \"x\", destination = \"x\" }]"),
            "component.hello.files[0].destination",
            "is not absolute",
        );
        assert_rejects(
            &with_files("[{ source = \"x\", destination = \"/a/../b\" }]"),
            "component.hello.files[0].destination",
            "contains '..'",
        );
        assert_rejects(
            &with_files("[{ source = \"x\" }]"),
            "component.hello.files[0].destination",
            "missing",
        );
        assert_rejects(
            &with_files("[{ destination = \"/x\" }]"),
            "component.hello.files[0].source",
            "missing",
        );
        assert_rejects(
            &with_files("[5]"),
            "component.hello.files[0]",
            "expected a directory name like \"static\"",
        );
        assert_rejects(
            &with_files("\"static\""),
            "component.hello.files",
            "expected an array",
        );
        assert_rejects(
            &with_files("[\"assets\", { source = \"other\", destination = \"/assets/\" }]"),
            "component.hello.files[1]",
            "destination \"/assets\" is already mounted by component.hello.files[0]",
        );
    }

    #[test]
    fn variables_are_validated() {
        let m = parse(&minimal_with(
            "[component.hello.variables]\na = \"1\"\nb_2 = \"x\"",
        ))
        .expect("vars");
        assert_eq!(m.components[0].variables.len(), 2);
        assert_rejects(
            &minimal_with("[component.hello.variables]\nBad = \"1\""),
            "component.hello.variables.Bad",
            "invalid variable name \"Bad\"",
        );
        assert_rejects(
            &minimal_with("[component.hello.variables]\n_a = \"1\""),
            "component.hello.variables._a",
            "invalid variable name",
        );
        assert_rejects(
            &minimal_with("[component.hello.variables]\nport = 8080"),
            "component.hello.variables.port",
            "quote it, like port = \"8080\"), got 8080",
        );
        assert_rejects(
            &minimal_with("variables = [\"a\"]"),
            "component.hello.variables",
            "expected a table",
        );
    }

    #[test]
    fn limits_are_validated() {
        assert_rejects(
            &minimal_with("memory_limit = \"512KiB\""),
            "component.hello.memory_limit",
            "too small; expected at least 1MiB",
        );
        assert_rejects(
            &minimal_with("memory_limit = -1"),
            "component.hello.memory_limit",
            "negative size",
        );
        assert_rejects(
            &minimal_with("memory_limit = true"),
            "component.hello.memory_limit",
            "integer number of bytes, got true",
        );
        assert_rejects(
            &minimal_with("timeout = \"0s\""),
            "component.hello.timeout",
            "greater than zero",
        );
        assert_rejects(
            &minimal_with("timeout = 0"),
            "component.hello.timeout",
            "greater than zero",
        );
        assert_rejects(
            &minimal_with("timeout = \"soon\""),
            "component.hello.timeout",
            "expected a duration like",
        );
        assert_rejects(
            &minimal_with("max_concurrency = 0"),
            "component.hello.max_concurrency",
            "from 1 to 4294967295, got 0",
        );
        assert_rejects(
            &minimal_with("max_concurrency = 4294967296"),
            "component.hello.max_concurrency",
            "from 1 to",
        );
        assert_rejects(
            &minimal_with("max_concurrency = \"8\""),
            "component.hello.max_concurrency",
            "got \"8\"",
        );
        assert_rejects(
            &minimal_with("reuse = 0"),
            "component.hello.reuse",
            "from 1 to 1000000, got 0",
        );
        assert_rejects(
            &minimal_with("reuse_idle_timeout = \"5s\""),
            "component.hello.reuse_idle_timeout",
            "only applies with reuse of 2 or more",
        );
        assert_rejects(
            &minimal_with("reuse_concurrency = 4"),
            "component.hello.reuse_concurrency",
            "only applies with reuse of 2 or more",
        );
        assert_rejects(
            &minimal_with("reuse = 10\nreuse_concurrency = 0"),
            "component.hello.reuse_concurrency",
            "from 1 to 1000, got 0",
        );
        assert_rejects(
            &minimal_with("reuse = 10\nreuse_idle_timeout = \"2h\""),
            "component.hello.reuse_idle_timeout",
            "out of range",
        );
        assert_rejects(
            &minimal_with("max_request_body = \"1.5MiB\""),
            "component.hello.max_request_body",
            "fractional size",
        );
    }

    #[test]
    fn route_matching_respects_segment_boundaries() {
        assert!(route_matches("/api", "/api"));
        assert!(route_matches("/api", "/api/"));
        assert!(route_matches("/api", "/api/x/y"));
        assert!(!route_matches("/api", "/apix"));
        assert!(!route_matches("/api", "/ap"));
        assert!(!route_matches("/api", "/"));
        assert!(route_matches("/", "/"));
        assert!(route_matches("/", "/anything/at/all"));
        assert!(!route_matches("/", ""));
        assert!(
            route_matches("/api/", "/api/x"),
            "a stray trailing slash is tolerated"
        );
        assert!(!route_matches("/api/", "/apix"));
    }

    #[test]
    fn bare_wasm_manifest() {
        let m = Manifest::for_bare_wasm("My_Cool App.v2.wasm");
        assert_eq!(m.application.name, "my-cool-app-v2");
        assert_eq!(m.application.version, "0.0.0");
        assert_eq!(m.components.len(), 1);
        let c = &m.components[0];
        assert_eq!(c.id, "my-cool-app-v2");
        assert_eq!(c.source, PathBuf::from("My_Cool App.v2.wasm"));
        assert_eq!(c.routes, [Route::prefix("/")]);
        assert!(
            c.allowed_outbound_hosts.is_empty() && c.files.is_empty() && c.variables.is_empty()
        );
        assert_eq!(c.limits, LimitSpec::default());

        assert_eq!(
            Manifest::for_bare_wasm("dir/hello.wasm").components[0].source,
            PathBuf::from("hello.wasm")
        );
        assert_eq!(Manifest::for_bare_wasm("__.wasm").application.name, "app");
        assert_eq!(Manifest::for_bare_wasm("").application.name, "app");
        assert_eq!(Manifest::for_bare_wasm("ünï.wasm").application.name, "n");
        let long = format!("{}.wasm", "x".repeat(100));
        assert_eq!(Manifest::for_bare_wasm(&long).application.name.len(), 63);
        for name in ["-a-", "A", "a--b", "9lives", "x y z"] {
            let m = Manifest::for_bare_wasm(&format!("{name}.wasm"));
            assert!(
                is_valid_name(&m.application.name),
                "{name} -> {}",
                m.application.name
            );
        }
    }

    #[test]
    fn huge_inputs_give_short_errors() {
        let big = "x".repeat(100_000);
        let err = parse(&minimal_with(&format!("memory_limit = \"{big}\""))).expect_err("big");
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
    }
}
