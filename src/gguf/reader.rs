//! Validating GGUF reader over a memory map. (Skeleton: implemented in the foundation issue.)

use std::path::Path;

use super::{GgufError, MetaValue};
use rgemma_quant::GgmlType;

/// One tensor's record. `dims` are in GGUF order (innermost first, `ne[0]` first).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<u64>,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl TensorInfo {
    /// The shape in numpy order (outermost first).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, validated GGUF file whose tensor data stays in the memory map.
pub struct GgufFile {
    _private: (),
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    pub fn open(_path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        todo!()
    }

    /// Parses and validates an in-memory file (tests, fuzzing).
    pub fn from_bytes(_bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        todo!()
    }

    pub fn version(&self) -> u32 {
        todo!()
    }

    pub fn alignment(&self) -> u64 {
        todo!()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        todo!()
    }

    pub fn get(&self, _key: &str) -> Option<&MetaValue> {
        todo!()
    }

    /// Any integer type whose value fits in u32.
    pub fn get_u32(&self, _key: &str) -> Result<u32, GgufError> {
        todo!()
    }

    /// Any integer type whose value fits in u64.
    pub fn get_u64(&self, _key: &str) -> Result<u64, GgufError> {
        todo!()
    }

    /// F32 (or F64 that is converted).
    pub fn get_f32(&self, _key: &str) -> Result<f32, GgufError> {
        todo!()
    }

    pub fn get_bool(&self, _key: &str) -> Result<bool, GgufError> {
        todo!()
    }

    pub fn get_str(&self, _key: &str) -> Result<&str, GgufError> {
        todo!()
    }

    pub fn get_str_array(&self, _key: &str) -> Result<&[String], GgufError> {
        todo!()
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        todo!()
    }

    pub fn tensor(&self, _name: &str) -> Option<&TensorInfo> {
        todo!()
    }

    /// The tensor's bytes (validated to lie inside the data section when the file was opened).
    pub fn tensor_data(&self, _info: &TensorInfo) -> &[u8] {
        todo!()
    }
}
