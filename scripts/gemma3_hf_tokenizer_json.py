#!/usr/bin/env python3
"""Builds a Hugging Face tokenizer.json for the Gemma 3 vocabulary from the tokenizer.ggml.*
arrays of a GGUF, with only `gguf` and `tokenizers` (the fixture README's way needs
transformers + torch). It has the structure transformers gives (BPE with byte fallback, merges =
every split of every normal piece ranked by piece score, normalizer Replace(" " -> "▁"),
control pieces as special added tokens, user-defined pieces as plain added tokens, decoder
Replace + ByteFallback + Fuse, <bos> post-processor), so tests/tokenizer_reference.rs can run
rgemma's tokenizer.huggingface.json path at full scale:

    .venv/bin/python scripts/gemma3_hf_tokenizer_json.py target/gemma3/gemma-3-270m-q4_k_m.gguf \
        target/gemma3/tokenizer.json
    RG_GEMMA3_GGUF=... RG_GEMMA3_HF_JSON=target/gemma3/tokenizer.json \
        cargo test --release --test tokenizer_reference
"""

import sys

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6


def field_values(reader, key):
    field = reader.fields[key]
    return [field.parts[i] for i in field.data]


def main(gguf_path, out_path):
    reader = GGUFReader(gguf_path)
    tokens = [bytes(p).decode("utf-8") for p in field_values(reader, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field_values(reader, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field_values(reader, "tokenizer.ggml.token_type")]
    bos = int(reader.fields["tokenizer.ggml.bos_token_id"].parts[-1][0])

    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    normal = {t for t, ty in zip(tokens, types) if ty == NORMAL}
    merges = []
    for t in normal:
        for cut in range(1, len(t)):
            left, right = t[:cut], t[cut:]
            if left in normal and right in normal:
                merges.append((left, right))
    merges.sort(key=lambda m: (-scores[vocab[m[0] + m[1]]], vocab[m[0]], vocab[m[1]]))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokens[3], byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A", special_tokens=[(tokens[bos], bos)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    tok.save(out_path)
    print(f"wrote {out_path}: {len(tokens)} tokens, {len(merges)} merges")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
