"""Every example runs to completion (each asserts its own results)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, capsys):
    module = runpy.run_path(str(path))
    module["main"]()
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"


def test_examples_exist():
    assert {p.stem for p in EXAMPLES} >= {"quantized_gemm"}
