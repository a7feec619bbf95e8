//! The one place for wasmtime `Engine` defaults.
//!
//! Owns: the `wasmtime::Config` every component is compiled and run with, and the epoch ticker
//! that drives wall-clock interruption. Every number here comes from [`crate::sizing`] (derived
//! from the hardware, overridable in config); this module only translates it.
//! Must not: read hardware facts itself, know about apps, sockets or HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::fair::TickMode;
use crate::sizing::{MemoryLayout, PoolSizing};

/// How often the epoch advances while no guest runs long. Each tick lets a guest that has run
/// [`super::fair::MIN_SLICE`] give its thread back, so this bounds the first slice of a guest
/// that turns out to be CPU-bound. Every wake-up of the ticker thread costs far more than its
/// atomic increment — under a hypervisor a timer wake-up measured ~50–100 µs of CPU — so the idle
/// rate stays at 200 a second (1,000 a second cost single-tenant throughput ~15 % on a 2-vCPU VM).
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The tick while some guest runs long (or did within [`FAST_TICK_LINGER`]): slices of CPU-bound
/// guests on a guest thread are then about this long, which bounds how long a light request that
/// had to move there waits behind them. It was 100 µs while CPU-bound guests shared the serving
/// threads; since they run on guest threads, the ticker's own wake-ups (each one a preemption of
/// whatever ran, often a serving thread) cost the light tenants more than the finer slices gave
/// them: side by side on the 2-vCPU VM, 100 / 500 / 1000 µs gave a light tenant's p99 beside 8
/// spinners 2.9–5.6 / 2.6–3.8 / 2.4–3.0 ms and beside 8 `/grow/30` 3.6–6.0 / 3.5–3.8 /
/// 3.9–4.2 ms (three rounds each, `docs/benchmarks.md`).
pub const FAST_TICK: Duration = Duration::from_micros(500);

/// How long ticks stay fast after the last long-running guest finished: a runaway request that
/// is cut at its timeout and sent again must not get a slow first slice.
pub const FAST_TICK_LINGER: Duration = Duration::from_secs(1);

/// Bytes of each linear memory reset in place (not returned to the kernel) when a slot is
/// reused; see the pooling comments in [`build_engine`].
const KEEP_RESIDENT: usize = 1 << 20;
/// Slots decommitted per batch: one, so each thread decommits only what it released itself.
/// With batches, a serving thread releasing a 1 MiB handler's slot could be the one that flushes
/// a batch holding other threads' 30 MiB memories — tens of milliseconds of `madvise` with every
/// connection of the thread waiting (seen in `docs/fairness.md`'s /grow/30 profile). Handlers
/// that stay within [`KEEP_RESIDENT`] decommit nothing either way.
const DECOMMIT_BATCH: usize = 1;

/// Builds the engine. `pool = None` means on-demand allocation (sizing explains why).
/// The engine for this node: pool dimensions from the derived sizing (`None`: on-demand
/// allocation) and the linear-memory layout, which applies with either allocator (wasmtime's
/// defaults reserve 4 GiB per memory, which a small `RLIMIT_AS` or a 39-bit address space cannot
/// hold on demand either).
///
/// `concurrency` turns on wasmtime's component-model concurrency (`Config::concurrency_support`),
/// which WASI 0.3 needs. It is off for the WASI 0.2 engine: with it on, every call into a
/// component runs through wasmtime's concurrent event loop and its adapters carry task
/// bookkeeping, which cost a WASI 0.2 hello about 12% of its requests per second
/// (`docs/benchmarks.md`, "WASI 0.3 beside 0.2").
pub fn build_engine(
    pool: Option<&PoolSizing>,
    memory: &MemoryLayout,
    concurrency: bool,
) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.concurrency_support(concurrency);
    // Components only; async so guests can wait on I/O without blocking a worker thread.
    config.wasm_component_model(true);
    // Epochs, not fuel: one atomic load per loop back-edge and function entry, and a wall-clock
    // meaning that matches the per-app `timeout`.
    config.epoch_interruption(true);
    config.parallel_compilation(true);
    // Copy-on-write images of initial memory make per-request instantiation a few mmaps rather
    // than a memcpy of the data segments.
    config.memory_init_cow(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);

    config.memory_reservation(memory.memory_reservation.value);
    config.memory_guard_size(memory.memory_guard.value);
    config.memory_reservation_for_growth(memory.memory_reservation_for_growth.value);

    if let Some(p) = pool {
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(p.instance_slots)
            .total_memories(p.total_memories)
            .total_tables(p.total_tables)
            .total_core_instances(p.total_core_instances)
            .total_stacks(p.total_stacks)
            .max_core_instances_per_component(p.max_core_instances_per_component)
            .max_memories_per_component(p.max_memories_per_component)
            .max_tables_per_component(p.max_tables_per_component)
            .max_memory_size(usize::try_from(p.max_memory_per_instance).unwrap_or(usize::MAX))
            // Resetting a slot by zeroing pages is cheaper than madvise + refault for the small
            // heaps request handlers touch, and madvise on a multi-threaded process costs a TLB
            // shootdown (an IPI to every core) per call. With PAGEMAP_SCAN (Linux >= 6.7) only
            // pages actually dirtied are reset, so a generous keep-resident size stays cheap.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            // What must still be decommitted is, on the thread that released it (see the const).
            .decommit_batch_size(DECOMMIT_BATCH)
            // Warm slots keep their copy-on-write image mapped for the next instance of the same
            // component, so hot apps instantiate without touching the kernel's page tables.
            .max_unused_warm_slots(p.instance_slots.min(100));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    } else {
        config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    }
    Engine::new(&config)
}

/// A hex fingerprint of everything that makes compiled code valid for this engine (wasmtime
/// version, target, and every setting that affects codegen). Part of the compiled-code cache key.
pub fn fingerprint(engine: &Engine) -> String {
    use sha2::{Digest, Sha256};
    use std::hash::{Hash, Hasher};

    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    // The hash above covers codegen settings; the version and target are added explicitly so a
    // cache shared across binaries can never mix artifacts.
    env!("CARGO_PKG_VERSION").hash(&mut h);
    std::env::consts::ARCH.hash(&mut h);
    hex::encode(&h.0.finalize()[..16])
}

/// Advances the engine's epoch every [`EPOCH_TICK`] — every [`FAST_TICK`] while `mode` says a
/// guest runs long — on a dedicated thread, joined on drop.
///
/// A plain thread rather than a tokio task: it must keep ticking while every worker thread is
/// busy running guests, which is exactly when preemption matters.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Ticks every engine in `engines` (one per WASI version) at the pace `mode` sets.
    pub fn start(engines: Vec<Engine>, mode: Arc<TickMode>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("outpost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(if mode.fast(FAST_TICK_LINGER) {
                        FAST_TICK
                    } else {
                        EPOCH_TICK
                    });
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                }
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
