//! Per-request host state (`Store` data) and the capability hooks guests reach through it.
//!
//! Owns: what one instance may touch — its resource table, a WASI context with nothing granted but
//! the component's read-only `files` preopens, `wasi:config/store` variables, the key-value
//! stores it may open (`super::kv`), the outbound-HTTP filter, and the memory limiter. Deny by default: no environment, no args, no sockets, no
//! inherited stdin. A guest's stdout/stderr become log events, line by line, under a budget per
//! component ([`GuestOutput`]).
//! Must not: know about listeners, routing or the control plane.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::base::outbound::OutboundPolicy;
use crate::ops::logging::{LogDecision, LogLimiter};

/// Everything a component is granted. Built once per component at load, shared by its requests.
pub struct Grants {
    pub outbound: OutboundPolicy,
    /// (host directory, absolute guest path), mounted read-only.
    pub files: Vec<(PathBuf, String)>,
    pub variables: WasiConfigVariables,
    /// The same variables, for `fermyon:spin/variables`.
    pub spin_variables: std::collections::HashMap<String, String>,
    /// The key-value stores the component may open.
    pub kv: super::kv::KvAccess,
    /// The guest's whole environment.
    pub environment: Vec<(String, String)>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("outbound", &self.outbound)
            .field("files", &self.files)
            .field("kv", &self.kv.labels)
            .finish_non_exhaustive()
    }
}

/// Most WASI contexts a component keeps for reuse: enough for every request it runs at once on
/// a small machine; beyond it, contexts are dropped.
const MAX_POOLED_CTX: usize = 64;

/// Lines of guest output a component may log per [`GUEST_OUTPUT_WINDOW`]; the rest are counted
/// and the count rides on the next line logged.
const GUEST_OUTPUT_BURST: u32 = 100;
const GUEST_OUTPUT_WINDOW: Duration = Duration::from_secs(10);
/// Longer guest lines are cut here (a guest printing a megabyte without a newline must not grow
/// the daemon's memory).
const GUEST_LINE_MAX: usize = 4096;

/// A component's WASI contexts, reused from request to request.
///
/// Building a `WasiCtx` costs two full builder initialisations (`build` leaves a fresh builder
/// behind: two RNG seedings, a dozen boxes) plus an `openat` per `files` preopen; reusing one
/// costs a lock. Nothing in a context is per request: the streams are the daemon's stderr and
/// "closed", the clocks are the host's, the preopens are the component's grants, and the random
/// generators simply continue their streams. The resource table — every handle the guest made —
/// is *not* reused; each request starts with an empty one. Contexts never cross components.
pub struct CtxPool {
    ctxs: Mutex<Vec<WasiCtx>>,
    /// "app/component", on every line of guest output.
    label: Arc<str>,
    /// The component's guest-output budget, shared by all its instances.
    output_budget: Arc<LogLimiter>,
}

impl std::fmt::Debug for CtxPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.ctxs.lock().map_or(0, |v| v.len());
        f.debug_struct("CtxPool")
            .field("label", &self.label)
            .field("pooled", &n)
            .finish()
    }
}

impl CtxPool {
    pub fn new(label: Arc<str>) -> Self {
        Self {
            ctxs: Mutex::new(Vec::new()),
            label,
            output_budget: Arc::new(LogLimiter::new(GUEST_OUTPUT_BURST, GUEST_OUTPUT_WINDOW)),
        }
    }

    fn take(&self) -> Option<WasiCtx> {
        self.ctxs.lock().ok()?.pop()
    }

    fn put(&self, ctx: WasiCtx) {
        if let Ok(mut v) = self.ctxs.lock()
            && v.len() < MAX_POOLED_CTX
        {
            v.push(ctx);
        }
    }

    fn output(&self, stream: &'static str) -> GuestOutput {
        GuestOutput {
            label: self.label.clone(),
            stream,
            budget: self.output_budget.clone(),
        }
    }
}

/// A guest's stdout or stderr. Each line is one log event "guest output" — target
/// `outpost::guest`, level info, fields `component`, `stream` and `line` — so guest output is structured, attributable and goes where
/// the daemon's logs go (journald, `--log-format json`), never to stdout, which carries the bound
/// addresses that supervisors and tests read. A component gets [`GUEST_OUTPUT_BURST`] lines per
/// [`GUEST_OUTPUT_WINDOW`]: a guest printing on every request must not turn the journal into a
/// copy of the traffic. Silence it entirely with `OUTPOST_LOG=info,outpost::guest=off`.
#[derive(Clone)]
pub struct GuestOutput {
    label: Arc<str>,
    stream: &'static str,
    budget: Arc<LogLimiter>,
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestLines {
            out: self.clone(),
            line: Vec::new(),
            cut: false,
        })
    }
}

/// Splits one output stream into lines and logs them (see [`GuestOutput`]).
struct GuestLines {
    out: GuestOutput,
    /// The line so far, at most [`GUEST_LINE_MAX`] bytes.
    line: Vec<u8>,
    /// Bytes beyond the cap were dropped from `line`.
    cut: bool,
}

impl GuestLines {
    /// Adds `data`; calls `sink` with every line it completes.
    fn push(&mut self, mut data: &[u8], sink: &mut dyn FnMut(String)) {
        while !data.is_empty() {
            let (part, rest, end) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            let room = GUEST_LINE_MAX - self.line.len();
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.cut |= part.len() > room;
            if end {
                sink(self.take_line());
            }
            data = rest;
        }
    }

    /// The line so far (newline and carriage return removed, marked if cut); starts a new one.
    fn take_line(&mut self) -> String {
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        if self.cut {
            text.push_str(" [line cut]");
        }
        self.line.clear();
        self.cut = false;
        text
    }

    /// Logs the partial line left at the end of the stream, if any.
    fn finish(&mut self) {
        if !self.line.is_empty() || self.cut {
            let text = self.take_line();
            self.out.log(&text);
        }
    }
}

impl GuestOutput {
    /// Logs one line. Blank lines are skipped; the text is Debug-quoted, so a guest cannot forge
    /// log lines or send terminal escapes to whoever reads the journal.
    fn log(&self, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        if let LogDecision::Log { suppressed } = self.budget.check() {
            if suppressed > 0 {
                tracing::info!(target: "outpost::guest", component = %self.label, stream = self.stream, line = ?text, suppressed, "guest output");
            } else {
                tracing::info!(target: "outpost::guest", component = %self.label, stream = self.stream, line = ?text, "guest output");
            }
        }
    }
}

impl tokio::io::AsyncWrite for GuestLines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let out = self.out.clone();
        self.push(buf, &mut |line| out.log(&line));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A partial line waits for its newline (or the end of the stream).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuestLines {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The data of one request's `Store`.
pub struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutboundHooks,
    grants: Arc<Grants>,
    /// Key-value stores this instance holds open.
    kv_open: usize,
    pub(crate) limiter: MemoryLimiter,
}

impl Host {
    /// Fresh state for one request of a component with `grants`, limited to `memory_limit` bytes
    /// of linear memory per memory; its WASI context comes from the component's `pool` when one
    /// is there.
    pub fn new(grants: Arc<Grants>, memory_limit: u64, pool: &CtxPool) -> wasmtime::Result<Self> {
        let wasi = match pool.take() {
            Some(ctx) => ctx,
            None => build_ctx(&grants, pool)?,
        };
        Ok(Self {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                grants: grants.clone(),
                label: pool.label.clone(),
            },
            grants,
            kv_open: 0,
            limiter: MemoryLimiter {
                limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
                hit: false,
                total: 0,
                peak: 0,
            },
        })
    }
}

impl Host {
    /// Hands the WASI context back for the component's next request. Call only after the guest
    /// returned normally: a trapped or cancelled instance's context is dropped with it.
    pub fn recycle(self, pool: &CtxPool) {
        pool.put(self.wasi);
    }
}

/// A WASI context granting `grants.files` (read-only) and `grants.environment`, nothing else.
fn build_ctx(grants: &Grants, pool: &CtxPool) -> wasmtime::Result<WasiCtx> {
    let mut b = WasiCtxBuilder::new();
    b.stdout(pool.output("stdout"))
        .stderr(pool.output("stderr"));
    for (host_dir, guest) in &grants.files {
        b.preopened_dir(host_dir, guest, FsPerms::ReadOnly)?;
    }
    b.envs(&grants.environment);
    Ok(b.build())
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Adds every interface Outpost provides to `linker`: WASI 0.2 (capabilities denied unless
/// granted), `wasi:http` 0.2, `wasi:config/store`, `wasi:keyvalue` and Spin's key-value and
/// variables ([`super::kv::guest`]), and with `wasi03` (a linker of the engine
/// with concurrency support) WASI 0.3 and `wasi:http` 0.3 too — both versions read the same
/// `WasiCtx`, so a grant means the same to both. A component importing anything else fails at
/// load (`InstancePre` creation), never at its first request. WASI 0.3 guests need the 0.2 set
/// as well: a Rust std guest imports 0.2's `wasi:cli` and `wasi:io` for its start-up, whatever
/// its handler.
pub fn add_to_linker(linker: &mut Linker<Host>, wasi03: bool) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    if wasi03 {
        wasmtime_wasi::p3::add_to_linker(linker)?;
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
    }
    wasmtime_wasi_config::add_to_linker(linker, |h: &mut Host| {
        WasiConfig::from(&h.grants.variables)
    })?;
    super::kv::guest::add_to_linker(linker, |h: &mut Host| super::kv::guest::KvView {
        table: &mut h.table,
        access: &h.grants.kv,
        variables: &h.grants.spin_variables,
        open: &mut h.kv_open,
    })?;
    Ok(())
}

/// How much of a denied request's body is read (and discarded) before the denial is returned.
const DENIED_BODY_DRAIN: usize = 64 << 10;

/// Enforces `allowed_outbound_hosts` on every outgoing request, and (through
/// [`super::connect`]) which addresses a granted host may connect to.
struct OutboundHooks {
    grants: Arc<Grants>,
    /// "app/component", for logs.
    label: Arc<str>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let uri = request.uri().clone();
        if !self.grants.outbound.allows_uri(&uri) {
            tracing::info!(component = %self.label, uri = %uri, "outbound request denied: not in allowed_outbound_hosts");
            // Let the guest finish writing a (small) request body before failing the response:
            // guests that write the body and await the response concurrently (wstd does) would
            // otherwise see a broken body stream instead of the denial.
            return Box::new(async move {
                use http_body_util::BodyExt;
                let mut body = request.into_body();
                let mut seen = 0usize;
                while seen < DENIED_BODY_DRAIN {
                    match body.frame().await {
                        Some(Ok(f)) => seen += f.data_ref().map_or(0, |d| d.len()),
                        _ => break,
                    }
                }
                Err(wasmtime_wasi_http::Error::HttpRequestDenied)
            });
        }
        // Connected only to addresses the policy allows (not loopback or private ranges unless
        // granted by address or opted in), checked on the connected socket.
        let (grants, label) = (self.grants.clone(), self.label.clone());
        Box::new(async move {
            super::connect::send_request(request, options, &grants.outbound, &label).await
        })
    }
}

/// Caps the linear memory of one instance — all its memories together, since a component made of
/// several core modules has one memory each — at the component's `memory_limit`, and remembers
/// whether the guest ran into it, so a resulting trap is reported as `memory_limit` rather than a
/// generic trap.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) hit: bool,
    /// Bytes of linear memory granted to the instance (all its memories), and the most it held.
    pub(crate) total: usize,
    pub(crate) peak: usize,
}

impl MemoryLimiter {
    /// Starts a new request on a kept instance: the memory it holds stays counted (and limited),
    /// the peak and the limit flag are this request's own.
    pub(crate) fn begin_request(&mut self) {
        self.hit = false;
        self.peak = self.total;
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.limit || maximum.is_some_and(|m| desired > m) {
            self.hit = true;
            return Ok(false);
        }
        self.total = total;
        self.peak = self.peak.max(self.total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any real handler.
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: usize) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            hit: false,
            total: 0,
            peak: 0,
        }
    }

    #[test]
    fn the_limit_covers_all_memories_of_an_instance() {
        const MIB: usize = 1 << 20;
        let mut l = limiter(10 * MIB);
        // Two memories created at instantiation (current 0), 4 MiB each: 8 MiB in all.
        assert!(l.memory_growing(0, 4 * MIB, None).unwrap());
        assert!(l.memory_growing(0, 4 * MIB, None).unwrap());
        // Growing the first to 6 MiB would make 10 MiB: allowed, exactly at the limit.
        assert!(l.memory_growing(4 * MIB, 6 * MIB, None).unwrap());
        assert!(!l.hit);
        // Any further growth of either memory crosses the instance's limit, though each memory
        // alone stays below it.
        assert!(!l.memory_growing(4 * MIB, 5 * MIB, None).unwrap());
        assert!(l.hit);
        assert_eq!((l.total, l.peak), (10 * MIB, 10 * MIB));
    }

    #[test]
    fn guest_output_is_split_into_lines_and_long_lines_are_cut() {
        let pool = CtxPool::new("a/c".into());
        let mut w = GuestLines {
            out: pool.output("stderr"),
            line: Vec::new(),
            cut: false,
        };
        let mut lines = Vec::new();
        w.push(b"one\ntw", &mut |l| lines.push(l));
        w.push(b"o\r\n\nthree", &mut |l| lines.push(l));
        assert_eq!(lines, ["one", "two", ""]);
        assert_eq!(w.line, b"three", "a partial line waits for its newline");
        lines.clear();
        w.take_line();
        let long = vec![b'x'; GUEST_LINE_MAX + 10];
        w.push(&long, &mut |l| lines.push(l));
        w.push(&long, &mut |l| lines.push(l));
        assert!(lines.is_empty());
        assert_eq!(w.line.len(), GUEST_LINE_MAX, "memory stays capped");
        w.push(b"\n\xff\n", &mut |l| lines.push(l));
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" [line cut]"));
        assert_eq!(lines[0].len(), GUEST_LINE_MAX + " [line cut]".len());
        assert_eq!(
            lines[1], "\u{fffd}",
            "invalid UTF-8 is replaced, not an error"
        );
    }

    #[test]
    fn a_memory_maximum_below_the_limit_is_honoured() {
        let mut l = limiter(1 << 30);
        assert!(!l.memory_growing(0, 2 << 20, Some(1 << 20)).unwrap());
    }
}
