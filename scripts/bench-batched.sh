#!/usr/bin/env bash
# The model card's throughput experiment on CPU, in one run: aggregate decode throughput
# (S_TG) after a 2048-token prompt at a growing number of sequences, for the 2B-geometry
# Q4_0 and Q4_K_M files, each next to
#  - its pp512 (rg-bench, same run: the matrix kernels' rate, the ceiling of batched decode),
#  - single-sequence tg with read-bandwidth probes (rg-bench --membw),
#  - llama.cpp's llama-batched-bench on a same-size random transformer of the same type, when
#    LLAMA_BATCHED_BENCH points at it (built outside the repository) and LLAMA_MODELS names
#    its two files ("Q4_0-file Q4_K_M-file").
# Runs alternate rgemma / llama.cpp per file. Then plots S_TG against the number of
# sequences (scripts/plot-batched-bench.py).
#
# Usage: scripts/bench-batched.sh [DIR_WITH_rg2b-*.gguf] [OUT_DIR]
#   NPL=1,2,4,8,16,32 NPP=2048 NTG=128 THREADS=2 (environment, optional)
# Make the rgemma files with scripts/make_2b_checkpoint.py + rg-quantize (scripts/bench_convert.sh).
set -euo pipefail
dir=${1:-target/rg2b}
out=${2:-target/bench-batched}
npl=${NPL:-1,2,4,8,16,32}
npp=${NPP:-2048}
ntg=${NTG:-128}
threads=${THREADS:-2}
mkdir -p "$out"
cargo build --release --bin rg-bench --bin rg-batched-bench >/dev/null
bin=target/release
read -r -a llama_models <<<"${LLAMA_MODELS:-}"
report="$out/report.md"
{
  echo "# Batched decoding, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $threads threads"
  echo "rgemma $(git describe --always --dirty 2>/dev/null || echo '?')"
} >"$report"
i=0
for ty in q4_0 q4_k_m; do
  model="$dir/rg2b-$ty.gguf"
  echo "== $ty: pp512 and tg32 with bandwidth probes (rg-bench)" | tee -a "$report"
  "$bin/rg-bench" -m "$model" -p 512 -n 0 -t "$threads" -r 2 | tee -a "$report"
  "$bin/rg-bench" -m "$model" -p 0 -n 32 -t "$threads" -r 2 --membw 2>/dev/null | tee -a "$report"
  echo "== $ty: rg-batched-bench -pps -npp $npp -ntg $ntg -npl $npl" | tee -a "$report"
  "$bin/rg-batched-bench" -m "$model" -pps -npp "$npp" -ntg "$ntg" -npl "$npl" -t "$threads" \
    --jsonl-out "$out/rgemma-$ty.jsonl" | tee -a "$report"
  if [ -n "${LLAMA_BATCHED_BENCH:-}" ] && [ -n "${llama_models[$i]:-}" ]; then
    echo "== $ty: llama-batched-bench on ${llama_models[$i]}" | tee -a "$report"
    ctx=$(( npp + ntg * ${npl##*,} + 256 ))
    "$LLAMA_BATCHED_BENCH" -m "${llama_models[$i]}" -c "$ctx" -kvu -b 2048 -ub 512 -pps \
      -npp "$npp" -ntg "$ntg" -npl "$npl" -t "$threads" --output-format jsonl \
      2>"$out/llama-$ty.log" | tee "$out/llama-$ty.jsonl" | tee -a "$report"
    grep -E '^\|' "$out/llama-$ty.log" | tee -a "$report" || true
  fi
  i=$((i + 1))
done
plots=()
for f in "$out"/rgemma-*.jsonl "$out"/llama-*.jsonl; do
  [ -s "$f" ] && plots+=("$(basename "$f" .jsonl)=$f")
done
python3 scripts/plot-batched-bench.py "${plots[@]}" --pp "$npp" --tg "$ntg" -o "$out/s_tg.svg" \
  --title "Aggregate decode throughput after a $npp-token prompt ($threads threads)"
echo "report: $report, plot: $out/s_tg.svg"
