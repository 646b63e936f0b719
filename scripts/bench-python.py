#!/usr/bin/env python3
"""The cost of the Python layer: tokens/s of `rgemma.Model.generate` against `rg-run` on the
same file, same prompt, same thread count, greedy, exactly N tokens (no stop token), rounds
alternating between the two sides in one run.

    scripts/bench-python.py MODEL.gguf [-n 128] [-t 2] [--rounds 3] [--prompt-ids 2,100,...]

Needs the rgemma wheel installed in the running Python and target/release/rg-run. Each side
is timed from the prompt to the last token (model loading excluded on both): rg-run's own
prompt-eval + generation lines, and the wall time of one `generate` call in this process
(which includes taking a fresh sequence and the tokenization of nothing: ids are given).
"""

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import rgemma

ROOT = Path(__file__).resolve().parents[1]


def rg_run_seconds(args, prompt_ids):
    cmd = [str(ROOT / "target" / "release" / "rg-run"), "-m", args.model,
           "--prompt-ids", ",".join(map(str, prompt_ids)), "-n", str(args.n),
           "--temp", "0", "-t", str(args.threads), "--ignore-eos"]
    err = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    ms = [float(m) for m in re.findall(r"(?:prompt eval|generation)\s*=\s*([\d.]+) ms", err)]
    if len(ms) != 2:
        sys.exit(f"cannot read rg-run's timings from:\n{err}")
    return sum(ms) / 1e3


def python_seconds(model, args, prompt_ids):
    sampler = rgemma.Sampler(temperature=0)
    t0 = time.perf_counter()
    _, ids, _, _ = model._complete(prompt_ids, sampler, args.n, [], [])
    elapsed = time.perf_counter() - t0
    assert len(ids) == args.n
    return elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("-n", type=int, default=128)
    p.add_argument("-t", "--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompt-ids", default=None, help="comma-separated ids (default: BOS + 15 ids)")
    args = p.parse_args()

    model = rgemma.Model(args.model, n_threads=args.threads)
    if args.prompt_ids:
        prompt = [int(x) for x in args.prompt_ids.split(",")]
    else:
        prompt = [2] + [100 + 37 * i % (model.n_vocab - 100) for i in range(15)]
    python_seconds(model, args, prompt)  # warm-up: first context, page cache
    rates = {"rg-run": [], "python": []}
    for r in range(args.rounds):
        sides = ["rg-run", "python"] if r % 2 == 0 else ["python", "rg-run"]
        for side in sides:
            s = rg_run_seconds(args, prompt) if side == "rg-run" else python_seconds(model, args, prompt)
            rates[side].append(args.n / s)
            print(f"round {r + 1} {side:7} {args.n / s:10.2f} t/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"median: rg-run {med['rg-run']:.2f} t/s, python {med['python']:.2f} t/s, "
          f"python/rg-run {med['python'] / med['rg-run']:.3f} "
          f"({args.model}, {len(prompt)} prompt tokens, {args.n} generated, {args.threads} threads)")


if __name__ == "__main__":
    main()
