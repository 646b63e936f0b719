//! rgemma: an inference engine for Google's RecurrentGemma (Griffin) models.

pub mod capi;
pub mod chat;
pub mod cli;
pub mod convert;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod imatrix;
pub mod model;
pub mod perplexity;
pub mod process_memory;
pub mod prompt_cache;
pub mod sampling;
#[cfg(feature = "server")]
pub mod server;
pub mod tokenizer;

pub use error::{Error, Result};
pub use rgemma_quant as quant;
