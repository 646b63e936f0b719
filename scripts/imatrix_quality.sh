#!/usr/bin/env bash
# What an importance matrix buys on the bundled trained model: calibrate on the training split
# (never seen by the evaluation), then held-out KL divergence and same-top-token rate of each
# preset with and without it (scripts/quant_quality.sh with IMATRIX set).
#
#   scripts/imatrix_quality.sh          # needs Debian's fortunes package for the training split
#   CALIB_CHUNKS=1000 scripts/imatrix_quality.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-target/tiny-fortunes-data}
CALIB_CHUNKS=${CALIB_CHUNKS:-100}
OUT=${OUT:-target/tiny-fortunes-imatrix}
mkdir -p "$OUT"
if [ ! -f "$DATA/train.txt" ]; then
  # The training split, exactly as the model was trained on (apt-get install -y fortunes).
  python3 scripts/prepare_corpus.py --split-only --out "$DATA" >&2
  cmp "$DATA/heldout.txt" models/tiny-fortunes/heldout.txt  # the split reproduces
fi
cargo build --release --quiet --bin rg-imatrix
target/release/rg-imatrix -m models/tiny-fortunes-f32.gguf -f "$DATA/train.txt" -c 256 \
  --chunks "$CALIB_CHUNKS" -o "$OUT/train.imatrix.gguf" > "$OUT/rg-imatrix.txt"
IMATRIX="$OUT/train.imatrix.gguf" OUT="$OUT" TYPES=${TYPES:-"F32 Q2_K Q3_K_M Q4_0 Q4_K_M Q5_K_M"} \
  scripts/quant_quality.sh
