//! What the front door checks and enforces around every request, whatever the protocol: which
//! host a request is for (and the requests whose host is missing or ambiguous), `HEAD` answered
//! with the head a `GET` would get and no body, and a request body over `max_request_body` never
//! ending in a complete-looking response.
//!
//! Owns: the Host / `:authority` rules (RFC 9112 §3.2, RFC 9113 §8.3.1, RFC 9114 §4.3.1), the
//! `HEAD` body, and the request-body watch that aborts a response already under way.
//! Must not: route, run guests, or build error bodies (the caller does, in one place).
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::runtime::component::ResponseBody;

/// The authority given to a guest for an HTTP/1.0 request without `Host` (legal in 1.0): such a
/// request is routed to the apps that answer any host (`*`), and the guest needs some authority
/// to see.
pub const DEFAULT_AUTHORITY: &str = "localhost";

/// Why a request's host cannot be known; each is the client's fault (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has no Host header")]
    Missing,
    #[error("the request has more than one Host header")]
    Duplicate,
    #[error("the Host header is not valid text")]
    Invalid,
    #[error("the Host header names another host than the request's authority")]
    Conflict,
}

impl HostError {
    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing_host",
            Self::Duplicate => "duplicate_host",
            Self::Invalid => "invalid_host",
            Self::Conflict => "host_conflict",
        }
    }
}

/// The host a request is for, or why it has none that can be trusted:
///
/// - more than one `Host` header, or one that is not text: refused (every version);
/// - HTTP/2 and HTTP/3: `:authority` (the URI's), which a `Host` header must not contradict;
///   without `:authority`, the `Host` header; with neither, refused;
/// - HTTP/1.1: `Host` is required (RFC 9112 §3.2), even with an absolute-form target, whose
///   authority then wins;
/// - HTTP/1.0: as 1.1, except that a request without `Host` is for no host in particular:
///   `Ok(None)`, routed to the apps that answer any host.
pub fn request_host<B>(req: &http::Request<B>) -> Result<Option<&str>, HostError> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(HostError::Duplicate),
        (Some(h), None) => Some(h.to_str().map_err(|_| HostError::Invalid)?),
        (None, None) => None,
    };
    let authority = req.uri().authority().map(http::uri::Authority::as_str);
    match req.version() {
        http::Version::HTTP_2 | http::Version::HTTP_3 => match (authority, header) {
            (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(HostError::Conflict),
            (Some(a), _) => Ok(Some(a)),
            (None, Some(h)) => Ok(Some(h)),
            (None, None) => Err(HostError::Missing),
        },
        http::Version::HTTP_10 | http::Version::HTTP_09 => Ok(authority.or(header)),
        _ => match header {
            None => Err(HostError::Missing),
            Some(h) => Ok(Some(authority.unwrap_or(h))),
        },
    }
}

// === impl HeadBody ===

/// The body of a response to `HEAD`: nothing, whatever the guest wrote. It reports the size the
/// guest's body would have had, so HTTP/1.1 and HTTP/2 derive the same `content-length` a `GET`
/// gets; the guest's body is dropped at once, which ends its writes.
pub fn head_body(guest: &ResponseBody) -> ResponseBody {
    use http_body_util::BodyExt;
    HeadBody(guest.size_hint()).boxed_unsync()
}

struct HeadBody(SizeHint);

impl Body for HeadBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
    }
}

// === impl the request-body watch ===

/// Set once more than the component's `max_request_body` bytes of request body arrived.
#[derive(Debug, Clone, Default)]
pub struct OverLimit(Arc<AtomicBool>);

impl OverLimit {
    pub fn tripped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A request body that counts what passes and trips `over` past `limit` bytes. It passes every
/// frame on: the runtime enforces the limit towards the guest; this only remembers, for the
/// response side, that the guest saw a cut-off body.
pub struct WatchedBody<B> {
    inner: B,
    left: u64,
    over: OverLimit,
}

impl<B> WatchedBody<B> {
    pub fn new(inner: B, limit: u64, over: OverLimit) -> Self {
        Self {
            inner,
            left: limit,
            over,
        }
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            match this.left.checked_sub(n) {
                Some(left) => this.left = left,
                None => this.over.0.store(true, Ordering::Relaxed),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that fails — instead of ending — once the request body went over its limit,
/// so the client sees an aborted response (HTTP/1.1: the connection closes before the last
/// chunk; HTTP/2 and HTTP/3: the stream is reset), never a complete one built from a truncated
/// request body. `on_abort` runs once, when it does.
pub fn cut_if_over(
    inner: ResponseBody,
    over: OverLimit,
    limit: u64,
    on_abort: impl FnOnce() + Send + 'static,
) -> ResponseBody {
    use http_body_util::BodyExt;
    CutIfOver {
        inner,
        over,
        limit,
        on_abort: Some(Box::new(on_abort)),
    }
    .boxed_unsync()
}

struct CutIfOver {
    inner: ResponseBody,
    over: OverLimit,
    limit: u64,
    on_abort: Option<Box<dyn FnOnce() + Send>>,
}

impl CutIfOver {
    fn abort(&mut self) -> Poll<Option<Result<Frame<Bytes>, wasmtime_wasi_http::Error>>> {
        if let Some(f) = self.on_abort.take() {
            f();
        }
        Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
            Some(self.limit),
        ))))
    }
}

impl Body for CutIfOver {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.over.tripped() {
            return this.abort();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            // The guest ended its body; it may have done so because its request body was cut.
            Poll::Ready(None) if this.over.tripped() => this.abort(),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never claim the end before the last poll: the check happens there.
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: http::Version, uri: &str, hosts: &[&str]) -> http::Request<()> {
        let mut b = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(http::header::HOST, *h);
        }
        b.body(()).expect("test request")
    }

    #[test]
    fn host_rules_per_version() {
        use http::Version as V;
        assert_eq!(
            request_host(&req(V::HTTP_11, "/", &["a.example"])),
            Ok(Some("a.example"))
        );
        assert_eq!(
            request_host(&req(V::HTTP_11, "/", &[])),
            Err(HostError::Missing)
        );
        assert_eq!(
            request_host(&req(V::HTTP_11, "/", &["a", "b"])),
            Err(HostError::Duplicate)
        );
        assert_eq!(
            request_host(&req(V::HTTP_10, "/", &["a", "a"])),
            Err(HostError::Duplicate)
        );
        // Absolute form: the target's authority wins, but Host is still required in 1.1.
        assert_eq!(
            request_host(&req(V::HTTP_11, "http://b.example/", &["a.example"])),
            Ok(Some("b.example"))
        );
        assert_eq!(
            request_host(&req(V::HTTP_11, "http://b.example/", &[])),
            Err(HostError::Missing)
        );
        assert_eq!(request_host(&req(V::HTTP_10, "/", &[])), Ok(None));
        assert_eq!(
            request_host(&req(V::HTTP_2, "http://a.example/", &[])),
            Ok(Some("a.example"))
        );
        assert_eq!(
            request_host(&req(V::HTTP_2, "http://a.example/", &["A.Example"])),
            Ok(Some("a.example"))
        );
        assert_eq!(
            request_host(&req(V::HTTP_3, "https://a.example/", &["b.example"])),
            Err(HostError::Conflict)
        );
        assert_eq!(request_host(&req(V::HTTP_2, "/", &["a"])), Ok(Some("a")));
        assert_eq!(
            request_host(&req(V::HTTP_2, "/", &[])),
            Err(HostError::Missing)
        );
    }

    #[test]
    fn the_watch_trips_only_past_the_limit_and_then_cuts_the_response() {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let over = OverLimit::default();
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                vec![Ok(Frame::data(Bytes::from_static(b"12345")))];
            let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
            let watched = WatchedBody::new(body, 5, over.clone());
            let got = watched.collect().await.expect("body").to_bytes();
            assert_eq!(&got[..], b"12345");
            assert!(!over.tripped(), "exactly the limit is fine");

            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                vec![Ok(Frame::data(Bytes::from_static(b"123456")))];
            let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
            let _ = WatchedBody::new(body, 5, over.clone()).collect().await;
            assert!(over.tripped());

            let aborted = Arc::new(AtomicBool::new(false));
            let flag = aborted.clone();
            let resp: ResponseBody = http_body_util::Full::new(Bytes::from_static(b"x"))
                .map_err(|never| match never {})
                .boxed_unsync();
            let cut = cut_if_over(resp, over, 5, move || flag.store(true, Ordering::Relaxed));
            assert!(cut.collect().await.is_err());
            assert!(aborted.load(Ordering::Relaxed));
        });
    }

    #[test]
    fn head_body_is_empty_but_keeps_the_size() {
        use http_body_util::BodyExt;
        let guest: ResponseBody = http_body_util::Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let head = head_body(&guest);
        assert_eq!(head.size_hint().exact(), Some(5));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let got = rt.block_on(head.collect()).expect("empty body").to_bytes();
        assert!(got.is_empty());
    }
}
