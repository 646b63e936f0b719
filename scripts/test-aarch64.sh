#!/usr/bin/env bash
# The kernel tests (rgemma-quant) and the engine's in-process fixture tests, cross-compiled
# for aarch64 and run under qemu-user twice: `-cpu max` (NEON with the dot product and i8mm:
# the packed `sdot` and `usmmla` kernels) and `-cpu cortex-a72` (plain NEON: the fallback). Tests that
# start the CLI programs are left out: qemu-user does not follow exec.
#
# Needs the Rust target's standard library (`rustup target add aarch64-unknown-linux-gnu`)
# and Debian's gcc-aarch64-linux-gnu (the linker) and qemu-user; .ci/run installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
engine=(-p rgemma --no-default-features --lib
  --test engine_reference --test engine_quant --test engine_batch --test engine_state
  --test real_model)
skip=(--skip rg_run_ --skip rg_perplexity_ --skip kl_divergence_)

t0=$(date +%s)
cargo test --release --target "$target" -p rgemma-quant --no-run
cargo test --release --target "$target" "${engine[@]}" --no-run
echo "aarch64: build $(( $(date +%s) - t0 )) s"

for cpu in max cortex-a72; do
  t1=$(date +%s)
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu"
  # Which kernels ran: the packed tests print the backends they compare with the scalar one.
  backends=$(cargo test --release --target "$target" -p rgemma-quant --test packed_legacy \
    gemm_matches_the_unpacked_kernels -- --nocapture 2>&1 | grep "backends under test")
  echo "aarch64 -cpu $cpu: $backends"
  case "$cpu:$backends" in
    max:*NeonDot*NeonI8mm*) ;;
    cortex-a72:*NeonI8mm*) echo "error: NeonI8mm selected on a core without i8mm" >&2; exit 1 ;;
    cortex-a72:*NeonDot*) echo "error: NeonDot selected on a core without the dot product" >&2; exit 1 ;;
    cortex-a72:*Neon*) ;;
    *) echo "error: unexpected backends for -cpu $cpu" >&2; exit 1 ;;
  esac
  cargo test --release --target "$target" -p rgemma-quant
  cargo test --release --target "$target" "${engine[@]}" -- "${skip[@]}"
  echo "aarch64 -cpu $cpu: tests $(( $(date +%s) - t1 )) s"
done
