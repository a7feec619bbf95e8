//! # hello-p3
//!
//! The smallest `wasi:http/handler` (WASI 0.3) component: every request gets a 200
//! `text/plain` greeting. The WASI 0.3 twin of `hello`, built with the `wasip3` crate.
//!
//! Must not: read the request body, touch any capability, or do anything slow; it is the p3
//! baseline for instantiation benchmarks.
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_future, wit_stream};

struct Hello;

wasip3::http::service::export!(Hello);

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        const BODY: &[u8] = b"hello from outpost p3\n";
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
            ("content-length".to_string(), BODY.len().to_string().into_bytes()),
        ])
        .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
        let (mut body_tx, body_rx) = wit_stream::new();
        // Dropping the writer resolves the trailers future with its default, `Ok(None)`.
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        drop(trailers_tx);
        let (response, _transmit) = Response::new(headers, Some(body_rx), trailers_rx);
        // The host only reads the body after `handle` returns, so write it from a task
        // that outlives this call (post-return work in the same instance).
        wasip3::spawn_local(async move {
            let rest = body_tx.write_all(BODY.to_vec()).await;
            debug_assert!(rest.is_empty());
        });
        Ok(response)
    }
}
