//! Load-time repacking of weight matrices into the row-interleaved layout of
//! `rgemma_quant::packed` (8 rows per group), which the x86 and aarch64 dot-product kernels
//! multiply several times faster than the stored GGUF layout (see that module for why).
//!
//! The packed copy lives in anonymous memory; the file pages of a packed tensor are handed
//! back to the kernel (`GgufFile::release_pages`) so that resident memory stays near the
//! file size instead of doubling. The memory map itself stays valid: the reference matmul
//! path, the CUDA upload and the embedding lookup of an unpacked model read it as before.
//!
//! Repacking is used when the CPU's backend has a SIMD kernel for the tensor's packed layout
//! (`packed::has_simd_kernel`: Q4_0, Q8_0, Q4_K, Q6_K with AVX2 or the aarch64 dot product;
//! F16 / BF16 with AVX2 or NEON) and its rows are a multiple of 8; `RGEMMA_REPACK=0` turns
//! it off (the stored layout and its kernels then serve every matrix).

use std::fmt;

use rayon::prelude::*;
use rgemma_quant::dot::Backend;
use rgemma_quant::packed::{self, GROUP_ROWS};
use rgemma_quant::GgmlType;

use super::weights::{Matrix, Weights};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// Alignment of the packed buffer: one cache line, so 32-byte loads never straddle two.
const ALIGN: usize = 64;

/// A matrix in the packed layout: `ngroups` groups of `group_bytes`, back to back.
pub struct PackedRows {
    buf: Vec<u8>,
    start: usize,
    pub ngroups: usize,
    pub group_bytes: usize,
}

impl fmt::Debug for PackedRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PackedRows {{ {} groups of {} bytes }}",
            self.ngroups, self.group_bytes
        )
    }
}

impl PackedRows {
    /// The packed groups.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.ngroups * self.group_bytes]
    }

    /// Row `r` of the matrix in its stored GGUF layout (`dst` is one stored row).
    pub fn unpack_row(&self, ty: GgmlType, cols: usize, r: usize, dst: &mut [u8]) -> Result<()> {
        let (g, i) = (r / GROUP_ROWS, r % GROUP_ROWS);
        if g >= self.ngroups {
            return Err(Error::InvalidArgument(format!(
                "row {r} is outside a packed matrix of {} rows",
                self.ngroups * GROUP_ROWS
            )));
        }
        let group = &self.bytes()[g * self.group_bytes..(g + 1) * self.group_bytes];
        packed::unpack_row(ty, cols, group, i, dst)
            .map_err(|e| Error::Format(format!("packed row {r}: {e}")))
    }
}

/// Whether load-time repacking is on: the CPU has packed kernels (x86-64 with AVX2, aarch64;
/// which types, [`packed::has_simd_kernel`] says) and `RGEMMA_REPACK` is not `0`.
pub fn repack_by_default() -> bool {
    let backend = Backend::detect();
    (backend.has_avx2() || backend.has_neon())
        && !std::env::var("RGEMMA_REPACK").is_ok_and(|v| v == "0")
}

/// Whether `m` can be packed: a SIMD kernel of this CPU multiplies its type in the packed
/// layout, and its shape fits the layout.
fn packable(m: &Matrix) -> bool {
    packed::has_simd_kernel(Backend::detect(), m.ty)
        && m.rows.is_multiple_of(GROUP_ROWS)
        && m.rows > 0
        && m.cols.is_multiple_of(packed::block_values(m.ty))
        && m.cols > 0
}

/// Packs one matrix stored in `data` (`rows * row_bytes` bytes).
pub(super) fn pack_matrix(m: &Matrix, data: &[u8]) -> Result<PackedRows> {
    let err = |e: rgemma_quant::QuantError| Error::Format(format!("packing {}: {e}", m.info.name));
    let group_bytes = packed::group_bytes(m.ty, m.cols).map_err(err)?;
    let ngroups = m.rows / GROUP_ROWS;
    let mut buf = vec![0u8; ngroups * group_bytes + ALIGN];
    let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
    let src_group = GROUP_ROWS * m.row_bytes;
    buf[start..start + ngroups * group_bytes]
        .par_chunks_mut(group_bytes)
        .zip(data.par_chunks(src_group))
        .try_for_each(|(dst, src)| packed::pack_group(m.ty, m.cols, src, m.row_bytes, dst))
        .map_err(err)?;
    Ok(PackedRows {
        buf,
        start,
        ngroups,
        group_bytes,
    })
}

/// What [`pack_weights`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct PackStats {
    pub matrices: usize,
    pub bytes: usize,
}

/// Packs every packable matrix of `w` and releases its file pages.
pub fn pack_weights(w: &mut Weights, file: &GgufFile) -> Result<PackStats> {
    let mut stats = PackStats::default();
    for m in w.matrices_mut() {
        if !packable(m) {
            continue;
        }
        let p = pack_matrix(m, m.data(file))?;
        stats.matrices += 1;
        stats.bytes += p.ngroups * p.group_bytes;
        file.release_pages(&m.info);
        m.packed = Some(std::sync::Arc::new(p));
    }
    Ok(stats)
}
