#!/usr/bin/env python3
"""Writes the small reference GGUF files in tests/fixtures/gguf/ with gguf-py's GGUFWriter.

tests/gguf_writer_compat.rs builds the same metadata and tensors with rgemma's GgufWriter
and requires byte-identical output; tests/gguf_reader.rs reads them back.

    .venv/bin/python scripts/gguf_fixture.py          # (re)writes tests/fixtures/gguf/*.gguf

Keep this file and FIXTURE_* in tests/gguf_writer_compat.rs in step.
"""

import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"


def pattern(n: int, k: int) -> np.ndarray:
    """Deterministic tensor bytes: byte j of tensor k is (37 j + 11 k + 5) mod 256."""
    j = np.arange(n, dtype=np.uint64)
    return ((j * 37 + 11 * k + 5) % 256).astype(np.uint8)


# (name, ggml type, numpy shape); bytes = pattern(size, index) except "f32.mat" (real floats).
TENSORS = [
    ("f32.vec", Q.F32, (5,)),
    ("f32.mat", Q.F32, (3, 4)),
    ("f16.mat", Q.F16, (2, 8)),
    ("bf16.mat", Q.BF16, (2, 3)),
    ("q8_0.mat", Q.Q8_0, (2, 64)),
    ("q4_0.mat", Q.Q4_0, (3, 32)),
    ("q4_k.mat", Q.Q4_K, (2, 256)),
    ("q6_k.vec", Q.Q6_K, (256,)),
    ("iq2_xs.mat", Q.IQ2_XS, (1, 256)),
    ("i32.cube", Q.I32, (2, 2, 2)),
    ("f16.4d", Q.F16, (1, 2, 1, 2)),
]


def tensor_bytes(k: int, name: str, ty: Q, shape) -> np.ndarray:
    block, type_size = gguf.GGML_QUANT_SIZES[ty]
    n = int(np.prod(shape))
    nbytes = n // block * type_size
    if name == "f32.mat":
        data = (np.arange(n, dtype=np.float32) * 0.25 - 3.0).view(np.uint8)
    else:
        data = pattern(nbytes, k)
    # gguf-py turns a uint8 byte shape back into the element shape for raw_dtype.
    byte_shape = tuple(shape[:-1]) + (shape[-1] // block * type_size,)
    return data.reshape(byte_shape)


def write_main(path: Path) -> None:
    w = gguf.GGUFWriter(str(path), "test")  # general.architecture comes first
    w.add_string("general.name", "gguf fixture \u2713")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool_true", True)
    w.add_bool("t.bool_false", False)
    w.add_string("t.str", "hello\nworld \u00e9")
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 1.0 / 3.0)
    w.add_key_value("t.arr.u8", [1, 2, 255], V.ARRAY, sub_type=V.UINT8)
    w.add_key_value("t.arr.i8", [-1, 0, 127], V.ARRAY, sub_type=V.INT8)
    w.add_key_value("t.arr.u16", [0, 65535], V.ARRAY, sub_type=V.UINT16)
    w.add_key_value("t.arr.i16", [-32768, 7], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("t.arr.u32", [1, 4294967295], V.ARRAY, sub_type=V.UINT32)
    w.add_key_value("t.arr.i32", [-5, 6, 7], V.ARRAY, sub_type=V.INT32)
    w.add_key_value("t.arr.f32", [0.5, -1.25, 1e-6], V.ARRAY, sub_type=V.FLOAT32)
    w.add_key_value("t.arr.bool", [True, False, True], V.ARRAY, sub_type=V.BOOL)
    w.add_key_value("t.arr.str", ["a", "", "\u00fcn\u00ef", "x y"], V.ARRAY, sub_type=V.STRING)
    w.add_key_value("t.arr.u64", [2**64 - 1, 0], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("t.arr.i64", [-(2**63), 2**63 - 1], V.ARRAY, sub_type=V.INT64)
    w.add_key_value("t.arr.f64", [0.1, -2.5e300], V.ARRAY, sub_type=V.FLOAT64)
    w.add_custom_alignment(32)  # rgemma's writer appends this key last when it is absent
    for k, (name, ty, shape) in enumerate(TENSORS):
        w.add_tensor(name, tensor_bytes(k, name, ty, shape), raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_big_endian(path: Path) -> None:
    w = gguf.GGUFWriter(str(path), "test", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("t.u32", 7)
    w.add_tensor("x", np.arange(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# Types rgemma_quant can dequantize; tests/gguf_cli.rs checks `rg-gguf dump` against these.
DEQUANT_TYPES = {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K}


def write_dequantized(gguf_path: Path, out: Path) -> None:
    """gguf-py's dequantization of each tensor of DEQUANT_TYPES, in file order, as raw
    little-endian float32, one file."""
    r = gguf.GGUFReader(str(gguf_path))
    parts = [gguf.quants.dequantize(t.data, t.tensor_type).astype("<f4").ravel()
             for t in r.tensors if t.tensor_type in DEQUANT_TYPES]
    np.concatenate(parts).tofile(out)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    write_main(OUT / "gguf_py_small.gguf")
    write_dequantized(OUT / "gguf_py_small.gguf", OUT / "gguf_py_small.dequant.f32")
    write_big_endian(OUT / "gguf_py_big_endian.gguf")
    for p in sorted(OUT.glob("*.gguf")):
        print(p, p.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
