//! Tokens per second of the engine's recent steps, for the `/metrics` gauges.
//!
//! An average since start stops moving once a server has run a while and hides what it does
//! now (a slower mix of requests, a busier machine). The gauges instead cover the last
//! [`WINDOW`] steps that did the kind of work measured (ran prompt rows, or generated), in
//! a fixed ring: no allocation per step. Rates over wall time are what Prometheus' `rate()`
//! gives from the counters (`rgemma_tokens_generated_total`, `rgemma_*_seconds_total`).

/// Steps a gauge covers.
pub const WINDOW: usize = 64;

/// Tokens and nanoseconds of the last [`WINDOW`] recorded steps, and their sums.
#[derive(Debug)]
pub(super) struct RecentRate {
    tokens: [u64; WINDOW],
    ns: [u64; WINDOW],
    /// Where the next step goes (the oldest once the ring is full).
    next: usize,
    sum_tokens: u64,
    sum_ns: u64,
}

impl RecentRate {
    pub(super) fn new() -> RecentRate {
        RecentRate {
            tokens: [0; WINDOW],
            ns: [0; WINDOW],
            next: 0,
            sum_tokens: 0,
            sum_ns: 0,
        }
    }

    /// Adds one step of `tokens` tokens that took `ns` nanoseconds, dropping the oldest.
    pub(super) fn record(&mut self, tokens: u64, ns: u64) {
        let i = self.next;
        self.sum_tokens = self.sum_tokens - self.tokens[i] + tokens;
        self.sum_ns = self.sum_ns - self.ns[i] + ns;
        self.tokens[i] = tokens;
        self.ns[i] = ns;
        self.next = (i + 1) % WINDOW;
    }

    /// Tokens per second over the recorded steps (0 before any).
    pub(super) fn per_second(&self) -> f64 {
        if self.sum_ns == 0 {
            0.0
        } else {
            self.sum_tokens as f64 * 1e9 / self.sum_ns as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_the_last_window_of_steps() {
        let mut r = RecentRate::new();
        assert_eq!(r.per_second(), 0.0);
        // 10 tokens in 0.5 s, then 30 in 0.5 s: 40 tokens per second.
        r.record(10, 500_000_000);
        r.record(30, 500_000_000);
        assert_eq!(r.per_second(), 40.0);
        // A whole window of a slower phase replaces the faster one entirely.
        for _ in 0..WINDOW {
            r.record(1, 1_000_000_000);
        }
        assert_eq!(r.per_second(), 1.0);
        // One fast step moves it by one step's share.
        r.record(WINDOW as u64 + 1, 1_000_000_000);
        assert_eq!(r.per_second(), 2.0);
    }
}
