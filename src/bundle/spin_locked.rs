//! A Spin *locked app* — the JSON (`spin.lock`) that `spin registry push` stores in a registry
//! beside the app's components and files — mapped back onto the `spin.toml` and the files that
//! `spin.toml` names, so a Spin app from a registry is read by the very mapping a Spin app
//! directory is ([`super::spin`]): one set of rules, refusals and notes for both.
//!
//! Owns: reading a locked app (`spin_lock_version` 0 and 1), checking every id, path and content
//! reference in it, and the app directory it stands for ([`LockedLayout`]): `spin.toml`, each
//! component's Wasm at `wasm/<id>.wasm`, each component's files under `files/<id>/`, granted to
//! the guest at `/` (where Spin mounts a registry app's files).
//! Must not: do I/O or fetch anything. Content is named by digest (or carried inline); the
//! caller fetches the blobs (`oci::artifact::pull_spin_app`) and writes the directory.
//!
//! Unknown JSON fields are ignored, as Spin ignores them: the format's own mechanism for a
//! feature a host must not silently drop is `must_understand`, and anything there Outpost does
//! not know is refused.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Digest;
use super::manifest::ManifestError;

/// Spin's cap on a registry app's layers (`MAX_LAYER_COUNT`); a locked app naming more files
/// than this was not pushed by Spin.
pub const MAX_LOCKED_FILES: usize = 10_000;

/// Where a file of the layout gets its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The blob with this digest (a layer of the artifact).
    Digest(Digest),
    /// Bytes carried in the locked app itself (Spin inlines files under 128 bytes).
    Inline(Vec<u8>),
}

/// The app directory a locked app stands for.
#[derive(Debug, Clone)]
pub struct LockedLayout {
    /// `spin.toml` text: read by `bundle::spin` like any Spin app directory's.
    pub spin_toml: String,
    /// Every file to write, as (path relative to the app directory, `/`-separated; content).
    pub files: Vec<(String, Content)>,
    /// What was ignored or changed on the way (the `spin.toml` mapping adds its own).
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Locked {
    spin_lock_version: Value,
    #[serde(default)]
    must_understand: Vec<Value>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    host_requirements: Map<String, Value>,
    #[serde(default)]
    variables: BTreeMap<String, LockedVariable>,
    triggers: Vec<LockedTrigger>,
    components: Vec<LockedComponent>,
}

#[derive(Debug, Deserialize)]
struct LockedVariable {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Deserialize)]
struct LockedTrigger {
    #[serde(default)]
    id: Option<String>,
    trigger_type: String,
    #[serde(default)]
    trigger_config: Value,
}

#[derive(Debug, Deserialize)]
struct LockedComponent {
    id: String,
    #[serde(default)]
    metadata: Map<String, Value>,
    source: LockedSource,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<ContentPath>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    dependencies: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct LockedSource {
    content_type: String,
    #[serde(flatten)]
    content: ContentRef,
}

#[derive(Debug, Deserialize)]
struct ContentRef {
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    inline: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ContentPath {
    #[serde(flatten)]
    content: ContentRef,
    path: String,
}

/// Component metadata keys and the `spin.toml` keys they came from.
const COMPONENT_METADATA: &[(&str, &str)] = &[
    ("allowed_outbound_hosts", "allowed_outbound_hosts"),
    ("key_value_stores", "key_value_stores"),
    ("databases", "sqlite_databases"),
    ("ai_models", "ai_models"),
];

/// Reads the locked app `json` (from `origin`, which prefixes errors) and lays it out as an
/// app directory. `name` replaces the app's name (the name an Outpost signature gave it), with
/// a note when the two differ.
pub fn layout(
    json: &[u8],
    origin: &str,
    name: Option<&str>,
) -> Result<LockedLayout, ManifestError> {
    let err = |key: &str, problem: String| ManifestError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let locked: Locked = serde_json::from_slice(json).map_err(|e| {
        err(
            "(document)",
            format!(
                "not a Spin locked app (line {}, column {}): {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    match locked.spin_lock_version.as_u64() {
        Some(0 | 1) => {}
        _ => {
            return Err(err(
                "spin_lock_version",
                format!(
                    "{} is not a version this Outpost reads (0 or 1)",
                    locked.spin_lock_version
                ),
            ));
        }
    }
    for (i, m) in locked.must_understand.iter().enumerate() {
        if m.as_str() != Some("host_requirements") {
            return Err(err(
                &format!("must_understand[{i}]"),
                format!("{m} is a feature this Outpost does not know, and the app says it must"),
            ));
        }
    }
    for (key, value) in &locked.host_requirements {
        if value.as_str() == Some("optional") {
            continue;
        }
        let problem = if key == "local_service_chaining" {
            "the app needs local service chaining (a component calling another through \
             *.spin.internal), which Outpost does not do"
                .to_owned()
        } else {
            format!("a host requirement this Outpost does not know ({value})")
        };
        return Err(err(&format!("host_requirements.{key}"), problem));
    }

    let mut notes = Vec::new();
    let mut doc = toml::Table::new();
    doc.insert("spin_manifest_version".into(), 2.into());
    let mut application = toml::Table::new();
    let string_meta =
        |m: &Map<String, Value>, key: &str, at: &str| -> Result<Option<String>, ManifestError> {
            match m.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(err(
                    &format!("{at}.{key}"),
                    format!("{other} is not a string"),
                )),
            }
        };
    let locked_name = string_meta(&locked.metadata, "name", "metadata")?;
    let app_name = match (name, &locked_name) {
        (Some(signed), Some(own)) if signed != own => {
            notes.push(format!(
                "served as app {signed:?}, the name its signature gives; the locked app calls \
                 itself {own:?}"
            ));
            signed.to_owned()
        }
        (Some(signed), _) => signed.to_owned(),
        (None, Some(own)) => own.clone(),
        (None, None) => {
            return Err(err(
                "metadata.name",
                "missing; a Spin app has a name".into(),
            ));
        }
    };
    application.insert("name".into(), app_name.into());
    for key in ["version", "description"] {
        if let Some(v) = string_meta(&locked.metadata, key, "metadata")? {
            application.insert(key.into(), v.into());
        }
    }
    // `triggers.http.base` (Spin 2+), else the older single-trigger duplicate `trigger.base`.
    let base = locked
        .metadata
        .get("triggers")
        .and_then(|t| t.get("http"))
        .and_then(|h| h.get("base"))
        .or_else(|| locked.metadata.get("trigger").and_then(|t| t.get("base")));
    match base {
        None | Some(Value::Null) => {}
        Some(Value::String(b)) => {
            let mut http = toml::Table::new();
            http.insert("base".into(), b.clone().into());
            let mut trigger = toml::Table::new();
            trigger.insert("http".into(), http.into());
            application.insert("trigger".into(), trigger.into());
        }
        Some(other) => {
            return Err(err(
                "metadata.triggers.http.base",
                format!("{other} is not a string"),
            ));
        }
    }
    doc.insert("application".into(), application.into());

    if !locked.variables.is_empty() {
        let mut vars = toml::Table::new();
        for (name, v) in &locked.variables {
            let mut decl = toml::Table::new();
            match &v.default {
                Some(d) => decl.insert("default".into(), d.clone().into()),
                None => decl.insert("required".into(), true.into()),
            };
            if v.secret {
                decl.insert("secret".into(), true.into());
            }
            vars.insert(name.clone(), decl.into());
        }
        doc.insert("variables".into(), vars.into());
    }

    // Triggers, grouped by type in their order (`[[trigger.http]]`, …): other types are
    // refused by the `spin.toml` mapping, naming them.
    let mut triggers = toml::Table::new();
    for (i, t) in locked.triggers.iter().enumerate() {
        let at = format!("triggers[{i}]");
        let mut table = match &t.trigger_config {
            Value::Null => toml::Table::new(),
            config @ Value::Object(_) => toml::Table::try_from(config.clone()).map_err(|e| {
                err(
                    &format!("{at}.trigger_config"),
                    format!("cannot be read as a table: {e}"),
                )
            })?,
            other => {
                return Err(err(
                    &format!("{at}.trigger_config"),
                    format!("{other} is not an object"),
                ));
            }
        };
        if let Some(id) = &t.id {
            table.insert("id".into(), id.clone().into());
        }
        if !is_plain_id(&t.trigger_type) {
            return Err(err(
                &format!("{at}.trigger_type"),
                format!("{:?} is not a trigger type", t.trigger_type),
            ));
        }
        let list = triggers
            .entry(t.trigger_type.clone())
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        if let toml::Value::Array(list) = list {
            list.push(table.into());
        }
    }
    doc.insert("trigger".into(), triggers.into());

    let mut files = Vec::new();
    let mut components = toml::Table::new();
    let mut seen = BTreeSet::new();
    for (i, c) in locked.components.iter().enumerate() {
        let at = format!("components[{i}]");
        if !is_plain_id(&c.id) {
            return Err(err(
                &format!("{at}.id"),
                format!(
                    "{:?} is not a component id (letters, digits, '-' and '_' only)",
                    c.id
                ),
            ));
        }
        if !seen.insert(c.id.clone()) {
            return Err(err(
                &format!("{at}.id"),
                format!("{:?} appears twice", c.id),
            ));
        }
        if let Some(dep) = c.dependencies.keys().next() {
            return Err(err(
                &format!("{at}.dependencies.{dep}"),
                "component dependencies are not supported; compose the component first \
                 (`wac plug`) and push it again"
                    .into(),
            ));
        }
        let mut table = toml::Table::new();
        if c.source.content_type != "application/wasm" {
            return Err(err(
                &format!("{at}.source.content_type"),
                format!("{:?}; expected \"application/wasm\"", c.source.content_type),
            ));
        }
        let wasm = format!("wasm/{}.wasm", c.id);
        files.push((
            wasm.clone(),
            content(&c.source.content, &format!("{at}.source"), origin)?,
        ));
        table.insert("source".into(), wasm.into());
        if let Some(d) = string_meta(&c.metadata, "description", &format!("{at}.metadata"))? {
            table.insert("description".into(), d.into());
        }
        for (meta_key, spin_key) in COMPONENT_METADATA {
            match c.metadata.get(*meta_key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    let mut list = Vec::with_capacity(items.len());
                    for (j, item) in items.iter().enumerate() {
                        let Value::String(s) = item else {
                            return Err(err(
                                &format!("{at}.metadata.{meta_key}[{j}]"),
                                format!("{item} is not a string"),
                            ));
                        };
                        list.push(toml::Value::String(s.clone()));
                    }
                    if !list.is_empty() {
                        table.insert((*spin_key).into(), list.into());
                    }
                }
                Some(other) => {
                    return Err(err(
                        &format!("{at}.metadata.{meta_key}"),
                        format!("{other} is not a list of strings"),
                    ));
                }
            }
        }
        if !c.env.is_empty() {
            table.insert("environment".into(), string_table(&c.env).into());
        }
        if !c.config.is_empty() {
            table.insert("variables".into(), string_table(&c.config).into());
        }
        if !c.files.is_empty() {
            let root = format!("files/{}", c.id);
            let mut paths = BTreeSet::new();
            for (j, f) in c.files.iter().enumerate() {
                let key = format!("{at}.files[{j}]");
                let path = file_path(&f.path).map_err(|p| err(&format!("{key}.path"), p))?;
                if !paths.insert(path.clone()) {
                    return Err(err(
                        &format!("{key}.path"),
                        format!("{path:?} appears twice"),
                    ));
                }
                files.push((format!("{root}/{path}"), content(&f.content, &key, origin)?));
                if files.len() > MAX_LOCKED_FILES {
                    return Err(err(
                        &key,
                        format!(
                            "more than {MAX_LOCKED_FILES} files; Spin pushes no app this large"
                        ),
                    ));
                }
            }
            // A file and a directory of one name: both cannot be written.
            for p in &paths {
                if let Some((dir, _)) = p.rsplit_once('/')
                    && let Some(clash) = ancestors(dir).find(|a| paths.contains(*a))
                {
                    return Err(err(
                        &format!("{at}.files"),
                        format!("{clash:?} is both a file and the directory of {p:?}"),
                    ));
                }
            }
            let mut mount = toml::Table::new();
            mount.insert("source".into(), root.into());
            mount.insert("destination".into(), "/".into());
            table.insert("files".into(), vec![toml::Value::Table(mount)].into());
        }
        components.insert(c.id.clone(), table.into());
    }
    doc.insert("component".into(), components.into());

    let spin_toml = toml::to_string(&doc)
        .map_err(|e| err("(document)", format!("cannot be written as spin.toml: {e}")))?;
    Ok(LockedLayout {
        spin_toml,
        files,
        notes,
    })
}

/// A component id or trigger type usable as a path segment and a TOML key.
fn is_plain_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn string_table(m: &BTreeMap<String, String>) -> toml::Table {
    m.iter()
        .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
        .collect()
}

/// Where a content reference's bytes come from: a digest, else inline bytes. A `source` URL
/// alone (a locked app made from a local directory, never pushed) names nothing a registry has.
fn content(c: &ContentRef, key: &str, origin: &str) -> Result<Content, ManifestError> {
    let err = |problem: String| ManifestError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        problem,
    };
    if let Some(d) = &c.digest {
        return d
            .parse::<Digest>()
            .map(Content::Digest)
            .map_err(|e| err(format!("digest: {e}")));
    }
    if let Some(b64) = &c.inline {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Content::Inline)
            .map_err(|e| err(format!("inline: not base64: {e}")));
    }
    Err(err(match &c.source {
        Some(url) => format!(
            "names its content by URL only ({url:?}); an app from a registry names it by digest"
        ),
        None => "has neither a digest nor inline content".to_owned(),
    }))
}

/// A file's path inside the component's file tree: relative, `/`-separated plain segments
/// (Spin's `is_safe_to_join`), normalised.
fn file_path(raw: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "{raw:?} {why}; expected a relative path like \"static/a.css\""
        ))
    };
    if raw.starts_with('/') {
        return bad("is absolute");
    }
    if raw.contains('\\') || raw.contains('\0') {
        return bad("contains '\\' or NUL");
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return bad("contains '..'"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return bad("names no file");
    }
    Ok(parts.join("/"))
}

/// `a/b/c`, `a/b`, `a`.
fn ancestors(dir: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(dir);
    std::iter::from_fn(move || {
        let cur = next?;
        next = cur.rsplit_once('/').map(|(parent, _)| parent);
        Some(cur)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::spin::SpinApp;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    /// What `spin registry push` stores for a two-component app (Spin 3's `LockedApp`
    /// serialisation: component metadata, trigger config, inline small files).
    fn sample() -> String {
        format!(
            r#"{{
  "spin_lock_version": 1,
  "must_understand": ["host_requirements"],
  "metadata": {{
    "name": "kv-app", "version": "1.2.0", "authors": ["a"],
    "triggers": {{"http": {{"base": "/"}}}},
    "trigger": {{"type": "http", "base": "/"}}
  }},
  "host_requirements": {{"local_service_chaining": "optional"}},
  "variables": {{"greeting": {{"default": "hi"}}, "token": {{"secret": true}}}},
  "triggers": [
    {{"id": "trigger-kv", "trigger_type": "http", "trigger_config": {{"route": "/kv/...", "component": "kv"}}}},
    {{"id": "trigger-vars", "trigger_type": "http", "trigger_config": {{"route": "/vars", "component": "vars", "executor": {{"type": "spin"}}}}}}
  ],
  "components": [
    {{"id": "kv", "metadata": {{"key_value_stores": ["default"], "allowed_outbound_hosts": []}},
      "source": {{"content_type": "application/wasm", "digest": "{D1}"}},
      "files": [{{"digest": "{D2}", "path": "static/big.css"}}, {{"inline": "aGk=", "path": "index.html"}}]}},
    {{"id": "vars", "source": {{"content_type": "application/wasm", "digest": "{D1}"}},
      "config": {{"greeting": "{{{{ greeting }}}}"}}, "env": {{"MODE": "x"}}}}
  ]
}}"#
        )
    }

    #[test]
    fn a_locked_app_lays_out_as_a_spin_directory_the_spin_mapping_reads() {
        let l = layout(sample().as_bytes(), "reg/app", None).unwrap();
        let d1: Digest = D1.parse().unwrap();
        let d2: Digest = D2.parse().unwrap();
        assert_eq!(
            l.files,
            vec![
                ("wasm/kv.wasm".to_owned(), Content::Digest(d1)),
                ("files/kv/static/big.css".to_owned(), Content::Digest(d2)),
                (
                    "files/kv/index.html".to_owned(),
                    Content::Inline(b"hi".to_vec())
                ),
                ("wasm/vars.wasm".to_owned(), Content::Digest(d1)),
            ]
        );
        let app = SpinApp::parse(&l.spin_toml, "reg/app (spin.toml)").unwrap();
        let listing = vec![
            "files/kv/index.html".to_owned(),
            "files/kv/static/big.css".to_owned(),
            "wasm/kv.wasm".to_owned(),
            "wasm/vars.wasm".to_owned(),
        ];
        let converted = app.convert(&listing).unwrap();
        let text = converted.text;
        for needle in [
            "name = \"kv-app\"",
            "version = \"1.2.0\"",
            "source = \"wasm/kv.wasm\"",
            "routes = [\"/kv/...\"]",
            "routes = [{ exact = \"/vars\" }]",
            "key_value_stores = [\"default\"]",
            "files = [{ source = \"files/kv\", destination = \"/\" }]",
            "greeting = { default = \"hi\" }",
            "token = { required = true, secret = true }",
            "greeting = \"{{ greeting }}\"",
            "\"MODE\" = \"x\"",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
    }

    #[test]
    fn the_signed_name_wins_with_a_note() {
        let l = layout(sample().as_bytes(), "o", Some("shop")).unwrap();
        assert!(l.spin_toml.contains("name = \"shop\""), "{}", l.spin_toml);
        assert!(l.notes[0].contains("\"shop\"") && l.notes[0].contains("\"kv-app\""));
    }

    #[test]
    fn what_outpost_cannot_honour_is_refused_naming_the_field() {
        let cases: Vec<(String, &str, &str)> = vec![
            ("[]".to_owned(), "(document)", "not a Spin locked app"),
            (
                sample().replace("\"spin_lock_version\": 1", "\"spin_lock_version\": 7"),
                "spin_lock_version",
                "0 or 1",
            ),
            (
                sample().replace("[\"host_requirements\"]", "[\"telepathy\"]"),
                "must_understand[0]",
                "does not know",
            ),
            (
                sample().replace("\"optional\"", "\"required\""),
                "host_requirements.local_service_chaining",
                "service chaining",
            ),
            (
                sample().replace("\"id\": \"kv\"", "\"id\": \"../kv\""),
                "components[0].id",
                "not a component id",
            ),
            (
                sample().replace("\"id\": \"vars\"", "\"id\": \"kv\""),
                "components[1].id",
                "appears twice",
            ),
            (
                sample().replace("\"path\": \"index.html\"", "\"path\": \"../../etc/passwd\""),
                "components[0].files[1].path",
                "contains '..'",
            ),
            (
                sample().replace("\"path\": \"index.html\"", "\"path\": \"/etc/passwd\""),
                "components[0].files[1].path",
                "is absolute",
            ),
            (
                sample().replace("\"path\": \"index.html\"", "\"path\": \"static\""),
                "components[0].files",
                "both a file and the directory",
            ),
            (
                sample().replace(
                    &format!("\"digest\": \"{D2}\""),
                    "\"source\": \"file:///x\"",
                ),
                "components[0].files[0]",
                "by URL only",
            ),
            (
                sample().replace(&format!("\"digest\": \"{D2}\""), "\"digest\": \"md5:00\""),
                "components[0].files[0]",
                "digest",
            ),
            (
                sample().replace("\"inline\": \"aGk=\"", "\"inline\": \"*\""),
                "components[0].files[1]",
                "not base64",
            ),
            (
                sample().replace(
                    "\"env\": {\"MODE\": \"x\"}",
                    "\"dependencies\": {\"a:b/c\": {}}",
                ),
                "components[1].dependencies.a:b/c",
                "not supported",
            ),
            (
                sample().replace("\"application/wasm\"", "\"text/plain\""),
                "components[0].source.content_type",
                "expected \"application/wasm\"",
            ),
        ];
        for (json, key, needle) in cases {
            let e = layout(json.as_bytes(), "o", None).unwrap_err();
            assert_eq!(e.key(), Some(key), "{e}");
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn refusals_of_the_spin_mapping_reach_a_locked_app_too() {
        // A Redis trigger and SQLite: the spin.toml mapping refuses both, naming the field.
        let json = sample().replace(
            "\"trigger_type\": \"http\", \"trigger_config\": {\"route\": \"/vars\"",
            "\"trigger_type\": \"redis\", \"trigger_config\": {\"channel\": \"c\"",
        );
        let l = layout(json.as_bytes(), "o", None).unwrap();
        let e = SpinApp::parse(&l.spin_toml, "o").unwrap_err().to_string();
        assert!(e.contains("trigger.redis"), "{e}");
        let json = sample().replace("\"key_value_stores\"", "\"databases\"");
        let l = layout(json.as_bytes(), "o", None).unwrap();
        let e = SpinApp::parse(&l.spin_toml, "o").unwrap_err().to_string();
        assert!(e.contains("sqlite_databases"), "{e}");
    }
}
