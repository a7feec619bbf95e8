//! Errors at the runtime's edges.
//!
//! Two families: [`LoadError`] (an app cannot be loaded: bad wasm, missing imports, cache trouble —
//! reported at start or reload, never at first request) and [`RequestError`] (one request failed).
//! A `RequestError` knows *who* caused it, which fixes its HTTP status, its metric label and
//! whether its details may be shown to the client (never, for guest and host faults).

use std::path::PathBuf;

use http::StatusCode;

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read wasm file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A core module or not WebAssembly at all (`bundle::wasm`'s header check).
    #[error(transparent)]
    NotAComponent(#[from] crate::bundle::wasm::NotAComponent),
    #[error("{path}: invalid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path}: the component needs something Outpost does not provide: {reason}\n\
         Outpost provides WASI 0.2 (wasi:cli, wasi:clocks, wasi:filesystem, wasi:io, wasi:random, \
         wasi:sockets — all denied unless granted), wasi:http 0.2 and 0.3, WASI 0.3's wasi:cli, \
         wasi:clocks and wasi:random, and wasi:config/store"
    )]
    Link { path: PathBuf, reason: String },
    #[error(
        "{path}: the component exports neither wasi:http/incoming-handler@0.2.x (a \
         wasi:http/proxy component) nor wasi:http/handler@0.3.x: {reason}"
    )]
    NotProxy { path: PathBuf, reason: String },
    #[error("{path}: cannot be instantiated under its limits: {reason}")]
    Instantiate { path: PathBuf, reason: String },
    #[error("{path}: file grant {host_dir}: {reason}")]
    Files {
        path: PathBuf,
        host_dir: PathBuf,
        reason: String,
    },
    #[error("component {component}: {reason}")]
    Limits { component: String, reason: String },
}

/// Who caused a failed request. Decides status, metric label and what the client may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The client sent something we refuse (too large, malformed).
    Client,
    /// We are saturated; retrying later is safe.
    Overload,
    /// The guest trapped, exceeded its limits or returned no response.
    Guest,
    /// The guest ran past its wall-clock timeout.
    Timeout,
    /// Something inside Outpost failed.
    Host,
}

/// One failed request, with a message for the log (never for the client).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct RequestError {
    pub kind: RequestErrorKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorKind {
    BodyTooLarge,
    Saturated,
    Trap,
    MemoryLimit,
    NoResponse,
    Timeout,
    Internal,
}

impl std::fmt::Display for RequestErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl RequestErrorKind {
    pub fn cause(self) -> Cause {
        match self {
            Self::BodyTooLarge => Cause::Client,
            Self::Saturated => Cause::Overload,
            Self::Trap | Self::MemoryLimit | Self::NoResponse => Cause::Guest,
            Self::Timeout => Cause::Timeout,
            Self::Internal => Cause::Host,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Saturated => StatusCode::SERVICE_UNAVAILABLE,
            Self::Trap | Self::MemoryLimit | Self::NoResponse | Self::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::BodyTooLarge => "body_too_large",
            Self::Saturated => "saturated",
            Self::Trap => "trap",
            Self::MemoryLimit => "memory_limit",
            Self::NoResponse => "no_response",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }

    /// The only text a client sees: generic, no internals.
    pub fn public_message(self) -> &'static str {
        match self {
            Self::BodyTooLarge => "request body too large",
            Self::Saturated => "service busy, retry later",
            Self::Timeout => "the application did not answer in time",
            Self::Trap | Self::MemoryLimit | Self::NoResponse | Self::Internal => "internal error",
        }
    }
}

impl RequestError {
    pub fn new(kind: RequestErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}
