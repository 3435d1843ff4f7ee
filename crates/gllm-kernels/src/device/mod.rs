//! What this CPU is, as the compiler needs to know it.
//!
//! ```text
//!   cpuid + sysfs ──[detect]──┐
//!   named preset ─────────────┼──> DeviceProfile ──> num_simd_regs(), GemmBlocking, …
//!   profile file (TOML) ──────┘
//! ```
//!
//! Every later stage (fusion decisions, microkernel shape, blocking, threading)
//! reads the hardware through a [`DeviceProfile`] value, never through cpuid
//! directly. That is what lets a plan made for another machine be reproduced
//! here: load its profile (or a preset) and the compiler decides as it would.

mod blocking;
mod detect;
mod file;
mod presets;

pub use blocking::GemmBlocking;
pub use detect::{cpu_topology, LogicalCpu};
pub use file::ProfileError;
pub use presets::{describe as describe_presets, PRESET_NAMES};

use serde::Serialize;
use std::fmt;

/// The vector instruction set code generation targets.
///
/// Ordered from least to most capable; `Avx512` implies `Avx2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// AVX2 + FMA: 16 × 256-bit ymm registers.
    Avx2,
    /// AVX-512 F/BW/DQ/VL: 32 × 512-bit zmm registers and opmask registers.
    Avx512,
}

/// What an instruction set offers that generic lowering chooses by. Code
/// outside the ISA modules asks these questions ("is there an opmask?")
/// instead of naming an ISA, so a new backend (aarch64 NEON/SVE) answers
/// them once here rather than at every branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsaCaps {
    /// Comparison results live in opmask registers (k1–k7), with masked
    /// arithmetic and masked tail loads/stores; without, comparisons yield
    /// all-ones/zero lanes in vector registers (blend by sign bit, and-mask,
    /// `vmaskmov` tails), which costs a vector register per live mask.
    pub opmask: bool,
    /// Exact exponent instructions: `vscalefps` (x·2ⁿ with correct overflow
    /// and subnormals), `vgetexpps`, `vgetmantps`.
    pub exponent_ops: bool,
    /// A 16-entry f32 table lookup in one register (`vpermps` over 16 lanes).
    pub table16: bool,
    /// Memory operands broadcast inside an arithmetic instruction (`{1toN}`):
    /// no broadcast register needed.
    pub embedded_broadcast: bool,
}

impl Isa {
    /// Every ISA code can be generated for, narrowest first: the one list
    /// that code iterating over ISAs (tests, timing, the oracle) uses, so
    /// a new backend is added here.
    pub const ALL: [Isa; 2] = [Isa::Avx2, Isa::Avx512];

    /// What this ISA offers (see [`IsaCaps`]).
    pub fn caps(self) -> IsaCaps {
        match self {
            Isa::Avx2 => {
                IsaCaps { opmask: false, exponent_ops: false, table16: false, embedded_broadcast: false }
            }
            Isa::Avx512 => {
                IsaCaps { opmask: true, exponent_ops: true, table16: true, embedded_broadcast: true }
            }
        }
    }

    /// Architectural SIMD register count (what the register allocator may use).
    pub fn num_simd_regs(self) -> usize {
        match self {
            Isa::Avx2 => 16,
            Isa::Avx512 => 32,
        }
    }

    /// Vector width in bytes.
    pub fn vector_bytes(self) -> usize {
        match self {
            Isa::Avx2 => 32,
            Isa::Avx512 => 64,
        }
    }

    /// f32 lanes per vector register.
    pub fn f32_lanes(self) -> usize {
        self.vector_bytes() / 4
    }

    /// The name used in profile files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses the name used in profile files and on the command line.
    pub fn from_name(s: &str) -> Option<Isa> {
        match s.to_ascii_lowercase().as_str() {
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kinds of generated kernel whose best vector width is chosen
/// separately. On Zen 4, 512-bit instructions run on 256-bit datapaths:
/// a zmm GEMM can still win (twice the registers, half the instructions)
/// while a zmm loop kernel loses to a ymm one, or the other way round, so
/// the width is a per-class decision (`tune::confirm_isas` times it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelClass {
    /// Loop kernels: elementwise chains, norms, softmax, RoPE, the
    /// attention's softmax — and every math routine inside them.
    Loops,
    /// GEMM and GEMV with their epilogues and tile-fused prologues. They
    /// share the packed-B layout, whose panel width is the vector width, so
    /// they are one class.
    Matmul,
}

impl KernelClass {
    /// Every class, in display order.
    pub const ALL: [KernelClass; 2] = [KernelClass::Loops, KernelClass::Matmul];

    /// The name used in profile files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KernelClass::Loops => "loops",
            KernelClass::Matmul => "matmul",
        }
    }
}

impl fmt::Display for KernelClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-class ISA choices (`None`: the profile's `isa`, not yet decided).
/// Set by a profile file's `[kernel_isa]` table, a CLI flag or the timing
/// in `tune`; a class set here is not timed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct KernelIsas {
    pub loops: Option<Isa>,
    pub matmul: Option<Isa>,
}

impl KernelIsas {
    /// The choice for `class`, if one was made.
    pub fn get(&self, class: KernelClass) -> Option<Isa> {
        match class {
            KernelClass::Loops => self.loops,
            KernelClass::Matmul => self.matmul,
        }
    }

    fn slot(&mut self, class: KernelClass) -> &mut Option<Isa> {
        match class {
            KernelClass::Loops => &mut self.loops,
            KernelClass::Matmul => &mut self.matmul,
        }
    }
}

/// Per-class ISAs for messages: `avx2` when every class has the same,
/// else each class with its own (`loops avx2, matmul avx512`).
pub fn isa_summary(isas: &[(KernelClass, Isa)]) -> String {
    match isas {
        [(_, first), rest @ ..] if rest.iter().all(|(_, isa)| isa == first) => first.to_string(),
        _ => isas.iter().map(|(c, isa)| format!("{c} {isa}")).collect::<Vec<_>>().join(", "),
    }
}

/// Individual CPU features that kernels may rely on beyond the base ISA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512dq: bool,
    pub avx512vl: bool,
    pub avx512_bf16: bool,
    pub avx512_vnni: bool,
}

impl CpuFeatures {
    /// Feature names as used in profile files, paired with accessors.
    pub const NAMES: [&'static str; 9] =
        ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16", "avx512_vnni"];

    fn flag_mut(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "avx2" => &mut self.avx2,
            "fma" => &mut self.fma,
            "f16c" => &mut self.f16c,
            "avx512f" => &mut self.avx512f,
            "avx512bw" => &mut self.avx512bw,
            "avx512dq" => &mut self.avx512dq,
            "avx512vl" => &mut self.avx512vl,
            "avx512_bf16" => &mut self.avx512_bf16,
            "avx512_vnni" => &mut self.avx512_vnni,
            _ => return None,
        })
    }

    /// Whether the named feature is present (`None` for an unknown name).
    pub fn get(&self, name: &str) -> Option<bool> {
        let mut copy = *self;
        copy.flag_mut(name).map(|f| *f)
    }

    /// Enabled feature names, in [`CpuFeatures::NAMES`] order.
    pub fn enabled(&self) -> Vec<&'static str> {
        Self::NAMES.iter().copied().filter(|n| self.get(n) == Some(true)).collect()
    }

    /// The best ISA these features allow code generation to use, if any.
    pub fn best_isa(&self) -> Option<Isa> {
        if self.avx512f && self.avx512bw && self.avx512dq && self.avx512vl && self.fma {
            Some(Isa::Avx512)
        } else if self.avx2 && self.fma {
            Some(Isa::Avx2)
        } else {
            None
        }
    }

    /// Whether these features are enough to run code for `isa`.
    pub fn supports(&self, isa: Isa) -> bool {
        self.best_isa().is_some_and(|best| best >= isa)
    }

    /// The features an ISA implies (used for presets and profile files that
    /// only name the ISA).
    pub fn implied_by(isa: Isa) -> CpuFeatures {
        let avx2 = CpuFeatures { avx2: true, fma: true, f16c: true, ..CpuFeatures::default() };
        match isa {
            Isa::Avx2 => avx2,
            Isa::Avx512 => {
                CpuFeatures { avx512f: true, avx512bw: true, avx512dq: true, avx512vl: true, ..avx2 }
            }
        }
    }
}

/// One level of the data-cache hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheLevel {
    /// Capacity in bytes (per core for L1/L2; per sharing domain for L3).
    pub size_bytes: usize,
    /// Cache line size in bytes.
    pub line_bytes: usize,
    /// Logical CPUs sharing this cache (1 when unknown).
    pub shared_by: usize,
}

/// The data caches fusion and blocking decisions are sized against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheHierarchy {
    pub l1d: CacheLevel,
    pub l2: CacheLevel,
    pub l3: CacheLevel,
}

/// Where a profile's numbers came from, so `explain` output can say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum ProfileSource {
    /// Read from this machine's cpuid and sysfs.
    Detected,
    /// A built-in named preset.
    Preset(String),
    /// Loaded from a profile file.
    File(String),
}

/// The hardware facts every compiler decision is made from.
///
/// Build one with [`DeviceProfile::detect`], [`DeviceProfile::preset`] or
/// [`DeviceProfile::from_toml_str`]; the fields are validated on construction
/// (non-zero, increasing cache sizes; an ISA the features allow).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceProfile {
    /// Human-readable name (CPU brand string, preset or file name).
    pub name: String,
    pub source: ProfileSource,
    /// The ISA code generation targets.
    pub isa: Isa,
    pub features: CpuFeatures,
    pub caches: CacheHierarchy,
    /// Physical cores (threads of one core share its FMA units).
    pub physical_cores: usize,
    /// Logical CPUs the OS schedules on.
    pub logical_cpus: usize,
    /// Each kernel class's ISA where one was forced or confirmed by timing
    /// (else `isa`; see [`DeviceProfile::isa_for`]).
    pub kernel_isas: KernelIsas,
}

impl DeviceProfile {
    /// Detects this machine (cpuid cache leaves, cross-checked with sysfs).
    ///
    /// Returns an error on a CPU without at least AVX2 + FMA, which this
    /// compiler does not generate code for.
    pub fn detect() -> Result<DeviceProfile, ProfileError> {
        detect::detect()
    }

    /// A built-in profile of a known machine kind; see [`PRESET_NAMES`].
    pub fn preset(name: &str) -> Result<DeviceProfile, ProfileError> {
        presets::preset(name)
    }

    /// Parses a TOML profile file's contents (see `docs/device-profile.md`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<DeviceProfile, ProfileError> {
        file::parse(text, origin)
    }

    /// Loads a TOML profile file.
    pub fn load(path: &std::path::Path) -> Result<DeviceProfile, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError::Io { path: path.display().to_string(), message: e.to_string() })?;
        file::parse(&text, &path.display().to_string())
    }

    /// This profile as a TOML profile file (round-trips through `from_toml_str`).
    pub fn to_toml(&self) -> String {
        file::render(self)
    }

    /// The same machine but generating code for `isa` (e.g. AVX2 on an
    /// AVX-512 CPU). Fails when the features do not include `isa`.
    pub fn with_isa(mut self, isa: Isa) -> Result<DeviceProfile, ProfileError> {
        if !self.features.supports(isa) {
            return Err(ProfileError::Field {
                origin: self.name.clone(),
                field: "isa".into(),
                problem: format!("`{isa}` needs features this profile does not have"),
            });
        }
        self.isa = isa;
        Ok(self)
    }

    /// The same machine with `class` kernels generated for `isa`. Fails when
    /// the features do not include `isa`.
    pub fn with_kernel_isa(mut self, class: KernelClass, isa: Isa) -> Result<DeviceProfile, ProfileError> {
        if !self.features.supports(isa) {
            return Err(ProfileError::Field {
                origin: self.name.clone(),
                field: format!("kernel_isa.{class}"),
                problem: format!("`{isa}` needs features this profile does not have"),
            });
        }
        *self.kernel_isas.slot(class) = Some(isa);
        Ok(self)
    }

    /// The ISA `class` kernels are generated for.
    pub fn isa_for(&self, class: KernelClass) -> Isa {
        self.kernel_isas.get(class).unwrap_or(self.isa)
    }

    /// Each kernel class with its ISA, in [`KernelClass::ALL`] order.
    pub fn class_isas(&self) -> [(KernelClass, Isa); 2] {
        KernelClass::ALL.map(|c| (c, self.isa_for(c)))
    }

    /// The ISA code is generated for, for messages (see [`isa_summary`]).
    pub fn isa_summary(&self) -> String {
        isa_summary(&self.class_isas())
    }

    /// This profile as `class` kernels see it: `isa` is that class's ISA
    /// (registers, lanes and blocking follow). Code generators take their
    /// profile through this, so one class's choice never leaks into another.
    pub fn for_kernels(&self, class: KernelClass) -> DeviceProfile {
        let isa = self.isa_for(class);
        DeviceProfile { isa, kernel_isas: KernelIsas::default(), ..self.clone() }
    }

    /// SIMD registers available to generated code: AVX2 → 16, AVX-512 → 32.
    pub fn num_simd_regs(&self) -> usize {
        self.isa.num_simd_regs()
    }

    /// f32 lanes in one vector register.
    pub fn f32_lanes(&self) -> usize {
        self.isa.f32_lanes()
    }

    /// The f32 GEMM blocking this hardware implies, for the matmul class's ISA.
    pub fn gemm_blocking(&self) -> GemmBlocking {
        GemmBlocking::for_profile(&self.for_kernels(KernelClass::Matmul))
    }

    /// Whether code generated for this profile can run on the current CPU:
    /// every kernel class's ISA (a profile of another machine with its
    /// classes forced to this CPU's ISA runs here).
    pub fn runs_on_host(&self) -> bool {
        let host = detect::host_features();
        KernelClass::ALL.iter().all(|&c| host.supports(self.isa_for(c)))
    }

    fn validate(self) -> Result<DeviceProfile, ProfileError> {
        let err = |field: &str, problem: String| ProfileError::Field {
            origin: self.name.clone(),
            field: field.into(),
            problem,
        };
        let c = &self.caches;
        for (field, level) in [("cache.l1d", c.l1d), ("cache.l2", c.l2), ("cache.l3", c.l3)] {
            if level.size_bytes < 1024 {
                return Err(err(field, format!("{} bytes is not a plausible cache size", level.size_bytes)));
            }
            if !level.line_bytes.is_power_of_two() || !(16..=256).contains(&level.line_bytes) {
                return Err(err(
                    "cache.line",
                    format!("{} is not a power of two in 16..=256", level.line_bytes),
                ));
            }
        }
        if c.l2.size_bytes < c.l1d.size_bytes {
            return Err(err("cache.l2", "smaller than L1d".into()));
        }
        if c.l3.size_bytes < c.l2.size_bytes {
            return Err(err("cache.l3", "smaller than L2".into()));
        }
        if self.physical_cores == 0 {
            return Err(err("physical_cores", "must be at least 1".into()));
        }
        if self.logical_cpus < self.physical_cores {
            return Err(err("logical_cpus", "fewer than physical_cores".into()));
        }
        if !self.features.supports(self.isa) {
            return Err(err("features", format!("do not include what isa `{}` needs", self.isa)));
        }
        Ok(self)
    }
}

impl fmt::Display for DeviceProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            ProfileSource::Detected => "detected".to_string(),
            ProfileSource::Preset(n) => format!("preset `{n}`"),
            ProfileSource::File(p) => format!("file {p}"),
        };
        let kib = |b: usize| {
            if b >= 1 << 20 && b % (1 << 20) == 0 {
                format!("{} MiB", b >> 20)
            } else {
                format!("{} KiB", b >> 10)
            }
        };
        let c = &self.caches;
        let b = self.gemm_blocking();
        writeln!(f, "device       {} ({source})", self.name)?;
        writeln!(
            f,
            "isa          {} ({} × {}-bit registers, {} f32 lanes)",
            self.isa,
            self.num_simd_regs(),
            self.isa.vector_bytes() * 8,
            self.f32_lanes()
        )?;
        for class in KernelClass::ALL {
            if let Some(isa) = self.kernel_isas.get(class).filter(|&isa| isa != self.isa) {
                writeln!(
                    f,
                    "{:<12} {isa} ({} × {}-bit registers)",
                    format!("{class} isa"),
                    isa.num_simd_regs(),
                    isa.vector_bytes() * 8
                )?;
            }
        }
        writeln!(f, "features     {}", self.features.enabled().join(" "))?;
        writeln!(
            f,
            "caches       L1d {} · L2 {} · L3 {} · line {} B",
            kib(c.l1d.size_bytes),
            kib(c.l2.size_bytes),
            kib(c.l3.size_bytes),
            c.l1d.line_bytes
        )?;
        writeln!(f, "cores        {} physical, {} logical", self.physical_cores, self.logical_cpus)?;
        write!(f, "gemm         MR×NR {}×{} · KC {} · MC {} · NC {}", b.mr, b.nr, b.kc, b.mc, b.nc)
    }
}
