//! Row decoding of stored weights into f32 scratch: a thin seam over
//! `rgemma_quant::dequantize_row`, so that a faster decoder (or fused dot kernels) can replace
//! it in one place.

use rgemma_quant::{GgmlType, QuantError};

/// Whether the engine can turn rows of this type into f32.
pub fn is_dequantizable(ty: GgmlType) -> bool {
    rgemma_quant::can_dequantize(ty)
}

/// Decodes `dst.len()` elements from `src` (a whole number of blocks of type `ty`).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    rgemma_quant::dequantize_row(ty, src, dst)
}
