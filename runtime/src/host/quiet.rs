//! Rate-limited failure logs: a module that fails on every request must
//! not flood the log. Per module (by name, across its versions), the first
//! [`BURST`] failures of each [`WINDOW`] are logged; the rest are counted,
//! and the next failure after the window logs one summary line with that
//! count before its own. Counters and metrics are not affected: they stay
//! exact; only log lines are left out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failures logged per module per window.
pub const BURST: u64 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

struct Window {
    start: Instant,
    seen: u64,
}

static WINDOWS: Mutex<Option<HashMap<String, Window>>> = Mutex::new(None);

/// A failure of `module`: `log` runs when this one is to be logged (after a
/// summary line of the previous window's left-out failures, if any).
pub fn failure(module: &str, log: impl FnOnce()) {
    let now = Instant::now();
    let (seen, left_out) = {
        let mut guard = WINDOWS.lock();
        let map = guard.get_or_insert_with(HashMap::new);
        if !map.contains_key(module) {
            map.insert(module.to_owned(), Window { start: now, seen: 0 });
        }
        let w = map.get_mut(module).expect("inserted above");
        let mut left_out = 0;
        if now.duration_since(w.start) >= WINDOW {
            left_out = w.seen.saturating_sub(BURST);
            *w = Window { start: now, seen: 0 };
        }
        w.seen += 1;
        (w.seen, left_out)
    };
    if left_out > 0 {
        tracing::warn!(
            module,
            left_out,
            "{left_out} more failures of module {module} were not logged in {WINDOW:?} (the metrics count them all)"
        );
    }
    if seen <= BURST {
        log();
    }
    if seen == BURST {
        tracing::warn!(
            module,
            "module {module} keeps failing: further failures in the next {WINDOW:?} are counted, not logged"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence() {
        let mut logged = 0;
        for _ in 0..100 {
            failure("quiet-test-module", || logged += 1);
        }
        assert_eq!(logged, BURST);
    }
}
