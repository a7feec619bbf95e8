//! # grants-p3
//!
//! A WASI 0.3 handler that uses the capabilities an app is granted, for the grant tests:
//! - `GET /file?path=P`: 200 with the file's content (read with `std::fs`, i.e. WASI 0.2's
//!   `wasi:filesystem`, which a std guest uses whatever its handler), else 404 with the error;
//! - `GET /var?name=N`: 200 with the variable (`wasi:config/store`), 404 if unset, 500 on a
//!   store error;
//! - `GET /env?name=N`: 200 with the environment variable, 404 if unset;
//! - `/kv/incr?store=S&key=K`: `wasi:keyvalue/atomics.increment` by 1 → 200 with the new value;
//!   `/kv/get?store=S&key=K`: 200 with the value, 404 `not found`; an `open` error → 403
//!   (`access-denied`) or 500, any other store error → 500, each `error: <Debug>`.
//!
//! Must not: write anything but the key-value keys it is asked to, or import more than
//! `wasi:config/store` and `wasi:keyvalue` besides what `wasip3` and std bring.

use guest_kit_p3::{query_param, text};
use wasip3::http::types::{ErrorCode, Request, Response};

wit_bindgen_p3::generate!({
    path: "wit",
    world: "outpost:grants-p3/grants-p3",
    runtime_path: "wit_bindgen_p3::rt",
    generate_all,
});

use wasi::config::store;
use wasi::keyvalue::{atomics, store as kv};

struct Grants;

wasip3::http::service::export!(Grants);

impl wasip3::exports::http::handler::Guest for Grants {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let pq = request.get_path_with_query().unwrap_or_default();
        let path = pq.split('?').next().unwrap_or_default();
        if let Some(op) = path.strip_prefix("/kv/") {
            let (Some(label), Some(key)) = (query_param(&pq, "store"), query_param(&pq, "key"))
            else {
                return text(400, "usage: /kv/incr|get?store=S&key=K\n");
            };
            return key_value(op, &label, &key);
        }
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

fn key_value(op: &str, label: &str, key: &str) -> Result<Response, ErrorCode> {
    let bucket = match kv::open(label) {
        Ok(b) => b,
        Err(e) => {
            let status = if matches!(e, kv::Error::AccessDenied) { 403 } else { 500 };
            return text(status, format!("error: {e:?}"));
        }
    };
    let result = match op {
        "incr" => atomics::increment(&bucket, key, 1).map(|n| (200, n.to_string())),
        "get" => bucket.get(key).map(|v| match v {
            Some(v) => (200, String::from_utf8_lossy(&v).into_owned()),
            None => (404, "not found".to_owned()),
        }),
        _ => Ok((404, format!("no key-value operation {op}"))),
    };
    match result {
        Ok((status, body)) => text(status, body),
        Err(e) => text(500, format!("error: {e:?}")),
    }
}
