//! # grants-p3
//!
//! A WASI 0.3 handler that uses the capabilities an app is granted, for the grant tests:
//! - `GET /file?path=P`: 200 with the file's content (read with `std::fs`, i.e. WASI 0.2's
//!   `wasi:filesystem`, which a std guest uses whatever its handler), else 404 with the error;
//! - `GET /var?name=N`: 200 with the variable (`wasi:config/store`), 404 if unset, 500 on a
//!   store error;
//! - `GET /env?name=N`: 200 with the environment variable, 404 if unset.
//!
//! Must not: write anything, or import more than `wasi:config/store` besides what `wasip3` and
//! std bring.

use guest_kit_p3::{query_param, text};
use wasip3::http::types::{ErrorCode, Request, Response};

wit_bindgen_p3::generate!({
    path: "wit",
    world: "outpost:grants-p3/grants-p3",
    runtime_path: "wit_bindgen_p3::rt",
    generate_all,
});

use wasi::config::store;

struct Grants;

wasip3::http::service::export!(Grants);

impl wasip3::exports::http::handler::Guest for Grants {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let pq = request.get_path_with_query().unwrap_or_default();
        let path = pq.split('?').next().unwrap_or_default();
        let Some(arg) = query_param(&pq, if path == "/var" || path == "/env" { "name" } else { "path" })
        else {
            return text(400, "usage: /file?path=P, /var?name=N or /env?name=N\n");
        };
        match path {
            "/file" => match std::fs::read_to_string(&arg) {
                Ok(content) => text(200, content),
                Err(e) => text(404, format!("{arg}: {e}\n")),
            },
            "/var" => match store::get(&arg) {
                Ok(Some(value)) => text(200, value),
                Ok(None) => text(404, format!("no such variable: {arg}\n")),
                Err(e) => text(500, format!("config error: {e:?}\n")),
            },
            "/env" => match std::env::var(&arg) {
                Ok(value) => text(200, value),
                Err(_) => text(404, format!("no such environment variable: {arg}\n")),
            },
            _ => text(404, format!("no route {path}\n")),
        }
    }
}
