//! Hyperparameters read from the `recurrentgemma.*` GGUF keys.

use crate::gguf::GgufFile;
use crate::{Error, Result};

/// What the temporal block of one residual layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Conv1D + RG-LRU block.
    Recurrent,
    /// Local (sliding-window) multi-query attention block.
    Attention,
}

/// Model geometry and constants. Field meanings follow the GGUF schema.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    /// Rows of `token_embd.weight` (also the tied output head).
    pub n_vocab: usize,
    /// Model width (`embedding_length`).
    pub hidden: usize,
    pub n_layers: usize,
    /// Width of one MLP branch (`feed_forward_length`).
    pub mlp_width: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Rotated dims at the start of each head (NeoX pairs `(j, j + rotary_dim/2)`).
    pub rotary_dim: usize,
    /// The query at position p attends the keys at positions `max(0, p-window) ..= p`.
    pub window: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// Logit soft-cap `c` in `c * tanh(x / c)`; 0 disables it.
    pub softcap: f32,
    /// Embedding multiplier (bf16-rounded `sqrt(hidden)`).
    pub embed_scale: f32,
    pub conv_kernel: usize,
    /// RG-LRU width `L`.
    pub lru_width: usize,
    /// Number of blocks of the block-diagonal RG-LRU gates.
    pub gate_blocks: usize,
    pub layer_kinds: Vec<LayerKind>,
    /// Whether the norm weights are stored as `1 + w` (multiply directly) or raw `w`.
    pub norm_weight_folded: bool,
    /// Training context length, when the file records it (informational only).
    pub context_length: Option<usize>,
}

const ARCH: &str = "recurrentgemma";

fn key(name: &str) -> String {
    format!("{ARCH}.{name}")
}

fn get_usize(file: &GgufFile, name: &str) -> Result<usize> {
    let k = key(name);
    let v = file.get_u32(&k)?;
    Ok(v as usize)
}

fn get_f32(file: &GgufFile, name: &str) -> Result<f32> {
    let k = key(name);
    let v = file.get_f32(&k)?;
    if !v.is_finite() {
        return Err(Error::Format(format!("{k} = {v} is not finite")));
    }
    Ok(v)
}

/// `sqrt(hidden)` rounded to bfloat16, as the reference implementations compute it.
pub fn default_embed_scale(hidden: usize) -> f32 {
    half::bf16::from_f32((hidden as f32).sqrt()).to_f32()
}

impl HParams {
    /// Reads and checks the hyperparameters. `n_vocab` is taken from `token_embd.weight`.
    pub fn from_gguf(file: &GgufFile) -> Result<HParams> {
        let arch = file.get_str("general.architecture")?;
        if arch != ARCH {
            return Err(Error::Unsupported(format!(
                "architecture {arch:?} (rgemma runs only {ARCH:?})"
            )));
        }
        let embd = file
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Format("missing tensor token_embd.weight".into()))?;
        let shape = embd.shape();
        if shape.len() != 2 {
            return Err(Error::Format(format!(
                "token_embd.weight has shape {shape:?}, expected [n_vocab, hidden]"
            )));
        }
        let n_vocab = shape[0] as usize;

        let hidden = get_usize(file, "embedding_length")?;
        let n_layers = get_usize(file, "block_count")?;
        let n_heads = get_usize(file, "attention.head_count")?;
        let n_kv_heads = get_usize(file, "attention.head_count_kv")?;
        let head_dim = get_usize(file, "attention.key_length")?;
        let value_dim = get_usize(file, "attention.value_length")?;
        let lru_width = get_usize(file, "rglru.width")?;
        let gate_blocks = get_usize(file, "rglru.block_count")?;

        let layer_types = file.get_str_array(&key("layer_types"))?;
        let layer_kinds = layer_types
            .iter()
            .enumerate()
            .map(|(i, s)| match s.as_str() {
                "recurrent" => Ok(LayerKind::Recurrent),
                "attention" => Ok(LayerKind::Attention),
                other => Err(Error::Format(format!(
                    "{}[{i}] = {other:?}, expected \"recurrent\" or \"attention\"",
                    key("layer_types")
                ))),
            })
            .collect::<Result<Vec<_>>>()?;

        let context_length = match file.get(&key("context_length")) {
            Some(_) => Some(get_usize(file, "context_length")?),
            None => None,
        };
        let embed_scale = match file.get(&key("embedding_scale")) {
            Some(_) => get_f32(file, "embedding_scale")?,
            None => default_embed_scale(hidden),
        };
        let norm_weight_folded = match file.get(&key("norm_weight_folded")) {
            Some(_) => file.get_bool(&key("norm_weight_folded"))?,
            None => false,
        };

        let hp = HParams {
            n_vocab,
            hidden,
            n_layers,
            mlp_width: get_usize(file, "feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rotary_dim: get_usize(file, "rope.dimension_count")?,
            window: get_usize(file, "attention.sliding_window")?,
            rope_theta: get_f32(file, "rope.freq_base")?,
            rms_eps: get_f32(file, "attention.layer_norm_rms_epsilon")?,
            softcap: get_f32(file, "final_logit_softcapping")?,
            embed_scale,
            conv_kernel: get_usize(file, "ssm.conv_kernel")?,
            lru_width,
            gate_blocks,
            layer_kinds,
            norm_weight_folded,
            context_length,
        };
        if value_dim != head_dim {
            return Err(Error::Unsupported(format!(
                "value_length {value_dim} != key_length {head_dim}"
            )));
        }
        hp.validate()?;
        Ok(hp)
    }

    /// Consistency checks that keep the forward pass free of out-of-range indexing.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Format(format!("bad hyperparameters: {m}")));
        if self.n_vocab == 0 || self.hidden == 0 || self.n_layers == 0 || self.mlp_width == 0 {
            return bad("vocab, width, layer count and MLP width must be positive".into());
        }
        if self.layer_kinds.len() != self.n_layers {
            return bad(format!(
                "{} layer types for {} layers",
                self.layer_kinds.len(),
                self.n_layers
            ));
        }
        let has_attention = self.layer_kinds.contains(&LayerKind::Attention);
        let has_recurrent = self.layer_kinds.contains(&LayerKind::Recurrent);
        if has_attention {
            if self.n_heads == 0 || self.n_kv_heads == 0 || self.head_dim == 0 {
                return bad("attention heads and head_dim must be positive".into());
            }
            if !self.n_heads.is_multiple_of(self.n_kv_heads) {
                return bad(format!(
                    "head_count {} is not a multiple of head_count_kv {}",
                    self.n_heads, self.n_kv_heads
                ));
            }
            if self.rotary_dim > self.head_dim || !self.rotary_dim.is_multiple_of(2) {
                return bad(format!(
                    "rope dimension_count {} must be even and <= head_dim {}",
                    self.rotary_dim, self.head_dim
                ));
            }
            if self.window == 0 {
                return bad("sliding_window must be positive".into());
            }
            if self.rope_theta <= 0.0 {
                return bad(format!(
                    "rope freq_base {} must be positive",
                    self.rope_theta
                ));
            }
        }
        if has_recurrent {
            if self.lru_width == 0 || self.conv_kernel == 0 || self.gate_blocks == 0 {
                return bad(
                    "rglru width, conv kernel and rglru block count must be positive".into(),
                );
            }
            if !self.lru_width.is_multiple_of(self.gate_blocks) {
                return bad(format!(
                    "rglru width {} is not a multiple of rglru block_count {}",
                    self.lru_width, self.gate_blocks
                ));
            }
        }
        if self.rms_eps.is_nan() || self.rms_eps < 0.0 || self.softcap < 0.0 {
            return bad("rms epsilon and soft-cap must be non-negative".into());
        }
        Ok(())
    }

    /// Per-block width of the RG-LRU gates.
    pub fn gate_block_width(&self) -> usize {
        self.lru_width / self.gate_blocks.max(1)
    }
}
