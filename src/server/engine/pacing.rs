//! How many prompt rows a step may carry beside generating streams (`--max-step-ms`).
//!
//! Every running stream waits for the whole step that carries its next token, and a step's
//! time grows with its rows: on 2 cores a 512-row prompt chunk of the 2B model takes about
//! 8 s, so a stream that shared steps with new prompts stalled for 8 s at a time. Hence,
//! while streams are generating, the other rows of a step (prompt chunks, closing rows) are
//! cut to what fits in the target time at the engine's measured rate. A step without
//! generating rows keeps the whole `-b` budget (nobody waits on it), and a floor of rows
//! keeps prompts moving when the streams alone fill the target. The rate adapts to the
//! machine and model: the same target means small chunks on a laptop and no cut at all on a
//! machine fast enough to run `-b` rows within it.

use std::time::Duration;

/// Rows a step beside streams always gets for prompts, whatever the target: new requests
/// still progress when the running streams alone take the whole target.
const MIN_EXTRA_ROWS: usize = 16;
/// Rows beside streams before the rate is known (the first steps of a server whose first
/// prompts were short).
const UNMEASURED_EXTRA_ROWS: usize = 64;
/// Steps with fewer rows are bound by streaming the weights, not by their rows: their time per
/// row says nothing about the cost of one more row.
const RATE_MIN_ROWS: usize = 32;
/// Weight of the newest step in the moving average of the time per row.
const RATE_SMOOTHING: f64 = 0.25;

/// Paces prompt chunks against a target step time.
#[derive(Debug)]
pub(super) struct StepPacer {
    /// `None`: no cut, every step may fill the batch.
    target: Option<Duration>,
    /// Seconds per row of recent steps with at least `RATE_MIN_ROWS` rows (a moving average;
    /// it includes the step's fixed cost, so it errs on the short side of the target).
    secs_per_row: Option<f64>,
}

impl StepPacer {
    pub(super) fn new(target: Option<Duration>) -> StepPacer {
        StepPacer {
            target,
            secs_per_row: None,
        }
    }

    /// How many rows beyond `gen_rows` generating ones the next step may take, out of the
    /// batch's `capacity`.
    pub(super) fn extra_rows(&self, gen_rows: usize, capacity: usize) -> usize {
        let free = capacity.saturating_sub(gen_rows);
        let Some(target) = self.target.filter(|_| gen_rows > 0) else {
            return free;
        };
        let fits = match self.secs_per_row {
            // `as usize` saturates: a rate of ~0 (a tiny model) means no cut.
            Some(secs) => ((target.as_secs_f64() / secs) as usize).saturating_sub(gen_rows),
            None => UNMEASURED_EXTRA_ROWS,
        };
        fits.max(MIN_EXTRA_ROWS).min(free)
    }

    /// Takes the time of a step of `rows` rows into the rate.
    pub(super) fn record(&mut self, rows: usize, elapsed: Duration) {
        if rows < RATE_MIN_ROWS {
            return;
        }
        let secs = elapsed.as_secs_f64() / rows as f64;
        self.secs_per_row = Some(match self.secs_per_row {
            None => secs,
            Some(old) => old + RATE_SMOOTHING * (secs - old),
        });
    }

    /// The measured seconds per row, if any (for `/metrics`).
    pub(super) fn secs_per_row(&self) -> Option<f64> {
        self.secs_per_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_streams_or_target_a_step_fills_the_batch() {
        let mut p = StepPacer::new(Some(1000 * MS));
        p.record(512, 8000 * MS);
        assert_eq!(p.extra_rows(0, 512), 512, "no stream waits on this step");
        let off = StepPacer::new(None);
        assert_eq!(off.extra_rows(10, 512), 502);
    }

    #[test]
    fn beside_streams_the_prompt_rows_fit_the_target() {
        let mut p = StepPacer::new(Some(1000 * MS));
        assert_eq!(
            p.extra_rows(4, 512),
            UNMEASURED_EXTRA_ROWS,
            "rate not known yet"
        );
        p.record(512, 8192 * MS); // 16 ms per row: 62 rows per second
        assert_eq!(p.extra_rows(4, 512), 62 - 4);
        assert_eq!(p.extra_rows(32, 512), 62 - 32);
        // Streams alone fill the target: prompts still get the floor.
        assert_eq!(p.extra_rows(100, 512), MIN_EXTRA_ROWS);
        // Never more than the batch holds.
        assert_eq!(p.extra_rows(500, 512), 12);
        assert_eq!(p.extra_rows(512, 512), 0);
        // A faster machine: the cut loosens, up to no cut at all.
        for _ in 0..40 {
            p.record(256, 256 * MS);
        }
        assert_eq!(p.extra_rows(4, 512), 508);
    }

    #[test]
    fn small_steps_do_not_move_the_rate() {
        let mut p = StepPacer::new(Some(1000 * MS));
        p.record(64, 1024 * MS);
        // A one-row step costs the whole weight stream: 150 ms per row would be wrong.
        p.record(1, 150 * MS);
        p.record(RATE_MIN_ROWS - 1, 2000 * MS);
        assert_eq!(p.secs_per_row(), Some(0.016));
        p.record(64, 2048 * MS);
        assert!((p.secs_per_row().unwrap() - 0.02).abs() < 1e-12);
    }
}
