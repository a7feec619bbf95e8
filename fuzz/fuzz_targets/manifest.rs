//! `outpost.toml` text from a bundle or an app directory: parsing never panics, and whatever
//! parses has at least one component, each with its outbound policy and routes usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::bundle::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Manifest::parse(text, "fuzz/outpost.toml") {
        assert!(
            !m.components.is_empty(),
            "a manifest parsed without components"
        );
        for c in &m.components {
            let _ = c.outbound_policy();
            for r in &c.routes {
                assert!(r.matches(&r.path), "route {r:?} does not match itself");
            }
        }
    }
});
