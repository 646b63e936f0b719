//! What every block format has in common, and the loops that run a format over a row.
//!
//! Each format is a `#[repr(C)]` struct whose fields, sizes and order are ggml's
//! (`ggml-common.h`), so a `&[u8]` of GGUF tensor data is an array of these structs back to
//! back. The scalar code here never reinterprets memory: [`Block::read`] / [`Block::write`]
//! copy the fields from / to their documented little-endian byte offsets. SIMD kernels may
//! instead cast suitably aligned byte slices to the structs (the sizes are checked at compile
//! time next to each struct).

/// A fixed-size block of `ELEMENTS` values stored in `BYTES` bytes.
///
/// The methods take slices of exactly the block's size and panic (index out of bounds) on
/// shorter ones: they are the building blocks under [`crate::quantize_row`] /
/// [`crate::dequantize_row`], which check lengths and return errors instead.
pub trait Block: Sized {
    /// Values per block (ggml's `blck_size`).
    const ELEMENTS: usize;
    /// Bytes per block (ggml's `type_size`).
    const BYTES: usize;

    /// Decodes a block from exactly `BYTES` bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Encodes the block into exactly `BYTES` bytes.
    fn write(&self, out: &mut [u8]);

    /// Quantizes exactly `ELEMENTS` values with ggml's reference quantizer.
    fn quantize(x: &[f32]) -> Self;
    /// Dequantizes into exactly `ELEMENTS` values, with ggml's arithmetic.
    fn dequantize(&self, y: &mut [f32]);
}

/// Quantizes a whole number of blocks. The caller has checked the lengths.
pub(crate) fn quantize_blocks<B: Block>(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / B::ELEMENTS * B::BYTES, dst.len());
    for (x, out) in src
        .chunks_exact(B::ELEMENTS)
        .zip(dst.chunks_exact_mut(B::BYTES))
    {
        B::quantize(x).write(out);
    }
}

/// Dequantizes a whole number of blocks. The caller has checked the lengths.
pub(crate) fn dequantize_blocks<B: Block>(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / B::BYTES * B::ELEMENTS, dst.len());
    for (bytes, y) in src
        .chunks_exact(B::BYTES)
        .zip(dst.chunks_exact_mut(B::ELEMENTS))
    {
        B::read(bytes).dequantize(y);
    }
}

/// Little-endian u16 at `off`.
#[inline]
pub(crate) fn read_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

#[inline]
pub(crate) fn write_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Copies `N` bytes starting at `off` into an array.
#[inline]
pub(crate) fn read_array<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// Reinterprets bytes as two's-complement `i8`s.
#[inline]
pub(crate) fn read_i8_array<const N: usize>(b: &[u8], off: usize) -> [i8; N] {
    read_array::<N>(b, off).map(|v| v as i8)
}

#[inline]
pub(crate) fn write_i8_slice(b: &mut [u8], off: usize, v: &[i8]) {
    for (dst, src) in b[off..off + v.len()].iter_mut().zip(v) {
        *dst = *src as u8;
    }
}
