//! The prompt cache, the recurrent way. A recurrent state cannot be rewound to an earlier
//! position, but a whole sequence state is small (a few MB to a few tens of MB, whatever the
//! length), so the cache keeps snapshots: the bytes of `BatchContext::seq_save` at the end of
//! a prompt and at the end of an answer, keyed by the exact token ids fed to reach them. A
//! request whose prompt starts with a snapshot's tokens loads the longest such snapshot and
//! runs only the rest; a prompt equal to a snapshot's tokens samples straight from the saved
//! logits. Bounded by a byte budget, least recently used first out.

/// One snapshot.
struct Entry {
    tokens: Vec<u32>,
    state: Vec<u8>,
    /// The state was saved with the logits after its last token (an exact hit can sample).
    has_logits: bool,
    last_used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.state.len() + self.tokens.len() * 4
    }
}

/// A snapshot found for a prompt.
pub struct Hit<'a> {
    /// Prompt tokens the snapshot covers.
    pub len: usize,
    pub state: &'a [u8],
}

pub struct PromptCache {
    entries: Vec<Entry>,
    limit_bytes: usize,
    bytes: usize,
    clock: u64,
}

impl PromptCache {
    /// A cache of at most `limit_bytes` (0 = disabled: nothing is stored).
    pub fn new(limit_bytes: usize) -> PromptCache {
        PromptCache {
            entries: Vec::new(),
            limit_bytes,
            bytes: 0,
            clock: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.limit_bytes > 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Snapshots held.
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// The longest snapshot whose tokens start `prompt`. A snapshot of the whole prompt counts
    /// only with its logits (the next token is sampled from them; without, nothing could be
    /// run to compute them). Marks it used.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<Hit<'_>> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                let n = e.tokens.len();
                n > 0
                    && n <= prompt.len()
                    && (n < prompt.len() || e.has_logits)
                    && prompt[..n] == e.tokens[..]
            })
            .max_by_key(|(_, e)| e.tokens.len())
            .map(|(i, _)| i)?;
        self.clock += 1;
        let e = &mut self.entries[best];
        e.last_used = self.clock;
        Some(Hit {
            len: e.tokens.len(),
            state: &e.state,
        })
    }

    /// Whether a snapshot of exactly `tokens` is stored (then it is marked used).
    pub fn touch(&mut self, tokens: &[u32]) -> bool {
        self.clock += 1;
        match self.entries.iter_mut().find(|e| e.tokens == tokens) {
            Some(e) => {
                e.last_used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Stores a snapshot of `tokens`, `state_len` bytes written by `save` into the buffer it
    /// is given, evicting the least recently used snapshots to stay within the budget. Nothing
    /// is stored when the cache is disabled, the snapshot alone exceeds the budget, or `save`
    /// fails. A snapshot of the same tokens is replaced.
    pub fn insert(
        &mut self,
        tokens: &[u32],
        state_len: usize,
        has_logits: bool,
        save: impl FnOnce(&mut [u8]) -> bool,
    ) {
        let need = state_len + tokens.len() * 4;
        if !self.enabled() || tokens.is_empty() || need > self.limit_bytes {
            return;
        }
        // An evicted snapshot's buffer is reused: its pages are already mapped, where a new
        // one of tens of MB would fault them in again.
        let mut reuse: Option<Vec<u8>> = None;
        if let Some(i) = self.entries.iter().position(|e| e.tokens == tokens) {
            reuse = Some(self.remove(i));
        }
        while self.bytes + need > self.limit_bytes {
            let Some(lru) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            let freed = self.remove(lru);
            if freed.len() == state_len {
                reuse = Some(freed);
            }
        }
        let mut state = match reuse {
            Some(buf) if buf.len() == state_len => buf,
            _ => vec![0u8; state_len],
        };
        if !save(&mut state) {
            return;
        }
        self.clock += 1;
        let entry = Entry {
            tokens: tokens.to_vec(),
            state,
            has_logits,
            last_used: self.clock,
        };
        self.bytes += entry.bytes();
        self.entries.push(entry);
    }

    /// Drops entry `i`; returns its state buffer.
    fn remove(&mut self, i: usize) -> Vec<u8> {
        let e = self.entries.swap_remove(i);
        self.bytes -= e.bytes();
        e.state
    }
}

#[cfg(test)]
mod tests {
    use super::PromptCache;

    fn store(c: &mut PromptCache, tokens: &[u32], logits: bool) {
        c.insert(tokens, 100, logits, |b| {
            b.fill(tokens.len() as u8);
            true
        });
    }

    #[test]
    fn longest_prefix_wins_and_exact_needs_logits() {
        let mut c = PromptCache::new(10_000);
        store(&mut c, &[1, 2], true);
        store(&mut c, &[1, 2, 3, 4], false);
        store(&mut c, &[1, 9], true);
        let hit = c.lookup(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!((hit.len, hit.state[0]), (4, 4));
        // The whole prompt without logits does not count: the shorter one does.
        assert_eq!(c.lookup(&[1, 2, 3, 4]).unwrap().len, 2);
        assert_eq!(c.lookup(&[1, 9]).unwrap().len, 2);
        assert!(c.lookup(&[7]).is_none());
        assert!(c.lookup(&[1]).is_none());
    }

    #[test]
    fn least_recently_used_goes_first_and_bytes_stay_within_budget() {
        // Three entries of 100 + 4n bytes fit in 330, a fourth evicts the oldest unused.
        let mut c = PromptCache::new(330);
        store(&mut c, &[1], true);
        store(&mut c, &[2], true);
        store(&mut c, &[3], true);
        assert_eq!((c.entries(), c.bytes()), (3, 312));
        assert!(c.lookup(&[1, 5]).is_some()); // [1] is now the most recent
        store(&mut c, &[4], true);
        assert_eq!(c.entries(), 3);
        assert!(c.bytes() <= 330);
        assert!(c.lookup(&[2]).is_none(), "[2] was the least recently used");
        assert!(c.lookup(&[1]).is_some() && c.lookup(&[3]).is_some());
        // Same tokens again: replaced, not duplicated.
        store(&mut c, &[4], true);
        assert_eq!(c.entries(), 3);
    }

    #[test]
    fn disabled_or_oversized_stores_nothing() {
        let mut off = PromptCache::new(0);
        store(&mut off, &[1], true);
        assert!(off.entries() == 0 && off.lookup(&[1]).is_none());
        let mut small = PromptCache::new(50);
        store(&mut small, &[1], true);
        assert!(small.entries() == 0);
        let mut failing = PromptCache::new(1000);
        failing.insert(&[1], 10, true, |_| false);
        assert!(failing.entries() == 0 && failing.bytes() == 0);
    }
}
