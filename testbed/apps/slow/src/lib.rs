//! # slow
//!
//! A guest that takes its time, for testing deadlines, drains and streaming:
//! - `/sleep/<ms>`: parks on a monotonic-clock pollable for `<ms>` ms, then 200 `slept <ms>ms`.
//! - `/spin`: burns CPU forever without a single host call; only epoch interruption stops it.
//! - `/stream/<n>/<ms>`: sends the head at once, then `line 0` … `line <n-1>`, one per line,
//!   with a `<ms>` ms pause between consecutive lines.
//! - `/`: 200 `slow`; anything else 404; malformed numbers 400.
//!
//! Must not: wait by busy-looping (that would turn every sleep test into a CPU test), or
//! buffer the streamed lines (the point is that they leave one at a time).

use std::hint::black_box;

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use guest_kit::{GuestError, Head};

struct Slow;

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Index,
    Sleep { ms: u64 },
    Spin,
    Stream { lines: u64, pause_ms: u64 },
    BadNumber,
    NotFound,
}

fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let num = guest_kit::parse_u64;
    match segments.as_slice() {
        [""] => Route::Index,
        ["spin"] => Route::Spin,
        ["sleep", ms] => num(ms).map_or(Route::BadNumber, |ms| Route::Sleep { ms }),
        ["stream", n, ms] => match (num(n), num(ms)) {
            (Some(lines), Some(pause_ms)) => Route::Stream { lines, pause_ms },
            _ => Route::BadNumber,
        },
        _ => Route::NotFound,
    }
}

impl Guest for Slow {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = guest_kit::path_with_query(&request);
        let (path, _) = guest_kit::split_query(&path_with_query);
        match route(path) {
            Route::Index => guest_kit::respond_text(out, 200, "slow\n"),
            Route::Sleep { ms } => {
                guest_kit::sleep_ms(ms);
                guest_kit::respond_text(out, 200, &format!("slept {ms}ms\n"));
            }
            Route::Spin => spin(),
            Route::Stream { lines, pause_ms } => {
                if let Err(e) = stream(out, lines, pause_ms) {
                    eprintln!("slow: streaming stopped: {e}");
                }
            }
            Route::BadNumber => guest_kit::respond_text(out, 400, "expected a whole number\n"),
            Route::NotFound => guest_kit::respond_text(out, 404, "not found\n"),
        }
    }
}

/// Never returns and never calls the host. `black_box` keeps the optimiser from proving the
/// loop side-effect free and deleting it.
fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

fn stream(out: ResponseOutparam, lines: u64, pause_ms: u64) -> Result<(), GuestError> {
    let mut writer = guest_kit::start(out, &Head::text(200))?;
    for i in 0..lines {
        if i > 0 {
            guest_kit::sleep_ms(pause_ms);
        }
        writer.write_all(format!("line {i}\n").as_bytes())?;
    }
    writer.finish()
}

guest_kit::wasip2::http::proxy::export!(Slow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path() {
        assert_eq!(route("/"), Route::Index);
        assert_eq!(route("/spin"), Route::Spin);
        assert_eq!(route("/sleep/150"), Route::Sleep { ms: 150 });
        assert_eq!(
            route("/stream/3/20"),
            Route::Stream {
                lines: 3,
                pause_ms: 20
            }
        );
    }

    #[test]
    fn malformed_numbers_are_not_routed() {
        assert_eq!(route("/sleep/abc"), Route::BadNumber);
        assert_eq!(route("/sleep/"), Route::BadNumber);
        assert_eq!(route("/stream/3/x"), Route::BadNumber);
        assert_eq!(route("/stream/3"), Route::NotFound);
        assert_eq!(route("/sleep/1/2"), Route::NotFound);
        assert_eq!(route("/nope"), Route::NotFound);
    }
}
