//! A Spin SDK (spin-sdk 5) variables app: `GET /<name>` → 200 with `variables::get(name)`;
//! an undefined variable → 404, an invalid name → 400, any other error → 500; the body of an
//! error is `error: <Debug of the error>` (see docs/guest-apps.md).
// `#[http_component]` expands to the component export glue (`export_name`, `unsafe` blocks)
// inside this crate; the workspace denies unsafe code everywhere else.
#![allow(unsafe_code)]

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;
use spin_sdk::variables::{self, Error};

#[http_component]
fn handle(req: Request) -> Response {
    let name = req.path().trim_start_matches('/');
    match variables::get(name) {
        Ok(value) => Response::new(200, value),
        Err(e) => {
            let status = match e {
                Error::Undefined(_) => 404,
                Error::InvalidName(_) => 400,
                _ => 500,
            };
            Response::new(status, format!("error: {e:?}"))
        }
    }
}
