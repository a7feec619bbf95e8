//! Per-request instantiation latency (criterion), plus a percentile pass.
//!
//! Run: `cargo bench --bench instantiate`
//!
//! Measures, on the built-in demo component with the engine sized for this machine:
//! - `instantiate`: fresh `Store` + host state + instantiation from the pre-linked component
//!   (what every request pays before the guest runs);
//! - `request`: a whole in-process request — admission, instantiate, run the guest's handler,
//!   collect the response body (no sockets).
//!
//! After criterion, 20 000 of each are timed one by one and p50/p99/p99.9 printed, because the
//! tail is what an edge node's users feel.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http_body_util::BodyExt;
use outpost::ops::metrics::Metrics;
use outpost::runtime::app::{AppSource, load_app};
use outpost::runtime::component::{AppComponent, RequestCtx};
use outpost::runtime::{Runtime, RuntimeSettings};
use outpost::sizing;

fn setup(rt: &tokio::runtime::Runtime) -> (Arc<Runtime>, Arc<AppComponent>) {
    let s = sizing::derive(&sizing::detect(), &sizing::Overrides::default()).unwrap();
    let runtime =
        Arc::new(Runtime::new(RuntimeSettings::from_sizing(&s, None), Metrics::new()).unwrap());
    let app = rt.block_on(load_app(&runtime, &AppSource::Demo)).unwrap();
    let c = app.components[0].component.clone();
    (runtime, c)
}

/// One worker, like a single-core gateway; the bench thread drives it with `block_on`.
fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn one_request(c: &Arc<AppComponent>) {
    let body = http_body_util::Empty::<Bytes>::new()
        .map_err(|e: std::convert::Infallible| -> wasmtime_wasi_http::Error { match e {} });
    let req = http::Request::builder()
        .uri("http://bench.local/")
        .body(body)
        .unwrap();
    let resp = c
        .handle(
            req,
            RequestCtx {
                id: 0,
                https: false,
            },
        )
        .await
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"hello from outpost\n");
}

fn bench(c: &mut Criterion) {
    let rt = bench_runtime();
    let (_runtime, comp) = setup(&rt);
    c.bench_function("instantiate", |b| {
        b.iter(|| rt.block_on(comp.probe()).unwrap());
    });
    c.bench_function("request", |b| b.iter(|| rt.block_on(one_request(&comp))));
}

fn percentiles() {
    let rt = bench_runtime();
    let (_runtime, comp) = setup(&rt);
    let n = 20_000;
    let report = |name: &str, mut v: Vec<Duration>| {
        v.sort();
        let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        println!(
            "{name:<12} n={n}  p50={:>8.1?}  p99={:>8.1?}  p99.9={:>8.1?}",
            at(0.50),
            at(0.99),
            at(0.999)
        );
    };
    let mut inst = Vec::with_capacity(n);
    for _ in 0..n {
        inst.push(rt.block_on(comp.probe()).unwrap());
    }
    report("instantiate", inst);
    let mut reqs = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        rt.block_on(one_request(&comp));
        reqs.push(t.elapsed());
    }
    report("request", reqs);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(50);
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
