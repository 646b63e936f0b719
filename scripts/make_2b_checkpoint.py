#!/usr/bin/env python3
"""Write a random-weight Hugging Face RecurrentGemma checkpoint with the real 2B or 9B geometry.

For benchmarking rg-quantize and the engine at full size without the real weights. Both have
layers in the (recurrent, recurrent, attention) pattern, 1 KV head, head_dim 256, vocab 256000,
window 2048, conv 4, and RG-LRU gates in one block per head:
- 2B (default): hidden 2560, 26 layers, lru 2560, intermediate_size 15360 (MLP branch 7680),
  10 heads; about 5.4 GB.
- 9B (`--9b`): hidden 4096, 38 layers, lru 4096, intermediate_size 24576 (MLP branch 12288),
  16 heads; about 17 GB.
bf16 safetensors, sharded (model-0000X-of-0000N.safetensors + model.safetensors.index.json).
Tensors are generated and written in chunks, so the script needs little memory.

    python scripts/make_2b_checkpoint.py [OUT_DIR]     # default target/rg2b/hf
    python scripts/make_2b_checkpoint.py --9b [OUT_DIR]     # default target/rg9b/hf
    python scripts/make_2b_checkpoint.py OUT_DIR --tokenizer-json target/gemma3/tokenizer.json \
        [--tokenizer-model target/gemma3/tokenizer.model]

The config uses the transformers 4.x spelling of the published 2B config (`_block_types`,
top-level `rope_theta` / `partial_rotary_factor`). Without --tokenizer-json no tokenizer files
are written. With it (e.g. the Gemma 3 tokenizer.json that scripts/setup-dev.sh builds from the
real 262144-token Gemma vocabulary), the vocabulary size follows that file, and the folder
gets it plus tokenizer_config.json (Gemma's chat template) and special_tokens_map.json, laid out
like the Hugging Face repository of recurrentgemma-2b-it; --tokenizer-model adds SentencePiece's
tokenizer.model beside it (scripts/gemma3_hf_tokenizer_json.py --spm writes one for that
vocabulary), as the real repository has both.
"""

import json
import os
import shutil
import sys

import numpy as np

GEOMETRY = {
    # name: (hidden, layers, lru_width, intermediate_size, heads)
    "2b": (2560, 26, 2560, 15360, 10),
    "9b": (4096, 38, 4096, 24576, 16),
}
V, NKV, HD, W, K = 256000, 1, 256, 2048, 4
H, LAYERS, L, M2, NH = GEOMETRY["2b"]
M = M2 // 2
NB, BW = NH, L // NH
SHARD_BYTES = 2 << 30  # ~2 GiB per shard
CHUNK = 1 << 24  # elements generated at a time


def tensors():
    """(name, shape, kind) in checkpoint order; kind picks the value distribution."""
    out = [("model.embed_tokens.weight", (V, H), "matrix")]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.append((p + "temporal_pre_norm.weight", (H,), "norm"))
        if i % 3 != 2:
            t = p + "temporal_block."
            out += [
                (t + "linear_x.weight", (L, H), "matrix"), (t + "linear_x.bias", (L,), "bias"),
                (t + "linear_y.weight", (L, H), "matrix"), (t + "linear_y.bias", (L,), "bias"),
                (t + "linear_out.weight", (H, L), "matrix"), (t + "linear_out.bias", (H,), "bias"),
                (t + "conv_1d.weight", (L, 1, K), "conv"), (t + "conv_1d.bias", (L,), "bias"),
                (t + "rg_lru.input_gate_weight", (NB, BW, BW), "gate"), (t + "rg_lru.input_gate_bias", (NB, BW), "bias"),
                (t + "rg_lru.recurrent_gate_weight", (NB, BW, BW), "gate"), (t + "rg_lru.recurrent_gate_bias", (NB, BW), "bias"),
                (t + "rg_lru.recurrent_param", (L,), "lambda"),
            ]
        else:
            t = p + "temporal_block."
            out += [
                (t + "q_proj.weight", (NH * HD, H), "matrix"),
                (t + "k_proj.weight", (NKV * HD, H), "matrix"),
                (t + "v_proj.weight", (NKV * HD, H), "matrix"),
                (t + "o_proj.weight", (H, NH * HD), "matrix"), (t + "o_proj.bias", (H,), "bias"),
            ]
        out.append((p + "channel_pre_norm.weight", (H,), "norm"))
        m = p + "mlp_block."
        out += [
            (m + "gate_proj.weight", (M, H), "matrix"), (m + "gate_proj.bias", (M,), "bias"),
            (m + "up_proj.weight", (M, H), "matrix"), (m + "up_proj.bias", (M,), "bias"),
            (m + "down_proj.weight", (H, M), "matrix"), (m + "down_proj.bias", (H,), "bias"),
        ]
    out.append(("model.final_norm.weight", (H,), "norm"))
    return out


def to_bf16_bytes(x):
    """float32 -> bfloat16 (round to nearest even), little-endian bytes."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
    return rounded.astype("<u2").tobytes()


def values(rng, kind, n):
    if kind == "matrix":
        return rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    if kind == "gate":
        return rng.standard_normal(n, dtype=np.float32) * np.float32(BW ** -0.5)
    if kind == "conv":
        return rng.standard_normal(n, dtype=np.float32) * np.float32(0.5)
    if kind == "lambda":
        return rng.uniform(-6.0, 2.0, n).astype(np.float32)
    if kind == "norm":
        return rng.uniform(-0.5, 0.5, n).astype(np.float32)
    return rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)  # bias


# Gemma's chat template, as its tokenizer_config.json carries it.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)


def write_tokenizer(out_dir, tokenizer_json):
    """Copies tokenizer.json and writes the config files beside it; returns the vocabulary size."""
    with open(tokenizer_json, encoding="utf-8") as f:
        tj = json.load(f)
    ids = list(tj["model"]["vocab"].values()) + [t["id"] for t in tj.get("added_tokens", [])]
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    specials = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                "unk_token": "<unk>"}
    config = dict(specials, add_bos_token=True, add_eos_token=False,
                  chat_template=GEMMA_CHAT_TEMPLATE, tokenizer_class="GemmaTokenizer",
                  model_max_length=1000000000000000019884624838656)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f, indent=2)
    return max(ids) + 1


def take_option(args, flag):
    """Removes `flag VALUE` from args and returns VALUE (None when absent)."""
    if flag not in args:
        return None
    i = args.index(flag)
    value = args[i + 1]
    del args[i : i + 2]
    return value


def main():
    global V, H, LAYERS, L, M2, NH, M, NB, BW
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = sys.argv[1:]
    tokenizer_json = take_option(args, "--tokenizer-json")
    tokenizer_model = take_option(args, "--tokenizer-model")
    geometry = "2b"
    if "--9b" in args:
        args.remove("--9b")
        geometry = "9b"
    H, LAYERS, L, M2, NH = GEOMETRY[geometry]
    M, NB, BW = M2 // 2, NH, L // NH
    out_dir = args[0] if args else os.path.join(root, "target", f"rg{geometry}", "hf")
    os.makedirs(out_dir, exist_ok=True)
    if tokenizer_json:
        V = write_tokenizer(out_dir, tokenizer_json)
        print(f"{out_dir}: tokenizer with {V} tokens", flush=True)
    if tokenizer_model:
        shutil.copyfile(tokenizer_model, os.path.join(out_dir, "tokenizer.model"))
    rng = np.random.default_rng(H)

    # Assign tensors to shards in order.
    shards, cur, cur_bytes = [], [], 0
    for name, shape, kind in tensors():
        nbytes = int(np.prod(shape)) * 2
        if cur and cur_bytes + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((name, shape, kind))
        cur_bytes += nbytes
    shards.append(cur)

    weight_map, total = {}, 0
    for s, shard in enumerate(shards):
        fname = f"model-{s + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, _ in shard:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        total += off
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        hbytes += b" " * (-len(hbytes) % 8)
        path = os.path.join(out_dir, fname)
        with open(path + ".tmp", "wb") as f:
            f.write(len(hbytes).to_bytes(8, "little"))
            f.write(hbytes)
            for name, shape, kind in shard:
                left = int(np.prod(shape))
                while left:
                    n = min(left, CHUNK)
                    f.write(to_bf16_bytes(values(rng, kind, n)))
                    left -= n
        os.replace(path + ".tmp", path)
        print(f"wrote {path} ({off / 2**30:.2f} GiB, {len(shard)} tensors)", flush=True)

    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = {
        "architectures": ["RecurrentGemmaForCausalLM"], "model_type": "recurrent_gemma",
        "vocab_size": V, "hidden_size": H, "intermediate_size": M2, "num_hidden_layers": LAYERS,
        "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD, "lru_width": L,
        "attention_window_size": W, "conv1d_width": K, "logits_soft_cap": 30.0, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "hidden_activation": "gelu_pytorch_tanh",
        "_block_types": ["recurrent", "recurrent", "attention"], "embeddings_scale_by_sqrt_dim": True,
        "attention_bias": False, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "torch_dtype": "bfloat16",
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}, f, indent=2)
    print(f"{out_dir}: {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
