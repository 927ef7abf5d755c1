"""`lowbit inspect ARTIFACT` and `lowbit verify ARTIFACT` (wired into lowbit/cli.py with `add_arguments`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowbit.artifact.inspect import describe
from lowbit.artifact.manifest import ArtifactError
from lowbit.artifact.reader import Artifact, verify_artifact


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact directory written by lowbit compile")
    p.add_argument("--modules", type=int, default=40, help="rows of the per-module table to print (default 40)")
    p.add_argument("--full", action="store_true", help="also check every file's sha256 (default: sizes only)")


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact directory written by lowbit compile")
    p.add_argument("--quick", action="store_true", help="check sizes and structure only, not sha256")


def inspect_main(args: argparse.Namespace) -> int:
    """Print the artifact summary (after a quick check; a broken artifact prints the report, exit 1)."""
    report = verify_artifact(args.artifact, "full" if args.full else "quick")
    if not report.ok or report.manifest is None:
        print(report.message(), file=sys.stderr)
        return 1
    print(describe(Artifact(Path(report.path), report.manifest, report), max_modules=args.modules), end="")
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def verify_main(args: argparse.Namespace) -> int:
    """Check hashes, structure and compatibility; exit 0 when usable (warnings allowed), 1 otherwise."""
    try:
        report = verify_artifact(args.artifact, "quick" if args.quick else "full")
    except ArtifactError as e:  # pragma: no cover - verify_artifact reports instead of raising
        print(e, file=sys.stderr)
        return 1
    print(report.message(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


__all__ = ["add_inspect_arguments", "add_verify_arguments", "inspect_main", "verify_main"]
