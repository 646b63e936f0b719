//! Activation quantizers: f32 rows into the Q8 formats the integer kernels read.

use super::Backend;
use crate::GgmlType;

/// Lengths were checked by the caller (`dst` is exactly the size of `x` in `act`).
pub(super) fn quantize(backend: Backend, act: GgmlType, x: &[f32], dst: &mut [u8]) {
    if act == GgmlType::F32 {
        for (d, v) in dst.chunks_exact_mut(4).zip(x) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if backend.has_avx2() {
        // SAFETY: `backend` is only Avx2 when the CPU has AVX2/FMA/F16C (`usable`), and the
        // caller checked that `dst` holds the blocks of `x`.
        unsafe {
            match act {
                GgmlType::Q8_0 => return super::x86::quantize_q8_0(x, dst, false),
                GgmlType::Q8_1 => return super::x86::quantize_q8_0(x, dst, true),
                GgmlType::Q8K => return super::x86::quantize_q8k(x, dst),
                _ => {}
            }
        }
    }
    let _ = backend;
    // The scalar path is the reference quantizer itself.
    crate::quantize_row(act, x, dst).expect("lengths checked by the caller");
}
