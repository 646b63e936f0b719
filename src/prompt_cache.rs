//! A saved prompt: the token ids a sequence has consumed and its state after them, in one
//! file. `rg-run --prompt-cache` (llama.cpp's flag) writes one after the prompt and restores
//! it when a later prompt starts with the same tokens; `rg-run -cnv`'s `/save` and `/load`
//! park and resume a conversation with it. The state has a fixed size whatever the number of
//! tokens (a few tens of MB for the 2B model), so the file does too.
//!
//! Layout, little-endian:
//!
//! ```text
//! magic "RGPC" | version u32 | n_tokens u64 | tokens u32[n_tokens]
//! | checksum u64 (FNV-1a of all before) | state (`Context::save_state`, to the end of the file)
//! ```
//!
//! The state carries its own magic, model fingerprint and checksum, so a file written for
//! another model, or damaged anywhere, is refused with an error rather than trusted. The
//! recurrent state cannot be rewound: a saved prompt serves only a prompt that starts with all
//! of its tokens.

use std::io::Write;
use std::path::Path;

use crate::model::{fnv1a, BatchContext, Context};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"RGPC";
const VERSION: u32 = 1;
/// Magic, version, token count.
const HEADER_LEN: usize = 4 + 4 + 8;
const CHECKSUM_LEN: usize = 8;

/// Token ids and the state of a sequence after exactly those tokens (logits included).
pub struct SavedPrompt {
    tokens: Vec<u32>,
    state: Vec<u8>,
}

impl SavedPrompt {
    /// The state of `ctx`, which has consumed exactly `tokens` since its start.
    pub fn capture(ctx: &Context, tokens: &[u32]) -> Result<SavedPrompt> {
        if ctx.position() != tokens.len() {
            return Err(Error::InvalidArgument(format!(
                "the context holds {} tokens, {} were given",
                ctx.position(),
                tokens.len()
            )));
        }
        let mut state = vec![0u8; ctx.saved_state_len()];
        ctx.save_state(&mut state)?;
        Ok(SavedPrompt {
            tokens: tokens.to_vec(),
            state,
        })
    }

    /// The state of sequence `seq` of `batch`, which has consumed exactly `tokens`.
    pub fn capture_seq(batch: &BatchContext, seq: usize, tokens: &[u32]) -> Result<SavedPrompt> {
        let position = batch.seq_position(seq)?;
        if position != tokens.len() {
            return Err(Error::InvalidArgument(format!(
                "sequence {seq} holds {position} tokens, {} were given",
                tokens.len()
            )));
        }
        let mut state = vec![0u8; batch.seq_state_len()];
        batch.seq_save(seq, &mut state)?;
        Ok(SavedPrompt {
            tokens: tokens.to_vec(),
            state,
        })
    }

    /// [`SavedPrompt::restore`] into sequence `seq` of `batch`.
    pub fn restore_seq(&self, batch: &mut BatchContext, seq: usize) -> Result<()> {
        batch.seq_load(seq, &self.state)
    }

    /// The tokens the saved state has consumed.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Whether this saved prompt can stand in for the first tokens of `prompt`.
    pub fn serves(&self, prompt: &[u32]) -> bool {
        !self.tokens.is_empty() && prompt.starts_with(&self.tokens)
    }

    /// Puts the saved state into `ctx` (its position becomes `tokens().len()`, its logits
    /// those after the last token). Refused, `ctx` unchanged, when the state belongs to
    /// another model or is damaged.
    pub fn restore(&self, ctx: &mut Context) -> Result<()> {
        ctx.load_state(&self.state)
    }

    /// Writes the file: into a temporary file beside `path`, renamed over it when complete,
    /// so an interrupted write never leaves a truncated cache behind.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut head = Vec::with_capacity(HEADER_LEN + 4 * self.tokens.len() + CHECKSUM_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
        for t in &self.tokens {
            head.extend_from_slice(&t.to_le_bytes());
        }
        let sum = fnv1a(&head);
        head.extend_from_slice(&sum.to_le_bytes());

        let name = path.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a file name", path.display()))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&head)?;
            f.write_all(&self.state)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(path, e));
        }
        Ok(())
    }

    /// Reads a file written by [`SavedPrompt::write`]. The token list is checked here; the
    /// state (model, integrity) when it is restored.
    pub fn read(path: &Path) -> Result<SavedPrompt> {
        let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: &str| Error::Format(format!("{}: {why}", path.display()));
        if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
            return Err(bad("not an rgemma prompt cache"));
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        if version != VERSION {
            return Err(bad(&format!(
                "prompt cache version {version} (this build reads {VERSION})"
            )));
        }
        let n_tokens = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        let body = usize::try_from(n_tokens)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .and_then(|b| b.checked_add(HEADER_LEN))
            .filter(|&end| end + CHECKSUM_LEN <= bytes.len())
            .ok_or_else(|| bad("truncated (token list)"))?;
        let stored = u64::from_le_bytes(bytes[body..body + CHECKSUM_LEN].try_into().unwrap());
        if fnv1a(&bytes[..body]) != stored {
            return Err(bad("checksum mismatch in the token list (corrupt file)"));
        }
        let state = bytes.split_off(body + CHECKSUM_LEN);
        let tokens = bytes[HEADER_LEN..body]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        Ok(SavedPrompt { tokens, state })
    }
}
