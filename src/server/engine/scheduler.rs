//! Continuous batching over one [`BatchContext`].
//!
//! Every request ("task") holds one sequence slot per choice. Each step builds one batch:
//! 1. one row for every generating choice (the token it sampled last step), so running
//!    streams advance by one token per step whatever else happens;
//! 2. the few rows that close a finished chat answer (`<end_of_turn>\n`, for its snapshot;
//!    at most a quarter of the budget);
//! 3. the rest of the row budget goes to prompts still being run, oldest request first, in
//!    chunks of up to `-b` rows.
//!
//! Which steps carry prompts is the prompt policy's (`pacing.rs`): by default prompts run in
//! bursts of prompt-only steps, between which every running stream generates at least
//! `--burst-interval` tokens in steps of their own (1 is then skipped during a burst, and 3
//! left out between bursts); with `--max-step-ms`, every step carries the prompt rows that
//! fit in that time beside the streams.
//!
//! After the decode, every choice that got logits samples its next token; a prompt that is
//! complete is snapshotted for the prompt cache, forked into the task's other slots
//! (`n` > 1) and sampled. Requests join (a free slot for each of their choices, queue
//! order; a chat turn whose previous answer is still being closed for the cache waits the
//! step or two that takes) and leave between steps; a request whose client has gone away (its event channel
//! closed) or whose time is up ends at the next step. The batch buffers are allocated once.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use super::cache::PromptCache;
use super::logprobs::LogprobScratch;
use super::pacing::{BurstStep, Decision, PromptBursts, StepPacer};
use super::rates::RecentRate;
use super::{Event, FinishReason, Job, PromptKind, Shared, Usage};
use crate::chat::ChatTemplate;
use crate::generate::TextStream;
use crate::model::{BatchContext, BatchRow};
use crate::sampling::Sampler;
use crate::server::error::ApiError;
use crate::server::PromptPolicy;
use crate::tokenizer::Tokenizer;

/// Rows a step of streams may carry besides them between prompt bursts, for closing tails of
/// finished chat answers (usually 2 tokens; a re-run answer takes a few steps more).
const CLOSING_ROWS_BESIDE_STREAMS: usize = 16;

/// Why a choice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    StopToken,
    StopString,
    MaxTokens,
    Timeout,
}

impl Cause {
    fn reason(self) -> FinishReason {
        match self {
            Cause::StopToken | Cause::StopString => FinishReason::Stop,
            Cause::MaxTokens | Cause::Timeout => FinishReason::Length,
        }
    }
}

enum Phase {
    /// `to_feed` holds the token sampled last step (fed in the next batch).
    Generating,
    /// Finished; `tail` is being fed so that the state can be saved under `key`.
    Closing {
        tail: Vec<u32>,
        fed: usize,
        key: Vec<u32>,
    },
    /// Finished and its slot given back.
    Released,
}

/// One choice of a request: its slot, sampler and text.
struct Choice {
    slot: usize,
    sampler: Sampler,
    text: TextStream,
    generated: Vec<u32>,
    /// The text sent so far (for the chat answer check).
    content: String,
    to_feed: Option<u32>,
    phase: Phase,
    /// `generated.len()` when its current run began (its first token, or the end of the
    /// last prompt burst it waited for).
    run_start: usize,
}

/// An admitted request.
struct Task {
    job: Job,
    /// Admission order: prompts run oldest first.
    order: u64,
    /// One per choice; `slots[0]` runs the prompt.
    slots: Vec<usize>,
    /// Prompt tokens in `slots[0]` (restored or run).
    fed: usize,
    cached: usize,
    /// The whole prompt came from the cache (nothing new to snapshot).
    exact_hit: bool,
    /// Empty until the prompt is in.
    choices: Vec<Choice>,
    done_sent: bool,
}

impl Task {
    fn prefilling(&self) -> bool {
        self.fed < self.job.prompt.len()
    }

    fn send(&self, event: Event) {
        // A closed channel is noticed by the next step's check.
        let _ = self.job.events.send(event);
    }
}

/// What a row of the current batch is for.
#[derive(Clone, Copy, Debug)]
enum RowMeta {
    /// The token of generating choice `choice` of the task at `key`: sample from its logits.
    Generated { key: usize, choice: usize },
    /// The prompt's last token: the prompt of the task at `key` is in.
    PromptEnd { key: usize },
    /// A prompt or closing row with nothing to do afterwards.
    Plain { key: usize },
}

pub(super) struct Scheduler<'t> {
    ctx: BatchContext,
    tok: Option<&'t Tokenizer>,
    template: Option<&'t ChatTemplate>,
    /// End-of-generation tokens: EOS and `<end_of_turn>`.
    stop_tokens: Vec<u32>,
    rx: Receiver<Job>,
    /// The request channel is closed: finish what is there, then stop.
    closing: bool,
    shared: &'t Shared,
    cache: PromptCache,
    waiting: VecDeque<Job>,
    /// The admitted requests, at most one per slot (each holds at least one); a task's
    /// index here is its key.
    tasks: Vec<Option<Task>>,
    /// The key of the task holding each slot.
    slot_owner: Vec<Option<usize>>,
    next_order: u64,
    rows: Vec<BatchRow>,
    meta: Vec<RowMeta>,
    prefill_order: Vec<(u64, usize)>,
    logprobs: LogprobScratch,
    /// Measures the seconds per row; paces prompts under `PromptPolicy::Paced`.
    pacer: StepPacer,
    /// `PromptPolicy::Bursts`' state; `None` when paced.
    bursts: Option<PromptBursts>,
    /// Prompt tokens and generated tokens per second of the recent steps that did each.
    prompt_rate: RecentRate,
    generation_rate: RecentRate,
}

impl<'t> Scheduler<'t> {
    pub(super) fn new(
        ctx: BatchContext,
        tok: Option<&'t Tokenizer>,
        template: Option<&'t ChatTemplate>,
        rx: Receiver<Job>,
        shared: &'t Shared,
        cache_bytes: usize,
        policy: PromptPolicy,
    ) -> Scheduler<'t> {
        let n_seq = ctx.n_seq_max();
        let capacity = ctx.batch_capacity();
        let mut stop_tokens = Vec::new();
        if let Some(tok) = tok {
            stop_tokens.push(tok.eos());
            stop_tokens.extend(tok.token_id("<end_of_turn>"));
        }
        let m = &shared.metrics;
        m.slots_total.store(n_seq as u64, Relaxed);
        m.cache_limit_bytes.store(cache_bytes as u64, Relaxed);
        Scheduler {
            ctx,
            tok,
            template,
            stop_tokens,
            rx,
            closing: false,
            shared,
            cache: PromptCache::new(cache_bytes),
            waiting: VecDeque::new(),
            tasks: (0..n_seq).map(|_| None).collect(),
            slot_owner: vec![None; n_seq],
            next_order: 0,
            rows: Vec::with_capacity(capacity),
            meta: Vec::with_capacity(capacity),
            prefill_order: Vec::with_capacity(n_seq),
            logprobs: LogprobScratch::default(),
            pacer: StepPacer::new(match policy {
                PromptPolicy::Paced { max_step } => Some(max_step),
                PromptPolicy::Bursts { .. } => None,
            }),
            bursts: match policy {
                PromptPolicy::Bursts { interval } => Some(PromptBursts::new(interval)),
                PromptPolicy::Paced { .. } => None,
            },
            prompt_rate: RecentRate::new(),
            generation_rate: RecentRate::new(),
        }
    }

    /// Serves until the request channel is closed and every request is done.
    pub(super) fn run(&mut self) {
        loop {
            if !self.intake() {
                return;
            }
            let step = catch_unwind(AssertUnwindSafe(|| self.step()));
            if step.is_err() {
                // A bug hit one step: fail what was running, keep serving.
                self.fail_all("internal error in the engine (panic); see the server log");
                self.ctx.clear_all();
            }
            self.publish_gauges();
        }
    }

    /// Moves new jobs into the queue; blocks while there is nothing to do. False when the
    /// channel is closed and nothing is left.
    fn intake(&mut self) -> bool {
        let idle = self.waiting.is_empty() && self.tasks.iter().all(Option::is_none);
        if idle {
            if self.closing {
                return false;
            }
            match self.rx.recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(_) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        true
    }

    /// One scheduling step: admit, expire, batch, decode, sample.
    fn step(&mut self) {
        // A copy of the shared reference: `m` does not hold a borrow of `self`.
        let shared = self.shared;
        let m = &shared.metrics;
        // This step's tokens, for the recent rates: the prompt rows are counted while the
        // batch is built, the sampled tokens after the decode.
        let (prompt0, generated0) = (
            m.prompt_tokens.load(Relaxed),
            m.tokens_generated.load(Relaxed),
        );
        self.admit();
        self.expire();
        if !self.build_batch() {
            return;
        }
        let t0 = Instant::now();
        let result = self.ctx.decode(&self.rows);
        let elapsed = t0.elapsed();
        let ns = elapsed.as_nanos() as u64;
        m.decode_steps.fetch_add(1, Relaxed);
        let gen_rows = self
            .meta
            .iter()
            .filter(|r| matches!(r, RowMeta::Generated { .. }))
            .count();
        // Prompt chunks and closing rows.
        let other_rows = self.rows.len() - gen_rows;
        if other_rows > 0 {
            m.prompt_ns.fetch_add(ns, Relaxed);
        }
        if gen_rows > 0 {
            m.generation_ns.fetch_add(ns, Relaxed);
        }
        match result {
            Ok(()) => {
                self.pacer.record(gen_rows, other_rows, elapsed);
                self.after_decode();
                if other_rows > 0 {
                    let prompt = m.prompt_tokens.load(Relaxed) - prompt0;
                    self.prompt_rate.record(prompt, ns);
                }
                if gen_rows > 0 {
                    let generated = m.tokens_generated.load(Relaxed) - generated0;
                    self.generation_rate.record(generated, ns);
                }
            }
            Err(e) => {
                eprintln!("rg-server: decode failed: {e}");
                self.fail_batch(&format!("the engine failed: {e}"));
            }
        }
    }

    /// Gives queued jobs their slots, in queue order; drops those whose client left and
    /// answers 503 to those whose time ran out while waiting.
    fn admit(&mut self) {
        let now = Instant::now();
        let queued = &self.shared.metrics.queue_length;
        self.waiting.retain(|job| {
            let gone = job.events.is_closed();
            let late = job.deadline.is_some_and(|d| now >= d);
            if late && !gone {
                let _ = job.events.send(Event::Error(ApiError::busy(
                    "timed out waiting for a free slot (--timeout)",
                )));
            }
            if gone || late {
                queued.fetch_sub(1, SeqCst);
            }
            !(gone || late)
        });
        while let Some(job) = self.waiting.front() {
            if self.closing_prefix_of(&job.prompt) {
                // Its snapshot is one or two steps away (the next turn of a chat sent right
                // after the answer): wait for it rather than run the answer again.
                break;
            }
            let free = self.slot_owner.iter().filter(|o| o.is_none()).count();
            if free < job.params.n {
                break;
            }
            let job = self.waiting.pop_front().expect("front exists");
            self.shared.metrics.queue_length.fetch_sub(1, SeqCst);
            self.start_task(job);
        }
    }

    /// Whether an answer being closed for the cache will leave a snapshot that `prompt`
    /// starts with.
    fn closing_prefix_of(&self, prompt: &[u32]) -> bool {
        self.tasks
            .iter()
            .flatten()
            .flat_map(|t| &t.choices)
            .any(|ch| matches!(&ch.phase, Phase::Closing { key, .. } if prompt.starts_with(key)))
    }

    /// Takes slots for `job`, resumes it from the longest cached snapshot of its prompt, and
    /// starts sampling at once when the snapshot covers the whole prompt.
    fn start_task(&mut self, job: Job) {
        let slots: Vec<usize> = (0..self.slot_owner.len())
            .filter(|&s| self.slot_owner[s].is_none())
            .take(job.params.n)
            .collect();
        // Every task holds at least one slot, so with a slot free an entry is free too.
        let key = self
            .tasks
            .iter()
            .position(Option::is_none)
            .expect("fewer tasks than slots");
        let first = slots[0];
        for &s in &slots {
            self.slot_owner[s] = Some(key);
        }
        let m = &self.shared.metrics;
        let mut fed = 0;
        if self.cache.enabled() {
            match self.cache.lookup(&job.prompt) {
                Some(hit) => match self.ctx.seq_load(first, hit.state) {
                    Ok(()) => {
                        fed = hit.len;
                        m.cache_hits.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        eprintln!(
                            "rg-server: a cached state did not load ({e}); running the prompt"
                        );
                        m.cache_misses.fetch_add(1, Relaxed);
                    }
                },
                None => {
                    m.cache_misses.fetch_add(1, Relaxed);
                }
            }
        }
        if fed == 0 {
            if let Err(e) = self.ctx.seq_clear(first) {
                let _ = job
                    .events
                    .send(Event::Error(ApiError::internal(e.to_string())));
                self.release_slots(&slots);
                return;
            }
        }
        m.prompt_tokens_cached.fetch_add(fed as u64, Relaxed);
        let exact_hit = fed == job.prompt.len();
        self.tasks[key] = Some(Task {
            job,
            order: self.next_order,
            slots,
            fed,
            cached: fed,
            exact_hit,
            choices: Vec::new(),
            done_sent: false,
        });
        self.next_order += 1;
        if exact_hit {
            self.start_generation(key);
        }
    }

    /// Ends requests whose client has gone (before their answer was complete) and those
    /// whose time is up (finish reason `length`).
    fn expire(&mut self) {
        let now = Instant::now();
        for key in 0..self.tasks.len() {
            let Some(task) = &self.tasks[key] else {
                continue;
            };
            if task.done_sent {
                continue; // only closing for the cache: no client is waiting
            }
            if task.job.events.is_closed() {
                self.drop_task(key);
                continue;
            }
            if task.job.deadline.is_none_or(|d| now < d) {
                continue;
            }
            if task.choices.is_empty() {
                // Still running its prompt: every choice ends empty.
                for choice in 0..task.job.params.n {
                    task.send(Event::Finish {
                        choice,
                        reason: FinishReason::Length,
                    });
                }
                self.send_done(key);
                self.drop_task(key);
                continue;
            }
            for c in 0..task.choices.len() {
                let generating = self.tasks[key]
                    .as_ref()
                    .is_some_and(|t| matches!(t.choices[c].phase, Phase::Generating));
                if generating {
                    self.finish_choice(key, c, Cause::Timeout, None);
                }
            }
        }
    }

    /// Fills `rows` (see the module doc); false when there is nothing to run.
    fn build_batch(&mut self) -> bool {
        self.rows.clear();
        self.meta.clear();
        let capacity = self.ctx.batch_capacity();
        let burst = self.burst_step();
        // 1. One token per generating choice (they wait while a burst runs).
        for (key, task) in self.tasks.iter_mut().enumerate() {
            let Some(task) = task.as_mut().filter(|_| burst.is_none()) else {
                continue;
            };
            for (c, ch) in task.choices.iter_mut().enumerate() {
                if let (Phase::Generating, Some(id)) = (&ch.phase, ch.to_feed.take()) {
                    self.rows.push(BatchRow {
                        token: id,
                        seq: ch.slot,
                        logits: true,
                    });
                    self.meta.push(RowMeta::Generated { key, choice: c });
                }
            }
        }
        // The rows of steps 2 and 3, and the requests whose prompts may use them (admitted
        // before `prompts_before`): a burst's whole batch for the prompts it covers; paced,
        // what fits beside the streams for every prompt; between bursts, a few closing rows
        // beside the streams and no prompt.
        let gen_rows = self.rows.len();
        let (budget, prompts_before) = match (&self.bursts, burst) {
            (None, _) => (
                gen_rows + self.pacer.extra_rows(gen_rows, capacity),
                u64::MAX,
            ),
            (Some(_), Some(cover)) => (capacity, cover),
            (Some(_), None) if gen_rows == 0 => (capacity, 0),
            (Some(_), None) => ((gen_rows + CLOSING_ROWS_BESIDE_STREAMS).min(capacity), 0),
        };
        // 2. Closing tails of finished chat answers: at most a quarter of the budget, so
        //    that re-running a long answer does not hold back new prompts (nor they it).
        let mut closing_rows = 0u64;
        let closing_budget = self.rows.len() + ((budget - self.rows.len()) / 4).max(4);
        for (key, task) in self.tasks.iter_mut().enumerate() {
            let Some(task) = task else { continue };
            for ch in task.choices.iter_mut() {
                if let Phase::Closing { tail, fed, .. } = &mut ch.phase {
                    let room = budget.min(closing_budget).saturating_sub(self.rows.len());
                    let k = (tail.len() - *fed).min(room);
                    for &token in &tail[*fed..*fed + k] {
                        self.rows.push(BatchRow {
                            token,
                            seq: ch.slot,
                            logits: false,
                        });
                        self.meta.push(RowMeta::Plain { key });
                    }
                    *fed += k;
                    closing_rows += k as u64;
                }
            }
        }
        // 3. Prompt chunks, oldest request first.
        self.prefill_order.clear();
        for (key, task) in self.tasks.iter().enumerate() {
            if let Some(task) = task
                .as_ref()
                .filter(|t| t.prefilling() && t.order < prompts_before)
            {
                self.prefill_order.push((task.order, key));
            }
        }
        self.prefill_order.sort_unstable();
        let mut prompt_rows = 0u64;
        for &(_, key) in &self.prefill_order {
            let room = budget - self.rows.len();
            if room == 0 {
                break;
            }
            let Some(task) = self.tasks[key].as_mut() else {
                continue;
            };
            let prompt = &task.job.prompt;
            let k = (prompt.len() - task.fed).min(room);
            let ends = task.fed + k == prompt.len();
            let seq = task.slots[0];
            for (i, &token) in prompt[task.fed..task.fed + k].iter().enumerate() {
                let last = ends && i + 1 == k;
                self.rows.push(BatchRow {
                    token,
                    seq,
                    logits: last,
                });
                self.meta.push(if last {
                    RowMeta::PromptEnd { key }
                } else {
                    RowMeta::Plain { key }
                });
            }
            task.fed += k;
            prompt_rows += k as u64;
        }
        let m = &self.shared.metrics;
        m.prompt_tokens.fetch_add(prompt_rows, Relaxed);
        m.closing_tokens.fetch_add(closing_rows, Relaxed);
        if prompt_rows > 0 && gen_rows > 0 {
            m.mixed_steps.fetch_add(1, Relaxed);
        }
        !self.rows.is_empty()
    }

    /// Under `PromptPolicy::Bursts`: whether this step runs prompts only, and for which
    /// requests (`Some(cover)`: those admitted before order `cover`). Resets the streams'
    /// runs when a burst has ended. `None` when paced.
    fn burst_step(&mut self) -> Option<u64> {
        let bursts = self.bursts.as_mut()?;
        let tasks = &self.tasks;
        let prefilling = tasks
            .iter()
            .flatten()
            .filter(|t| t.prefilling())
            .map(|t| t.order);
        let generating = || {
            tasks
                .iter()
                .flatten()
                .flat_map(|t| &t.choices)
                .filter(|ch| matches!(ch.phase, Phase::Generating))
        };
        let shortest_run = generating()
            .map(|ch| ch.generated.len() - ch.run_start)
            .min();
        let Decision {
            step,
            started,
            ended,
        } = bursts.next_step(prefilling, shortest_run, self.next_order);
        if ended {
            for ch in self.tasks.iter_mut().flatten().flat_map(|t| &mut t.choices) {
                ch.run_start = ch.generated.len();
            }
        }
        if started {
            self.shared.metrics.prompt_bursts.fetch_add(1, Relaxed);
        }
        match step {
            BurstStep::Burst { cover } => Some(cover),
            BurstStep::Streams => None,
        }
    }

    /// Samples for every row that asked for logits; snapshots and frees closed answers.
    fn after_decode(&mut self) {
        for i in 0..self.meta.len() {
            match self.meta[i] {
                RowMeta::Generated { key, choice } => {
                    let step = {
                        let Some(task) = self.tasks[key].as_mut() else {
                            continue;
                        };
                        let Some(logits) = self.ctx.logits_ith(i) else {
                            continue;
                        };
                        sample_choice(
                            choice,
                            task,
                            self.tok,
                            logits,
                            &self.stop_tokens,
                            &mut self.logprobs,
                            self.shared,
                        )
                    };
                    if let Some((cause, unfed)) = step {
                        self.finish_choice(key, choice, cause, unfed);
                    }
                }
                RowMeta::PromptEnd { key } => self.start_generation(key),
                RowMeta::Plain { .. } => {}
            }
        }
        // Answers whose closing tokens are all in: save, free.
        for key in 0..self.tasks.len() {
            let Some(task) = self.tasks[key].as_mut() else {
                continue;
            };
            for c in 0..task.choices.len() {
                let ch = &mut task.choices[c];
                let Phase::Closing {
                    tail,
                    fed,
                    key: tokens,
                } = &mut ch.phase
                else {
                    continue;
                };
                if *fed < tail.len() {
                    continue;
                }
                let slot = ch.slot;
                let tokens = std::mem::take(tokens);
                let ctx = &self.ctx;
                self.cache.insert(
                    &tokens,
                    ctx.seq_state_len(),
                    ctx.seq_logits(slot).is_some(),
                    |buf| ctx.seq_save(slot, buf).is_ok(),
                );
                ch.phase = Phase::Released;
                self.slot_owner[slot] = None;
            }
            self.remove_if_released(key);
        }
    }

    /// The prompt of the task at `key` is in: snapshot it, fork it into the other slots,
    /// and sample every choice's first token.
    fn start_generation(&mut self, key: usize) {
        let Some(task) = self.tasks[key].as_mut() else {
            return;
        };
        let first = task.slots[0];
        if !task.exact_hit {
            let ctx = &self.ctx;
            self.cache.insert(
                &task.job.prompt,
                ctx.seq_state_len(),
                ctx.seq_logits(first).is_some(),
                |buf| ctx.seq_save(first, buf).is_ok(),
            );
        } else {
            self.cache.touch(&task.job.prompt);
        }
        let forked = task.slots[1..]
            .iter()
            .try_for_each(|&slot| self.ctx.seq_copy(first, slot));
        if let Err(e) = forked {
            task.send(Event::Error(ApiError::internal(e.to_string())));
            self.shared.metrics.engine_errors.fetch_add(1, Relaxed);
            self.drop_task(key);
            return;
        }
        let params = &task.job.params;
        let prompt = &task.job.prompt;
        let history = &prompt[prompt.len().saturating_sub(params.sampler.repeat_last_n)..];
        for (c, &slot) in task.slots.iter().enumerate() {
            let mut sp = params.sampler.clone();
            sp.seed = sp.seed.map(|s| s.wrapping_add(c as u64));
            let mut sampler = Sampler::new(sp);
            sampler.set_token_penalties(params.penalties);
            // The penalties see the prompt, as in generate() and llama.cpp.
            for &id in history {
                sampler.accept(id);
            }
            task.choices.push(Choice {
                slot,
                sampler,
                text: TextStream::new(&params.stop_strings, false),
                generated: Vec::with_capacity(params.max_tokens.min(4096)),
                content: String::new(),
                to_feed: None,
                phase: Phase::Generating,
                run_start: 0,
            });
        }
        for c in 0..task.choices.len() {
            let step = {
                let Some(task) = self.tasks[key].as_mut() else {
                    return;
                };
                let slot = task.choices[c].slot;
                let Some(logits) = self.ctx.seq_logits(slot) else {
                    task.send(Event::Error(ApiError::internal(
                        "no logits after the prompt",
                    )));
                    self.drop_task(key);
                    return;
                };
                sample_choice(
                    c,
                    task,
                    self.tok,
                    logits,
                    &self.stop_tokens,
                    &mut self.logprobs,
                    self.shared,
                )
            };
            if let Some((cause, unfed)) = step {
                self.finish_choice(key, c, cause, unfed);
            }
        }
    }

    /// Ends choice `c` of the task at `key`: releases its held-back text, reports the
    /// finish, then either frees its slot or (chat answers, cache on) starts closing it for
    /// the answer snapshot. `unfed` is its last token when that was not fed to the model.
    fn finish_choice(&mut self, key: usize, c: usize, cause: Cause, unfed: Option<u32>) {
        let Some(task) = self.tasks[key].as_mut() else {
            return;
        };
        let ch = &mut task.choices[c];
        if cause != Cause::StopString {
            let mut rest = String::new();
            ch.text.finish(self.tok, &mut rest);
            if !rest.is_empty() {
                ch.content.push_str(&rest);
                let _ = task.job.events.send(Event::Token {
                    choice: c,
                    text: rest,
                    logprob: None,
                });
            }
        }
        let _ = task.job.events.send(Event::Finish {
            choice: c,
            reason: cause.reason(),
        });
        ch.to_feed = None;
        let slot = ch.slot;
        ch.phase = Phase::Released;
        if self.cache.enabled() && cause != Cause::Timeout {
            let prompt = &task.job.prompt;
            match task.job.kind {
                PromptKind::Completion => {
                    // The state is after the prompt and the fed answer tokens.
                    let fed = ch.generated.len() - usize::from(unfed.is_some());
                    if fed > 0 {
                        let mut tokens = Vec::with_capacity(prompt.len() + fed);
                        tokens.extend_from_slice(prompt);
                        tokens.extend_from_slice(&ch.generated[..fed]);
                        let ctx = &self.ctx;
                        self.cache.insert(
                            &tokens,
                            ctx.seq_state_len(),
                            ctx.seq_logits(slot).is_some(),
                            |buf| ctx.seq_save(slot, buf).is_ok(),
                        );
                    }
                }
                PromptKind::Chat => {
                    let tail = match (self.tok, self.template) {
                        (Some(tok), Some(t)) => t.answer_tail(tok, &ch.content),
                        _ => None,
                    };
                    if let Some(tail) = tail {
                        let key_tokens = [&prompt[..], &tail[..]].concat();
                        let n = ch.generated.len();
                        if tail.len() >= n && tail[..n] == ch.generated[..] {
                            // The answer's tokens are those the next prompt holds: feed the
                            // unfed last token, if any, and `<end_of_turn>\n`.
                            let mut feed = Vec::with_capacity(tail.len() - n + 1);
                            feed.extend(unfed);
                            feed.extend_from_slice(&tail[n..]);
                            ch.phase = Phase::Closing {
                                tail: feed,
                                fed: 0,
                                key: key_tokens,
                            };
                        } else if let Some(hit) =
                            self.cache.lookup(prompt).filter(|h| h.len == prompt.len())
                        {
                            // The model wrote the answer in other tokens than the tokenizer
                            // would: back to the prompt's snapshot, and run the answer as the
                            // next prompt will hold it (in the background of other requests'
                            // steps, instead of in front of the next turn).
                            if self.ctx.seq_load(slot, hit.state).is_ok() {
                                ch.phase = Phase::Closing {
                                    tail,
                                    fed: 0,
                                    key: key_tokens,
                                };
                            }
                        }
                    }
                }
            }
        }
        if matches!(ch.phase, Phase::Released) {
            self.slot_owner[slot] = None;
        }
        let all_finished = task.choices.len() == task.job.params.n
            && task
                .choices
                .iter()
                .all(|ch| !matches!(ch.phase, Phase::Generating));
        if all_finished {
            self.send_done(key);
        }
        self.remove_if_released(key);
    }

    /// Sends the usage once, when every choice has finished.
    fn send_done(&mut self, key: usize) {
        let Some(task) = self.tasks[key].as_mut() else {
            return;
        };
        if task.done_sent {
            return;
        }
        task.done_sent = true;
        task.send(Event::Done(Usage {
            prompt_tokens: task.job.prompt.len(),
            cached_tokens: task.cached,
            completion_tokens: task.choices.iter().map(|c| c.generated.len()).sum(),
        }));
    }

    /// Removes the task at `key` once all its choices have given their slots back.
    fn remove_if_released(&mut self, key: usize) {
        let done = self.tasks[key].as_ref().is_some_and(|t| {
            t.done_sent && t.choices.iter().all(|c| matches!(c.phase, Phase::Released))
        });
        if done {
            self.tasks[key] = None;
        }
    }

    /// Removes the task at `key` now and frees all its slots (client gone, error, timeout
    /// before its prompt was in).
    fn drop_task(&mut self, key: usize) {
        if let Some(task) = self.tasks[key].take() {
            self.release_slots(&task.slots);
        }
    }

    fn release_slots(&mut self, slots: &[usize]) {
        for &s in slots {
            self.slot_owner[s] = None;
        }
    }

    /// A decode failed: its requests get a 500 error, the others go on.
    fn fail_batch(&mut self, message: &str) {
        for i in 0..self.meta.len() {
            let key = match self.meta[i] {
                RowMeta::Generated { key, .. }
                | RowMeta::PromptEnd { key }
                | RowMeta::Plain { key } => key,
            };
            if let Some(task) = &self.tasks[key] {
                if !task.done_sent {
                    task.send(Event::Error(ApiError::internal(message)));
                    self.shared.metrics.engine_errors.fetch_add(1, Relaxed);
                }
                self.drop_task(key);
            }
        }
    }

    /// Every running request gets a 500 error and its slots back.
    fn fail_all(&mut self, message: &str) {
        for key in 0..self.tasks.len() {
            if let Some(task) = &self.tasks[key] {
                if !task.done_sent {
                    task.send(Event::Error(ApiError::internal(message)));
                    self.shared.metrics.engine_errors.fetch_add(1, Relaxed);
                }
                self.drop_task(key);
            }
        }
        self.slot_owner.fill(None);
    }

    fn publish_gauges(&self) {
        let m = &self.shared.metrics;
        let busy = self.slot_owner.iter().filter(|o| o.is_some()).count();
        m.slots_busy.store(busy as u64, Relaxed);
        m.cache_bytes.store(self.cache.bytes() as u64, Relaxed);
        m.cache_entries.store(self.cache.entries() as u64, Relaxed);
        let row_ns = self.pacer.secs_per_row().map_or(0.0, |s| s * 1e9);
        m.step_row_ns.store(row_ns as u64, Relaxed);
        let recent = |r: &RecentRate| r.per_second().to_bits();
        m.prompt_tokens_per_second_bits
            .store(recent(&self.prompt_rate), Relaxed);
        m.tokens_per_second_bits
            .store(recent(&self.generation_rate), Relaxed);
    }
}

/// Samples the next token of choice `c` from `logits` and sends its text. `Some((cause,
/// unfed))` when the choice is finished; otherwise the token waits in `to_feed`.
fn sample_choice(
    c: usize,
    task: &mut Task,
    tok: Option<&Tokenizer>,
    logits: &[f32],
    stop_tokens: &[u32],
    scratch: &mut LogprobScratch,
    shared: &Shared,
) -> Option<(Cause, Option<u32>)> {
    let params = &task.job.params;
    let ch = &mut task.choices[c];
    let id = ch.sampler.sample(logits);
    if stop_tokens.contains(&id) {
        return Some((Cause::StopToken, None));
    }
    ch.sampler.accept(id);
    ch.generated.push(id);
    shared.metrics.tokens_generated.fetch_add(1, Relaxed);
    let logprob = params.logprobs.map(|n| scratch.compute(logits, id, n));
    let mut text = String::new();
    let hit_stop = ch.text.push(tok, id, &mut text);
    ch.content.push_str(&text);
    let _ = task.job.events.send(Event::Token {
        choice: c,
        text,
        logprob,
    });
    if hit_stop {
        Some((Cause::StopString, Some(id)))
    } else if ch.generated.len() >= params.max_tokens {
        Some((Cause::MaxTokens, Some(id)))
    } else {
        ch.to_feed = Some(id);
        None
    }
}
