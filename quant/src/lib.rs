//! ggml block formats for rgemma.
//!
//! - [`types`]: the ggml type table (ids, names, block geometry).
//! - [`quantize_row`] / [`dequantize_row`]: scalar reference conversions between f32 and every
//!   supported type, bit-exact with ggml's reference quantizers (no importance matrix).
//!
//! This crate has no dependency on the rest of the engine.

pub mod types;

pub use types::GgmlType;

use std::fmt;

/// Why a conversion was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// The type cannot be converted (e.g. an IQ type).
    Unsupported(GgmlType),
    /// The element count is not a multiple of the type's block size.
    NotBlockAligned { ty: GgmlType, n: usize },
    /// Source and destination lengths do not match.
    LengthMismatch { expected: usize, found: usize },
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
                write!(f, "buffer length mismatch: expected {expected} bytes, found {found}")
            }
        }
    }
}

impl std::error::Error for QuantError {}
