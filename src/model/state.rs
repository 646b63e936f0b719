//! The state of one decoding sequence, apart from any computation: per recurrent layer the
//! conv tail and the RG-LRU state, per attention layer the K/V rings, plus the position and
//! where the logits after its last token are. Its size is fixed at creation, whatever the
//! length of the text: this is what makes many sequences cheap to hold, fork and park.
//!
//! The save format (prompt caching, `rg_state_save`, sequence snapshots), little-endian:
//!
//! ```text
//! magic "RGST" | version u32 | model fingerprint u64 | position u64 | n_floats u64
//! | logits f32[n_vocab] | layer buffers f32[...] in layer order | checksum u64 (FNV-1a of all before)
//! ```
//!
//! K/V rings are written as f32 whatever their element type, so a state saved from a
//! context with F16 rings loads into one with F32 rings and back (rounding to F16 on the way
//! in). The fingerprint hashes the model's hyperparameters and tensor table plus a sample of
//! each tensor's bytes, so a state from another model (even one of the same geometry, or
//! another quantization of it) is refused.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::hparams::{HParams, LayerKind};
use super::Model;
use crate::{Error, Result};

/// Element type of the attention K/V rings (llama.cpp's `--cache-type-k/-v`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// Exact (the reference computes in f32). The default.
    #[default]
    F32,
    /// Half the ring bytes; keys and values are rounded to f16 when stored.
    F16,
}

impl KvType {
    /// `f32` / `f16`, as the command-line flags spell them.
    pub fn parse(s: &str) -> Result<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(Error::InvalidArgument(format!(
                "cache type '{s}': expected f32 or f16"
            ))),
        }
    }

    /// The ring type from llama.cpp's pair of flags `--cache-type-k K --cache-type-v V`:
    /// both must name the same type, since the K and V rings share one element type.
    pub fn from_flags(k: &str, v: &str) -> Result<KvType> {
        let flag = |name: &str, s: &str| {
            KvType::parse(s)
                .map_err(|_| Error::InvalidArgument(format!("--{name} '{s}': expected f32 or f16")))
        };
        let (k, v) = (flag("cache-type-k", k)?, flag("cache-type-v", v)?);
        if k != v {
            return Err(Error::InvalidArgument(format!(
                "--cache-type-k ({}) and --cache-type-v ({}) must be the same: the K and V \
                 rings share one element type",
                k.name(),
                v.name()
            )));
        }
        Ok(k)
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// An element the K/V rings can hold. Attention reads ring rows as f32.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Stores an f32 row.
    fn store(src: &[f32], dst: &mut [Self]);
    /// The row as f32: borrowed when the ring is f32, else converted into `tmp`.
    fn load<'a>(row: &'a [Self], tmp: &'a mut [f32]) -> &'a [f32];
    /// `out[j] = qs[j·hd ..][..hd] · row` (attention scores of several heads against one ring
    /// row; `tmp` is room for the row as f32 where the kernel cannot widen it itself).
    fn dots(qs: &[f32], hd: usize, row: &[Self], tmp: &mut [f32], out: &mut [f32]);
}

impl KvElem for f32 {
    fn store(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn load<'a>(row: &'a [f32], _tmp: &'a mut [f32]) -> &'a [f32] {
        row
    }
    fn dots(qs: &[f32], hd: usize, row: &[f32], _tmp: &mut [f32], out: &mut [f32]) {
        rgemma_quant::dot::f32_dots(qs, hd, row, out)
    }
}

impl KvElem for f16 {
    fn store(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }
    fn load<'a>(row: &'a [f16], tmp: &'a mut [f32]) -> &'a [f32] {
        let tmp = &mut tmp[..row.len()];
        rgemma_quant::dot::widen_f16(row, tmp);
        tmp
    }
    fn dots(qs: &[f32], hd: usize, row: &[f16], tmp: &mut [f32], out: &mut [f32]) {
        rgemma_quant::dot::f16_dots(qs, hd, row, tmp, out)
    }
}

/// One attention ring `[W, kv_width]`, position q in slot q mod W.
pub(crate) enum Ring {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Ring {
    fn new(ty: KvType, n: usize) -> Ring {
        match ty {
            KvType::F32 => Ring::F32(vec![0.0; n]),
            KvType::F16 => Ring::F16(vec![f16::ZERO; n]),
        }
    }

    fn len(&self) -> usize {
        match self {
            Ring::F32(r) => r.len(),
            Ring::F16(r) => r.len(),
        }
    }

    fn clear(&mut self) {
        match self {
            Ring::F32(r) => r.fill(0.0),
            Ring::F16(r) => r.fill(f16::ZERO),
        }
    }

    /// Copies `src` (same length, any element type) into this ring.
    fn assign(&mut self, src: &Ring) {
        match (self, src) {
            (Ring::F32(d), Ring::F32(s)) => d.copy_from_slice(s),
            (Ring::F16(d), Ring::F16(s)) => d.copy_from_slice(s),
            (Ring::F32(d), Ring::F16(s)) => rgemma_quant::dot::widen_f16(s, d),
            (Ring::F16(d), Ring::F32(s)) => d.convert_from_f32_slice(s),
        }
    }

    fn write_f32(&self, put: &mut impl FnMut(&[u8])) {
        match self {
            Ring::F32(r) => r.iter().for_each(|v| put(&v.to_le_bytes())),
            Ring::F16(r) => r.iter().for_each(|v| put(&v.to_f32().to_le_bytes())),
        }
    }

    fn read_f32(&mut self, floats: &mut impl Iterator<Item = f32>) {
        match self {
            Ring::F32(r) => r.iter_mut().for_each(|v| *v = floats.next().unwrap()),
            Ring::F16(r) => r
                .iter_mut()
                .for_each(|v| *v = f16::from_f32(floats.next().unwrap())),
        }
    }
}

/// Sequence state of one layer.
pub(crate) enum LayerState {
    Recurrent {
        /// `[K-1, L]`: the last K-1 linear_x outputs, oldest first.
        conv_tail: Vec<f32>,
        /// `[L]`: RG-LRU state, f32.
        h: Vec<f32>,
    },
    Attention {
        /// `[W, kv_width]`: keys after RoPE.
        k_ring: Ring,
        /// `[W, kv_width]`.
        v_ring: Ring,
    },
}

impl LayerState {
    fn new(kind: LayerKind, hp: &HParams, kv: KvType) -> LayerState {
        match kind {
            LayerKind::Recurrent => LayerState::Recurrent {
                conv_tail: vec![0.0; hp.conv_kernel.saturating_sub(1) * hp.lru_width],
                h: vec![0.0; hp.lru_width],
            },
            LayerKind::Attention => {
                let n = hp.window * hp.n_kv_heads * hp.head_dim;
                LayerState::Attention {
                    k_ring: Ring::new(kv, n),
                    v_ring: Ring::new(kv, n),
                }
            }
        }
    }

    /// Values held (f32 or f16 alike).
    fn n_values(&self) -> usize {
        match self {
            LayerState::Recurrent { conv_tail, h } => conv_tail.len() + h.len(),
            LayerState::Attention { k_ring, v_ring } => k_ring.len() + v_ring.len(),
        }
    }
}

/// Where the logits after a sequence's last token are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogitsAt {
    /// Not computed (a new sequence, or its last token was decoded without logits).
    None,
    /// Row `k` of the context's output buffer (written by the last decode call).
    Output(usize),
    /// The sequence's own buffer (restored, copied, or kept before an output was reused).
    Own,
}

/// The fixed-size state of one sequence slot.
pub(crate) struct SeqState {
    pub layers: Vec<LayerState>,
    /// Tokens decoded since the last clear (= the next position).
    pub position: usize,
    pub logits_at: LogitsAt,
    /// `[n_vocab]`, valid when `logits_at == Own`. Zeroed memory the OS maps lazily, so a
    /// slot whose logits never move here costs no resident memory for it.
    pub own_logits: Vec<f32>,
}

impl SeqState {
    pub fn new(hp: &HParams, kv: KvType) -> SeqState {
        SeqState {
            layers: hp
                .layer_kinds
                .iter()
                .map(|&k| LayerState::new(k, hp, kv))
                .collect(),
            position: 0,
            logits_at: LogitsAt::None,
            own_logits: vec![0.0; hp.n_vocab],
        }
    }

    /// Back to an empty sequence.
    pub fn clear(&mut self) {
        for layer in &mut self.layers {
            match layer {
                LayerState::Recurrent { conv_tail, h } => {
                    conv_tail.fill(0.0);
                    h.fill(0.0);
                }
                LayerState::Attention { k_ring, v_ring } => {
                    k_ring.clear();
                    v_ring.clear();
                }
            }
        }
        self.position = 0;
        self.logits_at = LogitsAt::None;
    }

    /// Becomes a copy of `src` (same model); `src_logits` are `src`'s current logits.
    pub fn assign(&mut self, src: &SeqState, src_logits: Option<&[f32]>) {
        for (d, s) in self.layers.iter_mut().zip(&src.layers) {
            match (d, s) {
                (
                    LayerState::Recurrent { conv_tail, h },
                    LayerState::Recurrent {
                        conv_tail: sc,
                        h: sh,
                    },
                ) => {
                    conv_tail.copy_from_slice(sc);
                    h.copy_from_slice(sh);
                }
                (
                    LayerState::Attention { k_ring, v_ring },
                    LayerState::Attention {
                        k_ring: sk,
                        v_ring: sv,
                    },
                ) => {
                    k_ring.assign(sk);
                    v_ring.assign(sv);
                }
                _ => unreachable!("states of one model have the same layer kinds"),
            }
        }
        self.position = src.position;
        self.set_own_logits(src_logits);
    }

    fn set_own_logits(&mut self, logits: Option<&[f32]>) {
        match logits {
            Some(l) => {
                self.own_logits.copy_from_slice(l);
                self.logits_at = LogitsAt::Own;
            }
            None => self.logits_at = LogitsAt::None,
        }
    }

    /// Bytes of state (conv tails, RG-LRU states, K/V rings), the logits excluded.
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                let per = match l {
                    LayerState::Attention {
                        k_ring: Ring::F16(_),
                        ..
                    } => 2,
                    _ => 4,
                };
                l.n_values() * per
            })
            .sum()
    }

    fn n_saved_floats(&self) -> usize {
        self.own_logits.len() + self.layers.iter().map(LayerState::n_values).sum::<usize>()
    }

    /// Bytes [`SeqState::save`] writes. Fixed for a model.
    pub fn saved_len(&self) -> usize {
        HEADER_LEN + self.n_saved_floats() * 4 + CHECKSUM_LEN
    }

    /// Writes the state; `logits` are its current logits (zeros are written when `None`).
    /// `dst` must be exactly [`SeqState::saved_len`] bytes.
    pub fn save(&self, fingerprint: u64, logits: Option<&[f32]>, dst: &mut [u8]) -> Result<()> {
        if dst.len() != self.saved_len() {
            return Err(Error::InvalidArgument(format!(
                "state buffer of {} bytes, {} needed",
                dst.len(),
                self.saved_len()
            )));
        }
        let mut w = 0;
        let mut put = |b: &[u8]| {
            dst[w..w + b.len()].copy_from_slice(b);
            w += b.len();
        };
        put(MAGIC);
        put(&VERSION.to_le_bytes());
        put(&fingerprint.to_le_bytes());
        put(&(self.position as u64).to_le_bytes());
        put(&(self.n_saved_floats() as u64).to_le_bytes());
        match logits {
            Some(l) => l.iter().for_each(|v| put(&v.to_le_bytes())),
            None => (0..self.own_logits.len()).for_each(|_| put(&0f32.to_le_bytes())),
        }
        for layer in &self.layers {
            match layer {
                LayerState::Recurrent { conv_tail, h } => {
                    for v in conv_tail.iter().chain(h.iter()) {
                        put(&v.to_le_bytes());
                    }
                }
                LayerState::Attention { k_ring, v_ring } => {
                    k_ring.write_f32(&mut put);
                    v_ring.write_f32(&mut put);
                }
            }
        }
        let body = dst.len() - CHECKSUM_LEN;
        let sum = Fnv::new().bytes(&dst[..body]).0;
        dst[body..].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }

    /// Restores a state written by [`SeqState::save`] for the same model. On any error
    /// (wrong size, corrupt, other model) the state is unchanged. The saved logits become
    /// the sequence's own.
    pub fn load(&mut self, fingerprint: u64, src: &[u8]) -> Result<()> {
        let bad = |why: &str| Error::InvalidArgument(format!("invalid state: {why}"));
        if src.len() != self.saved_len() {
            return Err(bad(&format!(
                "{} bytes, this model's state has {} (saved from another model, or truncated)",
                src.len(),
                self.saved_len()
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
        if u64_at(8) != fingerprint {
            return Err(bad("saved from another model"));
        }
        if u64_at(24) != self.n_saved_floats() as u64 {
            return Err(bad("float count does not match this model"));
        }
        // Everything is validated: from here on nothing can fail.
        self.position = u64_at(16) as usize;
        let mut floats = src[HEADER_LEN..body]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
        for v in self.own_logits.iter_mut() {
            *v = floats.next().unwrap();
        }
        // A state saved without logits holds zeros there (real logits are never all zero).
        self.logits_at = if self.own_logits.iter().all(|&v| v == 0.0) {
            LogitsAt::None
        } else {
            LogitsAt::Own
        };
        for layer in &mut self.layers {
            match layer {
                LayerState::Recurrent { conv_tail, h } => {
                    for v in conv_tail.iter_mut().chain(h.iter_mut()) {
                        *v = floats.next().unwrap();
                    }
                }
                LayerState::Attention { k_ring, v_ring } => {
                    k_ring.read_f32(&mut floats);
                    v_ring.read_f32(&mut floats);
                }
            }
        }
        Ok(())
    }
}

/// State bytes of one sequence of a model of geometry `hp` with K/V rings of type `kv`
/// (conv tails, RG-LRU states, rings; the logits excluded).
pub fn state_bytes_per_sequence(hp: &HParams, kv: KvType) -> usize {
    hp.layer_kinds
        .iter()
        .map(|k| match k {
            LayerKind::Recurrent => 4 * hp.conv_kernel.max(1) * hp.lru_width,
            LayerKind::Attention => 2 * kv.bytes() * hp.window * hp.n_kv_heads * hp.head_dim,
        })
        .sum()
}

const MAGIC: &[u8; 4] = b"RGST";
const VERSION: u32 = 1;
/// magic + version + fingerprint + position + n_floats.
const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8;
const CHECKSUM_LEN: usize = 8;

/// Identifies the model a state belongs to (see the module doc).
pub(crate) fn model_fingerprint(model: &Model) -> u64 {
    let gguf = model.gguf();
    let hp = model.hparams();
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

/// 64-bit FNV-1a of `b` (the checksum of the state and of the prompt cache's token list).
pub(crate) fn fnv1a(b: &[u8]) -> u64 {
    Fnv::new().bytes(b).0
}

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
