//! A desired state behind a good signature: the fuzzer's bytes are the payload, signed here with
//! the pinned control-plane key, so mutations reach the JSON and the structural checks that
//! `desired_state` (random envelopes, which never pass the signature) cannot — what a buggy or
//! compromised control plane could send. Opening never panics; a document that opens is valid,
//! seals again to a document that opens to the same state, and the node's freshness checks on
//! it never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::bundle::desired::{DesiredState, check_fresh, open, seal, seal_payload};
use outpost::bundle::sign::SigningKey;

/// A plausible clock (2027): freshness is checked against the node's clock, never the document's.
const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let cp = SigningKey::from_seed(&[7; 32]);
    let trusted = [cp.verifying_key()];
    let Ok(state) = open(&seal_payload(data, &cp), &trusted) else {
        return;
    };
    state
        .validate()
        .expect("open returned a state that fails validation");
    let resealed = seal(&state, &cp).expect("an opened state seals again");
    let reopened = open(&resealed, &trusted).expect("a resealed state opens");
    assert_eq!(reopened, state, "seal/open changed the state");
    for now in [0, state.issued, NOW, u64::MAX - 1_000_000] {
        let _ = check_fresh(&state, &state.node, None, now);
        let _ = check_fresh(&state, &state.node, Some(&state), now);
    }
    for app in &state.apps {
        let _ = DesiredState::signature_file(app);
    }
});
