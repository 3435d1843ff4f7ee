//! Where the time goes: optional wall-time accounting per compiled group.
//!
//! Off by default (one relaxed atomic load per compiled-layer run when off). When on,
//! every group a [`crate::codegen::layer::CompiledLayer`] runs adds its wall
//! time under its label — the group's nodes, as `explain` names them — and
//! callers may add their own (the front end's attention). A compiled part
//! shared by every layer of a model sums over the layers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the accounting on or off (process-wide).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether groups are being timed.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The time accounted to one label.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupTime {
    pub label: String,
    /// Runs of the group (or caller's span) under this label.
    pub calls: u64,
    pub total: Duration,
}

fn table() -> &'static Mutex<HashMap<String, (u64, Duration)>> {
    static TABLE: OnceLock<Mutex<HashMap<String, (u64, Duration)>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Adds one run of `elapsed` under `label` (when enabled).
pub fn record(label: &str, elapsed: Duration) {
    if !enabled() {
        return;
    }
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    match t.get_mut(label) {
        Some((calls, total)) => {
            *calls += 1;
            *total += elapsed;
        }
        None => {
            t.insert(label.to_string(), (1, elapsed));
        }
    }
}

/// Everything recorded since the last call, longest first; the table is
/// emptied.
pub fn take() -> Vec<GroupTime> {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<GroupTime> =
        t.drain().map(|(label, (calls, total))| GroupTime { label, calls, total }).collect();
    v.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.label.cmp(&b.label)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_when_enabled_and_take_empties() {
        // One test owns the process-wide switch in this module's tests.
        set_enabled(false);
        record("off", Duration::from_micros(5));
        set_enabled(true);
        record("b", Duration::from_micros(3));
        record("a", Duration::from_micros(10));
        record("b", Duration::from_micros(4));
        set_enabled(false);
        let got = take();
        assert_eq!(
            got,
            vec![
                GroupTime { label: "a".into(), calls: 1, total: Duration::from_micros(10) },
                GroupTime { label: "b".into(), calls: 2, total: Duration::from_micros(7) },
            ]
        );
        assert!(take().is_empty());
    }
}
