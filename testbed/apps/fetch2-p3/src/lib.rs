//! # fetch2-p3
//!
//! `GET /?a=URL&b=URL` sends two outbound GETs from one request, both awaited at once
//! (`futures::join!` in one guest task), and answers with both bodies, a's first. A non-200
//! upstream or a refused request ends the request with the guest's `ErrorCode`.
//!
//! Must not: send the two requests one after the other (the test's upstream answers only once
//! both have arrived).
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::{wit_future, wit_stream};

struct Fetch2;

wasip3::http::service::export!(Fetch2);

impl wasip3::exports::http::handler::Guest for Fetch2 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let pq = request.get_path_with_query().unwrap_or_default();
        let query = pq.split_once('?').map(|(_, q)| q).unwrap_or("");
        let (mut a, mut b) = (None, None);
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("a", v)) => a = Some(percent_decode(v)),
                Some(("b", v)) => b = Some(percent_decode(v)),
                _ => {}
            }
        }
        let (Some(a), Some(b)) = (a, b) else {
            return text(400, b"usage: /?a=URL&b=URL\n".to_vec());
        };
        // Both sends are polled by the same guest task: they run concurrently on the host.
        let (ra, rb) = futures::join!(get(&a), get(&b));
        let mut out = ra?;
        out.extend_from_slice(&rb?);
        text(200, out)
    }
}

/// Sends `GET url` and reads the whole response body.
async fn get(url: &str) -> Result<Vec<u8>, ErrorCode> {
    let bad = || ErrorCode::InternalError(Some(format!("bad url {url:?}")));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(bad()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (req, _transmit) = Request::new(Fields::new(), None, trailers_rx, None);
    req.set_method(&Method::Get).map_err(|()| bad())?;
    req.set_scheme(Some(&scheme)).map_err(|()| bad())?;
    req.set_authority(Some(authority)).map_err(|()| bad())?;
    req.set_path_with_query(Some(path)).map_err(|()| bad())?;

    let resp = client::send(req).await?;
    let status = resp.get_status_code();
    let (res_tx, res_rx) = wit_future::new(|| Ok(()));
    drop(res_tx);
    let (body, _trailers) = Response::consume_body(resp, res_rx);
    let body = body.collect().await;
    if status != 200 {
        return Err(ErrorCode::InternalError(Some(format!("{url}: status {status}"))));
    }
    Ok(body)
}

fn text(status: u16, body: Vec<u8>) -> Result<Response, ErrorCode> {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain".to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ])
    .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
    let (mut tx, rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (response, _transmit) = Response::new(headers, Some(rx), trailers_rx);
    response.set_status_code(status).map_err(|()| ErrorCode::InternalError(None))?;
    wasip3::spawn_local(async move {
        let _ = tx.write_all(body).await;
    });
    Ok(response)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
