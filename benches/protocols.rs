//! Hello-world load over every protocol Outpost speaks, in one run: HTTP/1.1 (cleartext),
//! HTTP/1.1 over TLS, HTTP/2 over TLS and HTTP/3 (QUIC), all against the same daemon.
//!
//! Run: `cargo bench --bench protocols -- [SECONDS] [ROUNDS] [CONCURRENCY]` (defaults 10, 3, 32).
//!
//! Starts the release `outpost serve --https` on 127.0.0.1 with the hello component and a
//! certificate made here, then for each round measures each protocol in turn (so machine noise
//! hits all of them alike) with CONCURRENCY requests in flight, all on one client thread (like
//! `wrk -t1`):
//! - `http1`, `http1+tls`: CONCURRENCY keep-alive connections, one request at a time each;
//! - `h2+tls`, `h3`: CONCURRENCY / 8 connections, 8 concurrent streams each (how browsers use
//!   multiplexed protocols: few connections, many streams).
//!
//! Handshakes happen before the clock starts. Prints requests/s and p50/p99 latency per protocol
//! (median round), and the ratios to HTTP/1.1. Stops by itself; every socket is on loopback.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

const BODY: &str = "hello from outpost\n";
const STREAMS_PER_CONNECTION: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http1Tls,
    H2Tls,
    H3,
}

impl Proto {
    const ALL: [Proto; 4] = [Proto::Http1, Proto::Http1Tls, Proto::H2Tls, Proto::H3];

    fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http1Tls => "http1+tls",
            Proto::H2Tls => "h2+tls",
            Proto::H3 => "h3",
        }
    }
}

/// Addresses of the daemon under test.
#[derive(Debug, Clone, Copy)]
struct Target {
    http: SocketAddr,
    https: SocketAddr,
    h3: SocketAddr,
}

/// One round's result for one protocol.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let nums: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let secs = nums.first().copied().unwrap_or(10).max(1);
    let rounds = nums.get(1).copied().unwrap_or(3).max(1);
    let concurrency = usize::try_from(nums.get(2).copied().unwrap_or(32))
        .unwrap()
        .max(STREAMS_PER_CONNECTION);

    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let der = made.cert.der().clone();
    let hello = Path::new(env!("OUTPOST_TESTBED_APPS_DIR")).join("hello.wasm");
    // The daemon's log goes to a file: when the clients stop at the end of each phase, guests
    // still finishing a response print that the peer went away, which is noise here.
    let log_path = dir.path().join("outpost.log");
    let log = std::fs::File::create(&log_path).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["--log-level", "warn", "serve", "--no-cache"])
        .args(["--listen", "127.0.0.1:0", "--https", "127.0.0.1:0"])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(&hello)
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let server = Server(child);
    let (mut http, mut https, mut h3) = (None, None, None);
    for line in out.lines().map_while(Result::ok) {
        let parse = |s: &str| s.parse::<SocketAddr>().ok();
        if let Some(a) = line.strip_prefix("listening on http://") {
            http = parse(a);
        } else if let Some(a) = line.strip_prefix("listening on https://") {
            https = parse(a);
        } else if let Some(a) = line.strip_prefix("listening on h3://") {
            h3 = parse(a);
        }
        if http.is_some() && https.is_some() && h3.is_some() {
            break;
        }
    }
    let (Some(http), Some(https), Some(h3)) = (http, https, h3) else {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("outpost did not print its addresses; its log:\n{log}");
    };
    let target = Target { http, https, h3 };

    // One client thread, like `wrk -t1`: the server gets the other core(s).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results: Vec<(Proto, Vec<Sample>)> = Proto::ALL.iter().map(|p| (*p, vec![])).collect();
    rt.block_on(async {
        for p in Proto::ALL {
            // Warm-up: connections, caches, the server's compiled code.
            run(p, target, &der, concurrency, Duration::from_secs(2)).await;
        }
        for round in 1..=rounds {
            for (p, samples) in results.iter_mut() {
                let s = run(*p, target, &der, concurrency, Duration::from_secs(secs)).await;
                eprintln!(
                    "round {round}: {:<10} {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
                    p.name(),
                    s.rps,
                    s.p50_us,
                    s.p99_us,
                    s.errors
                );
                samples.push(s);
            }
        }
    });
    drop(server);

    let median = |v: &[Sample]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        v[v.len() / 2]
    };
    let base = median(&results[0].1).rps;
    println!();
    println!("| protocol | req/s (median of {rounds}) | p50 | p99 | req/s vs http1 | errors |");
    println!("|---|---|---|---|---|---|");
    for (p, samples) in &results {
        let m = median(samples);
        let errors: u64 = samples.iter().map(|s| s.errors).sum();
        println!(
            "| {} | {:.0} | {} µs | {} µs | {:.2}x | {} |",
            p.name(),
            m.rps,
            m.p50_us,
            m.p99_us,
            m.rps / base,
            errors
        );
    }
    println!();
    println!(
        "machine: {} cores, {}, {secs} s per protocol per round, {concurrency} requests in flight, \
         one client thread",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
}

/// Keeps `concurrency` requests in flight over `p` for `dur`; returns throughput and latency.
async fn run(
    p: Proto,
    target: Target,
    der: &CertificateDer<'static>,
    concurrency: usize,
    dur: Duration,
) -> Sample {
    let workers: Vec<Worker> = match p {
        Proto::Http1 | Proto::Http1Tls => {
            let mut w = Vec::with_capacity(concurrency);
            for _ in 0..concurrency {
                w.push(Worker::h1(target, der, p == Proto::Http1Tls).await);
            }
            w
        }
        Proto::H2Tls => {
            let mut w = Vec::with_capacity(concurrency);
            for _ in 0..concurrency / STREAMS_PER_CONNECTION {
                let send = h2_connect(target.https, der).await;
                for _ in 0..STREAMS_PER_CONNECTION {
                    w.push(Worker::H2(send.clone()));
                }
            }
            w
        }
        Proto::H3 => {
            let mut w = Vec::with_capacity(concurrency);
            for _ in 0..concurrency / STREAMS_PER_CONNECTION {
                let (endpoint, send) = h3_connect(target.h3, der).await;
                for _ in 0..STREAMS_PER_CONNECTION {
                    w.push(Worker::H3 {
                        _endpoint: endpoint.clone(),
                        send: send.clone(),
                    });
                }
            }
            w
        }
    };
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    if w.request().await {
                        lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |q: f64| {
        if all.is_empty() {
            0
        } else {
            let i = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len()) - 1;
            u64::from(all[i])
        }
    };
    Sample {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

enum Worker {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    H3 {
        /// Kept so the client endpoint outlives the requests.
        _endpoint: quinn::Endpoint,
        send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    },
}

impl Worker {
    async fn h1(target: Target, der: &CertificateDer<'static>, tls: bool) -> Self {
        let tcp = tokio::net::TcpStream::connect(if tls { target.https } else { target.http })
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let send = if tls {
            let tls = tls_connector(der, b"http/1.1")
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            send
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            send
        };
        Worker::H1(send)
    }

    /// One GET /; true when it answered 200 with the expected body.
    async fn request(&mut self) -> bool {
        match self {
            Worker::H1(send) => {
                let req = http::Request::builder()
                    .uri("/")
                    .header("host", "localhost")
                    .body(Empty::new())
                    .unwrap();
                match send.send_request(req).await {
                    Ok(r) => r.status() == 200 && body_ok(r.into_body().collect().await.ok()),
                    Err(_) => false,
                }
            }
            Worker::H2(send) => {
                let req = http::Request::builder()
                    .uri("https://localhost/")
                    .body(Empty::new())
                    .unwrap();
                match send.send_request(req).await {
                    Ok(r) => r.status() == 200 && body_ok(r.into_body().collect().await.ok()),
                    Err(_) => false,
                }
            }
            Worker::H3 { send, .. } => {
                let req = http::Request::builder()
                    .uri("https://localhost/")
                    .body(())
                    .unwrap();
                let Ok(mut stream) = send.send_request(req).await else {
                    return false;
                };
                if stream.finish().await.is_err() {
                    return false;
                }
                let Ok(resp) = stream.recv_response().await else {
                    return false;
                };
                let mut n = 0;
                while let Ok(Some(chunk)) = stream.recv_data().await {
                    n += chunk.remaining();
                }
                resp.status() == 200 && n == BODY.len()
            }
        }
    }
}

fn body_ok(c: Option<http_body_util::Collected<Bytes>>) -> bool {
    c.is_some_and(|c| c.to_bytes() == BODY.as_bytes())
}

fn client_config(der: &CertificateDer<'static>, alpn: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    c
}

fn tls_connector(der: &CertificateDer<'static>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(client_config(der, alpn)))
}

async fn h2_connect(
    addr: SocketAddr,
    der: &CertificateDer<'static>,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = tls_connector(der, b"h2")
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

async fn h3_connect(
    addr: SocketAddr,
    der: &CertificateDer<'static>,
) -> (
    quinn::Endpoint,
    h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
) {
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(client_config(der, b"h3")).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    (endpoint, send)
}
