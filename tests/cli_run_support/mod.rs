//! Helpers shared by the `cli_run*` tests: running `rg-run`, its id lists, the tiny-rg model
//! converted to GGUF once per test binary, a minimal safetensors reader for the references,
//! and a `.npy` reader.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `rg-run` (no arguments yet).
pub fn rg_run() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rg-run"))
}

/// `rg-run -m model`.
pub fn rg_run_on(model: &Path) -> Command {
    let mut c = rg_run();
    c.arg("-m").arg(model);
    c
}

/// Runs `cmd`, which must succeed (its stderr is shown otherwise).
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn rg-run");
    assert!(
        out.status.success(),
        "rg-run failed: {:?}\nstderr:\n{}",
        out.status,
        stderr_of(&out)
    );
    out
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--prompt-ids` text of `ids`.
pub fn ids_arg(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-rg")
}

/// A per-process scratch directory under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rgemma-cli-run-{}", std::process::id()));
        // A directory of this name left by an earlier process that had the same pid (and
        // died before cleaning up) is stale: its files would make `rg-quantize` refuse to
        // overwrite them.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    })
    .clone()
}

/// tests/fixtures/tiny-rg converted to an F32 GGUF by `rg-quantize` (once per test binary).
pub fn tiny_f32_gguf() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = scratch_dir().join("tiny-rg-f32.gguf");
        convert(&fixture_dir(), &out);
        out
    })
    .clone()
}

/// The tiny-rg weights with `tokenizer-512.json` (the first 512 tokens of the tiny-fortunes
/// Gemma-style BPE tokenizer, merges restricted to them), converted to an F32 GGUF that carries
/// a tokenizer. The weights are random, so the text is gibberish, but deterministic.
pub fn tiny_tok_gguf() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let ckpt = tiny_tok_checkpoint("tiny-rg-tok");
        let out = scratch_dir().join("tiny-rg-tok-f32.gguf");
        convert(&ckpt, &out);
        out
    })
    .clone()
}

/// A checkpoint folder (in the scratch dir) with the tiny-rg weights and `tokenizer-512.json`.
pub fn tiny_tok_checkpoint(name: &str) -> PathBuf {
    let ckpt = scratch_dir().join(name);
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir().join(f), ckpt.join(f)).unwrap();
    }
    let tok =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cli_run_support/tokenizer-512.json");
    std::fs::copy(tok, ckpt.join("tokenizer.json")).unwrap();
    ckpt
}

pub fn convert(input: &Path, out: &Path) {
    let res = Command::new(env!("CARGO_BIN_EXE_rg-quantize"))
        .arg(input)
        .arg(out)
        .arg("F32")
        .arg("-q")
        .output()
        .expect("spawn rg-quantize");
    assert!(
        res.status.success(),
        "rg-quantize failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// One tensor of a safetensors file, converted to f32 or i64 values.
pub enum Array {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

/// Reads every F32 / I64 tensor of a safetensors file (8-byte LE header size, JSON header,
/// raw little-endian data).
pub fn read_safetensors(path: &Path) -> HashMap<String, Array> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = HashMap::new();
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let offs = info["data_offsets"].as_array().unwrap();
        let (a, b) = (
            offs[0].as_u64().unwrap() as usize,
            offs[1].as_u64().unwrap() as usize,
        );
        let raw = &data[a..b];
        let arr = match info["dtype"].as_str().unwrap() {
            "F32" => Array::F32(
                shape,
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            "I64" => Array::I64(
                shape,
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            _ => continue,
        };
        out.insert(name.clone(), arr);
    }
    out
}

pub struct PromptRef {
    pub input_ids: Vec<u32>,
    pub gen_tokens: Vec<u32>,
    /// [T, vocab], row-major.
    pub prefill_logits: Vec<f32>,
    /// [N, vocab], row-major.
    pub decode_logits: Vec<f32>,
}

/// tests/fixtures/tiny-rg/reference.safetensors.
pub struct Reference {
    pub vocab: usize,
    arrays: HashMap<String, Array>,
}

impl Reference {
    pub fn load() -> Reference {
        let arrays = read_safetensors(&fixture_dir().join("reference.safetensors"));
        let vocab = match &arrays["p0.prefill_logits"] {
            Array::F32(shape, _) => shape[1],
            _ => panic!("p0.prefill_logits is not F32"),
        };
        Reference { vocab, arrays }
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        match &self.arrays[name] {
            Array::F32(_, v) => v.clone(),
            _ => panic!("{name} is not F32"),
        }
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        match &self.arrays[name] {
            Array::I64(_, v) => v.iter().map(|&x| x as u32).collect(),
            _ => panic!("{name} is not I64"),
        }
    }

    pub fn prompt(&self, k: usize) -> PromptRef {
        PromptRef {
            input_ids: self.ids(&format!("p{k}.input_ids")),
            gen_tokens: self.ids(&format!("p{k}.gen_tokens")),
            prefill_logits: self.f32s(&format!("p{k}.prefill_logits")),
            decode_logits: self.f32s(&format!("p{k}.decode_logits")),
        }
    }
}

/// Reads a little-endian float32 C-order `.npy` file (format version 1.x or 2.x).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not a .npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => panic!("npy version {v}"),
    };
    assert_eq!(
        (start + header_len) % 64,
        0,
        "npy header not 64-byte aligned"
    );
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.ends_with('\n'), "npy header must end with a newline");
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "npy data length vs shape"
    );
    (shape, data)
}
