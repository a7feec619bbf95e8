//! A desired-state document from the control plane (or anyone on the path): opening it never
//! panics, and nothing opens without a valid signature by the pinned key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::bundle::desired::open;
use outpost::bundle::sign::SigningKey;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_seed(&[7; 32]).verifying_key();
    assert!(
        open(data, &[key]).is_err(),
        "random bytes opened as a desired state signed by a key nobody holds"
    );
});
