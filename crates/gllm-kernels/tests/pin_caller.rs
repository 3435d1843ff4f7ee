//! `dispatch::pin_caller` puts the calling thread on the CPU the pool left
//! free of workers, and only there. Its own test binary: the pool's
//! placement is decided by the first thread that uses it.

use gllm_kernels::runtime::dispatch::{for_each_part, pin_caller, worker_placement};

#[test]
fn the_caller_is_pinned_to_the_cpu_without_a_worker() {
    let placement = worker_placement();
    let pinned = pin_caller();
    // Pinned exactly when the workers are and the caller's CPU is known.
    let expected = placement.caller_cpu.filter(|cpu| placement.pinned && !placement.cpus.contains(cpu));
    if std::env::var("GLLM_PIN_THREADS").is_ok_and(|v| v == "0") {
        assert_eq!(pinned, None);
    }
    assert_eq!(pinned, expected, "placement: {placement}");
    #[cfg(target_os = "linux")]
    if let Some(cpu) = pinned {
        // SAFETY: cpu_set_t is a plain bit array; all zeros is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is this thread; the size is that of `set`, which the call fills.
        let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(got, 0);
        // SAFETY: CPU_ISSET reads bit c < CPU_SETSIZE of `set`.
        let allowed: Vec<usize> =
            (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect();
        assert_eq!(allowed, vec![cpu]);
        // SAFETY: sched_getcpu has no preconditions.
        assert_eq!(unsafe { libc::sched_getcpu() }, cpu as i32);
        assert!(placement.to_string().contains(&format!("caller pinned to CPU {cpu}")), "{placement}");
    }
    // The pool still runs every part of a job from the pinned caller.
    let sum = std::sync::atomic::AtomicUsize::new(0);
    for_each_part::<()>(6, |i| {
        sum.fetch_add(i, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    })
    .unwrap();
    assert_eq!(sum.into_inner(), 15);
}
