"""`lowbit bench serve`: an online load generator against an OpenAI-compatible server (filled in by the
benchmark work)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", nargs="?")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("lowbit bench serve is being built (issue 6)")
