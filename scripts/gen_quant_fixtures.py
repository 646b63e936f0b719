#!/usr/bin/env python3
"""Generate the bit-exactness fixtures of the rgemma-quant crate (quant/tests/fixtures/).

What it writes (all little-endian, raw arrays, no headers):
  inputs/<case>.f32            seeded f32 input rows (several distributions + edge cases)
  quant/<case>.<TYPE>.bin      expected bytes of quantize_row(TYPE, input)
  dequant/<case>.<TYPE>.f32    expected dequantize_row(TYPE, those bytes) (a subset of cases)
  blocks/<TYPE>.bin            blocks of random bytes (finite f16 scales) for dequantization
  blocks/<TYPE>.f32            expected dequantize_row(TYPE, blocks/<TYPE>.bin)
  inputs_w/<case>.f32          seeded rows for the importance-matrix quantizers (3 or 4 rows
                               each; realistic, zero, tiny and outlier values)
  weights/<case>.f32           their importance weights, one per column: n_per_row = the
                               weights' length (512 or 768); imatrix-like values over 4 orders
                               of magnitude, all-equal, or partly zero; ties_w puts
                               exact rounding ties on zero-importance columns,
                               nonfinite_w NaN/inf/overflowing values
  quant_w/<case>.<TYPE>.bin    expected bytes of quantize_row_weighted(TYPE, rows, weights),
                               i.e. ggml's quantize_<type>(rows, nrow, n_per_row, weights)
                               with non-NULL weights, for Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K
  MANIFEST.txt                 one line per expected file: kind case type elements source
                               (kinds quant, dequant, blocks, quant_w)

Where the expected values come from (the "source" column):
  gguf-py   the `gguf` PyPI package (gguf.quants.quantize / dequantize, numpy ports written to
            match ggml bit for bit): BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 quantization and every
            dequantization it has (F16, BF16, legacy types, Q2_K..Q6_K).
  ggml-c    ggml's own C reference code (quantize_row_*_ref, dequantize_row_*,
            ggml_compute_fp32_to_fp16 / _fp16_to_fp32 / _fp32_to_bf16), run through a tiny
            harness: F16, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K quantization, Q8_K
            dequantization.
  numpy     Q8_1 dequantization (d * q; ggml has no dequantize_row_q8_1).
  (quant_w is ggml-c only: gguf-py has no importance-matrix quantizers. For every quant_w
  input the script also checks that ggml's quantize_<type> with NULL weights gives the
  bytes of quantize_row_<type>_ref, the fallback rgemma's quantize_row implements.)
Every value that both gguf-py and ggml-c can produce is produced by both and compared; the
script stops if they disagree (except F16 NaN payloads, where numpy and ggml differ by design
and ggml's canonical 0x7E00 is used).

The harness: this script writes a ~150-line C file (our own code, embedded below) into a
temporary directory and compiles it together with ggml's src/ggml-quants.c from a ggml checkout
given with --ggml-src. No ggml code is copied into this repository. The compile flags are those
of a plain x86-64 release build of ggml-base: -O2 -DNDEBUG, no -march (so no FMA), plus
-ffp-contract=off to rule out contraction on other hosts. The fixtures in the repo were made
from ggml-org/ggml commit d99724f2b141fed9e1a9f402213506c081433465 (2026-08-21) on x86-64 Linux,
gcc, with gguf 0.19.0 and numpy 2.4. The quant_w/weights/inputs_w files were added later from
the ggml inside ggml-org/llama.cpp commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f (2026-10-01,
vendored in llama-cpp-python 0.3.36: --ggml-src .../vendor/llama.cpp/ggml), gcc 12.2; rerun
with that ggml, the script rewrote every earlier file byte for byte.

How to run (from the repo root; deterministic: the same inputs give the same files):
  python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-dev.txt
  # a checkout of the ggml-org/ggml repository (git clone) in /tmp/ggml, or the ggml/
  # directory of a llama.cpp checkout; any recent one
  .venv/bin/python scripts/gen_quant_fixtures.py --ggml-src /tmp/ggml
(Only numpy and gguf are needed here: `pip install numpy==2.4.6 gguf==0.19.0` is enough.)
A run takes about 10 s (compiling the harness, then a few hundred runs of it).
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
# Types with an importance-matrix (quant_weights) path in ggml. (quantize_q8_0 ignores its
# weights; the float types have none.)
WEIGHTED_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

HARNESS_C = r"""
/* rgemma fixture harness (rgemma's own code): runs ggml's reference (de)quantizers on raw
 * files.  usage: harness q|dq TYPE IN OUT
 *   q:  IN = f32 array, OUT = blocks (quantize_row_*_ref; output buffer zeroed first)
 *   dq: IN = blocks,    OUT = f32 array (dequantize_row_*)
 * harness qw TYPE IN WEIGHTS OUT
 *   qw: IN = rows of n_per_row f32 (n_per_row = the length of WEIGHTS), OUT = blocks of
 *       quantize_<type>(IN, OUT, nrow, n_per_row, WEIGHTS) (the importance-matrix path);
 *       WEIGHTS = "-" passes NULL (one row of all of IN; ggml then runs the _ref quantizer) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "ggml.h"
#include "ggml-impl.h"
#include "ggml-quants.h"

typedef size_t (*wqfn)(const float *, void *, int64_t, int64_t, const float *);
struct wentry { const char *name; enum ggml_type type; int bs; int ts; wqfn q; };
static const struct wentry wtable[] = {
    { "Q4_0", GGML_TYPE_Q4_0, 32, sizeof(block_q4_0), quantize_q4_0 },
    { "Q4_1", GGML_TYPE_Q4_1, 32, sizeof(block_q4_1), quantize_q4_1 },
    { "Q5_0", GGML_TYPE_Q5_0, 32, sizeof(block_q5_0), quantize_q5_0 },
    { "Q5_1", GGML_TYPE_Q5_1, 32, sizeof(block_q5_1), quantize_q5_1 },
    { "Q2_K", GGML_TYPE_Q2_K, 256, sizeof(block_q2_K), quantize_q2_K },
    { "Q3_K", GGML_TYPE_Q3_K, 256, sizeof(block_q3_K), quantize_q3_K },
    { "Q4_K", GGML_TYPE_Q4_K, 256, sizeof(block_q4_K), quantize_q4_K },
    { "Q5_K", GGML_TYPE_Q5_K, 256, sizeof(block_q5_K), quantize_q5_K },
    { "Q6_K", GGML_TYPE_Q6_K, 256, sizeof(block_q6_K), quantize_q6_K },
};
#define NW (sizeof(wtable) / sizeof(wtable[0]))

/* ggml-quants.c references these ggml.c symbols. The quantize_<type> functions need the row
 * size of the types above; the other paths used here never call them, so stand-ins that
 * abort are enough. */
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort %s:%d %s\n", file, line, fmt); abort();
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) {
    for (size_t i = 0; i < NW; i++)
        if (wtable[i].type == t) return (size_t)(ne / wtable[i].bs) * wtable[i].ts;
    abort();
}
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

static int weighted(const char *type, const char *in_path, const char *w_path, const char *out_path) {
    const struct wentry *e = NULL;
    for (size_t i = 0; i < NW; i++)
        if (!strcmp(wtable[i].name, type)) e = &wtable[i];
    if (!e) { fprintf(stderr, "no weighted quantizer for %s\n", type); return 2; }
    size_t n, nw;
    float *x = slurp(in_path, &n);
    float *w = NULL;
    int64_t n_per_row = (int64_t)(n / 4);
    if (strcmp(w_path, "-")) { w = slurp(w_path, &nw); n_per_row = (int64_t)(nw / 4); }
    if (n_per_row == 0 || n_per_row % e->bs || (int64_t)(n / 4) % n_per_row) {
        fprintf(stderr, "bad row length\n"); return 2;
    }
    int64_t nrow = (int64_t)(n / 4) / n_per_row;
    size_t nout = (size_t)(nrow * n_per_row / e->bs) * e->ts;
    void *out = calloc(1, nout);
    if (e->q(x, out, nrow, n_per_row, w) != nout) { fprintf(stderr, "size?\n"); return 2; }
    FILE *f = fopen(out_path, "wb");
    if (!f || fwrite(out, 1, nout, f) != nout) { perror(out_path); return 2; }
    fclose(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 6 && !strcmp(argv[1], "qw")) return weighted(argv[2], argv[3], argv[4], argv[5]);
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
- `inputs_w/<case>.f32` + `weights/<case>.f32`: rows (3 or 4 per case) and per-column
  importance weights (n_per_row = the weights' length, 512 or 768) for the importance-matrix
  quantizers: imatrix (imatrix-like weights over four orders of magnitude, rows of different
  scales), imatrix768 (n_per_row 768, log-normal weights), equal (all weights 1), zero_w (a
  quarter of the weights, a 32-block and half a super-block of them zero), zero_rows (an
  all-zero row, zero blocks, a zero super-block, sparse values), extremes (f32 denormals,
  f16-underflowing scales, large outliers, tiny blocks next to large ones), ties_w (integer
  grids whose fits are exact, with zero-importance columns at k + 0.5: rounding ties in the
  Q4_0/Q5_0 fits and in the Q3_K/Q6_K re-quantization), nonfinite_w (NaN, ±inf, values
  whose squares overflow f32).
- `quant_w/<case>.<TYPE>.bin`: the bytes ggml's `quantize_<type>(rows, nrow, n_per_row,
  weights)` writes with non-NULL weights (the llama-quantize `--imatrix` path) for Q4_0, Q4_1,
  Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; read by `quant/tests/bit_exact_weighted.rs`.
- `MANIFEST.txt`: every expected file with its source: `gguf-py` (the gguf PyPI package's
  numpy ports), `ggml-c` (ggml's C `quantize_row_*_ref` / `dequantize_row_*` compiled into a
  small harness outside this repository), `numpy`; `a+b` means both produced identical output.
  The committed files come from ggml-org/ggml commit d99724f2b141 (2026-08-21) built for x86-64
  with gcc (-O2, no FMA contraction), gguf 0.19.0 and numpy 2.4; the `quant_w` files (and
  their inputs and weights) from the ggml of ggml-org/llama.cpp commit 0c1e570 (2026-10-01,
  vendored in llama-cpp-python 0.3.36; gcc 12.2), which reproduces all earlier files byte for
  byte.

The Rust tests (`quant/tests/bit_exact.rs`, `quant/tests/bit_exact_weighted.rs`) read these
files; no Python is needed to run them.
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

    def quantize_weighted(self, ty: str, x: np.ndarray, weights: np.ndarray | None) -> bytes:
        """ggml's quantize_<type>(x, nrow, n_per_row = len(weights), weights); None = NULL."""
        inp, wts, out = self.dir / "in.bin", self.dir / "w.bin", self.dir / "out.bin"
        inp.write_bytes(x.astype(np.float32).tobytes())
        warg = "-"
        if weights is not None:
            wts.write_bytes(weights.astype(np.float32).tobytes())
            warg = str(wts)
        subprocess.run([str(self.exe), "qw", ty, str(inp), warg, str(out)], check=True)
        return out.read_bytes()


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


def make_weighted_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Seeded inputs for the importance-matrix quantizers: (rows flattened, weights), where
    the weights are one importance per column and n_per_row = len(weights). Its own seed, so
    the cases of make_cases() do not move."""
    rng = np.random.default_rng(20261202)
    f32 = np.float32
    cases: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def imatrix(n: int) -> np.ndarray:
        # imatrix entries are mean squared activations: positive, spread over orders of
        # magnitude, with a few "outlier channels" far above the rest.
        w = 10.0 ** rng.uniform(-3.0, 1.0, n)
        w[rng.integers(0, n, max(2, n // 128))] *= 100.0
        return w.astype(f32)

    # Four rows of different scales (weights-like, with a few outliers), n_per_row 512.
    rows = []
    for s in (1.0, 0.02, 3.0, 0.5):
        r = rng.normal(0.0, s, 512)
        r[rng.integers(0, 512, 4)] *= 12.0
        rows.append(r)
    cases["imatrix"] = (np.concatenate(rows).astype(f32), imatrix(512))

    # n_per_row 768 (three super-blocks; the legacy types' sigma2 spans the whole row),
    # log-normal importances.
    x = rng.laplace(0.0, 0.05, 3 * 768)
    cases["imatrix768"] = (x.astype(f32), np.exp(rng.normal(-2.0, 2.0, 768)).astype(f32))

    # All-equal weights, on a normal, a uniform, an all-positive and an all-negative row.
    x = np.concatenate([rng.standard_normal(512), rng.uniform(-1, 1, 512),
                        rng.uniform(0.5, 2.0, 512), rng.uniform(-3.0, -0.1, 512)])
    cases["equal"] = (x.astype(f32), np.ones(512, f32))

    # Zero weights: a quarter of the columns at random, a whole 32-block (64..96) and half a
    # super-block (384..512), where every fit has zero total weight.
    w = imatrix(512)
    w[rng.random(512) < 0.25] = 0.0
    w[64:96] = 0.0
    w[384:512] = 0.0
    cases["zero_w"] = (rng.standard_normal(3 * 512).astype(f32), w)

    # Zeros: an all-zero row, zero 32-blocks between normal ones, a zero super-block, and a
    # row with one non-zero value per 16.
    x = np.zeros((4, 512))
    r = rng.standard_normal(512)
    for b in range(0, 16, 2):
        r[32 * b: 32 * b + 32] = 0.0
    x[1] = r
    x[2, 256:] = rng.standard_normal(256)
    for g in range(32):
        x[3, 16 * g + (5 * g) % 16] = (-1.0) ** g * 10.0 ** ((g % 5) - 2)
    cases["zero_rows"] = (x.reshape(-1).astype(f32), imatrix(512))

    # Extremes: tiny values (f32 denormals, scales that underflow f16), large outliers, and
    # a row mixing a tiny block with large ones (sigma2 dwarfs the tiny block's values).
    x = np.zeros((4, 512))
    x[0, 0:32] = rng.uniform(-1, 1, 32) * 1e-40
    x[0, 32:64] = rng.uniform(-1, 1, 32) * 1e-38
    x[0, 64:96] = rng.uniform(-1, 1, 32) * 1e-8
    x[0, 96:128] = rng.uniform(-1, 1, 32) * 3e-5
    x[0, 128:256] = rng.uniform(-1, 1, 128) * 1e-20
    x[0, 256:512] = rng.uniform(-1, 1, 256) * 1e-12
    x[1] = rng.standard_normal(512)
    x[1, rng.integers(0, 512, 5)] = [1e4, -2e4, 5e3, -7e3, 3e4]
    x[1, 96:128] = rng.uniform(-1, 1, 32) * 6.0e4
    x[2] = rng.standard_normal(512) * 1e3
    x[2, 300] = 3e5
    x[3] = rng.standard_normal(512) * 1e3
    x[3, 32:64] = rng.uniform(-1, 1, 32) * 1e-10
    x[3, 256:272] = rng.uniform(-1, 1, 16) * 1e-3
    cases["extremes"] = (x.reshape(-1).astype(f32), imatrix(512))

    # Exact rounding ties (nearest_int rounds half to even). Each row is on an integer grid
    # whose group max-abs is negative and sets the scale to exactly 1: -4 per 16 (Q3_K),
    # -8 per 32 (Q4_0), -32 per 16 (Q6_K), -16 per 32 (Q5_0). Three columns per 16 hold
    # k + 0.5 instead and have zero importance, so the weighted fits stay exact (scale 1,
    # and for Q3_K/Q6_K a stored sub-scale of exactly 1) and those values land on ties, in
    # the fit (Q4_0/Q5_0) or in the re-quantization with the stored scales (Q3_K/Q6_K).
    w = imatrix(512)
    tie_cols = np.array([16 * g + (5 * g + 3 + 4 * t) % 16 for g in range(32) for t in range(3)])
    w[tie_cols] = 0.0
    x = np.zeros((4, 512))
    for row, (lo, group) in enumerate([(-4, 16), (-8, 32), (-32, 16), (-16, 32)]):
        r = rng.integers(lo + 1, -lo, 512).astype(float)
        r[tie_cols] = rng.integers(lo, -lo - 1, len(tie_cols)) + 0.5
        for b in range(512 // group):
            g = group * b // 16  # the max-abs goes 2 after the group's first tie column
            r[16 * g + (5 * g + 5) % 16] = lo
        x[row] = r
    cases["ties_w"] = (x.reshape(-1).astype(f32), w)

    # Degenerate inputs: NaN and ±inf in some blocks, and values whose squares overflow f32
    # (sigma2 and the fit weights become inf, the fits' sums inf or NaN). ggml does not
    # guard against these; the bytes are whatever its arithmetic gives.
    x = rng.standard_normal((3, 512))
    x[0, 3] = np.inf
    x[0, 40] = -np.inf
    x[0, 70] = np.nan
    x[0, 300] = np.nan
    x[1, 0:32] *= 1e20
    x[1, 256:272] *= 3e38 / 4
    x[2, 100] = 3.0e38
    x[2, 400:416] = -3.4028235e38
    cases["nonfinite_w"] = (x.reshape(-1).astype(f32), imatrix(512))
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
    for sub in ("inputs", "quant", "dequant", "blocks", "inputs_w", "weights", "quant_w"):
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

        for case, (x, w) in make_weighted_cases().items():
            (out / "inputs_w" / f"{case}.f32").write_bytes(x.tobytes())
            (out / "weights" / f"{case}.f32").write_bytes(w.tobytes())
            for ty in WEIGHTED_TYPES:
                # Without weights ggml falls back to the reference quantizer (what rgemma's
                # quantize_row matches); check that this still holds, then write the
                # weighted bytes.
                if ggml.quantize_weighted(ty, x, None) != ggml.quantize(ty, x):
                    sys.exit(f"quantize_{ty} without weights is not the _ref quantizer")
                c_bytes = ggml.quantize_weighted(ty, x, w)
                (out / "quant_w" / f"{case}.{ty}.bin").write_bytes(c_bytes)
                manifest.append(f"quant_w {case} {ty} {len(x)} ggml-c")

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
