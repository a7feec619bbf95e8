//! # echo
//!
//! Streams the request body back as the response body, chunk by chunk as it arrives, with
//! status 200, the request's `content-type` (if any), and `x-echo-method` / `x-echo-path`
//! headers naming the request line. Under `/echo/lenient` it treats a failed body read as the
//! end of the body and finishes its response normally, as guests built on SDKs that map read
//! errors to end-of-stream do (the host must still not let that look like a complete answer).
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
        let lenient = path.starts_with("/echo/lenient");
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
        if let Err(e) = pump(reader, out, &head, lenient) {
            // The head is already out; the client sees a cut-off body, the operator this line.
            eprintln!("echo: {e}");
        }
    }
}

/// Sends the head first, then forwards each chunk the moment it arrives.
fn pump(
    mut reader: BodyReader,
    out: ResponseOutparam,
    head: &Head,
    lenient: bool,
) -> Result<(), GuestError> {
    let mut writer = guest_kit::start(out, head)?;
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => writer.write_all(&chunk)?,
            Ok(None) => break,
            Err(e) if lenient => {
                eprintln!("echo: {e} (lenient: ending the body here)");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    writer.finish()
}

guest_kit::wasip2::http::proxy::export!(Echo);
