//! A Spin SDK (spin-sdk 5) key-value app, built as a Spin user builds one: `Store::open`, then
//! set, get, delete, exists and get-keys over HTTP routes (see docs/guest-apps.md).
//!
//! `POST /set/<store>/<key>` (body = value) → 200 `ok`; `GET /get/<store>/<key>` → 200 value or
//! 404 `not found`; `POST /delete/<store>/<key>` → 200 `ok`; `GET /exists/<store>/<key>` →
//! `true` or `false`; `GET /keys/<store>` → the sorted keys, one a line. A store error is
//! 403 (`access-denied`), 404 (`no-such-store`) or 500, body `error: <Debug of the error>`.
// `#[http_component]` expands to the component export glue (`export_name`, `unsafe` blocks)
// inside this crate; the workspace denies unsafe code everywhere else.
#![allow(unsafe_code)]

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::{Error, Store};

#[http_component]
fn handle(req: Request) -> Response {
    let path = req.path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (op, store, key) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    match run(op, store, key, req.body()) {
        Ok(resp) => resp,
        Err(e) => {
            let status = match e {
                Error::AccessDenied => 403,
                Error::NoSuchStore => 404,
                _ => 500,
            };
            Response::new(status, format!("error: {e:?}"))
        }
    }
}

fn run(op: &str, store: &str, key: &str, body: &[u8]) -> Result<Response, Error> {
    if !matches!(op, "set" | "get" | "delete" | "exists" | "keys") {
        return Ok(Response::new(404, "no such route"));
    }
    let store = if store == "default" {
        Store::open_default()?
    } else {
        Store::open(store)?
    };
    Ok(match op {
        "set" => {
            store.set(key, body)?;
            Response::new(200, "ok")
        }
        "get" => match store.get(key)? {
            Some(value) => Response::new(200, value),
            None => Response::new(404, "not found"),
        },
        "delete" => {
            store.delete(key)?;
            Response::new(200, "ok")
        }
        "exists" => Response::new(200, store.exists(key)?.to_string()),
        _ => {
            let mut keys = store.get_keys()?;
            keys.sort();
            let mut text = keys.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            Response::new(200, text)
        }
    })
}
