#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer-tiny-hf/: a small Gemma-style tokenizer.json and the ids the
Hugging Face `tokenizers` library gives for a set of texts (tests/tokenizer_hf.rs checks both of
rgemma's tokenizer paths against them).

The tokenizer mirrors the structure of Gemma's (as transformers builds it from a GGUF): a BPE
model with byte fallback whose merges are every split of every piece, ranked by piece score;
normalizer Replace(" " -> "▁"); control tokens (<bos>, <start_of_turn>, ...) as special added
tokens; user-defined pieces ("\\n", "\\n\\n", runs of spaces, "<b>") as non-special added tokens;
decoder Replace("▁" -> " "), ByteFallback, Fuse; post-processor prepending <bos>.
The same vocabulary is also written as llama.cpp-style `tokenizer.ggml.*` arrays (whitespace
pieces spelled with spaces, as in llama.cpp's Gemma GGUFs) so the test can build both kinds of
GGUF.

Usage: .venv/bin/python scripts/make_tiny_tokenizer_fixture.py   (needs `tokenizers`, see
scripts/requirements-dev.txt)
"""

import json
import os

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer-tiny-hf")

CONTROL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
# HF spelling (▁ for spaces) -> the spelling in tokenizer.ggml.tokens.
USER_DEFINED = {"\n": "\n", "\n\n": "\n\n", "▁▁": "  ", "▁▁▁": "   ", "<b>": "<b>"}
BYTES = [f"<0x{b:02X}>" for b in range(256)]
# Normal pieces, highest score first. Characters not listed (tab, é, CJK, emoji) fall back to
# bytes. Some pieces can be built in several ways (▁the = ▁t+he = ▁th+e), some not at all
# from these pieces.
CHARS = list("▁abcdefghijklmnopqrstuvwxyzHTW.,!?<>_'0123456789")
MERGED = [
    "he", "▁t", "▁th", "▁the", "ll", "llo", "hello", "▁hello", "▁w", "or", "▁wor", "ld",
    "▁world", "in", "ing", "▁s", "er", "us", "user", "▁user", "model", "es", "▁sp", "ac",
    "▁spac", "▁spaces", "li", "ne", "line", "▁a", "an", "▁an", "nd", "▁and", "of", "_of",
    "tu", "rn", "turn", "st", "ar", "start", "en", "end", "Th", "The", "He", "Hello", "12",
    "123", "Wor",
]
TEXTS = [
    "hello world",
    "Hello the world",
    "The user said hello",
    "  leading spaces and trailing  ",
    "spaces   between    words",
    "line\n\nbreak\nand\n\n\nmore",
    "tab\there",
    "café 日本 🤖!",
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "<bos>x<eos>",
    "<b>bold</b> <start_of_turn",
    "123123 12 3",
    "",
    " ",
    "zzz qqq",
]


def main():
    pieces = CONTROL + list(USER_DEFINED) + BYTES + CHARS + MERGED
    assert len(set(pieces)) == len(pieces), "duplicate piece"
    vocab = {p: i for i, p in enumerate(pieces)}
    first_normal = len(CONTROL) + len(USER_DEFINED) + len(BYTES)
    # Score: higher for earlier normal pieces (sentencepiece BPE convention: -rank).
    score = {p: (-float(i - first_normal) if i >= first_normal else 0.0) for i, p in enumerate(pieces)}
    normal = pieces[first_normal:]
    merges = []
    for p in normal:
        for cut in range(1, len(p)):
            left, right = p[:cut], p[cut:]
            if left in vocab and right in vocab and left in normal and right in normal:
                merges.append((left, right))
    merges.sort(key=lambda m: (-score[m[0] + m[1]], vocab[m[0]], vocab[m[1]]))

    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in CONTROL])
    tok.add_tokens([AddedToken(p, special=False, normalized=("▁" in p)) for p in USER_DEFINED])
    assert tok.get_vocab_size(with_added_tokens=True) == len(pieces)

    cases = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_with_bos = tok.encode(text).ids
        tok.encode_special_tokens = True
        ids_split_special = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        cases.append({
            "text": text,
            "ids": ids,
            "ids_with_bos": ids_with_bos,
            "ids_split_special": ids_split_special,
            "tokens": [tok.id_to_token(i) for i in ids],
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_with_bos_skip_special": tok.decode(ids_with_bos, skip_special_tokens=True),
        })

    types = [3] * len(CONTROL) + [4] * len(USER_DEFINED) + [6] * len(BYTES) + [1] * len(normal)
    ggml_tokens = CONTROL + list(USER_DEFINED.values()) + BYTES + normal
    expected = {
        "generator": "scripts/make_tiny_tokenizer_fixture.py",
        "tokenizers_version": tokenizers.__version__,
        "ggml": {
            "tokens": ggml_tokens,
            "scores": [score[p] for p in pieces],
            "token_type": types,
            "bos_token_id": vocab["<bos>"],
            "eos_token_id": vocab["<eos>"],
            "unknown_token_id": vocab["<unk>"],
            "padding_token_id": vocab["<pad>"],
        },
        "cases": cases,
    }
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(pieces)} pieces, {len(merges)} merges, {len(cases)} texts")


if __name__ == "__main__":
    main()
