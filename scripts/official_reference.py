#!/usr/bin/env python3
"""Reference logits from Google's official RecurrentGemma implementation (the PyTorch `Griffin`
of the `recurrentgemma` package, f32, CPU) for a checkpoint in the Hugging Face layout
(`config.json` + `model.safetensors` or sharded `model-*.safetensors` with
`model.safetensors.index.json`, F32 or BF16), in the format of tests/fixtures/README.md:
`p{k}.input_ids`, `p{k}.prefill_logits` (one no-cache pass over the prompt),
`p{k}.gen_tokens`, `p{k}.prefill_last_logits_cached` and `p{k}.decode_logits` (the official
sampler's way: no-cache pass over ids[:-1], the last id alone with that cache, then one call
per greedy token), plus `p{k}.prefill_logits_f64` (the same pass with the model in float64:
how far the f32 reference itself is from exact arithmetic).

    python scripts/official_reference.py CHECKPOINT_DIR OUT_DIR --lengths 1,9,40 --gen 8 --seed 9
    python scripts/official_reference.py tests/fixtures/tiny-rg --check tests/fixtures/tiny-rg

`--check DIR` recomputes the prefill logits of DIR's reference.safetensors prompts and
prints the largest difference (a check of the weight mapping below against the shipped
fixtures). Needs: torch, recurrentgemma==1.0.1 (its top-level package imports JAX, which is
skipped here: only `recurrentgemma.torch` is loaded), safetensors, numpy.
"""

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def import_official():
    """`recurrentgemma.torch` without running the package's __init__ (which needs JAX)."""
    if "recurrentgemma.torch" in sys.modules:
        from recurrentgemma import common

        return sys.modules["recurrentgemma.torch"], common
    spec = importlib.util.find_spec("recurrentgemma")
    if spec is None:
        sys.exit("error: pip install recurrentgemma==1.0.1 torch")
    pkg = types.ModuleType("recurrentgemma")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["recurrentgemma"] = pkg
    import recurrentgemma.torch as rgt
    from recurrentgemma import common

    return rgt, common


def load_checkpoint(folder: Path):
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(load_file(str(folder / f)))
    return {k: v.to(torch.float32) for k, v in tensors.items()}


def official_state(hf, cfg):
    """HF names -> official names (tests/fixtures/README.md, "Weight mapping")."""
    out = {
        "embedder.input_embedding": hf["model.embed_tokens.weight"],
        "final_norm.scale": hf["model.final_norm.weight"],
    }
    types_ = cfg["block_types"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        b = f"blocks.{i}."
        out[b + "temporal_pre_norm.scale"] = hf[p + "temporal_pre_norm.weight"]
        out[b + "channel_pre_norm.scale"] = hf[p + "channel_pre_norm.weight"]
        g, u = hf[p + "mlp_block.gate_proj.weight"], hf[p + "mlp_block.up_proj.weight"]
        out[b + "mlp_block.ffw_up.w"] = torch.stack([g.T, u.T])
        gb, ub = hf[p + "mlp_block.gate_proj.bias"], hf[p + "mlp_block.up_proj.bias"]
        out[b + "mlp_block.ffw_up.b"] = torch.stack([gb, ub])[:, None, None, :]
        out[b + "mlp_block.ffw_down.weight"] = hf[p + "mlp_block.down_proj.weight"]
        out[b + "mlp_block.ffw_down.bias"] = hf[p + "mlp_block.down_proj.bias"]
        t = p + "temporal_block."
        if types_[i % len(types_)] == "recurrent":
            r = b + "recurrent_block."
            for name in ["linear_x", "linear_y", "linear_out"]:
                out[r + name + ".weight"] = hf[t + name + ".weight"]
                out[r + name + ".bias"] = hf[t + name + ".bias"]
            out[r + "conv_1d.w"] = hf[t + "conv_1d.weight"][:, 0, :].T.contiguous()
            out[r + "conv_1d.b"] = hf[t + "conv_1d.bias"]
            out[r + "rg_lru.a_param"] = hf[t + "rg_lru.recurrent_param"]
            out[r + "rg_lru.input_gate.w"] = hf[t + "rg_lru.input_gate_weight"]
            out[r + "rg_lru.input_gate.b"] = hf[t + "rg_lru.input_gate_bias"]
            out[r + "rg_lru.a_gate.w"] = hf[t + "rg_lru.recurrent_gate_weight"]
            out[r + "rg_lru.a_gate.b"] = hf[t + "rg_lru.recurrent_gate_bias"]
        else:
            a = b + "attention_block."
            for hf_name, name in [("q_proj", "proj_q"), ("k_proj", "proj_k"), ("v_proj", "proj_v")]:
                out[a + name + ".weight"] = hf[t + hf_name + ".weight"]
            out[a + "proj_final.weight"] = hf[t + "o_proj.weight"]
            out[a + "proj_final.bias"] = hf[t + "o_proj.bias"]
    return out


def build_model(folder: Path, dtype):
    rgt, common = import_official()
    cfg = json.loads((folder / "config.json").read_text())
    kinds = {"recurrent": common.TemporalBlockType.RECURRENT,
             "attention": common.TemporalBlockType.ATTENTION}
    n = cfg["num_hidden_layers"]
    bt = cfg["block_types"]
    # Built directly, not from a preset: a preset with a max_sequence_length would lower the
    # window to it.
    gcfg = rgt.GriffinConfig(
        vocab_size=cfg["vocab_size"],
        width=cfg["hidden_size"],
        mlp_expanded_width=cfg["intermediate_size"] // 2,
        num_heads=cfg["num_attention_heads"],
        block_types=tuple(kinds[bt[i % len(bt)]] for i in range(n)),
        embeddings_scale_by_sqrt_dim=True,
        attention_window_size=cfg["attention_window_size"],
        logits_soft_cap=cfg.get("logits_soft_cap", 30.0),
        lru_width=cfg["lru_width"],
    )
    model = rgt.Griffin(gcfg, gradient_checkpointing=False, dtype=torch.float32)
    model.load_state_dict(official_state(load_checkpoint(folder), cfg), strict=True)
    model.eval()
    if dtype == torch.float64:
        model = model.double()
    return model, cfg


@torch.no_grad()
def prefill(model, ids):
    t = torch.tensor([ids])
    logits, _ = model(t, torch.arange(len(ids))[None], return_cache=False)
    return logits[0]


@torch.no_grad()
def sampler_decode(model, ids, n_gen):
    """The official sampler's order: ids[:-1] without cache, ids[-1] alone with the cache,
    then one call per greedy token. Returns (first logits, gen tokens, decode logits)."""
    cache = None
    if len(ids) > 1:
        _, cache = model(torch.tensor([ids[:-1]]), torch.arange(len(ids) - 1)[None],
                         return_logits=False)
    pos = len(ids) - 1
    logits, cache = model(torch.tensor([[ids[-1]]]), torch.tensor([[pos]]), cache=cache)
    first = logits[0, -1]
    gen, rows = [], []
    nxt = int(torch.argmax(first))
    for i in range(n_gen):
        gen.append(nxt)
        logits, cache = model(torch.tensor([[nxt]]), torch.tensor([[pos + 1 + i]]), cache=cache)
        rows.append(logits[0, -1])
        nxt = int(torch.argmax(rows[-1]))
    return first, gen, torch.stack(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--lengths", default="1,9,40")
    ap.add_argument("--gen", type=int, default=8)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--check", type=Path, help="compare with DIR/reference.safetensors")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    torch.use_deterministic_algorithms(True)
    model, cfg = build_model(args.checkpoint, torch.float32)

    if args.check:
        ref = load_file(str(args.check / "reference.safetensors"))
        worst = 0.0
        k = 0
        while f"p{k}.input_ids" in ref:
            ids = ref[f"p{k}.input_ids"].tolist()
            got = prefill(model, ids)
            d = float((got - ref[f"p{k}.prefill_logits"]).abs().max())
            print(f"p{k} ({len(ids)} tokens): max |diff| prefill {d:.3e}")
            worst = max(worst, d)
            k += 1
        print(f"largest difference: {worst:.3e}")
        return

    if args.out is None:
        sys.exit("error: OUT_DIR missing")
    rng = np.random.default_rng(args.seed)
    vocab = cfg["vocab_size"]
    arrays, prompts = {}, []
    model64, _ = build_model(args.checkpoint, torch.float64)
    for k, n in enumerate(int(x) for x in args.lengths.split(",")):
        ids = [2] + rng.integers(3, vocab, size=n - 1).tolist()
        pre = prefill(model, ids)
        pre64 = prefill(model64, ids)
        first, gen, dec = sampler_decode(model, ids, args.gen)
        arrays[f"p{k}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
        arrays[f"p{k}.prefill_logits"] = pre.contiguous()
        arrays[f"p{k}.prefill_logits_f64"] = pre64.contiguous()
        arrays[f"p{k}.prefill_last_logits_cached"] = first.contiguous()
        arrays[f"p{k}.gen_tokens"] = torch.tensor(gen, dtype=torch.int64)
        arrays[f"p{k}.decode_logits"] = dec.contiguous()
        prompts.append({
            "length": n,
            "gen_tokens": gen,
            "max_abs_f32_vs_f64": float((pre.double() - pre64).abs().max()),
            "max_abs_cached_vs_prefill": float((first - pre[-1]).abs().max()),
            "largest_logit": float(pre.abs().max()),
        })
        print(f"p{k}: {n} tokens, f32 vs f64 {prompts[-1]['max_abs_f32_vs_f64']:.3e}, "
              f"cached vs prefill {prompts[-1]['max_abs_cached_vs_prefill']:.3e}")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(args.out / "reference.safetensors"))
    import recurrentgemma
    meta = {
        "generator": "scripts/official_reference.py",
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "recurrentgemma": "1.0.1"},
        "how": "official recurrentgemma.torch.Griffin, float32, CPU; prefill: one no-cache "
               "call; decode: no-cache call over ids[:-1], ids[-1] alone with the cache, then "
               "one call per greedy token (argmax); prefill_logits_f64: model.double()",
        "config": cfg,
        "seed": args.seed,
        "prompts": prompts,
    }
    (args.out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}/reference.safetensors and reference.json")


if __name__ == "__main__":
    main()
