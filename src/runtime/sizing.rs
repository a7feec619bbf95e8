//! Hardware detection and pool sizing.
//!
//! Owns: reading the facts that bound how much WebAssembly this machine can host — online CPUs and
//! cgroup CPU quota, physical memory and cgroup memory limit, usable virtual address space (VA
//! width and `RLIMIT_AS`) — and deriving from them every pooling-allocator, linear-memory and
//! server number, each with a human reason (`outpost info` prints them; see `docs/sizing.md`).
//!
//! Must not: use wasmtime types (the engine module turns a [`Sizing`] into a `wasmtime::Config`),
//! fail or panic on odd or missing `/proc` and `/sys` files (every fact falls back to a safe value
//! and records where it came from), or read anything outside the root it is given.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// WebAssembly linear memories grow in 64 KiB pages, so reservations and limits are page-aligned.
const WASM_PAGE: u64 = 64 * KIB;

/// User VA widths Linux kernels are built with: 39 (arm64 3-level 4K pages, Raspberry Pi OS
/// 64-bit), 42 (arm64 64K pages), 47 (x86_64 4-level), 48 (arm64 4-level), 52 (arm64 LVA),
/// 57 (x86_64 5-level). Rounding an observation *up* to one of these recovers the real width
/// from the highest mapping, which sits a little below the top.
const KNOWN_VA_BITS: [u32; 6] = [39, 42, 47, 48, 52, 57];

/// cgroup v1 reports "no limit" as a huge page-aligned number (2^63 - 4096 on 64-bit kernels);
/// nothing real is this large.
const V1_UNLIMITED: u64 = 1 << 60;

/// Where cgroup v2 (the unified hierarchy) is mounted.
const V2_MOUNT: &str = "sys/fs/cgroup";
/// Where distributions mount the cgroup v1 CPU controller; the joined name is most common, and
/// the others are usually symlinks to it (reading them twice cannot change a minimum).
const V1_CPU_MOUNTS: [&str; 3] = [
    "sys/fs/cgroup/cpu,cpuacct",
    "sys/fs/cgroup/cpuacct,cpu",
    "sys/fs/cgroup/cpu",
];
const V1_MEMORY_MOUNT: &str = "sys/fs/cgroup/memory";

/// Used when `/proc/meminfo` cannot be read: the smallest board we target (Raspberry Pi Zero 2),
/// so an unknown machine gets a small, safe pool rather than an oversubscribed one.
const FALLBACK_MEMORY: u64 = 512 * MIB;
/// Used when the page size cannot be read: the common Linux page size on both x86_64 and arm64.
const FALLBACK_PAGE_SIZE: u64 = 4 * KIB;

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

/// Reads this machine's facts from `/proc` and `/sys`; see [`detect_at`].
pub fn detect() -> Hardware {
    detect_at(Path::new("/"))
}

/// Reads the facts from a `/proc` + `/sys` tree rooted at `root` (tests pass a fake tree).
/// Never fails: each fact that cannot be read falls back to a safe value whose `source` says so.
pub fn detect_at(root: &Path) -> Hardware {
    let cgroups = CgroupPaths::read(root);

    let online = online_cpus(root);
    let quota = cgroup_cpu_quota(root, &cgroups);
    let effective_cpus = match quota.value {
        Some(q) => f64::from(online.value).min(q),
        None => f64::from(online.value),
    };

    let total = mem_total(root);
    let limit = cgroup_memory_limit(root, &cgroups);
    let effective_memory = limit.value.map_or(total.value, |l| l.min(total.value));

    let va_bits = va_bits(root);
    let rlimit_as = rlimit_as(root);
    let usable = usable_va(va_bits.value, rlimit_as.value);

    Hardware {
        arch: std::env::consts::ARCH.to_owned(),
        cpus: Cpus {
            online,
            quota,
            effective: sanitize_cpus(effective_cpus),
        },
        memory: Memory {
            total,
            cgroup_limit: limit,
            effective: effective_memory,
        },
        address_space: AddressSpace {
            va_bits,
            rlimit_as,
            usable,
            max_map_count: max_map_count(root),
        },
        page_size: page_size(root),
    }
}

fn sanitize_cpus(cpus: f64) -> f64 {
    if cpus.is_finite() && cpus > 0.0 {
        cpus
    } else {
        // A zero or garbled quota must not yield zero workers; one CPU is always there.
        1.0
    }
}

fn pow2(bits: u32) -> u64 {
    1u64.checked_shl(bits).unwrap_or(u64::MAX)
}

fn usable_va(bits: u32, rlimit_as: Option<u64>) -> u64 {
    rlimit_as.map_or(pow2(bits), |l| l.min(pow2(bits)))
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn online_cpus(root: &Path) -> Fact<u32> {
    // On the real root std's answer also honours the affinity mask (taskset, cpusets), which
    // the sysfs list does not.
    if root == Path::new("/")
        && let Ok(n) = std::thread::available_parallelism()
    {
        let n = u32::try_from(n.get()).unwrap_or(u32::MAX);
        return Fact::new(n, "std::thread::available_parallelism (affinity mask)");
    }
    let path = root.join("sys/devices/system/cpu/online");
    match read_trimmed(&path).and_then(|s| parse_cpu_list(&s)) {
        Some(n) => Fact::new(n, path.display().to_string()),
        None => Fact::new(
            1,
            format!("assumed 1: {} unreadable or malformed", path.display()),
        ),
    }
}

/// Counts the CPUs in a kernel CPU list such as "0-3" or "0,2-5".
fn parse_cpu_list(list: &str) -> Option<u32> {
    let mut count: u32 = 0;
    for part in list.trim().split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (
                lo.trim().parse::<u32>().ok()?,
                hi.trim().parse::<u32>().ok()?,
            ),
            None => {
                let cpu = part.parse::<u32>().ok()?;
                (cpu, cpu)
            }
        };
        if hi < lo {
            return None;
        }
        count = count.saturating_add(hi - lo).saturating_add(1);
    }
    (count > 0).then_some(count)
}

/// This process's cgroup paths, from `/proc/self/cgroup`.
#[derive(Debug, Default)]
struct CgroupPaths {
    unified: Option<String>,
    cpu_v1: Option<String>,
    memory_v1: Option<String>,
}

impl CgroupPaths {
    fn read(root: &Path) -> CgroupPaths {
        read_trimmed(&root.join("proc/self/cgroup"))
            .map(|s| CgroupPaths::parse(&s))
            .unwrap_or_default()
    }

    /// Lines are `hierarchy-id:controllers:path`; `0::path` is the v2 unified hierarchy.
    fn parse(text: &str) -> CgroupPaths {
        let mut paths = CgroupPaths::default();
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                paths.unified = Some(path.to_owned());
                continue;
            }
            for controller in controllers.split(',') {
                match controller {
                    "cpu" => paths.cpu_v1 = Some(path.to_owned()),
                    "memory" => paths.memory_v1 = Some(path.to_owned()),
                    _ => {}
                }
            }
        }
        paths
    }
}

/// `mount/<cgroup_path>` and each of its ancestors up to `mount`, deepest first. Limits are
/// inherited, so the effective one is the minimum along this walk. Directories that do not
/// exist (a container without a cgroup namespace sees the host path) simply yield no files.
fn cgroup_dirs(root: &Path, mount: &str, cgroup_path: &str) -> Vec<PathBuf> {
    let mut dir = root.join(mount);
    let mut dirs = vec![dir.clone()];
    for component in Path::new(cgroup_path).components() {
        match component {
            Component::Normal(name) => {
                dir = dir.join(name);
                dirs.push(dir.clone());
            }
            // A `..` would walk out of the mount; stop rather than read unrelated files.
            Component::ParentDir | Component::Prefix(_) => break,
            Component::RootDir | Component::CurDir => {}
        }
    }
    dirs.reverse();
    dirs
}

fn keep_min<T: PartialOrd>(best: &mut Option<(T, PathBuf)>, value: T, file: PathBuf) {
    if best.as_ref().is_none_or(|(b, _)| value < *b) {
        *best = Some((value, file));
    }
}

fn cgroup_cpu_quota(root: &Path, cgroups: &CgroupPaths) -> Fact<Option<f64>> {
    let mut best = None;
    for dir in cgroup_dirs(root, V2_MOUNT, cgroups.unified.as_deref().unwrap_or("/")) {
        let file = dir.join("cpu.max");
        if let Some(q) = read_trimmed(&file).and_then(|s| parse_cpu_max(&s)) {
            keep_min(&mut best, q, file);
        }
    }
    for mount in V1_CPU_MOUNTS {
        for dir in cgroup_dirs(root, mount, cgroups.cpu_v1.as_deref().unwrap_or("/")) {
            if let Some(q) = v1_cpu_quota(&dir) {
                keep_min(&mut best, q, dir.join("cpu.cfs_quota_us"));
            }
        }
    }
    match best {
        Some((q, file)) => Fact::new(Some(q), file.display().to_string()),
        None => Fact::new(
            None,
            "no cgroup CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us)",
        ),
    }
}

/// cgroup v2 `cpu.max`: "max 100000" = unlimited, "150000 100000" = 1.5 CPUs.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?.parse::<u64>().ok()?;
    // The kernel always prints the period, but its documented default is 100 ms.
    let period = fields
        .next()
        .map_or(Some(100_000), |p| p.parse::<u64>().ok())?;
    cpus_from_quota(quota, period)
}

/// cgroup v1: `cpu.cfs_quota_us` (-1 = unlimited) over `cpu.cfs_period_us`.
fn v1_cpu_quota(dir: &Path) -> Option<f64> {
    let quota = read_trimmed(&dir.join("cpu.cfs_quota_us"))?
        .parse::<i64>()
        .ok()?;
    let period = read_trimmed(&dir.join("cpu.cfs_period_us"))?
        .parse::<u64>()
        .ok()?;
    cpus_from_quota(u64::try_from(quota).ok()?, period)
}

fn cpus_from_quota(quota: u64, period: u64) -> Option<f64> {
    if quota == 0 || period == 0 {
        return None;
    }
    // Precision loss above 2^53 µs is irrelevant for a CPU count.
    Some(quota as f64 / period as f64)
}

fn mem_total(root: &Path) -> Fact<u64> {
    let path = root.join("proc/meminfo");
    let parsed = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| parse_meminfo_total(&s));
    match parsed {
        Some(bytes) => Fact::new(bytes, format!("{} MemTotal", path.display())),
        None => Fact::new(
            FALLBACK_MEMORY,
            format!(
                "assumed {}: {} unreadable or without MemTotal",
                human_bytes(FALLBACK_MEMORY),
                path.display()
            ),
        ),
    }
}

/// `MemTotal:       24684096 kB` → bytes.
fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut fields = line.split_whitespace();
    let value = fields.next()?.parse::<u64>().ok()?;
    let bytes = match fields.next() {
        Some("kB") => value.saturating_mul(KIB),
        None => value,
        Some(_) => return None,
    };
    (bytes > 0).then_some(bytes)
}

fn cgroup_memory_limit(root: &Path, cgroups: &CgroupPaths) -> Fact<Option<u64>> {
    let mut best = None;
    for dir in cgroup_dirs(root, V2_MOUNT, cgroups.unified.as_deref().unwrap_or("/")) {
        let file = dir.join("memory.max");
        // "max" fails to parse as a number, which is exactly "no limit here".
        if let Some(limit) = read_trimmed(&file).and_then(|s| s.parse::<u64>().ok()) {
            keep_min(&mut best, limit, file);
        }
    }
    let v1_path = cgroups.memory_v1.as_deref().unwrap_or("/");
    for dir in cgroup_dirs(root, V1_MEMORY_MOUNT, v1_path) {
        let file = dir.join("memory.limit_in_bytes");
        let limit = read_trimmed(&file)
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&l| l < V1_UNLIMITED);
        if let Some(limit) = limit {
            keep_min(&mut best, limit, file);
        }
    }
    match best {
        Some((limit, file)) => Fact::new(Some(limit), file.display().to_string()),
        None => Fact::new(
            None,
            "no cgroup memory limit (v2 memory.max, v1 memory.limit_in_bytes)",
        ),
    }
}

fn va_bits(root: &Path) -> Fact<u32> {
    let path = root.join("proc/self/maps");
    let top = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| highest_user_mapping_end(&s));
    if let Some((end, bits)) = top.and_then(|end| Some((end, va_bits_for_end(end)?))) {
        return Fact::new(
            bits,
            format!("{}: highest user mapping ends at {end:#x}", path.display()),
        );
    }
    // x86_64 has had at least 47 bits since its first kernels; elsewhere assume the smallest
    // width we know (39-bit arm64), which only ever makes pools smaller.
    let assumed = if std::env::consts::ARCH == "x86_64" {
        47
    } else {
        KNOWN_VA_BITS[0]
    };
    Fact::new(
        assumed,
        format!(
            "assumed {assumed} for {}: {} unreadable or empty",
            std::env::consts::ARCH,
            path.display()
        ),
    )
}

/// The end of the highest mapping that lies in user space. Kernel-half mappings such as
/// x86_64's `[vsyscall]` page at 0xffffffffff600000 are skipped.
fn highest_user_mapping_end(maps: &str) -> Option<u64> {
    let max_user = pow2(*KNOWN_VA_BITS.last()?);
    maps.lines()
        .filter_map(|line| {
            let range = line.split_whitespace().next()?;
            let (_, end) = range.split_once('-')?;
            u64::from_str_radix(end, 16).ok()
        })
        .filter(|&end| end > 0 && end <= max_user)
        .max()
}

/// The smallest known VA width that can hold an address just below `end`.
fn va_bits_for_end(end: u64) -> Option<u32> {
    let observed = 64 - end.checked_sub(1)?.leading_zeros();
    KNOWN_VA_BITS.iter().copied().find(|&k| k >= observed)
}

fn rlimit_as(root: &Path) -> Fact<Option<u64>> {
    let path = root.join("proc/self/limits");
    match std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| parse_rlimit_as(&s))
    {
        Some(limit) => Fact::new(
            limit,
            format!("{} Max address space (soft)", path.display()),
        ),
        None => Fact::new(
            None,
            format!(
                "assumed unlimited: {} unreadable or malformed",
                path.display()
            ),
        ),
    }
}

/// `Max address space  unlimited  unlimited  bytes` → soft limit; `Some(None)` = unlimited,
/// `None` = line missing or garbled.
fn parse_rlimit_as(limits: &str) -> Option<Option<u64>> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max address space"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => soft.parse::<u64>().ok().map(Some),
    }
}

fn max_map_count(root: &Path) -> Fact<u64> {
    let path = root.join("proc/sys/vm/max_map_count");
    match read_trimmed(&path).and_then(|s| s.parse::<u64>().ok()) {
        Some(n) if n > 0 => Fact::new(n, path.display().to_string()),
        _ => Fact::new(
            DEFAULT_MAX_MAP_COUNT,
            format!(
                "assumed {DEFAULT_MAX_MAP_COUNT} (Linux default): {} unreadable or malformed",
                path.display()
            ),
        ),
    }
}

fn page_size(root: &Path) -> Fact<u64> {
    let path = root.join("proc/self/smaps");
    // smaps can be long; the first mapping's entry is enough, so stop reading there.
    let found = File::open(&path).ok().and_then(|f| {
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| parse_kernel_page_size(&l))
    });
    match found {
        Some(size) => Fact::new(size, format!("{} KernelPageSize", path.display())),
        None => Fact::new(
            FALLBACK_PAGE_SIZE,
            format!(
                "assumed 4 KiB: {} unreadable or without KernelPageSize",
                path.display()
            ),
        ),
    }
}

/// `KernelPageSize:        4 kB` → 4096.
fn parse_kernel_page_size(line: &str) -> Option<u64> {
    let mut fields = line.strip_prefix("KernelPageSize:")?.split_whitespace();
    let value = fields.next()?.parse::<u64>().ok()?;
    match fields.next() {
        Some("kB") => Some(value.saturating_mul(KIB)).filter(|&s| s > 0),
        _ => None,
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

/// Derives every number from the hardware facts, letting config overrides win. Fails only when
/// an override is invalid or cannot fit the address space; hardware alone never fails.
pub fn derive(hw: &Hardware, ov: &Overrides) -> Result<Sizing, SizingError> {
    let worker_threads = derive_worker_threads(hw, ov)?;
    let max_memory = derive_max_memory(hw, ov)?;
    let default_memory_limit = derive_default_memory_limit(max_memory.value, ov)?;
    let memory_budget = derive_memory_budget(hw, ov)?;
    let wanted = derive_wanted_slots(hw, memory_budget.value, ov)?;
    let fit = fit_address_space(hw, ov, &max_memory, wanted)?;

    let slots = fit.slots.value;
    let (allocator, pooling) = derive_pooling(ov, &fit, max_memory.value);
    let growth = derive_growth(&fit, pooling.is_some());
    let default_max_concurrency = derive_default_max_concurrency(slots, ov)?;
    let max_connections = derive_max_connections(hw, worker_threads.value, ov)?;
    let quic = derive_quic(hw, ov, default_max_concurrency.value, max_connections.value)?;
    let default_timeout_ms = match ov.default_timeout_ms {
        Some(0) => return Err(too_small("default_timeout_ms", "0".into(), "1")),
        Some(ms) => Derived::pinned(ms, "set in [runtime]"),
        None => Derived::auto(
            DEFAULT_TIMEOUT_MS,
            "30 s: generous for HTTP handlers, short enough that a stuck guest frees its slot",
        ),
    };

    Ok(Sizing {
        hardware: hw.clone(),
        worker_threads,
        memory_budget,
        instance_slots: fit.slots,
        max_memory_per_instance: max_memory,
        memory: MemoryLayout {
            memory_reservation: fit.reservation,
            memory_guard: fit.guard,
            memory_reservation_for_growth: growth,
            va_needed: fit.va_needed,
            va_budget: fit.va_budget,
        },
        allocator,
        pooling,
        default_memory_limit,
        default_timeout_ms,
        default_max_concurrency,
        max_connections,
        quic,
    })
}

fn too_small(field: &'static str, value: String, min: impl Into<String>) -> SizingError {
    SizingError::TooSmall {
        field,
        value,
        min: min.into(),
    }
}

fn too_large(field: &'static str, value: String, max: impl Into<String>) -> SizingError {
    SizingError::TooLarge {
        field,
        value,
        max: max.into(),
    }
}

fn derive_worker_threads(hw: &Hardware, ov: &Overrides) -> Result<Derived<usize>, SizingError> {
    if let Some(n) = ov.worker_threads {
        if n == 0 {
            return Err(too_small("worker_threads", "0".into(), "1"));
        }
        return Ok(Derived::pinned(n, "set in [runtime]"));
    }
    let cpus = sanitize_cpus(hw.cpus.effective);
    // Saturating float-to-int conversion is the intent: absurd CPU counts clamp.
    let wanted = (cpus.ceil() as usize).max(1);
    let n = wanted.min(MAX_WORKER_THREADS);
    let mut reason = format!(
        "ceil({} effective CPUs): one runtime thread per CPU the cgroup lets us use",
        fmt_cpus(cpus)
    );
    if n != wanted {
        reason.push_str(&format!(", capped at {MAX_WORKER_THREADS}"));
    }
    Ok(Derived::auto(n, reason))
}

fn derive_max_memory(hw: &Hardware, ov: &Overrides) -> Result<Derived<u64>, SizingError> {
    if let Some(bytes) = ov.max_memory_per_instance {
        if bytes < WASM_PAGE {
            return Err(too_small(
                "max_memory_per_instance",
                human_bytes(bytes),
                "64 KiB (one wasm page)",
            ));
        }
        let usable = hw.address_space.usable;
        if bytes > usable {
            return Err(too_large(
                "max_memory_per_instance",
                human_bytes(bytes),
                format!("the usable address space ({})", hw.va_description()),
            ));
        }
        return Ok(Derived::pinned(bytes, "set in [runtime]"));
    }
    let quarter = round_down(hw.memory.effective / 4, WASM_PAGE);
    let (value, why) = if quarter >= DEFAULT_MAX_MEMORY {
        (
            DEFAULT_MAX_MEMORY,
            format!(
                "256 MiB default (a quarter of {} memory would allow more)",
                human_bytes(hw.memory.effective)
            ),
        )
    } else if quarter >= MIN_MAX_MEMORY {
        (
            quarter,
            format!(
                "a quarter of {} memory, so four instances at the ceiling cannot exhaust it",
                human_bytes(hw.memory.effective)
            ),
        )
    } else {
        (
            MIN_MAX_MEMORY,
            format!(
                "16 MiB floor (a quarter of {} memory is less; smaller guests fail to start)",
                human_bytes(hw.memory.effective)
            ),
        )
    };
    Ok(Derived::auto(value, why))
}

fn derive_default_memory_limit(
    max_memory: u64,
    ov: &Overrides,
) -> Result<Derived<u64>, SizingError> {
    if let Some(bytes) = ov.default_memory_limit {
        if bytes < WASM_PAGE {
            return Err(too_small(
                "default_memory_limit",
                human_bytes(bytes),
                "64 KiB (one wasm page)",
            ));
        }
        if bytes > max_memory {
            return Err(too_large(
                "default_memory_limit",
                human_bytes(bytes),
                format!("max_memory_per_instance = {}", human_bytes(max_memory)),
            ));
        }
        return Ok(Derived::pinned(bytes, "set in [runtime]"));
    }
    if max_memory < DEFAULT_MEMORY_LIMIT {
        Ok(Derived::auto(
            max_memory,
            "capped to max_memory_per_instance (64 MiB default is larger)",
        ))
    } else {
        Ok(Derived::auto(
            DEFAULT_MEMORY_LIMIT,
            "64 MiB default: roomy for request handlers, a quarter of the 256 MiB ceiling",
        ))
    }
}

fn derive_memory_budget(hw: &Hardware, ov: &Overrides) -> Result<Derived<u64>, SizingError> {
    let effective = hw.memory.effective;
    if let Some(bytes) = ov.memory_budget {
        if bytes < MIN_INSTANCE_FOOTPRINT {
            return Err(too_small(
                "memory_budget",
                human_bytes(bytes),
                "64 KiB (one instance at the minimum footprint)",
            ));
        }
        if bytes > effective {
            return Err(too_large(
                "memory_budget",
                human_bytes(bytes),
                format!(
                    "the effective memory ({}): admitting more than the machine has ends in the \
                     OOM killer",
                    human_bytes(effective)
                ),
            ));
        }
        return Ok(Derived::pinned(bytes, "set in [runtime]"));
    }
    // On a tiny cgroup the 64 MiB floor would leave guests nothing; half stays for them.
    let reserve = DAEMON_RESERVE_MIN
        .max(effective / DAEMON_RESERVE_DIVISOR)
        .min(effective / 2);
    let rest = effective - reserve;
    let budget = round_down(rest / GUEST_SHARE_DIVISOR, WASM_PAGE);
    Ok(Derived::auto(
        budget,
        format!(
            "{} effective − {} daemon reserve (max of 64 MiB and 1/8) = {}; half of it for \
             live guest instances (the other half absorbs instances growing past their \
             measured footprint, the page cache and other processes)",
            human_bytes(effective),
            human_bytes(reserve),
            human_bytes(rest),
        ),
    ))
}

fn derive_wanted_slots(
    hw: &Hardware,
    memory_budget: u64,
    ov: &Overrides,
) -> Result<Derived<u32>, SizingError> {
    if let Some(n) = ov.instance_slots {
        if n == 0 {
            return Err(too_small("instance_slots", "0".into(), "1"));
        }
        return Ok(Derived::pinned(n, "set in [runtime]"));
    }
    let by_memory = memory_budget / MIN_INSTANCE_FOOTPRINT;
    let mut reason = format!(
        "memory_budget {} / {} minimum instance footprint = {by_memory}",
        human_bytes(memory_budget),
        human_bytes(MIN_INSTANCE_FOOTPRINT)
    );
    let mut slots = by_memory;
    if slots > MAX_SLOTS {
        slots = MAX_SLOTS;
        reason.push_str(&format!(
            "; capped at {MAX_SLOTS} (hard maximum: the pool reserves stacks, tables and \
             mappings for every slot up front)"
        ));
    }
    let maps = hw.address_space.max_map_count.value;
    let by_maps = maps.saturating_sub(MAPPINGS_RESERVE) / MAPPINGS_PER_SLOT;
    if slots > by_maps {
        slots = by_maps;
        reason.push_str(&format!(
            "; capped at {by_maps} by vm.max_map_count {maps} ({MAPPINGS_PER_SLOT} memory \
             mappings per slot once used, {MAPPINGS_RESERVE} kept for the rest of the daemon)"
        ));
    }
    if slots < MIN_SLOTS {
        slots = MIN_SLOTS;
        reason.push_str(&format!(
            "; raised to {MIN_SLOTS} so one slow tenant cannot exhaust the pool"
        ));
    }
    // `slots` is at most MAX_SLOTS, so the conversion cannot fail.
    let slots = u32::try_from(slots).unwrap_or(u32::MAX);
    Ok(Derived::auto(slots, reason))
}

/// One way to lay out linear memories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    reservation: u64,
    guard: u64,
}

impl Layout {
    /// Address space the pools reserve up front for `slots` instances: the memory slab (a
    /// pre-slab guard, then reservation + guard per memory, as wasmtime lays it out), the table
    /// pool and the async stack pool (each stack plus a guard page).
    fn va_needed(self, slots: u64, page: u64) -> u128 {
        let memory = u128::from(self.reservation) + u128::from(self.guard);
        u128::from(self.guard)
            + u128::from(total_memories(slots)) * memory
            + u128::from(slots) * Self::va_per_slot_besides_memory(page)
    }

    /// Tables and the fiber stack of one slot.
    fn va_per_slot_besides_memory(page: u64) -> u128 {
        let table = u128::from(round_up(
            u64::from(TABLE_ELEMENTS) * TABLE_ELEMENT_BYTES,
            page,
        ));
        let stack = u128::from(ASYNC_STACK_SIZE) + u128::from(page);
        u128::from(TABLES_PER_INSTANCE) * table + stack
    }

    /// Average address space per slot, for reasons: `va_needed` over many slots.
    fn va_per_slot(self, page: u64) -> u128 {
        let memory = u128::from(self.reservation) + u128::from(self.guard);
        let divisor = u128::from(EXTRA_MEMORY_DIVISOR);
        memory * (divisor + 1) / divisor + Self::va_per_slot_besides_memory(page)
    }

    /// How many slots fit in `budget` (`va_needed` grows with the slot count, so bisect).
    fn slots_fitting(self, budget: u64, page: u64) -> u64 {
        let fits = |n: u64| self.va_needed(n, page) <= u128::from(budget);
        if !fits(0) {
            return 0;
        }
        let (mut lo, mut hi) = (0u64, u64::from(u32::MAX));
        if fits(hi) {
            return hi;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Linear memories the pool holds for `slots` instances: one each, plus one for every fourth.
fn total_memories(slots: u64) -> u64 {
    slots.saturating_add(slots.div_ceil(EXTRA_MEMORY_DIVISOR))
}

/// The address space set aside for pools, and how that share is described.
fn va_budget(hw: &Hardware) -> (u64, &'static str) {
    let usable = hw.address_space.usable;
    if usable >= pow2(WIDE_VA_BITS) {
        (usable / WIDE_VA_BUDGET_DIVISOR, "half")
    } else {
        (usable / VA_BUDGET_DIVISOR, "a quarter")
    }
}

/// The outcome of fitting slots and memory layout into the address-space budget.
struct Fit {
    slots: Derived<u32>,
    reservation: Derived<u64>,
    guard: Derived<u64>,
    /// Whether the chosen layout reserves the whole 32-bit index space.
    preferred: bool,
    va_needed: u64,
    va_budget: u64,
    /// No layout fits: allocate on demand with moving memories.
    on_demand_fallback: Option<String>,
}

fn fit_address_space(
    hw: &Hardware,
    ov: &Overrides,
    max_memory: &Derived<u64>,
    wanted: Derived<u32>,
) -> Result<Fit, SizingError> {
    let page = hw.page_size.value.max(1);
    let (budget, share) = va_budget(hw);
    let va = hw.va_description();
    let max_mem = max_memory.value;

    if let Some(reservation) = ov.memory_reservation
        && reservation < max_mem
    {
        return Err(too_small(
            "memory_reservation",
            human_bytes(reservation),
            format!(
                "max_memory_per_instance = {}: every memory must fit its reservation",
                human_bytes(max_mem)
            ),
        ));
    }

    let preferred = Layout {
        reservation: ov.memory_reservation.unwrap_or(PREFERRED_RESERVATION),
        guard: ov.memory_guard.unwrap_or(PREFERRED_GUARD),
    };
    let shrunk = Layout {
        // max_mem ≤ usable VA ≤ 2^63, so rounding up cannot overflow.
        reservation: ov
            .memory_reservation
            .unwrap_or_else(|| round_up(max_mem, WASM_PAGE)),
        guard: ov.memory_guard.unwrap_or(SHRUNK_GUARD),
    };
    // The 4 GiB layout is only valid when the ceiling fits inside it.
    let preferred_valid = preferred.reservation >= max_mem;
    let wanted_slots = u64::from(wanted.value);
    let fits = |layout: Layout, slots: u64| layout.va_needed(slots, page) <= u128::from(budget);
    let preferred_fit = preferred.slots_fitting(budget, page);

    let shrunk_fit = shrunk.slots_fitting(budget, page);

    let mut slots = wanted;
    let keep_preferred = preferred_valid
        && !slots.overridden
        && preferred_fit >= MIN_SLOTS
        && preferred_fit >= wanted_slots.div_ceil(PREFERRED_KEEP_DIVISOR);
    let chosen = if preferred_valid && fits(preferred, wanted_slots) {
        Some(preferred)
    } else if keep_preferred {
        let n = preferred_fit;
        slots = Derived::auto(
            u32::try_from(n).unwrap_or(u32::MAX),
            format!(
                "{}; reduced to {n}, what {} reservations fit in the {} pool budget: that keeps \
                 bounds checks elided and is at least half the slots ({shrunk_fit} would fit \
                 with {} reservations and explicit bounds checks)",
                slots.reason,
                human_bytes(preferred.reservation),
                human_bytes(budget),
                human_bytes(shrunk.reservation),
            ),
        );
        Some(preferred)
    } else if fits(shrunk, wanted_slots) {
        Some(shrunk)
    } else if !slots.overridden && shrunk_fit >= MIN_SLOTS {
        let n = shrunk_fit.min(wanted_slots);
        slots = Derived::auto(
            u32::try_from(n).unwrap_or(u32::MAX),
            format!(
                "{}; reduced to {n}, what {} reservations (= max_memory_per_instance; lower it \
                 for more slots) fit in the {} address-space budget",
                slots.reason,
                human_bytes(shrunk.reservation),
                human_bytes(budget)
            ),
        );
        Some(shrunk)
    } else {
        None
    };

    let Some(layout) = chosen else {
        let pinned_field = if slots.overridden {
            Some(("instance_slots", slots.value.to_string()))
        } else if let Some(r) = ov.memory_reservation {
            Some(("memory_reservation", human_bytes(r)))
        } else if let Some(g) = ov.memory_guard {
            Some(("memory_guard", human_bytes(g)))
        } else if ov.pooling == PoolingMode::On {
            Some(("pooling", "\"on\"".to_owned()))
        } else {
            None
        };
        let checked = if slots.overridden {
            wanted_slots
        } else {
            MIN_SLOTS
        };
        if let Some((field, value)) = pinned_field {
            return Err(SizingError::AddressSpace {
                field,
                value,
                slots: checked,
                needed: saturate(shrunk.va_needed(checked, page)),
                budget,
                share,
                va,
            });
        }
        let why = format!(
            "even {} reservations fit only {} slots (fewer than {MIN_SLOTS}) in the {} budget ({va})",
            human_bytes(shrunk.reservation),
            shrunk_fit,
            human_bytes(budget)
        );
        // On demand, a live instance maps only what it uses plus the growth step; cap the
        // concurrency so that many instances still fit the same budget.
        let per_instance = Layout {
            reservation: ON_DEMAND_INSTANCE_MEMORY + SHRUNK_GROWTH,
            guard: SHRUNK_GUARD,
        };
        let n = per_instance
            .slots_fitting(budget, page)
            .clamp(1, u64::from(slots.value));
        if n < u64::from(slots.value) {
            slots = Derived::auto(
                u32::try_from(n).unwrap_or(u32::MAX),
                format!(
                    "{}; reduced to {n}: on demand each live instance maps about {} \
                     (memories at 8 MiB + 8 MiB growth, tables, stack) of the {} budget",
                    slots.reason,
                    human_bytes(saturate(per_instance.va_per_slot(page))),
                    human_bytes(budget)
                ),
            );
        }
        return Ok(Fit {
            va_needed: saturate(per_instance.va_needed(n, page)),
            slots,
            reservation: Derived::auto(
                0,
                "0: on-demand fallback; memories are mapped at their current size and move \
                 when they grow, with explicit bounds checks",
            ),
            guard: Derived::auto(
                SHRUNK_GUARD,
                "64 KiB (one wasm page): address space is scarce",
            ),
            preferred: false,
            va_budget: budget,
            on_demand_fallback: Some(why),
        });
    };

    let n = u64::from(slots.value);
    let needed = saturate(layout.va_needed(n, page));
    let fit_note = format!(
        "{n} slots with {} linear memories (one per slot, plus one per fourth slot) need {} of \
         the {} pool budget",
        total_memories(n),
        human_bytes(needed),
        human_bytes(budget)
    );
    let is_preferred = layout == preferred && preferred_valid;
    let reservation = match ov.memory_reservation {
        Some(r) => Derived::pinned(r, format!("set in [runtime]; {fit_note}")),
        None if is_preferred => Derived::auto(
            layout.reservation,
            format!(
                "4 GiB covers the 32-bit index space, so wasmtime elides bounds checks; \
                 {fit_note} ({share} of {va})"
            ),
        ),
        None => Derived::auto(
            layout.reservation,
            format!(
                "{va}, so the pool budget is {} ({share}): 4 GiB reservations would fit only \
                 {preferred_fit} slots; using {} reservations (= max_memory_per_instance) with \
                 explicit bounds checks; {fit_note}",
                human_bytes(budget),
                human_bytes(layout.reservation),
            ),
        ),
    };
    let guard = match ov.memory_guard {
        Some(g) => Derived::pinned(g, "set in [runtime]"),
        None if is_preferred => Derived::auto(
            layout.guard,
            "32 MiB (wasmtime default): static offsets below it need no bounds check",
        ),
        None => Derived::auto(
            layout.guard,
            "64 KiB (one wasm page): with explicit bounds checks a large guard only costs \
             address space",
        ),
    };
    Ok(Fit {
        slots,
        reservation,
        guard,
        preferred: is_preferred,
        va_needed: needed,
        va_budget: budget,
        on_demand_fallback: None,
    })
}

fn derive_pooling(
    ov: &Overrides,
    fit: &Fit,
    max_memory: u64,
) -> (Derived<Allocator>, Option<PoolSizing>) {
    if let Some(why) = &fit.on_demand_fallback {
        let reason = format!(
            "falling back to on-demand allocation: {why}; on-demand still honours memory limits"
        );
        return (Derived::auto(Allocator::OnDemand, reason), None);
    }
    if ov.pooling == PoolingMode::Off {
        let reason = "disabled by runtime.pooling = \"off\": instances are allocated on demand";
        return (Derived::pinned(Allocator::OnDemand, reason), None);
    }
    let slots = fit.slots.value;
    let pool = PoolSizing {
        instance_slots: slots,
        total_memories: u32::try_from(total_memories(u64::from(slots))).unwrap_or(u32::MAX),
        total_tables: slots.saturating_mul(TABLES_PER_INSTANCE),
        total_core_instances: slots.saturating_mul(CORE_INSTANCES_PER_SLOT),
        total_stacks: slots,
        max_core_instances_per_component: MAX_CORE_INSTANCES_PER_COMPONENT,
        max_memories_per_component: MEMORIES_PER_INSTANCE,
        max_tables_per_component: TABLES_PER_INSTANCE,
        table_elements: TABLE_ELEMENTS,
        memory_reservation: fit.reservation.value,
        memory_guard: fit.guard.value,
        max_memory_per_instance: max_memory,
    };
    let reason = format!(
        "pooling allocator: {slots} slots reserve {} of address space up front ({} budget)",
        human_bytes(fit.va_needed),
        human_bytes(fit.va_budget)
    );
    let allocator = if ov.pooling == PoolingMode::On {
        Derived::pinned(
            Allocator::Pooling,
            format!("required by runtime.pooling = \"on\"; {reason}"),
        )
    } else {
        Derived::auto(Allocator::Pooling, reason)
    };
    (allocator, Some(pool))
}

/// Only consulted when an on-demand memory outgrows its reservation and must move.
fn derive_growth(fit: &Fit, pooled: bool) -> Derived<u64> {
    if pooled {
        Derived::auto(
            0,
            "0: pooled memories never move; they grow inside their reservation",
        )
    } else if fit.preferred {
        Derived::auto(
            PREFERRED_GROWTH,
            "2 GiB (wasmtime default): only used by memories outgrowing their reservation",
        )
    } else {
        Derived::auto(
            SHRUNK_GROWTH,
            "8 MiB (the average instance footprint) reserved ahead when a memory moves: \
             address space is scarce",
        )
    }
}

fn derive_default_max_concurrency(slots: u32, ov: &Overrides) -> Result<Derived<u32>, SizingError> {
    if let Some(n) = ov.default_max_concurrency {
        if n == 0 {
            return Err(too_small("default_max_concurrency", "0".into(), "1"));
        }
        if n > slots {
            return Err(too_large(
                "default_max_concurrency",
                n.to_string(),
                format!("instance_slots = {slots}"),
            ));
        }
        return Ok(Derived::pinned(n, "set in [runtime]"));
    }
    Ok(Derived::auto(
        slots.max(1),
        format!(
            "all {slots} slots: an app alone may use the whole pool; while several apps compete, \
             the runtime's memory admission gives each its fair share"
        ),
    ))
}

fn derive_max_connections(
    hw: &Hardware,
    worker_threads: usize,
    ov: &Overrides,
) -> Result<Derived<u32>, SizingError> {
    if let Some(n) = ov.max_connections {
        if n == 0 {
            return Err(too_small("max_connections", "0".into(), "1"));
        }
        return Ok(Derived::pinned(n, "set in [runtime]"));
    }
    let by_memory = hw.memory.effective / CONNECTION_MEMORY;
    let workers = u32::try_from(worker_threads).unwrap_or(u32::MAX);
    let by_workers = workers.saturating_mul(CONNECTIONS_PER_WORKER);
    let raw = by_memory.min(u64::from(by_workers));
    let n = raw.clamp(u64::from(MIN_CONNECTIONS), u64::from(MAX_CONNECTIONS));
    let mut reason = format!(
        "min({} memory / 4 MiB per open connection (buffers, TLS and HTTP/2 state, socket \
         buffers) = {by_memory}, {workers} workers × {CONNECTIONS_PER_WORKER} = {by_workers}); \
         not tied to instance_slots, which would outgrow file descriptors",
        human_bytes(hw.memory.effective)
    );
    if n != raw {
        reason.push_str(&format!(
            ", clamped to [{MIN_CONNECTIONS}, {MAX_CONNECTIONS}]"
        ));
    }
    // `n` is at most MAX_CONNECTIONS, so the conversion cannot fail.
    Ok(Derived::auto(
        u32::try_from(n).unwrap_or(MAX_CONNECTIONS),
        reason,
    ))
}

fn derive_quic(
    hw: &Hardware,
    ov: &Overrides,
    default_max_concurrency: u32,
    max_connections: u32,
) -> Result<QuicSizing, SizingError> {
    let idle_timeout_ms = match ov.quic_idle_timeout_ms {
        Some(ms) if ms < MIN_QUIC_IDLE_TIMEOUT_MS => {
            return Err(too_small(
                "quic_idle_timeout_ms",
                ms.to_string(),
                MIN_QUIC_IDLE_TIMEOUT_MS.to_string(),
            ));
        }
        Some(ms) if ms > MAX_QUIC_IDLE_TIMEOUT_MS => {
            return Err(too_large(
                "quic_idle_timeout_ms",
                ms.to_string(),
                format!("{MAX_QUIC_IDLE_TIMEOUT_MS} (one day)"),
            ));
        }
        Some(ms) => Derived::pinned(ms, "set in [runtime]"),
        None if max_connections < SCARCE_CONNECTIONS => Derived::auto(
            QUIC_IDLE_TIMEOUT_SCARCE_MS,
            format!(
                "10 s: only {max_connections} connection permits (< {SCARCE_CONNECTIONS}), so idle \
                 connections give theirs back sooner"
            ),
        ),
        None => Derived::auto(
            QUIC_IDLE_TIMEOUT_MS,
            "30 s: rides out a phone's radio sleeping between requests; abandoned connections \
             free their permit within a minute",
        ),
    };

    let max_streams = match ov.quic_max_streams {
        Some(0) => return Err(too_small("quic_max_streams", "0".into(), "1")),
        Some(n) if n > MAX_QUIC_STREAMS_OVERRIDE => {
            return Err(too_large(
                "quic_max_streams",
                n.to_string(),
                MAX_QUIC_STREAMS_OVERRIDE.to_string(),
            ));
        }
        Some(n) => Derived::pinned(n, "set in [runtime]"),
        None => {
            let raw = default_max_concurrency.saturating_mul(2);
            let n = raw.clamp(MIN_QUIC_STREAMS, MAX_QUIC_STREAMS);
            let mut reason = format!(
                "2 × default_max_concurrency {default_max_concurrency} (executing + queued; \
                 more streams per connection would only get 503s)"
            );
            if n != raw {
                reason.push_str(&format!(
                    ", clamped to [{MIN_QUIC_STREAMS}, {MAX_QUIC_STREAMS}]"
                ));
            }
            Derived::auto(n, reason)
        }
    };

    let check_window = |field: &'static str, bytes: u64| {
        if bytes < MIN_QUIC_WINDOW_OVERRIDE {
            Err(too_small(field, human_bytes(bytes), "1 KiB"))
        } else if bytes > MAX_QUIC_WINDOW_OVERRIDE {
            Err(too_large(field, human_bytes(bytes), "1 GiB"))
        } else {
            Ok(())
        }
    };
    let receive_window = match ov.quic_receive_window {
        Some(bytes) => {
            check_window("quic_receive_window", bytes)?;
            Derived::pinned(bytes, "set in [runtime]")
        }
        None => {
            let conns = u64::from(max_connections.max(1));
            let raw = round_down(hw.memory.effective / QUIC_BUFFER_DIVISOR / conns, 4 * KIB);
            let n = raw.clamp(MIN_QUIC_WINDOW, MAX_QUIC_WINDOW);
            let mut reason = format!(
                "a sixteenth of {} memory shared by {max_connections} connections: clients \
                 filling every window at once cannot buffer more than that",
                human_bytes(hw.memory.effective)
            );
            if n != raw {
                reason.push_str(", clamped to [64 KiB, 16 MiB]");
            }
            Derived::auto(n, reason)
        }
    };

    let stream_receive_window = match ov.quic_stream_receive_window {
        Some(bytes) => {
            check_window("quic_stream_receive_window", bytes)?;
            if bytes > receive_window.value {
                return Err(too_large(
                    "quic_stream_receive_window",
                    human_bytes(bytes),
                    format!(
                        "quic_receive_window = {} (one stream cannot receive more than its \
                         connection)",
                        human_bytes(receive_window.value)
                    ),
                ));
            }
            Derived::pinned(bytes, "set in [runtime]")
        }
        None if receive_window.value < QUIC_STREAM_WINDOW => Derived::auto(
            receive_window.value,
            "capped to quic_receive_window (1 MiB default is larger)",
        ),
        None => Derived::auto(
            QUIC_STREAM_WINDOW,
            "1 MiB: the bandwidth-delay product of 80 Mbit/s at 100 ms RTT, so one upload can \
             fill a good mobile or satellite link",
        ),
    };

    Ok(QuicSizing {
        idle_timeout_ms,
        max_streams,
        stream_receive_window,
        receive_window,
    })
}

fn round_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align).saturating_mul(align)
}

fn round_down(value: u64, align: u64) -> u64 {
    value - value % align
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

// === impl Sizing ===

impl Sizing {
    /// The body of `outpost info`: hardware facts with their sources, then every derived number
    /// with its reason.
    pub fn render_text(&self) -> String {
        let hw = &self.hardware;
        let mut out = String::new();
        out.push_str("Hardware\n");
        row(&mut out, "arch", &hw.arch, "std::env::consts::ARCH");
        row(
            &mut out,
            "online CPUs",
            &hw.cpus.online.value.to_string(),
            &hw.cpus.online.source,
        );
        row(
            &mut out,
            "CPU quota",
            &hw.cpus.quota.value.map_or("none".into(), fmt_cpus),
            &hw.cpus.quota.source,
        );
        row(
            &mut out,
            "effective CPUs",
            &fmt_cpus(hw.cpus.effective),
            "min of the above",
        );
        row(
            &mut out,
            "memory",
            &human_bytes(hw.memory.total.value),
            &hw.memory.total.source,
        );
        row(
            &mut out,
            "memory limit",
            &hw.memory
                .cgroup_limit
                .value
                .map_or("none".into(), human_bytes),
            &hw.memory.cgroup_limit.source,
        );
        row(
            &mut out,
            "effective memory",
            &human_bytes(hw.memory.effective),
            "min of the above",
        );
        row(
            &mut out,
            "VA bits",
            &hw.address_space.va_bits.value.to_string(),
            &hw.address_space.va_bits.source,
        );
        row(
            &mut out,
            "RLIMIT_AS",
            &hw.address_space
                .rlimit_as
                .value
                .map_or("unlimited".into(), human_bytes),
            &hw.address_space.rlimit_as.source,
        );
        row(
            &mut out,
            "usable VA",
            &human_bytes(hw.address_space.usable),
            "min(2^VA bits, RLIMIT_AS)",
        );
        row(
            &mut out,
            "max map count",
            &hw.address_space.max_map_count.value.to_string(),
            &hw.address_space.max_map_count.source,
        );
        row(
            &mut out,
            "page size",
            &human_bytes(hw.page_size.value),
            &hw.page_size.source,
        );

        out.push_str("\nDerived\n");
        derived_row(&mut out, "worker_threads", &self.worker_threads, |v| {
            v.to_string()
        });
        derived_row(&mut out, "memory_budget", &self.memory_budget, |v| {
            human_bytes(*v)
        });
        derived_row(&mut out, "instance_slots", &self.instance_slots, |v| {
            v.to_string()
        });
        let m = &self.memory;
        derived_row(
            &mut out,
            "max_memory_per_instance",
            &self.max_memory_per_instance,
            |v| human_bytes(*v),
        );
        derived_row(&mut out, "memory_reservation", &m.memory_reservation, |v| {
            human_bytes(*v)
        });
        derived_row(&mut out, "memory_guard", &m.memory_guard, |v| {
            human_bytes(*v)
        });
        derived_row(
            &mut out,
            "memory_reservation_for_growth",
            &m.memory_reservation_for_growth,
            |v| human_bytes(*v),
        );
        derived_row(
            &mut out,
            "default_memory_limit",
            &self.default_memory_limit,
            |v| human_bytes(*v),
        );
        derived_row(
            &mut out,
            "default_timeout_ms",
            &self.default_timeout_ms,
            |v| v.to_string(),
        );
        derived_row(
            &mut out,
            "default_max_concurrency",
            &self.default_max_concurrency,
            |v| v.to_string(),
        );
        derived_row(&mut out, "max_connections", &self.max_connections, |v| {
            v.to_string()
        });
        let q = &self.quic;
        derived_row(&mut out, "quic_idle_timeout_ms", &q.idle_timeout_ms, |v| {
            v.to_string()
        });
        derived_row(&mut out, "quic_max_streams", &q.max_streams, |v| {
            v.to_string()
        });
        derived_row(
            &mut out,
            "quic_stream_receive_window",
            &q.stream_receive_window,
            |v| human_bytes(*v),
        );
        derived_row(&mut out, "quic_receive_window", &q.receive_window, |v| {
            human_bytes(*v)
        });
        derived_row(&mut out, "allocator", &self.allocator, |v| {
            match v {
                Allocator::Pooling => "pooling",
                Allocator::OnDemand => "on-demand",
            }
            .to_owned()
        });
        if let Some(p) = &self.pooling {
            let counts: [(&str, u32, &str); 9] = [
                ("instance_slots", p.instance_slots, "one per slot"),
                (
                    "total_memories",
                    p.total_memories,
                    "1 per slot + 1 per fourth slot",
                ),
                ("total_tables", p.total_tables, "4 per slot"),
                (
                    "total_core_instances",
                    p.total_core_instances,
                    "16 per slot on average",
                ),
                ("total_stacks", p.total_stacks, "one async stack per slot"),
                (
                    "max_core_instances_per_component",
                    p.max_core_instances_per_component,
                    "room for componentize-py's many modules",
                ),
                (
                    "max_memories_per_component",
                    p.max_memories_per_component,
                    "main module plus one more",
                ),
                (
                    "max_tables_per_component",
                    p.max_tables_per_component,
                    "main table plus wit-component shims",
                ),
                ("table_elements", p.table_elements, "wasmtime default"),
            ];
            for (name, value, why) in counts {
                row(&mut out, &format!("  {name}"), &value.to_string(), why);
            }
            row(
                &mut out,
                "  max_memory_per_instance",
                &human_bytes(p.max_memory_per_instance),
                "= max_memory_per_instance",
            );
        }
        out
    }
}

fn row(out: &mut String, name: &str, value: &str, note: &str) {
    out.push_str(&format!("  {name:<34} {value:<12} {note}\n"));
}

fn derived_row<T>(out: &mut String, name: &str, d: &Derived<T>, show: impl Fn(&T) -> String) {
    let note = if d.overridden {
        format!("[override] {}", d.reason)
    } else {
        d.reason.clone()
    };
    row(out, name, &show(&d.value), &note);
}

fn fmt_cpus(cpus: f64) -> String {
    if cpus.fract() == 0.0 {
        format!("{cpus:.0}")
    } else {
        let s = format!("{cpus:.2}");
        s.trim_end_matches('0').to_owned()
    }
}

/// Bytes in binary units: "512 GiB", "1.5 GiB", "64 KiB", "100 B".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let scale = 1u64 << (10 * unit);
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        // Lossy by design: one decimal is enough to read a size.
        let v = bytes as f64 / scale as f64;
        let s = format!("{v:.1}");
        format!("{} {}", s.trim_end_matches(".0"), UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/` with just the files a test writes.
    struct Tree(tempfile::TempDir);

    impl Tree {
        fn new() -> Tree {
            Tree(tempfile::tempdir().expect("create tempdir"))
        }

        fn file(&self, rel: &str, contents: &str) -> &Tree {
            let path = self.0.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create fake dirs");
            }
            std::fs::write(&path, contents).expect("write fake file");
            self
        }

        fn root(&self) -> &Path {
            self.0.path()
        }

        /// A plain 4-CPU, 8 GiB, 47-bit machine with no cgroup limits.
        fn basic() -> Tree {
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

    fn derive_ok(hw: &Hardware, ov: &Overrides) -> Sizing {
        derive(hw, ov).expect("sizing derives")
    }

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
    fn cgroup_memory_max_below_memtotal_wins() {
        let t = Tree::basic();
        t.file("proc/self/cgroup", "0::/app\n")
            .file("sys/fs/cgroup/app/memory.max", &(GIB).to_string());
        let hw = detect_at(t.root());
        assert_eq!(hw.memory.total.value, 8 * GIB);
        assert_eq!(hw.memory.cgroup_limit.value, Some(GIB));
        assert_eq!(hw.memory.effective, GIB);
    }

    #[test]
    fn cgroup_max_means_unlimited() {
        let t = Tree::basic();
        t.file("proc/self/cgroup", "0::/app\n")
            .file("sys/fs/cgroup/app/cpu.max", "max 100000\n")
            .file("sys/fs/cgroup/app/memory.max", "max\n");
        let hw = detect_at(t.root());
        assert_eq!(hw.cpus.quota.value, None);
        assert_eq!(hw.cpus.effective, 4.0);
        assert_eq!(hw.memory.cgroup_limit.value, None);
        assert_eq!(hw.memory.effective, 8 * GIB);
    }

    #[test]
    fn nested_cgroup_walk_takes_the_minimum() {
        let t = Tree::basic();
        t.file("proc/self/cgroup", "0::/system.slice/outpost.service\n")
            .file("sys/fs/cgroup/system.slice/cpu.max", "200000 100000\n")
            .file(
                "sys/fs/cgroup/system.slice/outpost.service/cpu.max",
                "max 100000\n",
            )
            .file(
                "sys/fs/cgroup/system.slice/memory.max",
                &(2 * GIB).to_string(),
            )
            .file(
                "sys/fs/cgroup/system.slice/outpost.service/memory.max",
                &(3 * GIB).to_string(),
            );
        let hw = detect_at(t.root());
        assert_eq!(hw.cpus.quota.value, Some(2.0));
        assert!(hw.cpus.quota.source.ends_with("system.slice/cpu.max"));
        assert_eq!(hw.memory.effective, 2 * GIB);
        assert!(
            hw.memory
                .cgroup_limit
                .source
                .ends_with("system.slice/memory.max")
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
    fn cgroup_v1_unlimited_is_ignored() {
        let t = Tree::basic();
        t.file("proc/self/cgroup", "4:memory:/\n").file(
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        let hw = detect_at(t.root());
        assert_eq!(hw.memory.cgroup_limit.value, None);
        assert_eq!(hw.memory.effective, 8 * GIB);
    }

    #[test]
    fn cgroup_path_cannot_escape_the_mount() {
        let t = Tree::basic();
        t.file("proc/self/cgroup", "0::/../../evil\n")
            .file("sys/fs/evil/cpu.max", "1000 100000\n")
            .file("sys/evil/cpu.max", "1000 100000\n");
        assert_eq!(detect_at(t.root()).cpus.quota.value, None);
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
    fn parsers_handle_kernel_formats() {
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0,2-5\n"), Some(5));
        assert_eq!(parse_cpu_list("7"), Some(1));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000"), None);
        assert_eq!(parse_cpu_max("50000"), Some(0.5));
        assert_eq!(parse_cpu_max("1 0"), None);
        assert_eq!(parse_meminfo_total("MemTotal:  1024 kB\n"), Some(MIB));
        assert_eq!(parse_meminfo_total("MemFree:  1024 kB\n"), None);
        assert_eq!(
            parse_rlimit_as("Max address space         unlimited            unlimited  bytes"),
            Some(None)
        );
        assert_eq!(
            parse_rlimit_as("Max address space         1073741824  unlimited  bytes"),
            Some(Some(GIB))
        );
        assert_eq!(parse_rlimit_as("Max open files 1024 1024 files"), None);
        assert_eq!(
            parse_kernel_page_size("KernelPageSize:       16 kB"),
            Some(16 * KIB)
        );
        assert_eq!(parse_kernel_page_size("MMUPageSize:       4 kB"), None);
    }

    #[test]
    fn va_bits_from_maps_round_up_to_known_widths() {
        assert_eq!(va_bits_for_end(0x7ffc_0a02_1000), Some(47));
        assert_eq!(va_bits_for_end(0x7f_ffff_f000), Some(39));
        assert_eq!(va_bits_for_end(0xffff_8000_0000), Some(48));
        assert_eq!(va_bits_for_end(0x3ff_ffff_0000), Some(42));
        // A process whose mappings all sit low still gets the smallest real width.
        assert_eq!(va_bits_for_end(0x1000), Some(39));
        assert_eq!(va_bits_for_end(0), None);
        // The vsyscall page is kernel space and must not make this look like a 64-bit VA.
        let maps = "7ffc0a000000-7ffc0a021000 rw-p 0 00:00 0 [stack]\n\
                    ffffffffff600000-ffffffffff601000 --xp 0 00:00 0 [vsyscall]\n";
        assert_eq!(highest_user_mapping_end(maps), Some(0x7ffc_0a02_1000));
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
    fn slots_shrink_to_fit_before_giving_up_on_pooling() {
        // 8 GiB wants 10,239 slots; at ~323 MiB each (1.25 × 256 MiB memories, tables, stack)
        // the 128 GiB budget holds far fewer.
        let hw = Hardware::synthetic(4.0, 8 * GIB, 39, None);
        let s = derive_ok(&hw, &Overrides::default());
        assert!(s.instance_slots.value < 10_239 && s.instance_slots.value >= 8);
        assert!(
            s.instance_slots.reason.contains("reduced"),
            "{}",
            s.instance_slots.reason
        );
        assert!(s.memory.va_needed <= s.memory.va_budget);
        assert!(s.pooling.is_some());
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

    #[test]
    fn overrides_win() {
        let hw = Hardware::synthetic(4.0, 8 * GIB, 47, None);
        let ov = Overrides {
            worker_threads: Some(3),
            memory_budget: Some(GIB),
            instance_slots: Some(100),
            memory_reservation: Some(GIB),
            memory_guard: Some(2 * MIB),
            max_memory_per_instance: Some(512 * MIB),
            default_memory_limit: Some(128 * MIB),
            default_timeout_ms: Some(5_000),
            default_max_concurrency: Some(10),
            max_connections: Some(1_000),
            pooling: PoolingMode::On,
            quic_idle_timeout_ms: Some(60_000),
            quic_max_streams: Some(50),
            quic_stream_receive_window: Some(MIB),
            quic_receive_window: Some(2 * MIB),
        };
        let s = derive_ok(&hw, &ov);
        assert_eq!(s.worker_threads.value, 3);
        assert_eq!(s.memory_budget.value, GIB);
        assert_eq!(s.instance_slots.value, 100);
        assert_eq!(s.memory.memory_reservation.value, GIB);
        assert_eq!(s.memory.memory_guard.value, 2 * MIB);
        assert_eq!(s.max_memory_per_instance.value, 512 * MIB);
        assert_eq!(s.default_memory_limit.value, 128 * MIB);
        assert_eq!(s.default_timeout_ms.value, 5_000);
        assert_eq!(s.quic.idle_timeout_ms.value, 60_000);
        assert_eq!(s.quic.max_streams.value, 50);
        assert_eq!(s.quic.receive_window.value, 2 * MIB);
        assert_eq!(s.default_max_concurrency.value, 10);
        assert_eq!(s.max_connections.value, 1_000);
        assert!(s.pooling.is_some());
        for overridden in [
            s.worker_threads.overridden,
            s.memory_budget.overridden,
            s.instance_slots.overridden,
            s.memory.memory_reservation.overridden,
            s.memory.memory_guard.overridden,
            s.max_memory_per_instance.overridden,
            s.default_memory_limit.overridden,
            s.default_timeout_ms.overridden,
            s.default_max_concurrency.overridden,
            s.max_connections.overridden,
            s.allocator.overridden,
        ] {
            assert!(overridden);
        }
        assert!(!s.memory.memory_reservation_for_growth.overridden);

        let off = derive_ok(
            &hw,
            &Overrides {
                pooling: PoolingMode::Off,
                ..Overrides::default()
            },
        );
        assert!(off.pooling.is_none());
        assert!(off.allocator.overridden);
    }

    #[test]
    fn impossible_overrides_are_errors() {
        let pi = Hardware::synthetic(4.0, 4 * GIB, 39, None);
        let err = derive(
            &pi,
            &Overrides {
                instance_slots: Some(5_000),
                ..Overrides::default()
            },
        )
        .expect_err("5000 slots cannot fit 39-bit VA");
        match &err {
            SizingError::AddressSpace {
                field,
                slots,
                needed,
                budget,
                ..
            } => {
                assert_eq!(*field, "instance_slots");
                assert_eq!(*slots, 5_000);
                assert!(needed > budget);
            }
            other => panic!("unexpected error {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("runtime.instance_slots = 5000"), "{msg}");
        assert!(msg.contains("39-bit VA: 512 GiB"), "{msg}");

        let err = derive(
            &pi,
            &Overrides {
                memory_reservation: Some(4 * GIB),
                instance_slots: Some(100),
                ..Overrides::default()
            },
        )
        .expect_err("100 × 2 × 4 GiB cannot fit");
        assert!(matches!(
            err,
            SizingError::AddressSpace {
                field: "instance_slots",
                ..
            }
        ));

        let err = derive(
            &pi,
            &Overrides {
                memory_reservation: Some(64 * GIB),
                ..Overrides::default()
            },
        )
        .expect_err("even 8 slots × 2 × 64 GiB cannot fit");
        assert!(matches!(
            err,
            SizingError::AddressSpace {
                field: "memory_reservation",
                ..
            }
        ));

        let tiny = Hardware::synthetic(1.0, GIB, 47, Some(GIB));
        let err = derive(
            &tiny,
            &Overrides {
                pooling: PoolingMode::On,
                ..Overrides::default()
            },
        )
        .expect_err("pooling cannot fit 1 GiB RLIMIT_AS");
        assert!(matches!(
            err,
            SizingError::AddressSpace {
                field: "pooling",
                ..
            }
        ));

        let wide = Hardware::synthetic(4.0, 8 * GIB, 47, None);
        let cases: [(Overrides, &str); 8] = [
            (
                Overrides {
                    default_memory_limit: Some(GIB),
                    ..Overrides::default()
                },
                "default_memory_limit",
            ),
            (
                Overrides {
                    memory_reservation: Some(MIB),
                    ..Overrides::default()
                },
                "memory_reservation",
            ),
            (
                Overrides {
                    worker_threads: Some(0),
                    ..Overrides::default()
                },
                "worker_threads",
            ),
            (
                Overrides {
                    instance_slots: Some(0),
                    ..Overrides::default()
                },
                "instance_slots",
            ),
            (
                Overrides {
                    max_memory_per_instance: Some(1),
                    ..Overrides::default()
                },
                "max_memory_per_instance",
            ),
            (
                Overrides {
                    default_timeout_ms: Some(0),
                    ..Overrides::default()
                },
                "default_timeout_ms",
            ),
            (
                Overrides {
                    instance_slots: Some(10),
                    default_max_concurrency: Some(11),
                    ..Overrides::default()
                },
                "default_max_concurrency",
            ),
            (
                Overrides {
                    max_connections: Some(0),
                    ..Overrides::default()
                },
                "max_connections",
            ),
        ];
        for (ov, expected) in cases {
            let err = derive(&wide, &ov).expect_err(expected);
            let field = match &err {
                SizingError::TooSmall { field, .. }
                | SizingError::TooLarge { field, .. }
                | SizingError::AddressSpace { field, .. } => *field,
            };
            assert_eq!(field, expected, "{err}");
        }
    }

    #[test]
    fn absurd_inputs_never_panic() {
        let machines = [
            Hardware::synthetic(0.0, 0, 0, None),
            Hardware::synthetic(f64::NAN, 0, 39, Some(0)),
            Hardware::synthetic(-3.0, 1, 64, Some(1)),
            Hardware::synthetic(f64::INFINITY, u64::MAX, 57, None),
            Hardware::synthetic(1e300, u64::MAX, 63, Some(u64::MAX)),
        ];
        let overrides = [
            Overrides::default(),
            Overrides {
                worker_threads: Some(usize::MAX),
                memory_budget: Some(u64::MAX),
                instance_slots: Some(u32::MAX),
                memory_reservation: Some(u64::MAX),
                memory_guard: Some(u64::MAX),
                max_memory_per_instance: Some(u64::MAX),
                default_memory_limit: Some(u64::MAX),
                default_timeout_ms: Some(u64::MAX),
                default_max_concurrency: Some(u32::MAX),
                max_connections: Some(u32::MAX),
                pooling: PoolingMode::On,
                quic_idle_timeout_ms: Some(u64::MAX),
                quic_max_streams: Some(u32::MAX),
                quic_stream_receive_window: Some(u64::MAX),
                quic_receive_window: Some(u64::MAX),
            },
            Overrides {
                max_memory_per_instance: Some(u64::MAX / 2),
                memory_guard: Some(u64::MAX),
                ..Overrides::default()
            },
            Overrides {
                worker_threads: Some(usize::MAX),
                pooling: PoolingMode::Off,
                ..Overrides::default()
            },
        ];
        for hw in &machines {
            for ov in &overrides {
                if let Ok(s) = derive(hw, ov) {
                    assert!(s.worker_threads.value >= 1);
                    assert!(ov.worker_threads.is_some() || s.worker_threads.value <= 1024);
                    assert!(s.instance_slots.value >= 1);
                    assert!(s.default_max_concurrency.value >= 1);
                    let _ = s.render_text();
                }
            }
            let s = derive_ok(hw, &Overrides::default());
            assert!(s.instance_slots.value >= 1);
            if s.pooling.is_some() {
                assert!(s.instance_slots.value >= 8);
                assert!(s.memory.va_needed <= s.memory.va_budget);
            }
            assert!(s.max_memory_per_instance.value >= MIN_MAX_MEMORY);
        }
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
    fn quic_limits_follow_memory_and_connections() {
        // Raspberry Pi class: 1 GiB, 4 cores → 256 connection permits (scarce).
        let pi = derive_ok(
            &Hardware::synthetic(4.0, GIB, 39, None),
            &Overrides::default(),
        );
        assert_eq!(pi.max_connections.value, 256);
        assert_eq!(pi.quic.idle_timeout_ms.value, 10_000);
        assert_eq!(
            pi.quic.max_streams.value, 256,
            "2 × concurrency 405, capped"
        );
        // 1 GiB / 16 / 256 connections = 256 KiB.
        assert_eq!(pi.quic.receive_window.value, 256 * KIB);
        assert_eq!(pi.quic.stream_receive_window.value, 256 * KIB);
        assert!(
            pi.quic.stream_receive_window.reason.contains("capped"),
            "{}",
            pi.quic.stream_receive_window.reason
        );

        // A big server: 32 workers × 1024 = 32,768 connection permits share a sixteenth of
        // 256 GiB, 512 KiB each; streams hit the 256 cap.
        let big = derive_ok(
            &Hardware::synthetic(32.0, 256 * GIB, 48, None),
            &Overrides::default(),
        );
        assert_eq!(big.max_connections.value, 32_768);
        assert_eq!(big.quic.idle_timeout_ms.value, 30_000);
        assert_eq!(
            big.quic.max_streams.value, 256,
            "2 × concurrency 10,239, capped"
        );
        assert_eq!(big.quic.receive_window.value, 512 * KIB);
        assert_eq!(big.quic.stream_receive_window.value, 512 * KIB);

        let pinned = derive_ok(
            &Hardware::synthetic(4.0, GIB, 39, None),
            &Overrides {
                quic_idle_timeout_ms: Some(5_000),
                quic_max_streams: Some(8),
                quic_receive_window: Some(4 * MIB),
                quic_stream_receive_window: Some(2 * MIB),
                ..Overrides::default()
            },
        );
        assert_eq!(pinned.quic.idle_timeout_ms.value, 5_000);
        assert!(pinned.quic.idle_timeout_ms.overridden);
        assert_eq!(pinned.quic.max_streams.value, 8);
        assert_eq!(pinned.quic.receive_window.value, 4 * MIB);
        assert_eq!(pinned.quic.stream_receive_window.value, 2 * MIB);
        let text = pinned.render_text();
        assert!(text.contains("quic_max_streams"), "{text}");
        assert!(text.contains("[override]"), "{text}");
    }

    #[test]
    fn impossible_quic_overrides_are_errors() {
        let hw = Hardware::synthetic(4.0, GIB, 39, None);
        let err = |ov: Overrides| derive(&hw, &ov).expect_err("invalid").to_string();
        assert!(
            err(Overrides {
                quic_idle_timeout_ms: Some(10),
                ..Overrides::default()
            })
            .contains("runtime.quic_idle_timeout_ms = 10 is too small")
        );
        assert!(
            err(Overrides {
                quic_max_streams: Some(0),
                ..Overrides::default()
            })
            .contains("runtime.quic_max_streams = 0 is too small")
        );
        assert!(
            err(Overrides {
                quic_receive_window: Some(2 * GIB),
                ..Overrides::default()
            })
            .contains("runtime.quic_receive_window = 2 GiB is too large")
        );
        let msg = err(Overrides {
            quic_stream_receive_window: Some(8 * MIB),
            ..Overrides::default()
        });
        assert!(
            msg.contains("must not exceed quic_receive_window = 256 KiB"),
            "{msg}"
        );
    }

    #[test]
    fn human_bytes_is_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(64 * KIB), "64 KiB");
        assert_eq!(human_bytes(256 * MIB), "256 MiB");
        assert_eq!(human_bytes(512 * GIB), "512 GiB");
        assert_eq!(human_bytes(3 * GIB / 2), "1.5 GiB");
        assert_eq!(human_bytes(1 << 47), "128 TiB");
        assert_eq!(human_bytes(u64::MAX), "16 EiB");
    }

    /// The Raspberry Pi table in docs/sizing.md: 4 cores, 39-bit VA, no rlimit. Keep in sync.
    #[test]
    fn raspberry_pi_table_matches_docs() {
        // (board GiB, slots, reservation, max per instance, pooling VA, concurrency, connections)
        let expected: [(u64, u32, u64, u64, &str, u32, u32); 4] = [
            (1, 405, 256 * MIB, 256 * MIB, "127.8 GiB", 405, 256),
            (2, 405, 256 * MIB, 256 * MIB, "127.8 GiB", 405, 512),
            (4, 405, 256 * MIB, 256 * MIB, "127.8 GiB", 405, 1024),
            (8, 405, 256 * MIB, 256 * MIB, "127.8 GiB", 405, 2048),
        ];
        let mut table = String::new();
        for (gib, slots, reservation, max_mem, va, concurrency, conns) in expected {
            let s = derive_ok(
                &Hardware::synthetic(4.0, gib * GIB, 39, None),
                &Overrides::default(),
            );
            table.push_str(&format!(
                "| {gib} GB | {} | {} | {} | {} | {} | {} | {} |\n",
                s.instance_slots.value,
                human_bytes(s.max_memory_per_instance.value),
                human_bytes(s.memory.memory_reservation.value),
                human_bytes(s.memory.memory_guard.value),
                human_bytes(s.memory.va_needed),
                s.default_max_concurrency.value,
                s.max_connections.value,
            ));
            assert_eq!(s.instance_slots.value, slots, "{gib} GB slots\n{table}");
            assert_eq!(
                s.memory.memory_reservation.value, reservation,
                "{gib} GB\n{table}"
            );
            assert_eq!(
                s.max_memory_per_instance.value, max_mem,
                "{gib} GB\n{table}"
            );
            assert_eq!(human_bytes(s.memory.va_needed), va, "{gib} GB\n{table}");
            assert_eq!(
                s.default_max_concurrency.value, concurrency,
                "{gib} GB\n{table}"
            );
            assert_eq!(s.max_connections.value, conns, "{gib} GB\n{table}");
        }
    }

    /// 4-CPU gateways with 1, 2, 4 and 8 GiB, on a 39-bit (Raspberry Pi) and a 47-bit VA.
    #[test]
    fn gateways_are_bound_by_memory_not_a_slot_guess() {
        for bits in [39, 47] {
            let mut last_slots = 0;
            let mut last_budget = 0;
            for gib in [1, 2, 4, 8] {
                let hw = Hardware::synthetic(4.0, gib * GIB, bits, None);
                let s = derive_ok(&hw, &Overrides::default());
                let ctx = format!("{gib} GiB, {bits}-bit:\n{}", s.render_text());
                let budget = s.memory_budget.value;
                assert!(budget < hw.memory.effective, "{ctx}");
                assert!(budget >= hw.memory.effective / 3, "{ctx}");
                assert!(s.memory_budget.reason.contains("daemon reserve"), "{ctx}");
                assert!(
                    budget >= last_budget && s.instance_slots.value >= last_slots,
                    "{ctx}"
                );
                assert!(s.instance_slots.value <= 16_384, "{ctx}");
                assert!(
                    u64::from(s.instance_slots.value) <= budget / MIN_INSTANCE_FOOTPRINT,
                    "{ctx}"
                );
                let pool = s.pooling.as_ref().expect("pooling fits");
                assert_eq!(pool.instance_slots, s.instance_slots.value, "{ctx}");
                assert!(s.memory.va_needed <= s.memory.va_budget, "{ctx}");
                assert_eq!(
                    s.default_max_concurrency.value, s.instance_slots.value,
                    "{ctx}"
                );
                assert!(s.max_connections.value <= 4096, "{ctx}");
                assert!((16..=256).contains(&s.quic.max_streams.value), "{ctx}");
                if bits == 47 {
                    // Thousands of slots from 1 GiB up, with bounds checks elided.
                    assert!(s.instance_slots.value >= 7_000, "{ctx}");
                    assert_eq!(s.memory.memory_reservation.value, 4 * GIB, "{ctx}");
                } else {
                    // 128 GiB of pool address space at ~323 MiB per slot: the layout binds.
                    assert_eq!(s.instance_slots.value, 405, "{ctx}");
                    assert!(s.instance_slots.reason.contains("reduced to 405"), "{ctx}");
                    assert_eq!(s.memory.memory_reservation.value, 256 * MIB, "{ctx}");
                }
                last_slots = s.instance_slots.value;
                last_budget = budget;
            }
        }
        // The 1 GiB gateway: 1 GiB − 128 MiB reserve = 896 MiB, half = 448 MiB → 7,168 slots.
        let s = derive_ok(
            &Hardware::synthetic(4.0, GIB, 47, None),
            &Overrides::default(),
        );
        assert_eq!(s.memory_budget.value, 448 * MIB);
        assert_eq!(s.instance_slots.value, 7_168);
        // Lowering the per-instance ceiling buys a Pi more slots.
        let pi = derive_ok(
            &Hardware::synthetic(4.0, GIB, 39, None),
            &Overrides {
                max_memory_per_instance: Some(64 * MIB),
                ..Overrides::default()
            },
        );
        assert!(
            pi.instance_slots.value > 1_500,
            "{}",
            pi.instance_slots.value
        );
    }

    #[test]
    fn this_machine_class_holds_ten_thousand_instances() {
        // 2 CPUs, 23.5 GiB, 47-bit VA, default vm.max_map_count.
        let s = derive_ok(
            &Hardware::synthetic(2.0, 47 * GIB / 2, 47, None),
            &Overrides::default(),
        );
        assert!(s.instance_slots.value >= 10_000, "{}", s.render_text());
        assert_eq!(s.memory.memory_reservation.value, 4 * GIB);
        assert_eq!(s.memory.memory_guard.value, 32 * MIB);
        assert!(s.max_connections.value >= 2048);
        // With a raised mapping limit the hard maximum binds, and 4 GiB reservations are kept
        // for the slots they fit (more than half), not traded for bounds checks.
        let mut hw = Hardware::synthetic(2.0, 47 * GIB / 2, 47, None);
        hw.address_space.max_map_count = Fact::new(1 << 20, "given");
        let s = derive_ok(&hw, &Overrides::default());
        assert_eq!(s.memory.memory_reservation.value, 4 * GIB);
        assert!(s.instance_slots.value > 10_239 && s.instance_slots.value < 16_384);
        assert!(
            s.instance_slots
                .reason
                .contains("keeps bounds checks elided"),
            "{}",
            s.instance_slots.reason
        );
        assert!(s.memory.va_needed <= s.memory.va_budget);
        // On 48 bits all 16,384 fit.
        let mut hw = Hardware::synthetic(8.0, 32 * GIB, 48, None);
        hw.address_space.max_map_count = Fact::new(1 << 20, "given");
        let s = derive_ok(&hw, &Overrides::default());
        assert_eq!(s.instance_slots.value, 16_384);
        assert_eq!(s.memory.memory_reservation.value, 4 * GIB);
    }

    #[test]
    fn memory_budget_override_drives_slots() {
        let hw = Hardware::synthetic(4.0, 8 * GIB, 47, None);
        let s = derive_ok(
            &hw,
            &Overrides {
                memory_budget: Some(512 * MIB),
                ..Overrides::default()
            },
        );
        assert_eq!(s.memory_budget.value, 512 * MIB);
        assert!(s.memory_budget.overridden);
        assert_eq!(s.instance_slots.value, 8_192);
        assert!(!s.instance_slots.overridden);
        assert!(s.render_text().contains("[override] set in [runtime]"));
        let ov: Overrides = toml::from_str("memory_budget = 536870912\n").expect("valid");
        assert_eq!(ov.memory_budget, Some(512 * MIB));

        let err = |bytes| {
            derive(
                &hw,
                &Overrides {
                    memory_budget: Some(bytes),
                    ..Overrides::default()
                },
            )
            .expect_err("invalid")
            .to_string()
        };
        assert!(err(KIB).contains("runtime.memory_budget = 1 KiB is too small"));
        let msg = err(9 * GIB);
        assert!(
            msg.contains("runtime.memory_budget = 9 GiB is too large"),
            "{msg}"
        );
        assert!(msg.contains("8 GiB"), "{msg}");
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
}
