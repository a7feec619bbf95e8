//! The tar stream inside a bundle, gzipped here so that mutations reach the tar checks (paths,
//! entry types, sizes, duplicates, the manifest) instead of dying at the gzip CRC as most of the
//! `archive` target's inputs do. Same property: unpacking never panics and stays within its caps.
#![no_main]

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use outpost::bundle::archive::{Limits, unpack};

fuzz_target!(|tar: &[u8]| {
    let limits = Limits {
        max_compressed: 1 << 20,
        max_unpacked: 4 << 20,
        max_entries: 64,
        max_entry: 1 << 20,
    };
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    if gz.write_all(tar).is_err() {
        return;
    }
    let Ok(bytes) = gz.finish() else { return };
    if let Ok(u) = unpack(&bytes, &limits) {
        assert!(u.len() <= limits.max_entries);
        assert!(u.total_size() <= limits.max_unpacked);
        let _ = u.manifest();
    }
});
