#!/usr/bin/env python3
"""Write tests/fixtures/tokenizer-tiny-spm/: a 512-piece SentencePiece BPE model in Gemma's
configuration (byte fallback, identity normalization, no dummy prefix, whitespace kept, digits
split, <start_of_turn> / <end_of_turn> as user-defined pieces, ids 0..3 = <pad> <eos> <bos>
<unk>), trained on the bundled model's held-out text, and the ids Google's `sentencepiece`
library gives for a set of texts (expected.json). tests/convert_tokenizer.rs converts a
checkpoint folder that has only this tokenizer.model and checks rgemma's encoder against them.

    pip install sentencepiece==0.2.3
    python scripts/make_spm_tokenizer_fixture.py
"""

import json
import os
import sys

import sentencepiece as spm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer-tiny-spm")
TEXTS = [
    "Hello there, the world is a strange place.",
    "You will meet a tall, dark stranger.",
    "  two  spaces, a\ttab and\nnew lines\n\n",
    "Numbers: 0123456789 and 3.14159, 1,000,000.",
    "<start_of_turn>user\nWhat is my fortune?<end_of_turn>\n<start_of_turn>model\n",
    "Ünïcödé, naïve café, straße, Привет, 你好, 🦀 and \u00a0 spaces.",
    "Bytes only: \ue000\U0010fffd",
    "",
    " leading space",
    "trailing space ",
]


def main():
    os.makedirs(OUT, exist_ok=True)
    corpus = os.path.join(ROOT, "models", "tiny-fortunes", "heldout.txt")
    prefix = os.path.join(OUT, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=prefix,
        model_type="bpe",
        vocab_size=512,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        character_coverage=1.0,
        minloglevel=2,
    )
    os.remove(prefix + ".vocab")
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    cases = [{"text": t, "ids": sp.encode(t)} for t in TEXTS]
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"sentencepiece": spm.__version__, "vocab_size": sp.get_piece_size(),
                   "cases": cases}, f, ensure_ascii=False, indent=1)
    print(f"wrote {OUT}: {sp.get_piece_size()} pieces, {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
