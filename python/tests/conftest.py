"""Shared fixtures of the Python package's tests (run by .ci/run against the installed wheel).

The reference points are the Rust engine's own programs (rg-run, rg-tokenize, from
$RG_BIN_DIR or target/release), the official implementation's logits stored beside the
bundled model, and the tokenizer fixture's ids (Hugging Face's tokenizer)."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import rgemma

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("RG_BIN_DIR", ROOT / "target" / "release"))
MODEL_Q8 = ROOT / "models" / "tiny-fortunes-q8_0.gguf"
MODEL_F32 = ROOT / "models" / "tiny-fortunes-f32.gguf"


def binary(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `cargo build --release` (or set RG_BIN_DIR)")
    return path


def run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kw)


def read_npy(path: Path) -> np.ndarray:
    return np.load(path)


def read_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file as numpy arrays (the format: u64 header length, JSON
    header, raw little-endian data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {"F32": "<f4", "I64": "<i8"}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


@pytest.fixture(scope="session")
def model_q8() -> rgemma.Model:
    return rgemma.Model(MODEL_Q8, n_threads=2)


@pytest.fixture(scope="session")
def model_f32() -> rgemma.Model:
    return rgemma.Model(MODEL_F32, n_threads=2)
