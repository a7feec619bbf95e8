//! # guest-kit
//!
//! Shared plumbing for the Outpost test-bed guest apps that are written directly against the
//! `wasip2` bindings: starting a response, streaming its body chunk by chunk, reading the
//! request body chunk by chunk, sleeping on the monotonic clock, and small pure helpers for
//! request lines.
//!
//! Owns: nothing app-specific. Must not: import any interface outside the `wasi:http/proxy`
//! world (every app that links this crate has to stay a plain proxy component that also runs
//! on `wasmtime serve`), buffer whole bodies unless the caller asks for it, or panic on
//! anything a client can send.

use wasip2::http::types::{
    ErrorCode, Fields, HeaderError, IncomingBody, IncomingRequest, Method, OutgoingBody,
    OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

pub use wasip2;

/// Largest chunk asked of an input stream in one read. The host hands out whatever it has
/// (up to this), so this bounds guest memory per read, not latency.
const READ_CHUNK: u64 = 64 * 1024;

/// `content-type` used by every plain-text answer of the test-bed apps.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// What went wrong while answering a request, and at which step.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("response header {name:?} rejected by the host: {source}")]
    Header {
        name: String,
        #[source]
        source: HeaderError,
    },
    #[error("status code {0} rejected by the host")]
    Status(u16),
    #[error("the outgoing response body was already taken")]
    ResponseBodyTaken,
    #[error("the incoming request body was already taken")]
    RequestBodyTaken,
    #[error("the peer closed the body stream")]
    Closed,
    #[error("body stream failed: {0}")]
    Stream(String),
    #[error("finishing the response body failed: {0:?}")]
    Finish(ErrorCode),
}

impl From<StreamError> for GuestError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Closed => Self::Closed,
            StreamError::LastOperationFailed(e) => Self::Stream(e.to_debug_string()),
        }
    }
}

// === impl Head ===

/// Status line and headers of a response that has not been sent yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
        }
    }

    /// A response whose body is UTF-8 text.
    pub fn text(status: u16) -> Self {
        Self::new(status).header("content-type", TEXT_PLAIN)
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// Builds the host-side response. Headers are added one by one so an error names the
    /// header the host refused instead of just "the list".
    fn build(&self) -> Result<(OutgoingResponse, OutgoingBody, OutputStream), GuestError> {
        let fields = Fields::new();
        for (name, value) in &self.headers {
            fields
                .append(name, value)
                .map_err(|source| GuestError::Header {
                    name: name.clone(),
                    source,
                })?;
        }
        let response = OutgoingResponse::new(fields);
        response
            .set_status_code(self.status)
            .map_err(|()| GuestError::Status(self.status))?;
        let body = response
            .body()
            .map_err(|()| GuestError::ResponseBodyTaken)?;
        let stream = body.write().map_err(|()| GuestError::ResponseBodyTaken)?;
        Ok((response, body, stream))
    }
}

// === impl BodyWriter ===

/// The open body of a response whose head has already been handed to the host.
#[derive(Debug)]
pub struct BodyWriter {
    // Declared before `body` so that a writer dropped without `finish` releases the child
    // stream before its parent body, which is the order the host requires.
    stream: OutputStream,
    body: OutgoingBody,
}

/// Hands the response head to the host and returns the body to stream into.
///
/// Every fallible step happens before the outparam is set; if one fails the outparam is set
/// to an `internal-error` naming the step, so the client gets a 500 rather than a hang.
pub fn start(out: ResponseOutparam, head: &Head) -> Result<BodyWriter, GuestError> {
    match head.build() {
        Ok((response, body, stream)) => {
            ResponseOutparam::set(out, Ok(response));
            Ok(BodyWriter { stream, body })
        }
        Err(e) => {
            ResponseOutparam::set(out, Err(ErrorCode::InternalError(Some(e.to_string()))));
            Err(e)
        }
    }
}

impl BodyWriter {
    /// Writes all of `bytes` and flushes, so each call leaves the guest as one chunk: this is
    /// what makes streamed responses observable by the client as they happen.
    pub fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), GuestError> {
        while !bytes.is_empty() {
            let permit = self.stream.check_write()?;
            if permit == 0 {
                // Backpressure from the host: wait for room instead of spinning.
                self.stream.subscribe().block();
                continue;
            }
            let n = usize::try_from(permit).map_or(bytes.len(), |p| p.min(bytes.len()));
            let (now, rest) = bytes.split_at(n);
            self.stream.write(now)?;
            bytes = rest;
        }
        self.stream.blocking_flush()?;
        Ok(())
    }

    /// Ends the body. Without this the host sees a truncated body.
    pub fn finish(self) -> Result<(), GuestError> {
        let Self { stream, body } = self;
        drop(stream);
        OutgoingBody::finish(body, None).map_err(GuestError::Finish)
    }
}

/// Sends a whole response in one go, with its `content-length` so the host need not chunk it.
/// A failure after the head is out can only be reported on stderr: the status line has
/// already left.
pub fn respond(out: ResponseOutparam, head: &Head, body: &[u8]) {
    let head = head
        .clone()
        .header("content-length", body.len().to_string());
    let sent = start(out, &head).and_then(|mut w| {
        w.write_all(body)?;
        w.finish()
    });
    if let Err(e) = sent {
        eprintln!(
            "guest-kit: sending a {} response failed: {e}",
            head.status()
        );
    }
}

/// Sends a plain-text response.
pub fn respond_text(out: ResponseOutparam, status: u16, body: &str) {
    respond(out, &Head::text(status), body.as_bytes());
}

// === impl BodyReader ===

/// The request body, read chunk by chunk as the client sends it.
#[derive(Debug)]
pub struct BodyReader {
    // Child stream first: it must be released before its parent body.
    stream: InputStream,
    _body: IncomingBody,
}

impl BodyReader {
    pub fn new(request: &IncomingRequest) -> Result<Self, GuestError> {
        let body = request
            .consume()
            .map_err(|()| GuestError::RequestBodyTaken)?;
        let stream = body.stream().map_err(|()| GuestError::RequestBodyTaken)?;
        Ok(Self {
            stream,
            _body: body,
        })
    }

    /// The next chunk the client sent, or `None` at the end of the body. Blocks (in the host,
    /// not in a spin loop) until data or the end arrives.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, GuestError> {
        loop {
            match self.stream.blocking_read(READ_CHUNK) {
                // An empty read is allowed by the interface and means "nothing yet".
                Ok(chunk) if chunk.is_empty() => continue,
                Ok(chunk) => return Ok(Some(chunk)),
                Err(StreamError::Closed) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads the rest of the body into memory. Only for apps that need the whole body anyway.
    pub fn read_to_end(mut self) -> Result<Vec<u8>, GuestError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk()? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}

// === request helpers ===

/// The method as it appears on the request line.
pub fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// Path and query of the request; `/` when the host supplied none (allowed by the interface).
pub fn path_with_query(request: &IncomingRequest) -> String {
    request
        .path_with_query()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_owned())
}

/// Splits `path?query` into its path and, if present, its query.
pub fn split_query(path_with_query: &str) -> (&str, Option<&str>) {
    match path_with_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_with_query, None),
    }
}

/// Parses a path segment as milliseconds (or any other non-negative integer).
pub fn parse_u64(segment: &str) -> Option<u64> {
    // `u64::from_str` accepts a leading `+`; a URL segment with one is a typo, not a number.
    if segment.is_empty() || !segment.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    segment.parse().ok()
}

/// Blocks the instance for `ms` milliseconds by parking on a monotonic-clock pollable, so the
/// host, not the guest, does the waiting (no CPU is burnt and epoch deadlines still apply).
pub fn sleep_ms(ms: u64) {
    let nanos = ms.saturating_mul(1_000_000);
    wasip2::clocks::monotonic_clock::subscribe_duration(nanos).block();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_query_separates_at_first_question_mark() {
        assert_eq!(split_query("/a/b"), ("/a/b", None));
        assert_eq!(split_query("/a?x=1"), ("/a", Some("x=1")));
        assert_eq!(split_query("/a?x=1?y"), ("/a", Some("x=1?y")));
        assert_eq!(split_query("/?"), ("/", Some("")));
    }

    #[test]
    fn parse_u64_accepts_only_plain_digits() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("250"), Some(250));
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("+5"), None);
        assert_eq!(parse_u64("-5"), None);
        assert_eq!(parse_u64("5ms"), None);
        assert_eq!(parse_u64("99999999999999999999999"), None);
    }

    #[test]
    fn method_name_covers_other() {
        assert_eq!(method_name(&Method::Get), "GET");
        assert_eq!(method_name(&Method::Patch), "PATCH");
        assert_eq!(method_name(&Method::Other("PURGE".to_owned())), "PURGE");
    }

    #[test]
    fn text_head_carries_content_type_and_extra_headers_in_order() {
        let head = Head::text(201).header("x-a", "1");
        assert_eq!(head.status(), 201);
        assert_eq!(
            head.headers(),
            &[
                ("content-type".to_owned(), TEXT_PLAIN.as_bytes().to_vec()),
                ("x-a".to_owned(), b"1".to_vec()),
            ]
        );
    }
}
