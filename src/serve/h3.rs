//! HTTP/3: QUIC (quinn) transport limits, the per-connection request loop (h3 + h3-quinn), and
//! the adapters that stream request and response bodies between h3 streams and
//! [`ServeState::handle`] — the same pipeline (routing, limits, metrics) as HTTP/1.1 and HTTP/2.
//!
//! Owns: the QUIC handshake (on the connection's serving
//! thread, with a timeout), GOAWAY and close on drain, and the mapping of h3 stream errors.
//! Must not: route, run guests or build error responses itself — everything goes through
//! `ServeState::handle`.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::ServeState;
use super::certs::is_refusal;
use crate::runtime::component::ResponseBody;

/// After GOAWAY and the last request of a connection, how long a draining server waits for the
/// client to close before closing itself.
const DRAIN_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// The application close code a draining server uses: `H3_NO_ERROR` (RFC 9114 §8.1).
pub const H3_NO_ERROR: u32 = 0x100;
/// Largest request header section accepted (QPACK-decoded), like HTTP/2's
/// `SETTINGS_MAX_HEADER_LIST_SIZE` defaults: far above real requests, far below a memory problem.
const MAX_FIELD_SECTION_SIZE: u64 = 64 * 1024;
/// How long a closed endpoint may take to tell open connections it is gone.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Counts QUIC handshakes in progress; decremented when dropped.
pub(super) struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one QUIC connection on this thread: the handshake (at most `handshake_timeout`),
/// then each request stream on a task of its own through [`ServeState::handle`]. When `drain`
/// turns true: GOAWAY (no new requests), wait for the requests in flight, then close with
/// `H3_NO_ERROR`. The caller's drain deadline covers the wait.
pub(super) async fn serve_connection(
    incoming: quinn::Incoming,
    handshaking: Handshaking,
    handshake_timeout: std::time::Duration,
    state: Arc<ServeState>,
    mut drain: tokio::sync::watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let count_failure = |reason: &str| {
        state
            .metrics
            .tls_handshake_failures
            .with_label_values(&[reason])
            .inc();
    };
    // Accepting here, on the serving thread, also puts quinn's connection driver on this
    // thread's runtime.
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC connection attempt dropped");
            return;
        }
    };
    let conn = tokio::select! {
        r = tokio::time::timeout(handshake_timeout, connecting) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let message = e.to_string();
                if !is_refusal(&message) {
                    count_failure("error");
                }
                tracing::debug!(%peer, error = %message, "QUIC handshake failed");
                return;
            }
            Err(_) => {
                count_failure("timeout");
                tracing::debug!(%peer, timeout = ?handshake_timeout, "QUIC handshake timed out");
                return;
            }
        },
        () = async { let _ = drain.wait_for(|d| *d).await; } => return,
    };
    drop(handshaking);
    let quic = conn.clone();

    let mut h3conn = match h3::server::builder()
        .max_field_section_size(MAX_FIELD_SECTION_SIZE)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let mut requests = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            // (The borrow `wait_for` returns is dropped at once: it must not live across an await.)
            () = async { let _ = drain.wait_for(|d| *d).await; } => {
                // GOAWAY naming the next stream id: every request already accepted is
                // processed, none after it is.
                if let Err(e) = h3conn.shutdown(1).await {
                    tracing::debug!(%peer, error = %e, "HTTP/3 GOAWAY not sent");
                }
                break;
            }
            accepted = h3conn.accept() => match accepted {
                Ok(Some(resolver)) => {
                    requests.spawn(serve_request(resolver, state.clone()));
                }
                // The client sent GOAWAY and its requests are done.
                Ok(None) => break,
                Err(e) => {
                    if !e.is_h3_no_error() {
                        tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                    }
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    // In-flight requests finish (the drain deadline bounds this); then dropping the h3
    // connection closes QUIC with H3_NO_ERROR.
    while requests.join_next().await.is_some() {}
    // A request's task ends once its last frame is *queued*; closing the connection at once
    // discards what quinn has not yet sent or had acknowledged (a response lost while
    // draining — seen when the guest answered from another thread and the task ended a moment
    // sooner). So give the peer a moment to read it and close first, as it should after GOAWAY.
    if *drain.borrow() {
        let _ = tokio::time::timeout(DRAIN_LINGER, quic.closed()).await;
    }
    drop(h3conn);
}

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
type SendSide = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvSide = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// One request stream: read the head, run it through the shared pipeline, stream the answer.
async fn serve_request(resolver: Resolver, state: Arc<ServeState>) {
    let (req, stream) = match resolver.resolve_request().await {
        Ok(r) => r,
        Err(e) => {
            // h3 has already reset the stream (or answered 431) as the RFC asks.
            tracing::debug!(error = %e, "malformed HTTP/3 request");
            return;
        }
    };
    let head_only = req.method() == http::Method::HEAD;
    let (mut send, recv) = stream.split();
    let req = req.map(|()| H3Body::new(recv));
    let resp = state.handle(req, true).await;
    if let Err(e) = send_response(&mut send, resp, head_only).await {
        tracing::debug!(error = %e, "HTTP/3 response not completed");
    }
}

/// Headers that mean something only to HTTP/1.1 connections and are malformed in HTTP/3
/// (RFC 9114 §4.2).
const CONNECTION_HEADERS: [http::HeaderName; 5] = [
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
];

/// Sends the head, then each body frame as it comes from the guest; trailers end the stream.
/// A body that fails mid-way resets the stream, so the client sees a broken response rather
/// than a short one.
async fn send_response(
    send: &mut SendSide,
    resp: http::Response<ResponseBody>,
    head_only: bool,
) -> Result<(), StreamError> {
    let (mut parts, mut body) = resp.into_parts();
    for h in &CONNECTION_HEADERS {
        parts.headers.remove(h);
    }
    send.send_response(http::Response::from_parts(parts, ()))
        .await?;
    if !head_only {
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "response body failed; resetting the HTTP/3 stream");
                    send.stop_stream(Code::H3_INTERNAL_ERROR);
                    return Ok(());
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => send.send_data(data).await?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return send.send_trailers(trailers).await;
                    }
                }
            }
        }
    }
    send.finish().await
}

/// The request body of an HTTP/3 request stream, as an [`http_body::Body`] for
/// `AppComponent::handle`. Data frames pass through as they arrive; trailers follow. Dropped
/// before the end (the guest answered without reading everything), it asks the client to stop
/// sending with `H3_NO_ERROR`, as RFC 9114 §4.1 allows.
pub struct H3Body {
    recv: RecvSide,
    state: BodyState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Data,
    Trailers,
    Done,
}

impl H3Body {
    fn new(recv: RecvSide) -> Self {
        Self {
            recv,
            state: BodyState::Data,
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            match this.state {
                BodyState::Data => match this.recv.poll_recv_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(mut buf))) => {
                        let data = buf.copy_to_bytes(buf.remaining());
                        if data.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(Ok(None)) => this.state = BodyState::Trailers,
                    Poll::Ready(Err(e)) => {
                        this.state = BodyState::Done;
                        return Poll::Ready(Some(Err(body_error(&e))));
                    }
                },
                BodyState::Trailers => {
                    let r = match this.recv.poll_recv_trailers(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r,
                    };
                    this.state = BodyState::Done;
                    return Poll::Ready(match r {
                        Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                        Ok(None) => None,
                        Err(e) => Some(Err(body_error(&e))),
                    });
                }
                BodyState::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }
}

impl Drop for H3Body {
    fn drop(&mut self) {
        if self.state != BodyState::Done {
            self.recv.stop_sending(Code::H3_NO_ERROR);
        }
    }
}

/// What the guest sees when reading the request body fails.
fn body_error(e: &StreamError) -> wasmtime_wasi_http::Error {
    match e {
        StreamError::RemoteTerminate { .. } | StreamError::ConnectionError { .. } => {
            wasmtime_wasi_http::Error::ConnectionTerminated
        }
        StreamError::HeaderTooBig { .. } => {
            wasmtime_wasi_http::Error::HttpRequestTrailerSectionSize(None)
        }
        _ => wasmtime_wasi_http::Error::HttpProtocolError,
    }
}
