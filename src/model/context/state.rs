//! Saving and restoring a [`Context`]'s sequence state (prompt caching, the C API's
//! `rg_state_save` / `rg_state_load`).
//!
//! The state is small and fixed: per recurrent layer the conv tail and the RG-LRU state, per
//! attention layer the K/V rings, plus the position and the last logits (so sampling can
//! continue right after a restore). Layout, all little-endian:
//!
//! ```text
//! magic "RGST" | version u32 | model fingerprint u64 | position u64 | n_floats u64
//! | logits f32[n_vocab] | layer buffers f32[...] in layer order | checksum u64 (FNV-1a of all before)
//! ```
//!
//! The fingerprint hashes the model's hyperparameters and tensor table plus a sample of each
//! tensor's bytes, so a state from another model (even one of the same geometry, or another
//! quantization of it) is refused.

use super::Context;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"RGST";
const VERSION: u32 = 1;
/// magic + version + fingerprint + position + n_floats.
const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8;
const CHECKSUM_LEN: usize = 8;

/// 64-bit FNV-1a: small, dependency-free, good enough to detect corruption and mix-ups (this
/// is not a defence against a forged state).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Fnv {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    fn u64(&mut self, v: u64) -> &mut Fnv {
        self.bytes(&v.to_le_bytes())
    }
}

impl Context {
    fn n_state_floats(&self) -> usize {
        self.model.n_vocab() + self.state_size_bytes() / 4
    }

    /// Bytes [`Context::save_state`] writes. Fixed for a model.
    pub fn saved_state_len(&self) -> usize {
        HEADER_LEN + self.n_state_floats() * 4 + CHECKSUM_LEN
    }

    fn model_fingerprint(&self) -> u64 {
        let gguf = self.model.gguf();
        let hp = self.model.hparams();
        let mut h = Fnv::new();
        h.bytes(format!("{hp:?}").as_bytes());
        for t in gguf.tensors() {
            h.bytes(t.name.as_bytes())
                .u64(t.ty.id() as u64)
                .u64(t.offset)
                .u64(t.size);
            let data = gguf.tensor_data(t);
            h.bytes(&data[..data.len().min(64)]);
            h.bytes(&data[data.len() - data.len().min(64)..]);
        }
        h.0
    }

    /// The state lives on the host only when no offload runs the model.
    fn check_on_host(&self) -> Result<()> {
        match &self.offload {
            Some(o) => Err(Error::Unsupported(format!(
                "state save/restore while the model runs on {}",
                o.describe()
            ))),
            None => Ok(()),
        }
    }

    /// Writes the state into `dst`, which must be exactly [`Context::saved_state_len`] bytes.
    pub fn save_state(&self, dst: &mut [u8]) -> Result<()> {
        self.check_on_host()?;
        if dst.len() != self.saved_state_len() {
            return Err(Error::InvalidArgument(format!(
                "state buffer of {} bytes, {} needed",
                dst.len(),
                self.saved_state_len()
            )));
        }
        let mut w = 0;
        let mut put = |b: &[u8]| {
            dst[w..w + b.len()].copy_from_slice(b);
            w += b.len();
        };
        put(MAGIC);
        put(&VERSION.to_le_bytes());
        put(&self.model_fingerprint().to_le_bytes());
        put(&(self.position as u64).to_le_bytes());
        put(&(self.n_state_floats() as u64).to_le_bytes());
        for v in &self.logits {
            put(&v.to_le_bytes());
        }
        for layer in &self.layers {
            for buf in layer.buffers_ref() {
                for v in buf {
                    put(&v.to_le_bytes());
                }
            }
        }
        let body = dst.len() - CHECKSUM_LEN;
        let sum = Fnv::new().bytes(&dst[..body]).0;
        dst[body..].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }

    /// Restores a state written by [`Context::save_state`] from a context of the same model.
    /// On any error (wrong size, corrupt, other model) the context is unchanged.
    pub fn load_state(&mut self, src: &[u8]) -> Result<()> {
        self.check_on_host()?;
        let bad = |why: &str| Error::InvalidArgument(format!("invalid state: {why}"));
        if src.len() != self.saved_state_len() {
            return Err(bad(&format!(
                "{} bytes, this model's state has {}",
                src.len(),
                self.saved_state_len()
            )));
        }
        let body = src.len() - CHECKSUM_LEN;
        let stored_sum = u64::from_le_bytes(src[body..].try_into().unwrap());
        if &src[..4] != MAGIC {
            return Err(bad("not an rgemma state (bad magic)"));
        }
        if Fnv::new().bytes(&src[..body]).0 != stored_sum {
            return Err(bad("checksum mismatch (corrupt data)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(src[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(src[o..o + 8].try_into().unwrap());
        if u32_at(4) != VERSION {
            return Err(bad(&format!("version {} (expected {VERSION})", u32_at(4))));
        }
        if u64_at(8) != self.model_fingerprint() {
            return Err(bad("saved from another model"));
        }
        if u64_at(24) != self.n_state_floats() as u64 {
            return Err(bad("float count does not match this model"));
        }
        // Everything is validated: from here on nothing can fail.
        self.position = u64_at(16) as usize;
        let mut floats = src[HEADER_LEN..body]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
        for v in self.logits.iter_mut() {
            *v = floats.next().unwrap();
        }
        for layer in &mut self.layers {
            for buf in layer.buffers() {
                for v in buf.iter_mut() {
                    *v = floats.next().unwrap();
                }
            }
        }
        self.all_logits.clear();
        Ok(())
    }
}
