//! TLS for the TCP listeners: rustls server configs (ALPN `h2`, `http/1.1`; `h3` for QUIC) and
//! the handshake of one accepted connection.
//!
//! Owns: protocol versions, ALPN lists, session tickets, the handshake timeout and how a failed
//! handshake is counted and logged, and the quinn server and transport config for HTTP/3
//! ([`QuicLimits`]). Certificates come from [`CertStore`](super::certs::CertStore).
//! Must not: run in an accept loop — a handshake is several round trips a slow or hostile client
//! controls, so it runs in the connection's own task on its serving thread.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::certs::{CertStore, is_refusal, provider};
use crate::ops::metrics::Metrics;
use crate::sizing::QuicSizing;

/// By default a client gets this long to finish its TLS or QUIC handshake (`tls.handshake_timeout`
/// overrides it; the default, like every config default, is defined in `ops::config`).
pub use crate::ops::config::DEFAULT_HANDSHAKE_TIMEOUT as HANDSHAKE_TIMEOUT;

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
pub const ALPN_H3: &[u8] = b"h3";

/// Why a TLS or QUIC server config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// Everything the TLS and QUIC listeners need: the TCP acceptor and, with HTTP/3 on, the quinn
/// server config. Both resolve certificates through the same [`CertStore`], so a reload reaches
/// every protocol at once.
#[derive(Clone)]
pub struct TlsSetup {
    pub certs: Arc<CertStore>,
    pub(super) acceptor: TlsAcceptor,
    pub(super) quic: Option<quinn::ServerConfig>,
    /// How long a TLS or QUIC handshake may take before the connection is dropped.
    pub(super) handshake_timeout: Duration,
}

/// What a TLS listener's connection tasks need for their handshake.
#[derive(Clone)]
pub(super) struct Handshaker {
    pub(super) acceptor: TlsAcceptor,
    pub(super) timeout: Duration,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("h3", &self.quic.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// TLS 1.2 and 1.3 over TCP with ALPN `h2` then `http/1.1`; with `h3`, also a QUIC (TLS 1.3,
    /// ALPN `h3`) config with those transport limits. Handshakes of either kind that take longer
    /// than `handshake_timeout` are dropped.
    pub fn new(
        certs: Arc<CertStore>,
        h3: Option<&QuicLimits>,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let mut tcp = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
        tcp.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        // Stateless resumption: a returning client skips the certificate and key exchange,
        // which is most of a handshake's CPU on a small board.
        tcp.ticketer = rustls::crypto::ring::Ticketer::new()?;
        let quic = match h3 {
            Some(limits) => Some(server_config(quic_tls(&certs)?, limits)?),
            None => None,
        };
        Ok(Self {
            certs,
            acceptor: TlsAcceptor::from(Arc::new(tcp)),
            quic,
            handshake_timeout,
        })
    }

    /// Whether HTTP/3 is configured.
    pub fn h3(&self) -> bool {
        self.quic.is_some()
    }

    pub(super) fn handshaker(&self) -> Handshaker {
        Handshaker {
            acceptor: self.acceptor.clone(),
            timeout: self.handshake_timeout,
        }
    }
}

/// The rustls side of the QUIC config: TLS 1.3 only (QUIC requires it), ALPN `h3`, no 0-RTT
/// (replayable requests would reach guests that cannot tell).
fn quic_tls(certs: &Arc<CertStore>) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    cfg.alpn_protocols = vec![ALPN_H3.to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.max_early_data_size = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(cfg))
        .map_err(|e| TlsError::Quic(e.to_string()))
}

/// Runs the server side of a TLS handshake on `tcp`, for at most the configured handshake timeout
/// and not past the shutdown signal. `None` when it failed (counted in
/// `outpost_tls_handshake_failures_total`, logged at debug: failed handshakes are routine on a
/// public port).
pub(super) async fn handshake(
    hs: &Handshaker,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    let accept = tokio::time::timeout(hs.timeout, hs.acceptor.accept(tcp));
    let result = tokio::select! {
        r = accept => r,
        // Draining: a connection that has not finished its handshake has no request in flight.
        () = async { let _ = stop.wait_for(|s| *s).await; } => return None,
    };
    match result {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            let message = e.to_string();
            // Refusals for unknown server names are counted and logged by the certificate
            // store, which knows the name.
            if !is_refusal(&message) {
                metrics
                    .tls_handshake_failures
                    .with_label_values(&["error"])
                    .inc();
            }
            tracing::debug!(%peer, error = %message, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics
                .tls_handshake_failures
                .with_label_values(&["timeout"])
                .inc();
            tracing::debug!(%peer, timeout = ?hs.timeout, "TLS handshake timed out");
            None
        }
    }
}

/// Unidirectional streams a client may open: HTTP/3 needs three (control, QPACK encoder and
/// decoder); the rest leaves room for grease streams. Server push is not used.
const MAX_UNI_STREAMS: u32 = 16;
/// 0-RTT is off, so an unaccepted connection attempt buffers at most its Initial flight.
const INCOMING_BUFFER: u64 = 64 * 1024;

/// QUIC transport limits, from the hardware sizing (`outpost info` shows the derivation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicLimits {
    pub idle_timeout: Duration,
    pub max_streams: u32,
    pub stream_receive_window: u64,
    pub receive_window: u64,
    /// Connection attempts quinn holds before the accept loop takes them; beyond it, refused.
    pub max_incoming: usize,
}

impl QuicLimits {
    pub fn from_sizing(q: &QuicSizing, max_connections: u32) -> Self {
        Self {
            idle_timeout: Duration::from_millis(q.idle_timeout_ms.value),
            max_streams: q.max_streams.value,
            stream_receive_window: q.stream_receive_window.value,
            receive_window: q.receive_window.value,
            max_incoming: usize::try_from(max_connections).unwrap_or(usize::MAX),
        }
    }
}

/// The quinn server config: TLS from `crypto`, transport limits from `limits`.
fn server_config(
    crypto: quinn::crypto::rustls::QuicServerConfig,
    limits: &QuicLimits,
) -> Result<quinn::ServerConfig, TlsError> {
    let varint = |what: &str, v: u64| {
        quinn::VarInt::from_u64(v).map_err(|_| TlsError::Quic(format!("{what} {v} is too large")))
    };
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(limits.idle_timeout)
                .map_err(|_| TlsError::Quic("idle timeout is too large".to_owned()))?,
        ))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(varint(
            "stream receive window",
            limits.stream_receive_window,
        )?)
        .receive_window(varint("receive window", limits.receive_window)?)
        // What one connection may have in flight towards the client: the same as it may
        // receive, so a response stream can fill the same link an upload can.
        .send_window(limits.receive_window.max(limits.stream_receive_window));
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport));
    cfg.max_incoming(limits.max_incoming.max(1))
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER.saturating_mul(1024));
    Ok(cfg)
}
