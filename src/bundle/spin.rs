//! `spin.toml` import: a Spin 2 app manifest (`spin_manifest_version = 2`) mapped onto
//! `outpost.toml`, so a Spin app directory serves as it is.
//!
//! Owns: reading `spin.toml` text ([`SpinApp::parse`]), every mapping and refusal, and the
//! equivalent `outpost.toml` text ([`SpinApp::convert`]). The text is what `outpost spin
//! convert` prints, what `outpost bundle pack` puts in a bundle, and — parsed back with
//! [`Manifest::parse`] — what a Spin app directory is loaded as; one path, so they never disagree.
//! Must not: do I/O. Spin's file globs are expanded against the app directory's file list, which
//! the caller reads and passes in (only when [`SpinApp::grants_files`]).
//!
//! Outpost grants files as read-only *directories*; a glob is mapped to the directories whose
//! every file it selects, and refused when it selects only part of one (granting the whole
//! directory would show the guest files Spin would have hidden). See `docs/manifest.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;

use super::manifest::{
    Manifest, ManifestError, Route, VariableDecl, guest_path, is_semver, is_valid_name,
    is_variable_name, normalise_exact_route, normalise_route, relative_path, sanitise_name,
};
use crate::base::outbound::OutboundPattern;
use crate::base::units::{Field, FieldError, Fields, describe, quote};

/// The file name of a Spin manifest inside an app directory (read when there is no
/// `outpost.toml`).
pub const SPIN_MANIFEST_FILE_NAME: &str = "spin.toml";

const TOP_KEYS: &[&str] = &[
    "spin_manifest_version",
    "application",
    "variables",
    "trigger",
    "component",
];
const APPLICATION_KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "authors",
    "targets",
    "trigger",
    "tool",
];
const HTTP_TRIGGER_KEYS: &[&str] = &["id", "component", "route", "executor"];
const COMPONENT_KEYS: &[&str] = &[
    "description",
    "source",
    "files",
    "exclude_files",
    "allowed_outbound_hosts",
    "allowed_http_hosts",
    "key_value_stores",
    "environment",
    "sqlite_databases",
    "ai_models",
    "variables",
    "build",
    "tool",
    "dependencies",
    "dependencies_inherit_configuration",
];
const VARIABLE_KEYS: &[&str] = &["default", "required", "secret"];
const FILE_KEYS: &[&str] = &["source", "destination"];

/// A `spin.toml`, read and checked, ready to be mapped by [`SpinApp::convert`].
#[derive(Debug, Clone)]
pub struct SpinApp {
    origin: String,
    name: String,
    version: String,
    description: Option<String>,
    variables: Vec<(String, VariableDecl)>,
    /// Components at least one HTTP trigger routes to, ordered by id.
    components: Vec<SpinComponent>,
    notes: Vec<String>,
}

#[derive(Debug, Clone)]
struct SpinComponent {
    id: String,
    source: PathBuf,
    /// Each with the key path of the trigger's `route`.
    routes: Vec<(String, Route)>,
    files: Vec<SpinFile>,
    /// Key path and pattern.
    exclude_files: Vec<(String, String)>,
    allowed_outbound_hosts: Vec<String>,
    key_value_stores: Vec<String>,
    variables: BTreeMap<String, String>,
    /// The guest's environment (names checked by [`Manifest::parse`]).
    environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
enum SpinFile {
    /// A path or glob, relative to the app directory; matching files keep their path.
    Pattern { key: String, pattern: String },
    /// `{ source = "dir", destination = "/path" }`.
    Mapping {
        key: String,
        source: PathBuf,
        destination: String,
    },
}

/// The result of [`SpinApp::convert`].
#[derive(Debug, Clone)]
pub struct Converted {
    /// The equivalent `outpost.toml`, notes as comments at the top.
    pub text: String,
    /// `text` parsed: what the app is loaded as.
    pub manifest: Manifest,
    /// What was ignored or changed on the way (also in `text`), for the log.
    pub notes: Vec<String>,
}

// === impl SpinApp ===

impl SpinApp {
    /// Parses and checks `spin.toml` text; `origin` (usually the file path) prefixes errors,
    /// which name the `spin.toml` key they are about.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        crate::base::units::parse_document(text, origin, |t| parse_table(t, origin))
    }

    /// The app's name and version as they will be served (made valid, see the notes).
    pub fn name_and_version(&self) -> (&str, &str) {
        (&self.name, &self.version)
    }

    /// Whether [`SpinApp::convert`] needs the app directory's file list (some component grants
    /// files).
    pub fn grants_files(&self) -> bool {
        self.components.iter().any(|c| !c.files.is_empty())
    }

    /// Maps the app onto `outpost.toml`. `app_files` lists every file under the app directory
    /// (relative, `/`-separated); it is only read for `files` grants.
    pub fn convert(&self, app_files: &[String]) -> Result<Converted, ManifestError> {
        let invalid = |e: FieldError| ManifestError::invalid(&self.origin, e);
        let listing = Listing::new(app_files);
        let mut mounts = Vec::with_capacity(self.components.len());
        for c in &self.components {
            mounts.push(map_files(c, &listing).map_err(invalid)?);
        }
        let text = self.render(&mounts);
        let manifest = Manifest::parse(&text, &format!("{} (as outpost.toml)", self.origin))?;
        Ok(Converted {
            text,
            manifest,
            notes: self.notes.clone(),
        })
    }

    fn render(&self, mounts: &[Vec<(String, String)>]) -> String {
        let mut out = String::new();
        // No path here: the text goes into bundles, which must not depend on where they were
        // packed.
        out.push_str("# Converted from spin.toml by outpost (`outpost spin convert`).\n");
        for note in &self.notes {
            let _ = writeln!(out, "# note: {note}");
        }
        out.push_str("manifest_version = 1\n\n[application]\n");
        let _ = writeln!(out, "name = {}", toml_str(&self.name));
        let _ = writeln!(out, "version = {}", toml_str(&self.version));
        if let Some(d) = &self.description {
            let _ = writeln!(out, "description = {}", toml_str(d));
        }
        if !self.variables.is_empty() {
            out.push_str("\n[variables]\n");
            for (name, decl) in &self.variables {
                let mut parts = Vec::new();
                match &decl.default {
                    Some(d) => parts.push(format!("default = {}", toml_str(d))),
                    None => parts.push("required = true".to_owned()),
                }
                if decl.secret {
                    parts.push("secret = true".to_owned());
                }
                let _ = writeln!(out, "{name} = {{ {} }}", parts.join(", "));
            }
        }
        for (c, mounts) in self.components.iter().zip(mounts) {
            let _ = write!(out, "\n[component.{}]\n", c.id);
            let _ = writeln!(
                out,
                "source = {}",
                toml_str(&c.source.display().to_string())
            );
            let routes: Vec<String> = c
                .routes
                .iter()
                .map(|(_, r)| match (r.exact, r.path.as_str()) {
                    (true, p) => format!("{{ exact = {} }}", toml_str(p)),
                    (false, "/") => toml_str("/..."),
                    (false, p) => toml_str(&format!("{p}/...")),
                })
                .collect();
            let _ = writeln!(out, "routes = [{}]", routes.join(", "));
            if !c.allowed_outbound_hosts.is_empty() {
                let _ = writeln!(
                    out,
                    "allowed_outbound_hosts = [{}]",
                    toml_list(&c.allowed_outbound_hosts)
                );
            }
            if !mounts.is_empty() {
                let files: Vec<String> = mounts
                    .iter()
                    .map(|(source, destination)| {
                        format!(
                            "{{ source = {}, destination = {} }}",
                            toml_str(source),
                            toml_str(destination)
                        )
                    })
                    .collect();
                let _ = writeln!(out, "files = [{}]", files.join(", "));
            }
            if !c.key_value_stores.is_empty() {
                let _ = writeln!(
                    out,
                    "key_value_stores = [{}]",
                    toml_list(&c.key_value_stores)
                );
            }
            if !c.variables.is_empty() {
                let _ = write!(out, "\n[component.{}.variables]\n", c.id);
                for (name, value) in &c.variables {
                    let _ = writeln!(out, "{name} = {}", toml_str(value));
                }
            }
            if !c.environment.is_empty() {
                let _ = write!(out, "\n[component.{}.environment]\n", c.id);
                for (name, value) in &c.environment {
                    let _ = writeln!(out, "{} = {}", toml_str(name), toml_str(value));
                }
            }
        }
        out
    }
}

/// A TOML basic string (escaped as TOML needs).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| toml_str(s))
        .collect::<Vec<_>>()
        .join(", ")
}

// === parsing ===

fn parse_table(table: toml::Table, origin: &str) -> Result<SpinApp, FieldError> {
    let mut top = Fields::new("", table);
    if let Some(f) = top.take("spin_version") {
        return Err(f.error(
            "this is a Spin manifest version 1, which outpost does not read; upgrade it to \
             spin_manifest_version = 2 (`spin doctor` does it) and try again",
        ));
    }
    let version = top.required("spin_manifest_version", "spin_manifest_version = 2")?;
    match &version.value {
        toml::Value::Integer(2) => {}
        toml::Value::Integer(1) | toml::Value::String(_) => {
            return Err(version.error(format_args!(
                "{} is Spin manifest version 1, which outpost does not read; upgrade it to \
                 spin_manifest_version = 2 (`spin doctor` does it) and try again",
                describe(&version.value)
            )));
        }
        other => {
            return Err(version.error(format_args!(
                "unsupported Spin manifest version {}; outpost reads spin_manifest_version = 2",
                describe(other)
            )));
        }
    }
    let mut notes = Vec::new();
    let (name, app_version, description, base) = parse_application(
        top.required("application", "an [application] table with a name")?
            .table()?,
        &mut notes,
    )?;
    let variables = match top.take("variables") {
        Some(f) => parse_variables(f.table()?)?,
        None => Vec::new(),
    };
    let mut triggers = top
        .required(
            "trigger",
            "at least one [[trigger.http]] table with a route and a component",
        )?
        .table()?;
    let http = triggers.take("http");
    if let Some((_, other)) = triggers.drain().into_iter().next() {
        return Err(other.error(
            "only HTTP triggers are supported; outpost serves wasi:http components (remove this \
             trigger, or serve the app with Spin)",
        ));
    }
    let http = http.ok_or_else(|| FieldError {
        key: "trigger.http".to_owned(),
        problem: "missing; expected at least one [[trigger.http]] table with a route and a \
                  component"
            .to_owned(),
    })?;
    // Absent when every trigger has its component inline.
    let mut component_tables = match top.take("component") {
        Some(f) => f.table()?,
        None => Fields::new("component", toml::Table::new()),
    };
    top.finish(TOP_KEYS)?;

    let declared: BTreeSet<&str> = variables.iter().map(|(n, _)| n.as_str()).collect();
    let mut components: BTreeMap<String, SpinComponent> = BTreeMap::new();
    for (id, field) in component_tables.drain() {
        if !is_valid_name(&id) {
            return Err(field.error(format_args!(
                "invalid component id {:?}; expected lowercase letters, digits and '-', \
                 starting with a letter or digit, at most 63 characters",
                quote(&id)
            )));
        }
        let component = parse_component(id.clone(), field.table()?, &declared, &mut notes)?;
        components.insert(id, component);
    }

    // Route → the trigger that claimed it first, for conflicts.
    let mut claimed: HashMap<Route, String> = HashMap::new();
    let triggers = http.array()?;
    // Trigger ids written in the manifest: a generated one never takes theirs.
    let mut trigger_ids: BTreeSet<String> = triggers
        .iter()
        .filter_map(|t| match &t.value {
            toml::Value::Table(t) => t.get("id")?.as_str().map(str::to_owned),
            _ => None,
        })
        .collect();
    let mut trigger_counter = 1;
    let mut inline_counter = 1;
    for trigger in triggers {
        let key = trigger.key.clone();
        let mut t = trigger.table()?;
        let trigger_id = match t.take("id") {
            Some(f) => Some(f.string()?),
            None => None,
        };
        let component = t.required(
            "component",
            "the id of a [component.<id>] table, or an inline component table",
        )?;
        let component_key = component.key.clone();
        let id = match component.value {
            toml::Value::String(s) => s,
            toml::Value::Table(table) => {
                // Spin's normalisation: the inline component becomes `<trigger id>-component`
                // (the trigger's id, or a generated `http-trigger<N>`), else
                // `inline-component<N>` when that is taken or not a valid id.
                let trigger_id = trigger_id.clone().unwrap_or_else(|| {
                    loop {
                        let id = format!("http-trigger{trigger_counter}");
                        trigger_counter += 1;
                        if trigger_ids.insert(id.clone()) {
                            break id;
                        }
                    }
                });
                let natural = format!("{trigger_id}-component");
                let id = if is_valid_name(&natural) && !components.contains_key(&natural) {
                    natural
                } else {
                    loop {
                        let id = format!("inline-component{inline_counter}");
                        inline_counter += 1;
                        if !components.contains_key(&id) {
                            break id;
                        }
                    }
                };
                let fields = Fields::new(component_key.clone(), table);
                let c = parse_component(id.clone(), fields, &declared, &mut notes)?;
                components.insert(id.clone(), c);
                id
            }
            other => {
                return Err(FieldError {
                    key: component_key,
                    problem: format!("expected a component id, got {}", describe(&other)),
                });
            }
        };
        if let Some(executor) = t.take("executor") {
            check_executor(executor)?;
        }
        let route = t.required("route", "a route like \"/...\" or \"/hello\"")?;
        let route_key = route.key.clone();
        let route = match route.value {
            toml::Value::String(s) => parse_route(&base, &s).map_err(|problem| FieldError {
                key: route_key.clone(),
                problem,
            })?,
            toml::Value::Table(table) => {
                let mut p = Fields::new(route_key.clone(), table);
                let private = p.required("private", "private = true")?;
                let private_key = private.key.clone();
                if !private.boolean()? {
                    return Err(FieldError {
                        key: private_key,
                        problem: "expected a route string or { private = true }".to_owned(),
                    });
                }
                p.finish(&["private"])?;
                t.finish(HTTP_TRIGGER_KEYS)?;
                notes.push(format!(
                    "{key}: a private route (reachable only by service chaining, which outpost \
                     does not do) is not served"
                ));
                continue;
            }
            other => {
                return Err(FieldError {
                    key: route_key,
                    problem: format!(
                        "expected a route like \"/...\" or \"/hello\", got {}",
                        describe(&other)
                    ),
                });
            }
        };
        t.finish(HTTP_TRIGGER_KEYS)?;
        let Some(c) = components.get_mut(&id) else {
            return Err(FieldError {
                key: component_key,
                problem: format!(
                    "no component {:?}; expected the id of a [component.<id>] table",
                    quote(&id)
                ),
            });
        };
        if let Some(first) = claimed.insert(route.clone(), route_key.clone()) {
            return Err(FieldError {
                key: route_key,
                problem: format!(
                    "route {:?} is already claimed by {first}; each route belongs to one \
                     component (Spin would serve only the last one)",
                    spin_route_text(&route)
                ),
            });
        }
        c.routes.push((route_key, route));
    }

    let mut routed = Vec::with_capacity(components.len());
    for (id, c) in components {
        if c.routes.is_empty() {
            notes.push(format!(
                "component.{id}: no HTTP trigger routes to it, so it is left out"
            ));
        } else {
            routed.push(c);
        }
    }
    if routed.is_empty() {
        return Err(FieldError {
            key: "trigger.http".to_owned(),
            problem: "no [[trigger.http]] routes to any component; nothing to serve".to_owned(),
        });
    }
    Ok(SpinApp {
        origin: origin.to_owned(),
        name,
        version: app_version,
        description,
        variables,
        components: routed,
        notes,
    })
}

/// `[application]`: name (sanitised to Outpost's rule), version (`0.0.0` if absent),
/// description, and the HTTP base path from `[application.trigger.http]`.
fn parse_application(
    mut t: Fields,
    notes: &mut Vec<String>,
) -> Result<(String, String, Option<String>, String), FieldError> {
    let name_field = t.required("name", "a name like \"hello\"")?;
    let name_key = name_field.key.clone();
    let raw_name = name_field.string()?;
    let name = if is_valid_name(&raw_name) {
        raw_name
    } else {
        let clean = sanitise_name(&raw_name);
        // `sanitise_name` falls back to "app" when nothing is left; that is no name of theirs.
        if !raw_name.bytes().any(|b| b.is_ascii_alphanumeric()) {
            return Err(FieldError {
                key: name_key,
                problem: format!(
                    "{:?} has no ASCII letter or digit to make an outpost app name from \
                     (lowercase letters, digits and '-', at most 63 characters)",
                    quote(&raw_name)
                ),
            });
        }
        notes.push(format!(
            "application.name {:?} is served as {clean:?} (outpost app names are lowercase \
             letters, digits and '-', at most 63 characters)",
            quote(&raw_name)
        ));
        clean
    };
    let version = match t.take("version") {
        Some(f) => {
            let key = f.key.clone();
            let v = f.string()?;
            if !is_semver(&v) {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "invalid version {:?}; outpost needs MAJOR.MINOR.PATCH, like \"1.2.0\"",
                        quote(&v)
                    ),
                });
            }
            v
        }
        None => {
            notes.push("application.version is not set; using \"0.0.0\"".to_owned());
            "0.0.0".to_owned()
        }
    };
    let description = t.take("description").map(Field::string).transpose()?;
    let _ = t.take("authors");
    let _ = t.take("targets");
    let _ = t.take("tool");
    let mut base = String::new();
    if let Some(trigger) = t.take("trigger") {
        let mut triggers = trigger.table()?;
        if let Some(http) = triggers.take("http") {
            let mut h = http.table()?;
            if let Some(b) = h.take("base") {
                let key = b.key.clone();
                let raw = b.string()?;
                let normalised = normalise_route(&raw).map_err(|problem| FieldError {
                    key: key.clone(),
                    problem,
                })?;
                base = if normalised == "/" {
                    String::new()
                } else {
                    normalised
                };
            }
            h.finish(&["base"])?;
        }
        if let Some((_, other)) = triggers.drain().into_iter().next() {
            return Err(other
                .error("only HTTP triggers are supported; outpost serves wasi:http components"));
        }
    }
    t.finish(APPLICATION_KEYS)?;
    Ok((name, version, description, base))
}

/// `[variables]`: `name = { default = "..." }` or `{ required = true }`, either with
/// `secret = true`.
fn parse_variables(mut t: Fields) -> Result<Vec<(String, VariableDecl)>, FieldError> {
    let mut out = Vec::new();
    for (name, field) in t.drain() {
        if !is_variable_name(&name) {
            return Err(field.error(format_args!(
                "invalid variable name {:?}; expected lowercase letters, digits and '_', \
                 starting with a letter",
                quote(&name)
            )));
        }
        let key = field.key.clone();
        let mut d = field.table()?;
        let default = d.take("default").map(Field::string).transpose()?;
        let required = d.take("required").map(Field::boolean).transpose()?;
        let secret = d.take("secret").map(Field::boolean).transpose()?;
        d.finish(VARIABLE_KEYS)?;
        match (&default, required) {
            (Some(_), Some(true)) => {
                return Err(FieldError {
                    key,
                    problem: "has both a default and required = true; drop one".to_owned(),
                });
            }
            (None, None | Some(false)) => {
                return Err(FieldError {
                    key,
                    problem: "has neither a default nor required = true; give it one of them"
                        .to_owned(),
                });
            }
            _ => {}
        }
        out.push((
            name,
            VariableDecl {
                default,
                secret: secret.unwrap_or(false),
            },
        ));
    }
    Ok(out)
}

/// `executor = { type = "spin" }` is the default; WAGI is not served.
fn check_executor(field: Field) -> Result<(), FieldError> {
    let mut t = field.table()?;
    let kind = t.required("type", "type = \"spin\"")?;
    let key = kind.key.clone();
    match kind.string()?.as_str() {
        "spin" => {
            t.finish(&["type"])?;
            Ok(())
        }
        "wagi" => Err(FieldError {
            key,
            problem: "the WAGI executor is not supported; outpost serves wasi:http components \
                      (the default executor, type = \"spin\")"
                .to_owned(),
        }),
        other => Err(FieldError {
            key,
            problem: format!("unknown executor {:?}; expected \"spin\"", quote(other)),
        }),
    }
}

/// A Spin route, joined to the app's base: `/...`-suffixed (or `/*`) is a wildcard (a prefix),
/// anything else one exact path. Named segments (`/users/:id`) are refused.
fn parse_route(base: &str, raw: &str) -> Result<Route, String> {
    // Spin makes a route absolute and strips one trailing '/' before joining it to the base.
    let absolute = if raw.starts_with('/') {
        raw.to_owned()
    } else {
        format!("/{raw}")
    };
    let route = absolute.strip_suffix('/').unwrap_or(&absolute);
    let joined = format!("{base}{route}");
    let joined = if joined.is_empty() { "/" } else { &joined };
    if joined.split('/').any(|s| s.starts_with(':')) {
        return Err(format!(
            "{:?} has a named segment (':name'), which outpost does not match; use a wildcard \
             route (\"/users/...\") and read the path in the component",
            quote(raw)
        ));
    }
    if let Some(prefix) = joined
        .strip_suffix("/...")
        .or_else(|| joined.strip_suffix("/*"))
    {
        let prefix = if prefix.is_empty() { "/" } else { prefix };
        Ok(Route::prefix(normalise_route(prefix)?))
    } else {
        Ok(Route::exact(normalise_exact_route(joined)?))
    }
}

/// A route as Spin writes it, for messages.
fn spin_route_text(r: &Route) -> String {
    match (r.exact, r.path.as_str()) {
        (true, p) => p.to_owned(),
        (false, "/") => "/...".to_owned(),
        (false, p) => format!("{p}/..."),
    }
}

fn parse_component(
    id: String,
    mut t: Fields,
    declared: &BTreeSet<&str>,
    notes: &mut Vec<String>,
) -> Result<SpinComponent, FieldError> {
    let source_field = t.required(
        "source",
        "the component's .wasm file, relative to the app directory",
    )?;
    let source_key = source_field.key.clone();
    let source = match source_field.value {
        toml::Value::String(s) => {
            let p = relative_path(&s).map_err(|problem| FieldError {
                key: source_key.clone(),
                problem,
            })?;
            if p == std::path::Path::new(".") {
                return Err(FieldError {
                    key: source_key,
                    problem: "expected the path of a .wasm file, got the app directory itself"
                        .to_owned(),
                });
            }
            p
        }
        toml::Value::Table(table) => {
            let what = if table.contains_key("url") {
                "a { url, digest } source"
            } else if table.contains_key("registry") || table.contains_key("package") {
                "a registry package source"
            } else {
                "a table source"
            };
            return Err(FieldError {
                key: source_key,
                problem: format!(
                    "{what} is not supported; outpost loads local files only: download the \
                     .wasm into the app directory and name its path here"
                ),
            });
        }
        other => {
            return Err(FieldError {
                key: source_key,
                problem: format!(
                    "expected the path of a .wasm file, got {}",
                    describe(&other)
                ),
            });
        }
    };

    let mut files = Vec::new();
    if let Some(field) = t.take("files") {
        for item in field.array()? {
            let key = item.key.clone();
            match item.value {
                toml::Value::String(s) => {
                    check_pattern(&s).map_err(|problem| FieldError {
                        key: key.clone(),
                        problem,
                    })?;
                    files.push(SpinFile::Pattern { key, pattern: s });
                }
                toml::Value::Table(table) => {
                    let mut m = Fields::new(key.clone(), table);
                    let s = m.required("source", "a directory relative to the app directory")?;
                    let s_key = s.key.clone();
                    let source = relative_path(&s.string()?).map_err(|problem| FieldError {
                        key: s_key,
                        problem,
                    })?;
                    let d = m.required("destination", "an absolute guest path like \"/\"")?;
                    let d_key = d.key.clone();
                    let destination = guest_path(&d.string()?).map_err(|problem| FieldError {
                        key: d_key,
                        problem,
                    })?;
                    m.finish(FILE_KEYS)?;
                    files.push(SpinFile::Mapping {
                        key,
                        source,
                        destination,
                    });
                }
                other => {
                    return Err(FieldError {
                        key,
                        problem: format!(
                            "expected a path or glob like \"static/**/*\" or a table like \
                             {{ source = \"assets\", destination = \"/\" }}, got {}",
                            describe(&other)
                        ),
                    });
                }
            }
        }
    }
    let mut exclude_files = Vec::new();
    if let Some(field) = t.take("exclude_files") {
        for (key, pattern) in field.strings()? {
            check_pattern(&pattern).map_err(|problem| FieldError {
                key: key.clone(),
                problem,
            })?;
            exclude_files.push((key, pattern));
        }
    }

    let mut allowed_outbound_hosts = Vec::new();
    if let Some(field) = t.take("allowed_outbound_hosts") {
        for (key, raw) in field.strings()? {
            if raw.contains("{{") {
                return Err(FieldError {
                    key,
                    problem: "templates in allowed_outbound_hosts are not supported; write the \
                              host out"
                        .to_owned(),
                });
            }
            raw.parse::<OutboundPattern>().map_err(|e| FieldError {
                key,
                problem: e.to_string(),
            })?;
            allowed_outbound_hosts.push(raw);
        }
    }
    if let Some(field) = t.take("allowed_http_hosts") {
        return Err(field.error(
            "allowed_http_hosts is Spin 1 syntax; write allowed_outbound_hosts with a scheme, \
             like [\"https://example.com\"]",
        ));
    }

    let mut key_value_stores = Vec::new();
    if let Some(field) = t.take("key_value_stores") {
        for (key, store) in field.strings()? {
            // The manifest's rule (Spin's own label rule), so a spin.toml that passes here
            // never fails at the converted outpost.toml's key.
            if !crate::base::units::is_store_label(&store) {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "invalid store label {:?}; expected words of letters and digits joined by \
                         '_', each starting with a letter and all lowercase or all uppercase, at \
                         most {} bytes (like \"default\" or \"user_sessions\")",
                        quote(&store),
                        crate::base::units::MAX_STORE_LABEL
                    ),
                });
            }
            if !key_value_stores.contains(&store) {
                key_value_stores.push(store);
            }
        }
    }

    let mut environment = BTreeMap::new();
    if let Some(field) = t.take("environment") {
        for (name, value) in field.table()?.drain() {
            let key = value.key.clone();
            match value.value {
                toml::Value::String(s) => {
                    environment.insert(name, s);
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
    }
    for (field_name, what) in [
        ("sqlite_databases", "SQLite databases are"),
        ("ai_models", "AI models (Serverless AI) are"),
        ("dependencies", "component dependencies are"),
    ] {
        if let Some(field) = t.take(field_name) {
            let empty = match &field.value {
                toml::Value::Array(a) => a.is_empty(),
                toml::Value::Table(t) => t.is_empty(),
                _ => false,
            };
            if !empty {
                return Err(field.error(format_args!(
                    "{what} not supported by outpost; remove {field_name}, or serve the app with \
                     Spin"
                )));
            }
        }
    }
    let _ = t.take("dependencies_inherit_configuration");
    if t.take("build").is_some() {
        notes.push(format!(
            "component.{id}.build is ignored: outpost serves the built .wasm; run `spin build` \
             first"
        ));
    }
    let _ = t.take("tool");
    let _ = t.take("description");

    let mut variables = BTreeMap::new();
    if let Some(field) = t.take("variables") {
        for (name, value) in field.table()?.drain() {
            if !is_variable_name(&name) {
                return Err(value.error(format_args!(
                    "invalid variable name {:?}; expected lowercase letters, digits and '_', \
                     starting with a letter",
                    quote(&name)
                )));
            }
            let key = value.key.clone();
            let text = value.string()?;
            for name in template_names(&text).map_err(|problem| FieldError {
                key: key.clone(),
                problem,
            })? {
                if !declared.contains(name) {
                    return Err(FieldError {
                        key,
                        problem: format!(
                            "refers to {{{{ {name} }}}}, which the app does not declare; add it \
                             to the top-level [variables] table"
                        ),
                    });
                }
            }
            variables.insert(name, text);
        }
    }
    t.finish(COMPONENT_KEYS)?;
    Ok(SpinComponent {
        id,
        source,
        routes: Vec::new(),
        files,
        exclude_files,
        allowed_outbound_hosts,
        key_value_stores,
        variables,
        environment,
    })
}

/// The variable names a `{{ name }}` template uses (checked again by [`Manifest::parse`]; here
/// so the error names the `spin.toml` key).
fn template_names(s: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "has a '{{' without a closing '}}'".to_owned())?;
        let name = after[..close].trim();
        if !is_variable_name(name) {
            return Err(format!(
                "refers to {:?}, which is not a variable name (lowercase letters, digits and \
                 '_', starting with a letter)",
                quote(name)
            ));
        }
        names.push(name);
        rest = &after[close + 2..];
    }
    Ok(names)
}

/// A `files` or `exclude_files` pattern: relative, inside the app directory, with only the glob
/// syntax outpost matches (`*`, `?`, `**`).
fn check_pattern(p: &str) -> Result<(), String> {
    if p.contains(['[', ']', '{', '}']) {
        return Err(format!(
            "{:?} uses '[...]' or '{{...}}' glob syntax, which outpost does not match; use \
             '*', '?' and '**'",
            quote(p)
        ));
    }
    // The path rules of `relative_path`, with the glob characters allowed.
    relative_path(&p.replace(['*', '?'], "x")).map(|_| ())
}

/// Whether `path` (relative, `/`-separated) matches glob `pattern`: `*` and `?` within one path
/// segment, `**` as a whole segment for any number of segments (as Spin's `glob` does).
fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern = pattern.trim_start_matches("./");
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let segs: Vec<&str> = path.split('/').collect();
    match_segments(&pat, &segs)
}

/// Whether `pat` (segments, `**` for any number of them) matches `segs`. Dynamic programming
/// over (pattern, path) positions, so no pattern makes it backtrack exponentially.
fn match_segments(pat: &[&str], segs: &[&str]) -> bool {
    let (p, n) = (pat.len(), segs.len());
    // dp[i][j]: pat[i..] matches segs[j..].
    let mut dp = vec![vec![false; n + 1]; p + 1];
    dp[p][n] = true;
    for i in (0..p).rev() {
        for j in (0..=n).rev() {
            dp[i][j] = if pat[i] == "**" {
                dp[i + 1][j] || (j < n && dp[i][j + 1])
            } else {
                j < n && match_segment(pat[i], segs[j]) && dp[i + 1][j + 1]
            };
        }
    }
    dp[0][0]
}

/// Whether one pattern segment (`*` any run of characters, `?` one) matches one path segment;
/// the same dynamic programming as [`match_segments`].
fn match_segment(pat: &str, seg: &str) -> bool {
    let (pat, seg): (Vec<char>, Vec<char>) = (pat.chars().collect(), seg.chars().collect());
    let (p, n) = (pat.len(), seg.len());
    let mut dp = vec![vec![false; n + 1]; p + 1];
    dp[p][n] = true;
    for i in (0..p).rev() {
        for j in (0..=n).rev() {
            dp[i][j] = match pat[i] {
                '*' => dp[i + 1][j] || (j < n && dp[i][j + 1]),
                '?' => j < n && dp[i + 1][j + 1],
                c => j < n && seg[j] == c && dp[i + 1][j + 1],
            };
        }
    }
    dp[0][0]
}

/// The app directory's files, with a cache of which directories a selection covers whole.
struct Listing<'a> {
    files: &'a [String],
}

impl<'a> Listing<'a> {
    fn new(files: &'a [String]) -> Self {
        Self { files }
    }

    /// Files under directory `dir` (`.` for the app directory).
    fn under(&self, dir: &str) -> impl Iterator<Item = &'a String> {
        let prefix = if dir == "." {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.files.iter().filter(move |f| f.starts_with(&prefix))
    }

    fn is_file(&self, p: &str) -> bool {
        self.files.iter().any(|f| f == p)
    }
}

/// Maps a component's `files` onto directory grants (source, destination), honouring
/// `exclude_files`.
fn map_files(
    c: &SpinComponent,
    listing: &Listing<'_>,
) -> Result<Vec<(String, String)>, FieldError> {
    let excluded = |f: &str| {
        c.exclude_files
            .iter()
            .find(|(_, p)| glob_match(p, f))
            .map(|(k, _)| k.as_str())
    };
    let mut mounts: Vec<(String, String, String)> = Vec::new(); // (key, source, destination)
    let mut add = |key: &str, source: String, destination: String| -> Result<(), FieldError> {
        if let Some((first, s, _)) = mounts.iter().find(|(_, _, d)| *d == destination) {
            if *s == source {
                return Ok(());
            }
            return Err(FieldError {
                key: key.to_owned(),
                problem: format!(
                    "destination {destination:?} is already granted by {first}; each guest path \
                     holds one directory"
                ),
            });
        }
        mounts.push((key.to_owned(), source, destination));
        Ok(())
    };
    for f in &c.files {
        match f {
            SpinFile::Mapping {
                key,
                source,
                destination,
            } => {
                let dir = source.display().to_string();
                if listing.is_file(&dir) {
                    return Err(FieldError {
                        key: key.clone(),
                        problem: format!(
                            "source {dir:?} is a file; outpost grants directories (name the \
                             directory it is in, or move it into one of its own)"
                        ),
                    });
                }
                let mut any = false;
                for file in listing.under(&dir) {
                    any = true;
                    if let Some(k) = excluded(file.as_str()) {
                        return Err(hidden_file_error(key, &dir, file, k));
                    }
                }
                if !any {
                    return Err(FieldError {
                        key: format!("{key}.source"),
                        problem: format!(
                            "{dir:?} is not a directory with files in the app directory"
                        ),
                    });
                }
                add(key, dir, destination.clone())?;
            }
            SpinFile::Pattern { key, pattern } => {
                let plain = pattern.trim_start_matches("./").trim_end_matches('/');
                let is_glob = pattern.contains(['*', '?']);
                if !is_glob && !listing.is_file(plain) {
                    // A directory named as it is: granted whole, at the same path.
                    let dir = if plain.is_empty() { "." } else { plain };
                    let mut any = false;
                    for file in listing.under(dir) {
                        any = true;
                        if let Some(k) = excluded(file.as_str()) {
                            return Err(hidden_file_error(key, dir, file, k));
                        }
                    }
                    if !any {
                        return Err(FieldError {
                            key: key.clone(),
                            problem: format!(
                                "{:?} matches no file in the app directory",
                                quote(pattern)
                            ),
                        });
                    }
                    let destination = if dir == "." {
                        "/".to_owned()
                    } else {
                        format!("/{dir}")
                    };
                    add(key, dir.to_owned(), destination)?;
                    continue;
                }
                let selected: BTreeSet<&str> = listing
                    .files
                    .iter()
                    .filter(|f| glob_match(plain, f) && excluded(f.as_str()).is_none())
                    .map(String::as_str)
                    .collect();
                if selected.is_empty() {
                    return Err(FieldError {
                        key: key.clone(),
                        problem: format!(
                            "{:?} matches no file in the app directory",
                            quote(pattern)
                        ),
                    });
                }
                let mut covered: HashMap<String, bool> = HashMap::new();
                for file in &selected {
                    let dir = covering_dir(file, &selected, listing, &mut covered).map_err(
                        |(dir, other)| FieldError {
                            key: key.clone(),
                            problem: format!(
                                "{:?} selects {file:?} but not {other:?} (both in {dir:?}); \
                                 outpost grants whole directories (read-only), so a \
                                 pattern must select every file of the directories it reaches: \
                                 grant {dir:?}, or move the files the component needs into a \
                                 directory of their own",
                                quote(pattern)
                            ),
                        },
                    )?;
                    let destination = if dir == "." {
                        "/".to_owned()
                    } else {
                        format!("/{dir}")
                    };
                    add(key, dir, destination)?;
                }
            }
        }
    }
    Ok(mounts.into_iter().map(|(_, s, d)| (s, d)).collect())
}

fn hidden_file_error(key: &str, dir: &str, file: &str, exclude_key: &str) -> FieldError {
    FieldError {
        key: exclude_key.to_owned(),
        problem: format!(
            "excludes {file:?} from the directory {dir:?} that {key} grants; outpost grants \
             whole directories (read-only) and cannot hide a file inside one: move it out of \
             {dir:?}"
        ),
    }
}

/// The highest directory above `file` all of whose files are `selected` (`.` for the app
/// directory); or, when not even `file`'s own directory is, that directory and a file in it
/// that is not selected.
fn covering_dir(
    file: &str,
    selected: &BTreeSet<&str>,
    listing: &Listing<'_>,
    covered: &mut HashMap<String, bool>,
) -> Result<String, (String, String)> {
    let parts: Vec<&str> = file.split('/').collect();
    // Ancestors from the app directory down to the file's own directory.
    let ancestors: Vec<String> = (0..parts.len())
        .map(|i| {
            if i == 0 {
                ".".to_owned()
            } else {
                parts[..i].join("/")
            }
        })
        .collect();
    for dir in &ancestors {
        let whole = *covered
            .entry(dir.clone())
            .or_insert_with(|| listing.under(dir).all(|f| selected.contains(f.as_str())));
        if whole {
            return Ok(dir.clone());
        }
    }
    let own = ancestors.last().cloned().unwrap_or_else(|| ".".to_owned());
    let other = listing
        .under(&own)
        .find(|f| !selected.contains(f.as_str()))
        .cloned()
        .unwrap_or_default();
    Err((own, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "apps/spin/spin.toml";

    const APP: &str = r#"
spin_manifest_version = 2

[application]
name = "Hello_World"
version = "1.0.0"
description = "Two components"
authors = ["A <a@example.com>"]

[variables]
greeting = { default = "hi" }
api_key = { required = true, secret = true }

[[trigger.http]]
route = "/hello"
component = "hello"

[[trigger.http]]
route = "/..."
component = "echo"

[[trigger.http]]
route = "/hello/..."
component = "echo"

[component.hello]
source = "hello.wasm"
allowed_outbound_hosts = ["https://api.example.com"]
files = [{ source = "assets", destination = "/" }, "static/**/*"]
[component.hello.variables]
message = "{{ greeting }}, {{api_key}}"
[component.hello.build]
command = "cargo build --target wasm32-wasip2 --release"

[component.echo]
source = "./target/echo.wasm"
"#;

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn app_files() -> Vec<String> {
        files(&[
            "spin.toml",
            "hello.wasm",
            "target/echo.wasm",
            "assets/index.html",
            "assets/css/a.css",
            "static/a.txt",
            "static/sub/b.txt",
        ])
    }

    fn convert(text: &str, listing: &[String]) -> Result<Converted, ManifestError> {
        SpinApp::parse(text, ORIGIN)?.convert(listing)
    }

    /// Asserts conversion fails at `key` (a spin.toml key path) with `needle` in the message.
    fn assert_refuses(text: &str, key: &str, needle: &str) {
        let err = convert(text, &app_files()).expect_err(key);
        let msg = err.to_string();
        assert_eq!(err.key(), Some(key), "{msg}");
        assert!(msg.starts_with(&format!("{ORIGIN}: {key}: ")), "{msg}");
        assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    }

    /// A minimal app with `extra` appended to its one component table.
    fn with_component(extra: &str) -> String {
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"a\"\nversion = \"1.0.0\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
             [component.a]\nsource = \"hello.wasm\"\n{extra}\n"
        )
    }

    /// Inline components get Spin's ids: `<trigger id>-component`, the trigger id written or
    /// generated (`http-trigger<N>`), else `inline-component<N>` when that one is taken.
    #[test]
    fn inline_components_are_named_as_spin_names_them() {
        let text = "spin_manifest_version = 2\n[application]\nname = \"a\"\n\
             [[trigger.http]]\nroute = \"/one/...\"\ncomponent = { source = \"hello.wasm\" }\n\
             [[trigger.http]]\nid = \"api\"\nroute = \"/api/...\"\n\
             component = { source = \"hello.wasm\", key_value_stores = [\"default\"] }\n\
             [[trigger.http]]\nid = \"x\"\nroute = \"/x\"\ncomponent = { source = \"hello.wasm\" }\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"x-component\"\n\
             [component.x-component]\nsource = \"hello.wasm\"\n";
        let c = convert(text, &app_files()).expect("converts");
        let ids: Vec<&str> = c
            .manifest
            .components
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "api-component",
                "http-trigger1-component",
                "inline-component1",
                "x-component"
            ]
        );
        let api = c.manifest.component("api-component").expect("api");
        assert_eq!(api.routes, [Route::prefix("/api")]);
        assert_eq!(api.key_value_stores, ["default"]);
        assert_eq!(
            c.manifest.component("inline-component1").expect("x").routes,
            [Route::exact("/x")]
        );
    }

    #[test]
    fn environment_is_an_explicit_grant() {
        let c = convert(
            &with_component("environment = { RUST_LOG = \"info\", GREETING = \"a \\\"b\\\"\" }"),
            &app_files(),
        )
        .expect("converts");
        let env = &c.manifest.component("a").expect("a").environment;
        assert_eq!(env.len(), 2);
        assert_eq!(env["RUST_LOG"], "info");
        assert_eq!(env["GREETING"], "a \"b\"");
        assert!(c.text.contains("[component.a.environment]\n"), "{}", c.text);
        // A name Outpost refuses is reported against the converted text.
        let err = convert(
            &with_component("environment = { \"1X\" = \"v\" }"),
            &app_files(),
        )
        .expect_err("bad name");
        assert!(
            err.to_string()
                .contains("invalid environment variable name"),
            "{err}"
        );
    }

    #[test]
    fn maps_a_full_app() {
        let c = convert(APP, &app_files()).expect("converts");
        let m = &c.manifest;
        assert_eq!(m.application.name, "hello-world");
        assert_eq!(m.application.version, "1.0.0");
        assert_eq!(m.application.description.as_deref(), Some("Two components"));
        assert_eq!(m.variables.len(), 2);
        assert!(m.variables["api_key"].secret && m.variables["api_key"].default.is_none());
        assert_eq!(m.variables["greeting"].default.as_deref(), Some("hi"));

        let hello = m.component("hello").expect("hello");
        assert_eq!(hello.routes, [Route::exact("/hello")]);
        assert_eq!(hello.source, PathBuf::from("hello.wasm"));
        let mounts: Vec<(String, &str)> = hello
            .files
            .iter()
            .map(|f| (f.source.display().to_string(), f.destination.as_str()))
            .collect();
        assert_eq!(
            mounts,
            [("assets".into(), "/"), ("static".into(), "/static")]
        );
        assert_eq!(hello.variables["message"], "{{ greeting }}, {{api_key}}");
        assert_eq!(hello.allowed_outbound_hosts.len(), 1);

        let echo = m.component("echo").expect("echo");
        assert_eq!(echo.routes, [Route::prefix("/"), Route::prefix("/hello")]);
        assert_eq!(echo.source, PathBuf::from("target/echo.wasm"));

        assert!(
            c.text.contains("routes = [{ exact = \"/hello\" }]"),
            "{}",
            c.text
        );
        assert!(
            c.text.contains("routes = [\"/...\", \"/hello/...\"]"),
            "{}",
            c.text
        );
        assert!(
            c.text
                .contains("api_key = { required = true, secret = true }")
        );
        assert!(
            c.notes.iter().any(|n| n.contains("\"hello-world\"")),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("component.hello.build is ignored"))
        );
        assert!(c.text.contains("# note: component.hello.build is ignored"));
        // The text alone is the app: parsing it again gives the same manifest.
        assert_eq!(
            &Manifest::parse(&c.text, "again").expect("reparses"),
            m,
            "{}",
            c.text
        );
    }

    #[test]
    fn key_value_stores_are_emitted() {
        let app = SpinApp::parse(
            &with_component("key_value_stores = [\"default\", \"cache\", \"default\"]"),
            ORIGIN,
        )
        .expect("parses");
        let text = app.render(&[Vec::new()]);
        assert!(
            text.contains("\nkey_value_stores = [\"default\", \"cache\"]\n"),
            "{text}"
        );
        assert_refuses(
            &with_component("key_value_stores = [\"Bad Name\"]"),
            "component.a.key_value_stores[0]",
            "invalid store label",
        );
    }

    #[test]
    fn routes_follow_spin() {
        let routes = |r: &[&str]| {
            let mut text = "spin_manifest_version = 2\n[application]\nname = \"a\"\n\
                            [application.trigger.http]\nbase = \"/base/\"\n"
                .to_owned();
            for (i, route) in r.iter().enumerate() {
                text.push_str(&format!(
                    "[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"c{i}\"\n\
                     [component.c{i}]\nsource = \"hello.wasm\"\n"
                ));
            }
            convert(&text, &app_files()).map(|c| {
                c.manifest
                    .components
                    .iter()
                    .flat_map(|c| c.routes.clone())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            routes(&["/...", "/a", "b/", "/c/*", "/"]).expect("routes"),
            [
                Route::prefix("/base"),
                Route::exact("/base/a"),
                Route::exact("/base/b"),
                Route::prefix("/base/c"),
                Route::exact("/base"),
            ]
        );
        let err = routes(&["/users/:id"]).expect_err("named");
        assert!(err.to_string().contains("named segment"), "{err}");
        assert_eq!(err.key(), Some("trigger.http[0].route"));

        let dup = "spin_manifest_version = 2\n[application]\nname = \"a\"\n\
                   [[trigger.http]]\nroute = \"/x\"\ncomponent = \"a\"\n\
                   [[trigger.http]]\nroute = \"/x/\"\ncomponent = \"a\"\n\
                   [component.a]\nsource = \"hello.wasm\"\n";
        assert_refuses(
            dup,
            "trigger.http[1].route",
            "route \"/x\" is already claimed by trigger.http[0].route",
        );
    }

    #[test]
    fn private_routes_and_unrouted_components_are_left_out() {
        let text = "spin_manifest_version = 2\n[application]\nname = \"a\"\n\
                    [[trigger.http]]\nroute = { private = true }\ncomponent = \"b\"\n\
                    [[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
                    [component.a]\nsource = \"hello.wasm\"\n\
                    [component.b]\nsource = \"hello.wasm\"\n\
                    [component.c]\nsource = \"hello.wasm\"\n";
        let c = convert(text, &[]).expect("converts");
        let ids: Vec<&str> = c
            .manifest
            .components
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["a"]);
        assert!(
            c.notes.iter().any(|n| n.contains("private route")),
            "{:?}",
            c.notes
        );
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("component.c: no HTTP trigger"))
        );
        assert!(c.notes.iter().any(|n| n.contains("version is not set")));
        assert_eq!(c.manifest.application.version, "0.0.0");

        let only_private = "spin_manifest_version = 2\n[application]\nname = \"a\"\n\
                    [[trigger.http]]\nroute = { private = true }\ncomponent = \"a\"\n\
                    [component.a]\nsource = \"hello.wasm\"\n";
        assert_refuses(only_private, "trigger.http", "nothing to serve");
        assert_refuses(
            &only_private.replace("private = true", "private = false"),
            "trigger.http[0].route.private",
            "expected a route string or { private = true }",
        );
    }

    #[test]
    fn versions_and_names() {
        let head = "[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"/...\"\n\
                    component = \"a\"\n[component.a]\nsource = \"hello.wasm\"\n";
        assert_refuses(
            &format!("spin_manifest_version = \"1\"\n{head}"),
            "spin_manifest_version",
            "Spin manifest version 1, which outpost does not read",
        );
        assert_refuses(
            &format!("spin_manifest_version = 1\n{head}"),
            "spin_manifest_version",
            "version 1",
        );
        assert_refuses(
            &format!("spin_version = \"1\"\n{head}"),
            "spin_version",
            "version 1",
        );
        assert_refuses(
            &format!("spin_manifest_version = 3\n{head}"),
            "spin_manifest_version",
            "unsupported Spin manifest version 3",
        );
        assert_refuses(head, "spin_manifest_version", "missing");
        let v2 = format!("spin_manifest_version = 2\n{head}");
        assert_refuses(
            &v2.replace("name = \"a\"", "name = \"a\"\nversion = \"1.0\""),
            "application.version",
            "MAJOR.MINOR.PATCH",
        );
        assert_refuses(
            &v2.replace("name = \"a\"", "name = \"___\""),
            "application.name",
            "no ASCII letter or digit",
        );
        assert_refuses(
            &v2.replace("[component.a]", "[component.A]"),
            "component.A",
            "invalid component id",
        );
        assert_refuses(
            &v2.replace("component = \"a\"", "component = \"b\""),
            "trigger.http[0].component",
            "no component \"b\"",
        );
        assert_refuses(
            &v2.replace(
                "spin_manifest_version = 2\n",
                "spin_manifest_version = 2\nextra = 1\n",
            ),
            "extra",
            "unknown top-level key",
        );
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let v2 = "spin_manifest_version = 2\n[application]\nname = \"a\"\n";
        assert_refuses(
            &format!(
                "{v2}[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n"
            ),
            "trigger.redis",
            "only HTTP triggers are supported",
        );
        assert_refuses(
            &format!(
                "{v2}[application.trigger.redis]\naddress = \"redis://x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n"
            ),
            "application.trigger.redis",
            "only HTTP triggers",
        );
        assert_refuses(
            &format!(
                "{v2}[[trigger.http]]\nroute = \"/...\"\ncomponent = {{ source = \"a.wasm\", sqlite_databases = [\"default\"] }}\n"
            ),
            "trigger.http[0].component.sqlite_databases",
            "",
        );
        assert_refuses(
            &format!(
                "{v2}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\nexecutor = {{ type = \"wagi\" }}\n[component.a]\nsource = \"a.wasm\"\n"
            ),
            "trigger.http[0].executor.type",
            "WAGI executor is not supported",
        );
        assert_refuses(
            &format!(
                "{v2}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\nstatic_response = {{ status_code = 200 }}\n[component.a]\nsource = \"a.wasm\"\n"
            ),
            "trigger.http[0].static_response",
            "unknown key",
        );
        assert_refuses(
            &with_component("").replace(
                "source = \"hello.wasm\"",
                "source = { url = \"https://example.com/a.wasm\", digest = \"sha256:00\" }",
            ),
            "component.a.source",
            "a { url, digest } source is not supported",
        );
        assert_refuses(
            &with_component("").replace("source = \"hello.wasm\"", "source = \"../a.wasm\""),
            "component.a.source",
            "contains '..'",
        );
        assert_refuses(
            &with_component("environment = { RUST_LOG = 3 }"),
            "component.a.environment.RUST_LOG",
            "expected a string",
        );
        assert_refuses(
            &with_component("sqlite_databases = [\"default\"]"),
            "component.a.sqlite_databases",
            "SQLite databases are not supported",
        );
        assert_refuses(
            &with_component("ai_models = [\"llama2-chat\"]"),
            "component.a.ai_models",
            "AI models",
        );
        assert_refuses(
            &with_component("[component.a.dependencies]\n\"x:y/z\" = \"1.0.0\""),
            "component.a.dependencies",
            "component dependencies are not supported",
        );
        assert_refuses(
            &with_component("allowed_http_hosts = [\"example.com\"]"),
            "component.a.allowed_http_hosts",
            "Spin 1 syntax",
        );
        assert_refuses(
            &with_component("allowed_outbound_hosts = [\"https://{{ host }}\"]"),
            "component.a.allowed_outbound_hosts[0]",
            "templates in allowed_outbound_hosts are not supported",
        );
        assert_refuses(
            &with_component("allowed_outbound_hosts = [\"https://example.com/path\"]"),
            "component.a.allowed_outbound_hosts[0]",
            "a path is not allowed",
        );
        assert_refuses(
            &with_component("mystery = 1"),
            "component.a.mystery",
            "unknown key in [component.a]",
        );
        // Empty ones, `build`, `description` and `environment = {}` are harmless.
        convert(
            &with_component(
                "sqlite_databases = []\nenvironment = {}\ndescription = \"d\"\n\
                 [component.a.build]\ncommand = \"make\"",
            ),
            &[],
        )
        .expect("harmless fields");
    }

    #[test]
    fn variables_are_checked() {
        let v2 = |vars: &str, component: &str| {
            format!(
                "spin_manifest_version = 2\n[application]\nname = \"a\"\n[variables]\n{vars}\n\
                 [[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
                 [component.a]\nsource = \"hello.wasm\"\n[component.a.variables]\n{component}\n"
            )
        };
        assert_refuses(
            &v2("x = { default = \"1\" }", "y = \"{{ z }}\""),
            "component.a.variables.y",
            "refers to {{ z }}, which the app does not declare",
        );
        assert_refuses(
            &v2("x = { default = \"1\", required = true }", ""),
            "variables.x",
            "both a default and required",
        );
        assert_refuses(&v2("x = { secret = true }", ""), "variables.x", "neither");
        assert_refuses(
            &v2("X = { default = \"1\" }", ""),
            "variables.X",
            "invalid variable name",
        );
        assert_refuses(
            &v2("x = { default = \"1\" }", "y = 5"),
            "component.a.variables.y",
            "expected a string",
        );
        let c = convert(&v2("x = { default = \"1\" }", "y = \"<{{x}}>\""), &[]).expect("ok");
        let r = c
            .manifest
            .resolve_variables(&BTreeMap::new(), ORIGIN)
            .expect("resolves");
        assert_eq!(r.components[0].variables["y"], "<1>");
    }

    #[test]
    fn file_globs_map_to_whole_directories() {
        let mounts = |extra: &str, listing: &[&str]| {
            convert(&with_component(extra), &files(listing)).map(|c| {
                c.manifest.components[0]
                    .files
                    .iter()
                    .map(|f| (f.source.display().to_string(), f.destination.clone()))
                    .collect::<Vec<_>>()
            })
        };
        let tree = [
            "spin.toml",
            "hello.wasm",
            "static/a.txt",
            "static/img/b.png",
            "static/img/c.png",
            "docs/x.md",
            "docs/y.txt",
        ];
        let pair = |s: &str, d: &str| (s.to_owned(), d.to_owned());
        assert_eq!(
            mounts("files = [\"static/**/*\"]", &tree).unwrap(),
            [pair("static", "/static")]
        );
        assert_eq!(
            mounts("files = [\"static/img/*.png\", \"static\"]", &tree).unwrap(),
            [pair("static/img", "/static/img"), pair("static", "/static")]
        );
        assert_eq!(
            mounts("files = [\"**/*\"]", &tree).unwrap(),
            [pair(".", "/")]
        );
        assert_eq!(
            mounts("files = [\"./docs/\"]", &tree).unwrap(),
            [pair("docs", "/docs")]
        );
        assert_eq!(
            mounts(
                "files = [{ source = \"static\", destination = \"/\" }]",
                &tree
            )
            .unwrap(),
            [pair("static", "/")]
        );
        // The excluded file sits outside the granted directory: fine.
        assert_eq!(
            mounts(
                "files = [\"static/**/*\"]\nexclude_files = [\"docs/*\"]",
                &tree
            )
            .unwrap(),
            [pair("static", "/static")]
        );

        let refused = |extra: &str| {
            let err = mounts(extra, &tree).expect_err(extra);
            (err.key().unwrap_or_default().to_owned(), err.to_string())
        };
        let (key, msg) = refused("files = [\"docs/*.md\"]");
        assert_eq!(key, "component.a.files[0]");
        assert!(
            msg.contains("selects \"docs/x.md\" but not \"docs/y.txt\""),
            "{msg}"
        );
        let (key, msg) = refused("files = [\"static/**/*\"]\nexclude_files = [\"**/c.png\"]");
        assert_eq!(key, "component.a.files[0]");
        assert!(msg.contains("but not \"static/img/c.png\""), "{msg}");
        let (key, msg) = refused("files = [\"static\"]\nexclude_files = [\"**/c.png\"]");
        assert_eq!(key, "component.a.exclude_files[0]");
        assert!(msg.contains("cannot hide a file"), "{msg}");
        let (key, msg) = refused("files = [\"hello.wasm\"]");
        assert_eq!(key, "component.a.files[0]");
        assert!(msg.contains("grants whole directories"), "{msg}");
        let (key, msg) = refused("files = [\"nothing/**\"]");
        assert_eq!(key, "component.a.files[0]");
        assert!(msg.contains("matches no file"), "{msg}");
        let (key, msg) = refused("files = [{ source = \"hello.wasm\", destination = \"/\" }]");
        assert_eq!(key, "component.a.files[0]");
        assert!(msg.contains("is a file"), "{msg}");
        let (key, msg) = refused("files = [\"static/[ab].txt\"]");
        assert_eq!(key, "component.a.files[0]");
        assert!(msg.contains("glob syntax"), "{msg}");
        let (key, msg) = refused("files = [\"../x/*\"]");
        assert_eq!(key, "component.a.files[0]");
        assert!(msg.contains("'..'"), "{msg}");
        let (key, msg) =
            refused("files = [\"static\", { source = \"docs\", destination = \"/static\" }]");
        assert_eq!(key, "component.a.files[1]");
        assert!(
            msg.contains("already granted by component.a.files[0]"),
            "{msg}"
        );
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("static/**/*", "static/a"));
        assert!(glob_match("static/**/*", "static/x/y/z"));
        assert!(!glob_match("static/**/*", "static"));
        assert!(glob_match("**", "a/b"));
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "d/a.txt"));
        assert!(glob_match("d/?.txt", "d/a.txt"));
        assert!(!glob_match("d/?.txt", "d/ab.txt"));
        assert!(glob_match("./d/*", "d/x"));
        assert!(glob_match("**/**/x", "x"));
        assert!(glob_match("a/**/b/**/c", "a/1/b/2/3/c"));
        assert!(!glob_match("a/**/b/**/c", "a/1/c"));
        assert!(glob_match("*é?", "aéb"));
        // Many stars against a long name that does not match: answered at once, not by
        // exponential backtracking.
        let long = "a".repeat(200);
        assert!(!glob_match(&format!("{}b", "*a".repeat(30)), &long));
    }

    #[test]
    fn errors_name_the_origin_and_line() {
        let err = SpinApp::parse("spin_manifest_version = 2\n[application\n", ORIGIN)
            .expect_err("syntax");
        assert!(
            err.to_string().starts_with(&format!("{ORIGIN}:2:")),
            "{err}"
        );
    }
}
