//! GGUF container: a validating, zero-copy reader over a memory map, and an atomic,
//! streaming writer. See `docs/gguf-schema.md` for the keys and tensors rgemma writes.
//!
//! API (stable; other modules build on it):
//! - [`GgufFile::open`] / [`GgufFile::from_bytes`] parse and validate a whole file.
//! - [`GgufFile::get`] and the typed getters (`get_u32`, `get_f32`, `get_str`, ...) read metadata.
//! - [`GgufFile::tensors`], [`GgufFile::tensor`], [`GgufFile::tensor_data`] give tensor infos
//!   and zero-copy byte slices.
//! - [`GgufWriter`] writes a v3 file: metadata and tensor infos first, then each tensor's
//!   bytes in order through [`GgufWriter::write_tensor_data`], then [`GgufWriter::finish`]
//!   renames the temporary file into place.

mod error;
mod reader;
pub mod render;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{tensor_size, GgufFile, TensorInfo, MAX_DIMS, MAX_TENSOR_NAME_LEN};
pub use value::{MetaArray, MetaType, MetaValue};
pub use writer::{GgufWriter, TensorSpec};

/// `GGUF` as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// The version rgemma writes.
pub const GGUF_VERSION: u32 = 3;
/// The alignment rgemma writes (and ggml's default when `general.alignment` is absent).
pub const DEFAULT_ALIGNMENT: u64 = 32;
