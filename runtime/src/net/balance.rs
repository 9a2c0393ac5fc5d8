//! [`Balancer`]: round robin over a group of servers, skipping those whose
//! connect failed recently, for the TCP and HTTP proxies alike.

use std::time::Instant;

/// One group's round robin and the servers marked failed.
#[derive(Debug, Clone)]
pub struct Balancer {
    next: usize,
    failed_until: Vec<Option<Instant>>,
}

/// One request's (or connection's) walk over a group: where it started and
/// how many servers it has used up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Walk {
    start: usize,
    tried: usize,
}

impl Walk {
    /// Give the last server back: the next [`Balancer::pick`] returns it
    /// again (a retry on the same server).
    pub fn again(&mut self) {
        self.tried = self.tried.saturating_sub(1);
    }
}

impl Balancer {
    /// A balancer over `n` servers.
    pub fn new(n: usize) -> Balancer {
        Balancer { next: 0, failed_until: vec![None; n] }
    }

    /// Start a walk at the next server in round-robin order.
    pub fn walk(&mut self) -> Walk {
        let n = self.failed_until.len().max(1);
        let start = self.next;
        self.next = (self.next + 1) % n;
        Walk { start, tried: 0 }
    }

    /// The next server of `walk`: servers marked failed are skipped while an
    /// unmarked one is left to try; `None` when every server was taken.
    pub fn pick(&self, walk: &mut Walk, now: Instant) -> Option<usize> {
        let n = self.failed_until.len();
        let ok = |i: usize| self.failed_until[i].is_none_or(|u| u <= now);
        let healthy_left = (walk.tried..n).any(|k| ok((walk.start + k) % n));
        while walk.tried < n {
            let i = (walk.start + walk.tried) % n;
            walk.tried += 1;
            if !healthy_left || ok(i) {
                return Some(i);
            }
        }
        None
    }

    /// Server `i` failed: skip it until `until`.
    pub fn mark_failed(&mut self, i: usize, until: Instant) {
        if let Some(f) = self.failed_until.get_mut(i) {
            *f = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_robin_skips_failed_servers_while_healthy_ones_remain() {
        let now = Instant::now();
        let mut b = Balancer::new(3);
        let mut w = b.walk();
        assert_eq!((b.pick(&mut w, now), b.pick(&mut w, now)), (Some(0), Some(1)));
        let mut w = b.walk();
        assert_eq!(b.pick(&mut w, now), Some(1), "the next walk starts one further");
        b.mark_failed(2, now + Duration::from_secs(5));
        assert_eq!(b.pick(&mut w, now), Some(0), "server 2 is skipped while 0 is left");
        assert_eq!(b.pick(&mut w, now), None);
        let mut w = b.walk();
        assert_eq!(b.pick(&mut w, now), Some(0), "a walk from server 2 skips it");
        w.again();
        assert_eq!(b.pick(&mut w, now), Some(0), "again gives the same server back");
        assert_eq!((b.pick(&mut w, now), b.pick(&mut w, now)), (Some(1), None));
        let mut one = Balancer::new(1);
        one.mark_failed(0, now + Duration::from_secs(5));
        let mut w = one.walk();
        assert_eq!(one.pick(&mut w, now), Some(0), "only failed servers left: tried anyway");
    }
}
