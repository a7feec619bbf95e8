//! Registry credentials and the `WWW-Authenticate` challenge: anonymous, HTTP basic, and bearer
//! tokens from the challenge's realm (distribution's token flow, what Docker Hub, GHCR and most
//! registries use).
//!
//! Owns: [`Credentials`] (explicit, or from the Docker config file as Spin reads it), parsing
//! challenges, and the token response shape. The client ([`super::client`]) runs the flow:
//! answer one 401 with basic credentials or a fetched token, cache the result per registry,
//! and report a second 401 as an error instead of trying again.
//! Must not: print, log or put into an error message a password, an `auth` string or a token.
//! Credential helpers (`credsStore`, `credHelpers`) are not run: they are programs, and a node
//! daemon does not execute what a config file names. Pass `--username/--password` instead.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// A user name and password (or token used as a password). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <password hidden>)", self.username)
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The `Authorization: Basic …` header value.
    pub(crate) fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// Credentials for `registry` (`host[:port]`) from the Docker config file:
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. `None` when there is no file
    /// or no entry for the registry.
    pub fn from_docker_config(registry: &str) -> Result<Option<Self>, String> {
        let Some(path) = docker_config_path() else {
            return Ok(None);
        };
        Self::from_docker_config_file(&path, registry)
    }

    /// [`Self::from_docker_config`] from a given file.
    pub fn from_docker_config_file(path: &Path, registry: &str) -> Result<Option<Self>, String> {
        // A config file is small; a huge one is not a config file.
        const MAX: u64 = 1 << 20;
        let bytes = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX => {
                return Err(format!(
                    "{}: {} bytes; a Docker config file is at most {MAX} bytes",
                    path.display(),
                    m.len()
                ));
            }
            Ok(_) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        parse_docker_config(&bytes, registry).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Where the Docker config file is: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Reads `auths.<registry>.auth` (base64 `user:password`) or `username`/`password` from a
/// Docker config file's bytes. Keys may be written `host:port`, `https://host:port` or
/// `https://host/v1/`; they match on the host and port.
pub fn parse_docker_config(json: &[u8], registry: &str) -> Result<Option<Credentials>, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
        #[serde(default)]
        cred_helpers: std::collections::BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let file: File =
        serde_json::from_slice(json).map_err(|e| format!("not a Docker config file: {e}"))?;
    let key_host = |k: &str| {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_ascii_lowercase()
    };
    let entry = file.auths.iter().find(|(k, _)| key_host(k) == registry);
    let Some((key, entry)) = entry else {
        if let Some(helper) = file
            .cred_helpers
            .iter()
            .find(|(k, _)| key_host(k) == registry)
            .map(|(_, h)| h)
        {
            return Err(format!(
                "credHelpers names the helper {helper:?} for {registry}; credential helpers are \
                 not supported: pass --username and --password (or OUTPOST_REGISTRY_PASSWORD)"
            ));
        }
        return Ok(None);
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| format!("auths.{key:?}.auth is not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("auths.{key:?}.auth is not base64 of UTF-8 text"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths.{key:?}.auth is not base64 of user:password"))?;
        return Ok(Some(Credentials::new(user, pass)));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials::new(u.clone(), p.clone()))),
        _ => Ok(None),
    }
}

/// What a `WWW-Authenticate` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub(crate) fn parse_challenge(header: &str) -> Result<Challenge, String> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(format!(
            "WWW-Authenticate scheme {scheme:?}: only Basic and Bearer are supported"
        ));
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("WWW-Authenticate: cannot parse {rest:?}"))?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q
                .find('"')
                .ok_or_else(|| "WWW-Authenticate: unclosed quote".to_owned())?;
            (&q[..end], &q[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        match key.as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            "scope" => scope = Some(value.to_owned()),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    let realm = realm.ok_or_else(|| "WWW-Authenticate: Bearer without a realm".to_owned())?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return Err(format!(
            "WWW-Authenticate: realm {realm:?} is not an http(s) URL"
        ));
    }
    Ok(Challenge::Bearer {
        realm,
        service,
        scope,
    })
}

/// A token endpoint's answer: `token` (Docker) or `access_token` (OAuth2).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        let json = format!(
            r#"{{"auths":{{"https://reg.example:5000/v1/":{{"auth":"{auth}"}},
                 "other":{{"username":"u","password":"p"}}}},
               "credHelpers":{{"helped.example":"ecr-login"}}}}"#
        );
        let c = parse_docker_config(json.as_bytes(), "reg.example:5000")
            .expect("parse")
            .expect("entry");
        assert_eq!(c, Credentials::new("alice", "s3cret:x"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = parse_docker_config(json.as_bytes(), "other").expect("parse");
        assert_eq!(c, Some(Credentials::new("u", "p")));
        assert_eq!(
            parse_docker_config(json.as_bytes(), "none").expect("parse"),
            None
        );
        let e = parse_docker_config(json.as_bytes(), "helped.example").expect_err("helper");
        assert!(e.contains("credential helpers are not supported"), "{e}");
        let e = parse_docker_config(br#"{"auths":{"h":{"auth":"!!"}}}"#, "h").expect_err("b64");
        assert!(e.contains("not base64"), "{e}");
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Ok(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#
            ),
            Ok(Challenge::Bearer {
                realm: "https://auth.example/token".to_owned(),
                service: Some("reg".to_owned()),
                scope: Some("repository:a/b:pull,push".to_owned()),
            })
        );
        assert!(parse_challenge("Bearer service=x").is_err());
        assert!(parse_challenge(r#"Bearer realm="file:///etc/passwd""#).is_err());
        assert!(parse_challenge("Negotiate abc").is_err());
        assert!(parse_challenge(r#"Bearer realm="https://x"#).is_err());
    }
}
