#!/usr/bin/env python3
"""Write a random-weight Gemma 3 transformer GGUF (F16) for llama.cpp comparisons.

The benchmarks put rgemma's 2B-geometry files next to llama.cpp running a transformer of the
same size and quantization. No real transformer of that size ships with a license that lets
CI download it, and the weights' values do not change the speed, so this writes one with
random weights: Gemma-2B geometry (hidden 2048, 18 layers, 8 heads of 256, one K/V head, MLP
16384, tied 262144-token embedding: 2.5 B parameters), architecture `gemma3` (llama.cpp's
current Gemma path, sliding window 512 on five layers of six as in the real models). The
tokenizer and the remaining `gemma3.*` keys are copied from a Gemma 3 GGUF (the 270M file
that scripts/setup-dev.sh fetches). Quantize the result with llama.cpp's `llama-quantize`:

    python scripts/make_llama_comparison_model.py target/gemma3/gemma-3-270m-q4_k_m.gguf \\
        /work/bench/gemma2b-f16.gguf
    llama-quantize /work/bench/gemma2b-f16.gguf /work/bench/gemma2b-q4_0.gguf Q4_0

Needs numpy and llama.cpp's `gguf` package (pip install gguf). About 5 GB of output and of RAM.
"""

import sys

import numpy as np
import gguf

HIDDEN, LAYERS, FF, HEADS, KV_HEADS, HEAD_DIM = 2048, 18, 16384, 8, 1, 256


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    reader = gguf.GGUFReader(src)
    if reader.fields["general.architecture"].contents() != "gemma3":
        sys.exit(f"{src}: not a gemma3 GGUF")
    writer = gguf.GGUFWriter(out, "gemma3")
    writer.add_name("gemma2b-geometry-random")
    geometry = {
        "gemma3.embedding_length": HIDDEN,
        "gemma3.block_count": LAYERS,
        "gemma3.feed_forward_length": FF,
        "gemma3.attention.head_count": HEADS,
        "gemma3.attention.head_count_kv": KV_HEADS,
        "gemma3.attention.key_length": HEAD_DIM,
        "gemma3.attention.value_length": HEAD_DIM,
    }
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.name"):
            continue
        if not (key.startswith("gemma3.") or key.startswith("tokenizer.")):
            continue
        value = geometry.get(key, field.contents())
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    rng = np.random.default_rng(0)

    def matrix(rows, cols):
        # ggml shape [cols, rows]: numpy [rows, cols], row-major.
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm(n):
        return np.ones(n, dtype=np.float32)

    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    writer.add_tensor("token_embd.weight", matrix(n_vocab, HIDDEN))
    writer.add_tensor("output_norm.weight", norm(HIDDEN))
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm(HIDDEN))
        writer.add_tensor(p + "attn_q.weight", matrix(q, HIDDEN))
        writer.add_tensor(p + "attn_k.weight", matrix(kv, HIDDEN))
        writer.add_tensor(p + "attn_v.weight", matrix(kv, HIDDEN))
        writer.add_tensor(p + "attn_q_norm.weight", norm(HEAD_DIM))
        writer.add_tensor(p + "attn_k_norm.weight", norm(HEAD_DIM))
        writer.add_tensor(p + "attn_output.weight", matrix(HIDDEN, q))
        writer.add_tensor(p + "post_attention_norm.weight", norm(HIDDEN))
        writer.add_tensor(p + "ffn_norm.weight", norm(HIDDEN))
        writer.add_tensor(p + "ffn_gate.weight", matrix(FF, HIDDEN))
        writer.add_tensor(p + "ffn_up.weight", matrix(FF, HIDDEN))
        writer.add_tensor(p + "ffn_down.weight", matrix(HIDDEN, FF))
        writer.add_tensor(p + "post_ffw_norm.weight", norm(HIDDEN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
