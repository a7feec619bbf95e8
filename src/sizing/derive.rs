//! Derivation: every pool and limit from the hardware facts and the config overrides, each
//! with a human reason. Pure: no I/O, no clock, the same inputs give the same [`Sizing`].
//!
//! Owns: the sizing model of `docs/sizing.md` (worker threads, memory budget, slots, the
//! address-space fit, pooling, connection and QUIC limits) and the errors for overrides that
//! cannot be honoured.
//! Must not: read files (detection hands it a [`Hardware`]) or format text for people (render).

use super::render::fmt_cpus;
use super::*;

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
    let memory = MemoryLayout {
        memory_reservation: fit.reservation.clone(),
        memory_guard: fit.guard.clone(),
        memory_reservation_for_growth: growth,
        va_needed: fit.va_needed,
        va_budget: fit.va_budget,
    };
    let wasi03 = derive_wasi03(hw, ov, &fit, &memory, pooling.as_ref(), max_memory.value);
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
        memory,
        allocator,
        pooling,
        wasi03,
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
    let layout = Layout {
        reservation: fit.reservation.value,
        guard: fit.guard.value,
    };
    let pool = pool_sizing(slots, layout, max_memory);
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

/// The pooling allocator's numbers for `slots` instances with `layout`.
fn pool_sizing(slots: u32, layout: Layout, max_memory: u64) -> PoolSizing {
    PoolSizing {
        instance_slots: slots,
        total_memories: u32::try_from(total_memories(u64::from(slots))).unwrap_or(u32::MAX),
        total_tables: slots.saturating_mul(TABLES_PER_INSTANCE),
        total_core_instances: slots.saturating_mul(CORE_INSTANCES_PER_SLOT),
        total_stacks: slots,
        max_core_instances_per_component: MAX_CORE_INSTANCES_PER_COMPONENT,
        max_memories_per_component: MEMORIES_PER_INSTANCE,
        max_tables_per_component: TABLES_PER_INSTANCE,
        table_elements: TABLE_ELEMENTS,
        memory_reservation: layout.reservation,
        memory_guard: layout.guard,
        max_memory_per_instance: max_memory,
    }
}

/// The WASI 0.3 engine's allocator: a pool of as many slots as the WASI 0.2 pool's, in the pool
/// budget that one leaves — with the same layout when it fits twice, else with reservations
/// shrunk to `max_memory_per_instance` (explicit bounds checks for WASI 0.3 guests only) — or
/// on demand when even that does not fit (the instance slots still bound live instances).
fn derive_wasi03(
    hw: &Hardware,
    ov: &Overrides,
    fit: &Fit,
    memory: &MemoryLayout,
    wasi02_pool: Option<&PoolSizing>,
    max_memory: u64,
) -> Wasi03Sizing {
    let on_demand = |why: String| Wasi03Sizing {
        allocator: Derived {
            value: Allocator::OnDemand,
            reason: why,
            overridden: ov.pooling == PoolingMode::Off,
        },
        memory: memory.clone(),
        pooling: None,
    };
    if wasi02_pool.is_none() {
        return on_demand("on demand, like WASI 0.2 instances".into());
    }
    let page = hw.page_size.value.max(1);
    let slots = fit.slots.value;
    let n = u64::from(slots);
    let left = fit.va_budget.saturating_sub(fit.va_needed);
    let same = Layout {
        reservation: fit.reservation.value,
        guard: fit.guard.value,
    };
    let shrunk = Layout {
        reservation: round_up(max_memory, WASM_PAGE),
        guard: SHRUNK_GUARD,
    };
    let pinned = ov.memory_reservation.is_some() || ov.memory_guard.is_some();
    let fits = |l: Layout| l.va_needed(n, page) <= u128::from(left);
    let chosen = if fits(same) {
        Some((same, fit.reservation.clone(), fit.guard.clone()))
    } else if !pinned && shrunk.reservation < same.reservation && fits(shrunk) {
        Some((
            shrunk,
            Derived::auto(
                shrunk.reservation,
                format!(
                    "= max_memory_per_instance, with explicit bounds checks: {} reservations \
                     for a second {slots}-slot pool do not fit the {} the WASI 0.2 pool leaves",
                    human_bytes(same.reservation),
                    human_bytes(left)
                ),
            ),
            Derived::auto(
                SHRUNK_GUARD,
                "64 KiB (one wasm page): with explicit bounds checks a large guard only costs \
                 address space",
            ),
        ))
    } else {
        None
    };
    let Some((layout, reservation, guard)) = chosen else {
        return on_demand(format!(
            "on demand: a second pool of {slots} slots does not fit the {} of the pool budget \
             the WASI 0.2 pool leaves (fewer instance_slots or a lower max_memory_per_instance \
             make room); live instances are still bounded by instance_slots",
            human_bytes(left)
        ));
    };
    let needed = saturate(layout.va_needed(n, page));
    Wasi03Sizing {
        allocator: Derived::auto(
            Allocator::Pooling,
            format!(
                "pooling allocator: {slots} slots (as many as WASI 0.2's, so admission never \
                 outruns either pool) reserve {} of the {} the WASI 0.2 pool leaves",
                human_bytes(needed),
                human_bytes(left)
            ),
        ),
        memory: MemoryLayout {
            memory_reservation: reservation,
            memory_guard: guard,
            memory_reservation_for_growth: Derived::auto(
                0,
                "0: pooled memories never move; they grow inside their reservation",
            ),
            va_needed: needed,
            va_budget: left,
        },
        pooling: Some(pool_sizing(slots, layout, max_memory)),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizing::testkit::derive_ok;

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
                    if let Some(p) = &s.wasi03.pooling {
                        assert_eq!(p.instance_slots, s.instance_slots.value);
                        assert!(
                            s.memory.va_needed + s.wasi03.memory.va_needed <= s.memory.va_budget
                        );
                    }
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
}
