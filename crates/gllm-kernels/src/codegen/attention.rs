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
        // Heads are independent: split them across threads when the context
        // is long enough to pay for a hand-off.
        let parts =
            if s.heads * ctx * d >= MIN_PARALLEL_DECODE_ELEMS { threads.clamp(1, s.heads) } else { 1 };
        let per = s.heads.div_ceil(parts);
        let scores_at = RawSlice::of_mut(scores);
        for_each_part(parts, |t| -> Result<(), CodegenError> {
            for h in (t * per)..((t + 1) * per).min(s.heads) {
                let (qh, kv) = (&q[h * d..(h + 1) * d], (h / group) * d);
                // SAFETY: part t alone writes rows t·per.. of the scores
                // (heads × ctx elements, alive for this call).
                let row =
                    unsafe { std::slice::from_raw_parts_mut((scores_at.addr as *mut f32).add(h * ctx), ctx) };
                for (c, score) in row.iter_mut().enumerate() {
                    *score = dot(qh, &k_cache[c * kv_dim + kv..c * kv_dim + kv + d]);
                }
            }
            Ok(())
        })?;
        let mask = &scratch.mask;
        match &self.scale_mask {
            None => self.scores.apply_epilogue(scores, s.heads, ctx, &[mask])?,
            Some(scale_mask) => scale_and_mask_per_head(scale_mask, scores, s.heads, 1, ctx, mask)?,
        }
        let all = RawSlice::of_mut(scores);
        // SAFETY: softmax rewrites each row in place, element for element.
        unsafe { self.softmax.run_raw(&[all], &[all], s.heads, ctx, threads)? };
        let scores = &*scores;
        let out_at = RawSlice::of_mut(out);
        for_each_part(parts, |t| -> Result<(), CodegenError> {
            for h in (t * per)..((t + 1) * per).min(s.heads) {
                let kv = (h / group) * d;
                // SAFETY: part t alone writes head h's d outputs of `out`
                // (heads·d elements, alive for this call).
                let o = unsafe { std::slice::from_raw_parts_mut((out_at.addr as *mut f32).add(h * d), d) };
                o.fill(0.0);
                for (c, &p) in scores[h * ctx..(h + 1) * ctx].iter().enumerate() {
                    axpy(p, &v_cache[c * kv_dim + kv..c * kv_dim + kv + d], o);
                }
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
/// of about 110 tokens).
const MIN_PARALLEL_DECODE_ELEMS: usize = 1 << 16;

/// `Σ aᵢ·bᵢ` (AVX2 + FMA where the CPU has them).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { simd::dot(a, b) };
    }
    let mut lanes = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y += a·x` (AVX2 + FMA where the CPU has them).
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { simd::axpy(a, x, y) };
    }
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// The decode step's inner loops compiled for AVX2 + FMA: the crate is
/// built for baseline x86-64 (SSE2), and these two loops are most of a
/// decode step's attention.
#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: every load reads elements i..i + 8 with i + 8 ≤ n, inside
        // both slices; the caller guarantees AVX2 and FMA.
        unsafe {
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), s1);
                i += 16;
            }
            if i + 8 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                i += 8;
            }
            let s = _mm256_add_ps(s0, s1);
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
            _mm_cvtss_f32(h) + tail
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        // SAFETY: every load and store touches elements i..i + 8 with
        // i + 8 ≤ n, inside both slices; the caller guarantees AVX2 and FMA.
        unsafe {
            let av = _mm256_set1_ps(a);
            while i + 8 <= n {
                let p = py.add(i);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(p)));
                i += 8;
            }
        }
        for (y, &x) in y[i..n].iter_mut().zip(&x[i..n]) {
            *y += a * x;
        }
    }
}
