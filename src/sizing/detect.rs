//! Detection: reads the hardware facts from a `/proc` + `/sys` tree (the only I/O of sizing).
//!
//! Owns: every file read and its parser, the fallbacks and the `source` text of each [`Fact`].
//! Must not: derive pool numbers (that is `derive`), or fail: a fact that cannot be read falls
//! back to a safe value whose source says so.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Component, Path, PathBuf};

use super::*;

/// User VA widths Linux kernels are built with: 39 (arm64 3-level 4K pages, Raspberry Pi OS
/// 64-bit), 42 (arm64 64K pages), 47 (x86_64 4-level), 48 (arm64 4-level), 52 (arm64 LVA),
/// 57 (x86_64 5-level). Rounding an observation *up* to one of these recovers the real width
/// from the highest mapping, which sits a little below the top.
pub(super) const KNOWN_VA_BITS: [u32; 6] = [39, 42, 47, 48, 52, 57];

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
pub(super) const FALLBACK_MEMORY: u64 = 512 * MIB;
/// Used when the page size cannot be read: the common Linux page size on both x86_64 and arm64.
pub(super) const FALLBACK_PAGE_SIZE: u64 = 4 * KIB;

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

pub(super) fn sanitize_cpus(cpus: f64) -> f64 {
    if cpus.is_finite() && cpus > 0.0 {
        cpus
    } else {
        // A zero or garbled quota must not yield zero workers; one CPU is always there.
        1.0
    }
}

pub(super) fn pow2(bits: u32) -> u64 {
    1u64.checked_shl(bits).unwrap_or(u64::MAX)
}

pub(super) fn usable_va(bits: u32, rlimit_as: Option<u64>) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizing::testkit::Tree;

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
}
