//! Rendering: the text and the numbers `outpost info` prints for a [`Sizing`].
//!
//! Owns: the layout of the `outpost info` table and byte sizes in binary units.
//! Must not: derive or detect anything; it only shows what it is given.

use super::*;

// === impl Sizing ===

impl Sizing {
    /// The body of `outpost info`: hardware facts with their sources, then every derived number
    /// with its reason.
    pub fn render_text(&self) -> String {
        let hw = &self.hardware;
        let (cpus, mem, va) = (&hw.cpus, &hw.memory, &hw.address_space);
        let or = |v: Option<u64>, none: &str| v.map_or(none.to_owned(), human_bytes);
        let hardware: [(&str, String, &str); 12] = [
            ("arch", hw.arch.clone(), "std::env::consts::ARCH"),
            (
                "online CPUs",
                cpus.online.value.to_string(),
                &cpus.online.source,
            ),
            (
                "CPU quota",
                cpus.quota.value.map_or("none".into(), fmt_cpus),
                &cpus.quota.source,
            ),
            (
                "effective CPUs",
                fmt_cpus(cpus.effective),
                "min of the above",
            ),
            ("memory", human_bytes(mem.total.value), &mem.total.source),
            (
                "memory limit",
                or(mem.cgroup_limit.value, "none"),
                &mem.cgroup_limit.source,
            ),
            (
                "effective memory",
                human_bytes(mem.effective),
                "min of the above",
            ),
            ("VA bits", va.va_bits.value.to_string(), &va.va_bits.source),
            (
                "RLIMIT_AS",
                or(va.rlimit_as.value, "unlimited"),
                &va.rlimit_as.source,
            ),
            (
                "usable VA",
                human_bytes(va.usable),
                "min(2^VA bits, RLIMIT_AS)",
            ),
            (
                "max map count",
                va.max_map_count.value.to_string(),
                &va.max_map_count.source,
            ),
            (
                "page size",
                human_bytes(hw.page_size.value),
                &hw.page_size.source,
            ),
        ];
        let mut out = String::from("Hardware\n");
        for (name, value, source) in &hardware {
            row(&mut out, name, value, source);
        }

        out.push_str("\nDerived\n");
        let (m, q) = (&self.memory, &self.quic);
        let bytes = |d: &Derived<u64>| shown(d, human_bytes(d.value));
        let allocator = |a: Allocator| match a {
            Allocator::Pooling => "pooling",
            Allocator::OnDemand => "on-demand",
        };
        let derived: [(&str, (String, String)); 16] = [
            ("worker_threads", plain(&self.worker_threads)),
            ("memory_budget", bytes(&self.memory_budget)),
            ("instance_slots", plain(&self.instance_slots)),
            (
                "max_memory_per_instance",
                bytes(&self.max_memory_per_instance),
            ),
            ("memory_reservation", bytes(&m.memory_reservation)),
            ("memory_guard", bytes(&m.memory_guard)),
            (
                "memory_reservation_for_growth",
                bytes(&m.memory_reservation_for_growth),
            ),
            ("default_memory_limit", bytes(&self.default_memory_limit)),
            ("default_timeout_ms", plain(&self.default_timeout_ms)),
            (
                "default_max_concurrency",
                plain(&self.default_max_concurrency),
            ),
            ("max_connections", plain(&self.max_connections)),
            ("quic_idle_timeout_ms", plain(&q.idle_timeout_ms)),
            ("quic_max_streams", plain(&q.max_streams)),
            (
                "quic_stream_receive_window",
                bytes(&q.stream_receive_window),
            ),
            ("quic_receive_window", bytes(&q.receive_window)),
            (
                "allocator",
                shown(&self.allocator, allocator(self.allocator.value).to_owned()),
            ),
        ];
        for (name, (value, note)) in &derived {
            row(&mut out, name, value, note);
        }
        if let Some(p) = &self.pooling {
            pool_rows(&mut out, p);
        }
        let w = &self.wasi03;
        out.push_str("\nWASI 0.3 engine (concurrency support; docs/wasi-p3.md)\n");
        let rows: [(&str, (String, String)); 3] = [
            (
                "allocator",
                shown(&w.allocator, allocator(w.allocator.value).to_owned()),
            ),
            ("memory_reservation", bytes(&w.memory.memory_reservation)),
            ("memory_guard", bytes(&w.memory.memory_guard)),
        ];
        for (name, (value, note)) in &rows {
            row(&mut out, name, value, note);
        }
        if let Some(p) = &w.pooling {
            pool_rows(&mut out, p);
        }
        out
    }
}

/// The pooling allocator's counts, indented under its `allocator` row.
fn pool_rows(out: &mut String, p: &PoolSizing) {
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
        row(out, &format!("  {name}"), &value.to_string(), why);
    }
    row(
        out,
        "  max_memory_per_instance",
        &human_bytes(p.max_memory_per_instance),
        "= max_memory_per_instance",
    );
}

fn row(out: &mut String, name: &str, value: &str, note: &str) {
    out.push_str(&format!("  {name:<34} {value:<12} {note}\n"));
}

/// A derived number's value as shown, and its note: the reason, marked when overridden.
fn shown<T>(d: &Derived<T>, value: String) -> (String, String) {
    let note = if d.overridden {
        format!("[override] {}", d.reason)
    } else {
        d.reason.clone()
    };
    (value, note)
}

/// [`shown`] for a number printed as it is.
fn plain<T: std::fmt::Display>(d: &Derived<T>) -> (String, String) {
    shown(d, d.value.to_string())
}

pub(super) fn fmt_cpus(cpus: f64) -> String {
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
}
