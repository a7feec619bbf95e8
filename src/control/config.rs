//! The control plane's config file (`outpost control-plane --config FILE`).
//!
//! Owns: parsing and validating it into [`ControlConfig`] — listen addresses, state directory,
//! operator keys, limits and durations, optional `[tls]` — with errors that name the file and
//! the key, and the rule that cleartext listeners must be loopback.
//! Must not: bind sockets, read key or certificate files, or create directories — the CLI does
//! that after the whole file validated. See `config/control-plane.toml` for a documented example.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base::units::{Field, FieldError, Fields, parse_document};

/// Default `desired_state_ttl`: a node that cannot reach the control plane keeps applying its
/// document for a day; after that it keeps what it runs but refuses the stale document.
pub const DEFAULT_DESIRED_STATE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default `max_bundle_size`: the node's default cap, so anything a node accepts uploads.
pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = crate::ops::config::DEFAULT_MAX_BUNDLE_SIZE;
/// Default `node_offline_after`: six missed polls at the node's default 10 s interval.
pub const DEFAULT_NODE_OFFLINE_AFTER: Duration = Duration::from_secs(60);
/// Default `max_connections`: open API connections at most; the next accept waits for one to
/// close (and near the cap idle and slow ones are closed first). A fleet polls over short-lived
/// or keep-alive connections, so this bounds memory, not throughput.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `header_timeout`: connect (or the first byte of a keep-alive connection's next
/// request) to a complete request head, TLS handshake included; the nodes' default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = crate::ops::config::DEFAULT_HEADER_TIMEOUT;
/// Default `idle_timeout`: a keep-alive connection with no request in flight. Agents poll every
/// few seconds to a minute; one that polls less often reconnects.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// The TTL must leave room for re-signing at half-life and for clock skew.
const MIN_TTL: Duration = Duration::from_secs(60);

const TOP_KEYS: &[&str] = &[
    "listen",
    "state_dir",
    "operators",
    "desired_state_ttl",
    "max_bundle_size",
    "node_offline_after",
    "max_connections",
    "header_timeout",
    "idle_timeout",
    "tls",
];
const TLS_KEYS: &[&str] = &["cert", "key"];

/// A validated control-plane config. Relative paths are resolved against the file's directory
/// by [`ControlConfig::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// At least one; all loopback unless `tls` is set.
    pub listen: Vec<SocketAddr>,
    /// Holds `control.key`, `control.pub`, the sled database and uploaded bundles.
    pub state_dir: PathBuf,
    /// Operator public keys: each a key line (`outpost-public-key-v1 ...`) or a path to a
    /// `.pub` file, with its key path (`operators[i]`) for errors. At least one.
    pub operators: Vec<(String, String)>,
    pub desired_state_ttl: Duration,
    pub max_bundle_size: u64,
    /// A node not heard from for this long is listed as offline.
    pub node_offline_after: Duration,
    /// The API listeners' connection cap and deadlines.
    pub limits: ListenLimits,
    pub tls: Option<TlsFiles>,
    origin: String,
}

/// `max_connections`, `header_timeout`, `idle_timeout`: what one API connection may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for ListenLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// `[tls]`: PEM certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a config could not be used: the daemon config's error type, so both files report
/// `<file>: <key>: <problem>` the same way.
pub use crate::ops::config::ConfigError as ControlConfigError;

impl ControlConfig {
    /// Parses and validates `text`; `origin` (the file path) prefixes errors. Relative paths
    /// stay relative.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ControlConfigError> {
        Ok(parse_document(text, origin, |t| parse_table(t, origin))?)
    }

    /// Reads `path` and parses it, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self, ControlConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ControlConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        resolve(&mut cfg.state_dir);
        if let Some(tls) = &mut cfg.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        for (_, k) in &mut cfg.operators {
            crate::base::keyline::resolve_relative(k, &dir);
        }
        Ok(cfg)
    }

    /// The file this came from, for errors found later (unreadable operator key files).
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

fn parse_table(table: toml::Table, origin: &str) -> Result<ControlConfig, FieldError> {
    let mut f = Fields::new("", table);
    let listen = parse_listen(f.required("listen", "an address or a list of addresses")?)?;
    let state_dir = f
        .required("state_dir", "a directory path")?
        .string()
        .map(PathBuf::from)?;
    if state_dir.as_os_str().is_empty() {
        return Err(FieldError {
            key: "state_dir".into(),
            problem: "empty path".into(),
        });
    }
    let ops_field = f.required(
        "operators",
        "a list of operator public keys (key lines or .pub file paths)",
    )?;
    let ops_key = ops_field.key.clone();
    let operators = ops_field.strings()?;
    if operators.is_empty() {
        return Err(FieldError {
            key: ops_key,
            problem: "empty; at least one operator key is required (`outpost bundle keygen` \
                      makes one)"
                .into(),
        });
    }
    for (key, k) in &operators {
        if k.trim().is_empty() {
            return Err(FieldError {
                key: key.clone(),
                problem: "empty; expected a key line or a .pub file path".into(),
            });
        }
        if crate::base::keyline::is_key_line(k)
            && let Err(e) = crate::bundle::sign::parse_public_key(k.trim_end())
        {
            return Err(FieldError {
                key: key.clone(),
                problem: e.to_string(),
            });
        }
    }
    let desired_state_ttl = match f.take("desired_state_ttl") {
        Some(v) => {
            let key = v.key.clone();
            let d = v.duration()?;
            if d < MIN_TTL {
                return Err(FieldError {
                    key,
                    problem: format!("{d:?} is too short; at least 60s"),
                });
            }
            d
        }
        None => DEFAULT_DESIRED_STATE_TTL,
    };
    let max_bundle_size = match f.take("max_bundle_size") {
        Some(v) => {
            let key = v.key.clone();
            let n = v.bytes()?;
            if n == 0 {
                return Err(FieldError {
                    key,
                    problem: "must be more than 0 bytes".into(),
                });
            }
            n
        }
        None => DEFAULT_MAX_BUNDLE_SIZE,
    };
    let node_offline_after = match f.take("node_offline_after") {
        Some(v) => {
            let key = v.key.clone();
            let d = v.duration()?;
            if d.is_zero() {
                return Err(FieldError {
                    key,
                    problem: "must be more than 0".into(),
                });
            }
            d
        }
        None => DEFAULT_NODE_OFFLINE_AFTER,
    };
    let limits = ListenLimits {
        max_connections: match f.take("max_connections") {
            Some(v) => v.integer_in(1u32, 1_000_000)? as usize,
            None => DEFAULT_MAX_CONNECTIONS,
        },
        header_timeout: match f.take("header_timeout") {
            Some(v) => v.duration_in(crate::ops::config::HEADER_TIMEOUT_RANGE, "\"10s\"")?,
            None => DEFAULT_HEADER_TIMEOUT,
        },
        idle_timeout: match f.take("idle_timeout") {
            Some(v) => v.duration_in(crate::ops::config::IDLE_TIMEOUT_RANGE, "\"75s\"")?,
            None => DEFAULT_IDLE_TIMEOUT,
        },
    };
    let tls = match f.take("tls") {
        Some(v) => {
            let mut t = v.table()?;
            let cert = t
                .required("cert", "a PEM certificate chain path")?
                .string()?;
            let key = t.required("key", "a PEM private key path")?.string()?;
            t.finish_section(TLS_KEYS, TOP_KEYS)?;
            Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            })
        }
        None => None,
    };
    f.finish(TOP_KEYS)?;
    if tls.is_none()
        && let Some(a) = listen.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(FieldError {
            key: "listen".into(),
            problem: format!(
                "{a} is not a loopback address; plain HTTP is only allowed on loopback \
                 (add [tls] cert and key to listen elsewhere)"
            ),
        });
    }
    Ok(ControlConfig {
        listen,
        state_dir,
        operators,
        desired_state_ttl,
        max_bundle_size,
        node_offline_after,
        limits,
        tls,
        origin: origin.to_owned(),
    })
}

fn parse_listen(field: Field) -> Result<Vec<SocketAddr>, FieldError> {
    let key = field.key.clone();
    let items: Vec<(String, String)> = match field.value {
        toml::Value::String(s) => vec![(key.clone(), s)],
        _ => field.strings()?,
    };
    if items.is_empty() {
        return Err(FieldError {
            key,
            problem: "empty; expected at least one address like \"127.0.0.1:7070\"".into(),
        });
    }
    items
        .into_iter()
        .map(|(k, s)| {
            s.parse::<SocketAddr>().map_err(|_| FieldError {
                key: k,
                problem: format!(
                    "{s:?} is not an address like \"127.0.0.1:7070\" or \"[::1]:7070\""
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KEY: &str = "outpost-public-key-v1 0011223344556677 AAAA";

    fn op_key() -> String {
        crate::bundle::sign::SigningKey::from_seed(&[1; 32])
            .verifying_key()
            .to_public_text()
            .trim_end()
            .to_owned()
    }

    fn parse(text: &str) -> Result<ControlConfig, ControlConfigError> {
        ControlConfig::parse(text, "cp.toml")
    }

    #[test]
    fn minimal_and_full() {
        let k = op_key();
        let c = parse(&format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"s\"\noperators = [\"{k}\", \"ops.pub\"]\n"
        ))
        .unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(c.desired_state_ttl, DEFAULT_DESIRED_STATE_TTL);
        assert_eq!(c.limits, ListenLimits::default());
        assert_eq!(c.max_bundle_size, 64 << 20);
        assert_eq!(c.operators.len(), 2);
        assert_eq!(c.operators[1].0, "operators[1]");
        let c = parse(&format!(
            "listen = [\"0.0.0.0:7070\", \"[::1]:7071\"]\nstate_dir = \"/s\"\noperators = \
             [\"{k}\"]\ndesired_state_ttl = \"2h\"\nmax_bundle_size = \"8MiB\"\n\
             node_offline_after = \"30s\"\nmax_connections = 100\nheader_timeout = \"2s\"\n\
             idle_timeout = 500\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
        ))
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.desired_state_ttl, Duration::from_secs(7200));
        assert_eq!(c.max_bundle_size, 8 << 20);
        assert_eq!(c.node_offline_after, Duration::from_secs(30));
        assert_eq!(
            c.limits,
            ListenLimits {
                max_connections: 100,
                header_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_millis(500),
            }
        );
        assert_eq!(c.tls.unwrap().cert, PathBuf::from("c.pem"));
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(include_str!("../../config/control-plane.toml")).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.tls.is_some());
        assert_eq!(c.desired_state_ttl, DEFAULT_DESIRED_STATE_TTL);
        assert_eq!(c.limits, ListenLimits::default());
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let k = op_key();
        let cases: &[(String, &str)] = &[
            (
                format!("listen = \"0.0.0.0:7070\"\nstate_dir = \"s\"\noperators = [\"{k}\"]\n"),
                "cp.toml: listen: 0.0.0.0:7070 is not a loopback address",
            ),
            (
                "listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\noperators = []\n".to_owned(),
                "cp.toml: operators: empty",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\noperators = [\"{k}\"]\nlisen = 1\n"
                ),
                "cp.toml: lisen: unknown top-level key",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\noperators = [\"{k}\"]\n[tls]\n\
                     cert = \"c\"\nkey = \"k\"\nextra = 1\n"
                ),
                "cp.toml: tls.extra: unknown key in [tls]",
            ),
            (
                format!("listen = \"nope\"\nstate_dir = \"s\"\noperators = [\"{k}\"]\n"),
                "cp.toml: listen: \"nope\" is not an address",
            ),
            (
                format!("listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\noperators = [\"{KEY}\"]\n"),
                "cp.toml: operators[0]:",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\noperators = [\"{k}\"]\n\
                     desired_state_ttl = \"5s\"\n"
                ),
                "cp.toml: desired_state_ttl: 5s is too short",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\noperators = [\"{k}\"]\n\
                     header_timeout = \"1h\"\n"
                ),
                "cp.toml: header_timeout: 3600s is out of range; expected 100ms to 300s",
            ),
            (
                format!(
                    "listen = \"127.0.0.1:1\"\nstate_dir = \"s\"\noperators = [\"{k}\"]\n\
                     max_connections = 0\n"
                ),
                "cp.toml: max_connections:",
            ),
            (
                "state_dir = \"s\"\noperators = [\"x\"]\n".to_owned(),
                "cp.toml: listen: missing",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}\n  wanted: {want}");
        }
    }
}
