//! What an OCI registry sends and what a user types: manifest bytes (with the first line as the
//! response's `Content-Type`) and `oci://` references never panic; a parsed manifest
//! re-serializes to bytes that parse to the same manifest; a parsed reference prints as text
//! that parses to the same reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::oci::{Manifest, Reference};

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (std::str::from_utf8(&data[..i]).ok(), &data[i + 1..]),
        None => (None, data),
    };
    if let Ok((manifest, media_type)) = Manifest::parse(body, header) {
        let again = match &manifest {
            Manifest::Image(m) => m.to_bytes(),
            Manifest::Index(i) => i.to_bytes(),
        };
        let (back, _) =
            Manifest::parse(&again, Some(&media_type)).expect("re-serialized manifest parses");
        assert_eq!(back, manifest);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(reference) = text.parse::<Reference>()
    {
        let back: Reference = reference
            .to_string()
            .parse()
            .expect("printed reference parses");
        assert_eq!(back, reference);
    }
});
