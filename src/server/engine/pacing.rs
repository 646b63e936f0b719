//! When prompt rows run beside generating streams: in bursts (the default,
//! [`PromptBursts`]) or paced into every step (`--max-step-ms`, [`StepPacer`]).
//!
//! Every running stream waits for the whole step that carries its next token, and a step's
//! time grows with its rows: on 2 cores a 512-row prompt chunk of the 2B model takes about
//! 4-8 s, where a step of 32 streams alone takes about 0.4 s. Prompts are work that must be
//! done (throughput is set by the total), so the choice is only where the streams wait.
//!
//! Bursts: streams run in steps of their own; waiting prompts run together in prompt-only
//! steps once every running stream has generated `--burst-interval` tokens since its
//! previous wait. Each stream then waits at most once per interval (32: under 5 % of its
//! gaps, so its median and 95th-percentile gaps are those of pure decode steps), a prompt
//! runs at the speed of a prompt, and new requests get their first token soonest. The price
//! is the length of that one wait: every prompt that came in meanwhile.
//!
//! Pacing: while streams are generating, the other rows of a step (prompt chunks, closing
//! rows) are limited to an allowance that is steered so that such steps take the target
//! time: after each one, the allowance is scaled by target / measured time (a step costs a
//! fixed part, the streams' rows and the allowance's rows, so this converges on the allowance
//! that fills the target without a model of those costs, and follows them as streams come
//! and go). It starts from the measured seconds per row of large steps. A step without
//! generating rows keeps the whole `-b` budget (nobody waits on it), and a floor of rows
//! keeps prompts moving when the streams alone take the target. No stream waits much longer
//! than the target, but every step is that long while prompts are read.

use std::time::Duration;

/// Rows a step beside streams always gets for prompts, whatever the target: new requests
/// still progress when the running streams alone take the whole target.
const MIN_EXTRA_ROWS: usize = 16;
/// Rows beside streams before anything is measured (the first steps of a server whose first
/// prompts were short).
const UNMEASURED_EXTRA_ROWS: usize = 64;
/// Steps with fewer rows are bound by streaming the weights, not by their rows: their time per
/// row says nothing about the cost of one more row.
const RATE_MIN_ROWS: usize = 32;
/// Weight of the newest step in the moving average of the time per row.
const RATE_SMOOTHING: f64 = 0.25;
/// Most the allowance grows after one step (a step far under the target, e.g. while the
/// cache was cold, must not make the next one overshoot it by as much).
const MAX_GROWTH: f64 = 2.0;

/// What a step of the burst policy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BurstStep {
    /// Streams only (and closing rows): prompts wait.
    Streams,
    /// Prompt-only: the prompts of requests admitted before order `cover` run; streams wait.
    Burst { cover: u64 },
}

/// The burst policy's state: whether a burst is under way and which requests it covers.
#[derive(Debug)]
pub(super) struct PromptBursts {
    /// Tokens each running stream generates between two waits.
    interval: usize,
    /// Admission orders below this belong to the burst under way.
    cover: Option<u64>,
}

impl PromptBursts {
    pub(super) fn new(interval: usize) -> PromptBursts {
        PromptBursts {
            interval,
            cover: None,
        }
    }

    /// Decides the next step. `prefilling` lists the admission orders of the requests still
    /// reading their prompt, `shortest_run` the fewest tokens any generating stream has made
    /// since its last wait (`None`: no stream), `next_order` the order the next admitted
    /// request will get. When `ended`, a burst just ended and the streams start new runs
    /// (the caller resets them to 0 before the next call).
    pub(super) fn next_step(
        &mut self,
        prefilling: impl Iterator<Item = u64> + Clone,
        shortest_run: Option<usize>,
        next_order: u64,
    ) -> Decision {
        let mut ended = false;
        if let Some(cover) = self.cover {
            if prefilling.clone().any(|order| order < cover) {
                let step = BurstStep::Burst { cover };
                return Decision {
                    step,
                    started: false,
                    ended,
                };
            }
            self.cover = None;
            ended = true;
        }
        let runs_done = match shortest_run {
            None => true,
            // The runs restart at 0 when a burst ends.
            Some(_) if ended => self.interval == 0,
            Some(run) => run >= self.interval,
        };
        if runs_done && prefilling.clone().next().is_some() {
            self.cover = Some(next_order);
            let step = BurstStep::Burst { cover: next_order };
            return Decision {
                step,
                started: true,
                ended,
            };
        }
        let step = BurstStep::Streams;
        Decision {
            step,
            started: false,
            ended,
        }
    }
}

/// [`PromptBursts::next_step`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Decision {
    pub step: BurstStep,
    /// The step starts a burst.
    pub started: bool,
    /// A burst ended before this step: every stream starts a new run.
    pub ended: bool,
}

/// Paces prompt chunks against a target step time.
#[derive(Debug)]
pub(super) struct StepPacer {
    /// `None`: no cut, every step may fill the batch.
    target: Option<Duration>,
    /// Seconds per row of recent steps with at least `RATE_MIN_ROWS` rows (a moving average;
    /// it includes the step's fixed cost): the first guess of the allowance.
    secs_per_row: Option<f64>,
    /// Rows beside streams that fit the target, steered by the steps that used them.
    allowance: Option<f64>,
}

impl StepPacer {
    pub(super) fn new(target: Option<Duration>) -> StepPacer {
        StepPacer {
            target,
            secs_per_row: None,
            allowance: None,
        }
    }

    /// How many rows beyond `gen_rows` generating ones the next step may take, out of the
    /// batch's `capacity`.
    pub(super) fn extra_rows(&self, gen_rows: usize, capacity: usize) -> usize {
        let free = capacity.saturating_sub(gen_rows);
        if self.target.is_none() || gen_rows == 0 {
            return free;
        }
        // `as usize` saturates: a huge allowance (a fast machine) means no cut.
        let rows = self
            .allowance
            .map_or_else(|| self.first_guess(gen_rows), |a| a as usize);
        rows.max(MIN_EXTRA_ROWS).min(free)
    }

    /// The allowance before any paced step: what the rate says fits beside `gen_rows`.
    fn first_guess(&self, gen_rows: usize) -> usize {
        match (self.target, self.secs_per_row) {
            (Some(target), Some(secs)) => {
                ((target.as_secs_f64() / secs) as usize).saturating_sub(gen_rows)
            }
            _ => UNMEASURED_EXTRA_ROWS,
        }
    }

    /// Takes a step of `gen_rows` generating and `other_rows` other rows that took `elapsed`
    /// into the rate and, if streams waited on it, into the allowance.
    pub(super) fn record(&mut self, gen_rows: usize, other_rows: usize, elapsed: Duration) {
        let rows = gen_rows + other_rows;
        let secs = elapsed.as_secs_f64();
        if rows >= RATE_MIN_ROWS {
            let per_row = secs / rows as f64;
            self.secs_per_row = Some(match self.secs_per_row {
                None => per_row,
                Some(old) => old + RATE_SMOOTHING * (per_row - old),
            });
        }
        let Some(target) = self.target else { return };
        if gen_rows == 0 || other_rows == 0 || secs <= 0.0 {
            return;
        }
        let allowed = self
            .allowance
            .unwrap_or_else(|| self.first_guess(gen_rows) as f64);
        let scaled = other_rows as f64 * (target.as_secs_f64() / secs).min(MAX_GROWTH);
        let over = secs > target.as_secs_f64();
        if other_rows >= allowed as usize {
            self.allowance = Some(scaled.max(MIN_EXTRA_ROWS as f64));
        } else if over {
            // Fewer rows than allowed (the prompts ran out) and still over the target.
            self.allowance = Some(scaled.min(allowed).max(MIN_EXTRA_ROWS as f64));
        }
        // Fewer rows than allowed within the target says nothing about the allowance.
    }

    /// The measured seconds per row, if any (for `/metrics`).
    pub(super) fn secs_per_row(&self) -> Option<f64> {
        self.secs_per_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small world for the burst policy: streams (tokens since their last wait) and
    /// requests reading their prompt (admission order, rows left), one step at a time.
    struct World {
        bursts: PromptBursts,
        streams: Vec<usize>,
        prompts: Vec<(u64, usize)>,
        next_order: u64,
        log: Vec<BurstStep>,
    }

    impl World {
        fn new(interval: usize) -> World {
            World {
                bursts: PromptBursts::new(interval),
                streams: Vec::new(),
                prompts: Vec::new(),
                next_order: 0,
                log: Vec::new(),
            }
        }
        fn arrive(&mut self, rows: usize) {
            self.prompts.push((self.next_order, rows));
            self.next_order += 1;
        }
        /// One step with `rows` prompt rows per burst step.
        fn step(&mut self, rows: usize) -> BurstStep {
            let orders: Vec<u64> = self.prompts.iter().map(|p| p.0).collect();
            let Decision { step, ended, .. } = self.bursts.next_step(
                orders.iter().copied(),
                self.streams.iter().copied().min(),
                self.next_order,
            );
            if ended {
                self.streams.iter_mut().for_each(|r| *r = 0);
            }
            match step {
                BurstStep::Streams => self.streams.iter_mut().for_each(|r| *r += 1),
                BurstStep::Burst { cover } => {
                    let mut left = rows;
                    for p in self.prompts.iter_mut().filter(|p| p.0 < cover) {
                        let k = p.1.min(left);
                        p.1 -= k;
                        left -= k;
                    }
                    // A finished prompt becomes a stream with a fresh run.
                    let done = self.prompts.iter().filter(|p| p.1 == 0).count();
                    self.prompts.retain(|p| p.1 > 0);
                    self.streams.extend(std::iter::repeat_n(0, done));
                }
            }
            self.log.push(step);
            step
        }
    }

    #[test]
    fn without_streams_prompts_run_at_once_and_to_their_end() {
        let mut w = World::new(32);
        w.arrive(10);
        w.arrive(10);
        assert_eq!(w.step(8), BurstStep::Burst { cover: 2 });
        // A request admitted during the burst is not part of it.
        w.arrive(10);
        assert_eq!(w.step(8), BurstStep::Burst { cover: 2 });
        assert_eq!(w.step(8), BurstStep::Burst { cover: 2 });
        assert_eq!(w.streams, vec![0, 0], "both prompts in");
        // The third waits for the streams' runs.
        assert_eq!(w.step(8), BurstStep::Streams);
        assert_eq!(w.prompts.len(), 1);
    }

    #[test]
    fn every_stream_runs_the_interval_between_two_waits() {
        let interval = 5;
        let mut w = World::new(interval);
        w.arrive(4);
        w.step(8);
        // Requests keep arriving every other step; streams never wait twice within
        // `interval` of their own tokens, and prompts never wait for more than that.
        let mut longest_prompt_wait = 0;
        let mut waited = 0;
        for i in 0..200 {
            if i % 2 == 0 && w.streams.len() < 20 {
                w.arrive(3);
            }
            let before = w.streams.clone();
            let prompts_waiting = !w.prompts.is_empty();
            let was_bursting = w.bursts.cover.is_some();
            let step = w.step(4);
            if let BurstStep::Burst { .. } = step {
                // A burst starts only when every stream has run the whole interval.
                if !was_bursting {
                    assert!(
                        before.iter().all(|&r| r >= interval),
                        "step {i}: a burst cut runs {before:?}"
                    );
                }
                waited = 0;
            } else if prompts_waiting {
                waited += 1;
                longest_prompt_wait = longest_prompt_wait.max(waited);
            }
        }
        assert!(w.log.iter().any(|s| matches!(s, BurstStep::Burst { .. })));
        assert!(longest_prompt_wait <= interval, "{longest_prompt_wait}");
    }

    #[test]
    fn interval_zero_runs_waiting_prompts_first() {
        let mut w = World::new(0);
        w.arrive(4);
        assert!(matches!(w.step(4), BurstStep::Burst { .. }));
        assert_eq!(w.step(4), BurstStep::Streams);
        w.arrive(8);
        assert!(matches!(w.step(4), BurstStep::Burst { .. }));
        assert!(matches!(w.step(4), BurstStep::Burst { .. }));
        assert_eq!(w.step(4), BurstStep::Streams);
        assert_eq!(w.streams.len(), 2);
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_streams_or_target_a_step_fills_the_batch() {
        let mut p = StepPacer::new(Some(1000 * MS));
        p.record(0, 512, 8000 * MS);
        assert_eq!(p.extra_rows(0, 512), 512, "no stream waits on this step");
        let off = StepPacer::new(None);
        assert_eq!(off.extra_rows(10, 512), 502);
    }

    #[test]
    fn the_first_allowance_comes_from_the_rate() {
        let mut p = StepPacer::new(Some(1000 * MS));
        assert_eq!(
            p.extra_rows(4, 512),
            UNMEASURED_EXTRA_ROWS,
            "nothing measured yet"
        );
        p.record(0, 512, 8192 * MS); // 16 ms per row: 62 rows per second
        assert_eq!(p.extra_rows(4, 512), 62 - 4);
        assert_eq!(p.extra_rows(32, 512), 62 - 32);
        // Streams alone fill the target: prompts still get the floor.
        assert_eq!(p.extra_rows(100, 512), MIN_EXTRA_ROWS);
        // Never more than the batch holds.
        assert_eq!(p.extra_rows(500, 512), 12);
        assert_eq!(p.extra_rows(512, 512), 0);
    }

    #[test]
    fn small_steps_do_not_move_the_rate() {
        let mut p = StepPacer::new(None);
        p.record(0, 64, 1024 * MS);
        // A one-row step costs the whole weight stream: 150 ms per row would be wrong.
        p.record(1, 0, 150 * MS);
        p.record(RATE_MIN_ROWS - 1, 0, 2000 * MS);
        assert_eq!(p.secs_per_row(), Some(0.016));
        p.record(64, 0, 2048 * MS);
        assert!((p.secs_per_row().unwrap() - 0.02).abs() < 1e-12);
    }

    /// Against a machine whose step costs 120 ms + 22 ms per stream row + 16 ms per prompt
    /// row, the paced steps settle at the target, and follow it as streams join.
    #[test]
    fn the_allowance_settles_where_steps_take_the_target() {
        let cost = |gen: usize, other: usize| {
            Duration::from_secs_f64(0.120 + 0.022 * gen as f64 + 0.016 * other as f64)
        };
        let mut p = StepPacer::new(Some(1000 * MS));
        p.record(0, 512, cost(0, 512)); // a prompt alone: the rate
        for gen in [1usize, 8, 20] {
            let mut t = Duration::ZERO;
            for _ in 0..30 {
                let other = p.extra_rows(gen, 512);
                t = cost(gen, other);
                p.record(gen, other, t);
            }
            let ms = t.as_secs_f64() * 1e3;
            assert!(
                (975.0..=1005.0).contains(&ms),
                "{gen} streams: steps of {ms:.0} ms"
            );
        }
        // More streams than the target holds: the floor.
        for _ in 0..30 {
            let other = p.extra_rows(60, 512);
            p.record(60, other, cost(60, other));
        }
        assert_eq!(p.extra_rows(60, 512), MIN_EXTRA_ROWS);
    }

    #[test]
    fn a_step_under_its_allowance_and_the_target_keeps_the_allowance() {
        let mut p = StepPacer::new(Some(1000 * MS));
        p.record(0, 512, 8192 * MS);
        assert_eq!(p.extra_rows(2, 512), 60);
        // The last 10 rows of a prompt, quickly: no reason to shrink to 10 · 2.
        p.record(2, 10, 300 * MS);
        assert_eq!(p.extra_rows(2, 512), 60);
        // The allowance used and over the target: it shrinks.
        p.record(2, 60, 2000 * MS);
        assert_eq!(p.extra_rows(2, 512), 30);
    }
}
