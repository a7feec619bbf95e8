//! The TLS side of the daemon config: `listen.https`, `listen.h3` and the `[tls]` table.
//!
//! Owns: the shape and validation of certificate settings (which files, for which host names,
//! whether to generate a development certificate) and their cross-checks with `[listen]`.
//! Must not: read certificate files or parse PEM — `serve::certs` loads them, so a config check
//! and a reload judge files the same way.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ListenConfig, path_field, socket_addr};
use crate::base::outbound::HostPattern;
use crate::base::units::{Field, FieldError, Fields, quote};

/// `[tls]` keys.
pub(super) const TLS_KEYS: &[&str] = &[
    "default_cert",
    "self_signed",
    "cert",
    "reload_interval",
    "handshake_timeout",
];
const CERT_FILE_KEYS: &[&str] = &["cert", "key"];
const TENANT_CERT_KEYS: &[&str] = &["hosts", "cert", "key"];
/// How often certificate files are checked for changes when `tls.reload_interval` is not set.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest `tls.reload_interval`: each check is a few `stat` calls, but a tight loop is a
/// mistake, not a setting.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// Default `tls.handshake_timeout`: how long a client gets to finish its TLS or QUIC handshake.
/// Real clients need one to three round trips (well under a second even over satellite links); a
/// connection still handshaking after this is stalled or hostile, and holds a connection permit.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of `tls.handshake_timeout`: below 100 ms real clients on slow links fail; above five
/// minutes a stalled client holds its connection permit for no reason.
const HANDSHAKE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(300));

/// `[tls]`: where certificates come from. Empty (the default) when no `listen.https` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Served when the client sends no server name (SNI), or one no `[[tls.cert]]` covers.
    pub default_cert: Option<CertFiles>,
    /// Generate a self-signed certificate for `localhost` and `127.0.0.1` at start and use it
    /// as the default certificate. For development and the embedded demo config.
    pub self_signed: bool,
    /// `[[tls.cert]]`: per-tenant certificates chosen by server name, in file order.
    pub certs: Vec<TenantCert>,
    /// How often certificate files are checked for changes (SIGHUP reloads at once).
    pub reload_interval: Duration,
    /// How long a client may take to finish a TLS (or QUIC) handshake before it is dropped.
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            default_cert: None,
            self_signed: false,
            certs: Vec::new(),
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// A PEM certificate chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// Absolute after `Config::load`.
    pub cert: PathBuf,
    /// Absolute after `Config::load`.
    pub key: PathBuf,
}

/// One `[[tls.cert]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCert {
    /// Canonical (lowercase, no trailing dot) exact names or `*.suffix` wildcards; at least one.
    pub hosts: Vec<String>,
    pub files: CertFiles,
}

impl TlsConfig {
    /// Whether `[tls]` names any certificate source.
    pub fn has_certificates(&self) -> bool {
        self.default_cert.is_some() || self.self_signed || !self.certs.is_empty()
    }

    /// Makes relative certificate paths relative to `base`.
    pub(super) fn resolve_relative_to(&mut self, base: &Path) {
        let files = self
            .default_cert
            .iter_mut()
            .chain(self.certs.iter_mut().map(|c| &mut c.files));
        for f in files {
            for p in [&mut f.cert, &mut f.key] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
    }
}

/// Parses `[tls]`.
pub(super) fn parse_tls(mut t: Fields, top_keys: &[&str]) -> Result<TlsConfig, FieldError> {
    let mut out = TlsConfig::default();
    if let Some(f) = t.take("default_cert") {
        out.default_cert = Some(parse_cert_files(f.table()?, CERT_FILE_KEYS)?);
    }
    if let Some(f) = t.take("self_signed") {
        out.self_signed = boolean(f)?;
    }
    if let Some(f) = t.take("reload_interval") {
        let key = f.key.clone();
        let d = f.duration()?;
        if d < MIN_RELOAD_INTERVAL {
            return Err(FieldError {
                key,
                problem: format!(
                    "{d:?} is too short; expected at least {MIN_RELOAD_INTERVAL:?}, like \"5s\""
                ),
            });
        }
        out.reload_interval = d;
    }
    if let Some(f) = t.take("handshake_timeout") {
        let key = f.key.clone();
        let d = f.duration()?;
        let (lo, hi) = HANDSHAKE_TIMEOUT_RANGE;
        if d < lo || d > hi {
            return Err(FieldError {
                key,
                problem: format!("{d:?} is out of range; expected {lo:?} to {hi:?}, like \"10s\""),
            });
        }
        out.handshake_timeout = d;
    }
    if let Some(f) = t.take("cert") {
        if matches!(f.value, toml::Value::Table(_)) {
            return Err(f.error("expected an array of tables, written [[tls.cert]] (two brackets)"));
        }
        // Which entry first claimed each host, for duplicate errors.
        let mut claimed: Vec<(String, String)> = Vec::new();
        for item in f.array()? {
            let mut ct = item.table()?;
            let hosts_field = ct.required(
                "hosts",
                "a list of host names like [\"app.example.com\", \"*.example.net\"]",
            )?;
            let hosts_key = hosts_field.key.clone();
            let mut hosts = Vec::new();
            for (key, raw) in hosts_field.strings()? {
                let host = cert_host(&raw).map_err(|problem| FieldError {
                    key: key.clone(),
                    problem,
                })?;
                if let Some((_, first)) = claimed.iter().find(|(h, _)| *h == host) {
                    return Err(FieldError {
                        key,
                        problem: format!("host {host} is already listed as {first}"),
                    });
                }
                claimed.push((host.clone(), key));
                hosts.push(host);
            }
            if hosts.is_empty() {
                return Err(FieldError {
                    key: hosts_key,
                    problem: "no hosts; expected at least one, like [\"app.example.com\"]"
                        .to_owned(),
                });
            }
            let files = parse_cert_files(ct, TENANT_CERT_KEYS)?;
            out.certs.push(TenantCert { hosts, files });
        }
    }
    t.finish_section(TLS_KEYS, top_keys)?;
    if out.self_signed && out.default_cert.is_some() {
        return Err(FieldError {
            key: "tls.self_signed".to_owned(),
            problem: "self_signed = true generates the default certificate, but \
                      tls.default_cert names one too; keep one of them"
                .to_owned(),
        });
    }
    Ok(out)
}

/// `cert` and `key` of a table (what is left of a `[[tls.cert]]` after `hosts`, or
/// `default_cert`).
fn parse_cert_files(mut t: Fields, known: &[&str]) -> Result<CertFiles, FieldError> {
    let mut path = |name: &str, expected: &str| -> Result<PathBuf, FieldError> {
        path_field(t.required(name, expected)?)
    };
    let cert = path(
        "cert",
        "the path of a PEM certificate chain, leaf certificate first",
    )?;
    let key = path("key", "the path of the certificate's PEM private key")?;
    t.finish(known)?;
    Ok(CertFiles { cert, key })
}

pub(super) fn boolean(f: Field) -> Result<bool, FieldError> {
    match f.value {
        toml::Value::Boolean(b) => Ok(b),
        ref v => Err(f.error(format_args!(
            "expected true or false, got {}",
            crate::base::units::describe(v)
        ))),
    }
}

/// A host a certificate is chosen for: an exact DNS name or `*.suffix`, canonical.
fn cert_host(raw: &str) -> Result<String, String> {
    let expected = "expected a host name like \"app.example.com\" or a wildcard like \
                    \"*.example.com\"";
    if !raw.starts_with('[') && raw.matches(':').count() == 1 {
        return Err(format!(
            "{:?}: certificates are chosen by name, without a port; {expected}",
            quote(raw)
        ));
    }
    match HostPattern::parse(raw) {
        Ok(p @ (HostPattern::Exact(_) | HostPattern::Subdomains(_))) => Ok(p.to_string()),
        Ok(HostPattern::Any) => Err(format!(
            "\"*\" matches every name; use tls.default_cert for the certificate served when \
             no other one matches; {expected}"
        )),
        Ok(HostPattern::Ipv4(_) | HostPattern::Ipv6(_)) => Err(format!(
            "{:?}: clients send no server name when connecting to an IP address, so only \
             tls.default_cert can serve them; {expected}",
            quote(raw)
        )),
        Err(problem) => Err(format!("{:?}: {problem}; {expected}", quote(raw))),
    }
}

/// Parses `listen.https` (same rules as `listen.http`, and no address may be both).
pub(super) fn parse_https(
    f: Field,
    http: &[SocketAddr],
    http_keys: &[String],
) -> Result<(Vec<SocketAddr>, Vec<String>), FieldError> {
    let mut out: Vec<SocketAddr> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for (key, raw) in f.strings()? {
        let addr = socket_addr(&raw).map_err(|problem| FieldError {
            key: key.clone(),
            problem,
        })?;
        if addr.port() != 0 {
            if let Some(i) = out.iter().position(|a| *a == addr) {
                return Err(FieldError {
                    key,
                    problem: format!("{addr} is already listed as {}", keys[i]),
                });
            }
            if let Some(i) = http.iter().position(|a| *a == addr) {
                return Err(FieldError {
                    key,
                    problem: format!(
                        "{addr} is also a cleartext listener ({}); one TCP port serves either \
                         TLS or cleartext",
                        http_keys[i]
                    ),
                });
            }
        }
        out.push(addr);
        keys.push(key);
    }
    Ok((out, keys))
}

/// Cross-checks `[listen]` with `[tls]`: TLS listeners need a certificate, certificates need a
/// TLS listener, HTTP/3 needs a TLS listener to share its port with.
pub(super) fn check_with_listen(
    listen: &ListenConfig,
    tls: &TlsConfig,
    tls_present: bool,
) -> Result<(), FieldError> {
    if listen.h3 && listen.https.is_empty() {
        return Err(FieldError {
            key: "listen.h3".to_owned(),
            problem: "h3 = true needs at least one listen.https address: HTTP/3 runs on UDP on \
                      the same port as a TLS listener"
                .to_owned(),
        });
    }
    if !listen.https.is_empty() && !tls.has_certificates() {
        return Err(FieldError {
            key: "tls".to_owned(),
            problem: "listen.https is set but no certificate is configured; expected \
                      tls.default_cert = { cert = \"…\", key = \"…\" }, [[tls.cert]] tables, or \
                      tls.self_signed = true for development"
                .to_owned(),
        });
    }
    if tls_present && listen.https.is_empty() {
        return Err(FieldError {
            key: "tls".to_owned(),
            problem: "[tls] is set but there is no TLS listener; expected listen.https = \
                      [\"0.0.0.0:443\"] or similar"
                .to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_rejects, parse};
    use super::*;

    const LISTEN: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\nhttps = [\"127.0.0.1:8443\"]\n";

    #[test]
    fn parses_tls_listeners_and_certificates() {
        let c = parse(&format!(
            r#"{LISTEN}h3 = true
[tls]
default_cert = {{ cert = "certs/default.pem", key = "certs/default.key" }}
reload_interval = "2s"
[[tls.cert]]
hosts = ["App.Example.com.", "*.tenant-b.example"]
cert = "certs/b.pem"
key = "/etc/keys/b.key"
[[tls.cert]]
hosts = ["c.example"]
cert = "c.pem"
key = "c.key"
"#
        ))
        .expect("valid");
        assert_eq!(c.listen.https, ["127.0.0.1:8443".parse().expect("addr")]);
        assert!(c.listen.h3);
        assert_eq!(c.tls.reload_interval, Duration::from_secs(2));
        assert_eq!(c.tls.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(c.tls.certs.len(), 2);
        assert_eq!(
            c.tls.certs[0].hosts,
            ["app.example.com", "*.tenant-b.example"]
        );
        let mut r = c.clone();
        r.resolve_relative_to(Path::new("/etc/outpost"));
        let d = r.tls.default_cert.as_ref().expect("default");
        assert_eq!(d.cert, Path::new("/etc/outpost/certs/default.pem"));
        assert_eq!(r.tls.certs[0].files.key, Path::new("/etc/keys/b.key"));
        assert_eq!(r.tls.certs[1].files.cert, Path::new("/etc/outpost/c.pem"));
    }

    #[test]
    fn https_alone_is_enough_to_listen() {
        let c = parse(
            "[listen]\nhttps = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n[tls]\nself_signed = true\n",
        )
        .expect("https without http");
        assert!(c.listen.http.is_empty());
        assert!(!c.listen.h3);
        assert!(c.tls.self_signed);
        assert_rejects("[listen]\n", "listen.http", "missing");
    }

    #[test]
    fn listen_and_tls_must_agree() {
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\nh3 = true\n",
            "listen.h3",
            "needs at least one listen.https",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\nh3 = \"yes\"\n",
            "listen.h3",
            "expected true or false, got \"yes\"",
        );
        assert_rejects(LISTEN, "tls", "no certificate is configured");
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\n[tls]\nself_signed = true\n",
            "tls",
            "no TLS listener",
        );
        assert_rejects(
            "[listen]\nhttp = [\"127.0.0.1:80\"]\nhttps = [\"127.0.0.1:80\"]\n",
            "listen.https[0]",
            "also a cleartext listener (listen.http[0])",
        );
        assert_rejects(
            "[listen]\nhttps = [\"127.0.0.1:443\", \"127.0.0.1:443\"]\n",
            "listen.https[1]",
            "already listed as listen.https[0]",
        );
        assert_rejects(
            "[listen]\nhttps = [\"localhost:443\"]\n",
            "listen.https[0]",
            "host names are not resolved",
        );
        assert_rejects(
            "[listen]\nhttps = [\"127.0.0.1:443\"]\nadmin = \"127.0.0.1:443\"\n",
            "listen.admin",
            "also a tenant listener (listen.https[0])",
        );
    }

    #[test]
    fn tls_table_is_validated() {
        let tls = |body: &str| format!("{LISTEN}[tls]\n{body}\n");
        assert_rejects(
            &tls("self_signed = true\ndefault_cert = { cert = \"a\", key = \"b\" }"),
            "tls.self_signed",
            "keep one of them",
        );
        assert_rejects(
            &tls("default_cert = { cert = \"a\" }"),
            "tls.default_cert.key",
            "missing; expected the path of the certificate's PEM private key",
        );
        assert_rejects(
            &tls("default_cert = { cert = \"a\", key = \"b\", chain = \"c\" }"),
            "tls.default_cert.chain",
            "unknown key",
        );
        assert_rejects(
            &tls("default_cert = { cert = \"~/a.pem\", key = \"b\" }"),
            "tls.default_cert.cert",
            "not expanded",
        );
        assert_rejects(
            &tls("reload_interval = \"1ms\""),
            "tls.reload_interval",
            "too short",
        );
        for bad in ["\"10ms\"", "\"1h\""] {
            assert_rejects(
                &tls(&format!("handshake_timeout = {bad}")),
                "tls.handshake_timeout",
                "out of range",
            );
        }
        assert_rejects(
            &tls("selfsigned = true"),
            "tls.selfsigned",
            "did you mean \"self_signed\"",
        );
        assert_rejects(
            &tls("[tls.cert]\nhosts = [\"a.example\"]\ncert = \"a\"\nkey = \"b\""),
            "tls.cert",
            "[[tls.cert]] (two brackets)",
        );
        let cert = |hosts: &str| {
            tls(&format!(
                "[[tls.cert]]\nhosts = {hosts}\ncert = \"a.pem\"\nkey = \"a.key\""
            ))
        };
        assert_rejects(&cert("[]"), "tls.cert[0].hosts", "no hosts");
        assert_rejects(
            &cert("[\"*\"]"),
            "tls.cert[0].hosts[0]",
            "use tls.default_cert",
        );
        assert_rejects(
            &cert("[\"10.0.0.1\"]"),
            "tls.cert[0].hosts[0]",
            "send no server name when connecting to an IP address",
        );
        assert_rejects(
            &cert("[\"a.example:443\"]"),
            "tls.cert[0].hosts[0]",
            "without a port",
        );
        assert_rejects(
            &cert("[\"a.*.example\"]"),
            "tls.cert[0].hosts[0]",
            "a wildcard must be",
        );
        assert_rejects(
            &format!(
                "{LISTEN}[[tls.cert]]\nhosts = [\"a.example\"]\ncert = \"a\"\nkey = \"b\"\n\
                 [[tls.cert]]\nhosts = [\"A.example\"]\ncert = \"c\"\nkey = \"d\"\n"
            ),
            "tls.cert[1].hosts[0]",
            "host a.example is already listed as tls.cert[0].hosts[0]",
        );
        assert_rejects(
            &tls("[[tls.cert]]\nhosts = [\"a.example\"]\ncert = \"a\""),
            "tls.cert[0].key",
            "missing",
        );
    }
}
