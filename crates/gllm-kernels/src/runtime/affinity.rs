//! Where the thread pool's workers run: one per physical core, pinned.
//!
//! The kernels fill a core's FMA units and L1 on their own, so two threads
//! on SMT siblings of one core only slow each other down; and a worker the
//! OS moves between cores, or places on the caller's core, turns a split
//! GEMV into two halves run one after the other. So the pool has one
//! worker per physical core the process may use, except the core the
//! caller was on when the pool started, and pins each worker to the first
//! allowed logical CPU of its core. The caller is left unpinned (a library
//! does not change its user's thread) unless the application asks
//! ([`crate::runtime::dispatch::pin_caller`]): the scheduler keeps it off
//! the cores whose workers spin, but not off a core whose worker has
//! parked, and then caller and worker share one CPU until the load balancer
//! notices. `GLLM_PIN_THREADS=0` turns pinning off (the workers are still
//! one per core).

use crate::device::{cpu_topology, LogicalCpu};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a thread has been pinned to the caller's CPU ([`pin_caller`]).
static CALLER_PINNED: AtomicBool = AtomicBool::new(false);

/// How the pool's workers are placed on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlacement {
    /// The logical CPU each worker runs on; empty when topology or the
    /// affinity mask could not be read (then `workers` unpinned workers).
    pub cpus: Vec<usize>,
    /// Workers besides the calling thread.
    pub workers: usize,
    /// Whether the workers are pinned to `cpus`.
    pub pinned: bool,
    /// The CPU the calling thread was on when the pool started.
    pub caller_cpu: Option<usize>,
}

impl fmt::Display for WorkerPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caller = self.caller_cpu.map_or_else(|| "unknown".to_string(), |c| c.to_string());
        let s = if self.workers == 1 { "" } else { "s" };
        if self.workers == 0 {
            return write!(f, "no workers: one core available to this process (the caller's)");
        }
        match (self.pinned, self.cpus.is_empty()) {
            (true, _) => {
                let cpus: Vec<String> = self.cpus.iter().map(|c| c.to_string()).collect();
                let caller = if CALLER_PINNED.load(Ordering::Relaxed) {
                    format!("caller pinned to CPU {caller}")
                } else {
                    format!("caller on CPU {caller}, unpinned")
                };
                write!(
                    f,
                    "{} worker{s} pinned to CPU {} (one per physical core; {caller})",
                    self.workers,
                    cpus.join(", ")
                )
            }
            (false, false) => write!(
                f,
                "{} worker{s}, one per physical core, not pinned (GLLM_PIN_THREADS=0 or the OS refused)",
                self.workers
            ),
            (false, true) => {
                write!(f, "{} worker{s}, not pinned (no CPU topology from the OS)", self.workers)
            }
        }
    }
}

/// The workers' CPUs: the first allowed logical CPU of every physical core
/// that has one, except the caller's core (or, with the caller's CPU
/// unknown, the first core). `None` when the topology says nothing about
/// the allowed CPUs.
pub(crate) fn worker_cpus(
    topology: &[LogicalCpu],
    allowed: &[usize],
    caller: Option<usize>,
) -> Option<Vec<usize>> {
    let allowed: BTreeSet<usize> = allowed.iter().copied().collect();
    let mut seen = BTreeSet::new();
    // (core, its first allowed CPU), in CPU order.
    let cores: Vec<((u32, u32), usize)> = topology
        .iter()
        .filter(|c| allowed.contains(&c.cpu) && seen.insert(c.core))
        .map(|c| (c.core, c.cpu))
        .collect();
    if cores.is_empty() {
        return None;
    }
    let caller_core = caller.and_then(|cpu| topology.iter().find(|c| c.cpu == cpu)).map(|c| c.core);
    let skip = caller_core.filter(|core| cores.iter().any(|(c, _)| c == core)).unwrap_or(cores[0].0);
    Some(cores.into_iter().filter(|&(core, _)| core != skip).map(|(_, cpu)| cpu).collect())
}

/// Decides the placement from this machine's topology, this thread's
/// affinity mask and CPU, and `GLLM_PIN_THREADS`.
pub(crate) fn plan() -> WorkerPlacement {
    let caller_cpu = os::current_cpu();
    let allowed = os::allowed_cpus();
    let cpus = allowed.as_deref().and_then(|allowed| worker_cpus(&cpu_topology(), allowed, caller_cpu));
    match cpus {
        Some(cpus) => {
            let pin = std::env::var("GLLM_PIN_THREADS").map_or(true, |v| v != "0") && os::CAN_PIN;
            WorkerPlacement { workers: cpus.len(), cpus, pinned: pin, caller_cpu }
        }
        None => {
            let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
            WorkerPlacement {
                cpus: Vec::new(),
                workers: logical.saturating_sub(1),
                pinned: false,
                caller_cpu,
            }
        }
    }
}

/// Pins a spawned thread to `cpu`; false if the OS refused (or cannot pin).
pub(crate) fn pin<T>(thread: &std::thread::JoinHandle<T>, cpu: usize) -> bool {
    os::pin(thread, cpu)
}

/// Pins the calling thread to the CPU `placement` left for the caller, when
/// the workers are pinned and that CPU is known; the CPU, or `None`.
pub(crate) fn pin_caller(placement: &WorkerPlacement) -> Option<usize> {
    let cpu = placement.caller_cpu.filter(|cpu| placement.pinned && !placement.cpus.contains(cpu))?;
    os::pin_current(cpu).then(|| {
        CALLER_PINNED.store(true, Ordering::Relaxed);
        cpu
    })
}

#[cfg(target_os = "linux")]
mod os {
    use std::mem::{size_of, zeroed};

    pub const CAN_PIN: bool = true;

    /// The CPUs this thread may run on.
    pub fn allowed_cpus() -> Option<Vec<usize>> {
        // SAFETY: cpu_set_t is a plain bit array; all zeros is the empty set.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: pid 0 is this thread; the size is that of `set`, which the call fills.
        if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
            return None;
        }
        // SAFETY: CPU_ISSET reads bit `c` of `set`, c < CPU_SETSIZE.
        Some((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
    }

    pub fn current_cpu() -> Option<usize> {
        // SAFETY: sched_getcpu has no arguments and no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).ok()
    }

    /// The calling thread onto `cpu` alone.
    pub fn pin_current(cpu: usize) -> bool {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        // SAFETY: as in `allowed_cpus`.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: CPU_SET writes bit `cpu` < CPU_SETSIZE of `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is this thread; `set` is a mask of the size passed.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0 }
    }

    pub fn pin<T>(thread: &std::thread::JoinHandle<T>, cpu: usize) -> bool {
        use std::os::unix::thread::JoinHandleExt;
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        // SAFETY: as in `allowed_cpus`.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: CPU_SET writes bit `cpu` < CPU_SETSIZE of `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: the handle's pthread_t names a thread that has not been
        // joined or detached (we hold its handle); `set` is a mask of its size.
        unsafe {
            libc::pthread_setaffinity_np(thread.as_pthread_t(), size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    pub const CAN_PIN: bool = false;

    pub fn allowed_cpus() -> Option<Vec<usize>> {
        None
    }

    pub fn current_cpu() -> Option<usize> {
        None
    }

    pub fn pin<T>(_thread: &std::thread::JoinHandle<T>, _cpu: usize) -> bool {
        false
    }

    pub fn pin_current(_cpu: usize) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cores` physical cores with `smt` siblings each, numbered the way
    /// Linux numbers them on x86 (all first siblings, then all second).
    fn machine(cores: u32, smt: usize) -> Vec<LogicalCpu> {
        let mut cpus: Vec<LogicalCpu> = (0..smt)
            .flat_map(|s| {
                (0..cores).map(move |c| LogicalCpu { cpu: s * cores as usize + c as usize, core: (0, c) })
            })
            .collect();
        cpus.sort();
        cpus
    }

    #[test]
    fn one_worker_per_physical_core_other_than_the_callers() {
        let m = machine(4, 2);
        let all: Vec<usize> = (0..8).collect();
        // Caller on CPU 5 (core 1's sibling): cores 0, 2, 3.
        assert_eq!(worker_cpus(&m, &all, Some(5)), Some(vec![0, 2, 3]));
        assert_eq!(worker_cpus(&m, &all, Some(0)), Some(vec![1, 2, 3]));
        // Caller unknown: the first core is left to it.
        assert_eq!(worker_cpus(&m, &all, None), Some(vec![1, 2, 3]));
    }

    #[test]
    fn the_affinity_mask_is_respected() {
        let m = machine(4, 2);
        // taskset -c 4-7: the second siblings only; the caller on 6 (core 2).
        assert_eq!(worker_cpus(&m, &[4, 5, 6, 7], Some(6)), Some(vec![4, 5, 7]));
        // One allowed CPU: no workers.
        assert_eq!(worker_cpus(&m, &[3], Some(3)), Some(vec![]));
        // A caller outside the mask (it was moved): the first allowed core is skipped.
        assert_eq!(worker_cpus(&m, &[1, 2], Some(0)), Some(vec![2]));
        // Nothing known about the allowed CPUs.
        assert_eq!(worker_cpus(&m, &[9], Some(0)), None);
        assert_eq!(worker_cpus(&[], &[0, 1], Some(0)), None);
    }

    #[test]
    fn no_smt_two_cores() {
        let m = machine(2, 1);
        assert_eq!(worker_cpus(&m, &[0, 1], Some(1)), Some(vec![0]));
    }

    #[test]
    fn the_placement_says_why_workers_are_or_are_not_pinned() {
        let p = |cpus: Vec<usize>, workers, pinned| WorkerPlacement {
            cpus,
            workers,
            pinned,
            caller_cpu: Some(0),
        };
        assert_eq!(
            p(vec![1, 2], 2, true).to_string(),
            "2 workers pinned to CPU 1, 2 (one per physical core; caller on CPU 0, unpinned)"
        );
        assert!(p(vec![1], 1, false).to_string().contains("not pinned (GLLM_PIN_THREADS=0"));
        assert!(p(vec![], 3, false).to_string().contains("no CPU topology"));
        assert!(p(vec![], 0, false).to_string().starts_with("no workers: one core"));
    }

    #[test]
    fn this_machine_has_a_placement() {
        let p = plan();
        if !p.cpus.is_empty() {
            assert_eq!(p.workers, p.cpus.len(), "{p}");
        }
        assert!(p.cpus.len() == p.workers || !p.pinned, "{p}");
        let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(p.workers < logical.max(1), "{p}");
        assert!(!p.to_string().is_empty());
    }
}
