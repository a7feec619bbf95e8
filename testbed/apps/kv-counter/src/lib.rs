//! # kv-counter
//!
//! Uses `wasi:keyvalue` (store, atomics, batch) directly, bound with wit-bindgen from the WIT
//! under `wit/`:
//! - `POST /incr/<label>/<key>`: `atomics::increment` by 1 → 200 with the new value.
//! - `GET /get/<label>/<key>`: 200 with the value, 404 `not found`.
//! - `/rmw/<label>/<key>` (any method): a read-modify-write as an app writes one — `get`, add
//!   one to the decimal value (absent: 0), `set` — → 200 with the new value. Not atomic: two
//!   at once may both write the same number (the bench's request; `/incr` is the atomic one).
//! - `POST /batch/<label>`: `set-many` a=1, b=2, then `get-many` [a, b, c] and `list-keys` →
//!   200 with `get-many` as `k=v` lines (`c=-` for absent) and a `keys=` line.
//! - an `open` error → 403 (`AccessDenied`) or 500 with `error: <Debug>`; any other store error
//!   → 500 `error: <Debug>`.

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    path: "wit",
    world: "outpost:kv-counter/kv-counter",
    generate_all,
});

use wasi::keyvalue::{atomics, batch, store};

struct KvCounter;

impl Guest for KvCounter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = guest_kit::path_with_query(&request);
        let (path, _) = guest_kit::split_query(&path_with_query);
        let mut parts = path.trim_start_matches('/').splitn(3, '/');
        let (op, label, key) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let bucket = match store::open(label) {
            Ok(b) => b,
            Err(e) => {
                let status = if matches!(e, store::Error::AccessDenied) {
                    403
                } else {
                    500
                };
                guest_kit::respond_text(out, status, &format!("error: {e:?}"));
                return;
            }
        };
        let result = match op {
            "incr" => atomics::increment(&bucket, key, 1).map(|n| (200, n.to_string())),
            "get" => bucket.get(key).map(|v| match v {
                Some(v) => (200, String::from_utf8_lossy(&v).into_owned()),
                None => (404, "not found".to_owned()),
            }),
            "batch" => batch_round(&bucket),
            "rmw" => read_modify_write(&bucket, key),
            _ => Ok((404, "no such route".to_owned())),
        };
        match result {
            Ok((status, body)) => guest_kit::respond_text(out, status, &body),
            Err(e) => guest_kit::respond_text(out, 500, &format!("error: {e:?}")),
        }
    }
}

fn read_modify_write(bucket: &store::Bucket, key: &str) -> Result<(u16, String), store::Error> {
    let n: u64 = bucket
        .get(key)?
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
        + 1;
    bucket.set(key, n.to_string().as_bytes())?;
    Ok((200, n.to_string()))
}

fn batch_round(bucket: &store::Bucket) -> Result<(u16, String), store::Error> {
    batch::set_many(
        bucket,
        &[
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
        ],
    )?;
    let got = batch::get_many(bucket, &["a".to_owned(), "b".to_owned(), "c".to_owned()])?;
    let mut body = String::new();
    for (name, item) in ["a", "b", "c"].iter().zip(got) {
        match item {
            Some((k, v)) => body.push_str(&format!("{k}={}\n", String::from_utf8_lossy(&v))),
            None => body.push_str(&format!("{name}=-\n")),
        }
    }
    let keys = bucket.list_keys(None)?;
    body.push_str(&format!("keys={}\n", keys.keys.join(",")));
    Ok((200, body))
}

guest_kit::wasip2::http::proxy::export!(KvCounter);
