"""Open and verify an artifact.

`verify_artifact(path)` checks, in order, and reports every problem it finds (not just the first):

* the directory and manifest.json exist and the manifest parses strictly (a newer `format_version` is
  refused with the lowbit versions to use); nothing else is checked when it does not;
* every listed file exists, is a regular file (no symlinks), has its size ("truncated: N of M bytes") and,
  in "full" mode, its sha256 ("modified after compile");
* files whose content has a structure are parsed: .safetensors headers must describe their bytes exactly
  (this catches a file replaced together with its manifest entry), .json and .yaml/.yml must parse;
* no file is present that the manifest does not list (an error: it was added after compile), except OS
  metadata files (.DS_Store, Thumbs.db, desktop.ini, AppleDouble "._*"), which are warnings;
* warnings, not errors, for a different lowbit/torch/triton/tvm/numpy version or a different device:
  compiled kernels (kernels/) are regenerated from their IR on this machine, weights are portable.

Every message starts with the file it is about and ends with the fix. Modes: "full" (hashes), "quick" (all
but hashes), "none" (manifest only).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lowbit.artifact import tensorfile
from lowbit.artifact.manifest import (
    MANIFEST_NAME,
    ArtifactError,
    Manifest,
    ManifestError,
    check_relpath,
    installed_versions,
    strict_json_loads,
)
from lowbit.artifact.writer import KERNELS_DIR, PARTIAL_SUFFIX, hash_file

Mode = Literal["full", "quick", "none"]
OS_JUNK = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
RECOMPILE = "re-run lowbit compile to rebuild the artifact"
RESTORE = f"restore the file from the original artifact or {RECOMPILE}"


class ArtifactWarning(UserWarning):
    """An artifact made with other versions or on another device: usable, kernels are regenerated."""


@dataclass(frozen=True)
class VerifyReport:
    path: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    manifest: Manifest | None = None
    mode: str = "full"

    @property
    def ok(self) -> bool:
        return not self.errors

    def message(self) -> str:
        """The report as text: a verdict line, then errors and warnings one per line."""
        head = f"artifact {self.path}: " + (
            f"OK ({self.mode} check)" if self.ok else f"{len(self.errors)} error(s), refusing to use it"
        )
        lines = [head] + [f"  error: {e}" for e in self.errors] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _is_junk(name: str) -> bool:
    return name in OS_JUNK or name.startswith("._")


def _check_structure(root: Path, rel: str, manifest: Manifest) -> str | None:
    """An error message if a file that has a structure does not parse (or a kernel record disagrees with
    its library's manifest entry); None otherwise."""
    path = root / rel
    try:
        if rel.endswith(".safetensors"):
            tensorfile.read_header(path)
        elif rel.endswith(".json"):
            obj = strict_json_loads(path.read_bytes())
            if rel.startswith(KERNELS_DIR + "/") and rel.count("/") == 1:
                return _check_kernel_record(rel, obj, manifest)
        elif rel.endswith((".yaml", ".yml")):
            yaml.safe_load(path.read_bytes())
    except tensorfile.TensorFileError as e:
        return f"{rel}: safetensors header is unreadable ({e}); {RESTORE}"
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        kind = "JSON" if rel.endswith(".json") else "YAML"
        detail = (str(e).splitlines() or [type(e).__name__])[0][:200]
        return f"{rel}: not valid {kind} ({detail}); {RESTORE}"
    except OSError as e:
        return f"{rel}: unreadable ({e}); fix its permissions or {RESTORE}"
    return None


def _check_kernel_record(rel: str, record: Any, manifest: Manifest) -> str | None:
    """kernels/<key>.json must name a library in kernels/ whose manifest hash is the one it recorded."""
    library = record.get("library") if isinstance(record, dict) else None
    lib_rel = f"{KERNELS_DIR}/{library}"
    if not isinstance(library, str) or lib_rel not in manifest.files:
        return f"{rel}: kernel record names library {library!r}, which the artifact does not list; {RESTORE}"
    entry = manifest.files[lib_rel]
    if record.get("library_sha256") != entry.sha256 or record.get("library_bytes") != entry.bytes:
        return f"{rel}: its library {lib_rel} is not the one it was built with (sha256 differs); {RESTORE}"
    return None


def _check_files(root: Path, manifest: Manifest, mode: Mode, errors: list[str]) -> None:
    real_root = root.resolve()
    for rel, entry in manifest.files.items():
        path = root / rel
        if not path.resolve().is_relative_to(real_root) or any(
            (root / "/".join(rel.split("/")[: i + 1])).is_symlink() for i in range(rel.count("/") + 1)
        ):
            errors.append(f"{rel}: is a symlink or leads outside the artifact; {RESTORE}")
            continue
        if not path.exists():
            errors.append(f"{rel}: missing ({entry.bytes} bytes expected); {RESTORE}")
            continue
        if not path.is_file():
            errors.append(f"{rel}: is not a regular file; {RESTORE}")
            continue
        size = path.stat().st_size
        if size < entry.bytes:
            errors.append(f"{rel}: truncated: {size} of {entry.bytes} bytes; {RESTORE}")
            continue
        if size > entry.bytes:
            errors.append(f"{rel}: {size} bytes, the manifest says {entry.bytes}: changed after compile; {RESTORE}")
            continue
        if mode == "full":
            try:
                actual = hash_file(path).sha256
            except OSError as e:
                errors.append(f"{rel}: unreadable ({e}); fix its permissions or {RESTORE}")
                continue
            if actual != entry.sha256:
                errors.append(
                    f"{rel}: sha256 {actual[:16]}... differs from the manifest's {entry.sha256[:16]}...: "
                    f"modified after compile; {RESTORE}"
                )
                continue
        problem = _check_structure(root, rel, manifest)
        if problem:
            errors.append(problem)


def _check_unexpected(root: Path, manifest: Manifest, errors: list[str], notes: list[str]) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if rel == MANIFEST_NAME or rel in manifest.files:
                continue
            if full.is_symlink():
                errors.append(f"{rel}: unexpected symlink (not in {MANIFEST_NAME}); remove it")
            elif full.is_dir():
                continue
            elif _is_junk(name):
                notes.append(f"{rel}: OS metadata file, not in {MANIFEST_NAME}; ignored")
            else:
                errors.append(
                    f"{rel}: unexpected file (not in {MANIFEST_NAME}): added after compile; remove it, or "
                    f"{RECOMPILE} to include it"
                )


def _compat_warnings(root: Path, manifest: Manifest, notes: list[str]) -> None:
    from lowbit.artifact.fingerprint import differences, fingerprint

    has_kernels = any(rel.startswith(KERNELS_DIR + "/") for rel in manifest.files)
    kernels = "the kernels in kernels/ are regenerated from their IR on first use" if has_kernels else ""
    consequence = {
        "lowbit": kernels or "if loading fails, re-run lowbit compile with this lowbit",
        "tvm": kernels or "no compiled kernels are shipped; nothing to do",
        "triton": "Triton kernels are recompiled from their IR on first use",
        "torch": "weights are portable; no action needed",
        "numpy": "weights are portable; no action needed",
    }
    here = installed_versions()
    for pkg, made in manifest.versions.items():
        now = here.get(pkg)
        if made != now:
            notes.append(f"{MANIFEST_NAME}: compiled with {pkg} {made}, this machine has {now}: {consequence[pkg]}")
    device = fingerprint(cuda=manifest.device.get("cuda") is not None)
    if manifest.device.get("cuda") is None:
        device = {**device, "cuda": None}
    diff = [d for d in differences(dict(manifest.device), device) if has_kernels or not d.startswith("cores")]
    if diff:
        what = (
            "kernels/ holds binaries for that machine: they are regenerated from their IR here" if has_kernels else ""
        )
        notes.append(
            f"{MANIFEST_NAME}: compiled on another device ({'; '.join(diff)}); "
            + (what + "; " if what else "")
            + "weights are portable"
        )


def verify_artifact(path: str | os.PathLike[str], mode: Mode = "full") -> VerifyReport:
    """Check an artifact directory (see the module doc); never raises for a bad artifact."""
    if mode not in ("full", "quick", "none"):
        raise ValueError(f"verify mode {mode!r}; use 'full', 'quick' or 'none'")
    root = Path(path)
    errors: list[str] = []
    notes: list[str] = []

    def done(manifest: Manifest | None = None) -> VerifyReport:
        return VerifyReport(str(root), tuple(errors), tuple(notes), manifest, mode)

    if not root.is_dir():
        partial = root.with_name(root.name + PARTIAL_SUFFIX)
        hint = f"; found {partial}: an interrupted compile, {RECOMPILE}" if partial.exists() else f"; {RECOMPILE}"
        errors.append(f"{root}: {'is not a directory' if root.exists() else 'does not exist'}{hint}")
        return done()
    manifest_path = root / MANIFEST_NAME
    if not (manifest_path.exists() or manifest_path.is_symlink()):
        errors.append(
            f"{MANIFEST_NAME}: missing (not a lowbit artifact, or an incomplete copy); copy the whole artifact "
            f"directory or {RECOMPILE}"
        )
        return done()
    if manifest_path.is_symlink() or not manifest_path.is_file():
        errors.append(f"{MANIFEST_NAME}: is a symlink or not a regular file; {RESTORE}")
        return done()
    try:
        manifest = Manifest.read(manifest_path)
    except ManifestError as e:
        fix = "" if "format_version" in str(e) and "newer" in str(e) else f"; {RESTORE}"
        errors.append(f"{e}{fix}")
        return done()
    except OSError as e:
        errors.append(f"{MANIFEST_NAME}: unreadable ({e}); fix its permissions or {RESTORE}")
        return done()
    if mode != "none":
        _check_files(root, manifest, mode, errors)
        _check_unexpected(root, manifest, errors, notes)
    _compat_warnings(root, manifest, notes)
    return done(manifest)


class Artifact:
    """An opened (and verified) artifact: `manifest`, `path(rel)`, readers for its files."""

    def __init__(self, root: Path, manifest: Manifest, report: VerifyReport | None = None):
        self.root = root
        self.manifest = manifest
        self.report = report

    def __repr__(self) -> str:
        return f"Artifact({str(self.root)!r}, {len(self.manifest.files)} files)"

    def has(self, rel: str) -> bool:
        return rel in self.manifest.files

    def path(self, rel: str) -> Path:
        """The path of artifact file `rel` (it must be listed in the manifest)."""
        check_relpath(rel)
        if rel not in self.manifest.files:
            listed = sorted(self.manifest.files)
            raise ArtifactError(
                f"{rel}: not in artifact {self.root} (it has {listed[:12]}{' ...' if len(listed) > 12 else ''}); "
                f"{RECOMPILE} with a lowbit that writes it"
            )
        return self.root / rel

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def read_text(self, rel: str) -> str:
        return self.path(rel).read_text(encoding="utf-8")

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_text(rel))

    def read_yaml(self, rel: str) -> Any:
        return yaml.safe_load(self.read_text(rel))

    def tensors(self, rel: str, lazy: bool = False) -> Any:
        """The tensors of a safetensors file: {name: np.ndarray} (owned copies), or with `lazy=True` a
        `TensorFile` (a read-only mapping whose arrays are views of a memory map; close it when done)."""
        path = self.path(rel)
        return tensorfile.TensorFile(path) if lazy else tensorfile.load(path)

    @property
    def kernel_dir(self) -> Path | None:
        d = self.root / KERNELS_DIR
        return d if any(rel.startswith(KERNELS_DIR + "/") for rel in self.manifest.files) else None

    @contextlib.contextmanager
    def use_kernels(self) -> Iterator[None]:
        """Within the block, compiled kernels are also looked up in the artifact's kernels/ (read-only;
        kernels missing there are built and written to the user's kernel cache, never into the artifact)."""
        from lowbit.codegen.kernel_cache import using_kernel_dir

        with using_kernel_dir(read_only=[self.kernel_dir] if self.kernel_dir else []):
            yield


def open_artifact(path: str | os.PathLike[str], verify: Mode = "full") -> Artifact:
    """Open an artifact after checking it (`verify_artifact` with mode `verify`); `ArtifactError` with the
    whole report when it has errors, an `ArtifactWarning` per warning otherwise."""
    report = verify_artifact(path, verify)
    if not report.ok or report.manifest is None:
        raise ArtifactError(report.message())
    for w in report.warnings:
        warnings.warn(w, ArtifactWarning, stacklevel=2)
    return Artifact(Path(path), report.manifest, report)


__all__ = ["Artifact", "ArtifactWarning", "Mode", "VerifyReport", "open_artifact", "verify_artifact"]
