"""`lowbit demo` checks the DSL GEMM on the reference interpreter and fails loudly on a mismatch."""

from __future__ import annotations

from lowbit.cli import main


def test_demo_passes_and_prints_ir(capsys):
    assert main(["demo", "--m", "8", "--n", "16", "--k", "128", "--dtypes", "int4", "fp6_e3m2"]) == 0
    out = capsys.readouterr().out
    assert "kernel quantized_gemm(" in out and "dequantize" in out
    assert "MISMATCH" not in out and out.count(" ok") == 2
