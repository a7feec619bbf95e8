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
