"""Benchmark scripts run as plain ``python benchmarks/NAME.py``: no name shadows a standard module (the
script's folder is first on the import path) and no script edits ``sys.path`` to work around one."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_no_benchmark_shadows_a_standard_module():
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert scripts
    shadowing = [p.name for p in scripts if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"rename these, they shadow the standard library: {shadowing}"


def test_no_benchmark_edits_the_import_path():
    edits = [p.name for p in sorted(BENCHMARKS.glob("*.py"))
             if "sys.path" in p.read_text(encoding="utf-8")]
    assert not edits, f"these scripts edit sys.path: {edits}"
