"""`lowbit serve ARTIFACT`: argument parsing and the uvicorn entry point (filled in by the server work)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")


def main(args: argparse.Namespace) -> int:
    raise NotImplementedError("lowbit serve is being built (issue 6)")
