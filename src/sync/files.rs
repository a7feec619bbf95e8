//! The agent's files under the state directory: the node key (`node.key`), the enrolment record
//! (`enrolment.json`) and the last applied desired state (`desired.json`, the sealed envelope as
//! received). Every write is atomic (`base::atomic::write_file`), secrets 0600.
//!
//! Must not: decide whether a desired state is acceptable — callers open it with
//! `bundle::desired::open` against the pinned keys.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SyncError;
use crate::base::atomic;
use crate::bundle::sign::{self, SigningKey, VerifyingKey};

pub const NODE_KEY_FILE: &str = "node.key";
pub const ENROLMENT_FILE: &str = "enrolment.json";
pub const DESIRED_FILE: &str = "desired.json";

/// What the node knows about its enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The node id (its key id) the control plane confirmed.
    pub node: String,
    /// The control plane it enrolled with.
    pub url: String,
    /// Labels the control plane recorded (the node's, overlaid with the token's).
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub enrolled_at: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The node key, created (0600) on first start. Returns it and whether it is new.
pub fn load_or_create_node_key(state_dir: &Path) -> Result<(SigningKey, bool), SyncError> {
    let path = state_dir.join(NODE_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = sign::parse_secret_key(text.trim_end()).map_err(|e| SyncError::NodeKey {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand_core::OsRng);
            atomic::write_file(&path, key.to_secret_text().as_bytes(), 0o600)
                .map_err(io_err(&path))?;
            Ok((key, true))
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub fn read_enrolment(state_dir: &Path) -> Result<Option<Enrolment>, SyncError> {
    let path = state_dir.join(ENROLMENT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SyncError::Record {
                path,
                problem: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub fn write_enrolment(state_dir: &Path, e: &Enrolment) -> Result<(), SyncError> {
    let path = state_dir.join(ENROLMENT_FILE);
    let bytes = serde_json::to_vec_pretty(e).map_err(|err| SyncError::Record {
        path: path.clone(),
        problem: err.to_string(),
    })?;
    atomic::write_file(&path, &bytes, 0o600).map_err(io_err(&path))
}

/// The last applied envelope's bytes, if any.
pub fn read_desired(state_dir: &Path) -> Result<Option<Vec<u8>>, SyncError> {
    let path = state_dir.join(DESIRED_FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

pub fn write_desired(state_dir: &Path, envelope: &[u8]) -> Result<(), SyncError> {
    let path = state_dir.join(DESIRED_FILE);
    atomic::write_file(&path, envelope, 0o600).map_err(io_err(&path))
}

/// The pinned control-plane keys: each a public key line or a `.pub` file (read now).
pub fn pinned_keys(keys: &[(String, String)]) -> Result<Vec<VerifyingKey>, SyncError> {
    let mut out = Vec::with_capacity(keys.len());
    for (label, k) in keys {
        let text = crate::base::keyline::read_text(k).map_err(|problem| SyncError::PinnedKey {
            key: label.clone(),
            problem,
        })?;
        out.push(
            sign::parse_public_key(&text).map_err(|e| SyncError::PinnedKey {
                key: label.clone(),
                problem: format!("{k}: {e}"),
            })?,
        );
    }
    Ok(out)
}

/// The enrolment token from `token` or `token_file` (only read when the node is not enrolled).
pub fn read_token(
    token: Option<&str>,
    file: Option<&PathBuf>,
) -> Result<Option<String>, SyncError> {
    if let Some(t) = token {
        return Ok(Some(t.to_owned()));
    }
    let Some(path) = file else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(SyncError::Token {
            path: path.clone(),
            problem: "the file is empty".into(),
        });
    }
    Ok(Some(t.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_key_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (k1, new) = load_or_create_node_key(dir.path()).unwrap();
        assert!(new);
        let meta = std::fs::metadata(dir.path().join(NODE_KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let (k2, new) = load_or_create_node_key(dir.path()).unwrap();
        assert!(!new);
        assert_eq!(k1.id(), k2.id());
        std::fs::write(dir.path().join(NODE_KEY_FILE), "garbage").unwrap();
        let e = load_or_create_node_key(dir.path()).unwrap_err().to_string();
        assert!(e.contains("node.key"), "{e}");
    }

    #[test]
    fn enrolment_and_desired_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_enrolment(dir.path()).unwrap(), None);
        assert_eq!(read_desired(dir.path()).unwrap(), None);
        let e = Enrolment {
            node: "0102030405060708".into(),
            url: "https://cp".into(),
            labels: [("arch".to_owned(), "x86_64".to_owned())].into(),
            enrolled_at: 5,
        };
        write_enrolment(dir.path(), &e).unwrap();
        assert_eq!(read_enrolment(dir.path()).unwrap(), Some(e));
        write_desired(dir.path(), b"{}").unwrap();
        assert_eq!(read_desired(dir.path()).unwrap().unwrap(), b"{}");
        std::fs::write(dir.path().join(ENROLMENT_FILE), "{").unwrap();
        assert!(read_enrolment(dir.path()).is_err());
    }

    #[test]
    fn pinned_keys_and_tokens_are_read_with_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::from_seed(&[3; 32]).verifying_key();
        let pub_path = dir.path().join("cp.pub");
        std::fs::write(&pub_path, k.to_public_text()).unwrap();
        let keys = pinned_keys(&[
            (
                "control_plane.key[0]".into(),
                k.to_public_text().trim_end().into(),
            ),
            (
                "control_plane.key[1]".into(),
                pub_path.to_string_lossy().into_owned(),
            ),
        ])
        .unwrap();
        assert_eq!(keys, [k, k]);
        let e = pinned_keys(&[("control_plane.key".into(), "/nonexistent.pub".into())])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("control_plane.key") && e.contains("/nonexistent.pub"),
            "{e}"
        );

        assert_eq!(read_token(Some("t"), None).unwrap().as_deref(), Some("t"));
        assert_eq!(read_token(None, None).unwrap(), None);
        let tf = dir.path().join("token");
        std::fs::write(&tf, "abc\n").unwrap();
        assert_eq!(read_token(None, Some(&tf)).unwrap().as_deref(), Some("abc"));
        std::fs::write(&tf, "\n").unwrap();
        assert!(read_token(None, Some(&tf)).is_err());
    }
}
