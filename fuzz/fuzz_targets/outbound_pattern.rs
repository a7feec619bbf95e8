//! `allowed_outbound_hosts` patterns and the URIs guests send: parsing and matching never panic.
//! Input: a pattern, a newline, then a URI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::base::outbound::{OutboundPattern, OutboundPolicy};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, uri) = s.split_once('\n').unwrap_or((s, "http://example.com/"));
    let Ok(p) = pattern.parse::<OutboundPattern>() else {
        return;
    };
    if let Ok(uri) = uri.parse::<http::Uri>() {
        let _ = OutboundPolicy::new(vec![p]).allows_uri(&uri);
    }
});
