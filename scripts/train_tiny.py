#!/usr/bin/env python3
"""Train tiny-fortunes: a small real RecurrentGemma (Griffin) on the fortunes corpus, on CPU.

Run scripts/prepare_corpus.py first (it writes target/tiny-fortunes-data/{train,heldout}.txt and tokenizer.json).

    nice -n 19 .venv/bin/python scripts/train_tiny.py            # train, export, write the reference
    .venv/bin/python scripts/train_tiny.py --export-only          # export the last checkpoint again

Model: Hugging Face transformers' RecurrentGemmaForCausalLM (the RecurrentGemma architecture), see CONFIG.
Hyperparameters (defaults; all on the command line):
  - sequence: <bos> + 255 corpus tokens (seq len 256 = attention window 256, so HF's W-key window and the
    official W+1-key window never differ during training); half the sequences start at a quote, half at a
    uniformly random token;
  - batch 16 sequences (4096 tokens) per step, AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on the
    2-D weights, none on norms/biases/gates' biases/recurrent_param), gradient clipping at 1.0;
  - learning rate: linear warm-up over 100 steps to 3e-3, cosine decay to 3e-4 at the last step;
  - 900 steps (3.7 M tokens, about 4.2 passes over the 0.87 M train tokens);
  - seed 1234 (torch and numpy), float32, torch.set_num_threads(1): on the shared 2-core machine at
    nice 19 one thread measured 3 s/step, two threads 4-11 s/step (every small op waits at an OpenMP
    barrier for the other core, which the compilers hold).
Outputs:
  - target/tiny-fortunes-ckpt/ckpt.pt: checkpoint every --ckpt-every steps (resume with --resume);
  - models/tiny-fortunes/loss.csv: step, lr, train loss (mean over the log interval), held-out loss
    (first 32 held-out sequences, every --eval-every steps; the whole held-out text at the end);
  - target/tiny-fortunes-hf/: the HF checkpoint (config.json, model.safetensors f32, generation_config.json,
    tokenizer.json, tokenizer_config.json with the Gemma chat template, special_tokens_map.json);
  - models/tiny-fortunes/reference_logits.safetensors: torch float32 logits of a 64-token held-out passage
    (<bos> + the first 63 held-out tokens): `input_ids` i64 [64], `logits` f32 [64, vocab] (after the soft-cap);
    64 < window 256, so the HF forward used here equals the official W+1-key semantics;
  - models/tiny-fortunes/reference.json: HF greedy continuation (32 tokens, with top-1 margins) of
    "The meaning of life is", and the llama.cpp-style perplexity of the first 4 chunks of 128 tokens of
    heldout.txt, both computed by torch in float32 (sequences shorter than the window);
  - models/tiny-fortunes/train_summary.json: config, hyperparameters, steps, final losses, timing.
"""

import argparse
import json
import math
import os
import shutil
import time

import numpy as np
import torch

BOS, EOS, PAD = 2, 1, 0

CONFIG = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=512,  # HF convention: 2 x MLP branch width (256)
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=64,
    lru_width=256,
    attention_window_size=256,
    conv1d_width=4,
    logits_soft_cap=30.0,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    partial_rotary_factor=0.5,
    block_types=["recurrent", "recurrent", "attention"],
    hidden_activation="gelu_pytorch_tanh",
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=PAD,
    tie_word_embeddings=True,
    final_w_init_variance_scale=2.0 / 6,
    embeddings_scale_by_sqrt_dim=True,
)

# Gemma's chat template (turns <start_of_turn>{user|model}\n...<end_of_turn>\n, no system role).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="target/tiny-fortunes-data")
    ap.add_argument("--ckpt-dir", default="target/tiny-fortunes-ckpt")
    ap.add_argument("--hf-out", default="target/tiny-fortunes-hf")
    ap.add_argument("--models", default="models/tiny-fortunes")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true", help="export the last checkpoint, no training")
    ap.add_argument("--stop-at", type=int, default=0, help="stop (checkpoint + export) after this step")
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many steps, then exit")
    return ap.parse_args()


def lr_at(step, args):
    """Linear warm-up to --lr, then cosine to --min-lr at --steps. `step` counts from 0."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * frac))


def load_tokens(tok, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ids = np.array(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    # Quote starts: the token after each "%\n" separator (and position 0).
    sep = tok.encode("\n%\n", add_special_tokens=False).ids
    starts = [0]
    n = len(sep)
    for i in range(len(ids) - n):
        if ids[i] == sep[0] and list(ids[i : i + n]) == sep:
            starts.append(i + n)
    return ids, np.array(starts, dtype=np.int64)


def sample_batch(rng, ids, starts, batch, seq):
    body = seq - 1
    out = np.empty((batch, seq), dtype=np.int64)
    out[:, 0] = BOS
    for b in range(batch):
        if rng.random() < 0.5:
            s = int(starts[rng.integers(0, len(starts))])
            s = min(s, len(ids) - body)
        else:
            s = int(rng.integers(0, len(ids) - body))
        out[b, 1:] = ids[s : s + body]
    return torch.from_numpy(out)


def heldout_batches(ids, seq, limit=None):
    """Consecutive non-overlapping <bos> + (seq-1) token windows of the held-out text."""
    body = seq - 1
    n = (len(ids) - 1) // body
    if limit:
        n = min(n, limit)
    rows = np.empty((n, seq), dtype=np.int64)
    rows[:, 0] = BOS
    for i in range(n):
        rows[i, 1:] = ids[i * body : (i + 1) * body]
    return torch.from_numpy(rows)


@torch.no_grad()
def heldout_loss(model, rows, batch=16):
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        x = rows[i : i + batch]
        logits = model(input_ids=x, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += nll.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


def fast_rnn_scan(self, hidden_states, recurrent_gate, reset, recurrent_states, acc_dtype=torch.float32):
    """Same recurrence and arithmetic as transformers' RecurrentGemmaRglru._rnn_scan (no-cache path:
    h_t = a_t * h_{t-1} + x_t in f32, a zeroed at resets), but reads the time steps with unbind and writes
    them with stack: HF's per-step `x[:, t]` reads and `out[:, t] = h` writes make backward allocate and
    add a full-size zero tensor per step (O(T^2)), about 20 s per training step here. Used for training
    only; the reference logits are computed by the unpatched HF code."""
    assert recurrent_states is None and hidden_states.shape[1] > 1
    recurrent_gate = recurrent_gate * ~reset
    h = torch.zeros(hidden_states[:, 0].shape, dtype=acc_dtype, device=hidden_states.device)
    outs = []
    for a_t, x_t in zip(recurrent_gate.type(acc_dtype).unbind(1), hidden_states.type(acc_dtype).unbind(1)):
        h = a_t * h + x_t
        outs.append(h)
    return torch.stack(outs, 1).type(hidden_states.dtype), h


def set_fast_scan(enabled):
    from transformers.models.recurrent_gemma import modeling_recurrent_gemma as m

    if not hasattr(m.RecurrentGemmaRglru, "_hf_rnn_scan"):
        m.RecurrentGemmaRglru._hf_rnn_scan = m.RecurrentGemmaRglru._rnn_scan
    m.RecurrentGemmaRglru._rnn_scan = fast_rnn_scan if enabled else m.RecurrentGemmaRglru._hf_rnn_scan


def check_fast_scan(model):
    """The patched scan must give the HF scan's logits (same math, same order) on a random batch."""
    x = torch.randint(3, CONFIG["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        set_fast_scan(False)
        ref = model(input_ids=x, use_cache=False).logits
        set_fast_scan(True)
        got = model(input_ids=x, use_cache=False).logits
    diff = (ref - got).abs().max().item()
    assert diff <= 1e-6, diff
    return diff


def build_model(seed):
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    torch.manual_seed(seed)
    config = RecurrentGemmaConfig(**CONFIG)
    model = RecurrentGemmaForCausalLM(config).float()
    return model


def make_optimizer(model, args):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "gate_weight" not in name else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def export(model, tok_path, args, summary):
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast

    model.eval()
    os.makedirs(args.hf_out, exist_ok=True)
    model.generation_config.bos_token_id = BOS
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    model.save_pretrained(args.hf_out, safe_serialization=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_file=tok_path,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(args.hf_out)
    # Ship the trained tokenizer.json byte for byte, and keep the chat template and BOS flag in
    # tokenizer_config.json too (transformers 5 writes the template to chat_template.jinja only).
    shutil.copyfile(tok_path, os.path.join(args.hf_out, "tokenizer.json"))
    cfg_path = os.path.join(args.hf_out, "tokenizer_config.json")
    with open(cfg_path) as f:
        tok_cfg = json.load(f)
    tok_cfg.update(chat_template=CHAT_TEMPLATE, add_bos_token=True, add_eos_token=False)
    with open(cfg_path, "w") as f:
        json.dump(tok_cfg, f, indent=2)

    # Reference logits of a held-out passage, no cache, float32.
    from tokenizers import Tokenizer

    raw_tok = Tokenizer.from_file(tok_path)
    with open(os.path.join(args.data, "heldout.txt"), encoding="utf-8") as f:
        held = f.read()
    ids = [BOS] + raw_tok.encode(held, add_special_tokens=False).ids[:63]
    x = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=x, use_cache=False).logits[0].float().contiguous()
    os.makedirs(args.models, exist_ok=True)
    save_file(
        {"input_ids": x[0].clone(), "logits": logits},
        os.path.join(args.models, "reference_logits.safetensors"),
        metadata={
            "what": "torch float32 logits (after the 30*tanh(x/30) soft-cap) of <bos> + the first 63 tokens "
            "of heldout.txt, one no-cache forward of transformers RecurrentGemmaForCausalLM with the trained "
            "weights; 64 positions < window 256, so HF and official window rules coincide",
            "text": raw_tok.decode(ids[1:]),
        },
    )
    summary["reference_passage"] = raw_tok.decode(ids[1:])

    # Greedy continuation and a small perplexity run, both by the HF model (no cache, float32),
    # for the Rust tests. Every sequence here is shorter than the window (256).
    ref = {"window_note": "all sequences < attention_window_size 256: HF and official window rules coincide"}
    prompt = "The meaning of life is"
    gen = [BOS] + raw_tok.encode(prompt, add_special_tokens=False).ids
    n_prompt, margins = len(gen), []
    with torch.no_grad():
        for _ in range(32):
            last = model(input_ids=torch.tensor([gen]), use_cache=False).logits[0, -1].float()
            top = torch.topk(last, 2)
            margins.append(float(top.values[0] - top.values[1]))
            gen.append(int(top.indices[0]))
    ref["greedy"] = {"prompt": prompt, "prompt_ids": gen[:n_prompt], "gen_ids": gen[n_prompt:],
                     "gen_text": raw_tok.decode(gen[n_prompt:]), "margins": margins}
    # llama.cpp-style perplexity: tokens = <bos> + text, chunks of n_ctx with the first token set to
    # <bos>, logits at positions n_ctx/2 ..= n_ctx-2 scored against the next token.
    n_ctx, n_chunks = 128, 4
    toks = [BOS] + raw_tok.encode(held, add_special_tokens=False).ids
    nll = []
    with torch.no_grad():
        for c in range(n_chunks):
            chunk = toks[c * n_ctx : (c + 1) * n_ctx]
            chunk[0] = BOS
            lp = torch.log_softmax(model(input_ids=torch.tensor([chunk]), use_cache=False).logits[0].double(), -1)
            for j in range(n_ctx // 2, n_ctx - 1):
                nll.append(-float(lp[j, chunk[j + 1]]))
    nll = np.array(nll)
    ref["perplexity"] = {"file": "models/tiny-fortunes/heldout.txt", "n_ctx": n_ctx, "n_chunks": n_chunks,
                         "n_scored": int(len(nll)), "ppl": float(np.exp(nll.mean())),
                         "ppl_se": float(np.exp(nll.mean()) * nll.std() / np.sqrt(len(nll) - 1))}
    with open(os.path.join(args.models, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    summary["reference"] = ref
    with open(os.path.join(args.models, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"exported to {args.hf_out} and {args.models}", flush=True)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    from tokenizers import Tokenizer

    tok_path = os.path.join(args.data, "tokenizer.json")
    tok = Tokenizer.from_file(tok_path)
    assert tok.get_vocab_size() == CONFIG["vocab_size"], tok.get_vocab_size()
    train_ids, train_starts = load_tokens(tok, os.path.join(args.data, "train.txt"))
    held_ids, _ = load_tokens(tok, os.path.join(args.data, "heldout.txt"))
    held_rows_small = heldout_batches(held_ids, args.seq, limit=32)
    held_rows_all = heldout_batches(held_ids, args.seq)

    model = build_model(args.seed)
    print(f"fast scan vs HF scan: max |diff| {check_fast_scan(model):.2e}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params} ({n_params * 4 / 1e6:.2f} MB f32); train tokens {len(train_ids)}; "
          f"held-out tokens {len(held_ids)}", flush=True)
    opt = make_optimizer(model, args)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.ckpt_dir, exist_ok=True)
    os.makedirs(args.models, exist_ok=True)
    ckpt_path = os.path.join(args.ckpt_dir, "ckpt.pt")
    csv_path = os.path.join(args.models, "loss.csv")
    step0, elapsed0, history = 0, 0.0, []
    if args.resume or args.export_only:
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        step0, elapsed0, history = ck["step"], ck["elapsed"], ck["history"]
        print(f"resumed at step {step0}", flush=True)

    summary = {
        "config": CONFIG,
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("resume", "export_only")},
        "params": n_params,
        "train_tokens": int(len(train_ids)),
        "heldout_tokens": int(len(held_ids)),
        "torch": torch.__version__,
    }

    def write_csv():
        with open(csv_path, "w") as f:
            f.write("step,lr,train_loss,heldout_loss,elapsed_s\n")
            for h in history:
                hl = "" if h["heldout_loss"] is None else f"{h['heldout_loss']:.4f}"
                f.write(f"{h['step']},{h['lr']:.6g},{h['train_loss']:.4f},{hl},{h['elapsed']:.0f}\n")

    def save_ckpt(step, elapsed):
        tmp = ckpt_path + ".tmp"
        torch.save(
            {"model": model.state_dict(), "opt": opt.state_dict(), "rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed, "history": history},
            tmp,
        )
        os.replace(tmp, ckpt_path)

    if not args.export_only:
        model.train()
        t_start = time.time() - elapsed0
        acc, acc_n = 0.0, 0
        end = args.steps if not args.stop_at else min(args.steps, args.stop_at)
        for step in range(step0, end):
            lr = lr_at(step, args)
            for g in opt.param_groups:
                g["lr"] = lr
            x = sample_batch(rng, train_ids, train_starts, args.batch, args.seq)
            t0 = time.time()
            out = model(input_ids=x, labels=x, use_cache=False)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            acc += out.loss.item()
            acc_n += 1
            if args.time_steps:
                print(f"step {step} loss {out.loss.item():.3f} {time.time() - t0:.2f}s", flush=True)
                if step + 1 - step0 >= args.time_steps:
                    return
                continue
            done = step + 1
            if done % args.log_every == 0 or done == end:
                hl = heldout_loss(model, held_rows_small) if (done % args.eval_every == 0 or done == end) else None
                history.append({"step": done, "lr": lr, "train_loss": acc / acc_n, "heldout_loss": hl,
                                "elapsed": time.time() - t_start})
                print(f"step {done}/{args.steps} lr {lr:.2e} train {acc / acc_n:.4f}"
                      + (f" heldout32 {hl:.4f}" if hl is not None else "")
                      + f" {time.time() - t_start:.0f}s", flush=True)
                acc, acc_n = 0.0, 0
                write_csv()
            if done % args.ckpt_every == 0 or done == end:
                save_ckpt(done, time.time() - t_start)
        step0 = end

    set_fast_scan(False)  # everything below runs the pristine HF code
    full = heldout_loss(model, held_rows_all)
    last_train = [h["train_loss"] for h in history[-10:]]
    summary.update(
        steps_done=step0,
        elapsed_s=round(history[-1]["elapsed"]) if history else 0,
        final_train_loss_mean_last_100_steps=float(np.mean(last_train)) if last_train else None,
        final_heldout_loss=full,
        final_heldout_ppl_seq256=math.exp(full),
        heldout_eval="all non-overlapping <bos>+255-token windows of heldout.txt, every position scored",
    )
    print(f"final held-out loss {full:.4f} (ppl {math.exp(full):.2f}) over {len(held_rows_all)} windows", flush=True)
    write_csv()
    export(model, tok_path, args, summary)


if __name__ == "__main__":
    main()
