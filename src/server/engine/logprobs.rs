//! Log-probabilities for `logprobs` / `top_logprobs`: of the model's distribution (softmax of
//! the raw logits, before penalties, filters and temperature), as OpenAI reports them.

/// The chosen token's log-probability and the `top` most likely tokens with theirs.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// Most likely first (ties: lower id first).
    pub top: Vec<(u32, f32)>,
}

/// Computes [`TokenLogprob`]s; holds the scratch of the top-n selection.
#[derive(Default)]
pub struct LogprobScratch {
    candidates: Vec<(f32, u32)>,
}

impl LogprobScratch {
    /// `log softmax(logits)[id]` and the `top_n` best tokens. NaN logits count as -inf.
    pub fn compute(&mut self, logits: &[f32], id: u32, top_n: usize) -> TokenLogprob {
        let clean = |l: f32| if l.is_nan() { f32::NEG_INFINITY } else { l };
        let max = logits
            .iter()
            .copied()
            .map(clean)
            .fold(f32::NEG_INFINITY, f32::max);
        let log_z = if max == f32::NEG_INFINITY {
            0.0
        } else {
            let sum: f64 = logits
                .iter()
                .map(|&l| ((clean(l) - max) as f64).exp())
                .sum();
            max as f64 + sum.ln()
        };
        let lp = |l: f32| (clean(l) as f64 - log_z) as f32;
        let mut top = Vec::with_capacity(top_n);
        if top_n > 0 {
            let c = &mut self.candidates;
            c.clear();
            c.extend(
                logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (clean(l), i as u32)),
            );
            let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            let n = top_n.min(c.len());
            if n < c.len() {
                c.select_nth_unstable_by(n - 1, order);
                c.truncate(n);
            }
            c.sort_unstable_by(order);
            top.extend(c.iter().map(|&(l, i)| (i, lp(l))));
        }
        TokenLogprob {
            id,
            logprob: logits
                .get(id as usize)
                .map_or(f32::NEG_INFINITY, |&l| lp(l)),
            top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogprobScratch;

    #[test]
    fn log_softmax_and_top_tokens() {
        let logits = [0.0f32, 2.0, 1.0, 2.0];
        let z = (1.0f64 + 2.0f64.exp() * 2.0 + 1.0f64.exp()).ln();
        let r = LogprobScratch::default().compute(&logits, 2, 3);
        assert!((r.logprob as f64 - (1.0 - z)).abs() < 1e-6);
        let ids: Vec<u32> = r.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert!((r.top[0].1 as f64 - (2.0 - z)).abs() < 1e-6);
        let sum: f64 = logits.iter().map(|&l| ((l as f64) - z).exp()).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert!(LogprobScratch::default()
            .compute(&logits, 0, 0)
            .top
            .is_empty());
    }
}
