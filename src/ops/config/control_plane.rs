//! The `[control_plane]` table: where the node agent (`sync`) finds its control plane and
//! which key signs the desired states it accepts.
//!
//! Owns: the shape and validation of the agent's settings (URL, pinned keys, enrolment token,
//! poll interval, request timeout, extra CA, node name and labels).
//! Must not: read key, token or CA files or talk to the network — the agent does that at start,
//! so `outpost run --check` and a start judge them the same way.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{host_path, node_name_field, path_field};
use crate::base::keyline;
use crate::base::units::{Field, FieldError, Fields, quote};

/// `[control_plane]` keys.
pub(super) const CONTROL_PLANE_KEYS: &[&str] = &[
    "url",
    "key",
    "token",
    "token_file",
    "poll_interval",
    "request_timeout",
    "ca",
    "name",
    "labels",
];
/// How often the agent asks for its desired state when `poll_interval` is not set.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// How long one control-plane request (including a bundle download) may take by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest `poll_interval`: tests poll every few hundred milliseconds; faster is a mistake.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest `poll_interval` and `request_timeout`.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Labels the node sets itself (from the build target).
pub const NODE_SET_LABELS: &[&str] = &["arch", "os"];

/// `[control_plane]`: the node agent is on when this table is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneConfig {
    /// `https://host[:port]` (`http://` only for a loopback control plane): the first of
    /// `urls`, the one an enrolment is recorded against.
    pub url: String,
    /// Every control-plane URL, in order (`url = ["https://cp-a:7070", "https://cp-b:7070"]`):
    /// replicas of one control plane. The agent sticks to one and moves to the next when it
    /// cannot be reached or answers 502/503/504.
    pub urls: Vec<String>,
    /// Pinned desired-state keys: each a public key line or a path to a `.pub` file (absolute
    /// after `Config::load`), with its key path (`control_plane.key[i]`) for errors. More than one
    /// while the control plane rotates its key.
    pub keys: Vec<(String, String)>,
    /// One-time enrolment token (only needed until the node is enrolled).
    pub token: Option<String>,
    /// A file holding the token instead (absolute after `Config::load`).
    pub token_file: Option<PathBuf>,
    pub poll_interval: Duration,
    pub request_timeout: Duration,
    /// An extra trusted root (PEM) for a control plane with a private CA.
    pub ca: Option<PathBuf>,
    /// Name reported at enrolment; `None`: the node name (`[node] name` or the host name).
    pub name: Option<String>,
    /// Labels reported at enrolment (besides `arch` and `os`, which the node sets).
    pub labels: BTreeMap<String, String>,
}

impl ControlPlaneConfig {
    pub(super) fn resolve_relative_to(&mut self, base: &Path) {
        for (_, key) in &mut self.keys {
            keyline::resolve_relative(key, base);
        }
        for p in [&mut self.token_file, &mut self.ca].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

pub(super) fn parse_control_plane(
    mut t: Fields,
    top_level: &[&str],
) -> Result<ControlPlaneConfig, FieldError> {
    let url_field = t.required(
        "url",
        "the control plane's URL, like \"https://cp.example:7070\", or a list of its replicas' URLs",
    )?;
    let urls = match url_field.value {
        toml::Value::String(_) => {
            let key = url_field.key.clone();
            let url = url_field.string()?;
            check_url(&url).map_err(|problem| FieldError { key, problem })?;
            vec![url]
        }
        _ => url_field
            .distinct_strings(
                |u| check_url(u).map(|()| u.trim_end_matches('/').to_owned()),
                |u, first| format!("{:?} is listed twice (first as {first})", quote(u)),
                "no URLs; expected at least one, like [\"https://cp.example:7070\"]",
            )?
            .into_iter()
            .map(|(_, u)| u)
            .collect(),
    };
    let url = urls[0].clone();

    let key_field = t.required(
        "key",
        "the control plane's public key line (outpost-public-key-v1 ...) or a .pub file path, \
         or a list of them",
    )?;
    let key_list = match key_field.value {
        toml::Value::String(_) => {
            let key = key_field.key.clone();
            vec![(key, key_field.string()?)]
        }
        _ => key_field.strings()?,
    };
    if key_list.is_empty() {
        return Err(FieldError {
            key: "control_plane.key".into(),
            problem: "no keys; expected at least one public key line or .pub file path".into(),
        });
    }
    let mut keys = Vec::with_capacity(key_list.len());
    for (key, s) in key_list {
        let s = s.trim().to_owned();
        if s.is_empty() {
            return Err(FieldError {
                key,
                problem: "empty; expected a public key line or a .pub file path".into(),
            });
        }
        // A key line is parsed where the key is used (`Node::from_config`, which
        // `outpost run --check` runs too); here only a path's shape is checked.
        if !keyline::is_key_line(&s) {
            host_path(&s).map_err(|problem| FieldError {
                key: key.clone(),
                problem,
            })?;
        }
        keys.push((key, s));
    }

    let token = match t.take("token") {
        Some(f) => {
            let key = f.key.clone();
            let s = f.string()?;
            if s.trim().is_empty() {
                return Err(FieldError {
                    key,
                    problem: "empty token".into(),
                });
            }
            Some(s.trim().to_owned())
        }
        None => None,
    };
    let token_file = match t.take("token_file") {
        Some(f) if token.is_some() => {
            return Err(FieldError {
                key: f.key.clone(),
                problem: "set either token or token_file, not both".into(),
            });
        }
        f => f.map(path_field).transpose()?,
    };
    let poll_interval = match t.take("poll_interval") {
        Some(f) => bounded(f, MIN_POLL_INTERVAL)?,
        None => DEFAULT_POLL_INTERVAL,
    };
    let request_timeout = match t.take("request_timeout") {
        Some(f) => bounded(f, Duration::from_millis(100))?,
        None => DEFAULT_REQUEST_TIMEOUT,
    };
    let ca = t.take("ca").map(path_field).transpose()?;
    let name = t.take("name").map(node_name_field).transpose()?;
    let mut labels = BTreeMap::new();
    if let Some(f) = t.take("labels") {
        for (k, v) in f.table()?.drain() {
            let key = v.key.clone();
            if !valid_label(&k) {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "invalid label key {:?}; expected 1-63 of [A-Za-z0-9._-]",
                        quote(&k)
                    ),
                });
            }
            if NODE_SET_LABELS.contains(&k.as_str()) {
                return Err(FieldError {
                    key,
                    problem: format!("label {k:?} is set by the node itself"),
                });
            }
            let value = v.string()?;
            if !valid_label(&value) {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "invalid label value {:?}; expected 1-63 of [A-Za-z0-9._-]",
                        quote(&value)
                    ),
                });
            }
            labels.insert(k, value);
        }
    }
    t.finish_section(CONTROL_PLANE_KEYS, top_level)?;
    Ok(ControlPlaneConfig {
        url,
        urls,
        keys,
        token,
        token_file,
        poll_interval,
        request_timeout,
        ca,
        name,
        labels,
    })
}

fn bounded(f: Field, min: Duration) -> Result<Duration, FieldError> {
    let key = f.key.clone();
    let d = f.duration()?;
    if d < min || d > MAX_INTERVAL {
        return Err(FieldError {
            key,
            problem: format!(
                "{}ms is out of range; expected {}ms to 24h",
                d.as_millis(),
                min.as_millis()
            ),
        });
    }
    Ok(d)
}

/// `https://host[:port][/]`, or `http://` to a loopback host.
fn check_url(url: &str) -> Result<(), String> {
    let expected = "expected https://host[:port] (http:// only for a loopback control plane)";
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{:?} is not a URL; {expected}", quote(url)))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{:?} has no host; {expected}", quote(url)))?;
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "{:?} has a path; {expected} (the API paths are fixed)",
            quote(url)
        ));
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{:?}: plain http is only allowed to a loopback address; {expected}",
                    quote(url)
                ))
            }
        }
        _ => Err(format!("{:?}: {expected}", quote(url))),
    }
}

/// Label keys and values: 1-63 characters of `[A-Za-z0-9._-]` (a node's `[control_plane]
/// labels`, and the control plane's selectors and enrolment labels).
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
