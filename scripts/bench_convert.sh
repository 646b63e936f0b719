#!/usr/bin/env bash
# Conversion benchmark (not a test): the random-weight 2B-geometry checkpoint -> Q4_0 and
# Q4_K_M, timed with /usr/bin/time -v (wall time, peak RSS). Writes target/rg2b/*.gguf,
# which the speed work reuses; the checkpoint comes from scripts/make_2b_checkpoint.py.
#
#   scripts/bench_convert.sh [THREADS]      # default: all cores
set -euo pipefail
cd "$(dirname "$0")/.."
HF=target/rg2b/hf
if [ ! -f "$HF/model.safetensors.index.json" ]; then
    nice -n 19 .venv/bin/python scripts/make_2b_checkpoint.py "$HF"
fi
cargo build --release --bin rg-quantize
THREADS=${1:-$(nproc)}
for TYPE in Q4_0 Q4_K_M; do
    OUT=target/rg2b/rg2b-$(echo "$TYPE" | tr 'A-Z' 'a-z').gguf
    LOG=target/rg2b/bench-$TYPE.log
    nice -n 19 /usr/bin/time -v target/release/rg-quantize "$HF" "$OUT" "$TYPE" \
        --force --threads "$THREADS" --name rg2b-random >"$LOG" 2>&1
    echo "== $TYPE -> $OUT"
    tail -n 30 "$LOG" | grep -E "rg-quantize:|Elapsed \(wall|Maximum resident|User time|System time"
done
