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

With `--spm OUT.model` it also writes SentencePiece's tokenizer.model for the vocabulary (a
`ModelProto` in Gemma's configuration: BPE with byte fallback, identity normalizer without a
dummy prefix, whitespace escaped to "▁", digits split), encoded by hand in protobuf's wire format
so that no protobuf package is needed. Google's `sentencepiece` library (0.2.x) loads it and
gives the ids of tests/fixtures/tokenizer for the 38 reference texts without special tokens in
them (it never parses `<start_of_turn>` or `<bos>` out of text; the reference ids do);
tests/convert_tokenizer.rs converts a checkpoint folder that has only this file.
"""

import struct
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


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, data):
    return varint(number << 3 | 2) + varint(len(data)) + data


def field_float(number, value):
    return varint(number << 3 | 5) + struct.pack("<f", value)


def write_spm(gguf_path, out_path):
    """SentencePiece's ModelProto (field numbers of sentencepiece_model.proto)."""
    reader = GGUFReader(gguf_path)
    tokens = [bytes(p) for p in field_values(reader, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field_values(reader, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field_values(reader, "tokenizer.ggml.token_type")]
    ids = {k: int(reader.fields[f"tokenizer.ggml.{k}_token_id"].parts[-1][0])
           for k in ("bos", "eos", "unknown", "padding")}
    out = bytearray()
    for piece, score, kind in zip(tokens, scores, types):
        # SentencePiece's piece types are llama.cpp's token types (1 normal ... 6 byte). A GGUF
        # holds user-defined pieces pre-normalized (llama.cpp's converter turns "▁" into " ");
        # SentencePiece matches them after escaping whitespace, so they go back to "▁" here.
        if kind == USER_DEFINED:
            piece = piece.replace(b" ", "\u2581".encode())
        body = field_bytes(1, piece) + field_float(2, score) + field_varint(3, kind)
        out += field_bytes(1, body)
    trainer = (
        field_varint(3, 2)  # model_type: BPE
        + field_varint(4, len(tokens))  # vocab_size
        + field_varint(25, 1)  # split_digits
        + field_varint(26, 1)  # allow_whitespace_only_pieces
        + field_varint(35, 1)  # byte_fallback
        + field_varint(40, ids["unknown"])
        + field_varint(41, ids["bos"])
        + field_varint(42, ids["eos"])
        + field_varint(43, ids["padding"])
    )
    out += field_bytes(2, trainer)
    normalizer = (
        field_bytes(1, b"identity")
        + field_varint(3, 0)  # add_dummy_prefix
        + field_varint(4, 0)  # remove_extra_whitespaces
        + field_varint(5, 1)  # escape_whitespaces
    )
    out += field_bytes(3, normalizer)
    with open(out_path, "wb") as f:
        f.write(out)
    print(f"wrote {out_path}: {len(tokens)} pieces, {len(out)} bytes")


if __name__ == "__main__":
    argv = sys.argv[1:]
    spm_out = None
    if "--spm" in argv:
        i = argv.index("--spm")
        spm_out = argv[i + 1]
        del argv[i : i + 2]
    if len(argv) != 2:
        sys.exit(__doc__)
    main(argv[0], argv[1])
    if spm_out:
        write_spm(argv[0], spm_out)
