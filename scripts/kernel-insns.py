#!/usr/bin/env python3
"""Instructions per 32 weights in the hot loop of the packed Q4_0 / Q8_0 kernels, read off
the compiled code (objdump), for comparing the aarch64 and x86 paths (and, on aarch64, the
`sdot` kernels with the i8mm `usmmla` ones).

    scripts/kernel-insns.py BINARY [--objdump OBJDUMP]

BINARY is any test binary that links rgemma-quant (e.g. target/release/deps/packed_legacy-*
or target/aarch64-unknown-linux-gnu/release/deps/packed_legacy-*). For every instance of a
packed kernel (`packed::{q4_0,q8_0}::{arm,x86}::k_*`, one per column count) the hot loop is
the innermost backward branch that contains the kernel's dot instruction (`sdot`,
`vpdpbusd`, `vpmaddubsw`); one pass of it handles one block: 8 rows x 32 values for each
column. The column count is the dot instructions per pass divided by those one column
needs. For aarch64, `scripts/kernel-insns-qemu.py` counts what the kernels execute instead
(every type, everything outside the hot loop included).
"""
import argparse
import re
import subprocess
from collections import defaultdict

# (kernel path, dot mnemonic) -> dot instructions per block and column.
PER_COLUMN = {
    ("q4_0::arm", "sdot"): 16, ("q8_0::arm", "sdot"): 16,
    ("q4_0::x86::k_vnni", "vpdpbusd"): 8, ("q8_0::x86::k_vnni", "vpdpbusd"): 8,
    ("q4_0::x86::k_avxvnni", "vpdpbusd"): 8, ("q8_0::x86::k_avxvnni", "vpdpbusd"): 8,
    ("q4_0::x86::k_avx2", "vpmaddubsw"): 8, ("q8_0::x86::k_avx2", "vpmaddubsw"): 8,
}


def functions(binary, objdump):
    out = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", binary],
                         check=True, capture_output=True, text=True).stdout
    name, body = None, []
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m:
            if name:
                yield name, body
            name, body = m.group(2), []
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)
        if m and name:
            body.append((int(m.group(1), 16), m.group(2), m.group(3)))
    if name:
        yield name, body


def loop_body(body, dot):
    """The instructions of the smallest backward-branch loop containing a `dot`, or None."""
    best = None
    for addr, mnem, ops in body:
        if not (mnem.startswith("b") or mnem.startswith("j")):
            continue
        m = re.search(r"\b([0-9a-f]{4,})\b", ops)
        if not m or int(m.group(1), 16) >= addr:
            continue
        loop = [b for b in body if int(m.group(1), 16) <= b[0] <= addr]
        if any(b[1] == dot for b in loop) and (best is None or len(loop) < len(best)):
            best = loop
    return best


def hot_loop(body, dot):
    """Instructions and dot count of `loop_body`'s loop, or None."""
    loop = loop_body(body, dot)
    return loop and (len(loop), sum(1 for b in loop if b[1] == dot))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--objdump", default="objdump")
    args = p.parse_args()
    rows = defaultdict(list)
    for name, body in functions(args.binary, args.objdump):
        for (path, dot), per_col in PER_COLUMN.items():
            if f"packed::{path}" in name and re.search(r"::k_\w+$", name.split("<")[0].strip()):
                loop = hot_loop(body, dot)
                if loop:
                    n, dots = loop
                    cols = max(1, dots // per_col)
                    rows[path].append((cols, n))
        # The i8mm kernel (`packed::mmla::kernel`, generic over the type, so the symbol does
        # not name it): one pass handles half a block (4 rows x 32 values) for each column
        # pair with 8 `usmmla`; the Q4_0 instance splits nibbles (`ushr`), the Q8_0 one not.
        if re.search(r"packed::mmla::kernel$", name.split("<")[0].strip()) or name.endswith("mmla::kernel"):
            lines = loop_body(body, "usmmla")
            if lines:
                n, dots = hot_loop(body, "usmmla")
                ty = "q4_0" if any(b[1] == "ushr" for b in lines) else "q8_0"
                # Per block of 8 rows: two passes of half a block.
                rows[f"{ty}::mmla"].append((dots // 4, 2 * n))
    print("| kernel | columns | hot-loop instructions per block (8 rows x 32) | per 32 weights and column |")
    print("| --- | ---: | ---: | ---: |")
    for path in sorted(rows):
        for cols, n in sorted(set(rows[path])):
            print(f"| {path} | {cols} | {n} | {n / 8 / cols:.2f} |")


if __name__ == "__main__":
    main()
