//! Reads a Hugging Face RecurrentGemma `config.json` into the hyperparameters the GGUF
//! schema records, accepting the spellings real checkpoints use (see the architecture notes,
//! section 2): `block_types` / `_block_types`, RoPE settings at the top level or inside
//! `rope_parameters`, `attention_window_size` / `sliding_window`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The two temporal-mixing block kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Recurrent,
    Attention,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Recurrent => "recurrent",
            LayerKind::Attention => "attention",
        }
    }
}

/// Hyperparameters of one checkpoint, already validated for internal consistency.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: u64,
    pub hidden_size: u64,
    /// Width of ONE MLP branch: `intermediate_size / 2`.
    pub mlp_width: u64,
    pub layers: Vec<LayerKind>,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    pub head_dim: u64,
    pub lru_width: u64,
    pub window: u64,
    pub conv_width: u64,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rotary_dims: u64,
    pub logits_soft_cap: f32,
    /// `sqrt(hidden_size)` rounded to bf16, as HF and the official code compute it.
    pub embedding_scale: f32,
    /// `max_position_embeddings` when the config has one.
    pub context_length: Option<u64>,
}

impl ModelConfig {
    /// Gate block width: `lru_width / num_heads`.
    pub fn gate_block_width(&self) -> u64 {
        self.lru_width / self.num_heads
    }
}

struct Reader<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
    warnings: &'a mut Vec<String>,
}

impl Reader<'_> {
    fn err(&self, key: &str, what: impl std::fmt::Display) -> Error {
        Error::Format(format!("{}: key {key}: {what}", self.path.display()))
    }

    fn raw(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn u64_opt(&self, key: &str) -> Result<Option<u64>> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                self.err(key, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    fn u64_req(&self, key: &str) -> Result<u64> {
        self.u64_opt(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    fn positive(&self, key: &str, v: u64) -> Result<u64> {
        if v == 0 {
            return Err(self.err(key, "must be positive"));
        }
        Ok(v)
    }

    fn u64_default(&mut self, key: &str, default: u64) -> Result<u64> {
        match self.u64_opt(key)? {
            Some(v) => Ok(v),
            None => {
                self.warnings.push(format!(
                    "config.json: {key} missing, using the HF default {default}"
                ));
                Ok(default)
            }
        }
    }

    fn f64_in(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
        match obj.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.err(key, format!("expected a finite number, found {v}"))),
        }
    }

    fn f64_default(&mut self, key: &str, default: f64) -> Result<f64> {
        match self.f64_in(self.obj, key)? {
            Some(v) => Ok(v),
            None => {
                self.warnings.push(format!(
                    "config.json: {key} missing, using the HF default {default}"
                ));
                Ok(default)
            }
        }
    }

    /// A RoPE setting: top level (transformers 4.x) or inside `rope_parameters` (5.x).
    fn rope_f64(&mut self, key: &str, default: f64) -> Result<f64> {
        if let Some(v) = self.f64_in(self.obj, key)? {
            return Ok(v);
        }
        if let Some(rp) = self.raw("rope_parameters") {
            let rp = rp
                .as_object()
                .ok_or_else(|| self.err("rope_parameters", "expected an object"))?;
            if let Some(v) = self.f64_in(rp, key)? {
                return Ok(v);
            }
        }
        self.warnings.push(format!(
            "config.json: {key} missing, using the HF default {default}"
        ));
        Ok(default)
    }
}

/// Parses and validates `config.json`; `warnings` collects defaults that were filled in.
pub fn parse_config(path: &Path, text: &[u8], warnings: &mut Vec<String>) -> Result<ModelConfig> {
    let value: Value = serde_json::from_slice(text)
        .map_err(|e| Error::Format(format!("{}: not valid JSON: {e}", path.display())))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::Format(format!("{}: not a JSON object", path.display())))?;
    let mut r = Reader {
        path,
        obj,
        warnings,
    };

    match r.raw("model_type") {
        Some(Value::String(s)) if s == "recurrent_gemma" => {}
        Some(v) => {
            return Err(Error::Unsupported(format!(
                "{}: key model_type: {v} is not \"recurrent_gemma\"",
                path.display()
            )))
        }
        None => return Err(r.err("model_type", "missing")),
    }

    let vocab_size = r.u64_req("vocab_size")?;
    let vocab_size = r.positive("vocab_size", vocab_size)?;
    let hidden_size = r.u64_req("hidden_size")?;
    let hidden_size = r.positive("hidden_size", hidden_size)?;
    let intermediate = r.u64_req("intermediate_size")?;
    if intermediate == 0 || intermediate % 2 != 0 {
        return Err(r.err(
            "intermediate_size",
            format!(
                "{intermediate} is not a positive even number (the MLP branch width is half of it)"
            ),
        ));
    }
    let n_layers = r.u64_req("num_hidden_layers")?;
    let n_layers = r.positive("num_hidden_layers", n_layers)?;
    let num_heads = r.u64_req("num_attention_heads")?;
    let num_heads = r.positive("num_attention_heads", num_heads)?;
    let num_kv_heads = match r.u64_opt("num_key_value_heads")? {
        Some(v) => r.positive("num_key_value_heads", v)?,
        None => {
            r.warnings.push(
                "config.json: num_key_value_heads missing, using 1 (the released models are multi-query; \
                 HF's fallback to num_attention_heads would be wrong)"
                    .into(),
            );
            1
        }
    };
    if num_heads % num_kv_heads != 0 {
        return Err(r.err(
            "num_key_value_heads",
            format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
        ));
    }
    let head_dim = match r.u64_opt("head_dim")? {
        Some(v) => r.positive("head_dim", v)?,
        None => {
            if hidden_size % num_heads != 0 {
                return Err(r.err("head_dim", format!("missing, and hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}")));
            }
            hidden_size / num_heads
        }
    };
    let lru_width = match r.u64_opt("lru_width")? {
        Some(v) => r.positive("lru_width", v)?,
        None => hidden_size,
    };
    if lru_width % num_heads != 0 {
        return Err(r.err("lru_width", format!("{lru_width} is not a multiple of num_attention_heads {num_heads} (the RG-LRU gate block count)")));
    }
    let window = match r.u64_opt("attention_window_size")? {
        Some(v) => v,
        None => match r.u64_opt("sliding_window")? {
            Some(v) => v,
            None => r.u64_default("attention_window_size", 2048)?,
        },
    };
    let window = r.positive("attention_window_size", window)?;
    let conv_width = r.u64_default("conv1d_width", 4)?;
    let conv_width = r.positive("conv1d_width", conv_width)?;
    let rms_norm_eps = r.f64_default("rms_norm_eps", 1e-6)?;
    if rms_norm_eps <= 0.0 {
        return Err(r.err("rms_norm_eps", "must be positive"));
    }
    let logits_soft_cap = r.f64_default("logits_soft_cap", 30.0)?;
    let rope_theta = r.rope_f64("rope_theta", 10000.0)?;
    if rope_theta <= 0.0 {
        return Err(r.err("rope_theta", "must be positive"));
    }
    let partial = r.rope_f64("partial_rotary_factor", 0.5)?;
    let rotary = partial * head_dim as f64;
    if !(partial > 0.0 && partial <= 1.0)
        || rotary.fract() != 0.0
        || !(rotary as u64).is_multiple_of(2)
    {
        return Err(r.err(
            "partial_rotary_factor",
            format!("{partial} x head_dim {head_dim} is not a positive even number of rotary dimensions"),
        ));
    }

    let pattern_key = if r.raw("block_types").is_some() {
        "block_types"
    } else {
        "_block_types"
    };
    let pattern: Vec<LayerKind> = match r.raw(pattern_key) {
        None => {
            r.warnings.push("config.json: block_types missing, using the HF default (recurrent, recurrent, attention)".into());
            vec![
                LayerKind::Recurrent,
                LayerKind::Recurrent,
                LayerKind::Attention,
            ]
        }
        Some(v) => {
            let arr = v
                .as_array()
                .ok_or_else(|| r.err(pattern_key, "expected an array of strings"))?;
            if arr.is_empty() {
                return Err(r.err(pattern_key, "is empty"));
            }
            arr.iter()
                .map(|b| match b.as_str() {
                    Some("recurrent") => Ok(LayerKind::Recurrent),
                    Some("attention") => Ok(LayerKind::Attention),
                    _ => Err(r.err(
                        pattern_key,
                        format!("unknown block type {b} (expected \"recurrent\" or \"attention\")"),
                    )),
                })
                .collect::<Result<_>>()?
        }
    };
    let layers = (0..n_layers as usize)
        .map(|i| pattern[i % pattern.len()])
        .collect();

    if let Some(Value::Bool(true)) = r.raw("attention_bias") {
        return Err(Error::Unsupported(format!(
            "{}: key attention_bias: true (q/k/v biases) is not part of the rgemma schema",
            path.display()
        )));
    }
    if let Some(Value::Bool(false)) = r.raw("tie_word_embeddings") {
        return Err(Error::Unsupported(format!(
            "{}: key tie_word_embeddings: false (a separate LM head) is not part of the rgemma schema",
            path.display()
        )));
    }
    if let Some(act) = r.raw("hidden_activation") {
        if act.as_str() != Some("gelu_pytorch_tanh") {
            r.warnings.push(format!(
                "config.json: hidden_activation {act} ignored; RecurrentGemma always uses tanh-approximate GeLU"
            ));
        }
    }
    let context_length = r.u64_opt("max_position_embeddings")?;

    let embedding_scale = half::bf16::from_f64((hidden_size as f64).sqrt()).to_f32();
    Ok(ModelConfig {
        vocab_size,
        hidden_size,
        mlp_width: intermediate / 2,
        layers,
        num_heads,
        num_kv_heads,
        head_dim,
        lru_width,
        window,
        conv_width,
        rms_norm_eps: rms_norm_eps as f32,
        rope_theta: rope_theta as f32,
        rotary_dims: rotary as u64,
        logits_soft_cap: logits_soft_cap as f32,
        embedding_scale,
        context_length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<(ModelConfig, Vec<String>)> {
        let mut w = Vec::new();
        parse_config(Path::new("config.json"), json.as_bytes(), &mut w).map(|c| (c, w))
    }

    const BASE_4X: &str = r#"{"model_type":"recurrent_gemma","vocab_size":256000,"hidden_size":2560,
        "intermediate_size":15360,"num_hidden_layers":26,"num_attention_heads":10,
        "num_key_value_heads":1,"lru_width":2560,"attention_window_size":2048,"conv1d_width":4,
        "logits_soft_cap":30.0,"rms_norm_eps":1e-6,"rope_theta":10000.0,"partial_rotary_factor":0.5,
        "_block_types":["recurrent","recurrent","attention"]}"#;

    #[test]
    fn real_2b_config_4x_spelling() {
        let (c, w) = parse(BASE_4X).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.mlp_width, 7680);
        assert_eq!(c.head_dim, 256);
        assert_eq!(c.rotary_dims, 128);
        assert_eq!(c.embedding_scale, 50.5);
        assert_eq!(c.layers.len(), 26);
        let attn: Vec<usize> = (0..26)
            .filter(|&i| c.layers[i] == LayerKind::Attention)
            .collect();
        assert_eq!(attn, vec![2, 5, 8, 11, 14, 17, 20, 23]);
    }

    #[test]
    fn missing_kv_heads_defaults_to_one_with_warning() {
        let json = BASE_4X.replace("\"num_key_value_heads\":1,", "");
        let (c, w) = parse(&json).unwrap();
        assert_eq!(c.num_kv_heads, 1);
        assert!(w.iter().any(|m| m.contains("num_key_value_heads")));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&BASE_4X.replace("recurrent_gemma", "gemma"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_type"), "{e}");
        let e = parse(&BASE_4X.replace("\"hidden_size\":2560,", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let e = parse(&BASE_4X.replace("15360", "15361"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("intermediate_size"), "{e}");
        let e = parse(&BASE_4X.replace("\"attention\"]", "\"mlp\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("_block_types"), "{e}");
        let e = parse(&BASE_4X.replace("\"lru_width\":2560", "\"lru_width\":2561"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lru_width"), "{e}");
    }
}
