//! Hardware sizing: what this machine can host, and every pool and limit derived from it.
//!
//! Owns: the facts that bound how much WebAssembly this machine can host — online CPUs and
//! cgroup CPU quota, physical memory and cgroup memory limit, usable virtual address space (VA
//! width and `RLIMIT_AS`) — read by [`detect`] (the only I/O here); the pure derivation of every
//! pooling-allocator, linear-memory and server number from them, each with a human reason
//! ([`derive`], the bulk of the tests); and their rendering for `outpost info` ([`render`]).
//! See `docs/sizing.md` for the model.
//!
//! Must not: use wasmtime types (the engine module turns a [`Sizing`] into a `wasmtime::Config`),
//! start anything, fail or panic on odd or missing `/proc` and `/sys` files (every fact falls
//! back to a safe value and records where it came from), or read anything outside the root it
//! is given. It imports nothing of Outpost but `base`.
#![forbid(unsafe_code)]

mod derive;
mod detect;
mod render;

pub use derive::derive;
pub use detect::{detect, detect_at};
pub use render::human_bytes;

use detect::{FALLBACK_PAGE_SIZE, pow2, sanitize_cpus, usable_va};
use serde::{Deserialize, Serialize};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// WebAssembly linear memories grow in 64 KiB pages, so reservations and limits are page-aligned.
const WASM_PAGE: u64 = 64 * KIB;

// --- derivation constants (see docs/sizing.md for the model) ---

/// A garbled CPU count must not make the runtime spawn millions of threads; no gateway has more.
const MAX_WORKER_THREADS: usize = 1024;
/// Largest linear memory an instance may grow to unless memory is scarce: plenty for HTTP
/// handlers written in Rust/JS/Python, small enough that reservations shrink well on 39-bit VA.
const DEFAULT_MAX_MEMORY: u64 = 256 * MIB;
/// Floor for the per-instance ceiling: below this even small interpreted guests fail to start.
const MIN_MAX_MEMORY: u64 = 16 * MIB;
/// Default per-app memory limit: generous for request handlers, a quarter of the default ceiling
/// so one app's default is not the whole budget.
const DEFAULT_MEMORY_LIMIT: u64 = 64 * MIB;
/// What the daemon keeps for itself before guests get anything: compiled code, connection and
/// TLS state, request and QUIC buffers, the sled cache. At least 64 MiB (what the daemon itself
/// uses idle with a few apps loaded), else an eighth of memory, which grows with the connection
/// and buffer limits that are themselves derived from memory.
const DAEMON_RESERVE_MIN: u64 = 64 * MIB;
const DAEMON_RESERVE_DIVISOR: u64 = 8;
/// Guests may use together half of what remains after the reserve. The other half absorbs
/// instances growing past their measured footprint in the middle of a request (admission uses
/// the footprint measured so far), the page cache for bundles and compiled code, and whatever
/// else runs on the gateway.
const GUEST_SHARE_DIVISOR: u64 = 2;
/// Smallest resident memory a live instance can have: the host-side store and WASI context
/// (a few KiB), the touched top of its fiber stack, and a few touched 64 KiB linear-memory pages
/// of which the kernel commits only the 4 KiB pages written. Measured: 4,000 live, sleeping
/// instances of a small Rust `wasi:http` app added ~205 MB RSS (~50 KB each); a componentize-py
/// instance is ~13 MB. Slots are derived from this *minimum* so that memory, not the slot count,
/// binds: the runtime admits each request against `memory_budget` with the app's measured
/// footprint.
pub const MIN_INSTANCE_FOOTPRINT: u64 = 64 * KIB;
/// Below 8 slots a single slow tenant can exhaust the pool; prefer on-demand allocation then.
const MIN_SLOTS: u64 = 8;
/// Hard maximum of slots. wasmtime's pool reserves its per-slot costs up front whether or not
/// slots are used: at 16,384 slots, 32 GiB of address space and 32,768 mappings for fiber stacks
/// (each stack is followed by an inaccessible guard page), 10 GiB for tables (4 × 160 KiB each,
/// never touched unless used) and a 262,144 core-instance counter. Beyond that the mapping limit
/// (see [`MAPPINGS_PER_SLOT`]) binds anyway, and no edge node needs more live requests.
const MAX_SLOTS: u64 = 16_384;
/// Each pooled slot costs kernel memory mappings (VMAs): its fiber stack and guard page (2, held
/// from start-up), and, once an instance has used it, its linear memory and table split out of
/// their slabs (copy-on-write image, read-write heap, the split-off rest; they stay split after
/// the instance ends). Measured on wasmtime 48: a 10,239-slot pool starts with 24,713 mappings,
/// and 1,000 live sleeping instances of a small Rust app added 4,002 more, so 2 + 4 = 6.
/// `vm.max_map_count` (65,530 by default) caps them per process; past it `mmap`/`mprotect`
/// fail and instantiation errors out.
const MAPPINGS_PER_SLOT: u64 = 6;
/// Mappings kept for everything but the pool: thread stacks, allocator arenas, compiled code of
/// every loaded component, sled, warm pool slots, the copy-on-write images.
const MAPPINGS_RESERVE: u64 = 4_096;
/// Linux's default `vm.max_map_count`, assumed when `/proc/sys/vm/max_map_count` is unreadable.
const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;
/// What an on-demand instance maps while live (its linear memory at a typical size); used only
/// for the on-demand fallback's address-space estimate and growth step.
const ON_DEMAND_INSTANCE_MEMORY: u64 = 8 * MIB;

/// 4 GiB covers the whole 32-bit index space, so with a guard wasmtime drops bounds checks.
const PREFERRED_RESERVATION: u64 = 4 * GIB;
/// wasmtime's 64-bit default guard: loads/stores with static offsets below 32 MiB need no check.
const PREFERRED_GUARD: u64 = 32 * MIB;
/// wasmtime's 64-bit default growth reservation, kept for the 4 GiB layout where it is only
/// consulted by memories that outgrow their reservation (memory64), which limits prevent anyway.
const PREFERRED_GROWTH: u64 = 2 * GIB;
/// With explicit bounds checks a big guard buys little; one wasm page still catches small
/// static offsets past the end.
const SHRUNK_GUARD: u64 = WASM_PAGE;
/// When VA is scarce a memory that must move grows in steps of a typical on-demand memory
/// instead of reserving 2 GiB ahead.
const SHRUNK_GROWTH: u64 = ON_DEMAND_INSTANCE_MEMORY;
/// The address space kept for pools is a quarter of what is usable: the rest is for the heap,
/// code, thread stacks, other mappings and on-demand fallback.
const VA_BUDGET_DIVISOR: u64 = 4;
/// From 47 bits (128 TiB) up the pool may take half: the other half is still tens of TiB, and
/// the largest hole (below the executable, which Linux maps at 2/3 of the address space) holds
/// a 64 TiB slab. Half is what keeps 4 GiB reservations (bounds checks elided) for 12k+ slots.
const WIDE_VA_BITS: u32 = 47;
const WIDE_VA_BUDGET_DIVISOR: u64 = 2;
/// Keep the 4 GiB layout with fewer slots when it still holds at least this fraction (1/N) of
/// the slots memory would allow: bounds checks cost every guest memory access of every request,
/// while the extra slots only matter at the peak of concurrency.
const PREFERRED_KEEP_DIVISOR: u64 = 2;

/// A component may contain two linear memories (e.g. a main module plus a separately
/// instantiated language runtime); Rust, JS and Python components have one.
const MEMORIES_PER_INSTANCE: u32 = 2;
/// The memory pool holds one memory per slot plus one for every fourth slot: most components
/// have a single memory, so reserving two per slot would halve the slots the 4 GiB layout fits;
/// `max_memories_per_component` stays 2 so a two-memory component still loads.
const EXTRA_MEMORY_DIVISOR: u64 = 4;
/// The main module's function table plus the shim/fixup tables `wit-component` adds for lowered
/// imports, with room to spare.
const TABLES_PER_INSTANCE: u32 = 4;
/// Pool-wide average of core instances per component. Rust components instantiate a handful
/// (main module, shim, fixup); this is a counter in wasmtime, not memory, so be generous.
const CORE_INSTANCES_PER_SLOT: u32 = 16;
/// Cap per component: enough for `componentize-py` apps that link many shared-library modules,
/// small enough that one component cannot claim a large share of the core-instance pool.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 50;
/// wasmtime's default: C# modules in debug builds were seen with 10k+ table elements.
const TABLE_ELEMENTS: u32 = 20_000;
/// Bytes per table element the table pool reserves (a pointer on 64-bit hosts).
const TABLE_ELEMENT_BYTES: u64 = 8;
/// wasmtime's default async stack (`Config::async_stack_size`); the stack pool reserves one per
/// slot plus a guard page. Only used for the address-space budget.
const ASYNC_STACK_SIZE: u64 = 2 * MIB;

/// Default per-request deadline: generous for HTTP handlers, short enough that a stuck guest
/// frees its slot.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Memory per connection permit: hyper and rustls buffers, HTTP/2 and TLS state and kernel socket
/// buffers of an open connection, plus its share of request bodies in flight. Independent of the
/// slot count, which is far larger than file descriptors and slow-header floods allow.
const CONNECTION_MEMORY: u64 = 4 * MIB;
/// One worker thread cannot usefully multiplex more open connections than this.
const CONNECTIONS_PER_WORKER: u32 = 1024;
const MIN_CONNECTIONS: u32 = 256;
const MAX_CONNECTIONS: u32 = 65_536;

/// QUIC idle timeout: long enough to ride out a phone's radio sleeping between requests (a QUIC
/// connection survives that where TCP would be re-handshaked), short enough that an abandoned
/// connection gives its connection permit back within a minute.
const QUIC_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Idle timeout when connection permits are scarce (fewer than [`SCARCE_CONNECTIONS`]).
const QUIC_IDLE_TIMEOUT_SCARCE_MS: u64 = 10_000;
const SCARCE_CONNECTIONS: u32 = 1024;
/// Concurrent request streams per QUIC connection: at least what a browser opens for one page,
/// at most what makes sense against the per-app concurrency limits.
const MIN_QUIC_STREAMS: u32 = 16;
const MAX_QUIC_STREAMS: u32 = 256;
/// If every QUIC client filled its connection receive window at once, the buffered bytes would
/// be at most this fraction of memory.
const QUIC_BUFFER_DIVISOR: u64 = 16;
const MIN_QUIC_WINDOW: u64 = 64 * KIB;
const MAX_QUIC_WINDOW: u64 = 16 * MIB;
/// Per-stream receive window: the bandwidth-delay product of an 80 Mbit/s link at 100 ms RTT
/// (about 1 MiB), so one upload can fill a good mobile or satellite link.
const QUIC_STREAM_WINDOW: u64 = MIB;
/// Override bounds: QUIC encodes these as 62-bit integers; far below that, the numbers stop
/// making sense for an edge node.
const MAX_QUIC_IDLE_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
const MIN_QUIC_IDLE_TIMEOUT_MS: u64 = 100;
const MAX_QUIC_STREAMS_OVERRIDE: u32 = 65_536;
const MIN_QUIC_WINDOW_OVERRIDE: u64 = KIB;
const MAX_QUIC_WINDOW_OVERRIDE: u64 = GIB;

// === Hardware ===

/// One measured (or assumed) value and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact<T> {
    pub value: T,
    /// The file or API the value was read from, or why it was assumed.
    pub source: String,
}

impl<T> Fact<T> {
    fn new(value: T, source: impl Into<String>) -> Self {
        Fact {
            value,
            source: source.into(),
        }
    }
}

/// What the machine (and the cgroup and rlimits around this process) offers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hardware {
    /// `std::env::consts::ARCH` of this build.
    pub arch: String,
    pub cpus: Cpus,
    pub memory: Memory,
    pub address_space: AddressSpace,
    pub page_size: Fact<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpus {
    /// CPUs this process may run on.
    pub online: Fact<u32>,
    /// cgroup CPU bandwidth limit in CPUs (e.g. 1.5), the tightest along the cgroup path.
    pub quota: Fact<Option<f64>>,
    /// min(online, quota).
    pub effective: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    /// Physical memory (`MemTotal`), bytes.
    pub total: Fact<u64>,
    /// cgroup memory limit, bytes, the tightest along the cgroup path.
    pub cgroup_limit: Fact<Option<u64>>,
    /// min(total, cgroup limit), bytes.
    pub effective: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddressSpace {
    /// Width of the user virtual address space.
    pub va_bits: Fact<u32>,
    /// Soft `RLIMIT_AS`, bytes; `None` = unlimited.
    pub rlimit_as: Fact<Option<u64>>,
    /// min(2^va_bits, RLIMIT_AS), bytes.
    pub usable: u64,
    /// `vm.max_map_count`: memory mappings (VMAs) the kernel allows this process.
    pub max_map_count: Fact<u64>,
}

// === impl Hardware ===

impl Hardware {
    /// A machine described by hand, for tests, benchmarks and "what if" tables: `cpus` effective
    /// CPUs, `memory` bytes, `va_bits` of user address space, an optional `RLIMIT_AS`.
    pub fn synthetic(cpus: f64, memory: u64, va_bits: u32, rlimit_as: Option<u64>) -> Hardware {
        let online = if cpus.is_finite() && cpus > 0.0 {
            // Saturating float-to-int conversion is the intent: absurd inputs clamp.
            cpus.ceil() as u32
        } else {
            1
        };
        let bits = va_bits.min(63);
        Hardware {
            arch: std::env::consts::ARCH.to_owned(),
            cpus: Cpus {
                online: Fact::new(online, "given"),
                quota: Fact::new(None, "given"),
                effective: sanitize_cpus(cpus),
            },
            memory: Memory {
                total: Fact::new(memory, "given"),
                cgroup_limit: Fact::new(None, "given"),
                effective: memory,
            },
            address_space: AddressSpace {
                va_bits: Fact::new(bits, "given"),
                rlimit_as: Fact::new(rlimit_as, "given"),
                usable: usable_va(bits, rlimit_as),
                max_map_count: Fact::new(DEFAULT_MAX_MAP_COUNT, "given (Linux default)"),
            },
            page_size: Fact::new(FALLBACK_PAGE_SIZE, "given"),
        }
    }

    /// One phrase naming what bounds the address space, e.g. "39-bit VA: 512 GiB" or
    /// "RLIMIT_AS 1 GiB on a 47-bit VA".
    fn va_description(&self) -> String {
        let bits = self.address_space.va_bits.value;
        match self.address_space.rlimit_as.value {
            Some(limit) if limit < pow2(bits) => {
                format!("RLIMIT_AS {} on a {bits}-bit VA", human_bytes(limit))
            }
            _ => format!("{bits}-bit VA: {}", human_bytes(pow2(bits))),
        }
    }
}

// === Overrides ===

/// Whether to use wasmtime's pooling allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    /// Pool when it fits the address space, otherwise allocate on demand.
    #[default]
    Auto,
    /// Pool or refuse to start.
    On,
    /// Always allocate on demand.
    Off,
}

/// The `[runtime]` table of the daemon config: every derived number can be pinned here. Sizes
/// are bytes (the config module parses "256MiB" and friends before they get here).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    pub worker_threads: Option<usize>,
    /// Bytes of memory live guest instances may use together (the admission budget).
    pub memory_budget: Option<u64>,
    /// Component instances that may be live at once (pool slots).
    pub instance_slots: Option<u32>,
    /// Address space reserved per linear memory, bytes.
    pub memory_reservation: Option<u64>,
    /// Guard region after each linear memory, bytes.
    pub memory_guard: Option<u64>,
    /// Largest linear memory any instance may grow to: the ceiling for per-app `memory_limit`.
    pub max_memory_per_instance: Option<u64>,
    /// Memory limit for apps whose manifest sets none.
    pub default_memory_limit: Option<u64>,
    /// Request timeout for apps whose manifest sets none, milliseconds.
    pub default_timeout_ms: Option<u64>,
    /// Concurrent requests per app for apps whose manifest sets none.
    pub default_max_concurrency: Option<u32>,
    /// Open client connections across all listeners.
    pub max_connections: Option<u32>,
    pub pooling: PoolingMode,
    /// QUIC connection idle timeout, milliseconds.
    pub quic_idle_timeout_ms: Option<u64>,
    /// Concurrent request streams per QUIC connection.
    pub quic_max_streams: Option<u32>,
    /// QUIC per-stream receive window, bytes.
    pub quic_stream_receive_window: Option<u64>,
    /// QUIC per-connection receive window, bytes.
    pub quic_receive_window: Option<u64>,
}

// === Sizing ===

/// A derived number, why it has that value, and whether config pinned it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Derived<T> {
    pub value: T,
    pub reason: String,
    pub overridden: bool,
}

impl<T> Derived<T> {
    fn auto(value: T, reason: impl Into<String>) -> Self {
        Derived {
            value,
            reason: reason.into(),
            overridden: false,
        }
    }

    fn pinned(value: T, reason: impl Into<String>) -> Self {
        Derived {
            value,
            reason: reason.into(),
            overridden: true,
        }
    }
}

/// Everything the engine and the server need, derived from [`Hardware`] and [`Overrides`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    pub hardware: Hardware,
    /// Tokio worker threads.
    pub worker_threads: Derived<usize>,
    /// Bytes of memory live guest instances may use together: the runtime admits a request
    /// only while the measured footprints of the live instances fit in it.
    pub memory_budget: Derived<u64>,
    /// Component instances that may be live at once, pooled or not.
    pub instance_slots: Derived<u32>,
    /// Largest linear memory any instance may grow to; ceiling for per-app `memory_limit`.
    pub max_memory_per_instance: Derived<u64>,
    /// Linear-memory layout for the engine. Applies to the on-demand allocator too: without it
    /// wasmtime reserves 4 GiB per memory, which a small `RLIMIT_AS` cannot hold.
    pub memory: MemoryLayout,
    /// Which allocator to use and why.
    pub allocator: Derived<Allocator>,
    /// Pool sizes when `allocator` is [`Allocator::Pooling`], otherwise `None`.
    pub pooling: Option<PoolSizing>,
    /// The WASI 0.3 engine's own allocator (`docs/wasi-p3.md`): it needs wasmtime's concurrency
    /// support, so it cannot share the WASI 0.2 engine's pool.
    pub wasi03: Wasi03Sizing,
    pub default_memory_limit: Derived<u64>,
    pub default_timeout_ms: Derived<u64>,
    pub default_max_concurrency: Derived<u32>,
    pub max_connections: Derived<u32>,
    /// QUIC (HTTP/3) transport limits.
    pub quic: QuicSizing,
}

/// QUIC transport limits for the HTTP/3 listener (quinn `TransportConfig`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuicSizing {
    /// Close a connection after this long without packets, milliseconds.
    pub idle_timeout_ms: Derived<u64>,
    /// Concurrent bidirectional (request) streams a client may open per connection.
    pub max_streams: Derived<u32>,
    /// Bytes a client may send on one stream ahead of the guest reading them.
    pub stream_receive_window: Derived<u64>,
    /// Bytes a client may send on all streams of a connection ahead of the guests reading them.
    pub receive_window: Derived<u64>,
}

/// Engine-wide linear-memory settings (wasmtime `Config::memory_reservation`,
/// `memory_guard_size`, `memory_reservation_for_growth`) and the address-space fit behind them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryLayout {
    pub memory_reservation: Derived<u64>,
    pub memory_guard: Derived<u64>,
    pub memory_reservation_for_growth: Derived<u64>,
    /// Address space all slots need with this layout, bytes: what the pools reserve up front,
    /// or (on demand) an estimate for every slot live at once.
    pub va_needed: u64,
    /// Address space set aside for pools: a quarter of the usable address space (half from
    /// 47 bits up), bytes.
    pub va_budget: u64,
}

/// The WASI 0.3 engine's allocator and memory layout. Its pool (when it has one) holds as many
/// slots as the WASI 0.2 pool, in the address space that pool leaves, so admission — one count
/// of live instances for both engines — can never hand a request a slot its engine lacks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wasi03Sizing {
    /// Which allocator and why.
    pub allocator: Derived<Allocator>,
    /// Linear-memory layout of the WASI 0.3 engine (`va_needed` is this pool's alone, `va_budget`
    /// what the WASI 0.2 pool left of the pool budget).
    pub memory: MemoryLayout,
    /// Pool sizes when `allocator` is [`Allocator::Pooling`], otherwise `None`.
    pub pooling: Option<PoolSizing>,
}

/// How component instances are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Allocator {
    /// wasmtime's pooling allocator, sized by [`PoolSizing`].
    Pooling,
    /// wasmtime's on-demand allocator (mmap per instance); memory limits still apply.
    OnDemand,
}

/// wasmtime `PoolingAllocationConfig` numbers (with `Config` memory settings repeated from
/// [`MemoryLayout`] so one struct configures a pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolSizing {
    /// `total_component_instances`: one per slot, as every request gets a fresh instance.
    pub instance_slots: u32,
    /// One per slot plus one per fourth slot (most components have a single memory).
    pub total_memories: u32,
    /// `TABLES_PER_INSTANCE` per slot.
    pub total_tables: u32,
    /// `CORE_INSTANCES_PER_SLOT` per slot on average.
    pub total_core_instances: u32,
    /// One async fiber stack per slot: each request runs on its own fiber.
    pub total_stacks: u32,
    pub max_core_instances_per_component: u32,
    pub max_memories_per_component: u32,
    pub max_tables_per_component: u32,
    pub table_elements: u32,
    /// Equal to `Sizing::memory.memory_reservation`, bytes.
    pub memory_reservation: u64,
    /// Equal to `Sizing::memory.memory_guard`, bytes.
    pub memory_guard: u64,
    /// `max_memory_size`; equal to `Sizing::max_memory_per_instance`, bytes.
    pub max_memory_per_instance: u64,
}

/// A config value that cannot be honoured, naming the `[runtime]` field and the numbers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizingError {
    #[error("runtime.{field} = {value} is too small: it must be at least {min}")]
    TooSmall {
        field: &'static str,
        value: String,
        min: String,
    },
    #[error("runtime.{field} = {value} is too large: it must not exceed {max}")]
    TooLarge {
        field: &'static str,
        value: String,
        max: String,
    },
    #[error(
        "runtime.{field} = {value} does not fit the address space: {slots} instance slots need {} \
         but the pool budget is {} ({share} of {va})",
        human_bytes(*.needed),
        human_bytes(*.budget)
    )]
    AddressSpace {
        field: &'static str,
        value: String,
        slots: u64,
        needed: u64,
        budget: u64,
        /// The pool's share of the address space: "a quarter", or "half" from 47 bits up.
        share: &'static str,
        /// What bounds the address space, e.g. "39-bit VA: 512 GiB".
        va: String,
    },
}

#[cfg(test)]
mod testkit {
    //! Helpers shared by the tests of detection and derivation.
    use super::*;
    use std::path::Path;

    /// A fake `/` with just the files a test writes.
    pub(super) struct Tree(tempfile::TempDir);

    impl Tree {
        pub(super) fn new() -> Tree {
            Tree(tempfile::tempdir().expect("create tempdir"))
        }

        pub(super) fn file(&self, rel: &str, contents: &str) -> &Tree {
            let path = self.0.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create fake dirs");
            }
            std::fs::write(&path, contents).expect("write fake file");
            self
        }

        pub(super) fn root(&self) -> &Path {
            self.0.path()
        }

        /// A plain 4-CPU, 8 GiB, 47-bit machine with no cgroup limits.
        pub(super) fn basic() -> Tree {
            let t = Tree::new();
            t.file("sys/devices/system/cpu/online", "0-3\n")
                .file(
                    "proc/meminfo",
                    "MemTotal:        8388608 kB\nMemFree: 1 kB\n",
                )
                .file("proc/self/cgroup", "0::/\n")
                .file(
                    "proc/self/maps",
                    "55d0c0000000-55d0c0021000 r--p 00000000 fe:00 1 /usr/bin/outpost\n\
                     7ffc0a000000-7ffc0a021000 rw-p 00000000 00:00 0 [stack]\n\
                     ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n",
                )
                .file(
                    "proc/self/limits",
                    "Limit                     Soft Limit           Hard Limit           Units\n\
                     Max address space         unlimited            unlimited            bytes\n",
                );
            t
        }
    }

    pub(super) fn derive_ok(hw: &Hardware, ov: &Overrides) -> Sizing {
        derive(hw, ov).expect("sizing derives")
    }
}

#[cfg(test)]
mod tests {
    use super::detect::{FALLBACK_MEMORY, KNOWN_VA_BITS};
    use super::testkit::{Tree, derive_ok};
    use super::*;

    const PI_MAPS: &str = "5580000000-5580021000 r-xp 00000000 b3:02 1 /usr/bin/outpost\n\
                           7fb7e00000-7fb7e21000 rw-p 00000000 00:00 0\n\
                           7fffffe000-7ffffff000 rw-p 00000000 00:00 0 [stack]\n";

    #[test]
    fn cgroup_v2_fractional_quota_rounds_workers_up() {
        let t = Tree::basic();
        t.file("proc/self/cgroup", "0::/outpost.service\n")
            .file("sys/fs/cgroup/outpost.service/cpu.max", "150000 100000\n");
        let hw = detect_at(t.root());
        assert_eq!(hw.cpus.online.value, 4);
        assert_eq!(hw.cpus.quota.value, Some(1.5));
        assert!(hw.cpus.quota.source.ends_with("outpost.service/cpu.max"));
        assert_eq!(hw.cpus.effective, 1.5);
        let s = derive_ok(&hw, &Overrides::default());
        assert_eq!(s.worker_threads.value, 2);
        assert!(
            s.worker_threads.reason.contains("1.5"),
            "{}",
            s.worker_threads.reason
        );
    }

    #[test]
    fn cgroup_v1_fallback() {
        let t = Tree::basic();
        t.file(
            "proc/self/cgroup",
            "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
        )
        .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
        .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
        .file(
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
            "50000\n",
        )
        .file(
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
            "100000\n",
        )
        .file(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        )
        .file(
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
            &(512 * MIB).to_string(),
        );
        let hw = detect_at(t.root());
        assert_eq!(hw.cpus.quota.value, Some(0.5));
        assert_eq!(hw.cpus.effective, 0.5);
        assert_eq!(hw.memory.cgroup_limit.value, Some(512 * MIB));
        assert_eq!(
            derive_ok(&hw, &Overrides::default()).worker_threads.value,
            1
        );
    }

    #[test]
    fn missing_files_fall_back_safely() {
        let t = Tree::new();
        let hw = detect_at(t.root());
        assert_eq!(hw.cpus.online.value, 1);
        assert!(hw.cpus.online.source.starts_with("assumed"));
        assert_eq!(hw.memory.total.value, FALLBACK_MEMORY);
        assert!(hw.memory.total.source.starts_with("assumed"));
        assert!(KNOWN_VA_BITS.contains(&hw.address_space.va_bits.value));
        assert!(hw.address_space.va_bits.source.starts_with("assumed"));
        assert_eq!(hw.page_size.value, 4096);
        assert_eq!(hw.address_space.max_map_count.value, DEFAULT_MAX_MAP_COUNT);
        assert!(hw.address_space.max_map_count.source.starts_with("assumed"));
        derive_ok(&hw, &Overrides::default());
    }

    #[test]
    fn max_map_count_is_read_and_caps_slots() {
        let t = Tree::basic();
        t.file("proc/sys/vm/max_map_count", "1048576\n");
        let hw = detect_at(t.root());
        assert_eq!(hw.address_space.max_map_count.value, 1 << 20);
        assert!(
            hw.address_space
                .max_map_count
                .source
                .ends_with("vm/max_map_count")
        );
        t.file("proc/sys/vm/max_map_count", "20000\n");
        let s = derive_ok(&detect_at(t.root()), &Overrides::default());
        // (20,000 − 4,096) / 6
        assert_eq!(s.instance_slots.value, 2_650);
    }

    #[test]
    fn wide_va_keeps_4gib_reservations() {
        let t = Tree::basic();
        let hw = detect_at(t.root());
        assert_eq!(hw.address_space.va_bits.value, 47);
        assert_eq!(hw.address_space.usable, 1 << 47);
        let s = derive_ok(&hw, &Overrides::default());
        assert_eq!(s.memory.memory_reservation.value, 4 * GIB);
        assert_eq!(s.memory.memory_guard.value, 32 * MIB);
        // (8 GiB − 1 GiB reserve) / 2 = 3.5 GiB budget / 64 KiB = 57,344, capped at 16,384,
        // then at (65,530 − 4,096) / 6 = 10,239 by the (assumed default) mapping limit.
        assert_eq!(s.memory_budget.value, 7 * GIB / 2);
        assert_eq!(s.instance_slots.value, 10_239);
        assert!(
            s.instance_slots.reason.contains("vm.max_map_count"),
            "{}",
            s.instance_slots.reason
        );
        let pool = s.pooling.as_ref().expect("pooling on a 47-bit machine");
        assert_eq!(pool.instance_slots, 10_239);
        assert_eq!(pool.total_memories, 10_239 + 2_560);
        assert_eq!(pool.total_tables, 4 * 10_239);
        assert_eq!(pool.total_core_instances, 16 * 10_239);
        assert_eq!(pool.total_stacks, 10_239);
        assert_eq!(pool.max_memories_per_component, 2);
        assert_eq!(pool.max_memory_per_instance, 256 * MIB);
        // Half of the 47-bit address space holds the 4 GiB layout for every slot.
        assert_eq!(s.memory.va_budget, 64 << 40);
        assert!(s.memory.va_needed <= s.memory.va_budget);
        assert_eq!(s.default_max_concurrency.value, 10_239);
        // min(8 GiB / 4 MiB, 4 workers × 1024): as before, not tied to the slots.
        assert_eq!(s.max_connections.value, 2048);
        assert_eq!(s.default_memory_limit.value, 64 * MIB);
        assert_eq!(s.default_timeout_ms.value, 30_000);
    }

    #[test]
    fn raspberry_pi_39_bit_va_shrinks_reservations() {
        let t = Tree::basic();
        t.file("proc/self/maps", PI_MAPS)
            .file("proc/meminfo", "MemTotal:        3884096 kB\n");
        let hw = detect_at(t.root());
        assert_eq!(hw.address_space.va_bits.value, 39);
        assert_eq!(hw.address_space.usable, 512 * GIB);
        let s = derive_ok(&hw, &Overrides::default());
        assert_eq!(s.memory.memory_reservation.value, 256 * MIB);
        assert_eq!(s.memory.memory_guard.value, 64 * KIB);
        assert!(s.instance_slots.value >= 8);
        assert!(s.pooling.is_some());
        let why = &s.memory.memory_reservation.reason;
        assert!(why.contains("39-bit"), "{why}");
        assert!(why.contains("512 GiB"), "{why}");
        assert!(why.contains("256 MiB"), "{why}");
        assert!(s.memory.va_needed <= s.memory.va_budget);
    }

    #[test]
    fn tiny_rlimit_as_falls_back_to_on_demand() {
        let t = Tree::basic();
        t.file(
            "proc/self/limits",
            "Max address space         1073741824           unlimited            bytes\n",
        );
        let hw = detect_at(t.root());
        assert_eq!(hw.address_space.rlimit_as.value, Some(GIB));
        assert_eq!(hw.address_space.usable, GIB);
        let s = derive_ok(&hw, &Overrides::default());
        assert!(s.pooling.is_none());
        assert!(
            s.allocator
                .reason
                .contains("falling back to on-demand allocation")
        );
        assert!(
            s.allocator.reason.contains("RLIMIT_AS"),
            "{}",
            s.allocator.reason
        );
        assert_eq!(s.memory.memory_reservation.value, 0);
        assert_eq!(s.memory.memory_reservation_for_growth.value, 8 * MIB);
        // On demand, live instances still map memory: concurrency shrinks to what fits, 256 MiB
        // at ~23 MiB each (1.25 memories at 8 MiB + 8 MiB growth, tables, stack).
        assert_eq!(s.instance_slots.value, 11);
        assert!(s.memory.va_needed <= s.memory.va_budget);
    }

    /// WASI 0.3's engine pools as many slots as WASI 0.2's in what that pool leaves of the
    /// budget, shrinking its reservations when two 4 GiB layouts do not fit, and allocates on
    /// demand where even that does not fit (a Pi with the default ceiling) or pooling is off.
    #[test]
    fn the_wasi_03_pool_takes_what_the_wasi_02_pool_leaves() {
        let t = Tree::basic();
        let wide = derive_ok(&detect_at(t.root()), &Overrides::default());
        let w = &wide.wasi03;
        let pool = w
            .pooling
            .as_ref()
            .expect("a WASI 0.3 pool on a 47-bit machine");
        assert_eq!(pool.instance_slots, wide.instance_slots.value);
        assert_eq!(w.allocator.value, Allocator::Pooling);
        // 10,239 × 1.25 × 4 GiB twice is more than 64 TiB: 256 MiB reservations instead.
        assert_eq!(w.memory.memory_reservation.value, 256 * MIB);
        assert_eq!(pool.memory_reservation, 256 * MIB);
        assert_eq!(w.memory.memory_guard.value, 64 * KIB);
        assert_eq!(
            w.memory.va_budget,
            wide.memory.va_budget - wide.memory.va_needed
        );
        assert!(w.memory.va_needed <= w.memory.va_budget);
        assert!(w.memory.memory_reservation.reason.contains("bounds checks"));

        // Fewer slots: both pools keep the 4 GiB layout.
        let few = derive_ok(
            &detect_at(t.root()),
            &Overrides {
                instance_slots: Some(1_000),
                ..Overrides::default()
            },
        );
        assert_eq!(few.wasi03.memory.memory_reservation.value, 4 * GIB);
        assert_eq!(few.wasi03.pooling.as_ref().unwrap().instance_slots, 1_000);

        // A Pi: the WASI 0.2 pool fills the budget, WASI 0.3 instances are allocated on demand
        // with the same layout, and the reason names the way out.
        t.file("proc/self/maps", PI_MAPS);
        let pi = derive_ok(&detect_at(t.root()), &Overrides::default());
        assert!(pi.pooling.is_some());
        assert!(pi.wasi03.pooling.is_none());
        assert_eq!(pi.wasi03.allocator.value, Allocator::OnDemand);
        assert_eq!(pi.wasi03.memory, pi.memory);
        let why = &pi.wasi03.allocator.reason;
        assert!(why.contains("instance_slots"), "{why}");
        // ... and fewer slots make room for it.
        let pi_few = derive_ok(
            &detect_at(t.root()),
            &Overrides {
                instance_slots: Some(100),
                ..Overrides::default()
            },
        );
        let p = pi_few.wasi03.pooling.as_ref().expect("room for 100 slots");
        assert_eq!(p.instance_slots, 100);
        assert_eq!(p.memory_reservation, 256 * MIB);

        let off = derive_ok(
            &detect_at(t.root()),
            &Overrides {
                pooling: PoolingMode::Off,
                ..Overrides::default()
            },
        );
        assert!(off.wasi03.pooling.is_none());
        assert!(off.wasi03.allocator.overridden);
    }

    #[test]
    fn render_text_and_json_show_everything() {
        let t = Tree::basic();
        t.file("proc/self/maps", PI_MAPS);
        let s = derive_ok(&detect_at(t.root()), &Overrides::default());
        let text = s.render_text();
        for needle in [
            "effective CPUs",
            "VA bits",
            "512 GiB",
            "memory_reservation",
            "256 MiB",
            "total_memories",
            "proc/meminfo MemTotal",
            "max_connections",
            "memory_budget",
            "daemon reserve",
            "minimum instance footprint",
            "max map count",
            "WASI 0.3 engine",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string_pretty(&s).expect("serialize"))
                .expect("valid json");
        assert_eq!(json["memory"]["memory_reservation"]["value"], 256 * MIB);
        assert_eq!(json["hardware"]["address_space"]["va_bits"]["value"], 39);
        assert!(json["pooling"]["total_memories"].is_u64());
        assert!(json["memory_budget"]["value"].is_u64());
        assert!(json["memory_budget"]["reason"].is_string());
        assert_eq!(
            json["hardware"]["address_space"]["max_map_count"]["value"],
            DEFAULT_MAX_MAP_COUNT
        );
    }

    #[test]
    fn detect_on_this_machine_is_sane() {
        let hw = detect();
        assert!(hw.cpus.online.value >= 1);
        assert!(hw.cpus.effective > 0.0);
        assert!(hw.memory.effective > 0);
        assert!(KNOWN_VA_BITS.contains(&hw.address_space.va_bits.value));
        assert!(hw.address_space.usable > 0);
        assert!(hw.page_size.value >= 4096);
        assert!(hw.address_space.max_map_count.value > 0);
        derive_ok(&hw, &Overrides::default());
    }

    #[test]
    fn overrides_deserialize_from_the_runtime_table() {
        let ov: Overrides =
            toml::from_str("instance_slots = 64\nmemory_guard = 65536\npooling = \"off\"\n")
                .expect("valid [runtime] table");
        assert_eq!(ov.instance_slots, Some(64));
        assert_eq!(ov.memory_guard, Some(64 * KIB));
        assert_eq!(ov.pooling, PoolingMode::Off);
        assert_eq!(ov.worker_threads, None);
        assert!(toml::from_str::<Overrides>("instance_slot = 64\n").is_err());
        assert!(toml::from_str::<Overrides>("pooling = \"sometimes\"\n").is_err());
        assert_eq!(
            toml::from_str::<Overrides>("")
                .expect("empty table")
                .pooling,
            PoolingMode::Auto
        );
    }
}
