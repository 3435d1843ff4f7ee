//! Timing helpers shared by the benchmarks: medians of repeated runs.
#![allow(dead_code)]

use std::time::Instant;

/// The median of `v` (the upper one for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median wall time in seconds of `runs` calls of `f`.
pub fn median_time(runs: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// One warm-up call of `f`, then [`median_time`].
pub fn warm_median_time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median_time(runs, f)
}
