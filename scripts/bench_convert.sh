#!/usr/bin/env bash
# Conversion benchmark (not a test): a random-weight checkpoint with the real 2B (default) or
# 9B geometry -> GGUF files, timed with /usr/bin/time -v (wall time, CPU time, peak RSS).
# Writes target/rg2b/rg2b-*.gguf (or target/rg9b/rg9b-*.gguf), which the speed work reuses;
# the checkpoint comes from scripts/make_2b_checkpoint.py. Types in DISCARD are deleted once
# measured (the 9B BF16 and Q8_0 files need 17 and 9 GB of disk).
#
#   scripts/bench_convert.sh [--9b] [THREADS [TYPE...]]   # default: all cores, Q4_0 Q4_K_M
#   DISCARD="Q8_0 BF16" scripts/bench_convert.sh --9b 2 Q8_0 BF16 Q4_0 Q4_K_M
set -euo pipefail
cd "$(dirname "$0")/.."
GEOMETRY=2b
if [ "${1:-}" = --9b ]; then
    GEOMETRY=9b
    shift
fi
DIR=target/rg$GEOMETRY
HF=$DIR/hf
if [ ! -f "$HF/model.safetensors.index.json" ]; then
    flag=()
    [ "$GEOMETRY" = 9b ] && flag=(--9b)
    nice -n 19 .venv/bin/python scripts/make_2b_checkpoint.py "${flag[@]}" "$HF"
fi
cargo build --release --bin rg-quantize
THREADS=${1:-$(nproc)}
shift || true
TYPES=("$@")
[ ${#TYPES[@]} -gt 0 ] || TYPES=(Q4_0 Q4_K_M)
for TYPE in "${TYPES[@]}"; do
    OUT=$DIR/rg$GEOMETRY-$(echo "$TYPE" | tr 'A-Z' 'a-z').gguf
    LOG=$DIR/bench-$TYPE.log
    nice -n 19 /usr/bin/time -v target/release/rg-quantize "$HF" "$OUT" "$TYPE" \
        --force --threads "$THREADS" --name "rg$GEOMETRY-random" >"$LOG" 2>&1
    echo "== $TYPE -> $OUT ($(du -h "$OUT" | cut -f1))"
    tail -n 30 "$LOG" | grep -E "rg-quantize:|Elapsed \(wall|Maximum resident|User time|System time"
    if [[ " ${DISCARD:-} " == *" $TYPE "* ]]; then
        rm -f "$OUT"
        echo "   (deleted: DISCARD)"
    fi
done
