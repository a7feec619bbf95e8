//! # memhog
//!
//! Allocates memory on demand, for testing per-instance memory limits and pool slot reuse:
//! - `/grow/<mib>`: allocates `<mib>` MiB and writes one byte in every 4 KiB page (so the
//!   pages are really committed), then 200 `allocated <mib> MiB`.
//! - `/keep/<mib>`: the same, but the allocation is never freed: it stays in the instance's
//!   memory for its next request (the instance-reuse tests).
//! - `/count`: 200 with how many `/count` requests this instance has served, itself included
//!   (1 on a fresh instance; more only when the instance is reused).
//! - `/panic`: traps.
//! - `/`: 200 `memhog`; anything else 404; a malformed number 400.
//!
//! Must not: catch allocation failure. When the host's memory limit refuses to grow the
//! linear memory, the Rust allocator aborts and the instance traps; that trap is exactly what
//! the limit tests look for. A size that cannot even be expressed in the guest's address
//! space traps the same way.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// `/count` requests this instance has served.
static COUNT: AtomicU64 = AtomicU64::new(0);

struct MemHog;

impl Guest for MemHog {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = guest_kit::path_with_query(&request);
        let (path, _) = guest_kit::split_query(&path_with_query);
        match path {
            "/" => return guest_kit::respond_text(out, 200, "memhog\n"),
            "/count" => {
                let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
                return guest_kit::respond_text(out, 200, &format!("{n}\n"));
            }
            "/panic" => panic!("asked to trap"),
            _ => {}
        }
        let (arg, keep) = match (path.strip_prefix("/grow/"), path.strip_prefix("/keep/")) {
            (Some(arg), _) => (arg, false),
            (_, Some(arg)) => (arg, true),
            _ => return guest_kit::respond_text(out, 404, "not found\n"),
        };
        let Some(mib) = guest_kit::parse_u64(arg) else {
            guest_kit::respond_text(out, 400, "expected a whole number of MiB\n");
            return;
        };
        let touched = grow(mib, keep);
        // Reading the result keeps the allocation alive until after the response is built.
        black_box(touched);
        guest_kit::respond_text(out, 200, &format!("allocated {mib} MiB\n"));
    }
}

/// Allocates and touches `mib` MiB, leaked when `keep`; returns how many pages were touched.
fn grow(mib: u64, keep: bool) -> usize {
    // Saturating: an impossible size must fail in the allocator (trap), not wrap to a small one.
    let bytes = usize::try_from(mib)
        .unwrap_or(usize::MAX)
        .saturating_mul(MIB);
    let mut block = vec![0u8; bytes];
    let mut touched = 0;
    for byte in block.iter_mut().step_by(PAGE) {
        *byte = 1;
        touched += 1;
    }
    black_box(&block);
    if keep {
        block.leak();
    }
    touched
}

guest_kit::wasip2::http::proxy::export!(MemHog);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_touches_every_page() {
        assert_eq!(grow(0), 0);
        assert_eq!(grow(1), MIB / PAGE);
        assert_eq!(grow(3), 3 * MIB / PAGE);
    }
}
