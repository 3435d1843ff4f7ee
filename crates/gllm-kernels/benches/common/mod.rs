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

/// Median wall times of several jobs measured in interleaved rounds (one
/// warm-up round, then `runs` rounds each timing every job once), so that
/// drift in a shared machine's memory bandwidth hits all of them alike
/// instead of whichever happened to run during it.
pub fn interleaved_median_times(runs: usize, jobs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for job in jobs.iter_mut() {
        job();
    }
    let mut times = vec![Vec::with_capacity(runs); jobs.len()];
    for _ in 0..runs {
        for (job, t) in jobs.iter_mut().zip(&mut times) {
            let start = Instant::now();
            job();
            t.push(start.elapsed().as_secs_f64());
        }
    }
    times.into_iter().map(median).collect()
}
pub mod memory;
