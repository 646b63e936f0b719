#!/usr/bin/env python3
"""Greedy generation through the rgemma C API with ctypes (standard library only).

    python3 examples/python/simple.py MODEL.gguf "PROMPT" [N] [LOGITS_OUT]

PROMPT is text when the model has a tokenizer, else comma-separated token ids. Prints the
generated text (or ids). With LOGITS_OUT, writes the float32 logits used for each greedy
choice (N rows of n_vocab). The library is found through $RGEMMA_LIB, else
target/release/librgemma.so (or .dylib) next to this repository.
"""
import ctypes
import os
import sys
from ctypes import POINTER, c_bool, c_char_p, c_float, c_int32, c_size_t, c_uint8, c_void_p


def load_library():
    path = os.environ.get("RGEMMA_LIB")
    if not path:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        ext = "dylib" if sys.platform == "darwin" else "so"
        path = os.path.join(root, "target", "release", f"librgemma.{ext}")
    lib = ctypes.CDLL(path)
    sig = {
        "rg_last_error": (c_char_p, []),
        "rg_model_load": (c_void_p, [c_char_p, c_void_p]),
        "rg_model_free": (None, [c_void_p]),
        "rg_model_n_vocab": (c_int32, [c_void_p]),
        "rg_model_has_tokenizer": (c_bool, [c_void_p]),
        "rg_tokenize": (c_int32, [c_void_p, c_char_p, c_int32, POINTER(c_int32), c_int32, c_bool]),
        "rg_detokenize": (c_int32, [c_void_p, POINTER(c_int32), c_int32, c_char_p, c_int32, c_bool]),
        "rg_context_new": (c_void_p, [c_void_p, c_void_p]),
        "rg_context_free": (None, [c_void_p]),
        "rg_decode": (c_int32, [c_void_p, POINTER(c_int32), c_int32]),
        "rg_get_logits": (POINTER(c_float), [c_void_p]),
        "rg_state_size": (c_size_t, [c_void_p]),
        "rg_state_save": (c_int32, [c_void_p, POINTER(c_uint8), c_size_t]),
        "rg_state_load": (c_int32, [c_void_p, POINTER(c_uint8), c_size_t]),
        "rg_sampler_new": (c_void_p, [c_void_p]),
        "rg_sampler_sample": (c_int32, [c_void_p, c_void_p]),
        "rg_sampler_free": (None, [c_void_p]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class RgError(RuntimeError):
    pass


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    lib = load_library()

    def check(ok, what):
        if not ok:
            raise RgError(f"{what}: {lib.rg_last_error().decode()}")

    n_gen = int(argv[3]) if len(argv) > 3 else 16
    model = lib.rg_model_load(argv[1].encode(), None)
    check(model, "load")
    try:
        n_vocab = lib.rg_model_n_vocab(model)
        has_tok = lib.rg_model_has_tokenizer(model)
        if has_tok:
            text = argv[2].encode()
            buf = (c_int32 * (len(text) + 8))()
            n = lib.rg_tokenize(model, text, len(text), buf, len(buf), True)
            check(n >= 0, "tokenize")
            prompt = list(buf[:n])
        else:
            prompt = [int(x) for x in argv[2].split(",")]
        ctx = lib.rg_context_new(model, None)
        check(ctx, "context")
        greedy = lib.rg_sampler_new(None)
        check(greedy, "sampler")
        arr = (c_int32 * len(prompt))(*prompt)
        check(lib.rg_decode(ctx, arr, len(prompt)) == 0, "decode prompt")
        gen, rows = [], []
        for _ in range(n_gen):
            logits = lib.rg_get_logits(ctx)
            check(logits, "logits")
            rows.append(bytes(ctypes.string_at(logits, 4 * n_vocab)))
            t = lib.rg_sampler_sample(greedy, ctx)
            check(t >= 0, "sample")
            gen.append(t)
            one = (c_int32 * 1)(t)
            check(lib.rg_decode(ctx, one, 1) == 0, "decode")
        if has_tok:
            ids = (c_int32 * len(gen))(*gen)
            out = ctypes.create_string_buffer(1 << 16)
            n = lib.rg_detokenize(model, ids, len(gen), out, len(out), False)
            check(n >= 0, "detokenize")
            print(out.value.decode("utf-8", errors="replace"))
        else:
            print(",".join(map(str, gen)))
        if len(argv) > 4:
            with open(argv[4], "wb") as f:
                f.write(b"".join(rows))
        lib.rg_sampler_free(greedy)
        lib.rg_context_free(ctx)
    finally:
        lib.rg_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
