"""Every ```python block of the READMEs runs as shown (in a fresh interpreter, from an empty folder).

A block that cannot run here (it needs a dataset, a GPU, the OpenMMLab extra or a loaded LLM) says so on the line
right above its fence: ``<!-- readme-test: skip (the reason) -->``; the test reports it as skipped with that reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")


def readmes() -> list[Path]:
    found = [ROOT / "README.md", *sorted(ROOT.glob("*/README.md")), *sorted((ROOT / "shared").rglob("README.md"))]
    return [p for p in found if p.is_file() and ".venv" not in p.parts and "results" not in p.parts]


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each ```python block."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip().startswith("```python"):
            start = i
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            above = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            match = SKIP.search(above)
            blocks.append((start + 1, "\n".join(lines[start + 1:j]) + "\n", match["reason"] if match else None))
            i = j
        i += 1
    return blocks


CASES = [(path, line, code, reason) for path in readmes() for line, code, reason in python_blocks(path.read_text())]


def test_block_reader_sees_fences_and_skip_markers() -> None:
    text = ("x\n```python\nprint(1)\n```\n<!-- readme-test: skip (needs a GPU) -->\n\n```python\nboom()\n```\n"
            "```bash\nls\n```\n")
    assert python_blocks(text) == [(2, "print(1)\n", None), (7, "boom()\n", "needs a GPU")]
    assert len(CASES) >= 3, "the READMEs' python blocks were not found"


@pytest.mark.parametrize(("path", "line", "code", "reason"), CASES,
                         ids=[f"{c[0].relative_to(ROOT)}:{c[1]}" for c in CASES])
def test_readme_python_block_runs(path: Path, line: int, code: str, reason: str | None, tmp_path: Path) -> None:
    if reason is not None:
        pytest.skip(f"{path.relative_to(ROOT)}:{line} is marked not run: {reason}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{path.relative_to(ROOT)}:{line} failed:\n{proc.stderr[-3000:]}"
