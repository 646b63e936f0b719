#!/usr/bin/env bash
# Held-out perplexity and KL divergence of tiny-fortunes at each quantization preset, against F32.
# Prints the markdown table of models/README.md (also written to $OUT/table.md).
#
#   scripts/quant_quality.sh                # all of models/tiny-fortunes/heldout.txt, 256-token chunks
#   CHUNKS=48 scripts/quant_quality.sh      # the first 48 chunks only (what models/README.md used)
#   IMATRIX=imatrix.gguf scripts/quant_quality.sh   # also each quantized type with the imatrix
#                                                   # (rows "TYPE + imatrix"; scripts/imatrix_quality.sh)
#
# Source of the weights: the HF checkpoint target/tiny-fortunes-hf (written by scripts/train_tiny.py)
# when it exists, converted with rg-quantize to every preset; otherwise the shipped
# models/tiny-fortunes-f32.gguf, requantized with rg-quantize --allow-requantize (identical weights:
# the F32 GGUF holds the checkpoint's f32 values, so both routes give the same files).
set -euo pipefail
cd "$(dirname "$0")/.."

HF=${HF:-target/tiny-fortunes-hf}
SHIPPED=models/tiny-fortunes-f32.gguf
TEXT=${TEXT:-models/tiny-fortunes/heldout.txt}
CTX=${CTX:-256}
CHUNKS=${CHUNKS:-}
IMATRIX=${IMATRIX:-}
OUT=${OUT:-target/tiny-fortunes-quant}
TYPES=${TYPES:-"F32 F16 Q8_0 Q6_K Q5_K_M Q4_K_M Q4_0"}

cargo build --release --quiet --bin rg-quantize --bin rg-perplexity
BIN=target/release
mkdir -p "$OUT"

if [ -f "$HF/model.safetensors" ]; then
  SRC=$HF
  FLAGS=()
  echo "source: HF checkpoint $HF" >&2
elif [ -f "$SHIPPED" ]; then
  SRC=$SHIPPED
  FLAGS=(--allow-requantize)
  echo "source: $SHIPPED (requantized; HF checkpoint $HF not found)" >&2
else
  echo "error: neither $HF/model.safetensors nor $SHIPPED exists" >&2
  exit 1
fi

chunk_args=(-c "$CTX")
[ -n "$CHUNKS" ] && chunk_args+=(--chunks "$CHUNKS")
base="$OUT/kld-base-f32-c$CTX.bin"

rows=()
# One row: quantize to type $1 (with the imatrix when $2 is set), score it against the base.
measure() {
  local t=$1 imx=$2 label=$1 lower gguf size log ppl ratio kld top
  lower=$(echo "$t" | tr 'A-Z' 'a-z')
  local qflags=("${FLAGS[@]}")
  if [ -n "$imx" ]; then
    label="$t + imatrix"
    lower="$lower-imatrix"
    qflags+=(--imatrix "$imx")
  fi
  gguf="$OUT/tiny-fortunes-$lower.gguf"
  "$BIN/rg-quantize" "$SRC" "$gguf" "$t" --force --quiet --name tiny-fortunes "${qflags[@]}" >&2
  size=$(stat -c %s "$gguf")
  if [ "$t" = F32 ]; then
    # The base: F32's log-probs. F32 is then also compared with itself below (KL 0, top-1 100 %).
    "$BIN/rg-perplexity" -m "$gguf" -f "$TEXT" "${chunk_args[@]}" --kl-divergence-base "$base" > "$OUT/ppl-$lower.txt"
  fi
  log="$OUT/kld-$lower.txt"
  "$BIN/rg-perplexity" -m "$gguf" --kl-divergence --kl-divergence-base "$base" ${CHUNKS:+--chunks "$CHUNKS"} > "$log"
  ppl=$(sed -n 's/^Mean PPL(Q) *: *\([0-9.]*\) ± *\([0-9.]*\)$/\1 ± \2/p' "$log")
  ratio=$(sed -n 's/^Mean PPL(Q)\/PPL(base) *: *\([0-9.]*\) ± *\([0-9.]*\)$/\1 ± \2/p' "$log")
  kld=$(sed -n 's/^Mean    KLD: *\([-0-9.e]*\) ± *\([0-9.e-]*\)$/\1 ± \2/p' "$log")
  top=$(sed -n 's/^Same top p: *\([0-9.]*\) ± *\([0-9.]*\) %$/\1 ± \2/p' "$log")
  rows+=("$(awk -v t="$label" -v s="$size" -v p="$ppl" -v r="$ratio" -v k="$kld" -v o="$top" 'BEGIN{
    split(p, P, " ± "); split(r, R, " ± "); split(k, K, " ± "); split(o, O, " ± ");
    printf "| %s | %.2f | %.3f ± %.3f | %.4f ± %.4f | %.3g ± %.2g | %.2f ± %.2f |",
      t, s/1048576, P[1], P[2], R[1], R[2], K[1], K[2], O[1], O[2] }')")
  echo "done $label" >&2
}
for t in $TYPES; do
  measure "$t" ""
  case "$t" in
    F32|F16|BF16|Q8_0) ;; # no weighted quantizer
    *) [ -n "$IMATRIX" ] && measure "$t" "$IMATRIX" ;;
  esac
done

ntok=$(sed -n 's/^Scored tokens: //p' "$OUT/kld-$(echo "${TYPES##* }" | tr 'A-Z' 'a-z').txt" 2>/dev/null || true)
{
  echo "| type | size (MiB) | held-out PPL | PPL(Q)/PPL(F32) | mean KL divergence vs F32 | same top-1 as F32 (%) |"
  echo "| --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "rg-perplexity -c $CTX${CHUNKS:+ --chunks $CHUNKS} on $TEXT (${ntok:-?} scored tokens), weights from $SRC${IMATRIX:+, imatrix $IMATRIX}."
} | tee "$OUT/table.md"
