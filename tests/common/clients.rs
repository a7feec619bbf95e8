//! Protocol clients for the tests that speak more than HTTP/1.1: HTTP/2 (h2c and TLS) with
//! hyper, HTTP/3 with quinn + h3 (any server certificate accepted: these clients test the HTTP
//! layer, `tests/tls.rs` tests certificates).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use super::{client_tls_any, http1_server};

/// An HTTP/2 connection: over TLS (ALPN h2) to `tls`, or cleartext prior knowledge to `clear`.
pub async fn h2_connect(
    addr: SocketAddr,
    tls: bool,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    if tls {
        let name = ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(client_tls_any(&[b"h2"])))
            .connect(name, tcp)
            .await
            .unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        send
    } else {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        send
    }
}

/// A response whose body was read to its end — or the error that stopped it.
pub struct Full2 {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Result<Bytes, String>,
}

pub async fn h2_request(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    uri: &str,
    host: Option<&str>,
) -> Full2 {
    let mut b = http::Request::builder().method(method).uri(uri);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    let resp = send
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .map_err(|_| "body never ended".to_owned())
        .and_then(|r| r.map(|c| c.to_bytes()).map_err(|e| format!("{e:?}")));
    Full2 {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub struct H3Client {
    _endpoint: quinn::Endpoint,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

pub async fn h3_connect(addr: SocketAddr) -> H3Client {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls_any(&[b"h3"])).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    H3Client {
        _endpoint: endpoint,
        send,
    }
}

pub async fn h3_request(client: &mut H3Client, method: &str, path: &str, hosts: &[&str]) -> Full2 {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    for h in hosts {
        b = b.header("host", *h);
    }
    let mut stream = client.send.send_request(b.body(()).unwrap()).await.unwrap();
    stream.finish().await.unwrap();
    let exchange = async {
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        loop {
            match stream.recv_data().await {
                Ok(Some(mut c)) => body.extend_from_slice(&c.copy_to_bytes(c.remaining())),
                Ok(None) => break,
                Err(e) => return Ok((resp, Err(e.to_string()))),
            }
        }
        Ok::<_, String>((resp, Ok(Bytes::from(body))))
    };
    let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("the HTTP/3 response completes")
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_3);
    Full2 {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body,
    }
}

/// An upstream on 127.0.0.1 that answers a request only once `expect` requests have arrived —
/// so a guest that sent them one after the other would never get the first answer (it gets a
/// 504 after `patience` instead). Returns its address.
pub async fn barrier_upstream(expect: usize, patience: Duration) -> SocketAddr {
    let arrived = Arc::new((Mutex::new(0usize), tokio::sync::Notify::new()));
    http1_server(move |req: http::Request<hyper::body::Incoming>| {
        let arrived = arrived.clone();
        async move {
            let path = req.uri().path().to_owned();
            *arrived.0.lock().unwrap() += 1;
            arrived.1.notify_waiters();
            let all_here = async {
                loop {
                    let notified = arrived.1.notified();
                    if *arrived.0.lock().unwrap() >= expect {
                        return;
                    }
                    notified.await;
                }
            };
            let (status, body) = match tokio::time::timeout(patience, all_here).await {
                Ok(()) => (200, format!("body of {path};")),
                Err(_) => (504, "the other request never came".to_owned()),
            };
            http::Response::builder()
                .status(status)
                .body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap()
        }
    })
    .await
}
