//! Dot-product kernels: one quantized (or float) weight row against activation rows.
//!
//! How a matmul uses this module (the same scheme as ggml-cpu):
//! 1. [`activation_type`] names the format the activations must be in for a weight type
//!    (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants, F32 for the float
//!    types).
//! 2. Each activation row is converted once per matmul with [`quantize_activation`] into a
//!    reused byte buffer.
//! 3. [`gemm`] dots every weight row with every activation row. Its micro-kernel takes one
//!    weight row and up to [`TILE_COLS`] activation rows per call, so each weight block is
//!    loaded and unpacked once for several tokens (prompt processing) while decode (one
//!    token) streams the weights exactly once.
//!
//! Integer formats are multiplied in int8/int16/int32 arithmetic per block and scaled into
//! f32 accumulators once per block (legacy) or super-block (K-quants).
//!
//! [`Backend`] is the instruction set the kernels use. [`Backend::detect`] checks the CPU
//! once at run time (AVX2+FMA+F16C, then AVX-512 VNNI, on x86-64; NEON, then the dot-product
//! extension, then the int8 matrix multiply, on aarch64) and caches the answer, so one binary runs on any CPU of its
//! architecture; [`Backend::Scalar`] is the portable fallback and the reference the SIMD
//! kernels are tested against. Setting the environment variable `RGEMMA_SIMD=0` before the
//! first call forces the scalar kernels, `RGEMMA_SIMD=avx2` the AVX2 ones on a CPU with
//! AVX-512 or AVX-VNNI, `RGEMMA_SIMD=avxvnni` the AVX-VNNI ones on a CPU with AVX-512 and
//! AVX-VNNI (what a laptop runs), `RGEMMA_SIMD=neon` plain NEON on a CPU with the dot product (to measure what an
//! older machine runs), `RGEMMA_SIMD=neondot` the dot-product kernels on a CPU with i8mm.

mod act;
pub mod membw;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use crate::{GgmlType, QuantError};

/// Activation rows handled by one micro-kernel call.
pub const TILE_COLS: usize = 4;

/// The instruction set used by the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable Rust; the reference for the SIMD kernels.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (every x86-64 CPU since Haswell / Zen 1).
    Avx2,
    /// [`Backend::Avx2`] plus AVX-VNNI (`vpdpbusd` in VEX encoding on 256-bit registers:
    /// Intel Alder Lake and later, AMD Zen 5): the packed kernels are the VNNI ones with
    /// 4-column tiles (16 registers); the rest is the AVX2 code.
    AvxVnni,
    /// [`Backend::Avx2`] plus AVX-512 F/BW/VL and VNNI (Ice Lake, Zen 4 and later): the
    /// packed kernels use `vpdpbusd` on 256-bit registers, the Q2_K and Q3_K dot kernels and
    /// the attention helpers [`f32_dots`] and [`f32_axpy_many`] 512-bit registers; the rest
    /// is the AVX2 code.
    Avx512,
    /// aarch64 Advanced SIMD (always present on aarch64, e.g. Cortex-A72).
    Neon,
    /// [`Backend::Neon`] plus the dot-product instructions (`sdot`; Armv8.2+, every Apple
    /// M-series and Neoverse core): the packed kernels advance 4 rows by 4 values per
    /// instruction; the rest is the NEON code.
    NeonDot,
    /// [`Backend::NeonDot`] plus the int8 matrix multiply (`usmmla`; Armv8.6 i8mm: Apple M2
    /// and later, Neoverse V1/N2/V2, Cortex-A510/A710 and later): packed Q4_0, Q8_0, Q4_K
    /// and Q6_K calls of four or more columns (prompts, batched decoding) multiply 2 rows ×
    /// 2 tokens × 8 values per instruction (`packed::mmla`); everything else is the NeonDot
    /// code.
    NeonI8mm,
}

impl Backend {
    /// The best backend this CPU supports, detected on the first call and cached.
    /// `RGEMMA_SIMD=0` in the environment selects [`Backend::Scalar`], `RGEMMA_SIMD=avx2`
    /// [`Backend::Avx2`] where the CPU would get [`Backend::Avx512`], `RGEMMA_SIMD=neon`
    /// [`Backend::Neon`] where it would get [`Backend::NeonDot`].
    pub fn detect() -> Backend {
        static DETECTED: OnceLock<Backend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Backend::best_available();
            match std::env::var("RGEMMA_SIMD").as_deref() {
                Ok("0") => Backend::Scalar,
                Ok("avx2") if best == Backend::Avx512 || best == Backend::AvxVnni => Backend::Avx2,
                Ok("avxvnni") if best == Backend::Avx512 && has_avx_vnni() => Backend::AvxVnni,
                Ok("neon") if best.has_dotprod() => Backend::Neon,
                Ok("neondot") if best == Backend::NeonI8mm => Backend::NeonDot,
                _ => best,
            }
        })
    }

    /// The best backend the CPU supports, ignoring `RGEMMA_SIMD`.
    pub fn best_available() -> Backend {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    return Backend::Avx512;
                }
                if has_avx_vnni() {
                    return Backend::AvxVnni;
                }
                return Backend::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    if std::arch::is_aarch64_feature_detected!("i8mm") {
                        return Backend::NeonI8mm;
                    }
                    return Backend::NeonDot;
                }
                return Backend::Neon;
            }
        }
        Backend::Scalar
    }

    /// Every backend that can run on this CPU (the scalar one first); tests iterate this.
    pub fn all_available() -> Vec<Backend> {
        let mut v = vec![Backend::Scalar];
        match Backend::best_available() {
            Backend::Scalar => {}
            Backend::Avx512 if has_avx_vnni() => {
                v.extend([Backend::Avx2, Backend::AvxVnni, Backend::Avx512])
            }
            Backend::Avx512 => v.extend([Backend::Avx2, Backend::Avx512]),
            Backend::AvxVnni => v.extend([Backend::Avx2, Backend::AvxVnni]),
            Backend::NeonDot => v.extend([Backend::Neon, Backend::NeonDot]),
            Backend::NeonI8mm => v.extend([Backend::Neon, Backend::NeonDot, Backend::NeonI8mm]),
            best => v.push(best),
        }
        v
    }

    /// Whether this backend runs the AVX2 kernels (x86-64 with AVX2, FMA and F16C).
    pub fn has_avx2(self) -> bool {
        matches!(self, Backend::Avx2 | Backend::AvxVnni | Backend::Avx512)
    }

    /// Whether this backend runs the NEON kernels (aarch64).
    pub fn has_neon(self) -> bool {
        matches!(self, Backend::Neon | Backend::NeonDot | Backend::NeonI8mm)
    }

    /// Whether this backend runs the dot-product (`sdot`) kernels (aarch64).
    pub fn has_dotprod(self) -> bool {
        matches!(self, Backend::NeonDot | Backend::NeonI8mm)
    }

    /// A short name for logs and benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::AvxVnni => "avx-vnni",
            Backend::Avx512 => "avx512",
            Backend::Neon => "neon",
            Backend::NeonDot => "neon-dotprod",
            Backend::NeonI8mm => "neon-i8mm",
        }
    }

    /// Whether this backend can run on this CPU.
    fn is_usable(self) -> bool {
        let best = Backend::best_available();
        match self {
            Backend::Scalar => true,
            Backend::Avx2 => best.has_avx2(),
            Backend::AvxVnni => best.has_avx2() && has_avx_vnni(),
            Backend::Neon => best.has_neon(),
            Backend::NeonDot => best.has_dotprod(),
            Backend::Avx512 | Backend::NeonI8mm => best == self,
        }
    }
}

/// The instruction-set extensions this CPU reports that the kernels know of, for logs and
/// benchmark headers (`rg-bench` prints them beside the backend). On aarch64 `fp16` and
/// `bf16` are listed but no kernel uses them: half-precision arithmetic would round
/// differently from the f32 reference, and F16 / BF16 weights are widened exactly with
/// base-NEON instructions instead.
pub fn cpu_extensions() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! check {
            ($($f:tt),*) => {$(
                if is_x86_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        check!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! check {
            ($($f:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        check!("neon", "dotprod", "i8mm", "fp16", "bf16");
    }
    found
}

/// Whether the CPU's vendor is Intel (`GenuineIntel`): some kernel choices were measured to
/// win on Intel cores only.
pub fn cpu_is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `cpuid` leaf 0 exists on every x86-64 CPU (newer compilers call it safe).
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        (id.ebx, id.edx, id.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-VNNI (VEX `vpdpbusd`).
fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The activation format [`gemm`] expects for weights of type `weight`, or `None` if there
/// is no kernel for that weight type.
pub fn activation_type(weight: GgmlType) -> Option<GgmlType> {
    use GgmlType::*;
    match weight {
        F32 | F16 | BF16 => Some(F32),
        Q4_0 | Q5_0 | Q8_0 => Some(Q8_0),
        Q4_1 | Q5_1 => Some(Q8_1),
        Q2K | Q3K | Q4K | Q5K | Q6K => Some(Q8K),
        _ => None,
    }
}

/// Bytes one activation row of `n` values takes in the format `weight` needs.
pub fn activation_row_bytes(weight: GgmlType, n: usize) -> Result<usize, QuantError> {
    let act = activation_type(weight).ok_or(QuantError::Unsupported(weight))?;
    if !n.is_multiple_of(act.block_size()) || !n.is_multiple_of(weight.block_size()) {
        return Err(QuantError::NotBlockAligned { ty: weight, n });
    }
    Ok(n / act.block_size() * act.type_size())
}

/// Converts one or more activation rows `x` (a whole number of `act` blocks) into `act`
/// (F32, Q8_0, Q8_1 or Q8_K). The codes are those of [`crate::quantize_row`] except that a
/// SIMD backend may round Q8_K ties differently (at most one code apart).
pub fn quantize_activation(
    backend: Backend,
    act: GgmlType,
    x: &[f32],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    use GgmlType::*;
    if !matches!(act, F32 | Q8_0 | Q8_1 | Q8K) {
        return Err(QuantError::Unsupported(act));
    }
    if !x.len().is_multiple_of(act.block_size()) {
        return Err(QuantError::NotBlockAligned {
            ty: act,
            n: x.len(),
        });
    }
    let expected = x.len() / act.block_size() * act.type_size();
    if dst.len() != expected {
        return Err(QuantError::LengthMismatch {
            expected,
            found: dst.len(),
        });
    }
    act::quantize(usable(backend), act, x, dst);
    Ok(())
}

/// `out[c * out_stride + r] = W[r] · A[c]` for `r < nrows`, `c < ncols`.
///
/// `w` holds `nrows` weight rows of `n` values of type `ty`, `w_stride` bytes apart; `act`
/// holds `ncols` activation rows in [`activation_type`]`(ty)`, `act_stride` bytes apart
/// (see [`activation_row_bytes`]). Lengths are checked; a backend the CPU lacks falls back
/// to the scalar kernels.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    w_stride: usize,
    nrows: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: &mut [f32],
    out_stride: usize,
) -> Result<(), QuantError> {
    if nrows > 0 && ncols > 0 {
        let need = (ncols - 1) * out_stride + nrows;
        if out.len() < need || out_stride < nrows {
            return Err(QuantError::LengthMismatch {
                expected: need,
                found: out.len(),
            });
        }
    }
    // SAFETY: the output bounds were checked above and `out` is borrowed exclusively.
    unsafe {
        gemm_to_ptr(
            backend,
            ty,
            n,
            w,
            w_stride,
            nrows,
            act,
            act_stride,
            ncols,
            out.as_mut_ptr(),
            out_stride,
        )
    }
}

/// [`gemm`] writing through a raw pointer, so that several threads can fill disjoint rows
/// of one `[ncols, out_stride]` output. Weight and activation lengths are checked.
///
/// # Safety
/// `out.add(c * out_stride + r)` must be valid for writes for every `r < nrows`,
/// `c < ncols`, and no other thread may access those elements during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_to_ptr(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    w_stride: usize,
    nrows: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) -> Result<(), QuantError> {
    let act_bytes = activation_row_bytes(ty, n)?;
    let w_bytes = n / ty.block_size() * ty.type_size();
    let tile = tile_fn(usable(backend), ty).ok_or(QuantError::Unsupported(ty))?;
    if nrows == 0 || ncols == 0 {
        return Ok(());
    }
    let short = |need: usize, have: usize| {
        if have < need {
            Err(QuantError::LengthMismatch {
                expected: need,
                found: have,
            })
        } else {
            Ok(())
        }
    };
    short(w_bytes, w_stride)?;
    short(act_bytes, act_stride)?;
    short((nrows - 1) * w_stride + w_bytes, w.len())?;
    short((ncols - 1) * act_stride + act_bytes, act.len())?;
    let mut c0 = 0;
    while c0 < ncols {
        let nc = (ncols - c0).min(TILE_COLS);
        for r in 0..nrows {
            // SAFETY: the bounds above cover rows r < nrows and columns c0 + nc <= ncols of
            // the weights and activations, the caller those of the output; the tile reads
            // `n` values of one weight row and of `nc` activation rows and writes `nc`
            // outputs `out_stride` apart.
            unsafe {
                tile(
                    n,
                    w.as_ptr().add(r * w_stride),
                    act.as_ptr().add(c0 * act_stride),
                    act_stride,
                    nc,
                    out.add(c0 * out_stride + r),
                    out_stride,
                );
            }
        }
        c0 += nc;
    }
    Ok(())
}

/// One weight row (`n` values of `ty`) dotted with one activation row in
/// [`activation_type`]`(ty)`.
pub fn dot(
    backend: Backend,
    ty: GgmlType,
    n: usize,
    w: &[u8],
    act: &[u8],
) -> Result<f32, QuantError> {
    let mut out = [0.0f32];
    gemm(
        backend,
        ty,
        n,
        w,
        w.len(),
        1,
        act,
        act.len(),
        1,
        &mut out,
        1,
    )?;
    Ok(out[0])
}

/// The backend itself if the CPU has it, else the scalar one.
pub(crate) fn usable(backend: Backend) -> Backend {
    if backend.is_usable() {
        backend
    } else {
        Backend::Scalar
    }
}

/// A micro-kernel: `n` values of one weight row at `w` against `ncols` (1..=TILE_COLS)
/// activation rows starting at `act`, `act_stride` bytes apart; writes `ncols` results to
/// `out`, `out_stride` floats apart.
///
/// Safety: the caller guarantees that all those bytes and floats are in bounds and that
/// `n` is a whole number of weight and activation blocks.
pub(crate) type TileFn = unsafe fn(
    n: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
);

fn tile_fn(backend: Backend, ty: GgmlType) -> Option<TileFn> {
    match backend {
        Backend::Scalar => scalar::tile_fn(ty),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => x86::tile_fn_avx512(ty).or_else(|| x86::tile_fn(ty)),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 | Backend::AvxVnni => x86::tile_fn(ty),
        #[cfg(target_arch = "aarch64")]
        Backend::Neon | Backend::NeonDot | Backend::NeonI8mm => neon::tile_fn(ty),
        #[allow(unreachable_patterns)]
        _ => scalar::tile_fn(ty),
    }
}

/// Expands a const-generic kernel `$k::<C>(n, w, act, act_stride) -> [f32; C]` into a
/// [`TileFn`] that picks `C` from `ncols` and stores the results.
macro_rules! tile_dispatch {
    ($name:ident, $k:ident) => {
        unsafe fn $name(
            n: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            ncols: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            // SAFETY (whole body): forwarded from the TileFn contract.
            unsafe {
                match ncols {
                    1 => *out = $k::<1>(n, w, act, act_stride)[0],
                    2 => {
                        let r = $k::<2>(n, w, act, act_stride);
                        for (c, v) in r.iter().enumerate() {
                            *out.add(c * out_stride) = *v;
                        }
                    }
                    3 => {
                        let r = $k::<3>(n, w, act, act_stride);
                        for (c, v) in r.iter().enumerate() {
                            *out.add(c * out_stride) = *v;
                        }
                    }
                    _ => {
                        let r = $k::<4>(n, w, act, act_stride);
                        for (c, v) in r.iter().enumerate() {
                            *out.add(c * out_stride) = *v;
                        }
                    }
                }
            }
        }
    };
}
pub(crate) use tile_dispatch;

/// `$f::<N>(args)` (or `$f::<N, G>` for `$f<G>`) for the `N` of the list equal to `$n`, else
/// `$f::<$last>`: picks the register-block size of a const-generic kernel at run time.
macro_rules! by_count {
    ($n:expr, $f:ident, $args:tt, [$($k:literal)*], $last:literal) => {
        match $n {
            $($k => $f::<$k> $args,)*
            _ => $f::<$last> $args,
        }
    };
    ($n:expr, $f:ident<$g:ty>, $args:tt, [$($k:literal)*], $last:literal) => {
        match $n {
            $($k => $f::<$k, $g> $args,)*
            _ => $f::<$last, $g> $args,
        }
    };
}
pub(crate) use by_count;

/// `Σ a[i]·b[i]` over f32 slices of equal length (the shorter length is used), with the
/// fastest kernel this CPU has (attention scores and similar small dots).
pub fn f32_dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if Backend::detect().has_avx2() {
        // SAFETY: Avx2/Avx512 are only detected on CPUs with AVX2/FMA/F16C; both slices hold n values.
        return unsafe { x86::f32_dot(&a[..n], &b[..n]) };
    }
    scalar::f32_dot(&a[..n], &b[..n])
}

/// `out[j] = a[j·stride .. j·stride + x.len()] · x` for every `j < out.len()`, loading `x`
/// once for all rows (several query heads against one key). Panics if `a` is too short.
pub fn f32_dots(a: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    dots_on(Backend::detect(), a, stride, x, &mut [], out)
}

/// [`f32_dots`] with the kernels of `backend` (the scalar ones if this CPU lacks it).
pub fn f32_dots_with(backend: Backend, a: &[f32], stride: usize, x: &[f32], out: &mut [f32]) {
    dots_on(usable(backend), a, stride, x, &mut [], out)
}

/// The element type of the shared row of [`f32_dots`] / [`f16_dots`]. The x86 kernels
/// widen it as they load it (`x86::KeyElem`); the others take it as f32.
trait RowElem: Copy + RowElemArch {
    /// The row as f32: itself, or converted into `tmp` (at least `x.len()` floats) with the
    /// kernels of `backend`.
    fn as_f32<'a>(backend: Backend, x: &'a [Self], tmp: &'a mut [f32]) -> &'a [f32];
}

#[cfg(target_arch = "x86_64")]
use x86::KeyElem as RowElemArch;
#[cfg(not(target_arch = "x86_64"))]
trait RowElemArch {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> RowElemArch for T {}

impl RowElem for f32 {
    fn as_f32<'a>(_: Backend, x: &'a [f32], _tmp: &'a mut [f32]) -> &'a [f32] {
        x
    }
}

impl RowElem for half::f16 {
    fn as_f32<'a>(backend: Backend, x: &'a [half::f16], tmp: &'a mut [f32]) -> &'a [f32] {
        let row = &mut tmp[..x.len()];
        widen_f16_with(backend, x, row);
        row
    }
}

/// [`f32_dots`] / [`f16_dots`] on a backend this CPU has (checking that per call costs 1 %
/// of attention).
fn dots_on<X: RowElem>(
    backend: Backend,
    a: &[f32],
    stride: usize,
    x: &[X],
    tmp: &mut [f32],
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    assert!(
        stride >= x.len() && a.len() >= (out.len() - 1) * stride + x.len(),
        "dots: {} rows of {} (stride {stride}) do not fit {} floats",
        out.len(),
        x.len(),
        a.len()
    );
    match backend {
        // SAFETY: the CPU has AVX-512F (`_on` takes usable backends); whole 16-element
        // chunks; the extent of `a` was asserted above.
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 if x.len().is_multiple_of(16) => unsafe {
            x86::f32_dots_avx512(a, stride, x, out)
        },
        // SAFETY: the CPU has AVX2/FMA/F16C (`_on` takes usable backends); the extent of
        // `a` was asserted above.
        #[cfg(target_arch = "x86_64")]
        b if b.has_avx2() => unsafe { x86::f32_dots(a, stride, x, out) },
        _ => {
            let x = X::as_f32(backend, x, tmp);
            match backend {
                // SAFETY: NEON is in every aarch64 CPU; whole 8-float steps; the extent of
                // `a` was asserted above.
                #[cfg(target_arch = "aarch64")]
                b if b.has_neon() && x.len().is_multiple_of(8) => unsafe {
                    neon::f32_dots(a, stride, x, out)
                },
                _ => {
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = scalar::f32_dot(&a[j * stride..j * stride + x.len()], x);
                    }
                }
            }
        }
    }
}

/// [`f32_dots`] against a shared row stored in f16 (attention's f16 rings): on x86 the kernels
/// widen it as they load it; elsewhere it is converted into `tmp` (at least `x.len()`
/// floats) first. Panics if `a` or `tmp` is too short.
pub fn f16_dots(a: &[f32], stride: usize, x: &[half::f16], tmp: &mut [f32], out: &mut [f32]) {
    dots_on(Backend::detect(), a, stride, x, tmp, out)
}

/// [`f16_dots`] with the kernels of `backend` (the scalar ones if this CPU lacks it).
pub fn f16_dots_with(
    backend: Backend,
    a: &[f32],
    stride: usize,
    x: &[half::f16],
    tmp: &mut [f32],
    out: &mut [f32],
) {
    dots_on(usable(backend), a, stride, x, tmp, out)
}

/// `dst[i] = src[i]` as f32 (exact) for every `i < src.len()`, with the fastest kernel this
/// CPU has (attention's f16 ring rows before the value kernel). Panics if `dst` is shorter.
pub fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    widen_f16_with(Backend::detect(), src, dst)
}

/// [`widen_f16`] with the kernels of `backend` (the scalar ones if this CPU lacks it).
pub fn widen_f16_with(backend: Backend, src: &[half::f16], dst: &mut [f32]) {
    assert!(
        dst.len() >= src.len(),
        "widen_f16: {} values into {}",
        src.len(),
        dst.len()
    );
    match usable(backend) {
        // SAFETY: the CPU has AVX-512F (`usable`); `dst` is long enough (asserted).
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => unsafe { x86::widen_f16_avx512(src, dst) },
        // SAFETY: the CPU has AVX2/F16C (`usable`); `dst` is long enough (asserted).
        #[cfg(target_arch = "x86_64")]
        b if b.has_avx2() => unsafe { x86::widen_f16(src, dst) },
        // SAFETY: NEON is in every aarch64 CPU; `dst` is long enough (asserted).
        #[cfg(target_arch = "aarch64")]
        b if b.has_neon() => unsafe { neon::widen_f16(src, dst) },
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = crate::f16_to_f32(s.to_bits());
            }
        }
    }
}

/// `y[j·w .. (j+1)·w] += Σ_i p[j·p_stride + i] · xs[i][..w]` for every row `j` of `y`
/// (`y.len() / w` rows): the value rows `xs` are read once for all rows of `y` (several
/// attention heads). Panics if `p` or an `xs[i]` is too short.
pub fn f32_axpy_many(y: &mut [f32], w: usize, p: &[f32], p_stride: usize, xs: &[&[f32]]) {
    f32_axpy_many_on(Backend::detect(), y, w, p, p_stride, xs)
}

/// [`f32_axpy_many`] with the kernels of `backend` (the scalar ones if this CPU lacks it).
pub fn f32_axpy_many_with(
    backend: Backend,
    y: &mut [f32],
    w: usize,
    p: &[f32],
    p_stride: usize,
    xs: &[&[f32]],
) {
    f32_axpy_many_on(usable(backend), y, w, p, p_stride, xs)
}

/// [`f32_axpy_many`] on a backend this CPU has.
fn f32_axpy_many_on(
    backend: Backend,
    y: &mut [f32],
    w: usize,
    p: &[f32],
    p_stride: usize,
    xs: &[&[f32]],
) {
    let rows = y.len().checked_div(w).unwrap_or(0);
    if rows == 0 || xs.is_empty() {
        return;
    }
    assert!(
        p_stride >= xs.len()
            && p.len() >= (rows - 1) * p_stride + xs.len()
            && xs.iter().all(|x| x.len() >= w),
        "f32_axpy_many: operands do not fit {rows} rows of {w}"
    );
    let y = &mut y[..rows * w];
    match backend {
        // SAFETY: the CPU has AVX-512F (`_on` takes usable backends); whole 16-float
        // chunks; the extents were asserted above.
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 if w.is_multiple_of(16) => unsafe {
            x86::f32_axpy_many_avx512(y, w, p, p_stride, xs)
        },
        // SAFETY: the CPU has AVX2/FMA (`_on` takes usable backends); the extents were
        // asserted above.
        #[cfg(target_arch = "x86_64")]
        b if b.has_avx2() => unsafe { x86::f32_axpy_many(y, w, p, p_stride, xs) },
        // SAFETY: NEON is in every aarch64 CPU; whole 4-float vectors; the extents were
        // asserted above.
        #[cfg(target_arch = "aarch64")]
        b if b.has_neon() && w.is_multiple_of(4) => unsafe {
            neon::f32_axpy_many(y, w, p, p_stride, xs)
        },
        _ => {
            for j in 0..rows {
                for (i, x) in xs.iter().enumerate() {
                    let pj = p[j * p_stride + i];
                    for (yv, xv) in y[j * w..(j + 1) * w].iter_mut().zip(&x[..w]) {
                        *yv += pj * xv;
                    }
                }
            }
        }
    }
}

/// Asks the CPU to bring every cache line of `data` into its L1 cache ahead of a read (a
/// hint: it reads nothing architecturally, never faults and may be dropped). For rows that
/// a loop reaches a few iterations later, where the hardware prefetcher does not follow
/// (attention's ring rows: 1 KiB apart per key, measured +15 % with `attn_bench`).
#[inline]
pub fn prefetch_lines<T>(data: &[T]) {
    let start = data.as_ptr() as *const u8;
    let end = start.wrapping_add(std::mem::size_of_val(data));
    let mut line = start.wrapping_sub(start as usize & 63);
    while line < end {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing architecturally and never faults; SSE is in
        // every x86-64.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line as *const i8)
        };
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `prfm` is a hint that never faults and touches no register or flag.
        unsafe {
            std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) line, options(nostack, preserves_flags, readonly))
        };
        line = line.wrapping_add(64);
    }
}

/// `y[i] += alpha·x[i]` (the shorter length is used).
pub fn f32_axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    #[cfg(target_arch = "x86_64")]
    if Backend::detect().has_avx2() {
        // SAFETY: as in `f32_dot`.
        return unsafe { x86::f32_axpy(&mut y[..n], alpha, &x[..n]) };
    }
    for (y, x) in y[..n].iter_mut().zip(&x[..n]) {
        *y += alpha * x;
    }
}
