//! Bundle archive bytes (after the signature check, but still attacker-shaped if a trusted key
//! signed something hostile): unpacking never panics and never exceeds its caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::bundle::archive::{Limits, unpack};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_compressed: 1 << 20,
        max_unpacked: 4 << 20,
        max_entries: 64,
        max_entry: 1 << 20,
    };
    if let Ok(u) = unpack(data, &limits) {
        assert!(u.len() <= limits.max_entries);
        assert!(u.total_size() <= limits.max_unpacked);
        let _ = u.manifest();
    }
});
