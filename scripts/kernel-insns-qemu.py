#!/usr/bin/env python3
"""Instructions the packed kernels execute, counted under qemu-user: a dynamic count of
what `scripts/kernel-insns.py` estimates from the disassembly (no loop-trip guessing, the
spills, prologues and tile dispatch included).

    scripts/kernel-insns-qemu.py [--cpu max] [--types q4_0,q8_0,q4_k,q6_k] [--cols 1,4,8]

Runs the `gemm_calls` example (build it first: `cargo build --release --target
aarch64-unknown-linux-gnu -p rgemma-quant --example gemm_calls`, or pass `--binary` and
`--qemu` for another target) once with one gemm call and once with three, under qemu's
one-instruction-per-block exec log; the difference over two calls is the instructions of
one call, printed per 32 weights and column. One call multiplies `--groups` groups of 8 rows
x 2560 values (16: the i8mm kernels' per-call interleaving of the activations is spread
over 16 groups, as in a matmul task of 128 rows).
`RGEMMA_SIMD` is passed through (`neondot` measures the sdot kernels on an i8mm CPU).
"""
import argparse
import os
import subprocess
import tempfile

N = 2560


def one_insn_flag(qemu):
    """qemu 8.1 renamed `-singlestep` (one guest instruction per translation block)."""
    help_text = subprocess.run([qemu, "--help"], capture_output=True, text=True).stdout
    return "-one-insn-per-tb" if "one-insn-per-tb" in help_text else "-singlestep"


def executed(args, cmd):
    """Instructions qemu executed running `cmd` (lines of its exec log)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "exec.log")
        qemu = [args.qemu, "-L", args.sysroot, "-cpu", args.cpu, args.one_insn_flag,
                "-d", "exec,nochain", "-D", log]
        subprocess.run(qemu + cmd, check=True, stdout=subprocess.DEVNULL)
        with open(log, "rb") as f:
            return sum(1 for line in f if line.startswith(b"Trace"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", default="max")
    p.add_argument("--types", default="q4_0,q8_0,q4_k,q6_k")
    p.add_argument("--cols", default="1,4,8")
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--binary", default="target/aarch64-unknown-linux-gnu/release/examples/gemm_calls")
    p.add_argument("--qemu", default="qemu-aarch64")
    p.add_argument("--sysroot", default="/usr/aarch64-linux-gnu")
    args = p.parse_args()
    args.one_insn_flag = one_insn_flag(args.qemu)
    simd = os.environ.get("RGEMMA_SIMD", "")
    print(f"qemu -cpu {args.cpu}" + (f", RGEMMA_SIMD={simd}" if simd else ""))
    print("| type | columns | instructions per call | per 32 weights and column |")
    print("| --- | ---: | ---: | ---: |")
    for ty in args.types.split(","):
        for cols in map(int, args.cols.split(",")):
            run = lambda calls: executed(args, [args.binary, ty, str(N), str(args.groups), str(cols), str(calls)])
            per_call = (run(3) - run(1)) / 2
            units = args.groups * 8 * N * cols / 32
            print(f"| {ty} | {cols} | {per_call:.0f} | {per_call / units:.2f} |")


if __name__ == "__main__":
    main()
