//! The tile driver of the packed K-quant and float kernels: it walks a packed gemm in
//! passes over the reduction, blocks of groups that stay in L2 and tiles of up to 8
//! activation columns that stay in L1, and calls a type's micro-kernel ([`Tile`]) on each.
//! (Q4_0 and Q8_0 have their own driver in `act_q8_0`.) The driver is the same on every
//! architecture; the x86 kernels' accumulator and prefetch helpers follow it.
#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A SIMD micro-kernel: the 8 rows of one group (`nsb` packed super-blocks at `w`) against
/// `ncols` (1..=8) activation rows at `act`, `act_stride` bytes apart; writes the 8 sums of
/// column `c` to `out + c·out_stride`, or adds them to what is there when `add` (a later
/// pass over the reduction, see [`run_tiles`]).
pub(super) type Tile = unsafe fn(
    nsb: usize,
    w: *const u8,
    act: *const u8,
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
    add: bool,
);

/// A micro-kernel over two adjacent groups at once (16 rows, AVX-512): as [`Tile`], with
/// the second group's weights `w_stride` bytes after the first's; writes 16 sums per column
/// (the two groups' rows are adjacent in `out`).
pub(super) type PairTile = unsafe fn(
    nsb: usize,
    w: *const u8,
    w_stride: usize,
    act: *const u8,
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
    add: bool,
);

#[cfg(target_arch = "x86_64")]
/// Tiles of at most this many columns prefetch their weights (every tile width we have):
/// when a call multiplies few columns (decoding up to a few dozen sequences) the weights
/// stream from DRAM once per call and each group's first tile waits on memory unless its
/// bytes were asked for ahead (Q4_0 at 4 columns: +14 % decode of 4 sequences on a Xeon
/// with AVX-512 VNNI; with the 8-column tiles too, on a Zen 5 VM: batched decode of 8
/// sequences +45-80 %, of 32 +10-40 %). In a prompt the prefetches hit cache and cost a few
/// instructions per block (prompt speed unchanged within that VM's noise).
const PREFETCH_MAX_COLS: usize = 8;
/// How far ahead in the weight stream. 2048 bytes (about what one core has in flight from
/// DRAM) left the loads of a few-column tile waiting on memory on a Zen 5 VM: packed Q4_0 ×
/// 2560 from DRAM, one thread, 2048 -> 4096 bytes ahead: 1 column 23.6 -> 31.3 GB/s, 2
/// columns 15.4 -> 27.9, 4 columns 11.4 -> 16.6 (18.7 when the weights sit in L2, so the
/// stream then hides behind the arithmetic); 8192 was no better and 16384 worse. In the
/// engine (2 threads, alternating runs): batched decode of 4 sequences after 2048 tokens
/// 53.5 / 51.2 -> 61.0 / 55.3 t/s, one sequence and prompts unchanged within the VM's noise.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 4096;

/// For a kernel of `C` columns: asks, into L1, for the cache lines of the weight stream that
/// start in `base + from .. base + to`, `PREFETCH_AHEAD` bytes further on, when
/// `C <= PREFETCH_MAX_COLS` (nothing otherwise; `C` is a constant, so the test is compiled
/// away). Consecutive ranges ask for every line once. Kernels call it for each part of a
/// block just before they read that part (a 64-value step of Q4_K, a 32-value unit of Q6_K,
/// a block of Q8_0, a unit of 4 blocks of Q4_0), so the requests run ahead of the loads by
/// a constant distance; past a group's end they fetch the next group, which is the next to
/// be read when a pass covers whole rows.
///
/// Spread that way rather than a whole block's lines at once (18 for Q4_K, 26 for Q6_K, 36-52
/// for the two-group kernels): a burst larger than the core's dozen or so L1 miss buffers
/// presumably held up the loads behind it. Intel Xeon (family 6 model 207), 2 threads,
/// decode steps alternated between the two in one process (median speed ratio spread /
/// burst): the 2B Q4_K_M file, 1 sequence 1.02-1.04 (three runs), 4 sequences 1.13, 8
/// sequences 1.09; the Q4_0 file (Q4_0 then also per block) 1.005 / 1.07 at 1 / 4 sequences;
/// the AVX2 kernels (`RGEMMA_SIMD=avx2`) Q4_K_M 1.04 / 1.08, Q4_0 1.01 / 1.03. In 512-token
/// prompts the prefetches cost nothing measurable (off / on: Q4_K_M 1.01, Q8_0 1.00).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn prefetch_ahead<const C: usize>(base: *const u8, from: usize, to: usize) {
    if C > PREFETCH_MAX_COLS {
        return;
    }
    let start = base.wrapping_add(PREFETCH_AHEAD + from);
    let end = base.wrapping_add(PREFETCH_AHEAD + to);
    // The first line that starts at or after `start`.
    let mut line = start.wrapping_add((start as usize).wrapping_neg() & 63);
    while line < end {
        // SAFETY: a prefetch is a hint that reads nothing architecturally and never
        // faults, so any address (even past the matrix) is fine; SSE is in every x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
        line = line.wrapping_add(64);
    }
}

/// `vpdpbusd` on 256-bit registers in its EVEX (AVX-512 VNNI + VL, `VEX` false) or VEX
/// (AVX-VNNI) encoding: the VNNI kernels are written once and compiled for both.
///
/// # Safety
/// The CPU has the chosen instruction set (the kernel's target features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn dpbusd<const VEX: bool>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: the caller's CPU; `VEX` is a constant, so only one branch is compiled.
    unsafe {
        if VEX {
            _mm256_dpbusd_avx_epi32(acc, a, b)
        } else {
            _mm256_dpbusd_epi32(acc, a, b)
        }
    }
}

/// Two 32-byte loads, at `p` and `p + stride`, as the low and high halves of a zmm: the same
/// bytes of two packed groups, for the two-group (16-row) kernels.
///
/// # Safety
/// Both ranges readable; AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn load2(p: *const u8, stride: usize) -> __m512i {
    // SAFETY: forwarded.
    unsafe {
        let lo = _mm256_loadu_si256(p as *const __m256i);
        let hi = _mm256_loadu_si256(p.add(stride) as *const __m256i);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// For a K-quant kernel body `$body::<VEX, C, ADD>` (the [`Tile`] arguments, `vpdpbusd` through
/// [`dpbusd`]) and the type's AVX2 kernel `$avx2::<C, ADD>`: the body compiled for AVX-512
/// VNNI (`vnni`) and for AVX-VNNI (`avxvnni`), and their tiles `tile_vnni` (up to 8 columns,
/// 32 registers) and `tile_avxvnni` (up to 4). The AVX-VNNI tile runs `$avx2` for one column
/// (decode, bound by memory): with 16 registers the one-column VNNI loop was not faster on
/// the Xeon it was measured on (packed Q4_K × 1 token, one thread: 9.5-10.0 against
/// 10.6-11.4 GB/s), while 512 tokens ran 20 % faster.
#[cfg(target_arch = "x86_64")]
macro_rules! vnni_tiles {
    ($body:ident, $avx2:ident) => {
        /// The VNNI body with AVX-512 VNNI (EVEX `vpdpbusd`).
        ///
        /// # Safety
        /// As the body; the CPU has AVX-512 F/BW/VL/VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn vnni<const C: usize, const ADD: bool>(
            nsb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            // SAFETY: forwarded.
            unsafe { $body::<false, C, ADD>(nsb, w, act, act_stride, out, out_stride) }
        }

        /// The VNNI body with AVX-VNNI (VEX `vpdpbusd`).
        ///
        /// # Safety
        /// As the body; the CPU has AVX2/FMA/F16C and AVX-VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        unsafe fn avxvnni<const C: usize, const ADD: bool>(
            nsb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            // SAFETY: forwarded.
            unsafe { $body::<true, C, ADD>(nsb, w, act, act_stride, out, out_stride) }
        }

        /// AVX-VNNI for several columns, the AVX2 kernel for one.
        ///
        /// # Safety
        /// As the body; the CPU has AVX2/FMA/F16C and AVX-VNNI.
        unsafe fn avxvnni_or_avx2<const C: usize, const ADD: bool>(
            nsb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            // SAFETY: forwarded; the CPU has both kernels' features.
            unsafe {
                if C == 1 {
                    $avx2::<C, ADD>(nsb, w, act, act_stride, out, out_stride)
                } else {
                    avxvnni::<C, ADD>(nsb, w, act, act_stride, out, out_stride)
                }
            }
        }

        super::super::tiles::tile_fn!(tile_vnni, vnni);
        super::super::tiles::tile_fn!(tile_avxvnni, avxvnni_or_avx2);
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use vnni_tiles;

/// Calls `$k::<C, ADD>(args...)` with `C` = `$ncols` (1..=8; more is 8) and `ADD` = `$add`,
/// both as constants: the dispatch of [`tile_fn`] and `pair_tile_fn`.
macro_rules! pick_width {
    ($k:ident, $ncols:expr, $add:expr, ($($arg:expr),*)) => {
        if $add {
            $crate::packed::tiles::pick_width!(@cols $k, $ncols, true, ($($arg),*))
        } else {
            $crate::packed::tiles::pick_width!(@cols $k, $ncols, false, ($($arg),*))
        }
    };
    (@cols $k:ident, $ncols:expr, $add:literal, ($($arg:expr),*)) => {
        match $ncols {
            1 => $k::<1, $add>($($arg),*),
            2 => $k::<2, $add>($($arg),*),
            3 => $k::<3, $add>($($arg),*),
            4 => $k::<4, $add>($($arg),*),
            5 => $k::<5, $add>($($arg),*),
            6 => $k::<6, $add>($($arg),*),
            7 => $k::<7, $add>($($arg),*),
            _ => $k::<8, $add>($($arg),*),
        }
    };
}
pub(super) use pick_width;

/// Expands a const-generic kernel `$k::<C, ADD>(nsb, w, act, act_stride, out, out_stride)`
/// into a [`Tile`] that picks `C` (1..=8) from `ncols` and `ADD` from `add`. `ADD` is a
/// constant so that decode's instance (`C = 1`, never adding) is the plain loop.
macro_rules! tile_fn {
    ($name:ident, $k:ident) => {
        /// # Safety
        /// See `Tile`; the CPU has the kernel's target features.
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            nsb: usize,
            w: *const u8,
            act: *const u8,
            act_stride: usize,
            ncols: usize,
            out: *mut f32,
            out_stride: usize,
            add: bool,
        ) {
            // SAFETY: forwarded from the Tile contract.
            unsafe {
                $crate::packed::tiles::pick_width!(
                    $k,
                    ncols,
                    add,
                    (nsb, w, act, act_stride, out, out_stride)
                )
            }
        }
    };
}
pub(super) use tile_fn;

/// As [`tile_fn`] for a two-group kernel `$k::<C, ADD>(nsb, w, w_stride, act, act_stride,
/// out, out_stride)`: a [`PairTile`].
#[cfg(target_arch = "x86_64")]
macro_rules! pair_tile_fn {
    ($name:ident, $k:ident) => {
        /// # Safety
        /// See `PairTile`; the CPU has the kernel's target features.
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            nsb: usize,
            w: *const u8,
            w_stride: usize,
            act: *const u8,
            act_stride: usize,
            ncols: usize,
            out: *mut f32,
            out_stride: usize,
            add: bool,
        ) {
            // SAFETY: forwarded from the PairTile contract.
            unsafe {
                $crate::packed::tiles::pick_width!(
                    $k,
                    ncols,
                    add,
                    (nsb, w, w_stride, act, act_stride, out, out_stride)
                )
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use pair_tile_fn;

/// Most super-blocks of the reduction one pass covers when there are several columns. A
/// tile's activations for one pass (8 columns · 10 · 292 bytes = 23 KiB) then stay in L1
/// while a block of groups passes under them, whatever `n` is; whole rows of a large `n`
/// do not (at n = 14336: 128 KiB of activations per tile, 64 KiB of Q4_K per group).
const K_CHUNK: usize = 10;

/// The K-quant two-group kernels take calls of more columns than this on every AVX-512 CPU
/// (from [`two_groups::MIN_COLS`] where `two_groups` is on). With few columns
/// the weights stream from DRAM and the two-group kernels, reading two streams, were
/// slower on a Zen 5 VM (packed × 2560 from DRAM, one thread, GB/s of weights, 8-row tiles
/// → pairs: Q4_K × 2 columns 27 / 20 → 13 / 18, Q6_K × 2 25 / 17 → 17 / 12, Q6_K × 8
/// 14 / 14 → 10 / 10, Q6_K × 16 292 / 295 / 235 → 276 / 278 / 273 Gop/s); from 32 columns
/// the blocks of groups are reused from L2 by enough tiles that the kernels are bound by
/// arithmetic, where 512-bit `vpdpbusd` pays (Q6_K × 32: 306 / 301 / 284 → 245 / 342 /
/// 368 Gop/s; 512 columns: see `q4k` and `q6k`).
const PAIR_MIN_COLS: usize = 16;

/// When the AVX-512 kernels take two groups (16 rows, 512-bit registers) per call with few
/// columns (batched decoding of a few sequences). Many columns (prompts) always take two
/// groups in the K-quant kernels ([`PAIR_MIN_COLS`]); this is about 4 to 16.
///
/// With several columns the one-group kernels are bound by their arithmetic, not by
/// memory: on an Intel Xeon (family 6 model 207, 2 threads) packed Q4_0 × 4 columns
/// streamed 13-16 GB/s from DRAM against 20-22 for one column, and 512-bit `vpdpbusd` does
/// the work of two 256-bit ones there (× 8 columns in L1, one thread: 221 -> 341 Gop/s).
/// Batched decode of the 2B Q4_0 file after a 2048-token prompt, one group -> two,
/// alternating runs: 8 sequences 37.4 / 34.5 -> 40.6 / 40.7 t/s; 4 sequences 22.9 -> 32.6
/// in one pair of runs, 26.2 / 27.6 -> 25.4 / 29.4 in two later ones. With 2 columns the
/// second Q4_0 weight stream cost more than it saved (23 -> 13-21 GB/s), hence
/// [`MIN_COLS`]. The K-quant kernels, same VM, 1 GiB from DRAM on 2 threads, the two kernels
/// alternated within one process (`packed_bench ab`, 10-15 rounds, median ratio two / one
/// group): Q4_K 1.03 / 1.04 / 1.09 / 1.21 / 1.32 at 2 / 3 / 4 / 8 / 16 columns, Q6_K 1.05 /
/// 0.97 / 1.05 / 1.10 / 1.23; in the engine (`examples/two_groups_ab.rs`: decode steps
/// alternated between the two, median speed ratio) the 2B Q4_K_M file after 512 tokens
/// decodes 4 / 8 / 16 sequences 1.07 / 1.15 / 1.18× as fast with two groups, Q4_0 4
/// sequences 1.05× (separate runs of `rg-batched-bench` had not shown it through that VM's
/// noise). On AMD the two-group K-quant kernels measured slower than one group with
/// few columns (Zen 5, see [`PAIR_MIN_COLS`]) and Zen 4 runs 512-bit operations at the
/// 256-bit rate, so until measured there the default is Intel only. `RGEMMA_TWO_GROUPS=1`
/// (or `0`) in the environment forces the pair on (off) for measuring; tests switch it with
/// [`super::set_two_group_kernels`] (both give every row the same bits).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) mod two_groups {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

    /// Fewest columns in a call for which the two-group kernels run.
    pub const MIN_COLS: usize = 4;

    const AUTO: u8 = 0;
    const ON: u8 = 1;
    const OFF: u8 = 2;
    static CHOICE: AtomicU8 = AtomicU8::new(AUTO);

    pub fn set(choice: Option<bool>) {
        CHOICE.store(
            match choice {
                None => AUTO,
                Some(true) => ON,
                Some(false) => OFF,
            },
            Relaxed,
        );
    }

    pub fn enabled() -> bool {
        match CHOICE.load(Relaxed) {
            ON => true,
            OFF => false,
            _ => by_default(),
        }
    }

    fn by_default() -> bool {
        static DEFAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DEFAULT.get_or_init(|| match std::env::var("RGEMMA_TWO_GROUPS").as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => crate::dot::cpu_is_intel(),
        })
    }

    /// Fewest columns of a call that a K-quant two-group kernel takes: [`MIN_COLS`] where
    /// few-column pairs are on, else more than [`super::PAIR_MIN_COLS`].
    pub fn kquant_min_cols() -> usize {
        if enabled() {
            MIN_COLS
        } else {
            super::PAIR_MIN_COLS + 1
        }
    }
}

/// Weight bytes (of one pass) a block of groups may span: the block stays in L2 while all
/// tiles of columns pass over it.
const GROUP_BLOCK_BYTES: usize = 256 * 1024;

/// Runs `tile` over all groups and columns of a packed gemm (`gemm_to_ptr`'s arguments,
/// with `nsb` super-blocks of `sb_bytes` per group and `act_bytes` per Q8_K block), at most
/// `width` (<= 8) columns per call. The VNNI kernels use 8 (with 32 registers, the decoded
/// weights feed twice as many `vpdpbusd`: +16 % for Q6_K at 512 tokens, +5 % for Q4_K),
/// the AVX2 ones 4 (16 registers).
///
/// The loop nest (as `act_q8_0::drive`): passes over the reduction, then blocks of groups
/// whose weights stay in L2, then tiles of columns whose activations stay in L1, then the
/// block's groups. With several columns a pass covers at most [`K_CHUNK`] super-blocks, in
/// equal passes of an even number of them (`q6k` lays super-blocks out in pairs, so a pass
/// starting at an even index sees the layout of a shorter group); every pass after the
/// first adds its partial sums to the f32 output (32 bytes per 8 rows and column, against
/// 10 · 8 · 256 multiply-adds). One column (decode) reads each weight once, whole rows.
///
/// Measured at 512 tokens, one thread (Gop/s, Q4_K / Q6_K, `shape_bench`): whole rows with
/// column blocks in L2 gave 272 / 228 at 2560 × 2560 and 232 / 158 at 4096 × 14336; passes
/// of 10 give ~300 / ~270 at both. Passes of 6 or 14 measured the same within noise.
///
/// `pair`, when given with its fewest columns (a call with fewer never uses it), takes the
/// groups two at a time (a block's odd last group goes to `tile`); its rows must get the
/// same bits as from `tile` (batch invariance, `packed` module doc).
///
/// # Safety
/// As `packed::gemm_to_ptr` (extents checked there), and the CPU runs `tile` and `pair`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_tiles(
    tile: Tile,
    pair: Option<(PairTile, usize)>,
    width: usize,
    nsb: usize,
    sb_bytes: usize,
    act_bytes: usize,
    w: &[u8],
    ngroups: usize,
    act: &[u8],
    act_stride: usize,
    ncols: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let gb = nsb * sb_bytes;
    let kc = if ncols == 1 {
        nsb
    } else {
        nsb.div_ceil(nsb.div_ceil(K_CHUNK)).next_multiple_of(2)
    };
    let mut k0 = 0;
    while k0 < nsb {
        let ks = (nsb - k0).min(kc);
        let mut gblock = (GROUP_BLOCK_BYTES / (ks * sb_bytes)).max(1);
        let pair = pair.and_then(|(f, min_cols)| (ncols >= min_cols).then_some(f));
        if pair.is_some() {
            // Even, so that no block but the last has a group left over.
            gblock = (gblock & !1).max(2);
        }
        let mut g0 = 0;
        while g0 < ngroups {
            let g1 = (g0 + gblock).min(ngroups);
            let mut c = 0;
            while c < ncols {
                let nc = (ncols - c).min(width);
                let mut g = g0;
                while g < g1 {
                    // SAFETY: g (and g + 1 for a pair) < ngroups, k0 + ks <= nsb and
                    // c + nc <= ncols keep the weight, activation and output extents inside
                    // what gemm_to_ptr checked / was promised; k0 is even (kc is, or
                    // k0 = 0), so super-blocks k0.. of a group have the layout of a group
                    // of ks.
                    unsafe {
                        let wg = w.as_ptr().add(g * gb + k0 * sb_bytes);
                        let ag = act.as_ptr().add(c * act_stride + k0 * act_bytes);
                        let og = out.add(c * out_stride + g * 8);
                        match pair {
                            Some(pair) if g + 1 < g1 => {
                                pair(ks, wg, gb, ag, act_stride, nc, og, out_stride, k0 > 0);
                                g += 2;
                            }
                            _ => {
                                tile(ks, wg, ag, act_stride, nc, og, out_stride, k0 > 0);
                                g += 1;
                            }
                        }
                    };
                }
                c += nc;
            }
            g0 = g1;
        }
        k0 += ks;
    }
}

/// The f32 accumulators of `C` columns: zero, or the partial sums already in `out`
/// when `ADD` (a later pass over the reduction, see `run_tiles`).
///
/// # Safety
/// As [`store`], and readable; AVX available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn load_acc<const C: usize, const ADD: bool>(
    out: *mut f32,
    out_stride: usize,
) -> [__m256; C] {
    let mut acc = [_mm256_setzero_ps(); C];
    if ADD {
        for (c, v) in acc.iter_mut().enumerate() {
            // SAFETY: forwarded.
            *v = unsafe { _mm256_loadu_ps(out.add(c * out_stride)) };
        }
    }
    acc
}

/// [`load_acc`] for the two-group kernels: 16 row sums per column.
///
/// # Safety
/// As [`store16`], and readable; AVX-512 F available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn load_acc16<const C: usize, const ADD: bool>(
    out: *mut f32,
    out_stride: usize,
) -> [__m512; C] {
    let mut acc = [_mm512_setzero_ps(); C];
    if ADD {
        for (c, v) in acc.iter_mut().enumerate() {
            // SAFETY: forwarded.
            *v = unsafe { _mm512_loadu_ps(out.add(c * out_stride)) };
        }
    }
    acc
}

/// Writes 16 row sums of `C` columns.
///
/// # Safety
/// `out + c·out_stride + 0..16` writable for `c < C`; AVX-512 F available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn store16<const C: usize>(acc: &[__m512; C], out: *mut f32, out_stride: usize) {
    for (c, v) in acc.iter().enumerate() {
        // SAFETY: forwarded.
        unsafe { _mm512_storeu_ps(out.add(c * out_stride), *v) };
    }
}

/// Writes 8 row sums of `C` columns.
///
/// # Safety
/// `out + c·out_stride + 0..8` writable for `c < C`; AVX available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn store<const C: usize>(acc: &[__m256; C], out: *mut f32, out_stride: usize) {
    for (c, v) in acc.iter().enumerate() {
        // SAFETY: forwarded.
        unsafe { _mm256_storeu_ps(out.add(c * out_stride), *v) };
    }
}
