#!/usr/bin/env python3
"""Several continuations of one prompt, decoded together through the rgemma C API (ctypes).

    python3 examples/python/parallel.py MODEL.gguf "PROMPT" [N_SEQ] [N_GEN] [SEED]

The same program as examples/c/parallel.c: the prompt is decoded once in sequence 0, forked
into N_SEQ sequences (default 4) with rg_seq_copy, and each step decodes the next token of
every running sequence in one rg_decode_batch call; sequence i samples with seed SEED + i
(llama.cpp's default chain). A sequence stops after N_GEN tokens (default 32) or at an
end-of-generation token (not printed). Prints, for each sequence i in order,
"=== sequence i ===" and its continuation (text, or comma-separated ids without a
tokenizer). The library is found as in simple.py ($RGEMMA_LIB or target/release).
"""
import ctypes
import os
import sys
from ctypes import POINTER, Structure, c_bool, c_int8, c_int32, c_void_p

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simple import RgError, load_library  # noqa: E402


class RgBatch(Structure):
    """rg_batch: the arrays of rg_batch_init belong to the library until rg_batch_free."""

    _fields_ = [
        ("n_tokens", c_int32),
        ("token", POINTER(c_int32)),
        ("seq_id", POINTER(c_int32)),
        ("logits", POINTER(c_int8)),
    ]


class RgContextParams(Structure):
    _fields_ = [
        ("n_batch", c_int32),
        ("n_threads", c_int32),
        ("n_seq_max", c_int32),
        ("kv_type", c_int32),
    ]


class RgSamplerParams(Structure):
    _fields_ = [
        ("temp", ctypes.c_float),
        ("top_k", c_int32),
        ("top_p", ctypes.c_float),
        ("min_p", ctypes.c_float),
        ("repeat_penalty", ctypes.c_float),
        ("repeat_last_n", c_int32),
        ("seed", ctypes.c_uint32),
    ]


def load_parallel_library():
    lib = load_library()
    sig = {
        "rg_context_default_params": (RgContextParams, []),
        "rg_context_new": (c_void_p, [c_void_p, POINTER(RgContextParams)]),
        "rg_sampler_default_params": (RgSamplerParams, []),
        "rg_sampler_new": (c_void_p, [POINTER(RgSamplerParams)]),
        "rg_sampler_sample_seq": (c_int32, [c_void_p, c_void_p, c_int32]),
        "rg_seq_copy": (c_int32, [c_void_p, c_int32, c_int32]),
        "rg_batch_init": (RgBatch, [c_int32]),
        "rg_batch_free": (None, [RgBatch]),
        "rg_decode_batch": (c_int32, [c_void_p, RgBatch]),
        "rg_token_is_eog": (c_bool, [c_void_p, c_int32]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    n_seq = int(argv[3]) if len(argv) > 3 else 4
    n_gen = int(argv[4]) if len(argv) > 4 else 32
    seed = int(argv[5]) if len(argv) > 5 else 1
    if n_seq < 1 or n_gen < 1:
        print("error: N_SEQ and N_GEN must be positive", file=sys.stderr)
        return 2
    lib = load_parallel_library()

    def check(ok, what):
        if not ok:
            raise RgError(f"{what}: {lib.rg_last_error().decode()}")

    model = lib.rg_model_load(argv[1].encode(), None)
    check(model, "load")
    ctx, samplers, batch = None, [], None
    try:
        has_tok = lib.rg_model_has_tokenizer(model)
        if has_tok:
            text = argv[2].encode()
            buf = (c_int32 * (len(text) + 8))()
            n = lib.rg_tokenize(model, text, len(text), buf, len(buf), True)
            check(n >= 0, "tokenize")
            prompt = list(buf[:n])
        else:
            prompt = [int(x) for x in argv[2].split(",")]

        params = lib.rg_context_default_params()
        params.n_seq_max = n_seq
        ctx = lib.rg_context_new(model, ctypes.byref(params))
        check(ctx, "context")
        # The prompt once, in sequence 0; then forks (state, position and logits copied).
        arr = (c_int32 * len(prompt))(*prompt)
        check(lib.rg_decode(ctx, arr, len(prompt)) == 0, "decode prompt")
        for i in range(1, n_seq):
            check(lib.rg_seq_copy(ctx, 0, i) == 0, "fork")
        for i in range(n_seq):
            sp = lib.rg_sampler_default_params()
            sp.seed = seed + i
            samplers.append(lib.rg_sampler_new(ctypes.byref(sp)))
            check(samplers[-1], "sampler")

        batch = lib.rg_batch_init(n_seq)
        check(batch.token, "batch")
        gen = [[] for _ in range(n_seq)]
        running = [True] * n_seq
        for step in range(n_gen):
            batch.n_tokens = 0
            for i in range(n_seq):
                if not running[i]:
                    continue
                t = lib.rg_sampler_sample_seq(samplers[i], ctx, i)
                check(t >= 0, "sample")
                if lib.rg_token_is_eog(model, t):
                    running[i] = False
                    continue
                gen[i].append(t)
                if step + 1 == n_gen:
                    continue  # the last token need not be decoded
                row = batch.n_tokens
                batch.token[row], batch.seq_id[row], batch.logits[row] = t, i, 1
                batch.n_tokens += 1
            if batch.n_tokens == 0:
                break
            check(lib.rg_decode_batch(ctx, batch) == 0, "decode batch")

        for i, ids in enumerate(gen):
            print(f"=== sequence {i} ===")
            if has_tok:
                out = ctypes.create_string_buffer(1 << 16)
                if ids:
                    arr = (c_int32 * len(ids))(*ids)
                    n = lib.rg_detokenize(model, arr, len(ids), out, len(out), False)
                    check(n >= 0, "detokenize")
                print(out.value.decode("utf-8", errors="replace"))
            else:
                print(",".join(map(str, ids)))
    finally:
        if batch is not None:
            lib.rg_batch_free(batch)
        for s in samplers:
            lib.rg_sampler_free(s)
        if ctx:
            lib.rg_context_free(ctx)
        lib.rg_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
