//! Per-request host state (`Store` data) and the capability hooks guests reach through it.
//!
//! Owns: what one instance may touch — its resource table, a WASI context with nothing granted but
//! the component's read-only `files` preopens, `wasi:config/store` variables, the outbound-HTTP
//! filter, and the memory limiter. Deny by default: no environment, no args, no sockets, no
//! inherited stdin; a guest's stdout/stderr go to the daemon's stderr.
//! Must not: know about listeners, routing or the control plane.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::outbound::OutboundPolicy;

/// Everything a component is granted. Built once per component at load, shared by its requests.
pub struct Grants {
    pub outbound: OutboundPolicy,
    /// (host directory, absolute guest path), mounted read-only.
    pub files: Vec<(PathBuf, String)>,
    pub variables: WasiConfigVariables,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("outbound", &self.outbound)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The data of one request's `Store`.
pub struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutboundHooks,
    grants: Arc<Grants>,
    pub(crate) limiter: MemoryLimiter,
}

impl Host {
    /// Fresh state for one request of a component with `grants`, limited to `memory_limit` bytes
    /// of linear memory per memory.
    pub fn new(grants: Arc<Grants>, memory_limit: u64, label: Arc<str>) -> wasmtime::Result<Self> {
        let mut b = WasiCtxBuilder::new();
        // Guest logging goes to our stderr, never to stdout (which carries the bound addresses
        // that supervisors and tests read).
        b.stdout(std::io::stderr()).stderr(std::io::stderr());
        for (host_dir, guest) in &grants.files {
            b.preopened_dir(host_dir, guest, FsPerms::ReadOnly)?;
        }
        Ok(Self {
            table: ResourceTable::new(),
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                grants: grants.clone(),
                label,
            },
            grants,
            limiter: MemoryLimiter {
                limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
                hit: false,
                total: 0,
                peak: 0,
            },
        })
    }
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
/// granted), `wasi:http` and `wasi:config/store`. A component importing anything else fails at
/// load (`InstancePre` creation), never at its first request.
pub fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    wasmtime_wasi_config::add_to_linker(linker, |h: &mut Host| {
        WasiConfig::from(&h.grants.variables)
    })?;
    Ok(())
}

/// How much of a denied request's body is read (and discarded) before the denial is returned.
const DENIED_BODY_DRAIN: usize = 64 << 10;

/// Enforces `allowed_outbound_hosts` on every outgoing request.
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
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
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
    total: usize,
    pub(crate) peak: usize,
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
    fn a_memory_maximum_below_the_limit_is_honoured() {
        let mut l = limiter(1 << 30);
        assert!(!l.memory_growing(0, 2 << 20, Some(1 << 20)).unwrap());
    }
}
