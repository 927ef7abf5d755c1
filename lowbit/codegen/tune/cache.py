"""The persistent tuning cache: one JSON file of best configurations, keyed by everything that decides them.

A key is the sha256 of its readable parts: the printed IR of the kernel (traced with its fixed constants
and the space's default point), the backend, the search space's axes, the problem sizes (M bucketed to the
next power of two, so M=3 and M=4 share an entry), `CODEGEN_VERSION`, the toolchain versions and the
device name. A change in any of them is a miss, so a codegen change can never serve a stale config as long
as `CODEGEN_VERSION` is bumped with it.

The file ($LOWBIT_CACHE_DIR/tuning.json, default ~/.cache/lowbit/tuning.json) is rewritten atomically
(temp file + os.replace) after every measured trial, so an interrupted tuning run resumes where it stopped.
A missing or corrupt file is treated as empty (with a warning).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowbit.codegen.backend import Config

CODEGEN_VERSION = 11  # bump whenever generated code changes for the same IR and options
FILE_FORMAT = 1
BUCKETED = ("M",)  # sizes rounded up to a power of two in the key (the batch/token dimension)
_TOOLCHAIN = {"lowbit": "lowbit", "numpy": "numpy", "torch": "torch", "triton": "triton", "tvm": "apache-tvm"}


def toolchain_versions() -> dict[str, str]:
    """Installed versions of lowbit and the packages codegen depends on (missing ones are left out);
    read from package metadata, so nothing heavy is imported."""
    out = {}
    for name, dist in _TOOLCHAIN.items():
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def problem_key(sizes: Mapping[str, int]) -> dict[str, int]:
    """The sizes as they enter the key: sorted, with the `BUCKETED` ones rounded up to a power of two."""
    return {k: next_power_of_two(v) if k in BUCKETED else v for k, v in sorted(sizes.items())}


def key_parts(
    ir: str,
    backend: str,
    sizes: Mapping[str, int],
    device: str,
    space: str = "",
    codegen_version: int | None = None,
    toolchain: Mapping[str, str] | None = None,
    threads: str | None = None,
) -> dict[str, Any]:
    """The readable parts of a cache key (the IR as its sha256, to keep the file small). `space` describes
    the search space's axes and default (`tuner.space_description`), so widening a space retunes; `threads`
    is the CPU thread setting a backend's kernels run with (TVM), None where it does not matter."""
    return {
        "ir_sha256": hashlib.sha256(ir.encode()).hexdigest(),
        "backend": backend,
        "space": space,
        "problem": problem_key(sizes),
        "codegen_version": CODEGEN_VERSION if codegen_version is None else codegen_version,
        "toolchain": dict(sorted((toolchain if toolchain is not None else toolchain_versions()).items())),
        "device": device,
        "threads": threads,
    }


def digest(parts: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the key parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _tuplify(v: Any) -> Any:
    """JSON lists back to tuples, so configs read from the file are hashable and equal to the originals."""
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def config_to_json(config: Config) -> dict[str, Any]:
    return {"constants": config.constant_dict, "options": config.option_dict}


def config_from_json(d: Mapping[str, Any]) -> Config:
    return Config.make(
        {k: _tuplify(v) for k, v in d.get("constants", {}).items()},
        {k: _tuplify(v) for k, v in d.get("options", {}).items()},
    )


def default_cache_path() -> Path:
    return Path(os.environ.get("LOWBIT_CACHE_DIR") or "~/.cache/lowbit").expanduser() / "tuning.json"


class TuningCache:
    """Best configurations on disk. An entry (a JSON object under its key) holds:
    `parts` (the readable key), `best` (config as {"constants", "options"}), `best_ms`, `num_trials`,
    `trials` (every tried config with its time or reason, for resuming), `complete`, `timestamp`."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path is not None else default_cache_path()

    def __repr__(self) -> str:
        return f"TuningCache({str(self.path)!r})"

    def load(self) -> dict[str, dict[str, Any]]:
        """All entries; {} when the file is missing, and {} with a warning when it is unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as e:
            warnings.warn(f"tuning cache {self.path} is unreadable ({e}); starting empty", stacklevel=2)
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
                raise ValueError("no 'entries' object")
        except ValueError as e:
            warnings.warn(
                f"tuning cache {self.path} is corrupt ({e}); starting empty (it is overwritten on the next write)",
                stacklevel=2,
            )
            return {}
        return data["entries"]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.load().get(key)

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Store `entry` under `key`: re-read the file (other processes may have added keys), then replace
        it atomically."""
        entries = self.load()
        entries[key] = {**entry, "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        self._write(entries)

    def remove(self, key: str) -> None:
        entries = self.load()
        if entries.pop(key, None) is not None:
            self._write(entries)

    def clear(self) -> None:
        self._write({})

    def __len__(self) -> int:
        return len(self.load())

    def _write(self, entries: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FILE_FORMAT, "entries": entries}, f, indent=1, sort_keys=True, default=str)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


__all__ = [
    "CODEGEN_VERSION",
    "TuningCache",
    "config_from_json",
    "config_to_json",
    "default_cache_path",
    "digest",
    "key_parts",
    "problem_key",
    "toolchain_versions",
]
