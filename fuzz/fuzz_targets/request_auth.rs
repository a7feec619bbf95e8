//! The `Authorization` header of a control-plane request: parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::bundle::request_auth::RequestAuth;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = RequestAuth::parse(Some(s));
    }
});
