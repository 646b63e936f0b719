#!/usr/bin/env python3
"""Generate the bit-exactness fixtures of the rgemma-quant crate (quant/tests/fixtures/).

What it writes (all little-endian, raw arrays, no headers):
  inputs/<case>.f32            seeded f32 input rows (several distributions + edge cases)
  quant/<case>.<TYPE>.bin      expected bytes of quantize_row(TYPE, input)
  dequant/<case>.<TYPE>.f32    expected dequantize_row(TYPE, those bytes) (a subset of cases)
  blocks/<TYPE>.bin            blocks of random bytes (finite f16 scales) for dequantization
  blocks/<TYPE>.f32            expected dequantize_row(TYPE, blocks/<TYPE>.bin)
  MANIFEST.txt                 one line per expected file: kind case type elements source

Where the expected values come from (the "source" column):
  gguf-py   the `gguf` PyPI package (gguf.quants.quantize / dequantize, numpy ports written to
            match ggml bit for bit): BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 quantization and every
            dequantization it has (F16, BF16, legacy types, Q2_K..Q6_K).
  ggml-c    ggml's own C reference code (quantize_row_*_ref, dequantize_row_*,
            ggml_compute_fp32_to_fp16 / _fp16_to_fp32 / _fp32_to_bf16), run through a tiny
            harness: F16, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K quantization, Q8_K
            dequantization.
  numpy     Q8_1 dequantization (d * q; ggml has no dequantize_row_q8_1).
Every value that both gguf-py and ggml-c can produce is produced by both and compared; the
script stops if they disagree (except F16 NaN payloads, where numpy and ggml differ by design
and ggml's canonical 0x7E00 is used).

The harness: this script writes a ~100-line C file (our own code, embedded below) into a
temporary directory and compiles it together with ggml's src/ggml-quants.c from a ggml checkout
given with --ggml-src. No ggml code is copied into this repository. The compile flags are those
of a plain x86-64 release build of ggml-base: -O2 -DNDEBUG, no -march (so no FMA), plus
-ffp-contract=off to rule out contraction on other hosts. The fixtures in the repo were made
from ggml-org/ggml commit d99724f2b141fed9e1a9f402213506c081433465 (2026-08-21) on x86-64 Linux,
gcc, with gguf 0.19.0 and numpy 2.4.

How to run (from the repo root; deterministic: the same inputs give the same files):
  python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-dev.txt
  # a checkout of the ggml-org/ggml repository (git clone) in /tmp/ggml; any recent one
  .venv/bin/python scripts/gen_quant_fixtures.py --ggml-src /tmp/ggml
Options: --out DIR (default quant/tests/fixtures), --cc COMPILER (default cc).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from gguf import GGMLQuantizationType as GT
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

REPO = Path(__file__).resolve().parent.parent

# ggml block geometry: name -> (elements per block, bytes per block). Q8_1 is the C size (36).
GEOMETRY = {
    "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q8_0": (32, 34), "Q8_1": (32, 36),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
    "Q6_K": (256, 210), "Q8_K": (256, 292),
}
# Types rgemma quantizes, and where the expected bytes come from.
QUANT_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
               "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]
GGUF_QUANTIZES = {"BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}
# Types rgemma dequantizes.
DEQUANT_TYPES = QUANT_TYPES
GGUF_DEQUANTIZES = {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
# Cases whose quantized bytes also get dequantization fixtures (keeps the fixtures small).
DEQUANT_CASES = {"normal", "weights", "neg_max", "ties"}
# Cases where gguf-py's numpy code may legitimately differ from ggml's C code: NaN makes
# numpy's max/argmax pick the NaN (C comparisons skip it), and numpy's float->uint8
# conversion of NaN/inf is not the C (x86) one. ggml's bytes are the reference there.
NUMPY_MAY_DIFFER = {"nonfinite"}
# Cases only meaningful for the float conversions.
FLOAT_ONLY_CASES = {"float_specials"}

HARNESS_C = r"""
/* rgemma fixture harness (rgemma's own code): runs ggml's reference (de)quantizers on raw
 * files.  usage: harness q|dq TYPE IN OUT
 *   q:  IN = f32 array, OUT = blocks (quantize_row_*_ref; output buffer zeroed first)
 *   dq: IN = blocks,    OUT = f32 array (dequantize_row_*) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "ggml.h"
#include "ggml-impl.h"
#include "ggml-quants.h"

/* ggml-quants.c references these ggml.c symbols; the reference paths used here never call
 * them, so stand-ins that abort are enough. */
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort %s:%d %s\n", file, line, fmt); abort();
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) { (void)t; (void)ne; abort(); }
size_t ggml_type_size(enum ggml_type t) { (void)t; abort(); }
const char *ggml_type_name(enum ggml_type t) { (void)t; return "?"; }

typedef void (*qfn)(const float *, void *, int64_t);
typedef void (*dqfn)(const void *, float *, int64_t);
struct entry { const char *name; int bs; int ts; qfn q; dqfn dq; };

static void q_f16(const float *x, void *y, int64_t k) {
    uint16_t *o = y; for (int64_t i = 0; i < k; i++) o[i] = ggml_compute_fp32_to_fp16(x[i]);
}
static void dq_f16(const void *x, float *y, int64_t k) {
    const uint16_t *h = x; for (int64_t i = 0; i < k; i++) y[i] = ggml_compute_fp16_to_fp32(h[i]);
}
static void q_bf16(const float *x, void *y, int64_t k) {
    uint16_t *o = y; for (int64_t i = 0; i < k; i++) o[i] = ggml_compute_fp32_to_bf16(x[i]).bits;
}
static void dq_bf16(const void *x, float *y, int64_t k) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < k; i++) { ggml_bf16_t b = { h[i] }; y[i] = ggml_compute_bf16_to_fp32(b); }
}

#define Q(f) ((qfn)(f))
#define DQ(f) ((dqfn)(f))
static const struct entry table[] = {
    { "F16", 1, 2, q_f16, dq_f16 },
    { "BF16", 1, 2, q_bf16, dq_bf16 },
    { "Q4_0", 32, sizeof(block_q4_0), Q(quantize_row_q4_0_ref), DQ(dequantize_row_q4_0) },
    { "Q4_1", 32, sizeof(block_q4_1), Q(quantize_row_q4_1_ref), DQ(dequantize_row_q4_1) },
    { "Q5_0", 32, sizeof(block_q5_0), Q(quantize_row_q5_0_ref), DQ(dequantize_row_q5_0) },
    { "Q5_1", 32, sizeof(block_q5_1), Q(quantize_row_q5_1_ref), DQ(dequantize_row_q5_1) },
    { "Q8_0", 32, sizeof(block_q8_0), Q(quantize_row_q8_0_ref), DQ(dequantize_row_q8_0) },
    { "Q8_1", 32, sizeof(block_q8_1), Q(quantize_row_q8_1_ref), NULL },
    { "Q2_K", 256, sizeof(block_q2_K), Q(quantize_row_q2_K_ref), DQ(dequantize_row_q2_K) },
    { "Q3_K", 256, sizeof(block_q3_K), Q(quantize_row_q3_K_ref), DQ(dequantize_row_q3_K) },
    { "Q4_K", 256, sizeof(block_q4_K), Q(quantize_row_q4_K_ref), DQ(dequantize_row_q4_K) },
    { "Q5_K", 256, sizeof(block_q5_K), Q(quantize_row_q5_K_ref), DQ(dequantize_row_q5_K) },
    { "Q6_K", 256, sizeof(block_q6_K), Q(quantize_row_q6_K_ref), DQ(dequantize_row_q6_K) },
    { "Q8_K", 256, sizeof(block_q8_K), Q(quantize_row_q8_K_ref), DQ(dequantize_row_q8_K) },
};

static void *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END); *n = (size_t)ftell(f); fseek(f, 0, SEEK_SET);
    void *p = malloc(*n + 1);
    if (fread(p, 1, *n, f) != *n) { perror(path); exit(2); }
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s q|dq TYPE IN OUT\n", argv[0]); return 2; }
    const struct entry *e = NULL;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (!strcmp(table[i].name, argv[2])) e = &table[i];
    if (!e) { fprintf(stderr, "unknown type %s\n", argv[2]); return 2; }
    size_t n; void *in = slurp(argv[3], &n);
    void *out; size_t nout;
    if (!strcmp(argv[1], "q")) {
        int64_t k = (int64_t)(n / 4);
        if (k % e->bs) { fprintf(stderr, "not block aligned\n"); return 2; }
        nout = (size_t)(k / e->bs) * e->ts;
        out = calloc(1, nout); /* zeroed: Q8_K leaves bsums unwritten in all-zero blocks */
        e->q(in, out, k);
    } else {
        if (!e->dq || n % e->ts) { fprintf(stderr, "cannot dequantize\n"); return 2; }
        int64_t k = (int64_t)(n / e->ts) * e->bs;
        nout = (size_t)k * 4;
        out = calloc(1, nout);
        e->dq(in, out, k);
    }
    FILE *f = fopen(argv[4], "wb");
    if (!f || fwrite(out, 1, nout, f) != nout) { perror(argv[4]); return 2; }
    fclose(f);
    return 0;
}
"""


README = """# rgemma-quant bit-exactness fixtures

Generated by `scripts/gen_quant_fixtures.py` (its header says how to rerun it; the output is
deterministic). Do not edit by hand.

- `inputs/<case>.f32`: seeded f32 rows (little-endian): normal, weights (N(0, 0.02) with
  outliers), uniform, laplace, positive, negative, zeros, one_nonzero, neg_max (largest
  magnitude negative in every block), ties (exact .5 cases for every rounding rule), tiny
  (f32 denormals, f16-underflowing scales, a denormal scale whose inverse is infinite),
  large (f16-overflowing scales), float_specials (NaN payloads, infinities, rounding
  boundaries; F16/BF16 only).
- `quant/<case>.<TYPE>.bin`: the bytes ggml's reference quantizer writes for that input.
- `dequant/<case>.<TYPE>.f32`: ggml's dequantization of those bytes (a subset of cases).
- `blocks/<TYPE>.bin` / `.f32`: random block bytes (finite scales) and their dequantization.
- `MANIFEST.txt`: every expected file with its source: `gguf-py` (the gguf PyPI package's
  numpy ports), `ggml-c` (ggml's C `quantize_row_*_ref` / `dequantize_row_*` compiled into a
  small harness outside this repository), `numpy`; `a+b` means both produced identical output.
  The committed files come from ggml-org/ggml commit d99724f2b141 (2026-08-21) built for x86-64
  with gcc (-O2, no FMA contraction), gguf 0.19.0 and numpy 2.4.

The Rust tests (`quant/tests/bit_exact.rs`) read these files; no Python is needed to run them.
"""


class GgmlHarness:
    """Compiles HARNESS_C against a ggml checkout and runs it on numpy arrays."""

    def __init__(self, ggml_src: Path, cc: str, workdir: Path):
        quants_c = ggml_src / "src" / "ggml-quants.c"
        if not quants_c.is_file():
            sys.exit(f"--ggml-src {ggml_src}: no src/ggml-quants.c there")
        self.dir = workdir
        src = workdir / "harness.c"
        src.write_text(HARNESS_C)
        self.exe = workdir / "harness"
        cmd = [cc, "-std=gnu11", "-O2", "-DNDEBUG", "-ffp-contract=off", "-w",
               f"-I{ggml_src / 'include'}", f"-I{ggml_src / 'src'}",
               f"-I{ggml_src / 'src' / 'ggml-cpu'}",
               str(src), str(quants_c), "-lm", "-o", str(self.exe)]
        subprocess.run(cmd, check=True)

    def _run(self, mode: str, ty: str, data: np.ndarray) -> bytes:
        inp, out = self.dir / "in.bin", self.dir / "out.bin"
        inp.write_bytes(data.tobytes())
        subprocess.run([str(self.exe), mode, ty, str(inp), str(out)], check=True)
        return out.read_bytes()

    def quantize(self, ty: str, x: np.ndarray) -> bytes:
        return self._run("q", ty, x.astype(np.float32))

    def dequantize(self, ty: str, blocks: bytes) -> np.ndarray:
        return np.frombuffer(self._run("dq", ty, np.frombuffer(blocks, np.uint8)), np.float32)


def gguf_q(ty: str, x: np.ndarray) -> bytes:
    bs, _ = GEOMETRY[ty]
    rows = x.astype(np.float32).reshape(-1, max(bs, 256) if len(x) % 256 == 0 else bs)
    return np.ascontiguousarray(gguf_quantize(rows, GT[ty])).tobytes()


def gguf_dq(ty: str, blocks: bytes) -> np.ndarray:
    _, ts = GEOMETRY[ty]
    arr = np.frombuffer(blocks, np.uint8).reshape(-1, ts)
    return np.ascontiguousarray(gguf_dequantize(arr, GT[ty]), dtype=np.float32).reshape(-1)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# ----------------------------------------------------------------------------- inputs

def make_cases() -> dict[str, np.ndarray]:
    """Seeded inputs. Lengths are multiples of 256 so every type applies."""
    rng = np.random.default_rng(20261127)
    f32 = np.float32
    cases: dict[str, np.ndarray] = {}

    cases["normal"] = rng.standard_normal(512).astype(f32)
    w = rng.normal(0.0, 0.02, 512)
    w[rng.integers(0, 512, 6)] *= 12.0  # a few outliers, as real weight rows have
    cases["weights"] = w.astype(f32)
    cases["uniform"] = rng.uniform(-1.0, 1.0, 512).astype(f32)
    cases["laplace"] = rng.laplace(0.0, 0.5, 512).astype(f32)
    cases["positive"] = rng.uniform(0.5, 2.0, 512).astype(f32)
    cases["negative"] = rng.uniform(-3.0, -0.1, 512).astype(f32)
    cases["zeros"] = np.zeros(256, f32)

    # One non-zero element per 32-block, at varying positions, signs and magnitudes; the
    # second super-block also has whole zero sub-blocks between them.
    one = np.zeros(512, f32)
    for b in range(16):
        if b >= 8 and b % 2 == 1:
            continue
        pos = (b * 7) % 32
        one[32 * b + pos] = (-1.0) ** b * 10.0 ** ((b % 5) - 2) * (1.0 + 0.37 * b)
    cases["one_nonzero"] = one

    # In every 32-block the largest magnitude is negative (and unique).
    nm = rng.standard_normal(512).astype(f32)
    for b in range(16):
        blk = nm[32 * b: 32 * b + 32]
        blk[(5 * b + 3) % 32] = -(np.abs(blk).max() + 0.5 + 0.1 * b)
    cases["neg_max"] = nm

    # Exact ties: blocks whose scale is exactly 1, with half-integer values, so x/d + 8.5,
    # x/d + 16.5 and roundf(x/d) all land exactly on .0/.5 boundaries.
    ties = np.zeros(512, f32)
    for b in range(16):
        blk = ties[32 * b: 32 * b + 32]
        kind = b % 4
        if kind == 0:    # Q4_0: max = -8 -> d = 1; values in {-8, -7.5, ..., 7.5}
            blk[:] = rng.integers(-16, 16, 32) * 0.5
            blk[b % 32] = -8.0
        elif kind == 1:  # Q8_0: amax = 127 -> d = 1; half-integers in (-127, 127)
            blk[:] = rng.integers(-254, 255, 32) * 0.5
            blk[(b + 1) % 32] = 127.0
        elif kind == 2:  # Q5_0: max = -16 -> d = 1; values in {-16, ..., 15.5}
            blk[:] = rng.integers(-32, 32, 32) * 0.5
            blk[(b + 2) % 32] = -16.0
        else:            # Q4_1/Q5_1: min 0, max 15 (31 for odd b) -> d = 1; half-integers
            top = 15.0 if b % 8 == 3 else 31.0
            blk[:] = rng.integers(0, int(2 * top) + 1, 32) * 0.5
            blk[0], blk[1] = 0.0, top
    cases["ties"] = ties

    # Exact ties for the K-quant re-quantization (nearest_int rounds half to even).
    # Q6_K (first super-block): group 0 is on the integer grid with -32 as its signed
    # max-abs, so its sub-scale is exactly 1 and d = -1/128; the other groups have signed
    # max-abs -16, so their sub-scale code is -64 and d·sc = 1/2 exactly, and values
    # (k + 0.5)/2 re-quantize to exact ties x/(d·sc) = k + 0.5.
    # Q3_K (second super-block): each group has -4 and values k + 0.5.
    ktie = np.zeros(512, f32)
    ktie[0:16] = rng.integers(-31, 32, 16)
    ktie[5] = -32.0
    for g in range(1, 16):
        # Mostly on the step-1/2 grid (keeps the least-squares sub-scale at 1/2 so its code
        # is -64), plus three small half-step values (little weight in that fit) as ties.
        ktie[16 * g: 16 * g + 16] = rng.integers(-31, 32, 16) * 0.5
        ktie[16 * g + g % 16] = -16.0
        for t in range(3):
            ktie[16 * g + (g + 5 + 4 * t) % 16] = (rng.integers(-4, 4) + 0.5) * 0.5
    for g in range(16):
        o = 256 + 16 * g
        ktie[o: o + 16] = rng.integers(-4, 3, 16) + 0.5
        ktie[o + (3 * g) % 16] = -4.0
    cases["ktie"] = ktie

    # Tiny values: f32 denormals, blocks whose f16 scale underflows to zero or is subnormal,
    # and a block whose f32 scale is denormal (1/d overflows to inf).
    tiny = np.zeros(512, f32)
    tiny[0:32] = rng.uniform(-1, 1, 32) * 1e-40          # f32 denormals
    tiny[32:64] = rng.uniform(-1, 1, 32) * 1e-38          # max/-8 denormal -> id = inf
    tiny[32 + 5] = -1e-38
    tiny[64:96] = rng.uniform(-1, 1, 32) * 1e-8           # f16(d) underflows to 0
    tiny[96:128] = rng.uniform(-1, 1, 32) * 3e-5          # f16(d) subnormal
    tiny[128:160] = rng.uniform(-1, 1, 32) * 1e-3
    tiny[160:192] = 0.0
    tiny[160 + 7] = 1.4e-45                                # the smallest denormal, alone
    tiny[192:256] = rng.uniform(-1, 1, 64) * 1e-20
    tiny[256:384] = rng.uniform(-1, 1, 128) * 1e-12
    tiny[384:512] = rng.uniform(-1, 1, 128) * 1e-17       # under Q6_K's GROUP_MAX_EPS (1e-15)
    cases["tiny"] = tiny

    # Large but finite: f16 scale near its max, scale that overflows f16 (inf), Q4_1 min
    # beyond f16 range.
    big = np.zeros(512, f32)
    big[0:32] = rng.uniform(-1, 1, 32) * 6.0e4
    big[32:64] = rng.uniform(-1, 1, 32) * 5.0e5            # Q4_0 d = 6.25e4: still finite
    big[64:96] = rng.uniform(-1, 1, 32) * 2.0e6            # d overflows f16 -> inf
    big[96:128] = rng.uniform(1e5, 2e5, 32)                # Q4_1 min overflows f16
    big[128:256] = rng.standard_normal(128) * 1e3
    big[256:512] = rng.standard_normal(256) * 1e4
    cases["large"] = big

    # Huge finite values: squares and sums overflow to infinity inside the scale searches,
    # f16 scales overflow, FLT_MAX neighbours.
    huge = rng.standard_normal(512).astype(f32)
    huge[0:32] *= 1e30
    huge[32:64] = rng.uniform(-1, 1, 32) * 3.0e38
    huge[32 + 9] = -3.4028235e38
    huge[64:96] *= 1e19                                     # x² overflows f32
    huge[256:384] *= 1e20
    huge[384:512] *= 1e10
    cases["huge"] = huge.astype(f32)

    # Non-finite inputs (NaN and ±inf) in some blocks, next to ordinary blocks.
    nf = rng.standard_normal(512).astype(f32)
    nf[3] = np.inf
    nf[32 + 17] = -np.inf
    nf[64 + 5] = np.nan
    nf[96 + 0] = np.nan
    nf[96 + 1] = 5.0
    nf[300] = np.nan
    nf[400] = np.inf
    cases["nonfinite"] = nf

    # Values that the float conversions must handle: NaNs with payloads, infinities, signed
    # zeros, f16/bf16 rounding ties, overflow and underflow boundaries.
    u32 = np.uint32
    bits = [
        0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00000, 0xFF812345, 0x7FFFFFFF,  # NaNs
        0x7F800000, 0xFF800000, 0x00000000, 0x80000000,                          # inf, 0
        0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000,  # extremes
        0x477FE000, 0x477FEFFF, 0x477FF000, 0xC77FF000, 0x47800000,  # 65504, ..., 65520 (->inf)
        0x33800000, 0x33000000, 0x33000001, 0x337FFFFF, 0x33C00000,  # 2^-24, 2^-25 ties
        0x38800000, 0x387FC000, 0x387FE000, 0x387FF000,              # f16 normal/subnormal edge
        0x3F801000, 0x3F803000, 0x3F801001, 0x3F802FFF,              # f16 RNE ties near 1
        0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF,              # bf16 RNE ties near 1
        0x7F7F8000, 0x7F7F7FFF, 0x7F7FFFFF,                          # bf16 overflow to inf
    ]
    sp = np.array(bits, dtype=u32).view(f32)
    rest = (rng.standard_normal(256 - len(sp)) * np.exp(rng.uniform(-30, 30, 256 - len(sp))))
    cases["float_specials"] = np.concatenate([sp, rest.astype(f32)])
    return cases


def make_random_blocks(ty: str, rng: np.random.Generator, nblocks: int) -> bytes:
    """Random block bytes whose f16/f32 scale fields are finite and moderate (so the expected
    values have no NaN, whose payload is not portable)."""
    _, ts = GEOMETRY[ty]
    raw = rng.integers(0, 256, size=(nblocks, ts), dtype=np.uint8)

    def f16_field(offset: int):
        vals = (rng.uniform(-2.0, 2.0, nblocks) * np.exp2(rng.integers(-12, 4, nblocks)))
        raw[:, offset:offset + 2] = vals.astype(np.float16).view(np.uint8).reshape(nblocks, 2)

    if ty == "F16":  # random finite halves, subnormals included
        vals = rng.standard_normal(nblocks) * np.exp2(rng.integers(-26, 14, nblocks))
        return vals.astype(np.float16).tobytes()
    if ty == "BF16":  # the top halves of random finite floats
        vals = rng.standard_normal(nblocks) * np.exp2(rng.integers(-130, 120, nblocks))
        return (vals.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    offsets = {
        "Q4_0": [0], "Q5_0": [0], "Q8_0": [0],
        "Q4_1": [0, 2], "Q5_1": [0, 2], "Q8_1": [0, 2],
        "Q4_K": [0, 2], "Q5_K": [0, 2],
        "Q2_K": [80, 82], "Q3_K": [108], "Q6_K": [208],
    }
    if ty == "Q8_K":
        d = (rng.uniform(-1, 1, nblocks) * 1e-2).astype(np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(nblocks, 4)
    else:
        for off in offsets[ty]:
            f16_field(off)
    return raw.tobytes()


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ggml-src", type=Path, required=True, help="a ggml checkout (has src/ggml-quants.c)")
    ap.add_argument("--out", type=Path, default=REPO / "quant" / "tests" / "fixtures")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"))
    args = ap.parse_args()

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    for sub in ("inputs", "quant", "dequant", "blocks"):
        (out / sub).mkdir(parents=True)

    manifest: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        ggml = GgmlHarness(args.ggml_src.resolve(), args.cc, Path(tmp))
        cases = make_cases()
        for case, x in cases.items():
            (out / "inputs" / f"{case}.f32").write_bytes(x.tobytes())
            types = ["F16", "BF16"] if case in FLOAT_ONLY_CASES else QUANT_TYPES
            for ty in types:
                c_bytes = ggml.quantize(ty, x)
                source = "ggml-c"
                if ty in GGUF_QUANTIZES:
                    with np.errstate(all="ignore"):
                        py_bytes = gguf_q(ty, x)
                    if py_bytes == c_bytes:
                        source = "gguf-py+ggml-c"
                    elif case in NUMPY_MAY_DIFFER:
                        source = "ggml-c(gguf-py-differs)"
                        print(f"note: gguf-py differs from ggml on {case} {ty}; using ggml's bytes")
                    else:
                        sys.exit(f"gguf-py and ggml disagree on quantize {ty} {case}")
                elif ty == "F16":
                    with np.errstate(all="ignore"):
                        npy = x.astype(np.float16)
                    c16 = np.frombuffer(c_bytes, np.uint16)
                    ok = np.isnan(x) | (npy.view(np.uint16) == c16)
                    if not ok.all():
                        sys.exit(f"numpy and ggml disagree on f32->f16 {case}")
                    source = "ggml-c+numpy"
                (out / "quant" / f"{case}.{ty}.bin").write_bytes(c_bytes)
                manifest.append(f"quant {case} {ty} {len(x)} {source}")

                if case in DEQUANT_CASES or case in FLOAT_ONLY_CASES:
                    deq, source = reference_dequant(ggml, ty, c_bytes)
                    (out / "dequant" / f"{case}.{ty}.f32").write_bytes(deq.tobytes())
                    manifest.append(f"dequant {case} {ty} {len(x)} {source}")

        rng = np.random.default_rng(77)
        for ty in DEQUANT_TYPES:
            bs, _ = GEOMETRY[ty]
            nblocks = 256 if bs == 1 else max(4, 512 // bs)
            blocks = make_random_blocks(ty, rng, nblocks)
            deq, source = reference_dequant(ggml, ty, blocks)
            (out / "blocks" / f"{ty}.bin").write_bytes(blocks)
            (out / "blocks" / f"{ty}.f32").write_bytes(deq.tobytes())
            manifest.append(f"blocks random {ty} {nblocks * bs} {source}")

    header = [
        "# rgemma-quant fixtures; generated by scripts/gen_quant_fixtures.py (see its header).",
        f"# gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}",
        "# kind case type elements source",
    ]
    (out / "MANIFEST.txt").write_text("\n".join(header + manifest) + "\n")
    (out / "README.md").write_text(README)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(manifest)} fixtures, {total} bytes, to {out}")


def reference_dequant(ggml: GgmlHarness, ty: str, blocks: bytes) -> tuple[np.ndarray, str]:
    """Expected dequantization of `blocks`, cross-checked between gguf-py and ggml-c."""
    if ty == "Q8_1":
        _, ts = GEOMETRY[ty]
        arr = np.frombuffer(blocks, np.uint8).reshape(-1, ts)
        d = arr[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = arr[:, 4:].view(np.int8).astype(np.float32)
        return (q * d).reshape(-1).astype(np.float32), "numpy"
    c = ggml.dequantize(ty, blocks)
    if ty in GGUF_DEQUANTIZES:
        with np.errstate(all="ignore"):
            py = gguf_dq(ty, blocks)
        both_nan = np.isnan(py) & np.isnan(c)
        if not (both_nan | (py.view(np.uint32) == c.view(np.uint32))).all():
            sys.exit(f"gguf-py and ggml disagree on dequantize {ty}")
        return c, "gguf-py+ggml-c"
    return c, "ggml-c"


if __name__ == "__main__":
    main()
