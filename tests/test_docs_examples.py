"""The README is the plugin's page: short, with the two make commands, pip install and Python examples that
run as written (as do those of docs/python-api.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_is_a_plugin_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 150, f"README has {len(lines)} lines; the rest belongs in docs/"
    head = "\n".join(lines[:20])
    assert "make demo" in head and "make test" in head
    assert "pip install napari-sscce" in text and _python_blocks(ROOT / "README.md")
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), f"README links to a missing {link}"


@pytest.mark.parametrize("page", ["README.md", "docs/python-api.md"])
def test_python_examples_run_as_written(page, tmp_path):
    code = "\n".join(_python_blocks(ROOT / page))
    assert code
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
