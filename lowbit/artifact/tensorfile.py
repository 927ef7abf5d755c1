"""Safetensors files written and read by lowbit, with strict header checks.

The format: an 8-byte little-endian header length n, n bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}` (padded with spaces),
then the tensor bytes; offsets are relative to the end of the header and tile the data exactly. No pickle,
no code: a file is data only.

lowbit writes the format itself because `safetensors.numpy` has no bf16/fp8: every dtype below round-trips
exactly (ml_dtypes arrays for BF16/F8_*), and the files read back with `safetensors.safe_open` (framework
"pt", or "numpy" for the dtypes NumPy has). Tensors are stored widest dtype first, then by name, after a
header padded to 8 bytes, so every tensor is aligned to its element size (zero-copy memory maps).

`read_header` checks a header against the file: JSON object, known dtypes, shapes of non-negative ints,
offsets that match shape x element size and tile the data with no gap, overlap or trailing bytes. Each
failure is a `TensorFileError` naming the file, the tensor and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_CODES = {dt: code for code, dt in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 2**20  # the limit safetensors itself enforces
METADATA_KEY = "__metadata__"


class TensorFileError(ValueError):
    """A safetensors file that cannot be written or whose header does not describe its bytes."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code: "F16", "BF16", "U32", ...
    shape: tuple[int, ...]
    begin: int  # byte offsets in the data section
    end: int

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class Header:
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    data_start: int  # 8 + header length


# ---- writing ---------------------------------------------------------------------------------------------


def to_numpy(value: Any, name: str = "tensor") -> np.ndarray:
    """`value` (NumPy array or torch tensor) as a C-contiguous little-endian array of a storable dtype, with
    the same bits (torch bf16/fp8 become ml_dtypes arrays)."""
    if type(value).__module__.split(".")[0] == "torch":
        import torch

        t = value.detach().to("cpu").contiguous()
        bits = {
            torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
            torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
            torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2),
        }
        if t.dtype in bits:
            as_int, np_dtype = bits[t.dtype]
            return t.view(as_int).numpy().view(np_dtype)
        value = t.numpy()
    a = np.asarray(value)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype not in _CODES:
        raise TensorFileError(
            f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot store; use one of "
            f"{sorted(str(d) for d in _CODES)}"
        )
    return a if a.flags.c_contiguous else a.copy(order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)


def save(path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` ({name: array}) and string `metadata` to `path` as safetensors."""
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == METADATA_KEY:
            raise TensorFileError(f"tensor name {name!r} is not allowed (a non-empty string other than {METADATA_KEY})")
        arrays[name] = to_numpy(value, name)
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TensorFileError(f"safetensors metadata must map str to str; got {k!r}: {v!r} (use json.dumps(v))")
    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    header: dict[str, Any] = {METADATA_KEY: meta} if meta else {}
    offset = 0
    for name in order:
        a = arrays[name]
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            f.write(arrays[name].tobytes())


# ---- reading ---------------------------------------------------------------------------------------------


def _fail(path: Path, msg: str) -> TensorFileError:
    return TensorFileError(f"{path.name}: {msg}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensor_info(path: Path, name: str, spec: Any) -> TensorInfo:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        keys = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise _fail(path, f"tensor {name!r}: entry {keys} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPES:
        raise _fail(path, f"tensor {name!r}: unknown dtype {dtype!r} (known: {sorted(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _fail(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    if not 0 <= begin <= end or end - begin != nbytes:
        raise _fail(
            path,
            f"tensor {name!r}: data_offsets {offsets} hold {end - begin} bytes, shape {shape} of {dtype} is {nbytes}",
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def read_header(path: str | os.PathLike[str]) -> Header:
    """The checked header of a safetensors file (see the module doc); `TensorFileError` if it is not one."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(path, f"{size} bytes is shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise _fail(path, f"header length {n} is implausible (> {MAX_HEADER_BYTES} bytes): not a safetensors file")
        if n > size - 8:
            raise _fail(path, f"header length {n} runs past the end of the file ({size} bytes): truncated")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(path, f"header is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header is a JSON {type(header).__name__}, not an object")
    meta = header.pop(METADATA_KEY, {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _fail(path, f"{METADATA_KEY} must map str to str; got {meta!r:.200}")
    infos = {name: _tensor_info(path, name, spec) for name, spec in header.items()}
    data_bytes = size - 8 - n
    at = 0
    for info in sorted(infos.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != at:
            what = "overlaps the previous tensor" if info.begin < at else f"leaves a gap of {info.begin - at} bytes"
            raise _fail(path, f"tensor {info.name!r} at data offset {info.begin} {what}")
        at = info.end
    if at != data_bytes:
        kind = "truncated" if at > data_bytes else "trailing bytes after the last tensor"
        raise _fail(path, f"tensors need {at} data bytes, the file has {data_bytes}: {kind}")
    return Header(infos, meta, 8 + n)


class TensorFile(Mapping[str, np.ndarray]):
    """A safetensors file opened lazily: the header is read and checked, tensors are read-only views of a
    memory map, made when asked for. Use as a context manager (or call `close`)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.header = read_header(self.path)
        self._file = open(self.path, "rb")  # noqa: SIM115 (held open until close(): tensors are views of its map)
        size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    @property
    def metadata(self) -> Mapping[str, str]:
        return self.header.metadata

    def info(self, name: str) -> TensorInfo:
        if name not in self.header.tensors:
            raise KeyError(f"{self.path.name} has no tensor {name!r}; it has {sorted(self.header.tensors)[:10]}")
        return self.header.tensors[name]

    def __getitem__(self, name: str) -> np.ndarray:
        t = self.info(name)
        if t.begin == t.end:
            return np.zeros(t.shape, t.numpy_dtype)
        assert self._map is not None
        count = (t.end - t.begin) // t.numpy_dtype.itemsize
        return np.frombuffer(self._map, t.numpy_dtype, count, self.header.data_start + t.begin).reshape(t.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.header.tensors))

    def __len__(self) -> int:
        return len(self.header.tensors)

    def close(self) -> None:
        # views handed out keep the map alive (mmap refuses to close while exported); the file closes now
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
        self._file.close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as an owned NumPy array."""
    with TensorFile(path) as f:
        return {name: np.array(f[name]) for name in f}


__all__ = ["DTYPES", "Header", "TensorFile", "TensorFileError", "TensorInfo", "load", "read_header", "save", "to_numpy"]
