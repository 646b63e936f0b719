//! Elementwise and per-row operations of the forward pass (f32).
//!
//! The engine is built for baseline x86-64 (SSE2), where these loops vectorise 4 wide
//! and `f32::clamp`/`max` scalarise. [`avx2_dispatch!`] compiles a loop a second time for
//! AVX2 + FMA and picks that copy at run time. Rust never contracts `a * b + c` into a
//! fused multiply-add, so both copies compute bit-identical results (tested below).

/// Defines `pub fn $name(args)` whose body is compiled twice: for the baseline and with
/// AVX2 + FMA enabled; the AVX2 copy runs when `Backend::detect()` (which honours
/// `RGEMMA_SIMD=0`) has AVX2. The body must not depend on which copy runs.
macro_rules! avx2_dispatch {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if $crate::model::ops::use_avx2() {
                    // SAFETY: the CPU has AVX2 and FMA (`has_avx2` implies both).
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(super) use avx2_dispatch;

/// Whether [`avx2_dispatch!`] functions run their AVX2 copy (x86-64 only: elsewhere the
/// macro compiles one copy).
#[inline]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn use_avx2() -> bool {
    #[cfg(test)]
    if tests::PORTABLE_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    rgemma_quant::dot::Backend::detect().has_avx2()
}

avx2_dispatch! {
    /// `out = x / sqrt(mean(x^2) + eps) * weight` for each row of width `weight.len()`.
    /// `weight` is the multiplier itself (the `1 + w` of the checkpoint).
    pub fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let width = weight.len();
        for (row, dst) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let inv = 1.0 / (mean_sq + eps).sqrt();
            for ((d, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
                *d = v * inv * w;
            }
        }
    }
}

/// GeLU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh_fast(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
}

/// `e^x` without a libm call, so that loops over slices vectorise (libm's `expf`/`tanhf`
/// were 6 % of a decoded token: the 256000 soft-capped logits and the GeLUs).
///
/// `x = n·ln2 + r` with `|r| ≤ ln2/2`, `e^r` by its degree-6 Taylor polynomial (relative
/// error < 2e-7 on that interval), `2^n` built in the exponent bits. Inputs are clamped to
/// [-87, 88], where the result is a normal f32; rounding to nearest uses the 1.5·2^23
/// trick because `f32::round` is a libm call on baseline x86-64.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // ln 2 split so that n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    // `shifted` lies in [2^23, 2^24), where one unit is one step of the mantissa: its bits
    // minus ROUND's are n as an integer. (`n as i32` would be a saturating conversion,
    // which does not vectorise.)
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// `tanh(x)` within 2e-7 absolute, vectorisable (see [`exp_fast`]):
/// `sign(x) · (1 − e) / (1 + e)` with `e = e^{−2|x|}`.
#[inline(always)]
pub fn tanh_fast(x: f32) -> f32 {
    let e = exp_fast(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// `1 / (1 + e^{-x})` with [`exp_fast`] (vectorisable).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

avx2_dispatch! {
    /// `cap * tanh(x / cap)`; `cap == 0` leaves the values unchanged.
    pub fn softcap(values: &mut [f32], cap: f32) {
        if cap > 0.0 {
            let inv = 1.0 / cap;
            for v in values {
                *v = cap * tanh_fast(*v * inv);
            }
        }
    }
}

avx2_dispatch! {
    /// `gate = gelu_tanh(gate) · up` elementwise (the MLP's gated activation).
    pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = gelu_tanh(*g) * u;
        }
    }
}

avx2_dispatch! {
    /// `values = gelu_tanh(values)` elementwise.
    pub fn gelu_in_place(values: &mut [f32]) {
        for v in values {
            *v = gelu_tanh(*v);
        }
    }
}

avx2_dispatch! {
    /// `values = softmax(values)`: `e_i = exp(v_i − max)`, then `e_i / Σ e`. The max and the
    /// sum run over 8 interleaved partial lanes (combined in a fixed order), so that they
    /// vectorise like the `exp` (attention: 2049 values per head and token at full window).
    pub fn softmax_in_place(values: &mut [f32]) {
        const LANES: usize = 8;
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        let mut chunks = values.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &v) in lane_max.iter_mut().zip(c) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&lane_max)
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        for v in values.iter_mut() {
            *v = exp_fast(*v - max);
        }
        let mut lane_sum = [0.0f32; LANES];
        let mut chunks = values.chunks_exact(LANES);
        for c in &mut chunks {
            for (s, &v) in lane_sum.iter_mut().zip(c) {
                *s += v;
            }
        }
        let sum = lane_sum.iter().chain(chunks.remainder()).fold(0.0f32, |s, &v| s + v);
        for v in values.iter_mut() {
            *v /= sum;
        }
    }
}

avx2_dispatch! {
    /// `acc += x` elementwise.
    pub fn add_in_place(acc: &mut [f32], x: &[f32]) {
        for (a, v) in acc.iter_mut().zip(x) {
            *a += v;
        }
    }
}

/// Rotary tables for one run of positions: for each position, `rotary_dim/2` cosines and
/// sines of `pos * inv_freq_j`, `inv_freq_j = theta^(-2j/rotary_dim)`, with the angle
/// formed in f32 as the references do.
pub fn rope_tables(
    first_pos: usize,
    n_pos: usize,
    rotary_dim: usize,
    theta: f32,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    let half = rotary_dim / 2;
    for t in 0..n_pos {
        let pos = (first_pos + t) as f32;
        for j in 0..half {
            let exponent = (2 * j) as f32 / rotary_dim as f32;
            let inv_freq = 1.0 / theta.powf(exponent);
            let angle = (pos * inv_freq) as f64;
            cos[t * half + j] = angle.cos() as f32;
            sin[t * half + j] = angle.sin() as f32;
        }
    }
}

/// NeoX rotation of the first `2 * cos.len()` dims of one head: pairs `(j, j + half)`.
pub fn rope_apply(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for j in 0..half {
        let (a, b) = (head[j], head[j + half]);
        head[j] = a * cos[j] - b * sin[j];
        head[j + half] = b * cos[j] + a * sin[j];
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Set by [`both_copies`] to run the portable copy of `avx2_dispatch!` functions, in
    /// every thread (the ops run on the rayon pool). Other tests running meanwhile may
    /// see it too, which is harmless because the copies agree bit for bit.
    pub(in crate::model) static PORTABLE_ONLY: AtomicBool = AtomicBool::new(false);
    static BOTH_COPIES: Mutex<()> = Mutex::new(());

    /// `f()` with the portable copies, then with the dispatched (AVX2 where present) ones.
    pub(in crate::model) fn both_copies<R>(f: impl Fn() -> R) -> (R, R) {
        let _one_at_a_time = BOTH_COPIES.lock().unwrap_or_else(|e| e.into_inner());
        PORTABLE_ONLY.store(true, Ordering::Relaxed);
        let portable = f();
        PORTABLE_ONLY.store(false, Ordering::Relaxed);
        (portable, f())
    }

    #[test]
    fn avx2_copies_are_bit_identical() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 40.0 - 20.0
        };
        // 1003 values: vector bodies and scalar tails; +-20 covers saturation of tanh.
        let x: Vec<f32> = (0..1003).map(|_| next()).collect();
        let y: Vec<f32> = (0..1003).map(|_| next()).collect();
        let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
        let run = |op: &dyn Fn(&mut Vec<f32>)| {
            let (a, b) = both_copies(|| {
                let mut v = x.clone();
                op(&mut v);
                v
            });
            assert_eq!(bits(a), bits(b));
        };
        run(&|v| softcap(v, 30.0));
        run(&|v| gelu_mul(v, &y));
        run(&|v| gelu_in_place(v));
        run(&|v| add_in_place(v, &y));
        run(&|v| softmax_in_place(v));
        run(&|v| {
            let src = v.clone();
            rmsnorm_rows(&src[..1000], &y[..250], 1e-6, &mut v[..1000]);
        });
    }

    #[test]
    fn rmsnorm_matches_formula() {
        let x = [1.0f32, -2.0, 3.0, 0.5, 4.0, -1.0, 0.0, 2.0];
        let w = [1.5f32, 0.5, 1.0, 2.0];
        let mut out = [0.0f32; 8];
        rmsnorm_rows(&x, &w, 1e-6, &mut out);
        for r in 0..2 {
            let row = &x[r * 4..r * 4 + 4];
            let ms: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / 4.0;
            for j in 0..4 {
                let want = row[j] as f64 / (ms + 1e-6).sqrt() * w[j] as f64;
                assert!((out[r * 4 + j] as f64 - want).abs() < 1e-6, "{r} {j}");
            }
        }
    }

    #[test]
    fn fast_exp_and_tanh_match_libm() {
        let mut worst_exp = 0.0f64;
        let mut worst_tanh = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 4.35e-4; // -87 .. 87
            let e = exp_fast(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max((e - want).abs() / want);
            let t = tanh_fast(x / 8.0) as f64;
            worst_tanh = worst_tanh.max((t - (x as f64 / 8.0).tanh()).abs());
        }
        assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
        assert!(worst_tanh < 2e-7, "tanh absolute error {worst_tanh}");
        assert_eq!(tanh_fast(0.0), 0.0);
        assert_eq!(tanh_fast(50.0), 1.0);
        assert_eq!(tanh_fast(-50.0), -1.0);
    }

    /// The softmax equals the f64 formula for lengths around the 8-lane chunks, with the
    /// max anywhere (also in the remainder) and one value alone.
    #[test]
    fn softmax_matches_f64() {
        for n in [1usize, 7, 8, 9, 16, 2049] {
            for peak in [0, n / 2, n - 1] {
                let x: Vec<f32> = (0..n)
                    .map(|i| {
                        if i == peak {
                            9.0
                        } else {
                            ((i * 37 % 101) as f32) * 0.05 - 2.0
                        }
                    })
                    .collect();
                let mut got = x.clone();
                softmax_in_place(&mut got);
                let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
                for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
                    let want = (v as f64 - m).exp() / z;
                    assert!(
                        (g as f64 - want).abs() <= 1e-6 * want + 1e-9,
                        "n {n} peak {peak} [{i}]: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn gelu_and_softcap() {
        for &x in &[-3.0f32, -0.5, 0.0, 0.7, 2.5] {
            let xd = x as f64;
            let want = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            assert!((gelu_tanh(x) as f64 - want).abs() < 1e-6);
        }
        let mut v = [0.0f32, 30.0, -100.0];
        softcap(&mut v, 30.0);
        assert_eq!(v[0], 0.0);
        assert!((v[1] - 30.0 * 1f32.tanh()).abs() < 1e-5);
        assert!(v[2] > -30.0 && v[2] < -29.0);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let (rd, theta, pos) = (8usize, 10000.0f32, 5usize);
        let mut cos = vec![0.0; rd / 2];
        let mut sin = vec![0.0; rd / 2];
        rope_tables(pos, 1, rd, theta, &mut cos, &mut sin);
        let orig: Vec<f32> = (0..12).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut head = orig.clone();
        rope_apply(&mut head, &cos, &sin);
        for j in 0..rd / 2 {
            let ang = pos as f64 * (theta as f64).powf(-(2.0 * j as f64) / rd as f64);
            let (a, b) = (orig[j] as f64, orig[j + rd / 2] as f64);
            assert!((head[j] as f64 - (a * ang.cos() - b * ang.sin())).abs() < 1e-5);
            assert!((head[j + rd / 2] as f64 - (b * ang.cos() + a * ang.sin())).abs() < 1e-5);
        }
        assert_eq!(head[rd..], orig[rd..], "dims past rotary_dim are untouched");
    }
}
