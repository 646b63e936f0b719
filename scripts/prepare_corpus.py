#!/usr/bin/env python3
"""Build the tiny-fortunes corpus and its BPE tokenizer.

Corpus: the English fortune cookies of Debian's `fortunes` package (BSD licence, see models/README.md),
read from /usr/share/games/fortunes (`apt-get install -y fortunes`). A few files are left out: `ascii-art`
(pictures, not prose), `ethnic` and `men-women` (stereotype jokes), `translate-me` and `pratchett` (a dozen
entries of other languages / a single quote). The offensive collection (`fortunes-off`) is never used.

Split: every quote (the text between `%` lines) goes to held-out when crc32("<file>/<index>") % 20 == 0,
else to train: about 95/5, deterministic and independent of file order.

Both splits are written in the fortune file format itself, quotes separated by a line `%`, so the model
learns that separator and the held-out file can be scored as plain text.

Tokenizer: SentencePiece-like BPE trained with the Python `tokenizers` library on the train split:
  - normalizer Replace(" " -> "▁"); no pre-tokenizer at run time (like Gemma's tokenizer.json);
  - BPE with byte_fallback (the 256 pieces <0x00>..<0xFF> are in the vocabulary) and fuse_unk;
  - ids: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <start_of_turn>=4 <end_of_turn>=5, <0x00>..<0xFF> = 6..261,
    then the learned alphabet and merges in training order (so a piece's id grows with its merge rank);
  - post-processor "<bos> $A"; decoder Replace("▁" -> " "), ByteFallback, Fuse (reverses the normalizer).
During training a pre-tokenizer splits before every "▁" and around every "\n", so no learned piece spans a
word boundary or a newline; the script then checks that dropping that pre-tokenizer (the shipped form) gives
identical ids on the whole corpus, and that every quote round-trips (decode(encode(x)) == x).

Usage: python scripts/prepare_corpus.py [--src /usr/share/games/fortunes] [--out target/tiny-fortunes-data]
       [--models models/tiny-fortunes] [--vocab 2048] [--split-only]
(--split-only: only the two text files under OUT, e.g. the calibration text of scripts/imatrix_quality.sh.)
Writes: OUT/train.txt, OUT/heldout.txt, OUT/tokenizer.json, MODELS/heldout.txt, MODELS/tokenizer.json.
"""

import argparse
import json
import os
import re
import sys
import zlib

EXCLUDED = {"ascii-art", "ethnic", "men-women", "translate-me", "pratchett"}
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]


def read_quotes(src):
    """Returns [(file, index, text)] of every non-empty quote, in sorted file order."""
    quotes = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if name.endswith((".dat", ".u8")) or name in EXCLUDED or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            raw = f.read().decode("utf-8", errors="replace")
        # Overstrike sequences (X\bY, used for underlining) keep the final glyph; other control characters
        # except tab and newline are dropped.
        raw = re.sub(r".\x08", "", raw)
        raw = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", raw)
        for index, quote in enumerate(re.split(r"\n%\n", raw)):
            quote = quote.strip("\n").rstrip()
            if quote.strip() and quote != "%":
                quotes.append((name, index, quote))
    return quotes


def is_heldout(name, index):
    return zlib.crc32(f"{name}/{index}".encode()) % 20 == 0


def join_quotes(quotes):
    return "".join(q + "\n%\n" for q in quotes)


def train_tokenizer(train_text_path, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            pre_tokenizers.Split(Regex("▁"), behavior="merged_with_next"),
        ]
    )
    n_learned = vocab_size - len(SPECIALS) - len(BYTE_PIECES)
    trainer = trainers.BpeTrainer(
        vocab_size=n_learned + len(SPECIALS),
        special_tokens=SPECIALS,
        limit_alphabet=120,  # rarer characters fall back to bytes
        min_frequency=2,
        show_progress=False,
    )
    tok.train([train_text_path], trainer)
    trained = json.loads(tok.to_str())

    # Renumber: specials, byte pieces, then the learned pieces in their training order.
    learned = sorted(trained["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {}
    for piece in SPECIALS + BYTE_PIECES:
        vocab[piece] = len(vocab)
    for piece, _ in learned:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    assert len(vocab) <= vocab_size, len(vocab)

    out = trained
    out["model"]["vocab"] = vocab
    out["added_tokens"] = [
        {
            "id": i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, s in enumerate(SPECIALS)
    ]
    out["pre_tokenizer"] = None
    out["post_processor"] = json.loads(
        processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
        ).__getstate__()
    )
    out["decoder"] = json.loads(
        decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]).__getstate__()
    )
    return Tokenizer.from_str(json.dumps(out, ensure_ascii=False)), len(vocab), tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="/usr/share/games/fortunes")
    ap.add_argument("--out", default="target/tiny-fortunes-data")
    ap.add_argument("--models", default="models/tiny-fortunes")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--split-only", action="store_true",
                    help="write OUT/train.txt and OUT/heldout.txt only (no tokenizer, MODELS untouched)")
    args = ap.parse_args()

    if not os.path.isdir(args.src):
        sys.exit(f"error: {args.src} not found; run `apt-get install -y fortunes` first")
    quotes = read_quotes(args.src)
    train = [q for (n, i, q) in quotes if not is_heldout(n, i)]
    heldout = [q for (n, i, q) in quotes if is_heldout(n, i)]
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.models, exist_ok=True)
    train_path = os.path.join(args.out, "train.txt")
    with open(train_path, "w", encoding="utf-8") as f:
        f.write(join_quotes(train))
    heldout_text = join_quotes(heldout)
    if args.split_only:
        with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
            f.write(heldout_text)
        print(json.dumps({"train_quotes": len(train), "heldout_quotes": len(heldout)}))
        return
    for d in (args.out, args.models):
        with open(os.path.join(d, "heldout.txt"), "w", encoding="utf-8") as f:
            f.write(heldout_text)

    tok, n_vocab, tok_train = train_tokenizer(train_path, args.vocab)

    # Checks: the shipped form (no pre-tokenizer) gives the training form's ids, and text round-trips.
    train_text = join_quotes(train)
    ids = tok.encode(train_text, add_special_tokens=False).ids
    for text in (train_text, heldout_text):
        a = tok.encode(text, add_special_tokens=False).ids
        b = [tok.token_to_id(tok_train.id_to_token(i)) for i in tok_train.encode(text, add_special_tokens=False).ids]
        assert a == b, "pre-tokenizer-free encoding differs from the training encoding"
    bad = [q for q in train + heldout if tok.decode(tok.encode(q, add_special_tokens=False).ids) != q]
    assert not bad, f"{len(bad)} quotes do not round-trip, e.g. {bad[0]!r}"
    assert tok.encode("Hi", add_special_tokens=True).ids[0] == 2
    n_bytes = sum(1 for i in ids if 6 <= i < 262)

    for d in (args.out, args.models):
        tok.save(os.path.join(d, "tokenizer.json"), pretty=False)
    print(
        json.dumps(
            {
                "quotes": len(quotes),
                "train_quotes": len(train),
                "heldout_quotes": len(heldout),
                "train_chars": len(train_text),
                "heldout_chars": len(heldout_text),
                "vocab": n_vocab,
                "train_tokens": len(ids),
                "heldout_tokens": len(tok.encode(heldout_text, add_special_tokens=False).ids),
                "byte_fallback_tokens_in_train": n_bytes,
                "chars_per_token": round(len(train_text) / len(ids), 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
