#!/usr/bin/env python3
"""Cross-check rg-quantize against gguf-py (the llama.cpp project's Python package).

For tests/fixtures/tiny-rg (F32), tests/fixtures/tiny-rg/bf16 (BF16) and a generated
checkpoint with 256-wide rows (so K-quant presets store real K-quant blocks), converts to
every preset and checks with gguf-py only:

- gguf.GGUFReader reads every output; the main metadata keys have the expected values;
- every tensor, dequantized by gguf.quants.dequantize, matches the HF source (after the
  layout changes of docs/gguf-schema.md) within its type's bound (same bounds as
  tests/convert_util.rs::block_bound);
- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and BF16 tensors are byte-identical to gguf.quants.quantize
  of the same f32 values; F16 tensors to numpy's float16 cast; F32 tensors to the values.

    .venv/bin/python scripts/convert_crosscheck.py [--bin target/release/rg-quantize] [--out DIR]
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
           "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
FTYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
         "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}
BYTE_EXACT = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16}


def read_safetensors(path):
    """Minimal reader (F32 / BF16 -> float32), independent of the converter."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = body[a:b]
        if v["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype="<f4").copy()
        elif v["dtype"] == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: {name}: dtype {v['dtype']}")
        out[name] = arr.reshape(v["shape"])
    return out


def expected(src, name):
    """The stored f32 tensor (numpy shape) for GGUF tensor `name`."""
    if name == "token_embd.weight":
        return src["model.embed_tokens.weight"]
    if name == "output_norm.weight":
        return (np.float32(1.0) + src["model.final_norm.weight"]).astype(np.float32)
    _, layer, tail = name.split(".", 2)
    p = f"model.layers.{layer}."
    tb = p + "temporal_block."
    if tail == "attn_norm.weight":
        return (np.float32(1.0) + src[p + "temporal_pre_norm.weight"]).astype(np.float32)
    if tail == "ffn_norm.weight":
        return (np.float32(1.0) + src[p + "channel_pre_norm.weight"]).astype(np.float32)
    if tail == "ssm_conv1d.weight":
        return np.ascontiguousarray(src[tb + "conv_1d.weight"][:, 0, :].T)  # [L,1,K] -> [K,L]
    if tail in ("rg_input_gate.weight", "rg_a_gate.weight"):
        hf = "rg_lru.input_gate_weight" if tail.startswith("rg_input") else "rg_lru.recurrent_gate_weight"
        return np.ascontiguousarray(src[tb + hf].transpose(0, 2, 1))  # [nb,in,out] -> [nb,out,in]
    if tail in ("rg_input_gate.bias", "rg_a_gate.bias"):
        hf = "rg_lru.input_gate_bias" if tail.startswith("rg_input") else "rg_lru.recurrent_gate_bias"
        return src[tb + hf].reshape(-1)
    mapping = {
        "rg_x.": tb + "linear_x.", "rg_y.": tb + "linear_y.", "rg_out.": tb + "linear_out.",
        "ssm_conv1d.": tb + "conv_1d.", "attn_q.": tb + "q_proj.", "attn_k.": tb + "k_proj.",
        "attn_v.": tb + "v_proj.", "attn_output.": tb + "o_proj.",
        "ffn_gate.": p + "mlp_block.gate_proj.", "ffn_up.": p + "mlp_block.up_proj.",
        "ffn_down.": p + "mlp_block.down_proj.",
    }
    if tail == "rg_a.weight":
        return src[tb + "rg_lru.recurrent_param"]
    for g, h in mapping.items():
        if tail.startswith(g):
            return src[h + tail[len(g):]]
    raise KeyError(name)


def bound(ty, x):
    """Per-element bound for one block `x` (see tests/convert_util.rs::block_bound)."""
    amax = float(np.abs(x).max())
    mx, mn = float(x.max()), float(x.min())
    tiny = 1e-7 * max(amax, 1.0)
    if ty == Q.F32:
        return np.zeros_like(x)
    if ty == Q.F16:
        return np.abs(x) * 2.0 ** -11 + 2.0 ** -24
    if ty == Q.BF16:
        return np.abs(x) * 2.0 ** -8
    if ty == Q.Q8_0:
        return np.full_like(x, 0.6 * amax / 127 + tiny)
    if ty == Q.Q4_0:
        d = amax / 8
        return 0.6 * d + np.maximum(np.abs(x) - 7.5 * d, 0) + tiny
    if ty == Q.Q5_0:
        d = amax / 16
        return 0.6 * d + np.maximum(np.abs(x) - 15.5 * d, 0) + tiny
    if ty == Q.Q4_1:
        return np.full_like(x, 0.6 * (mx - mn) / 15 + abs(mn) * 2.0 ** -10 + tiny)
    if ty == Q.Q5_1:
        return np.full_like(x, 0.6 * (mx - mn) / 31 + abs(mn) * 2.0 ** -10 + tiny)
    if ty == Q.Q2_K:
        return np.full_like(x, (mx - min(mn, 0)) / 3 + tiny)
    if ty == Q.Q3_K:
        return np.full_like(x, amax / 2 + tiny)
    if ty == Q.Q4_K:
        return np.full_like(x, (mx - min(mn, 0)) / 15 + tiny)
    if ty == Q.Q5_K:
        return np.full_like(x, (mx - min(mn, 0)) / 31 + tiny)
    if ty == Q.Q6_K:
        return np.full_like(x, amax / 32 + tiny)
    raise ValueError(ty)


def write_wide_checkpoint(d):
    """hidden 256, 3 layers (R, R, A), MLP 512, lru 256 (2 gate blocks of 128), vocab 40."""
    v, h, m, l, nb, hd, k = 40, 256, 512, 256, 2, 128, 4
    bw = l // nb
    os.makedirs(d, exist_ok=True)
    cfg = {"model_type": "recurrent_gemma", "vocab_size": v, "hidden_size": h, "intermediate_size": 2 * m,
           "num_hidden_layers": 3, "num_attention_heads": nb, "num_key_value_heads": 1, "head_dim": hd,
           "lru_width": l, "attention_window_size": 32, "conv1d_width": k, "logits_soft_cap": 30.0,
           "rms_norm_eps": 1e-6, "rope_parameters": {"rope_theta": 10000.0, "partial_rotary_factor": 0.5},
           "block_types": ["recurrent", "recurrent", "attention"]}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = np.random.default_rng(7)
    t = {"model.embed_tokens.weight": (v, h), "model.final_norm.weight": (h,)}
    for i in range(3):
        p = f"model.layers.{i}."
        t[p + "temporal_pre_norm.weight"] = (h,)
        t[p + "channel_pre_norm.weight"] = (h,)
        for n, s in [("gate_proj", (m, h)), ("up_proj", (m, h)), ("down_proj", (h, m))]:
            t[p + f"mlp_block.{n}.weight"] = s
            t[p + f"mlp_block.{n}.bias"] = (s[0],)
        tb = p + "temporal_block."
        if i < 2:
            for n, s in [("linear_x", (l, h)), ("linear_y", (l, h)), ("linear_out", (h, l))]:
                t[tb + n + ".weight"] = s
                t[tb + n + ".bias"] = (s[0],)
            t[tb + "conv_1d.weight"] = (l, 1, k)
            t[tb + "conv_1d.bias"] = (l,)
            for g in ("input_gate", "recurrent_gate"):
                t[tb + f"rg_lru.{g}_weight"] = (nb, bw, bw)
                t[tb + f"rg_lru.{g}_bias"] = (nb, bw)
            t[tb + "rg_lru.recurrent_param"] = (l,)
        else:
            t[tb + "q_proj.weight"] = (nb * hd, h)
            t[tb + "k_proj.weight"] = (hd, h)
            t[tb + "v_proj.weight"] = (hd, h)
            t[tb + "o_proj.weight"] = (h, nb * hd)
            t[tb + "o_proj.bias"] = (h,)
    header, off, blobs = {}, 0, []
    for name, shape in t.items():
        arr = rng.standard_normal(shape).astype("<f4") * np.float32(0.1)
        arr.flat[::97] *= 8  # a few outliers, as real weights have
        b = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + b"".join(blobs))


def field(reader, key):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]


def check_file(path, src, preset, failures):
    r = gguf.GGUFReader(path)
    if field(r, "general.architecture") != "recurrentgemma":
        failures.append(f"{path}: general.architecture")
    if int(field(r, "general.file_type")) != FTYPE[preset]:
        failures.append(f"{path}: general.file_type")
    stats = {"tensors": 0, "byte_exact": 0}
    for t in r.tensors:
        stats["tensors"] += 1
        want = expected(src, t.name).astype(np.float32)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if shape != want.shape:
            failures.append(f"{path}: {t.name}: shape {shape} != {want.shape}")
            continue
        ty = t.tensor_type
        got = gguf.quants.dequantize(t.data, ty).astype(np.float32).reshape(-1)
        w = want.reshape(-1)
        bs = gguf.GGML_QUANT_SIZES[ty][0]
        lim = np.concatenate([bound(ty, w[i:i + bs]) for i in range(0, w.size, bs)]) if bs > 1 else bound(ty, w)
        err = np.abs(got - w)
        if not np.all(err <= lim):
            i = int(np.argmax(err - lim))
            failures.append(f"{path}: {t.name} ({ty.name}): element {i} err {err[i]:.3g} > bound {lim[i]:.3g}")
        raw = np.asarray(t.data).tobytes()
        if ty in BYTE_EXACT:
            ref = gguf.quants.quantize(want, ty).tobytes()
        elif ty == Q.F16:
            ref = want.astype("<f2").tobytes()
        elif ty == Q.F32:
            ref = want.astype("<f4").tobytes()
        else:
            ref = None
        if ref is not None:
            if raw != ref:
                failures.append(f"{path}: {t.name} ({ty.name}): bytes differ from gguf-py")
            else:
                stats["byte_exact"] += 1
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "rg-quantize"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "convert-crosscheck"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    wide = os.path.join(args.out, "wide-ckpt")
    write_wide_checkpoint(wide)
    inputs = {
        "tiny-rg": os.path.join(ROOT, "tests", "fixtures", "tiny-rg"),
        "tiny-rg-bf16": os.path.join(ROOT, "tests", "fixtures", "tiny-rg", "bf16"),
        "wide": wide,
    }
    failures = []
    for label, ckpt in inputs.items():
        src = read_safetensors(os.path.join(ckpt, "model.safetensors"))
        for preset in PRESETS:
            out = os.path.join(args.out, f"{label}-{preset}.gguf")
            res = subprocess.run([args.bin, ckpt, out, preset, "--force", "--quiet"], capture_output=True, text=True)
            if res.returncode != 0:
                failures.append(f"{label} {preset}: rg-quantize failed: {res.stderr.strip()}")
                continue
            s = check_file(out, src, preset, failures)
            types = sorted({gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(out).tensors})
            print(f"{label:13s} {preset:7s}: {s['tensors']} tensors within bounds, "
                  f"{s['byte_exact']} byte-identical to gguf-py/numpy; types {','.join(types)}")
    if failures:
        print(f"\n{len(failures)} FAILURES", file=sys.stderr)
        for f in failures[:50]:
            print("  " + f, file=sys.stderr)
        sys.exit(1)
    print("\nall outputs agree with gguf-py")


if __name__ == "__main__":
    main()
