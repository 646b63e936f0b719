#!/usr/bin/env bash
# CPU speed report for issue-style figures, in one run on a quiet machine:
#  1. tg128 and pp512 of the 2B-geometry Q4_0 / Q8_0 / Q4_K_M files, 2 threads, with read
#     bandwidth probes bracketing every tg repetition (`rg-bench --membw`);
#  2. pp512 on 1 thread (per-core prompt speed);
#  3. the packed kernels at llama.cpp's `test-backend-ops perf -o MUL_MAT` shape, 1 thread
#     (and llama.cpp's own figure when LLAMA_TEST_BACKEND_OPS points at that binary);
#  4. tg128 at depth 128, 4096 and 16384 (flat time, flat RSS).
# Make the files first: scripts/make_2b_checkpoint.py + rg-quantize (see scripts/bench_convert.sh).
# Usage: scripts/bench-cpu.sh [DIR_WITH_rg2b-*.gguf] [OUT_DIR]
set -euo pipefail
dir=${1:-target/rg2b}
out=${2:-target/bench}
mkdir -p "$out"
cargo build --release --bin rg-bench >/dev/null
bench=target/release/rg-bench
models=(-m "$dir/rg2b-q4_0.gguf" -m "$dir/rg2b-q8_0.gguf" -m "$dir/rg2b-q4_k_m.gguf")
# The machine, with the figures: CPU model and SIMD flags (Linux: /proc/cpuinfo; macOS: sysctl).
if [ -r /proc/cpuinfo ]; then
  cpu=$(grep -m1 -E "^(model name|Model)" /proc/cpuinfo | cut -d: -f2- | sed 's/^ //' || true)
  flags=$(grep -m1 -E "^(flags|Features)" /proc/cpuinfo | cut -d: -f2- |
    tr ' ' '\n' | grep -E "^(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|asimddp|i8mm|asimdhp)$" | tr '\n' ' ' || true)
else
  cpu=$(sysctl -n machdep.cpu.brand_string 2>/dev/null || uname -m)
  flags=$(sysctl -a 2>/dev/null | grep -E "hw.optional.arm.FEAT_(DotProd|I8MM|FP16): 1" | cut -d: -f1 | tr '\n' ' ' || true)
fi
echo "machine: ${cpu:-unknown} ($(uname -sm)); flags: ${flags:-n/a}" | tee "$out/report.md"
echo "== 1. tg128 / pp512, 2 threads, bandwidth probes" | tee -a "$out/report.md"
$bench "${models[@]}" -p 512 -n 128 -t 2 -r 3 --membw 2>"$out/tg.log" | tee -a "$out/report.md"
grep "rep " "$out/tg.log" | tee -a "$out/report.md"
echo "== 2. pp512, 1 thread" | tee -a "$out/report.md"
$bench "${models[@]}" -p 512 -n 0 -t 1 -r 2 2>"$out/pp1.log" | tee -a "$out/report.md"
echo "== 3. kernels at m=4096 k=14336 n=512, 1 thread" | tee -a "$out/report.md"
$bench --kernels -t 1 -r 3 2>&1 | grep "packed.*512 tokens" | tee -a "$out/report.md"
if [ -n "${LLAMA_TEST_BACKEND_OPS:-}" ]; then
    "$LLAMA_TEST_BACKEND_OPS" perf -b CPU -o MUL_MAT \
        -p 'type_a=(q4_0|q8_0|q4_K|q6_K),type_b=f32,m=4096,n=512,k=14336,' 2>&1 |
        grep "MUL_MAT(" | sed 's/,bs=.*pad=0)//' | tee -a "$out/report.md"
fi
echo "== 4. tg128 at depth, Q4_0, 2 threads" | tee -a "$out/report.md"
$bench -m "$dir/rg2b-q4_0.gguf" -p 0 -n 128 -t 2 -r 2 -d 128,4096,16384 --membw \
    2>"$out/depth.log" | tee -a "$out/report.md"
