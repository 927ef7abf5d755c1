"""Write an artifact so that an interrupted compile never leaves something that looks complete.

    with ArtifactWriter("out/llama-w4", overwrite=False) as w:
        w.add_text("model.yaml", resolved_yaml)
        w.add_tensors("weights/model.safetensors", {"layers.0.q.codes": codes, ...}, {"format": "lowbit"})
        w.add_json("report.json", report)
        w.add_kernels()                      # compiled kernels of this process -> kernels/ + kernels.json
        manifest = w.finalize({"model": "llama-w4"})

Everything goes into `<path>.partial/`; `finalize` hashes every file, writes manifest.json last and renames
the directory to `<path>` (one rename). An exception inside the `with` block (or leaving it without
`finalize`) deletes the partial directory; a partial directory left by a killed process is removed (with a
warning) by the next writer. An existing artifact is replaced only with `overwrite=True`, and never a
directory that is not an artifact (no manifest.json) unless it is empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lowbit.artifact import tensorfile
from lowbit.artifact.manifest import MANIFEST_NAME, ArtifactError, FileEntry, Manifest, check_relpath

PARTIAL_SUFFIX = ".partial"
KERNELS_DIR = "kernels"
KERNELS_INDEX = "kernels.json"


def hash_file(path: str | os.PathLike[str]) -> FileEntry:
    """sha256 and size of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return FileEntry(h.hexdigest(), size)


def _replaceable(path: Path) -> bool:
    """Whether `overwrite=True` may delete `path`: an artifact directory (it has manifest.json) or an empty one."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / MANIFEST_NAME).is_file() or not any(path.iterdir())


class ArtifactWriter:
    def __init__(self, path: str | os.PathLike[str], overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self._check_target()
        if self.partial.is_symlink() or self.partial.is_file():
            raise ArtifactError(f"{self.partial} exists and is not a directory; remove it and re-run lowbit compile")
        if self.partial.exists():
            warnings.warn(f"removing {self.partial}, left by an interrupted compile; starting again", stacklevel=2)
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self._added: set[str] = set()
        self.manifest: Manifest | None = None
        self._closed = False

    def _check_target(self) -> None:
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if not self.overwrite:
            raise ArtifactError(
                f"{self.path} already exists; choose another output path or pass overwrite=True "
                "(lowbit compile --overwrite) to replace it"
            )
        if not _replaceable(self.path):
            raise ArtifactError(
                f"{self.path} exists and is not a lowbit artifact (no {MANIFEST_NAME}); refusing to replace it. "
                "Remove it yourself or choose another output path"
            )

    # ---- adding files --------------------------------------------------------------------------------------

    def path_for(self, rel: str) -> Path:
        """Where file `rel` goes in the partial directory (parents created), for writers that need a path
        (a tuning cache, a tokenizer's save()). Whatever is there at `finalize` is in the artifact."""
        self._check_open()
        check_relpath(rel)
        target = self.partial / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _new(self, rel: str) -> Path:
        target = self.path_for(rel)
        if rel in self._added or target.exists():
            raise ArtifactError(f"artifact file {rel!r} was already added; each file is written once")
        self._added.add(rel)
        return target

    def add_bytes(self, rel: str, data: bytes) -> None:
        self._new(rel).write_bytes(data)

    def add_text(self, rel: str, text: str) -> None:
        self._new(rel).write_text(text, encoding="utf-8")

    def add_json(self, rel: str, obj: Any) -> None:
        """`obj` as indented JSON (NaN and infinity are refused: they are not JSON)."""
        self.add_text(rel, json.dumps(obj, indent=1, allow_nan=False) + "\n")

    def add_file(self, rel: str, src: str | os.PathLike[str]) -> None:
        """A copy of file `src` (symlinks are followed: the artifact holds the bytes)."""
        if not Path(src).is_file():
            raise ArtifactError(f"add_file({rel!r}): {src} is not a file")
        shutil.copyfile(src, self._new(rel))

    def add_tensors(self, rel: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
        """NumPy arrays or torch tensors as one safetensors file; dtypes are kept exactly (ints, uints,
        fp16, bf16, fp8 as ml_dtypes, fp32, fp64, bool)."""
        if not rel.endswith(".safetensors"):
            raise ArtifactError(f"add_tensors: {rel!r} should end in .safetensors (verify checks such files' headers)")
        tensorfile.save(self._new(rel), tensors, metadata)

    def add_kernels(self, keys: Iterable[str] | None = None) -> list[str]:
        """Copy compiled kernels (default: every kernel compiled in this process, see
        `lowbit.codegen.kernel_cache.compiled_kernels`) into kernels/ and list them in kernels.json.
        Returns the keys."""
        from lowbit.codegen import kernel_cache

        self._check_open()
        keys = list(kernel_cache.compiled_kernels()) if keys is None else list(keys)
        if keys:
            kernel_cache.export_kernels(self.partial / KERNELS_DIR, keys)
        records = kernel_cache.compiled_kernels()
        index = [
            {
                "key": k,
                "name": records[k].get("name"),
                "backend": records[k].get("backend"),
                "options": records[k].get("options"),
                "target": records[k].get("target"),
                "library": f"{KERNELS_DIR}/{k}.so",
                "record": f"{KERNELS_DIR}/{k}.json",
            }
            for k in keys
        ]
        self.add_json(KERNELS_INDEX, {"kernels": index})
        return keys

    # ---- finishing -----------------------------------------------------------------------------------------

    def finalize(self, meta: Mapping[str, Any] | None = None) -> Manifest:
        """Hash every file, write manifest.json, and move the directory into place. Returns the manifest."""
        self._check_open()
        files = {}
        for root, dirs, names in os.walk(self.partial):
            for name in dirs + names:
                full = Path(root, name)
                rel = full.relative_to(self.partial).as_posix()
                if full.is_symlink():
                    raise ArtifactError(f"artifact file {rel!r} is a symlink; add the file itself (add_file copies)")
                if not full.is_file() and not full.is_dir():
                    raise ArtifactError(f"artifact file {rel!r} is not a regular file (a FIFO, socket or device)")
                if full.is_file():
                    check_relpath(rel)
                    if rel.endswith(".safetensors"):
                        tensorfile.read_header(full)  # never seal a file verify would refuse
                    files[rel] = hash_file(full)
        files.pop(MANIFEST_NAME, None)
        if (self.partial / MANIFEST_NAME).exists():
            raise ArtifactError(f"{MANIFEST_NAME} is written by finalize(); do not add it")
        manifest = Manifest.create(files, meta)
        manifest.write(self.partial / MANIFEST_NAME)
        self._check_target()
        old = None
        if self.path.exists():
            old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}-{time.time_ns()}")
            os.rename(self.path, old)
        os.rename(self.partial, self.path)
        if old is not None:
            shutil.rmtree(old)
        self._closed = True
        self.manifest = manifest
        return manifest

    def abort(self) -> None:
        """Delete the partial directory (nothing is left behind)."""
        if not self._closed:
            shutil.rmtree(self.partial, ignore_errors=True)
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ArtifactError(f"artifact writer for {self.path} is closed (finalized or aborted)")

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
            return
        if not self._closed:
            self.abort()
            raise ArtifactError(f"artifact {self.path}: the with-block ended without finalize(); nothing was written")


__all__ = ["KERNELS_DIR", "KERNELS_INDEX", "ArtifactWriter", "hash_file"]
