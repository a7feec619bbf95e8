//! # fetch2-p3
//!
//! `GET /?a=URL&b=URL` sends two outbound GETs from one request, both awaited at once
//! (`futures::join!` in one guest task), and answers with both bodies, a's first. A non-200
//! upstream or a refused request ends the request with the guest's `ErrorCode`.
//!
//! `GET /count?wait=URL` takes a number (how many such requests this instance has started, this
//! one included), then sends `GET URL` and, once it answers, answers with the number: two
//! requests in flight at once on one shared instance get 1 and 2, on two instances 1 and 1.
//!
//! Must not: send the two requests one after the other (the test's upstream answers only once
//! both have arrived).
use guest_kit_p3::{get, query_param, respond, text};
use wasip3::http::types::{ErrorCode, Request, Response};

struct Fetch2;

/// `/count` requests this instance has started.
static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

wasip3::http::service::export!(Fetch2);

impl wasip3::exports::http::handler::Guest for Fetch2 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let pq = request.get_path_with_query().unwrap_or_default();
        if let Some(url) = pq.strip_prefix("/count").and_then(|_| query_param(&pq, "wait")) {
            let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            get(&url).await?;
            return respond(200, "text/plain", format!("{n}\n").into_bytes());
        }
        let (Some(a), Some(b)) = (query_param(&pq, "a"), query_param(&pq, "b")) else {
            return text(400, "usage: /?a=URL&b=URL\n");
        };
        // Both sends are polled by the same guest task: they run concurrently on the host.
        let (ra, rb) = futures::join!(get(&a), get(&b));
        let mut out = ra?;
        out.extend_from_slice(&rb?);
        respond(200, "text/plain", out)
    }
}
