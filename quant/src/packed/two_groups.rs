//! When the AVX-512 kernels take two groups (16 rows on 512-bit registers) per call.
//!
//! A two-group kernel does with one 512-bit `vpdpbusd` the work of two 256-bit ones (the
//! weight unpacking and the per-column scaling likewise), and every row gets the bits the
//! one-group kernel gives it (batch invariance). Where it pays depends on the core:
//!
//! - Many columns (prompts; the weights come from L2 and the kernels are bound by their
//!   arithmetic): the K-quant kernels pair from 17 columns on every AVX-512 CPU (Zen 5:
//!   `tiles::run_tiles`; `q4k`, `q6k`).
//! - Few columns (batched decoding; the weights stream from DRAM). On an Intel Xeon (family 6
//!   model 207, 2 threads) the one-group Q4_0 kernel is bound by its arithmetic from 4 columns:
//!   packed Q4_0 × 4 columns streamed 13-16 GB/s from DRAM against 20-22 for one column, and
//!   the pair ran × 8 columns in L1 at 341 against 221 Gop/s on one thread; batched decode of 4
//!   sequences after a 2048-token prompt went from 22.9 to 32.6 t/s. With 2 columns the
//!   second weight stream cost more than it saved (23 -> 13-21 GB/s). The K-quant pairs from
//!   5 columns: 2B Q4_K_M, 8 sequences after 2048 tokens, two alternating rounds, 30.5 / 29.7
//!   -> 32.0 / 32.3 t/s (4 sequences unchanged). On a Zen 5 VM the K-quant pairs measured
//!   *slower* than one group with few columns (packed × 2560 from DRAM, one thread, GB/s,
//!   one group -> pairs: Q4_K × 2 columns 27 / 20 -> 13 / 18, Q6_K × 8 14 / 14 -> 10 / 10), and
//!   Zen 4 runs 512-bit operations at the 256-bit rate, so until measured there the few-column
//!   pairs are Intel's only.
//!
//! `RGEMMA_TWO_GROUPS=1` (or `0`) in the environment turns the few-column pairs on (off)
//! whatever the vendor, for measuring; tests switch them with
//! [`super::set_two_group_kernels`].

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

const AUTO: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;
static CHOICE: AtomicU8 = AtomicU8::new(AUTO);

/// `None`: the CPU's default; `Some`: few-column pairs forced on or off.
pub(super) fn set(choice: Option<bool>) {
    let v = match choice {
        None => AUTO,
        Some(true) => ON,
        Some(false) => OFF,
    };
    CHOICE.store(v, Relaxed);
}

/// Whether calls of few columns use the two-group kernels.
fn few_columns() -> bool {
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

/// Fewest columns for which the Q4_0 kernel takes two groups, if it ever does.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn q4_0_min_cols() -> Option<usize> {
    few_columns().then_some(4)
}

/// Fewest columns for which the K-quant kernels take two groups.
pub(super) fn kquant_min_cols() -> usize {
    if few_columns() {
        5
    } else {
        17
    }
}
