//! # guest-kit-p3
//!
//! What the WASI 0.3 test-bed guests share: a complete response from bytes, the query
//! parameters of a request, and an outbound `GET`.
//!
//! Must not: hold state, or do anything a guest's tests should see (each guest's behaviour is
//! its own).

pub use wasip3;

use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::{wit_future, wit_stream};

/// A response with `status`, a `content-type` and `content-length`, and `body`. The body is
/// written by a task that runs after the handler returns: the host reads it only once it has
/// the response.
pub fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Result<Response, ErrorCode> {
    let internal = |what: String| ErrorCode::InternalError(Some(what));
    let headers = Fields::from_list(&[
        ("content-type".to_owned(), content_type.as_bytes().to_vec()),
        ("content-length".to_owned(), body.len().to_string().into_bytes()),
    ])
    .map_err(|e| internal(format!("headers: {e:?}")))?;
    let (mut tx, rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (response, _transmit) = Response::new(headers, Some(rx), trailers_rx);
    response
        .set_status_code(status)
        .map_err(|()| internal(format!("status {status}")))?;
    wasip3::spawn_local(async move {
        let _ = tx.write_all(body).await;
    });
    Ok(response)
}

/// [`respond`] with a `text/plain` body.
pub fn text(status: u16, body: impl Into<String>) -> Result<Response, ErrorCode> {
    respond(status, "text/plain; charset=utf-8", body.into().into_bytes())
}

/// The value of query parameter `name` in `path_with_query`, percent-decoded (`+` is a space).
pub fn query_param(path_with_query: &str, name: &str) -> Option<String> {
    let query = path_with_query.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `GET url` and reads the whole response body.
pub async fn get(url: &str) -> Result<Vec<u8>, ErrorCode> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_and_decoded() {
        let pq = "/?a=http%3A%2F%2Fx%2Fy&b=two+words&c=%zz";
        assert_eq!(query_param(pq, "a").as_deref(), Some("http://x/y"));
        assert_eq!(query_param(pq, "b").as_deref(), Some("two words"));
        assert_eq!(query_param(pq, "c").as_deref(), Some("%zz"));
        assert_eq!(query_param(pq, "d"), None);
        assert_eq!(query_param("/no-query", "a"), None);
    }
}
