//! Counters and gauges the server exposes at `GET /metrics` in Prometheus' text format. The
//! engine thread and the HTTP tasks update them with relaxed atomics (each value is read on
//! its own; no two need to agree at one instant).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::engine::RECENT_STEPS;

#[derive(Default)]
pub struct Metrics {
    /// Finished HTTP requests by status code.
    requests_by_status: Mutex<BTreeMap<u16, u64>>,
    /// Prompt tokens run through the model (after cache reuse).
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens restored from the prompt cache instead of being run.
    pub prompt_tokens_cached: AtomicU64,
    /// Tokens run after answers so that a next chat turn can resume there: `<end_of_turn>\n`,
    /// or the whole answer when the model wrote it in other tokens than the tokenizer would.
    pub closing_tokens: AtomicU64,
    /// Tokens sampled (every choice).
    pub tokens_generated: AtomicU64,
    /// Decode steps, and nanoseconds spent in steps that ran prompt rows / sampled tokens.
    pub decode_steps: AtomicU64,
    /// Prompt bursts started, and steps that carried prompt rows beside generating streams
    /// (none under the burst policy; every such step when paced).
    pub prompt_bursts: AtomicU64,
    pub mixed_steps: AtomicU64,
    pub prompt_ns: AtomicU64,
    pub generation_ns: AtomicU64,
    /// Prompt tokens and generated tokens per second of the engine's recent steps that did
    /// each (`engine::rates`), as `f64::to_bits`.
    pub prompt_tokens_per_second_bits: AtomicU64,
    pub tokens_per_second_bits: AtomicU64,
    /// The engine's measured nanoseconds per batch row (what `--max-step-ms` paces by).
    pub step_row_ns: AtomicU64,
    /// Requests waiting for a slot: counted up when a handler submits one and down when the
    /// engine admits or drops it (the admission counter itself, not a copy).
    pub queue_length: AtomicU64,
    /// Slots held by a request.
    pub slots_busy: AtomicU64,
    pub slots_total: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_bytes: AtomicU64,
    pub cache_entries: AtomicU64,
    pub cache_limit_bytes: AtomicU64,
    /// Requests the engine failed (an error inside the engine, answered 500).
    pub engine_errors: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, status: u16) {
        if let Ok(mut map) = self.requests_by_status.lock() {
            *map.entry(status).or_insert(0) += 1;
        }
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP rgemma_{name} {help}");
            let _ = writeln!(out, "# TYPE rgemma_{name} {kind}");
            let _ = writeln!(out, "rgemma_{name} {value}");
        };
        let get = |a: &AtomicU64| a.load(Relaxed);
        let rate = |bits: &AtomicU64| format!("{:.3}", f64::from_bits(bits.load(Relaxed)));
        // Nanosecond precision: a counter rounded to milliseconds reads 0 after a short step
        // on a fast machine, and a rate taken from it would be wrong for minutes.
        let seconds = |ns: &AtomicU64| format!("{:.9}", ns.load(Relaxed) as f64 * 1e-9);
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens run through the model.",
            get(&self.prompt_tokens).to_string(),
        );
        metric(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens restored from the prompt cache instead of being run.",
            get(&self.prompt_tokens_cached).to_string(),
        );
        metric(
            "closing_tokens_total",
            "counter",
            "Tokens run after chat answers so that the next turn resumes from a snapshot.",
            get(&self.closing_tokens).to_string(),
        );
        metric(
            "tokens_generated_total",
            "counter",
            "Tokens generated (all choices).",
            get(&self.tokens_generated).to_string(),
        );
        metric(
            "prompt_tokens_per_second",
            "gauge",
            &format!("Prompt tokens run per second of the last {RECENT_STEPS} decode steps that ran prompt rows."),
            rate(&self.prompt_tokens_per_second_bits),
        );
        metric(
            "tokens_per_second",
            "gauge",
            &format!("Generated tokens per second of the last {RECENT_STEPS} decode steps that generated."),
            rate(&self.tokens_per_second_bits),
        );
        metric(
            "prompt_seconds_total",
            "counter",
            "Seconds of decode steps that ran prompt rows.",
            seconds(&self.prompt_ns),
        );
        metric(
            "generation_seconds_total",
            "counter",
            "Seconds of decode steps that generated tokens.",
            seconds(&self.generation_ns),
        );
        metric(
            "decode_steps_total",
            "counter",
            "Batched decode steps.",
            get(&self.decode_steps).to_string(),
        );
        metric(
            "prompt_bursts_total",
            "counter",
            "Bursts of prompt-only steps (running streams waited for new prompts).",
            get(&self.prompt_bursts).to_string(),
        );
        metric(
            "mixed_steps_total",
            "counter",
            "Decode steps that carried prompt rows beside generating streams.",
            get(&self.mixed_steps).to_string(),
        );
        metric(
            "step_seconds_per_row",
            "gauge",
            "Measured seconds per row of large decode steps (recent average; 0 until measured).",
            format!("{:.6}", get(&self.step_row_ns) as f64 * 1e-9),
        );
        metric(
            "queue_length",
            "gauge",
            "Requests waiting for a free slot.",
            get(&self.queue_length).to_string(),
        );
        metric(
            "slots_busy",
            "gauge",
            "Sequence slots held by a request.",
            get(&self.slots_busy).to_string(),
        );
        metric(
            "slots_total",
            "gauge",
            "Sequence slots (--parallel).",
            get(&self.slots_total).to_string(),
        );
        metric(
            "cache_hits_total",
            "counter",
            "Requests that resumed from a prompt-cache snapshot.",
            get(&self.cache_hits).to_string(),
        );
        metric(
            "cache_misses_total",
            "counter",
            "Requests that found no prompt-cache snapshot to resume from.",
            get(&self.cache_misses).to_string(),
        );
        metric(
            "cache_bytes",
            "gauge",
            "Bytes held by prompt-cache snapshots.",
            get(&self.cache_bytes).to_string(),
        );
        metric(
            "cache_entries",
            "gauge",
            "Prompt-cache snapshots.",
            get(&self.cache_entries).to_string(),
        );
        metric(
            "cache_limit_bytes",
            "gauge",
            "Prompt-cache budget (--cache-ram).",
            get(&self.cache_limit_bytes).to_string(),
        );
        metric(
            "engine_errors_total",
            "counter",
            "Requests failed by an error inside the engine.",
            get(&self.engine_errors).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP rgemma_requests_total HTTP requests answered, by status."
        );
        let _ = writeln!(out, "# TYPE rgemma_requests_total counter");
        if let Ok(map) = self.requests_by_status.lock() {
            for (status, n) in map.iter() {
                let _ = writeln!(out, "rgemma_requests_total{{status=\"{status}\"}} {n}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `rgemma_{name}` in the exposition `text`.
    fn sample(text: &str, name: &str) -> f64 {
        let prefix = format!("rgemma_{name} ");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        value.parse().unwrap()
    }

    /// A fast machine runs a short prompt in well under a millisecond: its seconds must not
    /// round to zero (CI once read `rgemma_prompt_seconds_total 0.000` after a 2-token prompt).
    #[test]
    fn short_steps_keep_their_seconds() {
        let m = Metrics::default();
        m.prompt_ns.store(1_234, Relaxed);
        m.generation_ns.store(2_000_000_001, Relaxed);
        let text = m.render();
        assert_eq!(sample(&text, "prompt_seconds_total"), 1.234e-6);
        assert_eq!(sample(&text, "generation_seconds_total"), 2.000000001);
    }
}
