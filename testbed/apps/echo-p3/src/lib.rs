//! # echo-p3
//!
//! Streams the request body back as the response body, chunk by chunk, then forwards the
//! request's trailers: each chunk read is written before the next is read, so at most one chunk
//! (64 KiB) is held in guest memory whatever the body's size, and a client sees its first chunk
//! come back before it sends the second.
//!
//! Must not: buffer the body or answer before it has the request (the streaming tests rely on
//! both).
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::wit_bindgen::StreamResult;
use wasip3::{wit_future, wit_stream};

const CHUNK: usize = 64 * 1024;

struct Echo;

wasip3::http::service::export!(Echo);

impl wasip3::exports::http::handler::Guest for Echo {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let mut fields = vec![];
        for name in ["content-type", "content-length"] {
            for value in request.get_headers().get(name) {
                fields.push((name.to_string(), value));
            }
        }
        let headers = Fields::from_list(&fields)
            .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;

        // `res` reports to the host whether the guest consumed the body without error.
        let (res_tx, res_rx) = wit_future::new(|| Ok(()));
        drop(res_tx);
        let (mut body_in, req_trailers) = Request::consume_body(request, res_rx);

        let (mut body_out, body_out_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _transmit) = Response::new(headers, Some(body_out_rx), trailers_rx);

        wasip3::spawn_local(async move {
            let mut buf = Vec::with_capacity(CHUNK);
            loop {
                let (status, chunk) = body_in.read(buf).await;
                buf = chunk;
                match status {
                    StreamResult::Complete(_) => {
                        buf = body_out.write_all(buf).await;
                        if !buf.is_empty() {
                            // Response reader went away (client hung up).
                            return;
                        }
                    }
                    StreamResult::Dropped => break,
                    StreamResult::Cancelled => unreachable!(),
                }
            }
            drop(body_out);
            // Forward the request trailers (or the error that ended the request body).
            let _ = trailers_tx.write(req_trailers.await).await;
        });
        Ok(response)
    }
}
