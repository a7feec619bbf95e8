//! # config-reader
//!
//! Reads app variables through `wasi:config/store`, for testing the host's variables
//! capability:
//! - `GET /`: 200 with every variable as `k=v` lines, sorted by key.
//! - `GET /<key>`: 200 with the value; 404 `no such variable: <key>` if unset.
//! - a store error: 500 `config error: <e>`.
//!
//! The world is `wasi:http/proxy` (from `wasip2`) plus `import wasi:config/store@0.2.0-rc.1`
//! (from the vendored WIT under `wit/`, bound here with wit-bindgen). Must not: import
//! anything else, or cache values across requests (each request is a fresh instance anyway).

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    path: "wit",
    world: "outpost:config-reader/config-reader",
    generate_all,
});

use wasi::config::store;

struct ConfigReader;

impl Guest for ConfigReader {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = guest_kit::path_with_query(&request);
        let (path, _) = guest_kit::split_query(&path_with_query);
        let key = path.trim_start_matches('/');
        if key.is_empty() {
            match store::get_all() {
                Ok(pairs) => guest_kit::respond_text(out, 200, &listing(pairs)),
                Err(e) => guest_kit::respond_text(out, 500, &format!("config error: {e:?}\n")),
            }
            return;
        }
        match store::get(key) {
            Ok(Some(value)) => guest_kit::respond_text(out, 200, &value),
            Ok(None) => guest_kit::respond_text(out, 404, &format!("no such variable: {key}\n")),
            Err(e) => guest_kit::respond_text(out, 500, &format!("config error: {e:?}\n")),
        }
    }
}

/// `k=v` lines sorted by key, so the body does not depend on the host's map order.
fn listing(mut pairs: Vec<(String, String)>) -> String {
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

guest_kit::wasip2::http::proxy::export!(ConfigReader);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_sorts_by_key() {
        let pairs = vec![
            ("zone".to_owned(), "eu".to_owned()),
            ("api_base".to_owned(), "https://x".to_owned()),
        ];
        assert_eq!(listing(pairs), "api_base=https://x\nzone=eu\n");
    }
}
