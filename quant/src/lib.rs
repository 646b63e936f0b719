//! ggml block formats for rgemma.
//!
//! - [`types`]: the ggml type table (ids, names, block geometry).
//! - [`quantize_row`] / [`dequantize_row`]: scalar reference conversions between f32 and every
//!   supported type, bit-exact with ggml's reference quantizers (no importance matrix).
//! - [`float`]: f16 / bf16 scalar conversions ([`f32_to_f16`] and friends).
//! - [`legacy`] (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1) and [`kquants`] (Q2_K, Q3_K, Q4_K, Q5_K,
//!   Q6_K, Q8_K): one `#[repr(C)]` struct per block format with ggml's layout, implementing
//!   [`Block`] (read/write at documented byte offsets, quantize/dequantize one block).
//! - [`quantize_row_weighted`] ([`weighted`]): ggml's importance-matrix quantizers
//!   (llama-quantize with `--imatrix`), bit-exact, for Q4_0/Q4_1/Q5_0/Q5_1 and Q2_K..Q6_K.
//!
//! This crate has no dependency on the rest of the engine.

pub mod block;
pub mod dot;
pub mod float;
pub mod kquants;
pub mod legacy;
pub mod packed;
mod rounding;
pub mod types;
pub mod weighted;

pub use block::Block;
pub use float::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
pub use types::GgmlType;
pub use weighted::{can_quantize_weighted, quantize_row_weighted};

use std::fmt;

/// Why a conversion was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// The type cannot be converted (e.g. an IQ type).
    Unsupported(GgmlType),
    /// The element count is not a multiple of the type's block size.
    NotBlockAligned { ty: GgmlType, n: usize },
    /// Quantize: the byte destination does not have the size the element count requires.
    LengthMismatch { expected: usize, found: usize },
    /// Dequantize: the byte source is not a whole number of blocks.
    NotWholeBlocks { ty: GgmlType, bytes: usize },
    /// Dequantize: the f32 destination does not hold exactly the source's element count.
    ElementCountMismatch { expected: usize, found: usize },
    /// Weighted quantize: `n` source values are not a whole number of rows of `n_per_row`
    /// (the length of the importance weights).
    RowMismatch { n: usize, n_per_row: usize },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::Unsupported(t) => write!(f, "unsupported tensor type {t}"),
            QuantError::NotBlockAligned { ty, n } => write!(
                f,
                "{n} elements is not a multiple of the {ty} block size {}",
                ty.block_size()
            ),
            QuantError::LengthMismatch { expected, found } => {
                write!(
                    f,
                    "buffer length mismatch: expected {expected} bytes, found {found}"
                )
            }
            QuantError::NotWholeBlocks { ty, bytes } => write!(
                f,
                "{bytes} bytes is not a whole number of {ty} blocks ({} bytes each)",
                ty.type_size()
            ),
            QuantError::ElementCountMismatch { expected, found } => {
                write!(
                    f,
                    "output length mismatch: expected {expected} values, found {found}"
                )
            }
            QuantError::RowMismatch { n, n_per_row } => write!(
                f,
                "{n} values is not a whole number of rows of {n_per_row} (the importance \
                 weights' length)"
            ),
        }
    }
}

impl std::error::Error for QuantError {}

use block::{dequantize_blocks, quantize_blocks};
use kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};

/// Whether [`quantize_row`] accepts `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2K
            | Q3K
            | Q4K
            | Q5K
            | Q6K
            | Q8K
    )
}

/// Whether [`dequantize_row`] accepts `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    can_quantize(ty)
}

/// Quantizes `src` (a whole number of `ty` blocks; several rows may be passed at once) into
/// `dst`, which must be exactly `ty.row_size(src.len())` bytes. The bytes are those of ggml's
/// reference quantizer (`quantize_row_*_ref`, i.e. llama-quantize without an importance
/// matrix; `ggml_fp32_to_fp16_row` / `_bf16_row` for F16 / BF16; little-endian for F32).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    let n = src.len();
    if !n.is_multiple_of(ty.block_size()) {
        return Err(QuantError::NotBlockAligned { ty, n });
    }
    let expected = n / ty.block_size() * ty.type_size();
    if dst.len() != expected {
        return Err(QuantError::LengthMismatch {
            expected,
            found: dst.len(),
        });
    }
    use GgmlType::*;
    match ty {
        F32 => float::quantize_f32(src, dst),
        F16 => float::quantize_f16(src, dst),
        BF16 => float::quantize_bf16(src, dst),
        Q4_0 => quantize_blocks::<BlockQ4_0>(src, dst),
        Q4_1 => quantize_blocks::<BlockQ4_1>(src, dst),
        Q5_0 => quantize_blocks::<BlockQ5_0>(src, dst),
        Q5_1 => quantize_blocks::<BlockQ5_1>(src, dst),
        Q8_0 => quantize_blocks::<BlockQ8_0>(src, dst),
        Q8_1 => quantize_blocks::<BlockQ8_1>(src, dst),
        Q2K => quantize_blocks::<BlockQ2K>(src, dst),
        Q3K => quantize_blocks::<BlockQ3K>(src, dst),
        Q4K => quantize_blocks::<BlockQ4K>(src, dst),
        Q5K => quantize_blocks::<BlockQ5K>(src, dst),
        Q6K => quantize_blocks::<BlockQ6K>(src, dst),
        Q8K => quantize_blocks::<BlockQ8K>(src, dst),
        _ => return Err(QuantError::Unsupported(ty)),
    }
    Ok(())
}

/// Dequantizes `src` (a whole number of `ty` blocks) into `dst`, which must hold exactly the
/// number of values those blocks encode. The values are bit-identical to ggml's
/// `dequantize_row_*` (Q8_1, which ggml does not dequantize, gives `d * q`).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !can_dequantize(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    let ts = ty.type_size();
    if !src.len().is_multiple_of(ts) {
        return Err(QuantError::NotWholeBlocks {
            ty,
            bytes: src.len(),
        });
    }
    let expected = src.len() / ts * ty.block_size();
    if dst.len() != expected {
        return Err(QuantError::ElementCountMismatch {
            expected,
            found: dst.len(),
        });
    }
    use GgmlType::*;
    match ty {
        F32 => float::dequantize_f32(src, dst),
        F16 => float::dequantize_f16(src, dst),
        BF16 => float::dequantize_bf16(src, dst),
        Q4_0 => dequantize_blocks::<BlockQ4_0>(src, dst),
        Q4_1 => dequantize_blocks::<BlockQ4_1>(src, dst),
        Q5_0 => dequantize_blocks::<BlockQ5_0>(src, dst),
        Q5_1 => dequantize_blocks::<BlockQ5_1>(src, dst),
        Q8_0 => dequantize_blocks::<BlockQ8_0>(src, dst),
        Q8_1 => dequantize_blocks::<BlockQ8_1>(src, dst),
        Q2K => dequantize_blocks::<BlockQ2K>(src, dst),
        Q3K => dequantize_blocks::<BlockQ3K>(src, dst),
        Q4K => dequantize_blocks::<BlockQ4K>(src, dst),
        Q5K => dequantize_blocks::<BlockQ5K>(src, dst),
        Q6K => dequantize_blocks::<BlockQ6K>(src, dst),
        Q8K => dequantize_blocks::<BlockQ8K>(src, dst),
        _ => return Err(QuantError::Unsupported(ty)),
    }
    Ok(())
}
