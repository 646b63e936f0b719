//! Perplexity and KL-divergence statistics (the math behind `rg-perplexity`) and the file of
//! base log-probabilities that a quantized model is compared with.
//!
//! Conventions follow llama.cpp's `llama-perplexity`:
//! - the text is cut into non-overlapping chunks of `n_ctx` tokens whose first token is BOS,
//!   every chunk starts from an empty state, and only the second half is scored: the logits at
//!   positions `n_ctx/2 ..= n_ctx-2` predict tokens `n_ctx/2+1 ..= n_ctx-1`
//!   ([`scored_positions`]);
//! - PPL = exp(mean NLL) and its error is `PPL * se(NLL)`, with `se = sqrt(var / (n - 1))`
//!   from the per-token NLL variance;
//! - KL divergence per token is `sum_v p_base(v) * (ln p_base(v) - ln p_q(v))`.
//!
//! All sums are kept in f64.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::model::Model;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Positions of a chunk whose logits are scored: `first..n_ctx-1` (each predicts the next
/// token). Empty when `n_ctx < 3`.
pub fn scored_positions(n_ctx: usize) -> std::ops::Range<usize> {
    let first = n_ctx / 2;
    first..n_ctx.saturating_sub(1).max(first)
}

/// Tokenizes `text` with the model's tokenizer (BOS first) and returns whole chunks of `n_ctx`
/// tokens (at most `max_chunks`), each starting with BOS: the chunks `rg-perplexity` scores
/// and `rg-imatrix` calibrates on.
pub fn text_chunks(
    model: &Model,
    text: &str,
    n_ctx: usize,
    max_chunks: Option<usize>,
) -> Result<Vec<u32>> {
    if scored_positions(n_ctx).is_empty() {
        return Err(Error::InvalidArgument(format!(
            "context size {n_ctx} is too small: at least 3 tokens per chunk are needed"
        )));
    }
    let tokenizer = Tokenizer::from_gguf(model.gguf())?
        .ok_or_else(|| Error::Tokenizer("the model file carries no tokenizer".into()))?;
    let mut tokens = tokenizer.encode(text, true, false)?;
    let mut n_chunks = tokens.len() / n_ctx;
    if let Some(c) = max_chunks {
        n_chunks = n_chunks.min(c);
    }
    if n_chunks == 0 {
        return Err(Error::InvalidArgument(format!(
            "the text has {} tokens, fewer than one chunk of {n_ctx} (use a smaller -c)",
            tokens.len()
        )));
    }
    tokens.truncate(n_chunks * n_ctx);
    let bos = tokenizer.bos();
    for chunk in tokens.chunks_exact_mut(n_ctx) {
        chunk[0] = bos;
    }
    Ok(tokens)
}

/// `out[v] = logits[v] - logsumexp(logits)`, the sum taken in f64.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    debug_assert_eq!(logits.len(), out.len());
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    for (o, &x) in out.iter_mut().zip(logits) {
        *o = (x as f64 - lse) as f32;
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Running mean and standard error of a sample (Welford's update, so a constant sample has a
/// standard error of exactly 0).
#[derive(Clone, Debug, Default)]
pub struct MeanSe {
    n: u64,
    mean: f64,
    /// Sum of squared deviations from the running mean.
    m2: f64,
    sum_sq: f64,
}

impl MeanSe {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
        self.sum_sq += x * x;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// Population variance of the values.
    pub fn variance(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).max(0.0)
        }
    }

    /// Standard error of the mean, `sqrt(var / (n - 1))` (0 for fewer than 2 values).
    pub fn se(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        (self.variance() / (self.n as f64 - 1.0)).sqrt()
    }

    /// Root mean square of the values.
    pub fn rms(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.sum_sq / self.n as f64).sqrt()
        }
    }
}

/// Perplexity of the scored tokens so far.
#[derive(Clone, Debug, Default)]
pub struct Perplexity {
    nll: MeanSe,
}

impl Perplexity {
    /// Adds one scored token: `logprob` is `ln p(target)`.
    pub fn add(&mut self, logprob: f64) {
        self.nll.add(-logprob);
    }

    pub fn count(&self) -> u64 {
        self.nll.count()
    }

    pub fn mean_nll(&self) -> f64 {
        self.nll.mean()
    }

    pub fn ppl(&self) -> f64 {
        self.nll.mean().exp()
    }

    /// Standard error of the PPL (first-order: `PPL * se(NLL)`).
    pub fn ppl_se(&self) -> f64 {
        self.ppl() * self.nll.se()
    }
}

/// Comparison of a model Q with a base model over the same scored tokens.
#[derive(Clone, Debug, Default)]
pub struct KlDivergence {
    pub ppl_q: Perplexity,
    pub ppl_base: Perplexity,
    /// Per token `nll_q - nll_base`; its mean is ln(PPL(Q)/PPL(base)).
    ln_ratio: MeanSe,
    /// Sum of `nll_q * nll_base`, for the correlation.
    cross: f64,
    kld: MeanSe,
    /// Every token's KL divergence, for the quantiles.
    klds: Vec<f32>,
    /// 1 where both models rank the same token first.
    same_top: MeanSe,
    /// `p_q(target) - p_base(target)`.
    delta_p: MeanSe,
}

/// The statistics llama.cpp prints at the end of a KL-divergence run.
#[derive(Clone, Debug)]
pub struct KlSummary {
    pub n_tokens: u64,
    pub ppl_q: (f64, f64),
    pub ppl_base: (f64, f64),
    /// Pearson correlation of the per-token NLLs of Q and base.
    pub cor_nll: f64,
    pub mean_ln_ratio: (f64, f64),
    /// PPL(Q)/PPL(base) and its standard error.
    pub ppl_ratio: (f64, f64),
    pub ppl_diff: f64,
    pub kld_mean: (f64, f64),
    pub kld_max: f64,
    pub kld_p999: f64,
    pub kld_p99: f64,
    pub kld_median: f64,
    pub kld_min: f64,
    pub delta_p_mean: (f64, f64),
    pub delta_p_rms: f64,
    /// Top-1 agreement in percent and its standard error.
    pub same_top_pct: (f64, f64),
}

impl KlDivergence {
    /// Adds one scored token given both models' log-probabilities over the vocabulary.
    pub fn add(&mut self, base_logp: &[f32], q_logp: &[f32], target: usize) -> Result<()> {
        if base_logp.len() != q_logp.len() || target >= q_logp.len() {
            return Err(Error::InvalidArgument(format!(
                "KL divergence: vocabularies differ ({} base, {} current) or target {target} out of range",
                base_logp.len(),
                q_logp.len()
            )));
        }
        let mut kl = 0.0f64;
        for (&lb, &lq) in base_logp.iter().zip(q_logp) {
            let lb = lb as f64;
            // p_base = 0 contributes nothing (and must not give 0 * inf).
            if lb > f64::NEG_INFINITY {
                kl += lb.exp() * (lb - lq as f64);
            }
        }
        let lq_t = q_logp[target] as f64;
        let lb_t = base_logp[target] as f64;
        self.ppl_q.add(lq_t);
        self.ppl_base.add(lb_t);
        self.ln_ratio.add(lb_t - lq_t);
        self.cross += lq_t * lb_t;
        self.kld.add(kl);
        self.klds.push(kl as f32);
        let same = argmax(base_logp) == argmax(q_logp);
        self.same_top.add(if same { 1.0 } else { 0.0 });
        self.delta_p.add(lq_t.exp() - lb_t.exp());
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.kld.count()
    }

    pub fn mean_kld(&self) -> (f64, f64) {
        (self.kld.mean(), self.kld.se())
    }

    pub fn same_top_pct(&self) -> (f64, f64) {
        (100.0 * self.same_top.mean(), 100.0 * self.same_top.se())
    }

    pub fn summary(&self) -> KlSummary {
        let n = self.count();
        let mut sorted = self.klds.clone();
        sorted.sort_by(f32::total_cmp);
        let quantile = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted[i] as f64
        };
        // Pearson correlation of the two NLL series.
        let nf = n.max(1) as f64;
        let (mq, mb) = (self.ppl_q.mean_nll(), self.ppl_base.mean_nll());
        let var_q = self.ppl_q.nll.variance();
        let var_b = self.ppl_base.nll.variance();
        let cov = self.cross / nf - mq * mb;
        let cor = if var_q > 0.0 && var_b > 0.0 {
            cov / (var_q * var_b).sqrt()
        } else {
            1.0
        };
        let lr = self.ln_ratio.mean();
        let ratio = lr.exp();
        KlSummary {
            n_tokens: n,
            ppl_q: (self.ppl_q.ppl(), self.ppl_q.ppl_se()),
            ppl_base: (self.ppl_base.ppl(), self.ppl_base.ppl_se()),
            cor_nll: cor,
            mean_ln_ratio: (lr, self.ln_ratio.se()),
            ppl_ratio: (ratio, ratio * self.ln_ratio.se()),
            ppl_diff: self.ppl_q.ppl() - self.ppl_base.ppl(),
            kld_mean: self.mean_kld(),
            kld_max: quantile(1.0),
            kld_p999: quantile(0.999),
            kld_p99: quantile(0.99),
            kld_median: quantile(0.5),
            kld_min: quantile(0.0),
            delta_p_mean: (self.delta_p.mean(), self.delta_p.se()),
            delta_p_rms: self.delta_p.rms(),
            same_top_pct: self.same_top_pct(),
        }
    }
}

/// Magic of a KL-divergence base file (`rg-perplexity --kl-divergence-base`).
pub const KLD_MAGIC: &[u8; 8] = b"RGKLDIV1";

/// Header of a base file. The layout, all little-endian:
///
/// ```text
/// magic "RGKLDIV1" | u32 n_vocab | u32 n_ctx | u32 n_chunks | u32 reserved (0)
/// u32 tokens[n_chunks * n_ctx]        the evaluated chunks, BOS first in each
/// f32 logp[n_chunks][n_scored][n_vocab]  log-softmax of the scored positions
/// ```
///
/// with `n_scored = scored_positions(n_ctx).len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KldHeader {
    pub n_vocab: u32,
    pub n_ctx: u32,
    pub n_chunks: u32,
}

impl KldHeader {
    fn header_bytes(&self) -> u64 {
        8 + 16 + 4 * self.n_chunks as u64 * self.n_ctx as u64
    }

    /// Expected total file size.
    pub fn file_size(&self) -> u64 {
        let scored = scored_positions(self.n_ctx as usize).len() as u64;
        self.header_bytes() + 4 * self.n_chunks as u64 * scored * self.n_vocab as u64
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Streams a base file: header and tokens first, then one chunk of log-probs at a time.
pub struct KldWriter {
    path: PathBuf,
    out: BufWriter<File>,
    header: KldHeader,
    chunks_written: u32,
}

impl KldWriter {
    pub fn create(path: &Path, header: KldHeader, tokens: &[u32]) -> Result<KldWriter> {
        if tokens.len() as u64 != header.n_chunks as u64 * header.n_ctx as u64 {
            return Err(Error::InvalidArgument(format!(
                "KL base file: {} tokens for {} chunks of {}",
                tokens.len(),
                header.n_chunks,
                header.n_ctx
            )));
        }
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut head = Vec::with_capacity(24 + 4 * tokens.len());
        head.extend_from_slice(KLD_MAGIC);
        for v in [header.n_vocab, header.n_ctx, header.n_chunks, 0] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        for t in tokens {
            head.extend_from_slice(&t.to_le_bytes());
        }
        out.write_all(&head).map_err(|e| io_err(path, e))?;
        Ok(KldWriter {
            path: path.to_path_buf(),
            out,
            header,
            chunks_written: 0,
        })
    }

    /// Writes one chunk: `n_scored * n_vocab` log-probs, row-major.
    pub fn write_chunk(&mut self, logp: &[f32]) -> Result<()> {
        let scored = scored_positions(self.header.n_ctx as usize).len();
        if logp.len() != scored * self.header.n_vocab as usize
            || self.chunks_written >= self.header.n_chunks
        {
            return Err(Error::InvalidArgument(
                "KL base file: chunk of the wrong size or too many chunks".into(),
            ));
        }
        let mut buf = Vec::with_capacity(4 * logp.len());
        for v in logp {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        self.out
            .write_all(&buf)
            .map_err(|e| io_err(&self.path, e))?;
        self.chunks_written += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if self.chunks_written != self.header.n_chunks {
            return Err(Error::InvalidArgument(format!(
                "KL base file: {} of {} chunks written",
                self.chunks_written, self.header.n_chunks
            )));
        }
        self.out.flush().map_err(|e| io_err(&self.path, e))
    }
}

/// Reads a base file written by [`KldWriter`], chunk by chunk.
pub struct KldReader {
    path: PathBuf,
    input: BufReader<File>,
    pub header: KldHeader,
    pub tokens: Vec<u32>,
    buf: Vec<u8>,
}

impl KldReader {
    pub fn open(path: &Path) -> Result<KldReader> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let len = file.metadata().map_err(|e| io_err(path, e))?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let bad = |msg: String| Error::Format(format!("{}: {msg}", path.display()));
        let mut head = [0u8; 24];
        input
            .read_exact(&mut head)
            .map_err(|_| bad("too short for a KL-divergence base file".into()))?;
        if &head[..8] != KLD_MAGIC {
            return Err(bad(
                "not a KL-divergence base file (bad magic; write one with --kl-divergence-base)"
                    .into(),
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap());
        let header = KldHeader {
            n_vocab: u32_at(8),
            n_ctx: u32_at(12),
            n_chunks: u32_at(16),
        };
        if header.n_vocab == 0
            || header.n_chunks == 0
            || scored_positions(header.n_ctx as usize).is_empty()
        {
            return Err(bad(format!("invalid header {header:?}")));
        }
        if len != header.file_size() {
            return Err(bad(format!(
                "size {len} bytes, expected {} for {header:?} (truncated or corrupt)",
                header.file_size()
            )));
        }
        let n_tok = header.n_chunks as usize * header.n_ctx as usize;
        let mut raw = vec![0u8; 4 * n_tok];
        input.read_exact(&mut raw).map_err(|e| io_err(path, e))?;
        let tokens = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Ok(KldReader {
            path: path.to_path_buf(),
            input,
            header,
            tokens,
            buf: Vec::new(),
        })
    }

    /// Reads the next chunk's log-probs into `out` (`n_scored * n_vocab` values).
    pub fn read_chunk(&mut self, out: &mut [f32]) -> Result<()> {
        let scored = scored_positions(self.header.n_ctx as usize).len();
        if out.len() != scored * self.header.n_vocab as usize {
            return Err(Error::InvalidArgument(
                "KL base file: chunk buffer of the wrong size".into(),
            ));
        }
        self.buf.resize(4 * out.len(), 0);
        self.input
            .read_exact(&mut self.buf)
            .map_err(|e| io_err(&self.path, e))?;
        for (o, b) in out.iter_mut().zip(self.buf.chunks_exact(4)) {
            *o = f32::from_le_bytes(b.try_into().unwrap());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scored_positions_follow_llama_cpp() {
        assert_eq!(scored_positions(512), 256..511);
        assert_eq!(scored_positions(4), 2..3);
        assert!(scored_positions(2).is_empty());
    }

    #[test]
    fn log_softmax_normalises() {
        let logits = [1.0f32, 2.0, 3.0, -100.0];
        let mut out = [0.0f32; 4];
        log_softmax(&logits, &mut out);
        let total: f64 = out.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        // ln(e^1 / (e^1 + e^2 + e^3 + e^-100)) computed by hand.
        let expect = 1.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((out[0] as f64 - expect).abs() < 1e-6);
    }

    #[test]
    fn perplexity_of_uniform_model_is_vocab_size() {
        let mut p = Perplexity::default();
        for _ in 0..10 {
            p.add(-(50f64.ln()));
        }
        assert!((p.ppl() - 50.0).abs() < 1e-9);
        assert_eq!(p.ppl_se(), 0.0);
    }

    #[test]
    fn standard_error_matches_hand_computation() {
        let mut m = MeanSe::default();
        for x in [1.0, 2.0, 3.0, 4.0] {
            m.add(x);
        }
        // population variance 1.25, se = sqrt(1.25 / 3)
        assert!((m.se() - (1.25f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn kl_of_identical_distributions_is_zero_and_known_value_otherwise() {
        let base = [0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()];
        let q = [0.25f32.ln(), 0.5f32.ln(), 0.25f32.ln()];
        let mut same = KlDivergence::default();
        same.add(&base, &base, 0).unwrap();
        assert_eq!(same.mean_kld().0, 0.0);
        assert_eq!(same.same_top_pct().0, 100.0);
        let mut diff = KlDivergence::default();
        diff.add(&base, &q, 0).unwrap();
        // 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2
        assert!((diff.mean_kld().0 - 0.25 * 2f64.ln()).abs() < 1e-6);
        assert_eq!(diff.same_top_pct().0, 0.0);
        let s = diff.summary();
        assert!((s.ppl_ratio.0 - 2.0).abs() < 1e-6);
        assert!(diff.add(&base, &q[..2], 0).is_err());
    }

    #[test]
    fn base_file_round_trips_and_rejects_truncation() {
        let dir = std::env::temp_dir().join(format!("rgkld-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("base.bin");
        let header = KldHeader {
            n_vocab: 3,
            n_ctx: 4,
            n_chunks: 2,
        };
        let tokens: Vec<u32> = (0..8).collect();
        let mut w = KldWriter::create(&path, header.clone(), &tokens).unwrap();
        w.write_chunk(&[-1.0, -2.0, -3.0]).unwrap();
        w.write_chunk(&[-4.0, -5.0, -6.0]).unwrap();
        w.finish().unwrap();
        let mut r = KldReader::open(&path).unwrap();
        assert_eq!(r.header, header);
        assert_eq!(r.tokens, tokens);
        let mut row = [0.0f32; 3];
        r.read_chunk(&mut row).unwrap();
        r.read_chunk(&mut row).unwrap();
        assert_eq!(row, [-4.0, -5.0, -6.0]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(KldReader::open(&path), Err(Error::Format(_))));
        std::fs::write(&path, b"notakldfile-at-all-but-long-enough").unwrap();
        assert!(matches!(KldReader::open(&path), Err(Error::Format(_))));
        std::fs::remove_dir_all(&dir).ok();
    }
}
