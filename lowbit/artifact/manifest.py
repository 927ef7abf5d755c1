"""manifest.json: what an artifact holds and where it was made.

    {
      "format_version": 1,
      "created": "2025-06-01T12:00:00+00:00",
      "versions": {"lowbit": "0.1.0", "numpy": "2.4.6", "torch": "2.13.0", "triton": "3.9.0", "tvm": null},
      "device": {"os": "Linux", "machine": "x86_64", "cpu": "AMD EPYC 7763", "isa": ["avx2", "fma"],
                 "cores": 2, "cuda": null | {"name": "NVIDIA H200", "capability": "9.0", "count": 1}},
      "files": {"weights/model.safetensors": {"sha256": "<64 hex>", "bytes": 123}, ...},
      "meta": {... free JSON: model name, arch, recipe summary ...}
    }

Reading is strict: `format_version` is checked first (a newer one is refused with the versions to use), then
exactly these keys with these types; every file path is relative, '/'-separated, with no '.', '..' or empty
parts. Any deviation is a `ManifestError` naming the key and the value.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 * 2**20
VERSION_PACKAGES = {"lowbit": "lowbit", "numpy": "numpy", "torch": "torch", "triton": "triton", "tvm": "apache-tvm"}
_KEYS = ("format_version", "created", "versions", "device", "files", "meta")
_DEVICE_KEYS = {"os": str, "machine": str, "cpu": str, "isa": list, "cores": int, "cuda": dict}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(RuntimeError):
    """An artifact that cannot be written, read or trusted; the message names the file and the fix."""


class ManifestError(ArtifactError):
    """manifest.json is missing, unreadable or not in the expected form."""


def installed_versions() -> dict[str, str | None]:
    """{lowbit, numpy, torch, triton, tvm: version or None when not installed} (package metadata only)."""
    out: dict[str, str | None] = {}
    for name, dist in VERSION_PACKAGES.items():
        try:
            out[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json_loads(text: str | bytes) -> Any:
    """json.loads that refuses duplicate keys (a second "files" would silently win) and NaN/Infinity."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def check_relpath(rel: Any) -> str:
    """`rel` if it is a safe path inside an artifact: relative, '/'-separated, no '.', '..' or empty parts,
    no control characters, not manifest.json itself; else `ArtifactError`."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"artifact path {rel!r} must be a non-empty string")
    bad = None
    if rel.startswith("/") or "\\" in rel or re.match(r"^[A-Za-z]:", rel):
        bad = "must be relative and '/'-separated"
    elif any(ord(c) < 32 or c == "\x7f" for c in rel):
        bad = "contains control characters"
    elif any(part in ("", ".", "..") for part in rel.split("/")):
        bad = "has an empty, '.' or '..' part"
    elif rel == MANIFEST_NAME:
        bad = "is reserved for the manifest itself"
    if bad:
        raise ArtifactError(f"artifact path {rel!r} {bad}; files must stay inside the artifact directory")
    return rel


@dataclass(frozen=True)
class FileEntry:
    sha256: str  # 64 lowercase hex digits
    bytes: int


@dataclass(frozen=True)
class Manifest:
    format_version: int
    created: str  # ISO 8601 with timezone
    versions: Mapping[str, str | None]  # VERSION_PACKAGES keys
    device: Mapping[str, Any]  # lowbit.artifact.fingerprint.fingerprint()
    files: Mapping[str, FileEntry]  # relative path -> hash and size; manifest.json itself is not listed
    meta: Mapping[str, Any]  # free JSON object (model name, arch, recipe summary)

    @classmethod
    def create(
        cls,
        files: Mapping[str, FileEntry],
        meta: Mapping[str, Any] | None = None,
        device: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """A manifest for `files` made here and now (versions and device of this machine)."""
        from lowbit.artifact.fingerprint import fingerprint

        return cls.from_json(
            {
                "format_version": FORMAT_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "versions": installed_versions(),
                "device": dict(device) if device is not None else fingerprint(),
                "files": {k: {"sha256": v.sha256, "bytes": v.bytes} for k, v in sorted(files.items())},
                "meta": json.loads(json.dumps(dict(meta or {}))),  # plain JSON (fails early on non-JSON values)
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "created": self.created,
            "versions": dict(self.versions),
            "device": dict(self.device),
            "files": {k: {"sha256": v.sha256, "bytes": v.bytes} for k, v in sorted(self.files.items())},
            "meta": dict(self.meta),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n"

    def write(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            f.write(self.dumps())
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        """The manifest described by parsed JSON `obj`; `ManifestError` naming the first thing wrong."""
        if not isinstance(obj, dict):
            raise ManifestError(f"{MANIFEST_NAME} holds a JSON {type(obj).__name__}, not an object")
        _check_format_version(obj)
        missing = [k for k in _KEYS if k not in obj]
        extra = sorted(set(obj) - set(_KEYS))
        if missing or extra:
            raise ManifestError(
                f"{MANIFEST_NAME}: "
                + "; ".join(
                    ([f"missing key(s) {missing}"] if missing else [])
                    + ([f"unexpected key(s) {extra}"] if extra else [])
                )
                + f" (format_version {FORMAT_VERSION} has exactly {list(_KEYS)})"
            )
        created = _typed(obj, "created", str)
        try:
            datetime.datetime.fromisoformat(created)
        except ValueError:
            raise ManifestError(f"{MANIFEST_NAME}: created={created!r} is not an ISO 8601 time") from None
        return cls(
            format_version=obj["format_version"],
            created=created,
            versions=MappingProxyType(_versions(_typed(obj, "versions", dict))),
            device=MappingProxyType(_device(_typed(obj, "device", dict))),
            files=MappingProxyType(_files(_typed(obj, "files", dict))),
            meta=MappingProxyType(_typed(obj, "meta", dict)),
        )

    @classmethod
    def loads(cls, text: str | bytes) -> Manifest:
        try:
            obj = strict_json_loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ManifestError(f"{MANIFEST_NAME} is not valid JSON ({type(e).__name__}: {e})") from None
        return cls.from_json(obj)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Manifest:
        p = Path(path)
        size = p.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{MANIFEST_NAME} is {size} bytes (> {MAX_MANIFEST_BYTES}): not a lowbit manifest")
        return cls.loads(p.read_bytes())


# ---- field checks ----------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _typed(obj: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
    v = obj[key]
    ok = _is_int(v) if kind is int else isinstance(v, kind)
    if not ok:
        raise ManifestError(
            f"{MANIFEST_NAME}: {where}{key}={v!r:.80} is a {type(v).__name__}, expected {kind.__name__}"
        )
    return v


def _check_format_version(obj: Mapping[str, Any]) -> None:
    if "format_version" not in obj:
        raise ManifestError(f"{MANIFEST_NAME}: missing key 'format_version' (not a lowbit manifest?)")
    v = _typed(obj, "format_version", int)
    if v > FORMAT_VERSION:
        here = installed_versions()["lowbit"]
        made = obj.get("versions", {}).get("lowbit") if isinstance(obj.get("versions"), dict) else None
        raise ManifestError(
            f"{MANIFEST_NAME}: format_version {v} is newer than this lowbit ({here}) reads (<= {FORMAT_VERSION}); "
            f"upgrade lowbit{f' to {made} or later' if made else ''}, or re-compile with lowbit {here}"
        )
    if v < 1:
        raise ManifestError(f"{MANIFEST_NAME}: format_version {v} is not a valid version (>= 1)")


def _versions(v: dict[str, Any]) -> dict[str, str | None]:
    if set(v) != set(VERSION_PACKAGES):
        raise ManifestError(f"{MANIFEST_NAME}: versions has keys {sorted(v)}, expected {sorted(VERSION_PACKAGES)}")
    for k, x in v.items():
        if x is not None and not isinstance(x, str):
            raise ManifestError(f"{MANIFEST_NAME}: versions.{k}={x!r} must be a version string or null")
    return dict(v)


def _device(d: dict[str, Any]) -> dict[str, Any]:
    if set(d) != set(_DEVICE_KEYS):
        raise ManifestError(f"{MANIFEST_NAME}: device has keys {sorted(d)}, expected {sorted(_DEVICE_KEYS)}")
    for key, kind in _DEVICE_KEYS.items():
        if key == "cuda" and d[key] is None:
            continue
        _typed(d, key, kind, "device.")
    if not all(isinstance(f, str) for f in d["isa"]):
        raise ManifestError(f"{MANIFEST_NAME}: device.isa={d['isa']!r} must be a list of strings")
    cuda = d["cuda"]
    if cuda is not None and not (
        isinstance(cuda.get("name"), str) and isinstance(cuda.get("capability"), str) and _is_int(cuda.get("count"))
    ):
        raise ManifestError(f"{MANIFEST_NAME}: device.cuda={cuda!r} must be null or {{name, capability, count}}")
    return dict(d)


def _files(files: dict[str, Any]) -> dict[str, FileEntry]:
    out = {}
    for rel, entry in files.items():
        try:
            check_relpath(rel)
        except ArtifactError as e:
            raise ManifestError(f"{MANIFEST_NAME}: files: {e}") from None
        if not isinstance(entry, dict) or set(entry) != {"sha256", "bytes"}:
            raise ManifestError(f"{MANIFEST_NAME}: files[{rel!r}]={entry!r:.120} must be {{sha256, bytes}}")
        sha, size = entry["sha256"], entry["bytes"]
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise ManifestError(f"{MANIFEST_NAME}: files[{rel!r}].sha256={sha!r:.80} is not 64 lowercase hex digits")
        if not _is_int(size) or size < 0:
            raise ManifestError(f"{MANIFEST_NAME}: files[{rel!r}].bytes={size!r} is not a non-negative int")
        out[rel] = FileEntry(sha, size)
    return out


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "ArtifactError",
    "FileEntry",
    "Manifest",
    "ManifestError",
    "check_relpath",
    "installed_versions",
    "strict_json_loads",
]
