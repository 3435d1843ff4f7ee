//! Built-in profiles of known machine kinds, to reproduce their plans anywhere.

use super::{
    CacheHierarchy, CacheLevel, CpuFeatures, DeviceProfile, Isa, KernelIsas, ProfileError, ProfileSource,
};

/// Names accepted by [`DeviceProfile::preset`].
pub const PRESET_NAMES: [&str; 3] = ["haswell", "skylake-x", "zen5"];

struct Preset {
    name: &'static str,
    description: &'static str,
    isa: Isa,
    extra: fn(&mut CpuFeatures),
    l1d_kib: usize,
    l2_kib: usize,
    l3_mib: usize,
    cores: usize,
    smt: usize,
}

const PRESETS: [Preset; 3] = [
    Preset {
        name: "haswell",
        description: "Intel Haswell desktop: AVX2+FMA, 32 KiB L1d, 256 KiB L2, 8 MiB L3",
        isa: Isa::Avx2,
        extra: |_| {},
        l1d_kib: 32,
        l2_kib: 256,
        l3_mib: 8,
        cores: 4,
        smt: 2,
    },
    Preset {
        name: "skylake-x",
        description: "Intel Skylake-SP: AVX-512 F/BW/DQ/VL/VNNI, 32 KiB L1d, 1 MiB L2, 16 MiB L3",
        isa: Isa::Avx512,
        extra: |f| f.avx512_vnni = true,
        l1d_kib: 32,
        l2_kib: 1024,
        l3_mib: 16,
        cores: 16,
        smt: 2,
    },
    Preset {
        name: "zen5",
        description: "AMD Zen 5 (EPYC 9005, as on this project's machines): AVX-512 incl. BF16/VNNI, 48 KiB L1d, 1 MiB L2, 32 MiB L3",
        isa: Isa::Avx512,
        extra: |f| {
            f.avx512_bf16 = true;
            f.avx512_vnni = true;
        },
        l1d_kib: 48,
        l2_kib: 1024,
        l3_mib: 32,
        cores: 2,
        smt: 1,
    },
];

/// One-line descriptions of the presets, for `--help` style listings.
pub fn describe() -> Vec<(&'static str, &'static str)> {
    PRESETS.iter().map(|p| (p.name, p.description)).collect()
}

pub(super) fn preset(name: &str) -> Result<DeviceProfile, ProfileError> {
    let p = PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name)).ok_or_else(|| {
        ProfileError::UnknownPreset { name: name.to_string(), known: PRESET_NAMES.join(", ") }
    })?;
    let mut features = CpuFeatures::implied_by(p.isa);
    (p.extra)(&mut features);
    let level = |size_bytes: usize, shared_by: usize| CacheLevel { size_bytes, line_bytes: 64, shared_by };
    DeviceProfile {
        name: p.description.to_string(),
        source: ProfileSource::Preset(p.name.to_string()),
        isa: p.isa,
        features,
        caches: CacheHierarchy {
            l1d: level(p.l1d_kib << 10, p.smt),
            l2: level(p.l2_kib << 10, p.smt),
            l3: level(p.l3_mib << 20, p.cores * p.smt),
        },
        physical_cores: p.cores,
        logical_cpus: p.cores * p.smt,
        kernel_isas: KernelIsas::default(),
    }
    .validate()
}
