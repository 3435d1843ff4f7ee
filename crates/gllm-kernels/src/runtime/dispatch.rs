//! Running a kernel's independent parts (row ranges, column panels, batch
//! elements) on the rayon pool. Generated code is single-threaded; this is
//! the one place that fans it out.

use std::sync::{Mutex, PoisonError};

/// Runs `work(0)`, …, `work(parts − 1)` — on the calling thread when there
/// is one part, else as rayon tasks — and returns the first error in part
/// order.
pub fn for_each_part<E: Send>(parts: usize, work: impl Fn(usize) -> Result<(), E> + Sync) -> Result<(), E> {
    if parts <= 1 {
        return (0..parts).try_for_each(&work);
    }
    let results: Vec<Mutex<Result<(), E>>> = (0..parts).map(|_| Mutex::new(Ok(()))).collect();
    rayon::scope(|s| {
        for (part, slot) in results.iter().enumerate() {
            let work = &work;
            s.spawn(move |_| *slot.lock().unwrap_or_else(PoisonError::into_inner) = work(part));
        }
    });
    results.into_iter().try_for_each(|r| r.into_inner().unwrap_or_else(PoisonError::into_inner))
}
