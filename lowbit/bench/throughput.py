"""`lowbit bench throughput`: offline throughput of the engine (filled in by the benchmark work)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("lowbit bench throughput is being built (issue 6)")
