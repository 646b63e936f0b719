#!/usr/bin/env python3
"""Give the bundled trained model the outlier features of large language models, without
changing what it computes: a check that importance matrices pay where they should.

Large models have a few hidden channels whose normed activations are tens to hundreds of times
the others (the RMSNorm weight is large there); the tiny-fortunes model has none (its largest
column importance behind a norm is 1.5x the median, see models/README.md). This script picks
K channels of the hidden state and, for every RMSNorm that feeds matrices (attn_norm -> rg_x,
rg_y / attn_q, attn_k, attn_v; ffn_norm -> ffn_gate, ffn_up), multiplies the norm weight of
those channels by S and divides the matching input column of each matrix it feeds by S. In
exact arithmetic every matrix product, and so every logit, is unchanged (checked below against
the engine: rg-perplexity gives the same perplexity); but each of those weight columns is now
S times smaller than its neighbours in the same quantization blocks, while its input is S times
larger, which is what makes unweighted quantization lose and weighted quantization win.

    python scripts/make_outlier_model.py models/tiny-fortunes-f32.gguf OUT.gguf [--k 8] [--s 32]

Needs numpy and llama.cpp's gguf package (pip install gguf).
"""

import argparse

import numpy as np
import gguf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--k", type=int, default=8, help="outlier channels")
    ap.add_argument("--s", type=float, default=32.0, help="their scale")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    r = gguf.GGUFReader(args.src)
    arch = r.fields["general.architecture"].contents()
    hidden = int(r.fields[f"{arch}.embedding_length"].contents())
    channels = np.random.default_rng(args.seed).choice(hidden, args.k, replace=False)
    tensors = {t.name: np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
               for t in r.tensors}
    for t in r.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise SystemExit(f"{t.name}: not F32 (use the F32 model)")
    consumers = {"attn_norm": ["rg_x", "rg_y", "attn_q", "attn_k", "attn_v"],
                 "ffn_norm": ["ffn_gate", "ffn_up"]}
    n_layers = int(r.fields[f"{arch}.block_count"].contents())
    for i in range(n_layers):
        for norm, mats in consumers.items():
            tensors[f"blk.{i}.{norm}.weight"][channels] *= args.s
            for m in mats:
                name = f"blk.{i}.{m}.weight"
                if name in tensors:
                    tensors[name][:, channels] /= args.s  # [rows, cols]: input column c

    w = gguf.GGUFWriter(args.out, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub)
    for t in r.tensors:
        w.add_tensor(t.name, tensors[t.name])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"channels {sorted(channels.tolist())} x {args.s} -> {args.out}")


if __name__ == "__main__":
    main()
