//! Causal attention over a key/value cache whose length is a run-time value.
//!
//! ```text
//!   Q [seq, heads·d] ─┐
//!   K cache [ctx, kv_heads·d] ──[batched QKᵀ, epilogue: ·scale + mask]──> S [heads, seq, ctx]
//!                                     ──[softmax rows, in place]──> P
//!   V cache [ctx, kv_heads·d] ──[batched P·V]──> O [seq, heads·d]
//! ```
//!
//! A decoder's attention is the one part of a layer whose shape changes with
//! every generated token (the context grows by one). The rest of the layer is
//! compiled per token count and cached; this kernel is compiled once per head
//! layout and takes the query count and the context length at run time, so
//! decoding never compiles. It is built from the same pieces as the graph's
//! attention nodes — the batched GEMM and the traces of the registry's
//! `scale`, `add` and `softmax` functions — and is checked against the scalar
//! evaluation of those nodes.

use super::gemm::{GemmEpilogue, GemmKernel};
use super::loops::{LoopKernel, LoopProgram, RawSlice};
use super::{BadArguments, CodegenError, KvCache, Unsupported};
use crate::device::DeviceProfile;
use crate::graph::{BatchLayout, MatMulParams};
use crate::runtime::dispatch::for_each_part;
use crate::scalar::{OpKind, ScalarOpRegistry};

/// Value the causal mask adds to a score a query must not see (the same the
/// graph's mask input uses: finite, so `x − max` stays finite).
pub const MASKED: f32 = -1e9;

/// The head layout of one attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionShape {
    pub heads: usize,
    /// Key/value heads; `heads / kv_heads` query heads share one (GQA).
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Memory one attention call uses besides its operands, reused across calls.
#[derive(Debug, Default)]
pub struct AttentionScratch {
    mask: Vec<f32>,
    scores: Vec<f32>,
}

/// Compiled causal attention; see the module docs.
#[derive(Debug)]
pub struct CausalAttention {
    shape: AttentionShape,
    scale: f32,
    /// QKᵀ with `·scale + mask` applied to the accumulators.
    scores: GemmKernel,
    /// Set when the profile's microkernel had no registers for that
    /// epilogue: then the scale and mask run as a loop kernel.
    scale_mask: Option<LoopKernel>,
    softmax: LoopKernel,
    pv: GemmKernel,
}

impl CausalAttention {
    /// Compiles for `shape` with scores scaled by 1/√head_dim.
    pub fn compile(
        shape: AttentionShape,
        registry: &ScalarOpRegistry,
        profile: &DeviceProfile,
    ) -> Result<CausalAttention, CodegenError> {
        if shape.heads == 0 || shape.kv_heads == 0 || shape.head_dim == 0 || shape.heads % shape.kv_heads != 0
        {
            return Err(CodegenError::BadArguments(BadArguments::AttentionHeads {
                heads: shape.heads,
                kv_heads: shape.kv_heads,
                head_dim: shape.head_dim,
            }));
        }
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let trace = |op| {
            registry.trace(op).map_err(|source| {
                CodegenError::Unsupported(Unsupported::OpTrace { op, source: Box::new(source) })
            })
        };
        let (scale_t, add_t, softmax_t) =
            (trace(OpKind::Scale)?, trace(OpKind::Add)?, trace(OpKind::Softmax)?);
        let epilogue = GemmEpilogue::new().then(&scale_t.body, 0, &[scale])?.then(&add_t.body, 0, &[])?;
        let (scores, scale_mask) = match GemmKernel::compile_with_epilogue(profile, &epilogue) {
            Ok(k) => (k, None),
            Err(CodegenError::Unsupported(_)) => {
                // The same composed body, as a loop over the stored scores.
                let prog = LoopProgram::elementwise(epilogue.body().clone(), 2, epilogue.params().to_vec());
                (GemmKernel::compile(profile)?, Some(LoopKernel::compile(&prog, profile)?))
            }
            Err(e) => return Err(e),
        };
        let softmax = LoopKernel::compile(&LoopProgram::from_trace(&softmax_t, Vec::new())?, profile)?;
        Ok(CausalAttention { shape, scale, scores, scale_mask, softmax, pv: GemmKernel::compile(profile)? })
    }

    /// One query per head (a decoding step): the scores are dot products
    /// read straight from the caches and P·V an accumulation over cache
    /// rows, so nothing is packed (the batched GEMMs would pack all of K and
    /// V for one row of output); scale, mask and softmax are the same
    /// compiled kernels as the batched path.
    #[allow(clippy::too_many_arguments)]
    fn decode_step(
        &self,
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        ctx: usize,
        out: &mut [f32],
        scratch: &mut AttentionScratch,
        threads: usize,
    ) -> Result<(), CodegenError> {
        let s = self.shape;
        let (d, kv_dim, group) = (s.head_dim, s.kv_dim(), s.heads / s.kv_heads);
        scratch.mask.clear();
        scratch.mask.resize(ctx, 0.0);
        scratch.scores.resize(s.heads * ctx, 0.0);
        let scores = &mut scratch.scores[..s.heads * ctx];
        // Heads are independent: each part takes whole heads through
        // scores, scale and mask, softmax and P·V (one hand-off per step),
        // split across threads when the context is long enough to pay for it.
        let parts =
            if s.heads * ctx * d >= MIN_PARALLEL_DECODE_ELEMS { threads.clamp(1, s.heads) } else { 1 };
        let per = s.heads.div_ceil(parts);
        let (scores_at, out_at) = (RawSlice::of_mut(scores), RawSlice::of_mut(out));
        let mask = &scratch.mask;
        for_each_part(parts, |t| -> Result<(), CodegenError> {
            for h in (t * per)..((t + 1) * per).min(s.heads) {
                let (qh, kv) = (&q[h * d..(h + 1) * d], (h / group) * d);
                let at = RawSlice { addr: scores_at.addr + h * ctx * 4, len: ctx };
                // SAFETY: part t alone reads and writes head h's row of the
                // scores (heads × ctx elements, alive for this call).
                let row = unsafe { std::slice::from_raw_parts_mut(at.addr as *mut f32, ctx) };
                dots(qh, &k_cache[kv..], kv_dim, row);
                match &self.scale_mask {
                    None => self.scores.apply_epilogue(row, 1, ctx, &[mask])?,
                    Some(scale_mask) => scale_and_mask_per_head(scale_mask, row, 1, 1, ctx, mask)?,
                }
                // SAFETY: softmax rewrites the row in place, element for element.
                unsafe { self.softmax.run_raw(&[at], &[at], 1, ctx, 1)? };
                // SAFETY: part t alone writes head h's d outputs of `out`
                // (heads·d elements, alive for this call).
                let o = unsafe { std::slice::from_raw_parts_mut((out_at.addr as *mut f32).add(h * d), d) };
                // SAFETY: the row was last written above, on this thread.
                let row = unsafe { std::slice::from_raw_parts(at.addr as *const f32, ctx) };
                weighted_sum(row, &v_cache[kv..], kv_dim, o);
            }
            Ok(())
        })
    }

    pub fn shape(&self) -> AttentionShape {
        self.shape
    }

    /// The factor scores are multiplied by.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Attention of `q` (`seq` new tokens at positions `past..past + seq`,
    /// `[seq, heads·d]`) over the first `past + seq` rows of the caches
    /// (`[capacity, kv_heads·d]`, the new tokens' keys and values already
    /// written), into `out` (`[seq, heads·d]`). Token `past + r` sees
    /// positions `0..=past + r`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        past: usize,
        out: &mut [f32],
        scratch: &mut AttentionScratch,
        threads: usize,
    ) -> Result<(), CodegenError> {
        let s = self.shape;
        let (q_dim, kv_dim) = (s.q_dim(), s.kv_dim());
        if q.len() % q_dim != 0 || out.len() != q.len() {
            return Err(CodegenError::BadArguments(BadArguments::AttentionQueries {
                q: q.len(),
                out: out.len(),
                q_dim,
            }));
        }
        let seq = q.len() / q_dim;
        let ctx = past + seq;
        for (which, cache) in [(KvCache::K, k_cache), (KvCache::V, v_cache)] {
            if cache.len() < ctx * kv_dim {
                return Err(CodegenError::BadArguments(BadArguments::KvCacheShort {
                    cache: which,
                    positions: cache.len() / kv_dim.max(1),
                    ctx,
                }));
            }
        }
        if seq == 0 {
            return Ok(());
        }
        let (k_cache, v_cache) = (&k_cache[..ctx * kv_dim], &v_cache[..ctx * kv_dim]);
        if seq == 1 {
            return self.decode_step(q, k_cache, v_cache, ctx, out, scratch, threads);
        }
        let mask = &mut scratch.mask;
        mask.clear();
        for r in 0..seq {
            mask.extend((0..ctx).map(|c| if c <= past + r { 0.0 } else { MASKED }));
        }
        scratch.scores.resize(s.heads * seq * ctx, 0.0);
        let scores = &mut scratch.scores[..s.heads * seq * ctx];
        let group = s.heads / s.kv_heads;
        let qk = MatMulParams {
            transpose_b: true,
            batch: s.heads,
            b_shared_by: group,
            a_layout: BatchLayout::Interleaved,
            b_layout: BatchLayout::Interleaved,
            c_layout: BatchLayout::Stacked,
            ..MatMulParams::new(seq, ctx, s.head_dim)
        };
        match &self.scale_mask {
            None => self.scores.gemm_batched(q, k_cache, scores, &qk, &[mask], threads)?,
            Some(scale_mask) => {
                self.scores.gemm_batched(q, k_cache, scores, &qk, &[], threads)?;
                scale_and_mask_per_head(scale_mask, scores, s.heads, seq, ctx, mask)?;
            }
        }
        let all = RawSlice::of_mut(scores);
        // SAFETY: softmax rewrites each row in place, element for element.
        unsafe { self.softmax.run_raw(&[all], &[all], s.heads * seq, ctx, threads)? };
        let pv = MatMulParams {
            batch: s.heads,
            b_shared_by: group,
            a_layout: BatchLayout::Stacked,
            b_layout: BatchLayout::Interleaved,
            c_layout: BatchLayout::Interleaved,
            ..MatMulParams::new(seq, s.head_dim, ctx)
        };
        self.pv.gemm_batched(scores, v_cache, out, &pv, &[], threads)
    }
}

/// The composed `·scale + mask` loop kernel (used when the scores GEMM had
/// no registers for it as an epilogue) over each head's `rows × ctx` scores,
/// in place, with the same `rows × ctx` mask for every head.
fn scale_and_mask_per_head(
    kernel: &LoopKernel,
    scores: &mut [f32],
    heads: usize,
    rows: usize,
    ctx: usize,
    mask: &[f32],
) -> Result<(), CodegenError> {
    if scores.len() < heads * rows * ctx || mask.len() < rows * ctx {
        return Err(CodegenError::BadArguments(BadArguments::AttentionMask {
            scores: scores.len(),
            mask: mask.len(),
            heads,
            rows,
            ctx,
        }));
    }
    let region = RawSlice::of_mut(scores);
    for h in 0..heads {
        let head = RawSlice { addr: region.addr + h * rows * ctx * 4, len: rows * ctx };
        // SAFETY: head h's scores are a region of `scores` (heads·rows·ctx
        // elements), rewritten in place element for element.
        unsafe { kernel.run_raw(&[head, RawSlice::of(mask)], &[head], rows, ctx, 1)? };
    }
    Ok(())
}

/// Below this many query-head × context × head-dim elements a decode
/// step's attention runs on one thread (SmolLM2: 9 heads × 64 → a context
/// of 15 tokens). With the whole step one fan-out and the workers hot (as
/// between a decode step's GEMVs), SmolLM2's step on the AVX2 EPYC, hot,
/// medians of 200: context 8: 1.60 µs on one thread, 1.51 on two; 16:
/// 2.11 → 1.77; 64: 6.38 → 3.82; 1024: 121 → 70.
const MIN_PARALLEL_DECODE_ELEMS: usize = 1 << 13;

/// `out[c] = q · rows[c·stride..c·stride + q.len()]` for every `c`: a
/// head's scores against the cached keys (AVX2 + FMA where the CPU has
/// them). `rows` must hold `(out.len() − 1)·stride + q.len()` values.
fn dots(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let d = q.len();
    assert!(out.is_empty() || rows.len() >= (out.len() - 1) * stride + d, "key rows out of range");
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the rows
        // lie in `rows` (asserted).
        return unsafe { simd::dots(q, rows, stride, out) };
    }
    for (c, o) in out.iter_mut().enumerate() {
        *o = q.iter().zip(&rows[c * stride..c * stride + d]).map(|(x, y)| x * y).sum();
    }
}

/// `out = Σ_c p[c] · rows[c·stride..c·stride + out.len()]`: a head's
/// probabilities applied to the cached values, accumulated position by
/// position (AVX2 + FMA where the CPU has them). `rows` must hold
/// `(p.len() − 1)·stride + out.len()` values.
fn weighted_sum(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let d = out.len();
    assert!(p.is_empty() || rows.len() >= (p.len() - 1) * stride + d, "value rows out of range");
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the rows
        // lie in `rows` (asserted).
        return unsafe { simd::weighted_sum(p, rows, stride, out) };
    }
    out.fill(0.0);
    for (c, &w) in p.iter().enumerate() {
        for (o, &v) in out.iter_mut().zip(&rows[c * stride..c * stride + d]) {
            *o += w * v;
        }
    }
}

/// The decode step's inner loops compiled for AVX2 + FMA: the crate is
/// built for baseline x86-64 (SSE2), and these two loops are most of a
/// decode step's attention. (Rust intrinsics rather than generated code:
/// two fixed loops whose only shape is the head size.)
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// Four positions at a time: one load of q's vector feeds four FMAs,
    /// and three `vhaddps` reduce the four accumulators into four scores.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `rows` holds `(out.len() − 1)·stride +
    /// q.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = q.len();
        let full = d / 8 * 8;
        let (pq, pr) = (q.as_ptr(), rows.as_ptr());
        let tail = |c: usize| -> f32 {
            q[full..].iter().zip(&rows[c * stride + full..c * stride + d]).map(|(x, y)| x * y).sum()
        };
        let n = out.len();
        let mut c = 0;
        // SAFETY (all loads below): row c + p, elements i..i + 8 with
        // i + 8 ≤ full ≤ d, inside `rows` (caller); q's i..i + 8 inside q.
        unsafe {
            while c + 4 <= n {
                let (r0, r1, r2, r3) = (
                    pr.add(c * stride),
                    pr.add((c + 1) * stride),
                    pr.add((c + 2) * stride),
                    pr.add((c + 3) * stride),
                );
                let (mut a0, mut a1, mut a2, mut a3) =
                    (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
                let mut i = 0;
                while i < full {
                    let qv = _mm256_loadu_ps(pq.add(i));
                    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r0.add(i)), a0);
                    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r1.add(i)), a1);
                    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r2.add(i)), a2);
                    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r3.add(i)), a3);
                    i += 8;
                }
                // Lanes of h: [a0, a1, a2, a3] partial sums of each 128-bit half.
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                let mut four = [0.0f32; 4];
                _mm_storeu_ps(four.as_mut_ptr(), s);
                for (p, v) in four.iter().enumerate() {
                    out[c + p] = v + tail(c + p);
                }
                c += 4;
            }
            while c < n {
                let r = pr.add(c * stride);
                let mut a = _mm256_setzero_ps();
                let mut i = 0;
                while i < full {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), _mm256_loadu_ps(r.add(i)), a);
                    i += 8;
                }
                let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
                out[c] = _mm_cvtss_f32(h) + tail(c);
                c += 1;
            }
        }
    }

    /// 32 outputs at a time held in registers across all positions (the
    /// output is stored once, not loaded and stored per position), then 8,
    /// then the last elements. Each element sums its positions in order.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `rows` holds `(p.len() − 1)·stride +
    /// out.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = out.len();
        let full = d / 8 * 8;
        let (pr, po) = (rows.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        // SAFETY (all loads and stores below): elements i..i + 8·k ≤ full ≤ d
        // of row c (inside `rows`, caller) and of `out`.
        unsafe {
            while i + 32 <= full {
                let (mut a0, mut a1, mut a2, mut a3) =
                    (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
                for (c, &w) in p.iter().enumerate() {
                    let (wv, r) = (_mm256_set1_ps(w), pr.add(c * stride + i));
                    a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r), a0);
                    a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(8)), a1);
                    a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(16)), a2);
                    a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r.add(24)), a3);
                }
                _mm256_storeu_ps(po.add(i), a0);
                _mm256_storeu_ps(po.add(i + 8), a1);
                _mm256_storeu_ps(po.add(i + 16), a2);
                _mm256_storeu_ps(po.add(i + 24), a3);
                i += 32;
            }
            while i < full {
                let mut a = _mm256_setzero_ps();
                for (c, &w) in p.iter().enumerate() {
                    a = _mm256_fmadd_ps(_mm256_set1_ps(w), _mm256_loadu_ps(pr.add(c * stride + i)), a);
                }
                _mm256_storeu_ps(po.add(i), a);
                i += 8;
            }
        }
        for (e, o) in out.iter_mut().enumerate().skip(full) {
            *o = p.iter().enumerate().fold(0.0, |acc, (c, &w)| acc + w * rows[c * stride + e]);
        }
    }
}
