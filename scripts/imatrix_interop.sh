#!/usr/bin/env bash
# Interoperability of importance-matrix files with llama.cpp (a developer check; llama.cpp is
# not part of CI). Needs a llama.cpp build (LLAMA_BIN: llama-imatrix, llama-quantize) and a
# GGUF that llama.cpp runs (GGUF, e.g. the Gemma 3 270M file scripts/setup-dev.sh fetches).
#
#   LLAMA_BIN=/path/to/llama.cpp/build/bin scripts/imatrix_interop.sh
#
# 1. llama-imatrix writes the same calibration run as GGUF and as legacy .dat;
# 2. tests/imatrix.rs (llama_cpp_imatrix_files_read_alike) reads both with rgemma and checks
#    that they hold the same entries and mean squares, and rewrites the GGUF with rgemma's writer;
# 3. llama-quantize --imatrix reads rgemma's rewrites, GGUF and .dat (it prints how many
#    entries it loaded).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_BIN=${LLAMA_BIN:?set LLAMA_BIN to llama.cpp build/bin}
GGUF=${GGUF:-target/gemma3/gemma-3-270m-q4_k_m.gguf}
OUT=${OUT:-target/imatrix-interop}
mkdir -p "$OUT"
head -c 20000 models/tiny-fortunes/heldout.txt > "$OUT/calib.txt"
for fmt in gguf dat; do
  "$LLAMA_BIN/llama-imatrix" -m "$GGUF" -f "$OUT/calib.txt" -c 64 --chunks 2 -t 2 \
    -o "$OUT/llama.$fmt" --output-format "$fmt" > "$OUT/llama-imatrix-$fmt.log" 2>&1
done
RG_LLAMA_IMATRIX_GGUF="$OUT/llama.gguf" RG_LLAMA_IMATRIX_DAT="$OUT/llama.dat" \
  RG_IMATRIX_REWRITE="$OUT/rgemma" \
  cargo test --release --test imatrix llama_cpp_imatrix_files_read_alike -- --nocapture 2>&1 |
  grep -E "read alike|test result"
for fmt in gguf dat; do
  "$LLAMA_BIN/llama-quantize" --allow-requantize --imatrix "$OUT/rgemma.$fmt" "$GGUF" \
    "$OUT/requantized.gguf" Q4_K_M 2 > "$OUT/llama-quantize-$fmt.log" 2>&1
  grep -E "loaded [0-9]+ importance matrix entries" "$OUT/llama-quantize-$fmt.log"
done
