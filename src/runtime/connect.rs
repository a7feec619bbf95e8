//! Sending a guest's outbound HTTP request once its grant allowed it: resolve the host, connect
//! only to addresses the component's [`OutboundPolicy`] allows ([`OutboundPolicy::allows_addr`]),
//! TLS for `https`, HTTP/1.1 over the connection.
//!
//! Owns: name resolution and the connect for outbound requests, and the address check — made on
//! the address of the socket actually connected, so a name that is rebound between a check and
//! the connect (DNS rebinding) cannot slip a local address through.
//! Must not: decide grants (that is [`crate::base::outbound`]) or know about the serving side.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::base::outbound::OutboundPolicy;

/// wasmtime-wasi-http's defaults when the guest sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Sends `req` (whose scheme and authority the caller already checked against `policy`) and
/// returns the response head with its streaming body, and the future that drives the
/// connection to its end.
pub async fn send_request(
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    policy: &OutboundPolicy,
    label: &str,
) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
    let uri = req.uri().clone();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let scheme = if https { "https" } else { "http" };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // `[::1]` in a URI is `::1` to the resolver.
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);

    let timeout = |t: Option<Duration>| t.unwrap_or(DEFAULT_TIMEOUT);
    let connect_timeout = timeout(options.and_then(|o| o.connect_timeout));
    let first_byte_timeout = timeout(options.and_then(|o| o.first_byte_timeout));
    let between_bytes_timeout = timeout(options.and_then(|o| o.between_bytes_timeout));

    let connect = connect(bare, port, scheme, policy, label);
    let tcp = tokio::time::timeout(connect_timeout, connect)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

    let io: Box<dyn Io> = if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let tls = tokio_rustls::TlsConnector::from(client_tls()).connect(name, tcp);
        Box::new(
            tokio::time::timeout(connect_timeout, tls)
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?,
        )
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Hyper)?;

    // The request line carries the path only (origin form); the authority stays in `Host`.
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .parse::<http::Uri>()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    *req.uri_mut() = path;

    let mut conn = Box::pin(conn);
    let send = tokio::time::timeout(first_byte_timeout, sender.send_request(req));
    let mut send = std::pin::pin!(send);
    // Drive the connection while waiting for the response head.
    let resp = tokio::select! {
        r = &mut send => r,
        c = &mut conn => {
            c.map_err(Error::Hyper)?;
            // The connection ended cleanly; the response, if any, is ready now.
            send.await
        }
    };
    let resp = resp
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::Hyper)?;
    let resp =
        resp.map(|incoming| IdleTimeoutBody::new(incoming, between_bytes_timeout).boxed_unsync());
    let io: IoFuture = Box::new(async move { conn.await.map_err(Error::Hyper) });
    Ok((resp, io))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Resolves `host` (an IP literal resolves to itself) and connects to the first address the
/// policy allows that accepts; the connected socket's own peer address is checked again, so
/// what is checked is what is connected.
async fn connect(
    host: &str,
    port: u16,
    scheme: &str,
    policy: &OutboundPolicy,
    label: &str,
) -> Result<TcpStream, Error> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    let mut last = None;
    let mut refused = Vec::new();
    for addr in addrs {
        if !policy.allows_addr(scheme, addr.ip(), port) {
            refused.push(addr.ip());
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let peer = tcp.peer_addr().map_err(Error::Connect)?;
                if !policy.allows_addr(scheme, peer.ip(), peer.port()) {
                    refused.push(peer.ip());
                    continue;
                }
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(Error::Connect(e)),
        None => {
            tracing::info!(component = %label, %host, port, addresses = ?refused, "outbound request denied: the host resolves only to non-public addresses (grant the address itself, or set allow_private_outbound)");
            Err(Error::DestinationIpProhibited)
        }
    }
}

/// The roots guests' HTTPS requests trust: the Mozilla set (as wasmtime-wasi-http uses), built
/// once.
fn client_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = match rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
            {
                Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
                // ring supports the default versions; should that ever change, fall back to the
                // process default rather than panic.
                Err(_) => rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            };
            Arc::new(config)
        })
        .clone()
}

/// A response body that fails when no frame arrives for `idle` (the guest's
/// `between-bytes-timeout`).
struct IdleTimeoutBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl IdleTimeoutBody {
    fn new(inner: hyper::body::Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::Hyper(e)
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
