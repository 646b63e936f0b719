#!/usr/bin/env bash
# GPU check of the CUDA backend, for a machine with an NVIDIA GPU (CI has none):
#   1. build with --features cuda (rg-run and the CUDA tests);
#   2. run the CUDA tests: every kernel against the CPU reference on random data, and the
#      tiny-rg fixture end to end (official f32 references within 1e-4, batched decoding,
#      Q8_0/Q4_0/Q4_K_M within the CPU engine's bounds);
#   3. rg-run -ngl 99 on the tiny model (the offload path of the CLI);
#   4. throughput on a random Q4_0 model with the 2B geometry (tests/cuda_bench.rs): pp512,
#      tg128 at batch 1, batched greedy decoding at 8/32/64 sequences.
# Prints a short table last; full logs go to $OUT (when set) or ./gpu-check-logs.
#
#   scripts/gpu-check.sh            # full 2B geometry (26 layers, vocab 256000)
#   scripts/gpu-check.sh --quick    # 2B width but 8 layers and vocab 32000 (faster to make)
#   RG_BENCH_MODEL=x.gguf scripts/gpu-check.sh   # bench an existing GGUF
#
# Kernels are compiled with NVRTC into $RGEMMA_CUDA_CACHE (default here: target/cuda-cache).
# A machine with the driver but no libnvrtc can use a cache filled elsewhere:
#   LD_LIBRARY_PATH=.venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib \
#   RG_CUDA_PRECOMPILE_DIR=$PWD/target/cuda-cache cargo test --release --features cuda --lib cuda::
# then bring target/cuda-cache along (it holds sm_80 and sm_90 CUBINs, under 1 MB).
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
logs="${OUT:-./gpu-check-logs}"
mkdir -p "$logs"
export CARGO_TERM_COLOR=never
summary=()
t_start=$(date +%s)

step() { # name, command...: runs with the log in $logs/<name>.log, records pass/fail
  local name=$1; shift
  local t0=$(date +%s)
  if "$@" >"$logs/$name.log" 2>&1; then
    summary+=("| $name | ok | $(( $(date +%s) - t0 )) s |")
    return 0
  else
    summary+=("| $name | FAILED (see $logs/$name.log) | $(( $(date +%s) - t0 )) s |")
    tail -20 "$logs/$name.log"
    return 1
  fi
}

# NVRTC: the toolkit's, else the pip wheel's (scripts/requirements-ci.txt) from .venv.
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
  for d in /usr/local/cuda/lib64 .venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$(cd "$d" && pwd):${LD_LIBRARY_PATH:-}"
  done
fi
export RGEMMA_CUDA_CACHE="${RGEMMA_CUDA_CACHE:-$PWD/target/cuda-cache}"
nvidia-smi >"$logs/nvidia-smi.txt" 2>&1 || echo "warning: nvidia-smi failed (see $logs/nvidia-smi.txt)"

step build cargo build --release --features cuda --bin rg-run --bin rg-quantize \
  --test cuda_kernels --test cuda_engine --test cuda_bench || { printf '%s\n' "${summary[@]}"; exit 1; }
ok=1
step cuda-tests cargo test --release --features cuda --test cuda_kernels --test cuda_engine \
  -- --nocapture --test-threads=1 || ok=0
if grep -q "skipped: no CUDA device" "$logs/cuda-tests.log"; then
  # On a GPU machine a skip means the backend could not start: that is a failure here.
  grep -h "skipped: no CUDA device" "$logs/cuda-tests.log" | head -1
  if nvidia-smi -L >/dev/null 2>&1; then
    summary+=("| cuda-tests | FAILED: tests skipped although nvidia-smi sees a GPU | |")
    ok=0
  fi
fi

# The CLI's offload path on the tiny fixture (F32): the GPU must be used, not the fallback.
tiny=target/gpu-check/tiny-f32.gguf
mkdir -p target/gpu-check
step rg-run bash -c "./target/release/rg-quantize -q --force tests/fixtures/tiny-rg $tiny F32 &&
  ./target/release/rg-run -m $tiny --prompt-ids 2,17,300 -n 8 --temp 0 -ngl 99 --verbose &&
  ./target/release/rg-run -m $tiny --prompt-ids 2,17,300 -n 8 --temp 0 -ngl 99 --verbose 2>&1 |
  grep -q 'running on CUDA'" || ok=0

# The benchmark model: random weights with the 2B geometry, quantized to Q4_0.
model="${RG_BENCH_MODEL:-}"
if [ -z "$model" ]; then
  py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python
  if [ $quick = 1 ]; then tag=rg2b-small; else tag=rg2b; fi
  model=target/gpu-check/$tag-q4_0.gguf
  if [ ! -f "$model" ]; then
    hf=target/gpu-check/$tag-hf
    step make-checkpoint "$py" -c "
import sys; sys.path.insert(0, 'tools')
import make_2b_checkpoint as m
if $quick: m.LAYERS, m.V = 8, 32000
sys.argv = ['make_2b_checkpoint.py', '$hf']
m.main()" &&
      step quantize ./target/release/rg-quantize -q --force "$hf" "$model" Q4_0 &&
      rm -rf "$hf" || model=""
  fi
fi
if [ -n "$model" ] && [ -f "$model" ]; then
  step bench env RG_BENCH_MODEL="$model" cargo test --release --features cuda --test cuda_bench \
    -- --ignored --nocapture || ok=0
fi

echo
echo "== gpu-check ($(( $(date +%s) - t_start )) s; logs in $logs)"
head -1 "$logs/nvidia-smi.txt" 2>/dev/null
grep -h "CUDA prefill\|CUDA decode\|CUDA Q\|^bench:" "$logs"/*.log 2>/dev/null
echo "| step | result | time |"
echo "| --- | --- | ---: |"
printf '%s\n' "${summary[@]}"
if [ -f "$logs/bench.log" ]; then
  echo
  echo "model: $model"
  grep '^|' "$logs/bench.log"
fi
[ $ok = 1 ]
