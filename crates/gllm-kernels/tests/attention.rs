//! `CausalAttention` against its definition, evaluated in f64: the decode
//! step (one query per head: scores straight from the cache, P·V as an
//! accumulation over cache rows) and the batched path (several queries:
//! batched GEMMs), on head sizes that are and are not multiples of the
//! vector width, grouped-query layouts, contexts of 1 to 131 positions, and
//! 1 and 2 threads.

mod support;

use gllm_kernels::codegen::attention::{AttentionScratch, AttentionShape, CausalAttention};
use gllm_kernels::oracle::Tolerance;
use gllm_kernels::scalar::ScalarOpRegistry;
use support::{assert_within, profiles, Rng};

/// Queries `past..past + seq` (rows of `q`) over cache positions `0..=row`:
/// `softmax(scale · q·kᵀ) · v` per head, in f64.
fn reference(shape: AttentionShape, scale: f32, q: &[f32], k: &[f32], v: &[f32], past: usize) -> Vec<f32> {
    let (d, kv_dim, q_dim) = (shape.head_dim, shape.kv_dim(), shape.q_dim());
    let group = shape.heads / shape.kv_heads;
    let seq = q.len() / q_dim;
    let mut out = vec![0.0f32; q.len()];
    for r in 0..seq {
        let seen = past + r + 1;
        for h in 0..shape.heads {
            let qh = &q[r * q_dim + h * d..r * q_dim + (h + 1) * d];
            let kv = (h / group) * d;
            let scores: Vec<f64> = (0..seen)
                .map(|c| {
                    let kc = &k[c * kv_dim + kv..c * kv_dim + kv + d];
                    f64::from(scale)
                        * qh.iter().zip(kc).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for e in 0..d {
                let o: f64 = (0..seen).map(|c| weights[c] / total * f64::from(v[c * kv_dim + kv + e])).sum();
                out[r * q_dim + h * d + e] = o as f32;
            }
        }
    }
    out
}

#[test]
fn decode_and_batched_attention_match_the_definition() {
    let registry = ScalarOpRegistry::global();
    let mut rng = Rng(41);
    // (heads, kv_heads, head_dim): SmolLM2's 9/3/64, odd and short heads,
    // sizes with 8-, 32- and 1-element remainders.
    let shapes = [(9, 3, 64), (4, 4, 13), (6, 2, 40), (2, 1, 72), (3, 1, 1), (2, 2, 35)];
    for profile in profiles() {
        for (heads, kv_heads, head_dim) in shapes {
            let shape = AttentionShape { heads, kv_heads, head_dim };
            let attention = CausalAttention::compile(shape, registry, &profile).unwrap();
            let mut scratch = AttentionScratch::default();
            for ctx in [1usize, 2, 3, 4, 5, 8, 131] {
                let k: Vec<f32> = (0..ctx * shape.kv_dim()).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let v: Vec<f32> = (0..ctx * shape.kv_dim()).map(|_| rng.uniform(-1.0, 1.0)).collect();
                // The decode step (one query), then up to three queries
                // ending at the same position (the batched path).
                for seq in [1usize, 3.min(ctx)] {
                    let past = ctx - seq;
                    let q: Vec<f32> = (0..seq * shape.q_dim()).map(|_| rng.uniform(-2.0, 2.0)).collect();
                    let want = reference(shape, attention.scale(), &q, &k, &v, past);
                    for threads in [1, 2] {
                        let mut got = vec![f32::NAN; q.len()];
                        attention.run(&q, &k, &v, past, &mut got, &mut scratch, threads).unwrap();
                        let what = format!(
                            "{} {heads}/{kv_heads}×{head_dim}, ctx {ctx}, {seq} queries, {threads} threads",
                            profile.isa
                        );
                        assert_within(&what, &got, &want, &[], &Tolerance::composed(1e-4));
                    }
                }
            }
        }
    }
}
