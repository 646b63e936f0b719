//! Token sampling: repetition penalty, top-k, top-p, min-p, temperature, and a seeded draw.
//! OpenAI's presence and frequency penalties ([`TokenPenalties`], off by default) join the
//! repetition penalty, over the same window of accepted tokens, as in llama.cpp.
//!
//! The chain and its defaults follow llama.cpp's `common` sampler:
//! penalties -> top-k -> top-p -> min-p -> temperature -> draw. Top-p and min-p therefore look at
//! the distribution at temperature 1; the temperature only reshapes the tokens they kept.
//! `temp <= 0` selects greedy decoding: the argmax of the (penalised) logits, ties to the lowest id.
//!
//! The sampler never modifies the caller's logits. It copies them into scratch buffers that are
//! allocated on the first call and reused afterwards, so sampling allocates nothing per token.
//! Randomness comes from our own xoshiro256** generator seeded through splitmix64, so the same seed
//! and the same logits always give the same tokens, on every platform.

use std::cmp::Ordering;
use std::collections::VecDeque;

use crate::error::{Error, Result};

/// Sampler settings. `Default` gives llama.cpp's defaults with a random seed.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerParams {
    /// Temperature; `<= 0` means greedy (argmax).
    pub temp: f32,
    /// Keep the `top_k` most likely tokens; `<= 0` disables the filter.
    pub top_k: i32,
    /// Nucleus: keep the smallest set of most likely tokens whose probability sum reaches
    /// `top_p`; `>= 1` disables the filter.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top token's; `<= 0` disables it.
    pub min_p: f32,
    /// Repetition penalty over the last `repeat_last_n` accepted tokens; `1.0` disables it.
    pub repeat_penalty: f32,
    /// How many accepted tokens the penalty looks back on; `0` disables the penalty.
    pub repeat_last_n: usize,
    /// PRNG seed; `None` draws a random seed (see [`Sampler::seed`] to recover it).
    pub seed: Option<u64>,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

impl SamplerParams {
    /// Greedy decoding (argmax), everything else at its default.
    pub fn greedy() -> Self {
        SamplerParams {
            temp: 0.0,
            ..Default::default()
        }
    }

    /// Checks the ranges; the CLI turns the error into its `error: ...` line.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !self.temp.is_finite() {
            return bad(format!(
                "temperature must be a finite number, got {}",
                self.temp
            ));
        }
        if !(self.top_p.is_finite() && (0.0..=1.0).contains(&self.top_p)) {
            return bad(format!("top-p must be in [0, 1], got {}", self.top_p));
        }
        if !(self.min_p.is_finite() && (0.0..=1.0).contains(&self.min_p)) {
            return bad(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(format!(
                "repeat penalty must be > 0, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// OpenAI's `presence_penalty` and `frequency_penalty` (llama.cpp's `penalty_present` and
/// `penalty_freq`): a token seen `c > 0` times among the last `repeat_last_n` accepted tokens
/// loses `c * frequency + presence` from its logit, after the repetition penalty. Both 0 (the
/// default) leave the sampler exactly as without them. Set with [`Sampler::set_token_penalties`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenPenalties {
    pub presence: f32,
    pub frequency: f32,
}

impl TokenPenalties {
    /// OpenAI's range for both: [-2, 2].
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("presence", self.presence), ("frequency", self.frequency)] {
            if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                return Err(Error::InvalidArgument(format!(
                    "{name} penalty must be in [-2, 2], got {v}"
                )));
            }
        }
        Ok(())
    }

    fn active(&self) -> bool {
        self.presence != 0.0 || self.frequency != 0.0
    }
}

/// One candidate token: its id and its current logit (or, after [`Sampler::distribution`], its
/// probability in `p`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenProb {
    pub id: u32,
    pub logit: f32,
    pub p: f32,
}

/// A stateful sampler: the parameters, the PRNG, the penalty history and the scratch buffers.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplerParams,
    seed: u64,
    rng: Xoshiro256StarStar,
    /// The last `repeat_last_n` accepted tokens, oldest first.
    history: VecDeque<u32>,
    /// Scratch: the candidates of the current call (allocated once, reused).
    candidates: Vec<TokenProb>,
    /// Scratch: the distinct ids of `history`, for applying the penalty once per token.
    penalised: Vec<u32>,
    /// Scratch: how often each id of `penalised` occurs in `history` (filled only when
    /// `token_penalties` are active).
    penalised_counts: Vec<u32>,
    token_penalties: TokenPenalties,
}

impl Sampler {
    /// A sampler with `params`; a `None` seed is replaced by a random one.
    ///
    /// The parameters are not validated here (the CLI calls [`SamplerParams::validate`]); out-of-range
    /// values behave like the nearest valid setting.
    pub fn new(params: SamplerParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(random_seed);
        let history = VecDeque::with_capacity(params.repeat_last_n);
        Sampler {
            rng: Xoshiro256StarStar::from_seed(seed),
            seed,
            history,
            candidates: Vec::new(),
            penalised: Vec::new(),
            penalised_counts: Vec::new(),
            token_penalties: TokenPenalties::default(),
            params,
        }
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Turns on OpenAI's presence / frequency penalties (see [`TokenPenalties`]); they look at
    /// the same `repeat_last_n` window as the repetition penalty.
    pub fn set_token_penalties(&mut self, penalties: TokenPenalties) {
        self.token_penalties = penalties;
    }

    pub fn token_penalties(&self) -> TokenPenalties {
        self.token_penalties
    }

    /// The seed in use (the drawn one when the params had none), so a run can be repeated.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Forgets the penalty history and restarts the PRNG from the seed.
    pub fn reset(&mut self) {
        self.history.clear();
        self.rng = Xoshiro256StarStar::from_seed(self.seed);
    }

    /// Records a token that is now part of the sequence (prompt or generated), for the penalty.
    pub fn accept(&mut self, id: u32) {
        let n = self.params.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.history.len() == n {
            self.history.pop_front();
        }
        self.history.push_back(id);
    }

    /// The tokens the penalty currently looks at, oldest first.
    pub fn history(&self) -> impl Iterator<Item = u32> + '_ {
        self.history.iter().copied()
    }

    /// Picks the next token from one row of logits (one entry per vocabulary id).
    ///
    /// Does not record the token: call [`Sampler::accept`] with it (the caller may decide not to,
    /// e.g. for a stop token). Panics only on an empty `logits` slice.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "Sampler::sample: empty logits");
        if self.params.temp <= 0.0 {
            return self.greedy(logits);
        }
        self.filter(logits);
        let u = self.rng.next_f64();
        draw(&self.candidates, u)
    }

    /// The distribution [`Sampler::sample`] draws from, for inspection and tests: the candidates
    /// that survive the filters, most likely first, with `p` = their probability (summing to 1).
    /// In greedy mode this is the single argmax token with `p = 1`. Uses no randomness.
    pub fn distribution(&mut self, logits: &[f32]) -> &[TokenProb] {
        assert!(!logits.is_empty(), "Sampler::distribution: empty logits");
        if self.params.temp <= 0.0 {
            let id = self.greedy(logits);
            self.candidates.clear();
            self.candidates.push(TokenProb {
                id,
                logit: logits[id as usize],
                p: 1.0,
            });
        } else {
            self.filter(logits);
        }
        &self.candidates
    }

    /// Argmax of the penalised logits, ties to the lowest id; NaN never wins.
    fn greedy(&mut self, logits: &[f32]) -> u32 {
        self.load_penalised_ids();
        let mut best_id = 0u32;
        let mut best = f32::NEG_INFINITY;
        let mut found = false;
        scan_logits(logits, &self.penalty(), |id, l| {
            // Strict `>` keeps the lowest id among equal maxima.
            if !found || l > best {
                best = l;
                best_id = id;
                found = true;
            }
        });
        best_id
    }

    /// Fills `penalised` with the sorted distinct ids the penalties apply to (empty when they
    /// are off) and, with presence / frequency penalties, `penalised_counts` with their
    /// counts; no allocation once grown.
    fn load_penalised_ids(&mut self) {
        self.penalised.clear();
        self.penalised_counts.clear();
        let p = &self.params;
        let counted = self.token_penalties.active();
        if (p.repeat_penalty == 1.0 && !counted) || p.repeat_last_n == 0 {
            return;
        }
        self.penalised.extend(self.history.iter().copied());
        self.penalised.sort_unstable();
        if counted {
            // Run lengths of the sorted ids are the counts.
            let mut kept = 0;
            for i in 0..self.penalised.len() {
                let id = self.penalised[i];
                if kept > 0 && self.penalised[kept - 1] == id {
                    // kept > 0: the count of this id was pushed with it.
                    self.penalised_counts[kept - 1] += 1;
                } else {
                    self.penalised[kept] = id;
                    self.penalised_counts.push(1);
                    kept += 1;
                }
            }
            self.penalised.truncate(kept);
        } else {
            self.penalised.dedup();
        }
    }

    /// The penalties of the next scan (after [`Sampler::load_penalised_ids`]).
    fn penalty(&self) -> Penalty<'_> {
        Penalty {
            ids: &self.penalised,
            counts: &self.penalised_counts,
            repeat: self.params.repeat_penalty,
            presence: self.token_penalties.presence,
            frequency: self.token_penalties.frequency,
        }
    }

    /// Runs penalties -> top-k -> top-p -> min-p -> temperature and leaves the survivors in
    /// `candidates`, sorted most likely first, with normalised probabilities in `p`.
    ///
    /// Only the candidates that can survive are ever sorted: with top-k, a streaming selection
    /// keeps the k best; without it, min-p's floor (`max + ln(min_p)`) bounds the set in
    /// advance, because top-p and min-p both keep a prefix of the sorted order, so the result
    /// is the shorter of the two prefixes.
    fn filter(&mut self, logits: &[f32]) {
        // 1. Repetition penalty (llama.cpp: a positive logit is divided, a negative one
        //    multiplied, once per distinct token of the window), applied while scanning.
        self.load_penalised_ids();
        let penalty = Penalty {
            ids: &self.penalised,
            counts: &self.penalised_counts,
            repeat: self.params.repeat_penalty,
            presence: self.token_penalties.presence,
            frequency: self.token_penalties.frequency,
        };
        let penalty = &penalty;
        let params = &self.params;
        let cand = &mut self.candidates;
        cand.clear();

        // 2. Top-k. `top_k_set_norm` = (max logit, sum of exp(l - max)) over the whole top-k
        //    set when that set is the full vocabulary (top-p normalises over it).
        let n = logits.len();
        let k = if params.top_k > 0 {
            (params.top_k as usize).min(n)
        } else {
            n
        };
        let mut top_k_set_norm = None;
        if k < n {
            collect_top_k(logits, penalty, k, cand);
        } else {
            let mut max = f32::NEG_INFINITY;
            scan_logits(logits, penalty, |_, l| max = max.max(l));
            let floor = if params.min_p > 0.0 {
                max + params.min_p.ln()
            } else {
                f32::NEG_INFINITY
            };
            let mut sum = 0.0f64;
            scan_logits(logits, penalty, |id, l| {
                if max > f32::NEG_INFINITY {
                    sum += ((l - max) as f64).exp();
                }
                if l >= floor {
                    cand.push(TokenProb {
                        id,
                        logit: l,
                        p: 0.0,
                    });
                }
            });
            top_k_set_norm = Some((max, sum));
        }
        cand.sort_unstable_by(by_logit_desc);

        // 3. Top-p on the softmax at temperature 1: keep the shortest prefix whose mass reaches p.
        if params.top_p < 1.0 && !cand.is_empty() {
            let (max, sum) = top_k_set_norm.unwrap_or_else(|| {
                let max = cand[0].logit;
                (
                    max,
                    cand.iter().map(|c| ((c.logit - max) as f64).exp()).sum(),
                )
            });
            if max > f32::NEG_INFINITY && sum > 0.0 {
                let mut cum = 0.0f64;
                let mut keep = cand.len();
                for (i, c) in cand.iter().enumerate() {
                    cum += ((c.logit - max) as f64).exp() / sum;
                    if cum >= params.top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
                cand.truncate(keep.max(1));
            }
        }

        // 4. Min-p: keep tokens with p >= min_p * p_max, i.e. logit >= max_logit + ln(min_p).
        if params.min_p > 0.0 && cand.len() > 1 {
            let threshold = cand[0].logit + params.min_p.ln();
            let keep = cand.iter().take_while(|c| c.logit >= threshold).count();
            cand.truncate(keep.max(1));
        }

        // 5. Temperature, then the final probabilities.
        softmax_into_p(cand, params.temp);
    }
}

/// The penalties of one scan: the ids they apply to (sorted, distinct), their counts (empty
/// unless presence / frequency penalties are on), and the three strengths.
struct Penalty<'a> {
    ids: &'a [u32],
    counts: &'a [u32],
    repeat: f32,
    presence: f32,
    frequency: f32,
}

/// Calls `f(id, logit)` for every token in id order, with NaN mapped to -inf and the
/// penalties applied to the ids in `penalty.ids`.
#[inline]
fn scan_logits(logits: &[f32], penalty: &Penalty<'_>, mut f: impl FnMut(u32, f32)) {
    if penalty.ids.is_empty() {
        for (i, &raw) in logits.iter().enumerate() {
            f(i as u32, sanitize(raw));
        }
        return;
    }
    let mut next = penalty.ids.iter().copied().enumerate().peekable();
    for (i, &raw) in logits.iter().enumerate() {
        let id = i as u32;
        let mut l = sanitize(raw);
        if let Some(&(k, _)) = next.peek().filter(|&&(_, pid)| pid == id) {
            if penalty.repeat != 1.0 {
                l = penalise(l, penalty.repeat);
            }
            if let Some(&count) = penalty.counts.get(k) {
                // llama.cpp: logit -= count * freq + (count > 0) * present.
                l -= count as f32 * penalty.frequency + penalty.presence;
                l += 0.0; // as in `sanitize`: no -0.0
            }
            next.next();
        }
        f(id, l);
    }
}

/// The `k` best candidates (by [`by_logit_desc`]) into `cand`, unsorted, in one pass: a buffer
/// is pruned back to the k best whenever it fills up, and a token that does not beat the
/// current k-th best is skipped (it can never enter the top k: ids arrive in increasing order,
/// so an equal logit also loses the tie).
fn collect_top_k(logits: &[f32], penalty: &Penalty<'_>, k: usize, cand: &mut Vec<TokenProb>) {
    let cap = (4 * k).max(256);
    let mut kth: Option<f32> = None;
    scan_logits(logits, penalty, |id, l| {
        // (`scan_logits` leaves no NaN and no -0.0, so `<=` agrees with the total order.)
        if kth.is_some_and(|t| l <= t) {
            return;
        }
        cand.push(TokenProb {
            id,
            logit: l,
            p: 0.0,
        });
        if cand.len() >= cap {
            cand.select_nth_unstable_by(k - 1, by_logit_desc);
            cand.truncate(k);
            kth = Some(cand[k - 1].logit);
        }
    });
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, by_logit_desc);
        cand.truncate(k);
    }
}

/// Descending logit, then ascending id: a total order, so selection and sorting are
/// deterministic even with equal logits.
fn by_logit_desc(a: &TokenProb, b: &TokenProb) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// NaN logits (a broken model) become -inf so they are never chosen and never poison a sum;
/// -0.0 becomes +0.0 (`x + 0.0`), so the total order used for sorting sees equal values as
/// equal and breaks the tie by id.
#[inline]
fn sanitize(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else {
        l + 0.0
    }
}

/// llama.cpp's repetition penalty on one logit.
#[inline]
fn penalise(logit: f32, penalty: f32) -> f32 {
    if logit > 0.0 {
        logit / penalty
    } else {
        logit * penalty + 0.0 // an underflow to -0.0 becomes +0.0, as in `sanitize`
    }
}

/// `p = softmax(logit / temp)` over `cand`, which is sorted so `cand[0]` has the largest logit.
/// If every logit is -inf the first candidate gets all the mass.
fn softmax_into_p(cand: &mut [TokenProb], temp: f32) {
    let Some(first) = cand.first() else { return };
    let max = first.logit;
    if max == f32::NEG_INFINITY {
        for (i, c) in cand.iter_mut().enumerate() {
            c.p = if i == 0 { 1.0 } else { 0.0 };
        }
        return;
    }
    let inv_t = 1.0 / temp as f64;
    let mut sum = 0.0f64;
    for c in cand.iter_mut() {
        let e = (((c.logit - max) as f64) * inv_t).exp();
        c.p = e as f32;
        sum += e;
    }
    let inv_sum = 1.0 / sum;
    for c in cand.iter_mut() {
        c.p = (c.p as f64 * inv_sum) as f32;
    }
}

/// Inverse-CDF draw with `u` uniform in [0, 1). Falls back to the last candidate with mass when
/// rounding leaves the cumulative sum just under `u`.
fn draw(cand: &[TokenProb], u: f64) -> u32 {
    let mut cum = 0.0f64;
    let mut last_with_mass = cand[0].id;
    for c in cand {
        if c.p > 0.0 {
            last_with_mass = c.id;
        }
        cum += c.p as f64;
        if u < cum {
            return c.id;
        }
    }
    last_with_mass
}

/// A seed from the OS-seeded hasher keys of the standard library plus the clock.
fn random_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.write_u32(std::process::id());
    h.finish()
}

/// splitmix64: expands one 64-bit seed into well-mixed words (used to seed xoshiro).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman and Vigna): small, fast, and good enough for sampling.
#[derive(Debug, Clone)]
pub struct Xoshiro256StarStar {
    s: [u64; 4],
}

impl Xoshiro256StarStar {
    pub fn from_seed(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // splitmix64 never yields four zero words from one stream, so the state is valid.
        Xoshiro256StarStar { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_reference_vector() {
        // Reference: the C implementation seeded with s = {1, 2, 3, 4}.
        let mut r = Xoshiro256StarStar { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240, 1215971899390074240]);
    }

    #[test]
    fn splitmix_matches_reference_vector() {
        // Reference values of splitmix64 starting from state 0.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
    }

    /// Logits 0..n as f32 (id i has logit i).
    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn presence_and_frequency_penalties_follow_llama_cpp() {
        // ids 9 (seen 3 times) and 8 (seen once): 9 - (3 * 0.5 + 1) = 6.5, 8 - (0.5 + 1) = 6.5,
        // so 7 (unpenalised) wins greedy; with frequency 0.2 only: 9 - 1.6 = 7.4 still wins.
        let mut s = Sampler::new(SamplerParams::greedy());
        for id in [9, 9, 8, 9] {
            s.accept(id);
        }
        let logits = ramp(10);
        assert_eq!(s.sample(&logits), 9, "no token penalties by default");
        s.set_token_penalties(TokenPenalties {
            presence: 1.0,
            frequency: 0.5,
        });
        assert_eq!(s.sample(&logits), 7);
        s.set_token_penalties(TokenPenalties {
            presence: 0.0,
            frequency: 0.2,
        });
        assert_eq!(s.sample(&logits), 9);
        // The filtered distribution sees the same penalised logits.
        let mut t = Sampler::new(SamplerParams {
            temp: 1.0,
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(1),
            ..Default::default()
        });
        for id in [9, 9, 8, 9] {
            t.accept(id);
        }
        t.set_token_penalties(TokenPenalties {
            presence: 1.0,
            frequency: 0.5,
        });
        // Penalised: 9 -> 6.5, 8 -> 6.5; top-3 = 7, then the tie 8, 9 by id.
        let d: Vec<(u32, f32)> = t
            .distribution(&logits)
            .iter()
            .map(|c| (c.id, c.logit))
            .collect();
        assert_eq!(d, vec![(7, 7.0), (8, 6.5), (9, 6.5)]);
    }

    #[test]
    fn token_penalties_combine_with_repetition_penalty_and_window() {
        // repeat 2: 9 -> 4.5, then - (0.5 + 0) = 4.0; only the last 2 accepted ids count.
        let mut s = Sampler::new(SamplerParams {
            repeat_penalty: 2.0,
            repeat_last_n: 2,
            ..SamplerParams::greedy()
        });
        s.set_token_penalties(TokenPenalties {
            presence: 0.5,
            frequency: 0.0,
        });
        for id in [3, 9, 8] {
            s.accept(id); // 3 falls out of the window
        }
        let mut logits = ramp(10);
        logits[3] = 4.2;
        // 9 -> 4.0, 8 -> 3.5, 3 unpenalised 4.2, 7 = 7.0 wins.
        assert_eq!(s.sample(&logits), 7);
        logits[7] = 0.0;
        logits[6] = 0.0;
        logits[5] = 0.0;
        logits[4] = 0.0;
        assert_eq!(s.sample(&logits), 3);
    }

    #[test]
    fn token_penalties_are_range_checked() {
        assert!(TokenPenalties::default().validate().is_ok());
        assert!(TokenPenalties {
            presence: 2.5,
            frequency: 0.0
        }
        .validate()
        .is_err());
        assert!(TokenPenalties {
            presence: 0.0,
            frequency: f32::NAN
        }
        .validate()
        .is_err());
    }

    #[test]
    fn draw_falls_back_on_rounding() {
        let cand = [
            TokenProb {
                id: 5,
                logit: 0.0,
                p: 0.5,
            },
            TokenProb {
                id: 9,
                logit: 0.0,
                p: 0.4999,
            },
        ];
        assert_eq!(draw(&cand, 0.99999), 9);
        assert_eq!(draw(&cand, 0.1), 5);
    }
}
