//! OCI references: `oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]` (the `oci://` may be left out).
//!
//! Owns: parsing and printing references, with errors that name the part that is wrong.
//! Must not: guess — no Docker Hub short names (`alpine`), no default tag, no default registry:
//! a reference names its registry host and a tag or a digest (or both).

use std::fmt;
use std::str::FromStr;

use crate::bundle::Digest;

/// The scheme prefix Outpost prints and accepts.
pub const SCHEME: &str = "oci://";

/// A parsed reference. `tag` or `digest` is always set; with both, the digest decides what is
/// fetched and the tag is kept for display (and for pushing).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host`, `host:port` or `[v6]:port`, as written (lower-cased host).
    pub registry: String,
    /// `path/of/repo` (lower case, the distribution spec's name grammar).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Why a string is not a [`Reference`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an OCI reference (oci://HOST[:PORT]/REPO[:TAG][@sha256:HEX]): {problem}")]
pub struct ReferenceError {
    pub input: String,
    pub problem: String,
}

// === impl Reference ===

impl Reference {
    /// What a manifest request asks for: the digest when there is one, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            // `parse` never builds one; a hand-built one asks for `latest` as registries do.
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository, pinned to `digest` (the tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `oci://HOST/REPO@sha256:…`: the immutable form, without the tag.
    pub fn pinned(&self, digest: &Digest) -> String {
        format!("{SCHEME}{}/{}@{digest}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, ReferenceError> {
        let err = |problem: String| ReferenceError {
            input: input.to_owned(),
            problem,
        };
        let rest = if let Some(rest) = input.strip_prefix(SCHEME) {
            rest
        } else if input.starts_with("http://") || input.starts_with("https://") {
            return Err(err(
                "write oci://HOST/REPO, not an http(s) URL; pass --insecure for a registry that \
                 speaks plain HTTP"
                    .to_owned(),
            ));
        } else if let Some((scheme, _)) = input.split_once("://") {
            return Err(err(format!("unknown scheme {scheme:?}://; write oci://")));
        } else {
            input
        };
        let (host, path) = rest.split_once('/').ok_or_else(|| {
            err("no repository: expected HOST[:PORT]/REPO after the registry host".to_owned())
        })?;
        check_registry(host).map_err(err)?;
        let (name_tag, digest) = match path.split_once('@') {
            Some((n, d)) => {
                let digest = d.parse::<Digest>().map_err(|e| {
                    err(format!(
                        "digest {d:?}: {e} (only sha256:<64 lower-case hex> digests are supported)"
                    ))
                })?;
                (n, Some(digest))
            }
            None => (path, None),
        };
        let (repository, tag) = match name_tag.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (name_tag, None),
        };
        check_repository(repository).map_err(err)?;
        if let Some(t) = tag {
            check_tag(t).map_err(err)?;
        }
        if tag.is_none() && digest.is_none() {
            return Err(err(
                "no tag or digest: add :TAG or @sha256:HEX (there is no default tag)".to_owned(),
            ));
        }
        Ok(Self {
            registry: host.to_ascii_lowercase(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

/// `host[:port]` or `[v6]:port`: DNS characters, an optional numeric port.
fn check_registry(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("no registry host before the first '/'".to_owned());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("registry {host:?}: unclosed '[' in an IPv6 address"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "registry {host:?}: {addr:?} is not an IPv6 address"
            ));
        }
        match after {
            "" => return Ok(()),
            p => (
                None,
                Some(p.strip_prefix(':').ok_or_else(|| {
                    format!("registry {host:?}: expected :PORT after the IPv6 address")
                })?),
            ),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !name.starts_with(['.', '-'])
            && !name.ends_with(['.', '-']);
        if !ok {
            return Err(format!(
                "registry host {name:?}: letters, digits, '.' and '-' only (a host name or IP address)"
            ));
        }
    }
    if let Some(port) = port
        && !matches!(port.parse::<u16>(), Ok(p) if p > 0)
    {
        return Err(format!(
            "registry port {port:?}: not a port number (1-65535)"
        ));
    }
    Ok(())
}

/// The distribution spec's name grammar: `/`-separated components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("empty repository name".to_owned());
    }
    if repo.len() > 255 {
        return Err(format!(
            "repository name is {} characters; at most 255",
            repo.len()
        ));
    }
    for part in repo.split('/') {
        let bytes = part.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let mut ok = !bytes.is_empty() && alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]);
        let mut i = 0;
        while ok && i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            // A separator run: ".", "_", "__" or one or more "-", between alphanumerics.
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &part[start..i];
            ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        }
        if !ok {
            return Err(format!(
                "repository component {part:?}: lower-case letters and digits, separated by \
                 '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?}: 1-128 of letters, digits, '.', '_' and '-', not starting with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Result<Reference, String> {
        s.parse::<Reference>().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_the_forms() {
        let r = parse("oci://127.0.0.1:5000/apps/greeter:1.0.0").expect("tag");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "apps/greeter");
        assert_eq!(r.tag.as_deref(), Some("1.0.0"));
        assert_eq!(r.target(), "1.0.0");
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/apps/greeter:1.0.0");

        let r = parse(&format!("registry.example.com/greeter@{D}")).expect("digest");
        assert_eq!(r.registry, "registry.example.com");
        assert_eq!(r.tag, None);
        assert_eq!(r.target(), D);

        let r = parse(&format!("oci://[::1]:5000/a/b_c/d-e:v1@{D}")).expect("both");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.target(), D, "the digest decides");
        assert_eq!(r.to_string(), format!("oci://[::1]:5000/a/b_c/d-e:v1@{D}"));
        assert_eq!(
            r.pinned(&r.digest.expect("digest")),
            format!("oci://[::1]:5000/a/b_c/d-e@{D}")
        );
    }

    #[test]
    fn errors_name_the_problem() {
        for (bad, needle) in [
            ("oci://host:5000", "no repository"),
            ("oci://host/repo", "no tag or digest"),
            ("oci:///repo:1", "no registry host"),
            ("oci://ho_st/repo:1", "registry host"),
            ("oci://host:0/repo:1", "port"),
            ("oci://host:99999/repo:1", "port"),
            ("oci://host/Repo:1", "repository component"),
            ("oci://host/a//b:1", "repository component"),
            ("oci://host/a-:1", "repository component"),
            ("oci://host/repo:-x", "tag"),
            ("oci://host/repo:", "tag"),
            ("oci://host/repo@sha256:00", "digest"),
            ("oci://host/repo@sha512:00", "digest"),
            ("https://host/repo:1", "--insecure"),
            ("ftp://host/repo:1", "unknown scheme"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn separators_follow_the_grammar() {
        for ok in ["a.b", "a_b", "a__b", "a---b", "a/b/c", "0"] {
            assert!(check_repository(ok).is_ok(), "{ok}");
        }
        for bad in ["a..b", "a___b", "_a", "a.", "a-_b", ""] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
    }
}
