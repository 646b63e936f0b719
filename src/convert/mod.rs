//! `rg-quantize`'s library: converts a Hugging Face RecurrentGemma checkpoint into a
//! self-contained rgemma GGUF (schema in `docs/gguf-schema.md`), or requantizes an rgemma
//! GGUF to another preset.
//!
//! - [`config`]: `config.json` -> [`ModelConfig`].
//! - [`safetensors`]: validating mmap reader, sharded checkpoints.
//! - [`plan`]: output tensor names, shapes, sources and layout changes.
//! - [`preset`]: presets (`general.file_type`) and the per-tensor type rules.
//! - [`stream`]: one tensor at a time, in parallel over rows.
//! - [`tokenizer`]: `tokenizer.*` metadata from `tokenizer.json`.
//!
//! Entry point: [`convert`].

pub mod config;
mod importance;
pub mod plan;
pub mod preset;
pub mod safetensors;
mod sentencepiece;
pub mod stream;
pub mod tokenizer;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rgemma_quant::GgmlType;

pub use config::{LayerKind, ModelConfig};
pub use plan::{PlannedTensor, Transform};
pub use preset::FileType;

use crate::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue, TensorSpec};
use crate::{Error, Result};

/// The architecture string of rgemma files.
pub const ARCH: &str = "recurrentgemma";

/// What [`convert`] should do.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// An HF checkpoint directory, or an rgemma GGUF file (requantize).
    pub input: PathBuf,
    pub output: PathBuf,
    pub file_type: FileType,
    /// Worker threads; `None` = all cores.
    pub threads: Option<usize>,
    /// Overwrite an existing output file.
    pub force: bool,
    /// Allow requantizing a GGUF whose tensors are already quantized.
    pub allow_requantize: bool,
    /// `general.name`; default: the input directory's name (HF) or the input's value (GGUF).
    pub name: Option<String>,
    /// An importance matrix (`rg-imatrix`, or llama.cpp's GGUF / `.dat` imatrix) for the
    /// weighted quantizers.
    pub imatrix: Option<PathBuf>,
}

impl ConvertOptions {
    pub fn new(
        input: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
        file_type: FileType,
    ) -> ConvertOptions {
        ConvertOptions {
            input: input.into(),
            output: output.into(),
            file_type,
            threads: None,
            force: false,
            allow_requantize: false,
            name: None,
            imatrix: None,
        }
    }
}

/// One converted tensor.
#[derive(Clone, Debug)]
pub struct TensorReport {
    /// 1-based position and total count.
    pub index: usize,
    pub count: usize,
    pub name: String,
    /// Numpy order.
    pub shape: Vec<u64>,
    /// Source element type (`F32`, `BF16`, `Q8_0`, ...).
    pub src_type: GgmlType,
    pub src_bytes: u64,
    pub dst_type: GgmlType,
    pub dst_bytes: u64,
}

/// Progress callbacks, in order.
#[derive(Clone, Debug)]
pub enum Progress {
    Warning(String),
    Tensor(TensorReport),
}

/// The outcome of a conversion.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub n_tensors: usize,
    pub n_elements: u64,
    /// Tensor data bits per element (metadata excluded), as llama-quantize reports.
    pub bits_per_weight: f64,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// Where the tensor values come from.
enum Input {
    Hf(safetensors::Checkpoint),
    Gguf(GgufFile),
}

impl Input {
    /// Source type, bytes and innermost dimension of source tensor `name`.
    fn source(&self, name: &str) -> Result<(GgmlType, &[u8], u64)> {
        match self {
            Input::Hf(ckpt) => {
                let t = ckpt
                    .get(name)
                    .ok_or_else(|| Error::Format(format!("checkpoint: missing tensor {name}")))?;
                let ty = match t.entry.dtype {
                    safetensors::Dtype::F32 => GgmlType::F32,
                    safetensors::Dtype::F16 => GgmlType::F16,
                    safetensors::Dtype::BF16 => GgmlType::BF16,
                    ref d => {
                        return Err(Error::Unsupported(format!(
                            "tensor {name}: dtype {}",
                            d.name()
                        )))
                    }
                };
                Ok((ty, t.data(), t.entry.shape.last().copied().unwrap_or(1)))
            }
            Input::Gguf(g) => {
                let info = g
                    .tensor(name)
                    .ok_or_else(|| Error::Format(format!("missing tensor {name}")))?;
                Ok((
                    info.ty,
                    g.tensor_data(info),
                    info.dims.first().copied().unwrap_or(1),
                ))
            }
        }
    }

    /// Drops the consumed part `part` of source tensor `name` from the resident set.
    fn release(&self, name: &str, part: &[u8]) {
        if let Input::Hf(ckpt) = self {
            if let Some(t) = ckpt.get(name) {
                t.file.release(part);
            }
        }
    }
}

/// Converts `opts.input` to `opts.output`, reporting each tensor and warning through
/// `progress`. On error nothing is left at the output path (the writer is atomic).
pub fn convert(
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ConvertSummary> {
    let start = Instant::now();
    check_paths(opts)?;
    let mut warnings = Vec::new();

    let (input, mut metadata, plan, n_layers, input_bytes) = if opts.input.is_dir() {
        open_hf(opts, &mut warnings)?
    } else {
        open_gguf(opts)?
    };
    let importance = match &opts.imatrix {
        Some(path) => Some(importance::Importance::load(path, &plan, &mut warnings)?),
        None => None,
    };
    // Provenance: this run's imatrix, never a requantized source's.
    metadata.retain(|(k, _)| !k.starts_with("quantize.imatrix."));
    if let Some(imp) = &importance {
        metadata.extend(imp.metadata());
    }
    // Every warning, in the order reported.
    let mut reported = Vec::new();
    for w in warnings.drain(..) {
        progress(Progress::Warning(w.clone()));
        reported.push(w);
    }

    // Types, in file order (the attn_v / ffn_down counters depend on it).
    let n_attn_v = plan
        .iter()
        .filter(|p| preset::classify(&p.name, p.shape.len()) == preset::TensorClass::AttnV)
        .count() as u64;
    let n_gqa = meta_u64(&metadata, &format!("{ARCH}.attention.head_count"))
        .zip(meta_u64(
            &metadata,
            &format!("{ARCH}.attention.head_count_kv"),
        ))
        .map_or(1, |(h, kv)| h / kv.max(1));
    let mut chooser = preset::TypeChooser::new(opts.file_type, n_attn_v, n_layers)
        .with_imatrix(importance.is_some())
        .with_gqa(n_gqa);
    let types: Vec<GgmlType> = plan
        .iter()
        .map(|p| chooser.choose(preset::classify(&p.name, p.shape.len()), p.row_len()))
        .collect();
    let specs: Vec<TensorSpec> = plan
        .iter()
        .zip(&types)
        .map(|(p, &ty)| TensorSpec {
            name: p.name.clone(),
            ty,
            dims: p.shape.iter().rev().copied().collect(),
        })
        .collect();

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::InvalidArgument(format!("--threads: {e}")))?;

    let mut writer = GgufWriter::create(&opts.output, &metadata, &specs)?;
    // One window of output at a time (see `stream`): peak memory does not grow with the
    // largest tensor.
    let mut window = Vec::new();
    let mut total_dst = 0u64;
    let mut n_elements = 0u64;
    for (i, (p, &dst_ty)) in plan.iter().zip(&types).enumerate() {
        let (src_ty, src, src_row_len) = input.source(&p.source)?;
        let dst_bytes = if matches!(input, Input::Gguf(_))
            && src_ty == dst_ty
            && p.transform == Transform::Copy
        {
            // Same type: copy the bytes, as llama-quantize does.
            writer.write_tensor_data(src)?;
            src.len() as u64
        } else {
            let release = |part: &[u8]| input.release(&p.source, part);
            let mut sink = |part: &[u8]| -> Result<()> { Ok(writer.write_tensor_part(part)?) };
            let weights = importance
                .as_ref()
                .and_then(|imp| imp.weights_for(p, dst_ty, &mut warnings));
            for w in warnings.drain(..) {
                progress(Progress::Warning(w.clone()));
                reported.push(w);
            }
            pool.install(|| {
                stream::convert_tensor(
                    p,
                    src_ty,
                    src,
                    src_row_len,
                    dst_ty,
                    weights.as_ref(),
                    &mut window,
                    &mut sink,
                    &release,
                )
            })?
        };
        input.release(&p.source, src);
        total_dst += dst_bytes;
        n_elements += p.n_elements();
        progress(Progress::Tensor(TensorReport {
            index: i + 1,
            count: plan.len(),
            name: p.name.clone(),
            shape: p.shape.clone(),
            src_type: src_ty,
            src_bytes: src.len() as u64,
            dst_type: dst_ty,
            dst_bytes,
        }));
    }
    drop(window);
    writer.finish()?;
    let output_bytes = std::fs::metadata(&opts.output)
        .map_err(|e| Error::io(&opts.output, e))?
        .len();
    Ok(ConvertSummary {
        input_bytes,
        output_bytes,
        n_tensors: plan.len(),
        n_elements,
        bits_per_weight: if n_elements == 0 {
            0.0
        } else {
            total_dst as f64 * 8.0 / n_elements as f64
        },
        seconds: start.elapsed().as_secs_f64(),
        warnings: reported,
    })
}

/// An integer metadata value of `key`, if present.
fn meta_u64(metadata: &[(String, MetaValue)], key: &str) -> Option<u64> {
    metadata
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.as_integer())
        .and_then(|v| u64::try_from(v).ok())
}

/// Refuses an existing output (without `force`), an output that is the input, and a
/// directory as output — before anything is read or written.
fn check_paths(opts: &ConvertOptions) -> Result<()> {
    let input = std::fs::canonicalize(&opts.input).map_err(|e| Error::io(&opts.input, e))?;
    let out = &opts.output;
    if out.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "output {} is a directory",
            out.display()
        )));
    }
    let out_canon = match std::fs::canonicalize(out) {
        Ok(p) => Some(p),
        Err(_) => {
            // Not there yet: canonicalize the parent directory instead.
            let parent = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let parent = std::fs::canonicalize(&parent).map_err(|e| Error::io(&parent, e))?;
            out.file_name().map(|f| parent.join(f))
        }
    };
    if out_canon.as_deref() == Some(input.as_path()) {
        return Err(Error::InvalidArgument(format!(
            "output {} is the input",
            out.display()
        )));
    }
    if out.exists() && !opts.force {
        return Err(Error::InvalidArgument(format!(
            "output {} exists (pass --force to overwrite)",
            out.display()
        )));
    }
    Ok(())
}

type Opened = (
    Input,
    Vec<(String, MetaValue)>,
    Vec<PlannedTensor>,
    u64,
    u64,
);

fn open_hf(opts: &ConvertOptions, warnings: &mut Vec<String>) -> Result<Opened> {
    let dir = &opts.input;
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg = config::parse_config(&cfg_path, &cfg_text, warnings)?;
    let ckpt = safetensors::Checkpoint::open(dir)?;
    let plan = plan::plan_hf(&cfg, &ckpt)?;

    let name = match &opts.name {
        Some(n) => n.clone(),
        None => default_name(dir),
    };
    let mut meta = model_metadata(&cfg, &name, opts.file_type);
    if let Some(tok) = tokenizer::tokenizer_metadata(dir, cfg.vocab_size, warnings)? {
        meta.extend(tok);
    }
    let input_bytes = ckpt.total_file_size();
    Ok((
        Input::Hf(ckpt),
        meta,
        plan,
        cfg.layers.len() as u64,
        input_bytes,
    ))
}

/// The `general.*` and `recurrentgemma.*` keys (docs/gguf-schema.md).
pub fn model_metadata(
    cfg: &ModelConfig,
    name: &str,
    file_type: FileType,
) -> Vec<(String, MetaValue)> {
    let u32v = |v: u64| MetaValue::U32(v as u32);
    let arch = |k: &str| format!("{ARCH}.{k}");
    let mut m: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::String(ARCH.into()),
        ),
        ("general.type".into(), MetaValue::String("model".into())),
        ("general.name".into(), MetaValue::String(name.into())),
        (
            "general.file_type".into(),
            MetaValue::U32(file_type.ftype_id()),
        ),
        ("general.quantization_version".into(), MetaValue::U32(2)),
        ("general.alignment".into(), MetaValue::U32(32)),
    ];
    if let Some(c) = cfg.context_length {
        m.push((arch("context_length"), u32v(c)));
    }
    m.extend([
        (arch("embedding_length"), u32v(cfg.hidden_size)),
        (arch("block_count"), u32v(cfg.layers.len() as u64)),
        (arch("feed_forward_length"), u32v(cfg.mlp_width)),
        (arch("attention.head_count"), u32v(cfg.num_heads)),
        (arch("attention.head_count_kv"), u32v(cfg.num_kv_heads)),
        (arch("attention.key_length"), u32v(cfg.head_dim)),
        (arch("attention.value_length"), u32v(cfg.head_dim)),
        (arch("attention.sliding_window"), u32v(cfg.window)),
        (
            arch("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(cfg.rms_norm_eps),
        ),
        (arch("rope.dimension_count"), u32v(cfg.rotary_dims)),
        (arch("rope.freq_base"), MetaValue::F32(cfg.rope_theta)),
        (
            arch("final_logit_softcapping"),
            MetaValue::F32(cfg.logits_soft_cap),
        ),
        (arch("embedding_scale"), MetaValue::F32(cfg.embedding_scale)),
        (arch("ssm.conv_kernel"), u32v(cfg.conv_width)),
        (arch("rglru.width"), u32v(cfg.lru_width)),
        (arch("rglru.block_count"), u32v(cfg.num_heads)),
        (
            arch("layer_types"),
            MetaValue::Array(MetaArray::String(
                cfg.layers.iter().map(|k| k.name().to_string()).collect(),
            )),
        ),
        (arch("norm_weight_folded"), MetaValue::Bool(true)),
    ]);
    m
}

fn open_gguf(opts: &ConvertOptions) -> Result<Opened> {
    let path = &opts.input;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| Error::io(path, e))?;
    if &magic != b"GGUF" {
        return Err(Error::InvalidArgument(format!(
            "input {} is neither a checkpoint directory nor a GGUF file",
            path.display()
        )));
    }
    let g = GgufFile::open(path).map_err(|e| in_file(path, e.into()))?;
    let arch = g
        .get_str("general.architecture")
        .map_err(|e| in_file(path, e.into()))?;
    if arch != ARCH {
        return Err(Error::Unsupported(format!(
            "{}: general.architecture is {arch:?}, not {ARCH:?}",
            path.display()
        )));
    }
    if !opts.allow_requantize {
        if let Some(t) = g.tensors().iter().find(|t| t.ty.is_quantized()) {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor {} is already quantized ({}); requantizing loses precision, pass --allow-requantize",
                path.display(),
                t.name,
                t.ty
            )));
        }
    }
    let n_layers = g
        .get_u32(&format!("{ARCH}.block_count"))
        .map_err(|e| in_file(path, e.into()))? as u64;

    // Copy every key in order, replacing the ones that describe this file.
    let mut meta: Vec<(String, MetaValue)> = g.metadata().to_vec();
    let mut set = |key: &str, v: MetaValue| match meta.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = v,
        None => meta.push((key.to_string(), v)),
    };
    set(
        "general.file_type",
        MetaValue::U32(opts.file_type.ftype_id()),
    );
    set("general.quantization_version", MetaValue::U32(2));
    if let Some(n) = &opts.name {
        set("general.name", MetaValue::String(n.clone()));
    }

    let plan = g
        .tensors()
        .iter()
        .map(|t| PlannedTensor {
            name: t.name.clone(),
            shape: t.shape(),
            source: t.name.clone(),
            transform: Transform::Copy,
        })
        .collect();
    let input_bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    Ok((Input::Gguf(g), meta, plan, n_layers, input_bytes))
}

fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Format(m) => Error::Format(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// `general.name` when none is given: the checkpoint folder's name, or for a Hugging Face
/// cache snapshot (`models--ORG--NAME/snapshots/REVISION`) the repository's `NAME`.
fn default_name(dir: &Path) -> String {
    let Ok(path) = std::fs::canonicalize(dir) else {
        return "recurrentgemma".into();
    };
    fn name_of(p: Option<&Path>) -> Option<String> {
        p.and_then(Path::file_name)
            .map(|f| f.to_string_lossy().into_owned())
    }
    let parent = path.parent();
    if name_of(parent).as_deref() == Some("snapshots") {
        if let Some(repo) = name_of(parent.and_then(Path::parent)) {
            if let Some((_, name)) = repo
                .strip_prefix("models--")
                .and_then(|rest| rest.rsplit_once("--"))
            {
                return name.to_string();
            }
        }
    }
    name_of(Some(&path)).unwrap_or_else(|| "recurrentgemma".into())
}
