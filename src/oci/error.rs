//! The one error type of the OCI client: what failed, at which registry and repository, and for
//! which digest — never a credential (none is ever put in a URL or a message).

use crate::bundle::Digest;

/// An OCI operation that failed. `what` names the object (`manifest greeter:1.0.0`,
/// `blob sha256:…`), `at` the registry and repository (`127.0.0.1:5000/apps/greeter`).
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Reference(#[from] super::ReferenceError),
    /// The client could not be built (an unreadable or invalid `--ca-file`, …).
    #[error("{0}")]
    Setup(String),
    /// Credentials could not be read (Docker config file, …).
    #[error("{0}")]
    Credentials(String),
    /// No connection, a TLS failure, a timeout: the registry could not be asked at all.
    #[error("{at}: {what}: {detail}")]
    Transport {
        at: String,
        what: String,
        detail: String,
    },
    /// The redirect chain to blob storage looped or was too long.
    #[error("{at}: {what}: {detail}")]
    Redirect {
        at: String,
        what: String,
        detail: String,
    },
    #[error("{at}: {what}: not found (HTTP 404{detail})")]
    NotFound {
        at: String,
        what: String,
        detail: String,
    },
    /// 401 without usable credentials, or still 401 after authenticating once.
    #[error("{at}: {what}: {detail}")]
    Unauthorized {
        at: String,
        what: String,
        detail: String,
    },
    #[error("{at}: {what}: HTTP {status}{detail}")]
    Status {
        at: String,
        what: String,
        status: u16,
        detail: String,
    },
    /// A size over a cap, announced (descriptor, `Content-Length`) or counted.
    #[error("{at}: {what}: {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        at: String,
        what: String,
        size: u64,
        limit: u64,
    },
    /// The registry sent more or fewer bytes than the descriptor names.
    #[error("{at}: {what}: the registry sent {got} bytes where the descriptor says {expected}")]
    SizeMismatch {
        at: String,
        what: String,
        expected: u64,
        got: u64,
    },
    /// The bytes received do not hash to the digest that named them.
    #[error(
        "{at}: {what}: content digest is {got}, expected {expected}; the registry sent other bytes than asked for"
    )]
    DigestMismatch {
        at: String,
        what: String,
        expected: Digest,
        got: Digest,
    },
    /// A blob body that stalled (no data for the stall timeout) or dropped, and kept doing so
    /// through every resume.
    #[error(
        "{at}: {what}: download interrupted after {received} bytes ({detail}); gave up after \
         {resumes} resumes"
    )]
    Interrupted {
        at: String,
        what: String,
        detail: String,
        received: u64,
        resumes: u32,
    },
    /// A manifest or token response that is not what the spec says.
    #[error("{at}: {what}: {detail}")]
    Invalid {
        at: String,
        what: String,
        detail: String,
    },
    /// A media type this code does not read where it matters.
    #[error("{at}: {what}: unknown media type {media_type:?} (expected {expected})")]
    MediaType {
        at: String,
        what: String,
        media_type: String,
        expected: String,
    },
    /// The caller's writer failed.
    #[error("{what}: cannot write: {source}")]
    Write {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl OciError {
    /// Whether the thing asked for does not exist (a missing tag, manifest or blob).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// An error and its sources on one line: reqwest's own message says little ("error sending
/// request"); the cause (a certificate error, connection refused) is in its sources.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}
