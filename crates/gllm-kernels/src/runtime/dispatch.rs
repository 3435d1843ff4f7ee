//! Running a kernel's independent parts (row ranges, column panels, batch
//! elements) on several cores. Generated code is single-threaded; this is
//! the one place that fans it out.
//!
//! ```text
//!   caller ──[publish job, bump generation]──> workers (spinning, or parked)
//!     │  takes parts from the shared counter too        │ take parts
//!     └──[wait: every part done, no worker inside]<─────┘
//! ```
//!
//! Decoding calls a few hundred small kernels per token, a few microseconds
//! each, so a hand-off must cost far less than that. A general task pool
//! (rayon) wakes its threads through the OS on every call: tens of
//! microseconds, more than a small GEMV takes. Here the workers are
//! persistent and spin on a generation counter for a while after each job
//! (a hand-off is then a cache-line transfer) before they park; parts are
//! taken from one atomic counter, so the caller works too and a slow worker
//! does not hold the others up. A call made while another caller's job runs
//! (several sequences at once), or from inside a part, runs its parts on its
//! own thread. There is one worker per physical core other than the
//! caller's, pinned to it ([`WorkerPlacement`], `GLLM_PIN_THREADS`).

use super::affinity::{self, WorkerPlacement};
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// One call's parts, on the caller's stack while it runs.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    parts: usize,
    next: AtomicUsize,
    done: AtomicUsize,
}

impl Job<'_> {
    /// Takes and runs parts until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.parts {
                return;
            }
            (self.task)(i);
            self.done.fetch_add(1, SeqCst);
        }
    }
}

struct Pool {
    workers: usize,
    /// The running job (type- and lifetime-erased), or null.
    job: AtomicPtr<()>,
    generation: AtomicU64,
    /// Workers between entering a job and leaving it: the caller's job
    /// stays alive until this is back to zero.
    inside: AtomicUsize,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    /// One job at a time; other callers run their parts themselves.
    submit: Mutex<()>,
}

thread_local! {
    /// Set on pool workers (and on a caller while its job runs): nested
    /// fan-outs run inline instead of waiting on the pool they occupy.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

fn pool() -> &'static Pool {
    pool_and_placement().0
}

fn pool_and_placement() -> &'static (&'static Pool, WorkerPlacement) {
    static POOL: OnceLock<(&'static Pool, WorkerPlacement)> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut placement = affinity::plan();
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers: placement.workers,
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            inside: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            submit: Mutex::new(()),
        }));
        let mut spawned = 0;
        let mut all_pinned = placement.pinned;
        for w in 0..placement.workers {
            let Ok(handle) =
                thread::Builder::new().name(format!("gllm-kernels-{w}")).spawn(move || pool.worker_loop())
            else {
                // Fewer workers only means less parallelism: parts still run.
                break;
            };
            if placement.pinned {
                all_pinned &= affinity::pin(&handle, placement.cpus[w]);
            }
            spawned += 1;
        }
        placement.workers = spawned;
        placement.cpus.truncate(spawned);
        placement.pinned = all_pinned && spawned > 0;
        (pool, placement)
    })
}

/// Wakes parked workers without giving them work, and returns at once:
/// they spin again (for 200 µs), so a job that follows soon finds them
/// ready instead of paying the OS wake-up (2–5 µs measured on the 2-vCPU
/// VM, against 0.3 µs for a spinning worker: `--bench quant`).
/// For a caller that knows fan-outs are coming after a pause — a decode
/// step after sampling and printing, a benchmark after other work.
pub fn wake_workers() {
    let pool = pool();
    if pool.workers == 0 {
        return;
    }
    // A worker that sees the new generation finds no job (or joins the job
    // another caller is running, which is as valid) and spins again.
    pool.generation.fetch_add(1, SeqCst);
    if pool.sleepers.load(SeqCst) > 0 {
        let _g = pool.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        pool.wake.notify_all();
    }
}

/// Workers parked now (not spinning, not working): 0 right after a job or
/// a [`wake_workers`] once the OS has run them.
pub fn parked_workers() -> usize {
    pool().sleepers.load(SeqCst)
}

/// Where the pool's workers run (starting the pool if it has not started).
pub fn worker_placement() -> &'static WorkerPlacement {
    &pool_and_placement().1
}

/// Pins the calling thread to the CPU the pool left free of workers (the
/// one its first caller was on), starting the pool if needed; returns that
/// CPU, or `None` when the workers are not pinned (`GLLM_PIN_THREADS=0`,
/// no topology) or the OS refused.
///
/// For an application whose one thread drives the fan-outs (gllm's `run`,
/// `chat`, `bench`, `perplexity`), not for a library's callers in general.
/// Unpinned, the scheduler may move that thread onto a parked worker's
/// CPU, and the two then share a CPU for milliseconds: on the 2-core VM,
/// six alternated runs of `--bench quant`'s SmolLM2 shapes with and
/// without it gave two-thread times of 4.1–4.3 against 4.3–7.0 µs
/// (1×576×576) and 56.6–57.0 against 56.6–114.9 µs (16×576×576).
pub fn pin_caller() -> Option<usize> {
    affinity::pin_caller(worker_placement())
}

impl Pool {
    fn worker_loop(&self) {
        IN_POOL.with(|f| f.set(true));
        let mut seen = self.generation.load(SeqCst);
        loop {
            seen = self.wait_for_job(seen);
            self.inside.fetch_add(1, SeqCst);
            let job = self.job.load(SeqCst) as *const Job<'static>;
            if !job.is_null() {
                // SAFETY: a non-null pointer read after `inside` was raised
                // is a job whose caller is still in `run`: it clears the
                // pointer and then waits for `inside` to drop to zero before
                // its stack frame (and the job on it) goes away.
                unsafe { (*job).work() };
            }
            self.inside.fetch_sub(1, SeqCst);
        }
    }

    /// Spins, then parks, until the generation moves past `seen`.
    fn wait_for_job(&self, seen: u64) -> u64 {
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                let g = self.generation.load(SeqCst);
                if g != seen {
                    return g;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() > SPIN {
                break;
            }
        }
        let mut guard = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
        self.sleepers.fetch_add(1, SeqCst);
        let g = loop {
            let g = self.generation.load(SeqCst);
            if g != seen {
                break g;
            }
            guard = self.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
        };
        self.sleepers.fetch_sub(1, SeqCst);
        g
    }

    /// Runs `parts` parts of `task` on the caller and the workers.
    fn run(&self, parts: usize, task: &(dyn Fn(usize) + Sync)) {
        let Ok(_submit) = self.submit.try_lock() else {
            return (0..parts).for_each(task);
        };
        let job = Job { task, parts, next: AtomicUsize::new(0), done: AtomicUsize::new(0) };
        self.job.store(&job as *const Job as *mut (), SeqCst);
        self.generation.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _g = self.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
        IN_POOL.with(|f| f.set(true));
        job.work();
        IN_POOL.with(|f| f.set(false));
        while job.done.load(SeqCst) < parts {
            std::hint::spin_loop();
        }
        self.job.store(std::ptr::null_mut(), SeqCst);
        while self.inside.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
    }
}

/// Runs `work(0)`, …, `work(parts − 1)` — on the calling thread when there
/// is one part (or no free pool), else on the caller and the pool's workers
/// — and returns the first error in part order. A panic in a part is
/// re-raised on the caller after every part has finished.
pub fn for_each_part<E: Send>(parts: usize, work: impl Fn(usize) -> Result<(), E> + Sync) -> Result<(), E> {
    if parts <= 1 || IN_POOL.with(Cell::get) {
        return (0..parts).try_for_each(&work);
    }
    let pool = pool();
    if pool.workers == 0 {
        return (0..parts).try_for_each(&work);
    }
    type Outcome<E> = Mutex<Option<Result<Result<(), E>, Box<dyn std::any::Any + Send>>>>;
    let results: Vec<Outcome<E>> = (0..parts).map(|_| Mutex::new(None)).collect();
    let task = |i: usize| {
        let r = catch_unwind(AssertUnwindSafe(|| work(i)));
        *results[i].lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
    };
    pool.run(parts, &task);
    let mut first_err = None;
    for slot in results {
        match slot.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                first_err.get_or_insert(e);
            }
            Some(Err(panic)) => resume_unwind(panic),
            None => unreachable!("every part runs before the job ends"),
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_part_runs_once_and_the_first_error_wins() {
        for parts in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            for_each_part::<()>(parts, |i| {
                hits[i].fetch_add(1, SeqCst);
                Ok(())
            })
            .unwrap();
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{parts} parts");
        }
        let r = for_each_part(10, |i| if i == 3 || i == 7 { Err(i) } else { Ok(()) });
        assert_eq!(r, Err(3));
    }

    #[test]
    fn nested_and_concurrent_calls_complete() {
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        for_each_part::<()>(4, |_| {
                            for_each_part::<()>(3, |_| {
                                total.fetch_add(1, SeqCst);
                                Ok(())
                            })
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 200 * 4 * 3);
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_pool_survives() {
        let r = catch_unwind(|| {
            let _ = for_each_part::<()>(4, |i| {
                assert!(i != 2, "part 2 fails");
                Ok(())
            });
        });
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        for_each_part::<()>(8, |_| {
            n.fetch_add(1, SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(n.load(SeqCst), 8);
    }

    #[test]
    fn workers_wake_after_parking() {
        thread::sleep(SPIN * 3);
        let n = AtomicUsize::new(0);
        for_each_part::<()>(2, |_| {
            n.fetch_add(1, SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(n.load(SeqCst), 2);
    }
}
