//! Packed layout of Q4_0: not implemented yet (`READY = false` keeps it unused).

use crate::dot::Backend;

pub(super) const READY: bool = false;

pub(super) fn group_bytes(_n: usize) -> usize {
    0
}

pub(super) fn pack_group(_n: usize, _src: &[u8], _src_row_bytes: usize, _dst: &mut [u8]) {}

pub(super) fn unpack_row(_n: usize, _group: &[u8], _r: usize, _dst: &mut [u8]) {}

pub(super) fn activation_row_bytes(_n: usize) -> usize {
    0
}

pub(super) fn quantize_activation(_backend: Backend, _x: &[f32], _dst: &mut [u8]) {}

/// # Safety
/// See `packed::gemm_to_ptr`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    _backend: Backend,
    _n: usize,
    _w: &[u8],
    _ngroups: usize,
    _act: &[u8],
    _act_stride: usize,
    _ncols: usize,
    _out: *mut f32,
    _out_stride: usize,
) {
}
