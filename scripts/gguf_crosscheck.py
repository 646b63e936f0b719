#!/usr/bin/env python3
"""Cross-checks `rg-gguf` against gguf-py (the reference GGUF reader and dequantizer).

For each file (the gguf-py fixture in tests/fixtures/gguf/ and, when present, the real Gemma 3
270M Q4_K_M GGUF named by $RG_GEMMA3_GGUF or target/gemma3/gemma-3-270m-q4_k_m.gguf):

1. `rg-gguf info --json` must list the same metadata keys, in the same order, with the same
   types and values as gguf-py's GGUFReader (floats compared bit for bit as float32/float64),
   and the same tensors (name, ggml type name, numpy shape, absolute data offset, byte size).
2. `rg-gguf dump` of tensors of every type present must equal `gguf.quants.dequantize`
   bit for bit (NaNs: both NaN). Types rgemma cannot compute (IQ*) must fail cleanly
   (exit status 1, one line on stderr).

    .venv/bin/python scripts/gguf_crosscheck.py [FILE.gguf ...]

The rg-gguf binary is $RG_GGUF_BIN, else target/release/rg-gguf after `cargo build --release
--bin rg-gguf`. $RG_CROSSCHECK_MAX_ELEMENTS (default 40M) caps the size of dumped tensors.
Exit status 0 when everything matches, 1 otherwise.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGUFValueType as V

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "gguf" / "gguf_py_small.gguf"
DEFAULT_GEMMA3 = ROOT / "target" / "gemma3" / "gemma-3-270m-q4_k_m.gguf"
# rg-gguf's type names for gguf-py's value types (MetaType::name).
TYPE_NAMES = {
    V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32",
    V.INT32: "i32", V.FLOAT32: "f32", V.BOOL: "bool", V.STRING: "string", V.UINT64: "u64",
    V.INT64: "i64", V.FLOAT64: "f64",
}
# ggml types rgemma_quant can dequantize (GgmlType::is_supported).
SUPPORTED = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
             "Q4_K", "Q5_K", "Q6_K", "Q8_K"}
# Per type, dump at most this many tensors (smallest first, plus the largest one under the cap).
DUMPS_PER_TYPE = 3
MAX_DUMP_ELEMENTS = int(os.environ.get("RG_CROSSCHECK_MAX_ELEMENTS", 40_000_000))

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print("MISMATCH:", msg)


def rg_gguf() -> str:
    if os.environ.get("RG_GGUF_BIN"):
        return os.environ["RG_GGUF_BIN"]
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "rg-gguf"], cwd=ROOT,
                   check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "release" / "rg-gguf")


def type_name(field) -> str:
    if field.types[0] == V.ARRAY:
        return "array of " + TYPE_NAMES[field.types[-1]]
    return TYPE_NAMES[field.types[0]]


def same_floats(ours, ref, dtype) -> bool:
    """Bitwise float equality; JSON null stands for NaN/inf, which JSON cannot hold."""
    ref = np.atleast_1d(np.asarray(ref, dtype=dtype))
    ours_list = ours if isinstance(ours, list) else [ours]
    if len(ours_list) != len(ref):
        return False
    finite = np.isfinite(ref)
    if any((o is None) != (not f) for o, f in zip(ours_list, finite)):
        return False
    ours_arr = np.array([0 if o is None else o for o in ours_list], dtype=dtype)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    return bool(np.array_equal(ours_arr[finite].view(bits), ref[finite].view(bits)))


def check_metadata(path: Path, info: dict, reader: gguf.GGUFReader) -> None:
    fields = [(k, f) for k, f in reader.fields.items() if not k.startswith("GGUF.")]
    if list(info["metadata"]) != [k for k, _ in fields]:
        fail(f"{path.name}: metadata keys/order differ")
    for key, field in fields:
        if key not in info["metadata"]:
            fail(f"{path.name}: key {key} missing")
            continue
        ours, ours_type = info["metadata"][key], info["metadata_types"][key]
        if ours_type != type_name(field):
            fail(f"{path.name}: {key}: type {ours_type} vs gguf-py {type_name(field)}")
            continue
        sub = field.types[-1]
        ref = field.contents()
        if sub == V.FLOAT32 or sub == V.FLOAT64:
            ok = same_floats(ours, ref, np.float32 if sub == V.FLOAT32 else np.float64)
        elif field.types[0] == V.ARRAY and sub != V.STRING:
            ok = ours == [x.item() if hasattr(x, "item") else x for x in ref]
        else:
            ok = ours == (ref.item() if hasattr(ref, "item") else ref)
        if not ok:
            fail(f"{path.name}: {key}: value differs")


def check_tensors(path: Path, info: dict, reader: gguf.GGUFReader) -> None:
    ours = info["tensors"]
    if [t["name"] for t in ours] != [t.name for t in reader.tensors]:
        fail(f"{path.name}: tensor names/order differ")
        return
    if info["data_offset"] != reader.data_offset or info["alignment"] != reader.alignment:
        fail(f"{path.name}: data offset/alignment differ")
    for o, t in zip(ours, reader.tensors):
        ref = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape)],
            "abs_offset": int(t.data_offset),
            "size": int(t.n_bytes),
        }
        got = {"type": o["type"], "shape": o["shape"],
               "abs_offset": info["data_offset"] + o["offset"], "size": o["size"]}
        if got != ref:
            fail(f"{path.name}: tensor {t.name}: {got} vs gguf-py {ref}")


def pick_dumps(reader: gguf.GGUFReader) -> list:
    by_type: dict[str, list] = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type.name, []).append(t)
    picked = []
    for ts in by_type.values():
        ts = sorted((t for t in ts if t.n_elements <= MAX_DUMP_ELEMENTS), key=lambda t: t.n_elements)
        chosen = ts[: DUMPS_PER_TYPE - 1] + ts[-1:]
        picked += list({t.name: t for t in chosen}.values())
    return picked


def check_dumps(path: Path, exe: str, reader: gguf.GGUFReader) -> dict:
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in pick_dumps(reader):
            ty = t.tensor_type.name
            out = Path(tmp) / "t.npy"
            run = subprocess.run([exe, "dump", str(path), t.name, "--out", str(out)],
                                 capture_output=True, text=True)
            if ty not in SUPPORTED:
                lines = run.stderr.strip().splitlines()
                if run.returncode != 1 or len(lines) != 1 or out.exists():
                    fail(f"{path.name}: dump {t.name} ({ty}): expected a clean refusal, got "
                         f"status {run.returncode}, stderr {run.stderr!r}")
                results.setdefault(ty, []).append((t.name, "refused: " + lines[-1] if lines else "?"))
                continue
            if run.returncode != 0:
                fail(f"{path.name}: dump {t.name} ({ty}) failed: {run.stderr.strip()[-300:]}")
                results.setdefault(ty, []).append((t.name, "FAILED"))
                continue
            ours = np.load(out)
            shape = tuple(int(d) for d in reversed(t.shape))
            ref = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
            same_nan = np.isnan(ours) & np.isnan(ref)
            equal_bits = ours.view(np.uint32) == ref.view(np.uint32)
            ok = ours.dtype == np.float32 and ours.shape == shape and bool(np.all(equal_bits | same_nan))
            if not ok:
                n_bad = int(np.sum(~(equal_bits | same_nan))) if ours.shape == shape else -1
                fail(f"{path.name}: dump {t.name} ({ty}): {n_bad} of {ref.size} values differ "
                     f"(shape {ours.shape} vs {shape})")
            results.setdefault(ty, []).append((t.name, f"{ref.size} values bit-identical" if ok else "DIFFERS"))
    return results


def check_file(path: Path, exe: str) -> None:
    print(f"== {path}")
    run = subprocess.run([exe, "info", "--json", str(path)], capture_output=True, check=True)
    info = json.loads(run.stdout)
    reader = gguf.GGUFReader(str(path))
    before = len(failures)
    check_metadata(path, info, reader)
    check_tensors(path, info, reader)
    print(f"info --json: {len(info['metadata'])} keys, {len(info['tensors'])} tensors: "
          + ("match gguf-py" if len(failures) == before else "MISMATCHES"))
    for ty, items in check_dumps(path, exe, reader).items():
        for name, verdict in items:
            print(f"dump {ty:7} {name:32} {verdict}")


def main(argv: list[str]) -> int:
    exe = rg_gguf()
    files = [Path(a) for a in argv] or [FIXTURE]
    if not argv:
        gemma3 = Path(os.environ.get("RG_GEMMA3_GGUF", DEFAULT_GEMMA3))
        if gemma3.is_file():
            files.append(gemma3)
        else:
            print(f"skipped the real-model check: {gemma3} not found (set RG_GEMMA3_GGUF)")
    for f in files:
        check_file(f, exe)
    if failures:
        print(f"FAILED: {len(failures)} mismatches")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
