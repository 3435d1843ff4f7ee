//! The thread pool's workers park when idle and `wake_workers` brings
//! them back without a job. Its own test binary: no other test's jobs keep
//! the workers busy, so "all parked" and "none parked" are observable.

use gllm_kernels::runtime::dispatch::{for_each_part, parked_workers, wake_workers, worker_placement};
use std::time::{Duration, Instant};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn idle_workers_park_and_wake_workers_wakes_them() {
    // Start the pool with a job that every part of runs.
    let hits = std::sync::atomic::AtomicUsize::new(0);
    for_each_part::<()>(8, |_| {
        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    assert_eq!(hits.into_inner(), 8);
    let workers = worker_placement().workers;
    // Idle: every worker parks after its spin.
    wait_until("every worker parked", || parked_workers() == workers);
    if workers == 0 {
        return;
    }
    // Woken without a job: none stays parked (each spins again, then parks;
    // woken again on each check, so a slow check cannot miss the spin).
    wait_until("no worker parked", || {
        wake_workers();
        parked_workers() == 0
    });
    wait_until("every worker parked again", || parked_workers() == workers);
    // The pool still runs jobs after a wake without one.
    let sum = std::sync::atomic::AtomicUsize::new(0);
    for_each_part::<()>(5, |i| {
        sum.fetch_add(i, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    assert_eq!(sum.into_inner(), 10);
}
