//! Run-time detection: cpuid for features and caches, sysfs as cross-check.
//!
//! Caches come from the deterministic cache-parameter leaf (Intel leaf 4,
//! AMD leaf 0x8000_001D), which raw-cpuid reads for both vendors. AMD's legacy
//! L2/L3 leaf (0x8000_0006) is not used: under virtualisation it over-reports
//! L3 (measured: 320 MiB on a 32 MiB part). When cpuid has no cache leaf, the
//! sysfs numbers are used instead.

use super::{
    CacheHierarchy, CacheLevel, CpuFeatures, DeviceProfile, KernelIsas, ProfileError, ProfileSource,
};
use raw_cpuid::{CacheType, CpuId};
use std::collections::BTreeSet;
use std::fs;

/// Features of the CPU this process runs on, as the OS allows them (XCR0
/// state included, via `is_x86_feature_detected!`).
pub fn host_features() -> CpuFeatures {
    CpuFeatures {
        avx2: std::is_x86_feature_detected!("avx2"),
        fma: std::is_x86_feature_detected!("fma"),
        f16c: std::is_x86_feature_detected!("f16c"),
        avx512f: std::is_x86_feature_detected!("avx512f"),
        avx512bw: std::is_x86_feature_detected!("avx512bw"),
        avx512dq: std::is_x86_feature_detected!("avx512dq"),
        avx512vl: std::is_x86_feature_detected!("avx512vl"),
        avx512_bf16: std::is_x86_feature_detected!("avx512bf16"),
        avx512_vnni: std::is_x86_feature_detected!("avx512vnni"),
    }
}

/// One data or unified cache as sysfs describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysfsCache {
    pub level: u8,
    pub size_bytes: usize,
    pub line_bytes: usize,
}

/// Data/unified caches of cpu0 from `/sys/devices/system/cpu/cpu0/cache`.
/// Empty when sysfs is unavailable.
pub fn sysfs_caches() -> Vec<SysfsCache> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("index")) {
            continue;
        }
        let read = |f: &str| fs::read_to_string(path.join(f)).map(|s| s.trim().to_string()).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        if kind == "Instruction" {
            continue;
        }
        let size_bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<usize>().ok().map(|k| k << 10),
            None => size.strip_suffix('M').and_then(|m| m.parse::<usize>().ok()).map(|m| m << 20),
        };
        let (Ok(level), Some(size_bytes)) = (level.parse::<u8>(), size_bytes) else {
            continue;
        };
        let line_bytes = read("coherency_line_size").and_then(|s| s.parse().ok()).unwrap_or(64);
        out.push(SysfsCache { level, size_bytes, line_bytes });
    }
    out.sort_by_key(|c| c.level);
    out
}

fn cpuid_caches(cpuid: &CpuId<raw_cpuid::CpuIdReaderNative>) -> Vec<(u8, CacheLevel)> {
    let Some(params) = cpuid.get_cache_parameters() else {
        return Vec::new();
    };
    params
        .filter(|p| matches!(p.cache_type(), CacheType::Data | CacheType::Unified))
        .map(|p| {
            let line = p.coherency_line_size();
            let size = p.sets() * p.associativity() * p.physical_line_partitions() * line;
            (
                p.level(),
                CacheLevel { size_bytes: size, line_bytes: line, shared_by: p.max_cores_for_cache().max(1) },
            )
        })
        .collect()
}

/// One logical CPU of this machine and the physical core it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogicalCpu {
    /// The OS's CPU number (what affinity masks and `sched_getcpu` use).
    pub cpu: usize,
    /// The physical core: SMT siblings share it (and its FMA units and L1).
    pub core: (u32, u32),
}

/// Every logical CPU sysfs describes, in CPU order, with its (package,
/// core) pair; empty without sysfs topology (then nothing is known about
/// which CPUs share a core).
pub fn cpu_topology() -> Vec<LogicalCpu> {
    let Ok(dir) = fs::read_dir("/sys/devices/system/cpu") else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(cpu) = name.strip_prefix("cpu").and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let topo = entry.path().join("topology");
        let read = |f: &str| fs::read_to_string(topo.join(f)).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if let (Some(package), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cpus.push(LogicalCpu { cpu, core: (package, core) });
        }
    }
    cpus.sort();
    cpus
}

/// Distinct (package, core) pairs in sysfs topology; `None` without sysfs.
fn sysfs_physical_cores() -> Option<usize> {
    let cores: BTreeSet<(u32, u32)> = cpu_topology().iter().map(|c| c.core).collect();
    (!cores.is_empty()).then_some(cores.len())
}

pub(super) fn detect() -> Result<DeviceProfile, ProfileError> {
    let features = host_features();
    let isa = features.best_isa().ok_or_else(|| {
        ProfileError::UnsupportedCpu(
            "needs at least AVX2 and FMA (found neither AVX-512 nor AVX2+FMA)".into(),
        )
    })?;
    let cpuid = CpuId::new();
    let logical_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let physical_cores = sysfs_physical_cores().unwrap_or(logical_cpus).min(logical_cpus);

    let from_cpuid = cpuid_caches(&cpuid);
    let from_sysfs = sysfs_caches();
    let pick = |level: u8, fallback_kib: usize| -> CacheLevel {
        if let Some((_, c)) = from_cpuid.iter().find(|(l, _)| *l == level) {
            return *c;
        }
        if let Some(c) = from_sysfs.iter().find(|c| c.level == level) {
            return CacheLevel { size_bytes: c.size_bytes, line_bytes: c.line_bytes, shared_by: 1 };
        }
        CacheLevel { size_bytes: fallback_kib << 10, line_bytes: 64, shared_by: 1 }
    };
    let caches = CacheHierarchy { l1d: pick(1, 32), l2: pick(2, 512), l3: pick(3, 8 << 10) };
    let name = cpuid
        .get_processor_brand_string()
        .map(|b| b.as_str().trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown x86-64 CPU".into());
    DeviceProfile {
        name,
        source: ProfileSource::Detected,
        isa,
        features,
        caches,
        physical_cores,
        logical_cpus,
        kernel_isas: KernelIsas::default(),
    }
    .validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_agrees_with_sysfs() {
        let p = detect().expect("this project's machines have AVX2 or better");
        let sys = sysfs_caches();
        if sys.is_empty() {
            // Not Linux sysfs: nothing to cross-check against, but the profile must be sane.
            assert!(p.caches.l1d.size_bytes >= 16 << 10);
            return;
        }
        for (level, c) in [(1, p.caches.l1d), (2, p.caches.l2), (3, p.caches.l3)] {
            let s = sys.iter().find(|s| s.level == level).unwrap_or_else(|| panic!("sysfs has no L{level}"));
            assert_eq!(c.size_bytes, s.size_bytes, "L{level} size: cpuid vs sysfs");
            assert_eq!(c.line_bytes, s.line_bytes, "L{level} line: cpuid vs sysfs");
        }
        assert!(p.physical_cores >= 1 && p.physical_cores <= p.logical_cpus);
        assert_eq!(p.isa, host_features().best_isa().unwrap());
    }
}
