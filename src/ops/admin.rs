//! The admin listener: `/healthz` (process alive), `/readyz` (apps loaded and not draining) and
//! `/metrics` (Prometheus text format).
//!
//! Owns: those three endpoints, served on a separate socket (through its own door, with its own
//! connection cap) so tenant traffic can never reach them and a saturated tenant listener never
//! hides the node's health.
//! Must not: serve tenant apps, or accept connections itself (the shared door in `serve::door`
//! does, so the admin listener has the same deadlines and caps as every other listener).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;

use super::metrics::Metrics;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct AdminState {
    pub metrics: Metrics,
    /// Set once apps are loaded and listeners bound; cleared when draining starts.
    pub ready: AtomicBool,
}

/// Answers one admin request. The listener itself (permits, header and idle deadlines, the
/// connection cap) is the shared door's (`serve::door::serve_small`, wired by `outpost run`):
/// this module sits below `serve` and cannot import it.
pub fn respond_to<B>(state: &AdminState, req: &http::Request<B>) -> http::Response<Full<Bytes>> {
    respond(state, req.uri().path())
}

fn respond(state: &AdminState, path: &str) -> http::Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" if state.ready.load(Ordering::Acquire) => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not ready\n".into()),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}
