//! The vector width of each kernel class, confirmed by timing on this CPU.
//!
//! ```text
//!   DeviceProfile (cpuid: best ISA) ──[per KernelClass: compile a short workload
//!        for every ISA the CPU runs, median time]──> DeviceProfile.kernel_isas + IsaTimings
//! ```
//!
//! cpuid says which ISAs *run*; it does not say which is *faster*. On Zen 4
//! 512-bit instructions execute on 256-bit datapaths, so a zmm loop kernel
//! gains nothing over a ymm one and can lose (wider tails, costlier masks),
//! while a zmm GEMM may still win on its 32 registers. So each
//! [`KernelClass`] gets a short workload of its own (~10–30 ms in all),
//! timed for every candidate ISA at first use; the result is cached for the
//! process. A narrower ISA replaces the profile's only when it is at least
//! [`NARROWER_MARGIN`] faster — more registers mean more fusion, so a tie
//! goes to the wider one. A class set in the profile (its `[kernel_isa]`
//! table, `--loops-isa` / `--matmul-isa`, or `--isa` for everything) is
//! forced and not timed.

mod bandwidth;

pub use bandwidth::ReadProbe;

use crate::codegen::gemm::GemmKernel;
use crate::codegen::loops::{LoopKernel, LoopProgram};
use crate::codegen::CodegenError;
use crate::device::{DeviceProfile, Isa, KernelClass};
use crate::scalar::{OpKind, RegistryError, ScalarOpRegistry};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// How much faster (as a fraction) a narrower ISA must be to replace a
/// wider one: beyond run-to-run noise, and paying for the registers lost.
pub const NARROWER_MARGIN: f64 = 0.10;

/// Timed runs per candidate; the median is kept.
const RUNS: usize = 9;

/// Why a timing could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    #[error("timing the {class} kernels: {source}")]
    Codegen {
        class: KernelClass,
        #[source]
        source: CodegenError,
    },
    #[error("timing the loop kernels: {0}")]
    Registry(#[from] RegistryError),
}

/// How a class's ISA was decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Timed: every candidate ISA with its median seconds per workload run,
    /// widest first.
    Timed(Vec<(Isa, f64)>),
    /// Set by the profile or a flag.
    Forced,
    /// The profile describes another machine; nothing can be run.
    NotOnHost,
}

/// The choice for one kernel class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassChoice {
    pub class: KernelClass,
    pub isa: Isa,
    pub decision: Decision,
}

/// Every class's choice, as `gllm device` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IsaTimings {
    pub classes: Vec<ClassChoice>,
}

impl fmt::Display for IsaTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.classes.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "timing       {} → {}: ", c.class, c.isa)?;
            match &c.decision {
                Decision::Forced => write!(f, "forced by the profile or a flag, not timed")?,
                Decision::NotOnHost => write!(f, "not timed (the profile is for another CPU)")?,
                Decision::Timed(times) => {
                    let times: Vec<String> =
                        times.iter().map(|(isa, s)| format!("{isa} {:.1} µs", s * 1e6)).collect();
                    write!(f, "{} took {} (median of {RUNS})", workload(c.class), times.join(", "))?;
                }
            }
        }
        Ok(())
    }
}

/// What each class's timing runs.
pub fn workload(class: KernelClass) -> &'static str {
    match class {
        KernelClass::Loops => "silu + rms_norm over 16×4096",
        KernelClass::Matmul => "GEMM 48×512×512 + GEMV 1×1024×512",
    }
}

/// `profile` with each unforced class's ISA confirmed by timing, and the
/// timings behind it. Cached per profile for the life of the process.
pub fn confirm_isas(profile: &DeviceProfile) -> Result<(DeviceProfile, Arc<IsaTimings>), TuneError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<IsaTimings>>>> = OnceLock::new();
    let key = profile.to_toml();
    let cache = CACHE.get_or_init(Default::default);
    let cached = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
    let timings = match cached {
        Some(t) => t,
        None => {
            let t = Arc::new(time_classes(profile)?);
            cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, t.clone());
            t
        }
    };
    let mut tuned = profile.clone();
    for c in timings.classes.iter().filter(|c| matches!(c.decision, Decision::Timed(_))) {
        tuned = tuned.with_kernel_isa(c.class, c.isa).expect("candidates are ISAs the profile supports");
    }
    Ok((tuned, timings))
}

fn time_classes(profile: &DeviceProfile) -> Result<IsaTimings, TuneError> {
    let mut classes = Vec::new();
    for class in KernelClass::ALL {
        let isa = profile.isa_for(class);
        let decision = if profile.kernel_isas.get(class).is_some() {
            Decision::Forced
        } else if !profile.runs_on_host() {
            Decision::NotOnHost
        } else {
            // Widest first: the default the others must beat.
            let mut times = Vec::new();
            for candidate in Isa::ALL.into_iter().rev().filter(|&c| c <= profile.isa) {
                let p =
                    profile.clone().with_kernel_isa(class, candidate).expect("narrower ISAs are supported");
                times.push((candidate, time_workload(class, &p)?));
            }
            Decision::Timed(times)
        };
        let isa = match &decision {
            Decision::Timed(times) => choose(times),
            _ => isa,
        };
        classes.push(ClassChoice { class, isa, decision });
    }
    Ok(IsaTimings { classes })
}

/// The widest candidate unless a narrower one is [`NARROWER_MARGIN`] faster.
fn choose(times: &[(Isa, f64)]) -> Isa {
    let (mut best, mut best_secs) = times[0];
    for &(isa, secs) in &times[1..] {
        if secs < best_secs * (1.0 - NARROWER_MARGIN) {
            (best, best_secs) = (isa, secs);
        }
    }
    best
}

/// The median of `runs` timings of `f`, in seconds (no warm-up: callers
/// that need one run `f` first). One definition for every "median time of
/// a few runs" here and in the front end's demo.
pub fn median_secs<E>(runs: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<f64, E> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// One warm-up run (pages, caches, lazily generated variants), then the
/// median of [`RUNS`].
fn warm_median_secs(mut f: impl FnMut() -> Result<(), CodegenError>) -> Result<f64, CodegenError> {
    f()?;
    median_secs(RUNS, f)
}

/// Median seconds of one run of `class`'s workload with `profile`'s ISAs.
fn time_workload(class: KernelClass, profile: &DeviceProfile) -> Result<f64, TuneError> {
    let codegen = |source| TuneError::Codegen { class, source };
    let registry = ScalarOpRegistry::global();
    let data = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 - 0.5)
            .collect()
    };
    match class {
        KernelClass::Loops => {
            let (rows, n) = (16, 4096);
            let x = data(rows * n, 1);
            let w = data(n, 2);
            let mut out = vec![0.0f32; rows * n];
            let mut total = 0.0;
            for (kind, params) in [(OpKind::Silu, vec![]), (OpKind::RmsNorm, vec![1e-5])] {
                let trace = registry.trace(kind)?;
                let kernel = LoopProgram::from_trace(&trace, params)
                    .and_then(|p| LoopKernel::compile(&p, profile))
                    .map_err(codegen)?;
                let ins: Vec<&[f32]> = if kernel.num_inputs() == 1 { vec![&x] } else { vec![&x, &w] };
                total +=
                    warm_median_secs(|| kernel.run(&ins, &mut [&mut out], rows, n, 1)).map_err(codegen)?;
            }
            Ok(total)
        }
        KernelClass::Matmul => {
            let gemm = GemmKernel::compile(profile).map_err(codegen)?;
            let (m, k, n) = (48, 512, 512);
            let a = data(m * k, 3);
            let b = gemm.pack_b(&data(k * n, 4), k, n).map_err(codegen)?;
            let mut c = vec![0.0f32; m * n];
            let gemm_secs =
                warm_median_secs(|| gemm.gemm_prepacked(&a, &b, &mut c, m, 1)).map_err(codegen)?;
            let (k, n) = (1024, 512);
            let x = data(k, 5);
            let w = gemm.pack_b(&data(k * n, 6), k, n).map_err(codegen)?;
            let mut y = vec![0.0f32; n];
            let gemv_secs =
                warm_median_secs(|| gemm.gemm_prepacked(&x, &w, &mut y, 1, 1)).map_err(codegen)?;
            Ok(gemm_secs + gemv_secs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrower_isa_must_win_by_the_margin() {
        assert_eq!(choose(&[(Isa::Avx512, 1.0), (Isa::Avx2, 0.95)]), Isa::Avx512);
        assert_eq!(choose(&[(Isa::Avx512, 1.0), (Isa::Avx2, 0.85)]), Isa::Avx2);
        assert_eq!(choose(&[(Isa::Avx2, 1.0)]), Isa::Avx2);
    }
}
