//! # noresponse
//!
//! Returns from the handler without ever setting the response outparam, for testing that the
//! host answers 500 instead of hanging the client.
//!
//! Must not: touch the outparam in any way, including setting an error on it.

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct NoResponse;

impl Guest for NoResponse {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        // Dropping the handle unset is the behaviour under test.
        drop(out);
    }
}

guest_kit::wasip2::http::proxy::export!(NoResponse);
