//! Helpers shared by the engine tests: converting the fixture checkpoints to GGUF and reading
//! the official reference arrays.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rgemma::convert::safetensors::{Dtype, SafetensorsFile};
use rgemma::convert::{convert, ConvertOptions, FileType};
use rgemma::model::{Context, ContextParams, LoadOptions, Model};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Converts `fixtures/<dir>` to a GGUF of type `ft` (once per test binary) and loads it.
pub fn model(dir: &str, ft: FileType) -> Arc<Model> {
    model_with(dir, ft, &LoadOptions::default())
}

/// [`model`] loaded with `options` (cached per folder, type and repacking).
pub fn model_with(dir: &str, ft: FileType, options: &LoadOptions) -> Arc<Model> {
    type Cache = Mutex<Vec<(String, Arc<Model>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = format!("{dir}-{}-repack{}", ft.name(), options.repack);
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = cache.iter().find(|(k, _)| *k == key) {
        return m.clone();
    }
    let out = gguf_path(&key.replace('/', "_"));
    let mut opts = ConvertOptions::new(fixtures().join(dir), &out, ft);
    opts.force = true;
    convert(&opts, &mut |_| {})
        .unwrap_or_else(|e| panic!("converting {dir} to {}: {e}", ft.name()));
    let m = Arc::new(
        Model::load_with(&out, options)
            .unwrap_or_else(|e| panic!("loading {}: {e}", out.display())),
    );
    // The model keeps its memory map; the file itself is no longer needed (Unix semantics;
    // elsewhere the removal just fails and the file stays in the temp dir).
    let _ = std::fs::remove_file(&out);
    cache.push((key, m.clone()));
    m
}

/// A per-binary, per-process path under cargo's test temp dir.
pub fn gguf_path(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let bin = exe
        .as_ref()
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("engine");
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{bin}-{}-{stem}.gguf", std::process::id()))
}

pub fn context(model: &Arc<Model>, batch_size: usize) -> Context {
    Context::new(
        model.clone(),
        ContextParams {
            batch_size,
            n_threads: 2,
            ..Default::default()
        },
    )
    .expect("context")
}

/// The official reference arrays of one fixture folder.
pub struct Reference {
    file: SafetensorsFile,
}

impl Reference {
    pub fn open(dir: &str) -> Reference {
        let path = fixtures().join(dir).join("reference.safetensors");
        Reference {
            file: SafetensorsFile::open(&path).expect("reference.safetensors"),
        }
    }

    /// Prompt indices present (`p0`, `p1`, ...).
    pub fn prompts(&self) -> Vec<usize> {
        (0..)
            .take_while(|k| self.has(&format!("p{k}.input_ids")))
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.entry(name).is_some()
    }

    pub fn f32s(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let e = self
            .file
            .entry(name)
            .unwrap_or_else(|| panic!("reference lacks {name}"));
        assert_eq!(e.dtype, Dtype::F32, "{name}");
        let v = self
            .file
            .data(e)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (v, e.shape.iter().map(|&d| d as usize).collect())
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        let e = self
            .file
            .entry(name)
            .unwrap_or_else(|| panic!("reference lacks {name}"));
        assert_eq!(e.dtype.name(), "I64", "{name}");
        self.file
            .data(e)
            .chunks_exact(8)
            .map(|b| u32::try_from(i64::from_le_bytes(b.try_into().unwrap())).expect("id fits u32"))
            .collect()
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Index of the largest value; ties go to the lowest index (as torch.argmax).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
