//! Atomic, streaming GGUF v3 writer. (Skeleton: implemented in the foundation issue.)

use std::path::Path;

use super::{GgufError, MetaValue};
use rgemma_quant::GgmlType;

/// A tensor to be written: name, type and dims in GGUF order (innermost first).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<u64>,
}

/// Writes a GGUF file to a temporary file beside `path`; [`GgufWriter::finish`] fsyncs and
/// renames it into place. Dropping the writer before `finish` removes the temporary file.
pub struct GgufWriter {
    _private: (),
}

impl GgufWriter {
    /// Creates the temporary file and writes the header, the metadata (in the given order;
    /// `general.alignment` is added if absent) and the tensor infos with offsets that are the
    /// running sum of 32-aligned sizes. Refuses duplicate or over-long tensor names.
    pub fn create(
        _path: impl AsRef<Path>,
        _metadata: &[(String, MetaValue)],
        _tensors: &[TensorSpec],
    ) -> Result<GgufWriter, GgufError> {
        todo!()
    }

    /// Writes the next tensor's bytes (tensors in the order given to `create`); the length
    /// must equal that tensor's size. Padding is added by the writer.
    pub fn write_tensor_data(&mut self, _bytes: &[u8]) -> Result<(), GgufError> {
        todo!()
    }

    /// Checks every tensor was written, fsyncs, renames the temporary file to the final path.
    pub fn finish(self) -> Result<(), GgufError> {
        todo!()
    }
}
