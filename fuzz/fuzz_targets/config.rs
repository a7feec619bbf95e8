//! The daemon's config file: parsing and validation never panic; errors name a key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::ops::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text, "fuzz/outpost.toml");
    }
});
