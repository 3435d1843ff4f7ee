//! Choosing the next token from logits: greedy, or temperature with top-k
//! and top-p (nucleus) filtering, from a seeded generator so that a run with
//! the same seed produces the same text.

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 (or less) picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches
    /// `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 0x5eed }
    }
}

impl SamplingParams {
    /// Always the most likely token.
    pub fn greedy() -> SamplingParams {
        SamplingParams { temperature: 0.0, ..SamplingParams::default() }
    }
}

/// A sampler with its own random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
    /// Reused candidate list (token, logit/probability).
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler { params, state: params.seed, cand: Vec::new() }
    }

    pub fn params(&self) -> SamplingParams {
        self.params
    }

    /// SplitMix64: small, fast, and the same on every platform.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token for `logits` (one per vocabulary entry). NaN logits
    /// are never chosen; an all-NaN row gives token 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().filter(|(_, l)| !l.is_nan()).map(|(i, &l)| (i as u32, l)));
        if self.cand.is_empty() {
            return 0;
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            self.cand.truncate(p.top_k);
        }
        self.cand.sort_unstable_by(by_logit);
        let max = self.cand[0].1;
        let mut sum = 0.0f64;
        for c in self.cand.iter_mut() {
            let e = (((c.1 - max) / p.temperature) as f64).exp();
            c.1 = e as f32;
            sum += e;
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0f64;
            let keep = self
                .cand
                .iter()
                .position(|c| {
                    acc += c.1 as f64 / sum;
                    acc >= p.top_p as f64
                })
                .map_or(self.cand.len(), |i| i + 1);
            self.cand.truncate(keep);
            sum = self.cand.iter().map(|c| c.1 as f64).sum();
        }
        let mut r = self.uniform() * sum;
        for c in &self.cand {
            r -= c.1 as f64;
            if r < 0.0 {
                return c.0;
            }
        }
        self.cand.last().map_or(0, |c| c.0)
    }
}

/// Index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    // The largest value first, in 16 independent lanes the compiler turns
    // into vector maxima (a 49152-entry vocabulary took ~40 µs a token as
    // one branchy loop), then its first position. `x > m` skips NaN, as
    // the single loop did; nothing above −∞ means position 0, as before.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = logits.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max =
        chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&x| x == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[0.0, 3.0, f32::NAN, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[]), 0);
        // Past the 16-lane chunks, and a maximum in the remainder.
        let mut v: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32).collect();
        v[7] = f32::NAN;
        let first =
            v.iter().enumerate().filter(|(_, x)| !x.is_nan()).fold((0, f32::NEG_INFINITY), |b, (i, &x)| {
                if x > b.1 {
                    (i, x)
                } else {
                    b
                }
            });
        assert_eq!(argmax(&v), first.0 as u32);
        v[98] = 1e9;
        assert_eq!(argmax(&v), 98);
        v[3] = 1e9;
        assert_eq!(argmax(&v), 3);
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[1.0, -2.0, 5.0, 4.0]), 2);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_filters_hold() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 23) as f32 * 0.3).collect();
        let params = SamplingParams { temperature: 1.0, top_k: 5, top_p: 1.0, seed: 9 };
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<u32>>()
        };
        let a = run(params);
        assert_eq!(a, run(params));
        assert_ne!(a, run(SamplingParams { seed: 10, ..params }));
        // top-k 5: only the five largest logits ever come out.
        let mut order: Vec<usize> = (0..50).collect();
        order.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]).then(x.cmp(&y)));
        let top5: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        assert!(a.iter().all(|t| top5.contains(t)), "{a:?} outside {top5:?}");
        assert!(top5.iter().filter(|t| a.contains(t)).count() >= 3, "sampling is not spread");
        // top-p tiny: only the most likely token.
        let b = run(SamplingParams { top_k: 0, top_p: 1e-6, ..params });
        assert!(b.iter().all(|&t| t == top5[0]));
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (5.0f32).ln()]; // probabilities 1:2:5
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1 });
        let mut n = [0usize; 3];
        for _ in 0..16000 {
            n[s.sample(&logits) as usize] += 1;
        }
        for (i, want) in [2000.0, 4000.0, 10000.0].iter().enumerate() {
            assert!((n[i] as f64 - want).abs() < 0.06 * want, "{n:?}");
        }
    }
}
