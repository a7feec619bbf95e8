//! # echo
//!
//! Streams the request body back as the response body, chunk by chunk as it arrives, with
//! status 200, the request's `content-type` (if any), and `x-echo-method` / `x-echo-path`
//! headers naming the request line.
//!
//! Must not: buffer the whole body (tests push bodies larger than the guest's memory limit
//! through it and watch chunks come back before the upload ends), or echo any other header.

use guest_kit::wasip2::exports::http::incoming_handler::Guest;
use guest_kit::wasip2::http::types::{IncomingRequest, ResponseOutparam};
use guest_kit::{BodyReader, GuestError, Head};

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = guest_kit::method_name(&request.method()).to_owned();
        let path = guest_kit::path_with_query(&request);
        let content_type = request.headers().get("content-type");
        let mut head = Head::new(200)
            .header("x-echo-method", method)
            .header("x-echo-path", path);
        // `content-type` may legally repeat; copy every value so the echo is faithful.
        for value in content_type {
            head = head.header("content-type", value);
        }

        let reader = match BodyReader::new(&request) {
            Ok(reader) => reader,
            Err(e) => {
                guest_kit::respond_text(out, 500, &format!("echo: {e}\n"));
                return;
            }
        };
        if let Err(e) = pump(reader, out, &head) {
            // The head is already out; the client sees a cut-off body, the operator this line.
            eprintln!("echo: {e}");
        }
    }
}

/// Sends the head first, then forwards each chunk the moment it arrives.
fn pump(mut reader: BodyReader, out: ResponseOutparam, head: &Head) -> Result<(), GuestError> {
    let mut writer = guest_kit::start(out, head)?;
    while let Some(chunk) = reader.next_chunk()? {
        writer.write_all(&chunk)?;
    }
    writer.finish()
}

guest_kit::wasip2::http::proxy::export!(Echo);
