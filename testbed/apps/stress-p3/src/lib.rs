//! # stress-p3
//!
//! A WASI 0.3 handler that misbehaves on request, for the limit tests:
//! - `/spin`: busy-loops before answering (the timeout and the fair scheduler stop it);
//! - `/spin-after`: answers 200 at once, then busy-loops in the task that writes the body;
//! - `/alloc?mib=N`: allocates N MiB (beyond `memory_limit` the allocation fails and the guest
//!   traps);
//! - `/keep?mib=N`: the same, never freed: it stays for the instance's next request;
//! - `/fetch-after?url=URL`: counts as a `/count` request, answers 200 at once, then (in a task
//!   of its own, after the response) sends `GET URL` and waits for its answer: post-response
//!   work that waits on I/O;
//! - `/count`: how many `/count` requests this instance has served, itself included (1 on a
//!   fresh instance; more only when the instance is reused);
//! - `/trap`: panics (a trap);
//! - `/error`: returns an `ErrorCode` instead of a response;
//! - anything else: 200 `ok PATH`.
//!
//! Must not: be served to real traffic.

use guest_kit_p3::{get, query_param, respond};
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

struct Stress;

/// `/count` requests this instance has served.
static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

wasip3::http::service::export!(Stress);

/// Never returns: a loop the optimiser cannot remove.
fn spin() -> u64 {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        if x == 42 {
            return x;
        }
    }
}

impl wasip3::exports::http::handler::Guest for Stress {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let pq = request.get_path_with_query().unwrap_or_default();
        let mut body = format!("ok {pq}\n").into_bytes();
        match pq.as_str() {
            "/spin" => {
                spin();
            }
            "/trap" => panic!("asked to trap"),
            "/count" => {
                let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                body = format!("{n}\n").into_bytes();
            }
            "/error" => {
                return Err(ErrorCode::InternalError(Some("asked to fail".into())));
            }
            _ => {
                let (alloc, keep) = (
                    pq.strip_prefix("/alloc?mib="),
                    pq.strip_prefix("/keep?mib="),
                );
                if let Some(n) = alloc.or(keep) {
                    let n: usize = n.parse().unwrap_or(1);
                    let v = std::hint::black_box(vec![1u8; n << 20]);
                    body = format!("allocated {} MiB\n", v.len() >> 20).into_bytes();
                    if keep.is_some() {
                        v.leak();
                    }
                }
            }
        }
        if pq.starts_with("/fetch-after?") {
            let url = query_param(&pq, "url").unwrap_or_default();
            COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            wasip3::spawn_local(async move {
                let _ = get(&url).await;
            });
            return respond(200, "text/plain", b"answered\n".to_vec());
        }
        if pq == "/spin-after" {
            // The body first, then the loop, in the task that writes it.
            let (mut tx, rx) = wit_stream::new();
            let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
            drop(trailers_tx);
            let (response, _transmit) = Response::new(Fields::new(), Some(rx), trailers_rx);
            wasip3::spawn_local(async move {
                let _ = tx.write_all(body).await;
                drop(tx);
                spin();
            });
            return Ok(response);
        }
        respond(200, "text/plain", body)
    }
}
