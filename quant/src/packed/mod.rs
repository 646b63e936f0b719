//! Row-interleaved ("packed") weight layouts and their kernels.
//!
//! The stored GGUF layout keeps each weight row contiguous, so a dot kernel handles one row
//! at a time and pays, per 32-value block, for converting the block's scale and reducing
//! its integer sums across lanes. At batch-1 decode that bookkeeping, not the memory
//! traffic, bounds the speed of the small-block types (Q4_0: 18 bytes per block).
//!
//! A packed matrix stores [`GROUP_ROWS`] consecutive rows interleaved block by block, so
//! that one 256-bit register holds the same 4 values of 8 rows. One `vpdpbusd` (or
//! `pmaddubsw` + `pmaddwd` on plain AVX2) against 4 broadcast activation bytes then advances
//! 8 row sums at once, the 8 scales of a block are converted with one instruction, and no
//! horizontal reduction is needed. The same layout gives the prompt path a register tile
//! of 8 rows × several tokens. ggml's CPU backend repacks weights at load time for the same
//! reason (`q4_0_8x8`); our layouts are our own and documented in each type's module.
//!
//! The engine packs matrices once at load time with [`pack_group`] (rows must be a
//! multiple of [`GROUP_ROWS`]), converts activations with [`quantize_activation`] into the
//! format [`activation_row_bytes`] sizes, and multiplies with [`gemm_to_ptr`].
//! [`unpack_row`] recovers one row in its stored GGUF layout (the embedding lookup reads
//! rows of the packed output head).
//!
//! Every type has a scalar kernel, the reference the SIMD ones are tested against.
//!
//! **Batch invariance.** On a given backend, a column's results do not depend on how many
//! other columns share the call, nor on its place among them: a kernel performs the same
//! operations in the same order for every tile width (one token included), and the drivers
//! split the reduction only at boundaries where the f32 partial sums are stored and
//! reloaded, which is exact. Batched decoding then gives each sequence the very bits it would
//! get decoded alone, and a seed reproduces a text whatever else the server is running
//! (an f32 rounding difference in one gate would otherwise grow through the recurrence into
//! visibly different logits within a few tokens). `tests/packed_batch_invariance.rs` checks
//! it for every type and backend.

mod act_q8_0;
pub mod bench;
mod float16;
mod mmla;
mod neon;
mod q4_0;
mod q4k;
mod q6k;
mod q8_0;
mod tiles;

use crate::dot::Backend;
use crate::{GgmlType, QuantError};

/// Rows interleaved in one packed group.
pub const GROUP_ROWS: usize = 8;

/// Chooses whether the AVX-512 Q4_0, Q4_K and Q6_K kernels take two groups per call when a
/// call has a few columns (4 to 16; the K-quants always do above that): `None` the default
/// for this CPU (see `tiles::two_groups`), `Some` forces it. Both kernels give every row the
/// same bits; tests use this to run both on any AVX-512 machine. Process-wide.
pub fn set_two_group_kernels(choice: Option<bool>) {
    tiles::two_groups::set(choice);
}

/// Whether a packed layout exists for weights of type `ty`.
pub fn supports(ty: GgmlType) -> bool {
    match ty {
        GgmlType::Q4_0 => q4_0::READY,
        GgmlType::Q8_0 => q8_0::READY,
        GgmlType::Q4K => q4k::READY,
        GgmlType::Q6K => q6k::READY,
        GgmlType::F16 | GgmlType::BF16 => float16::READY,
        _ => false,
    }
}

/// Whether `backend` has a SIMD kernel for the packed layout of `ty` (every type may also
/// run the scalar reference kernel, but packing pays only with a SIMD one). x86-64: every
/// packed type with AVX2; aarch64: every packed type with the dot product (the quantized
/// ones with several columns on `usmmla` where the CPU has i8mm, see `mmla`), F16 and BF16
/// with plain NEON.
pub fn has_simd_kernel(backend: Backend, ty: GgmlType) -> bool {
    if !supports(ty) {
        return false;
    }
    match backend {
        Backend::Avx2 | Backend::AvxVnni | Backend::Avx512 => true,
        Backend::NeonDot | Backend::NeonI8mm => true,
        // F16 / BF16 need only NEON (f32 multiply-adds).
        Backend::Neon => matches!(ty, GgmlType::F16 | GgmlType::BF16),
        Backend::Scalar => false,
    }
}

/// Values the packed layout of `ty` needs `n` to be a multiple of: the type's block, or
/// for the float types the driver's block.
pub fn block_values(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F16 | GgmlType::BF16 => float16::BLOCK,
        _ => ty.block_size(),
    }
}

/// Checks that `ty` has a packed layout and `n` is a whole number of its blocks.
fn check(ty: GgmlType, n: usize) -> Result<(), QuantError> {
    if !supports(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    if n == 0 || !n.is_multiple_of(block_values(ty)) {
        return Err(QuantError::NotBlockAligned { ty, n });
    }
    Ok(())
}

fn need(expected: usize, found: usize) -> Result<(), QuantError> {
    if found < expected {
        Err(QuantError::LengthMismatch { expected, found })
    } else {
        Ok(())
    }
}

/// Bytes of one packed group ([`GROUP_ROWS`] rows of `n` values of `ty`).
pub fn group_bytes(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    check(ty, n)?;
    Ok(match ty {
        GgmlType::Q4_0 => q4_0::group_bytes(n),
        GgmlType::Q8_0 => q8_0::group_bytes(n),
        GgmlType::Q4K => q4k::group_bytes(n),
        GgmlType::F16 | GgmlType::BF16 => float16::group_bytes(n),
        _ => q6k::group_bytes(n),
    })
}

/// Packs [`GROUP_ROWS`] stored rows (row `r` at `src[r * src_row_bytes..]`) of `n` values
/// of `ty` into `dst` (exactly [`group_bytes`] long).
pub fn pack_group(
    ty: GgmlType,
    n: usize,
    src: &[u8],
    src_row_bytes: usize,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let gb = group_bytes(ty, n)?;
    let row = n / ty.block_size() * ty.type_size();
    need(row, src_row_bytes)?;
    need((GROUP_ROWS - 1) * src_row_bytes + row, src.len())?;
    if dst.len() != gb {
        return Err(QuantError::LengthMismatch {
            expected: gb,
            found: dst.len(),
        });
    }
    match ty {
        GgmlType::Q4_0 => q4_0::pack_group(n, src, src_row_bytes, dst),
        GgmlType::Q8_0 => q8_0::pack_group(n, src, src_row_bytes, dst),
        GgmlType::Q4K => q4k::pack_group(n, src, src_row_bytes, dst),
        GgmlType::F16 | GgmlType::BF16 => float16::pack_group(n, src, src_row_bytes, dst),
        _ => q6k::pack_group(n, src, src_row_bytes, dst),
    }
    Ok(())
}

/// Writes row `r` (< [`GROUP_ROWS`]) of a packed group back in the stored GGUF layout
/// (`dst` is exactly one stored row of `n` values). `unpack_row(pack_group(rows))` gives
/// the rows back byte for byte.
pub fn unpack_row(
    ty: GgmlType,
    n: usize,
    group: &[u8],
    r: usize,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let gb = group_bytes(ty, n)?;
    need(gb, group.len())?;
    let row = n / ty.block_size() * ty.type_size();
    if dst.len() != row || r >= GROUP_ROWS {
        return Err(QuantError::LengthMismatch {
            expected: row,
            found: dst.len(),
        });
    }
    match ty {
        GgmlType::Q4_0 => q4_0::unpack_row(n, group, r, dst),
        GgmlType::Q8_0 => q8_0::unpack_row(n, group, r, dst),
        GgmlType::Q4K => q4k::unpack_row(n, group, r, dst),
        GgmlType::F16 | GgmlType::BF16 => float16::unpack_row(n, group, r, dst),
        _ => q6k::unpack_row(n, group, r, dst),
    }
    Ok(())
}

/// Bytes of one activation row of `n` values in the format the packed kernels of `ty`
/// read.
pub fn activation_row_bytes(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    check(ty, n)?;
    Ok(match ty {
        // Q4_0 and Q8_0 share one activation format.
        GgmlType::Q4_0 | GgmlType::Q8_0 => act_q8_0::row_bytes(n),
        GgmlType::Q4K => q4k::activation_row_bytes(n),
        GgmlType::F16 | GgmlType::BF16 => float16::activation_row_bytes(n),
        _ => q6k::activation_row_bytes(n),
    })
}

/// Converts one activation row `x` (`n` values) into `dst` ([`activation_row_bytes`]
/// long) for the packed kernels of `ty`.
pub fn quantize_activation(
    backend: Backend,
    ty: GgmlType,
    x: &[f32],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    let bytes = activation_row_bytes(ty, x.len())?;
    if dst.len() != bytes {
        return Err(QuantError::LengthMismatch {
            expected: bytes,
            found: dst.len(),
        });
    }
    let backend = crate::dot::usable(backend);
    match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => act_q8_0::quantize(backend, x, dst),
        GgmlType::Q4K => q4k::quantize_activation(backend, x, dst),
        GgmlType::F16 | GgmlType::BF16 => float16::quantize_activation(x, dst),
        _ => q6k::quantize_activation(backend, x, dst),
    }
    Ok(())
}

/// `out[c * out_stride + g * GROUP_ROWS + r] = W[g, r] · A[c]` for every group `g <
/// ngroups`, row `r < GROUP_ROWS` and activation row `c < ncols`.
///
/// `w` holds `ngroups` packed groups of `n` values of `ty` back to back; `act` holds
/// `ncols` activation rows ([`quantize_activation`]) `act_stride` bytes apart. Weight and
/// activation lengths are checked; a backend the CPU lacks falls back to the scalar kernel.
///
/// # Safety
/// `out.add(c * out_stride + i)` must be valid for writes for every `i < ngroups *
/// GROUP_ROWS` and `c < ncols`, and no other thread may access those elements meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_to_ptr(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    ngroups: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) -> Result<(), QuantError> {
    let gb = group_bytes(ty, n)?;
    let ab = activation_row_bytes(ty, n)?;
    if ngroups == 0 || ncols == 0 {
        return Ok(());
    }
    need(ngroups * gb, w.len())?;
    need(ab, act_stride)?;
    need((ncols - 1) * act_stride + ab, act.len())?;
    let backend = crate::dot::usable(backend);
    // SAFETY: weight and activation extents were checked above; the output's is the
    // caller's contract, forwarded.
    unsafe {
        match ty {
            GgmlType::Q4_0 => q4_0::gemm(
                backend, n, w, ngroups, act, act_stride, ncols, out, out_stride,
            ),
            GgmlType::Q8_0 => q8_0::gemm(
                backend, n, w, ngroups, act, act_stride, ncols, out, out_stride,
            ),
            GgmlType::Q4K => q4k::gemm(
                backend, n, w, ngroups, act, act_stride, ncols, out, out_stride,
            ),
            GgmlType::F16 => float16::gemm::<false>(
                backend, n, w, ngroups, act, act_stride, ncols, out, out_stride,
            ),
            GgmlType::BF16 => float16::gemm::<true>(
                backend, n, w, ngroups, act, act_stride, ncols, out, out_stride,
            ),
            _ => q6k::gemm(
                backend, n, w, ngroups, act, act_stride, ncols, out, out_stride,
            ),
        }
    }
    Ok(())
}

/// Safe form of [`gemm_to_ptr`]: `out` must hold `(ncols - 1) * out_stride + ngroups *
/// GROUP_ROWS` values and `out_stride >= ngroups * GROUP_ROWS`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    ngroups: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: &mut [f32],
    out_stride: usize,
) -> Result<(), QuantError> {
    let rows = ngroups * GROUP_ROWS;
    if rows > 0 && ncols > 0 {
        let expected = (ncols - 1) * out_stride + rows;
        if out.len() < expected || out_stride < rows {
            return Err(QuantError::LengthMismatch {
                expected,
                found: out.len(),
            });
        }
    }
    // SAFETY: the output extent was checked above and `out` is borrowed exclusively.
    unsafe {
        gemm_to_ptr(
            backend,
            ty,
            n,
            w,
            ngroups,
            act,
            act_stride,
            ncols,
            out.as_mut_ptr(),
            out_stride,
        )
    }
}
