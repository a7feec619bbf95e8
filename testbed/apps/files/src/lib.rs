//! # files
//!
//! Serves the guest's file system through `std::fs`, for testing the host's read-only
//! preopens and environment isolation:
//! - `GET /<path>`: 200 with the contents of guest file `/<path>`; 404 `not found: /<path>`
//!   if it does not exist; 500 `error: <e>` for any other failure.
//! - `PUT /<path>`: writes the request body to `/<path>`; 200 `written`, or 403
//!   `write refused: <e>` when the host (which mounts files read-only) says no.
//! - `GET /__env`: 200 with every environment variable as `K=V` lines, sorted, so tests can
//!   assert that nothing of the host's environment leaks in.
//! - other methods: 405.
//!
//! Imports `wasi:filesystem` and `wasi:cli/environment` beyond the proxy world, on purpose:
//! those are the capabilities under test. Must not: decode or normalise paths (the host's
//! preopen sandbox is what is being tested, so `..` is passed through as sent).

use std::io::ErrorKind;

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};
use guest_kit::{BodyReader, Head};

const ENV_PATH: &str = "/__env";

struct Files;

impl Guest for Files {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = guest_kit::path_with_query(&request);
        let (path, _) = guest_kit::split_query(&path_with_query);
        match request.method() {
            Method::Get if path == ENV_PATH => {
                guest_kit::respond_text(out, 200, &env_listing(std::env::vars()));
            }
            Method::Get => get(out, path),
            Method::Put => put(out, path, &request),
            _ => {
                let head = Head::text(405).header("allow", "GET, PUT");
                guest_kit::respond(out, &head, b"method not allowed\n");
            }
        }
    }
}

fn get(out: ResponseOutparam, path: &str) {
    match std::fs::read(path) {
        Ok(contents) => guest_kit::respond(out, &Head::new(200), &contents),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            guest_kit::respond_text(out, 404, &format!("not found: {path}\n"));
        }
        Err(e) => guest_kit::respond_text(out, 500, &format!("error: {e}\n")),
    }
}

fn put(out: ResponseOutparam, path: &str, request: &IncomingRequest) {
    let body = match BodyReader::new(request).and_then(BodyReader::read_to_end) {
        Ok(body) => body,
        Err(e) => {
            guest_kit::respond_text(out, 400, &format!("reading request body: {e}\n"));
            return;
        }
    };
    match std::fs::write(path, body) {
        Ok(()) => guest_kit::respond_text(out, 200, "written\n"),
        Err(e) => guest_kit::respond_text(out, 403, &format!("write refused: {e}\n")),
    }
}

/// `K=V` lines, sorted so the output is stable whatever order the host passes them in.
fn env_listing(vars: impl IntoIterator<Item = (String, String)>) -> String {
    let mut vars: Vec<(String, String)> = vars.into_iter().collect();
    vars.sort();
    vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

guest_kit::wasip2::http::proxy::export!(Files);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_listing_is_sorted_lines() {
        let vars = [("B", "2"), ("A", "1")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(env_listing(vars), "A=1\nB=2\n");
    }

    #[test]
    fn empty_environment_gives_empty_body() {
        assert_eq!(env_listing(Vec::new()), "");
    }
}
