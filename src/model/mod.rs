//! The RecurrentGemma (Griffin) forward pass on CPU, over a GGUF file in the rgemma schema.
//!
//! - [`Model`]: the memory-mapped file, its hyperparameters and typed weight views
//!   (immutable, shareable across threads).
//! - [`BatchContext`]: `n_seq_max` sequences, each with its fixed-size state (conv tails,
//!   RG-LRU states, K/V rings; `state.rs`), decoded together: one `decode` call runs a batch
//!   of rows from any sequences through the forward pass (`forward.rs`) once.
//! - [`Context`]: one decoding sequence, the one-slot case of the same: `eval` takes any
//!   number of tokens and runs them in chunks of `batch_size` (a `[T, hidden]` matrix).
//! - Threads: a context owns a rayon pool; during one forward call its parallel loops run on
//!   a team whose threads stay awake between steps (`team.rs`).
//!
//! Computation is f32; weights are decoded row by row from their stored type.

mod attention;
mod batch;
mod context;
mod dequant;
mod forward;
mod hparams;
mod matmul;
mod ops;
mod packing;
mod recurrent;
mod state;
mod team;
mod weights;

use std::path::Path;
use std::time::{Duration, Instant};

use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use crate::Result;

pub use batch::{BatchContext, BatchRow};
pub use context::{Context, ContextParams, Offload};
pub use hparams::{default_embed_scale, HParams, LayerKind};
pub use matmul::{MatmulInput, MatmulObserver, MatmulPath};
pub(crate) use state::fnv1a;
pub use state::{state_bytes_per_sequence, KvType};
pub use weights::{
    AttentionWeights, LayerWeights, Matrix, RecurrentWeights, TemporalWeights, Weights,
};

/// How [`Model::load_with`] prepares the weights.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Repack matrices into the row-interleaved layout of the x86 kernels (see
    /// `packing`). Default: on when the CPU has AVX2, unless `RGEMMA_REPACK=0`. Turn it off
    /// when the model will run on the GPU: the packed copy would only cost load time.
    pub repack: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            repack: packing::repack_by_default(),
        }
    }
}

/// Where a model's load time went, and the tokenizer's memory (`rg-run --verbose` prints it).
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadTimings {
    /// Reading the GGUF header, metadata and tensor table (the tensor data is only mapped).
    /// Zero for [`Model::from_gguf`], which gets an open file.
    pub open: Duration,
    /// Checking the hyperparameters and every tensor's presence, shape and type.
    pub check: Duration,
    /// Repacking the matrices for the SIMD kernels, on every thread (zero when off).
    pub repack: Duration,
    /// Building the tokenizer from the metadata.
    pub tokenizer: Duration,
    /// How much the process's resident set grew while the tokenizer was built: its tables
    /// plus the metadata pages it read from the map (`None` where the platform does not say).
    pub tokenizer_resident_bytes: Option<u64>,
}

/// A loaded model: the GGUF file (its tensor data stays in the memory map) plus validated
/// hyperparameters and weight views.
pub struct Model {
    gguf: GgufFile,
    hparams: HParams,
    weights: Weights,
    tokenizer: Option<Tokenizer>,
    timings: LoadTimings,
}

impl Model {
    /// Opens, memory-maps and validates a GGUF file.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// [`Model::load`] with explicit options.
    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let t0 = Instant::now();
        let file = GgufFile::open(path.as_ref())?;
        let open = t0.elapsed();
        let mut model = Model::from_gguf_with(file, options)?;
        model.timings.open = open;
        Ok(model)
    }

    /// Validates the hyperparameters and every tensor's presence, shape and type.
    pub fn from_gguf(file: GgufFile) -> Result<Model> {
        Model::from_gguf_with(file, &LoadOptions::default())
    }

    /// [`Model::from_gguf`] with explicit options.
    pub fn from_gguf_with(file: GgufFile, options: &LoadOptions) -> Result<Model> {
        let mut timings = LoadTimings::default();
        let t = Instant::now();
        let hparams = HParams::from_gguf(&file)?;
        let mut weights = Weights::load(&file, &hparams)?;
        timings.check = t.elapsed();
        if options.repack {
            let t = Instant::now();
            packing::pack_weights(&mut weights, &file)?;
            timings.repack = t.elapsed();
        }
        let t = Instant::now();
        let rss_before = crate::process_memory::resident_bytes();
        let tokenizer = Tokenizer::from_gguf(&file)?;
        timings.tokenizer = t.elapsed();
        timings.tokenizer_resident_bytes = rss_before
            .zip(crate::process_memory::resident_bytes())
            .map(|(before, after)| after.saturating_sub(before));
        Ok(Model {
            gguf: file,
            hparams,
            weights,
            tokenizer,
            timings,
        })
    }

    /// Where the load time went.
    pub fn load_timings(&self) -> LoadTimings {
        self.timings
    }

    pub fn hparams(&self) -> &HParams {
        &self.hparams
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The tokenizer stored in the file, or `None` (then only token ids can be used).
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    pub fn n_vocab(&self) -> usize {
        self.hparams.n_vocab
    }
}
