"""Compiled kernels on disk: a backend builds a kernel once and later processes load it (no rebuild).

Layout of a kernel directory (default `$LOWBIT_CACHE_DIR/kernels`, else `~/.cache/lowbit/kernels`):

    <key>.so     the compiled library (TVM: `export_library` output, loaded with dlopen)
    <key>.json   what regenerates it and what it was built from: backend, kernel name, the program text as
                 traced (`lowbit.ir.parser.parse` reads it back), the backend options, the target, the
                 generated source, the key parts, and the library's sha256 and size

`<key>` is the sha256 of the key parts a backend chooses (TVM: program text, options, CODEGEN_VERSION, a
digest of the code generator's and the passes' source files, toolchain versions, target and ISA flags), so
any change to what the binary depends on is a miss, never a stale kernel. A library is loaded only when its sha256
matches the record; a corrupt or unreadable entry is a warning and a rebuild (which overwrites it). Files
are written to a temporary name and renamed (library first, record last), so an interrupted write is
never a hit and concurrent processes do not see half files.

Misses are written to one directory (`kernel_dir()`); read-only directories (an artifact's `kernels/`)
are searched after it: `with using_kernel_dir(read_only=[artifact / "kernels"]): ...`. Setting
`LOWBIT_KERNEL_CACHE=0` turns the disk cache off (kernels are built for the process alone: each runs from a
library in a temporary directory removed at exit, `runtime._private_library`).

Triton needs nothing here: its JIT keeps compiled cubins in its own cache (`TRITON_CACHE_DIR`, default
`~/.triton/cache`) keyed by source, options and device; lowbit writes the generated Triton source to
`$LOWBIT_CACHE_DIR/triton/` and the regenerating information is the program text as for TVM.

Every kernel compiled or loaded in this process is recorded by key (`compiled_kernels()`), so a compiler
can ship them: `export_kernels(artifact_dir / "kernels", keys)`.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KERNEL_FORMAT = 1
LIBRARY_SUFFIX = ".so"


class KernelCacheWarning(UserWarning):
    """A cached kernel could not be used (corrupt, other machine, unwritable directory); it was rebuilt."""


# ---- where kernels live ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dirs:
    write: Path | None = None  # None: the default (env), resolved at use
    read_only: tuple[Path, ...] = ()


_dirs = _Dirs()
_lock = threading.Lock()


def default_kernel_dir() -> Path:
    return Path(os.environ.get("LOWBIT_CACHE_DIR") or "~/.cache/lowbit").expanduser() / "kernels"


def enabled() -> bool:
    """False when `LOWBIT_KERNEL_CACHE` is 0/off/false/no: kernels are then built in memory only."""
    return os.environ.get("LOWBIT_KERNEL_CACHE", "1").strip().lower() not in ("0", "off", "false", "no")


def kernel_dir() -> Path | None:
    """The directory misses are written to; None when the disk cache is off."""
    if not enabled():
        return None
    return _dirs.write if _dirs.write is not None else default_kernel_dir()


def search_dirs() -> list[Path]:
    """Where a kernel is looked up, in order: `kernel_dir()`, then the read-only directories."""
    if not enabled():
        return []
    first = kernel_dir()
    return ([first] if first is not None else []) + [d for d in _dirs.read_only if d != first]


def set_kernel_dir(path: str | os.PathLike[str] | None) -> None:
    """Write (and look up) kernels in `path` from now on; None goes back to the default."""
    global _dirs
    _dirs = _Dirs(Path(path) if path is not None else None, _dirs.read_only)


def add_read_only_dir(path: str | os.PathLike[str]) -> None:
    """Also look kernels up in `path` (never written) for the rest of the process, e.g. a loaded artifact's
    kernels/ directory; a directory already searched is not added twice."""
    global _dirs
    p = Path(path)
    if p not in _dirs.read_only:
        _dirs = _Dirs(_dirs.write, (*_dirs.read_only, p))


@contextlib.contextmanager
def using_kernel_dir(
    path: str | os.PathLike[str] | None = None, read_only: Iterable[str | os.PathLike[str]] = ()
) -> Iterator[None]:
    """Within the block, write kernels to `path` (None: keep the current directory) and also look them up
    in `read_only` (searched after it, never written)."""
    global _dirs
    before = _dirs
    _dirs = _Dirs(
        Path(path) if path is not None else before.write,
        tuple(Path(p) for p in read_only) + before.read_only,
    )
    try:
        yield
    finally:
        _dirs = before


# ---- keys ---------------------------------------------------------------------------------------------


def kernel_key(parts: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the key parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@functools.cache
def source_digest(*packages: str) -> str:
    """sha256 over the .py files of lowbit sub-packages (e.g. "codegen/tvm", "ir"): part of a kernel key, so
    an edited code generator never loads a kernel built by the old one, even if CODEGEN_VERSION was not
    bumped."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for package in packages:
        for f in sorted((root / package).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- lookup and store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedKernel:
    """A kernel library on disk and its record (the `<key>.json` contents)."""

    key: str
    library: Path
    record: Mapping[str, Any] = field(compare=False)


def _warn(msg: str) -> None:
    warnings.warn(msg, KernelCacheWarning, stacklevel=3)


def _check_entry(directory: Path, key: str) -> CachedKernel | None:
    """The valid entry for `key` in `directory`; None (with a warning when something is there but broken)."""
    record_path = directory / f"{key}.json"
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        _warn(f"kernel cache entry {record_path} is unreadable ({e}); rebuilding the kernel")
        return None
    if record.get("format") != KERNEL_FORMAT or record.get("key") != key:
        _warn(f"kernel cache entry {record_path} has format {record.get('format')!r} / key mismatch; rebuilding")
        return None
    library = directory / str(record.get("library", ""))
    if library.parent != directory or not library.is_file():
        _warn(f"kernel cache entry {record_path}: library {library.name} is missing; rebuilding the kernel")
        return None
    size = library.stat().st_size
    if size != record.get("library_bytes") or file_sha256(library) != record.get("library_sha256"):
        _warn(
            f"kernel library {library} does not match its record ({size} bytes, sha256 differs or size "
            f"{record.get('library_bytes')} expected): corrupt or modified; rebuilding the kernel"
        )
        return None
    return CachedKernel(key, library, record)


def lookup(key: str) -> CachedKernel | None:
    """The first valid entry for `key` in `search_dirs()`."""
    for directory in search_dirs():
        found = _check_entry(directory, key)
        if found is not None:
            return found
    return None


def _atomic_write(path: Path, write: Callable[[str], None], suffix: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_entry(
    directory: Path, key: str, record: Mapping[str, Any], write_library: Callable[[str], None]
) -> CachedKernel:
    """Write `<key>.so` (via `write_library(path)`) and then `<key>.json` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    library = directory / f"{key}{LIBRARY_SUFFIX}"
    _atomic_write(library, write_library, LIBRARY_SUFFIX)
    full = {
        **record,
        "format": KERNEL_FORMAT,
        "key": key,
        "library": library.name,
        "library_sha256": file_sha256(library),
        "library_bytes": library.stat().st_size,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(full, indent=1, sort_keys=True, default=str)

    def write_record(path: str) -> None:
        Path(path).write_text(text)

    _atomic_write(directory / f"{key}.json", write_record, ".json")
    return CachedKernel(key, library, full)


def store(key: str, record: Mapping[str, Any], write_library: Callable[[str], None]) -> CachedKernel | None:
    """Save a freshly built kernel into `kernel_dir()`; None when the cache is off or the directory is not
    writable (a warning: the kernel still works, it is just rebuilt next time)."""
    directory = kernel_dir()
    if directory is None:
        return None
    try:
        return write_entry(directory, key, record, write_library)
    except Exception as e:
        _warn(
            f"could not save kernel {record.get('name', key)} to {directory} ({type(e).__name__}: {e}); "
            "it will be rebuilt next time (set LOWBIT_CACHE_DIR to a writable directory)"
        )
        return None


# ---- kernels of this process ----------------------------------------------------------------------------


@dataclass
class _Compiled:
    record: Mapping[str, Any]
    library: Path | None
    export: Callable[[str], None]  # writes the library to a path (for kernels with no file on disk)


_COMPILED: dict[str, _Compiled] = {}


def note_compiled(key: str, record: Mapping[str, Any], library: Path | None, export: Callable[[str], None]) -> None:
    """Called by a backend for every kernel it builds or loads."""
    with _lock:
        _COMPILED[key] = _Compiled(dict(record), library, export)


def compiled_kernels() -> dict[str, Mapping[str, Any]]:
    """{key: record} of every kernel compiled or loaded from disk in this process (disk-cached backends)."""
    with _lock:
        return {k: v.record for k, v in _COMPILED.items()}


def export_kernels(dest_dir: str | os.PathLike[str], keys: Iterable[str] | None = None) -> list[Path]:
    """Copy kernels (default: all of `compiled_kernels()`) into `dest_dir` as `<key>.so` + `<key>.json`, a
    kernel directory that `using_kernel_dir(read_only=[dest_dir])` loads from. Returns the files written."""
    dest = Path(dest_dir)
    with _lock:
        wanted = list(_COMPILED) if keys is None else list(keys)
        missing = [k for k in wanted if k not in _COMPILED]
        if missing:
            raise KeyError(
                f"kernels {missing} were not compiled in this process; compile them first "
                f"(known: {sorted(_COMPILED)[:8]}{'...' if len(_COMPILED) > 8 else ''})"
            )
        entries = {k: _COMPILED[k] for k in wanted}
    written: list[Path] = []
    for key, entry in entries.items():
        source = entry.library
        if source is not None and source.is_file():

            def copy(p: str, src: Path = source) -> None:
                shutil.copyfile(src, p)

            cached = write_entry(dest, key, _stripped(entry.record), copy)
        else:
            cached = write_entry(dest, key, _stripped(entry.record), entry.export)
        written += [cached.library, dest / f"{key}.json"]
    return written


def _stripped(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without the fields `write_entry` recomputes."""
    drop = {"format", "key", "library", "library_sha256", "library_bytes", "created"}
    return {k: v for k, v in record.items() if k not in drop}


def forget_compiled() -> None:
    """Empty the registry (tests)."""
    with _lock:
        _COMPILED.clear()


__all__ = [
    "KERNEL_FORMAT",
    "CachedKernel",
    "KernelCacheWarning",
    "compiled_kernels",
    "default_kernel_dir",
    "enabled",
    "export_kernels",
    "file_sha256",
    "forget_compiled",
    "kernel_dir",
    "kernel_key",
    "lookup",
    "note_compiled",
    "search_dirs",
    "set_kernel_dir",
    "source_digest",
    "store",
    "using_kernel_dir",
    "write_entry",
]
