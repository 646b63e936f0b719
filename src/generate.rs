//! The generation loop shared by the front ends (`rg-run`, servers, bindings): feed a prompt,
//! sample, stream text, stop on a stop token, a token limit or a stop string.
//!
//! The loop continues whatever sequence the context already holds, so a chat front end calls it
//! once per turn on the same [`Context`]. Logit rows can be streamed out (`--logits-out`): one row
//! per prompt position, then one per generated token that is fed back. The last generated token
//! is never fed back (nothing needs its logits), so `n` generated tokens give `T + n - 1` rows;
//! [`Generation::unfed`] hands that token to the caller, who feeds it before extending the
//! sequence.

use std::time::{Duration, Instant};

use crate::model::Context;
use crate::sampling::Sampler;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

/// What ends a generation besides the sink.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// At most this many generated tokens; `None` = until a stop token or stop string.
    pub max_tokens: Option<usize>,
    /// Token ids that end the generation (EOS, `<end_of_turn>`); they are not emitted and not
    /// counted as generated.
    pub stop_tokens: Vec<u32>,
    /// Strings that end the generation; the text before one is emitted, the string itself and
    /// anything after it is not.
    pub stop_strings: Vec<String>,
    /// Request the logits of every prompt position (for [`GenerateSink::logits_row`]).
    pub all_logits: bool,
    /// Evaluate the prompt in chunks of at most this many tokens (0 = one call).
    pub batch_size: usize,
    /// Show control tokens (`<start_of_turn>`, `<bos>`, ...) as their text; by default they
    /// produce no text, as in llama.cpp without `--special`.
    pub show_special: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// One of `stop_tokens` was sampled (not emitted, not fed).
    StopToken(u32),
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop string appeared in the text.
    StopString,
}

impl StopReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::StopToken(_) => "stop_token",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopString => "stop_string",
        }
    }
}

/// Where the loop delivers its output.
pub trait GenerateSink {
    /// Text ready to show (complete UTF-8, stop strings already cut).
    fn text(&mut self, text: &str) -> Result<()>;
    /// One row of logits (`n_vocab` floats), in sequence order; only when `all_logits` is set.
    fn logits_row(&mut self, _row: &[f32]) -> Result<()> {
        Ok(())
    }
    /// Called between prompt chunks and before each generated token: an error stops the
    /// generation there (a front end's cancellation, e.g. Python's Ctrl-C).
    fn poll(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The result of one [`generate`] call.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, stop token excluded.
    pub generated: Vec<u32>,
    pub stop: StopReason,
    /// The last generated token when it was not fed to the model (stopped on the token limit or
    /// a stop string). Feed it before continuing the same sequence.
    pub unfed: Option<u32>,
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    /// Sampling plus the evaluation of the fed-back tokens.
    pub gen_time: Duration,
}

/// Evaluates `prompt` on top of what `ctx` holds, then samples until a stop condition.
///
/// Every prompt token is passed to [`Sampler::accept`] (the penalty sees the prompt, as in
/// llama.cpp), and so is every generated token. Without a tokenizer the text of a token is its
/// decimal id followed by a space.
pub fn generate(
    ctx: &mut Context,
    sampler: &mut Sampler,
    tokenizer: Option<&Tokenizer>,
    prompt: &[u32],
    opts: &GenerateOptions,
    sink: &mut dyn GenerateSink,
) -> Result<Generation> {
    let t0 = Instant::now();
    feed_prompt(ctx, sampler, prompt, opts, sink)?;
    generate_after_prompt(
        ctx,
        sampler,
        tokenizer,
        prompt.len(),
        t0.elapsed(),
        opts,
        sink,
    )
}

/// The token loop of [`generate`], for a context that already holds the prompt (its tokens
/// accepted by `sampler`, its logits those after the last one): e.g. a prompt restored, in
/// whole or in part, from a [`crate::prompt_cache::SavedPrompt`]. `prompt_tokens` and
/// `prompt_time` are what the [`Generation`] reports for the prompt (the tokens evaluated
/// and the time that took).
pub fn generate_after_prompt(
    ctx: &mut Context,
    sampler: &mut Sampler,
    tokenizer: Option<&Tokenizer>,
    prompt_tokens: usize,
    prompt_time: Duration,
    opts: &GenerateOptions,
    sink: &mut dyn GenerateSink,
) -> Result<Generation> {
    let t1 = Instant::now();
    let mut tokens = TokenLoop::new(opts);
    let mut emitted = String::new();
    let stop = loop {
        sink.poll()?;
        emitted.clear();
        let next = tokens.step(ctx.logits(), sampler, tokenizer, &mut emitted);
        if !emitted.is_empty() {
            sink.text(&emitted)?;
        }
        match next {
            Next::Feed(id) => {
                ctx.eval(&[id], false)?;
                if opts.all_logits {
                    sink.logits_row(ctx.logits())?;
                }
            }
            Next::Stop(stop) => break stop,
        }
    };
    Ok(Generation {
        unfed: tokens.unfed(),
        generated: tokens.generated,
        stop,
        prompt_tokens,
        prompt_time,
        gen_time: t1.elapsed(),
    })
}

/// The prompt half of [`generate`]: checks the ids, evaluates `prompt` in chunks of
/// `opts.batch_size` (sending every row to the sink when `opts.all_logits`, polling it between
/// chunks) and passes every prompt token to [`Sampler::accept`].
pub fn feed_prompt(
    ctx: &mut Context,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenerateOptions,
    sink: &mut dyn GenerateSink,
) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("empty prompt".into()));
    }
    let n_vocab = ctx.model().n_vocab();
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= n_vocab) {
        return Err(Error::InvalidArgument(format!(
            "token id {bad} is out of range (vocabulary size {n_vocab})"
        )));
    }
    let chunk = if opts.batch_size == 0 {
        prompt.len()
    } else {
        opts.batch_size
    };
    for part in prompt.chunks(chunk) {
        sink.poll()?;
        ctx.eval(part, opts.all_logits)?;
        if opts.all_logits {
            for row in ctx.all_logits().chunks_exact(n_vocab).take(part.len()) {
                sink.logits_row(row)?;
            }
        }
    }
    for &id in prompt {
        sampler.accept(id);
    }
    Ok(())
}

/// The sampling half of [`generate`], one token per [`TokenLoop::step`], for front ends that
/// feed the tokens themselves (several sequences in one batch, Python's `stream`): sample,
/// stop on a stop token, the token limit or a stop string, else hand the token back to feed.
#[derive(Debug)]
pub struct TokenLoop {
    max_tokens: Option<usize>,
    stop_tokens: Vec<u32>,
    text: TextStream,
    /// Generated ids, stop token excluded.
    pub generated: Vec<u32>,
    stopped: Option<StopReason>,
}

/// What [`TokenLoop::step`] asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Evaluate this token, then step again with the logits after it.
    Feed(u32),
    /// The generation is over.
    Stop(StopReason),
}

impl TokenLoop {
    pub fn new(opts: &GenerateOptions) -> TokenLoop {
        TokenLoop {
            max_tokens: opts.max_tokens,
            stop_tokens: opts.stop_tokens.clone(),
            text: TextStream::new(&opts.stop_strings, opts.show_special),
            generated: Vec::new(),
            stopped: None,
        }
    }

    /// Samples the next token from `logits` (those after the sequence's last token) and
    /// appends its text to `out`. On [`Next::Stop`], `out` also holds the text still held
    /// back, and later calls return the same stop and do nothing.
    pub fn step(
        &mut self,
        logits: &[f32],
        sampler: &mut Sampler,
        tokenizer: Option<&Tokenizer>,
        out: &mut String,
    ) -> Next {
        if let Some(stop) = self.stopped {
            return Next::Stop(stop);
        }
        if self.at_limit() {
            return self.stop(StopReason::MaxTokens, tokenizer, out);
        }
        let id = sampler.sample(logits);
        if self.stop_tokens.contains(&id) {
            return self.stop(StopReason::StopToken(id), tokenizer, out);
        }
        sampler.accept(id);
        self.generated.push(id);
        if self.text.push(tokenizer, id, out) {
            // `out` already ends before the stop string; nothing is held back.
            self.stopped = Some(StopReason::StopString);
            return Next::Stop(StopReason::StopString);
        }
        if self.at_limit() {
            // Nothing needs the logits after the last token: it is not fed.
            return self.stop(StopReason::MaxTokens, tokenizer, out);
        }
        Next::Feed(id)
    }

    /// Why the loop ended, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    /// The last generated token when it was not fed (see [`Generation::unfed`]).
    pub fn unfed(&self) -> Option<u32> {
        match self.stopped {
            Some(StopReason::MaxTokens | StopReason::StopString) => self.generated.last().copied(),
            _ => None,
        }
    }

    fn at_limit(&self) -> bool {
        self.max_tokens.is_some_and(|n| self.generated.len() >= n)
    }

    /// Ends without a stop string: the held-back text is released.
    fn stop(
        &mut self,
        reason: StopReason,
        tokenizer: Option<&Tokenizer>,
        out: &mut String,
    ) -> Next {
        self.text.finish(tokenizer, out);
        self.stopped = Some(reason);
        Next::Stop(reason)
    }
}

/// Token ids -> text pieces, through the tokenizer's stream decoder (or ids when there is no
/// tokenizer) and the stop-string filter: the text side of [`generate`], one per sequence, for
/// front ends that run their own sampling loop (several sequences decoded together). The
/// tokenizer is passed to each call, so a stream can live beside the model that owns it.
#[derive(Debug)]
pub struct TextStream {
    decoder: StreamDecoder,
    stops: StopStrings,
    piece: String,
    show_special: bool,
}

impl TextStream {
    /// A stream with `stop_strings` (empty ones ignored); control tokens produce no text
    /// unless `show_special`.
    pub fn new(stop_strings: &[String], show_special: bool) -> Self {
        TextStream {
            decoder: StreamDecoder::new(),
            stops: StopStrings::new(stop_strings),
            piece: String::new(),
            show_special,
        }
    }

    /// Appends the text that may be shown after token `id` to `out`; true on a stop string
    /// (`out` then ends right before it; push no more tokens).
    pub fn push(&mut self, tokenizer: Option<&Tokenizer>, id: u32, out: &mut String) -> bool {
        use std::fmt::Write;
        self.piece.clear();
        match tokenizer {
            Some(tok) if !self.show_special && tok.is_control(id) => {}
            Some(tok) => self.piece.push_str(&self.decoder.push(tok, id)),
            None => {
                let _ = write!(self.piece, "{id} ");
            }
        }
        self.stops.push(&self.piece, out)
    }

    /// Appends the text still held back (an incomplete character, a partial stop string) to
    /// `out`; for a generation that ended without a stop string.
    pub fn finish(&mut self, tokenizer: Option<&Tokenizer>, out: &mut String) {
        if tokenizer.is_some() {
            let rest = self.decoder.flush();
            if !rest.is_empty() && self.stops.push(&rest, out) {
                return;
            }
        }
        self.stops.flush(out);
    }
}

/// Streaming stop-string filter: passes text through, holding back only a tail that could be
/// the start of a stop string, and cuts the text at the first complete stop string.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new(stops: &[String]) -> StopStrings {
        StopStrings {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; appends what can be shown to `out`. Returns true when a stop string is
    /// complete: `out` then ends right before it and the filter holds nothing.
    pub fn push(&mut self, text: &str, out: &mut String) -> bool {
        if self.stops.is_empty() {
            out.push_str(text);
            return false;
        }
        self.pending.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            out.push_str(&self.pending[..at]);
            self.pending.clear();
            return true;
        }
        let hold = self.longest_partial_tail();
        let cut = self.pending.len() - hold;
        out.push_str(&self.pending[..cut]);
        self.pending.drain(..cut);
        false
    }

    /// Releases the held-back tail (the generation ended without completing a stop string).
    pub fn flush(&mut self, out: &mut String) {
        out.push_str(&self.pending);
        self.pending.clear();
    }

    /// Length of the longest suffix of `pending` (starting on a char boundary) that is a
    /// proper prefix of some stop string.
    fn longest_partial_tail(&self) -> usize {
        let bytes = self.pending.as_bytes();
        let longest_stop = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let max_tail = bytes.len().min(longest_stop.saturating_sub(1));
        for len in (1..=max_tail).rev() {
            let start = bytes.len() - len;
            if !self.pending.is_char_boundary(start) {
                continue;
            }
            let tail = &bytes[start..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > len && s.as_bytes().starts_with(tail))
            {
                return len;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::StopStrings;

    /// Feeds `pieces` one by one; returns the shown text and whether a stop string hit.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopStrings::new(&stops);
        let mut out = String::new();
        for p in pieces {
            if f.push(p, &mut out) {
                return (out, true);
            }
        }
        f.flush(&mut out);
        (out, false)
    }

    #[test]
    fn no_stop_strings_pass_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn stop_inside_one_piece_cuts_before_it() {
        assert_eq!(
            run(&["STOP"], &["hello STOP world"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn stop_split_across_pieces() {
        assert_eq!(run(&["</s>"], &["ab<", "/", "s>tail"]), ("ab".into(), true));
    }

    #[test]
    fn partial_match_that_fails_is_released() {
        assert_eq!(
            run(&["abc"], &["xa", "b", "d", "e"]),
            ("xabde".into(), false)
        );
        // A partial match still pending at the end is flushed.
        assert_eq!(run(&["abc"], &["xab"]), ("xab".into(), false));
    }

    #[test]
    fn held_text_is_only_the_possible_prefix() {
        let stops = vec!["\n\nUser:".to_string()];
        let mut f = StopStrings::new(&stops);
        let mut out = String::new();
        assert!(!f.push("Hi there\n", &mut out));
        assert_eq!(out, "Hi there");
        assert!(!f.push("\nUs", &mut out));
        assert_eq!(out, "Hi there");
        assert!(f.push("er: x", &mut out));
        assert_eq!(out, "Hi there");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["a", "bzz"]), ("a".into(), true));
    }

    #[test]
    fn multibyte_text_is_never_split() {
        // The stop starts with a 3-byte char; the pending tail must start on a char boundary.
        assert_eq!(run(&["€x"], &["a€", "€", "y€x"]), ("a€€y".into(), true));
        assert_eq!(run(&["é!"], &["café"]), ("café".into(), false));
    }
}
