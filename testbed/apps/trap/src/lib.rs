//! # trap
//!
//! A guest that dies mid-request, for testing that the host turns traps into a bare 500:
//! - `/unreachable`: executes the wasm `unreachable` instruction.
//! - anything else: panics with a message containing `secret-internal-detail`, which must
//!   never reach the client.
//!
//! Must not: set the response before dying (the host has to handle "no response yet").

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl Guest for Trap {
    fn handle(request: IncomingRequest, _out: ResponseOutparam) {
        let path_with_query = guest_kit::path_with_query(&request);
        let (path, _) = guest_kit::split_query(&path_with_query);
        if path == "/unreachable" {
            unreachable_instruction();
        }
        panic!("guest panic: secret-internal-detail");
    }
}

/// The raw trap, with no panic machinery in front of it.
#[cfg(target_arch = "wasm32")]
fn unreachable_instruction() -> ! {
    core::arch::wasm32::unreachable()
}

/// Host builds (unit tests, clippy) have no wasm instruction to call.
#[cfg(not(target_arch = "wasm32"))]
fn unreachable_instruction() -> ! {
    std::process::abort()
}

guest_kit::wasip2::http::proxy::export!(Trap);
