//! A detached `.sig` file: parsing (document lines, signature lines, base64) never panics, and
//! a parsed document re-encodes to bytes that parse to the same document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::bundle::sign::SignedDoc;

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = SignedDoc::parse(data, 64 << 10) {
        let again = SignedDoc::parse(&doc.encode(), 64 << 10).expect("re-encoded document parses");
        assert_eq!(again.doc_bytes(), doc.doc_bytes());
        let _ = doc.doc().parsed_version();
    }
});
