"""The README's Python example runs as written (from the repository root)."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def python_blocks(path):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return [b for b in blocks if "import rgemma" in b]


def test_readme_examples_run():
    blocks = python_blocks(ROOT / "README.md") + python_blocks(ROOT / "python" / "README.md")
    assert len(blocks) == 2
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
        assert out.returncode == 0, out.stderr
        assert len(out.stdout) > 20, out.stdout
