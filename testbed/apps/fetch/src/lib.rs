//! # fetch
//!
//! Makes one outbound request through `wasi:http/outgoing-handler`, for testing the host's
//! outbound-HTTP allow-list. Written with `wstd` (async) rather than raw `wasip2`, so the
//! test bed covers the second common Rust guest toolchain too.
//! - `GET /?url=<percent-encoded absolute url>`: outbound `GET` to that url; 200 with
//!   `status=<code>` on the first line followed by at most the first 1024 bytes of the
//!   upstream body.
//! - outbound failure: 502 `outbound error: <error, Debug-formatted>`, so the error the guest
//!   saw (e.g. `HttpRequestDenied`) is visible to the test.
//! - missing or malformed `url`: 400.
//!
//! Must not: read more of the upstream body than it returns, or retry.

use wstd::http::body::util::BodyExt;
use wstd::http::{Body, Client, Error, ErrorCode, Request, Response, StatusCode, Uri};

/// How much of the upstream body is echoed back; enough to recognise a page, small enough that
/// an endless upstream body cannot grow the guest.
const BODY_PREFIX: usize = 1024;

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let target = match target_url(request.uri().query()) {
        Ok(uri) => uri,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let outbound = Request::get(target).body(Body::empty())?;
    let response = match Client::new().send(outbound).await {
        Ok(response) => response,
        Err(e) => {
            let shown = describe(&e);
            return text(
                StatusCode::BAD_GATEWAY,
                format!("outbound error: {shown}\n"),
            );
        }
    };
    let status = response.status().as_u16();
    let mut body = format!("status={status}\n").into_bytes();
    match read_prefix(response.into_body(), BODY_PREFIX).await {
        Ok(prefix) => body.extend_from_slice(&prefix),
        Err(e) => {
            let shown = describe(&e);
            return text(
                StatusCode::BAD_GATEWAY,
                format!("outbound body error: {shown}\n"),
            );
        }
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(body))?)
}

fn text(status: StatusCode, body: String) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(body))?)
}

/// The host's own error code when there is one (`HttpRequestDenied`, `DnsTimeout`, …), as
/// the guest sees it; otherwise whatever wstd reported.
fn describe(e: &Error) -> String {
    match e.downcast_ref::<ErrorCode>() {
        Some(code) => format!("{code:?}"),
        None => format!("{e:?}"),
    }
}

/// Reads frames until `limit` bytes are in hand or the body ends, then stops reading.
async fn read_prefix(body: Body, limit: usize) -> Result<Vec<u8>, Error> {
    let mut body = body.into_boxed_body();
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            let room = limit - prefix.len();
            prefix.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(prefix)
}

/// The `url` query parameter, decoded and checked to be absolute.
fn target_url(query: Option<&str>) -> Result<Uri, String> {
    let raw = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("url="))
        .ok_or_else(|| "missing ?url=<percent-encoded absolute url>".to_owned())?;
    let decoded =
        percent_decode(raw).ok_or_else(|| format!("malformed percent-encoding: {raw}"))?;
    let uri: Uri = decoded
        .parse()
        .map_err(|e| format!("invalid url {decoded:?}: {e}"))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(format!("url must be absolute: {decoded:?}"));
    }
    Ok(uri)
}

/// Decodes `%XX` escapes. `+` stays `+`: it is a legal URL character, and clients encode a
/// space as `%20` in a url-valued parameter.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let &[hi, lo] = bytes.get(i + 1..i + 3)? else {
                return None;
            };
            // Digit by digit: `u8::from_str_radix` would also accept a sign, as in `%+1`.
            let hi = char::from(hi).to_digit(16)?;
            let lo = char::from(lo).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_handles_escapes_and_rejects_broken_ones() {
        assert_eq!(
            percent_decode("http%3A%2F%2Fa.example%2Fx%3Fy%3D1").as_deref(),
            Some("http://a.example/x?y=1")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%4").as_deref(), None);
        assert_eq!(percent_decode("%zz").as_deref(), None);
        assert_eq!(percent_decode("%+1").as_deref(), None);
        assert_eq!(percent_decode("%ff").as_deref(), None);
    }

    #[test]
    fn target_url_finds_the_parameter_among_others() {
        let uri = target_url(Some("x=1&url=http%3A%2F%2F127.0.0.1%3A9%2Fp")).ok();
        assert_eq!(
            uri.map(|u| u.to_string()),
            Some("http://127.0.0.1:9/p".to_owned())
        );
    }

    #[test]
    fn describe_shows_the_host_error_code_by_name() {
        let denied = Error::from(ErrorCode::HttpRequestDenied);
        assert!(describe(&denied).contains("HttpRequestDenied"));
        let other = Error::msg("no route");
        assert!(describe(&other).contains("no route"));
    }

    #[test]
    fn target_url_rejects_missing_or_relative() {
        assert!(target_url(None).is_err());
        assert!(target_url(Some("u=1")).is_err());
        assert!(target_url(Some("url=%2Frelative")).is_err());
    }
}
