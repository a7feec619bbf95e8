//! # hello
//!
//! The built-in demo app (embedded in the `outpost` binary) and the smallest possible
//! `wasi:http/proxy` component: every request gets a 200 `text/plain` greeting.
//!
//! Must not: read the request body, touch any capability, or do anything slow; it is the
//! baseline for instantiation benchmarks, so every extra instruction shows up there.

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};

const GREETING: &str = "hello from outpost\n";

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = guest_kit::path_with_query(&request);
        guest_kit::respond_text(out, 200, &body_for(&path));
    }
}

/// The first line never changes, so a probe can match it on any path; other paths say what
/// was asked for, which makes routing mistakes obvious when trying Outpost by hand.
fn body_for(path_with_query: &str) -> String {
    if path_with_query == "/" {
        GREETING.to_owned()
    } else {
        format!("{GREETING}you asked for {path_with_query}\n")
    }
}

guest_kit::wasip2::http::proxy::export!(Hello);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_exactly_the_greeting() {
        assert_eq!(body_for("/"), "hello from outpost\n");
    }

    #[test]
    fn other_paths_keep_the_greeting_as_first_line() {
        let body = body_for("/a/b?c=d");
        assert!(body.starts_with("hello from outpost\n"));
        assert!(body.ends_with("you asked for /a/b?c=d\n"));
    }
}
