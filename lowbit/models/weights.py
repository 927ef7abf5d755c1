"""`WeightStore`: a read-only mapping HF parameter name -> float32 array, and safetensors read/write.

Three stores behind one interface (`store[name]`, `shape`, `dtype`, `names`, `source`, `nbytes`):
    SafetensorsWeights  memory-maps the files; a tensor is read (and widened to float32) only when indexed,
                        so a 1B-parameter checkpoint is never held twice. float32 tensors come back as
                        read-only views of the map, bf16 / fp16 / fp8 as fresh float32 arrays.
    ArrayWeights        a dict of arrays (tests, dequantized overrides, small synthetic models)
    LazyWeights         each tensor made on demand by a function of its name (synthetic models)

Safetensors is read without torch: an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw little-endian
data (offsets relative to the end of the header). bf16 and fp8 decode through ml_dtypes.
"""

from __future__ import annotations

import difflib
import json
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.artifact import tensorfile
from lowbit.models.arch import ArchConfig

# safetensors dtype tag -> (numpy dtype, lowbit / torch dtype name): lowbit.artifact.tensorfile's table
SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, str]] = {tag: (dt, str(dt)) for tag, dt in tensorfile.DTYPES.items()}
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
SAVE_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit


class WeightError(ValueError):
    """A checkpoint file or tensor is missing, malformed or has the wrong shape; the message names it."""


class WeightStore(Mapping[str, np.ndarray]):
    """Read-only name -> float32 array. Subclasses implement `names`, `shape`, `dtype`, `source`, `_read`."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def dtype(self, name: str) -> str:
        """The stored dtype ("bfloat16", "float32", ...); `store[name]` is always float32."""
        raise NotImplementedError

    def source(self, name: str) -> str:
        """Where the tensor lives (a file path, "memory", "synthetic(seed=0)"), for error messages."""
        raise NotImplementedError

    def _read(self, name: str) -> np.ndarray:
        raise NotImplementedError

    # -- Mapping -------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self:
            hint = difflib.get_close_matches(name, self.names(), n=1)
            raise KeyError(
                f"no tensor {name!r} in {self.describe()}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
        arr = self._read(name)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        if arr.flags.writeable:
            arr.flags.writeable = False  # a store is read-only; copy before modifying
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in set(self.names())

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors at their stored dtypes."""
        total = 0
        for name in self.names():
            itemsize = _itemsize(self.dtype(name))
            total += int(np.prod(self.shape(name), dtype=np.int64)) * itemsize
        return total

    def describe(self) -> str:
        return f"{type(self).__name__} ({len(self)} tensors)"


def _itemsize(dtype: str) -> int:
    for np_dtype, name in SAFETENSORS_DTYPES.values():
        if name == dtype:
            return np_dtype.itemsize
    return np.dtype(dtype).itemsize


# -- in memory -----------------------------------------------------------------------------------------
class ArrayWeights(WeightStore):
    """A dict of arrays; `store[name]` is a read-only float32 view (a copy only when the array is not float32)."""

    def __init__(self, arrays: Mapping[str, Any], source: str = "memory") -> None:
        self._arrays = {name: np.asarray(a) for name, a in arrays.items()}
        self._source = source

    def names(self) -> list[str]:
        return list(self._arrays)

    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._arrays[name].shape)

    def dtype(self, name: str) -> str:
        return str(self._arrays[name].dtype)

    def source(self, name: str) -> str:
        return self._source

    def _read(self, name: str) -> np.ndarray:
        return self._arrays[name].view()


class LazyWeights(WeightStore):
    """Tensors made on demand: `make(name)` -> array of `shapes[name]`; nothing is cached (make is pure)."""

    def __init__(
        self, shapes: Mapping[str, tuple[int, ...]], make: Callable[[str], np.ndarray], dtype: str, source: str
    ) -> None:
        self._shapes = dict(shapes)
        self._make = make
        self._dtype = dtype
        self._source = source

    def names(self) -> list[str]:
        return list(self._shapes)

    def __contains__(self, name: object) -> bool:
        return name in self._shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def dtype(self, name: str) -> str:
        return self._dtype

    def source(self, name: str) -> str:
        return self._source

    def _read(self, name: str) -> np.ndarray:
        arr = self._make(name)
        if tuple(arr.shape) != self._shapes[name]:
            raise WeightError(f"{self._source} made {name} with shape {arr.shape}, expected {self._shapes[name]}")
        return arr

    def materialize(self) -> ArrayWeights:
        """Every tensor made once and kept (float32)."""
        return ArrayWeights({name: self[name] for name in self.names()}, source=self._source)


# -- safetensors ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    file: Path
    tag: str  # safetensors dtype tag, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(name -> TensorInfo, __metadata__) of one .safetensors file; WeightError naming the file if malformed."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightError(f"{path}: {size} bytes is too short for a safetensors file (8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise WeightError(f"{path}: header length {n} does not fit the file ({size} bytes); not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightError(f"{path}: safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise WeightError(f"{path}: safetensors header is {type(header).__name__}, expected a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            tag, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise WeightError(f"{path}: header entry {name!r} = {entry!r} lacks dtype/shape/data_offsets") from e
        if tag not in SAFETENSORS_DTYPES:
            raise WeightError(
                f"{path}: tensor {name} has dtype {tag}, which lowbit does not read; use one of "
                f"{sorted(SAFETENSORS_DTYPES)}"
            )
        nbytes = int(np.prod(shape, dtype=np.int64)) * SAFETENSORS_DTYPES[tag][0].itemsize
        if end - begin != nbytes or begin < 0 or 8 + n + end > size:
            raise WeightError(
                f"{path}: tensor {name} {tag}{list(shape)} needs {nbytes} bytes but data_offsets are [{begin}, {end}] "
                f"in a {size - 8 - n}-byte data section; the file is truncated or corrupt"
            )
        infos[name] = TensorInfo(path, tag, shape, 8 + n + begin, 8 + n + end)
    return infos, {str(k): str(v) for k, v in metadata.items()}


class SafetensorsWeights(WeightStore):
    """Tensors of one or more .safetensors files, memory-mapped. `index` (name -> file) restricts which file
    each name is read from (a sharded checkpoint's weight_map); without it a name must be in exactly one file."""

    def __init__(self, files: Iterable[Path | str], index: Mapping[str, str] | None = None) -> None:
        self._infos: dict[str, TensorInfo] = {}
        self._maps: dict[Path, np.memmap] = {}
        self.files = tuple(Path(p) for p in files)
        for path in self.files:
            if not path.is_file():
                raise WeightError(f"weights file {path} does not exist")
            infos, _ = read_safetensors_header(path)
            for name, info in infos.items():
                if index is not None and Path(index.get(name, "")).name != path.name:
                    continue
                if name in self._infos:
                    raise WeightError(f"tensor {name} is in both {self._infos[name].file} and {path}; keep one")
                self._infos[name] = info
        if index is not None:
            missing = [(name, f) for name, f in index.items() if name not in self._infos]
            if missing:
                name, f = missing[0]
                raise WeightError(
                    f"the index says {name} is in {f}, but that file has no such tensor "
                    f"({len(missing)} such tensors); the index and the shards disagree: re-save the checkpoint"
                )

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._infos[name].shape

    def dtype(self, name: str) -> str:
        return SAFETENSORS_DTYPES[self._infos[name].tag][1]

    def source(self, name: str) -> str:
        return str(self._infos[name].file)

    def describe(self) -> str:
        files = ", ".join(p.name for p in self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        return f"safetensors [{files}] ({len(self)} tensors)"

    def _read(self, name: str) -> np.ndarray:
        info = self._infos[name]
        mm = self._maps.get(info.file)
        if mm is None:
            mm = self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
        raw = mm[info.begin : info.end]
        return raw.view(SAFETENSORS_DTYPES[info.tag][0]).reshape(info.shape)


def write_safetensors(
    path: Path | str, store: Mapping[str, np.ndarray], names: Iterable[str], dtype: str, shapes: Mapping[str, Any]
) -> int:
    """Write tensors `names` of `store` (shapes given up front) to one .safetensors file at `dtype`
    ("float32" | "float16" | "bfloat16"), one tensor in memory at a time. Returns the data bytes written."""
    if dtype not in SAVE_DTYPES:
        raise WeightError(f"cannot save weights as {dtype!r}; use one of {sorted(SAVE_DTYPES)}")
    tag = SAVE_DTYPES[dtype]
    np_dtype = SAFETENSORS_DTYPES[tag][0]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = list(names)
    for name in names:
        shape = [int(d) for d in shapes[name]]
        nbytes = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
        header[name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            arr = np.ascontiguousarray(np.asarray(store[name], dtype=np.float32).astype(np_dtype, copy=False))
            if tuple(arr.shape) != tuple(int(d) for d in shapes[name]):
                raise WeightError(f"tensor {name} has shape {arr.shape}, expected {tuple(shapes[name])}")
            f.write(arr.reshape(-1).view(np.uint8).data)
    return offset


# -- checks --------------------------------------------------------------------------------------------
KNOWN_EXTRAS = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry; recomputed from the config


def check_weights(store: WeightStore, arch: ArchConfig) -> list[str]:
    """Every parameter of `arch.param_shapes()` is in `store` as a float tensor of the right shape, else
    WeightError naming the tensor, expected vs found shape and the file. Returns the names of extra tensors
    the architecture does not use (a warning is issued for them, except known buffers such as
    rotary_emb.inv_freq; lm_head.weight in a tied checkpoint is ignored, as HF ignores it)."""
    problems: list[str] = []
    for name, shape in arch.param_shapes().items():
        if name not in store:
            hint = difflib.get_close_matches(name, store.names(), n=1)
            problems.append(f"missing {name} {list(shape)}" + (f" (found {hint[0]!r})" if hint else ""))
            continue
        found, dtype = store.shape(name), store.dtype(name)
        if found != shape:
            problems.append(f"{name} has shape {list(found)}, expected {list(shape)} (in {store.source(name)})")
        elif dtype not in FLOAT_DTYPES:
            problems.append(
                f"{name} is {dtype} (in {store.source(name)}); lowbit reads float weights, or the pre-quantized "
                "(GPTQ/AWQ packed) modules a config.json quantization_config describes: use the float checkpoint"
            )
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise WeightError(
            f"weights do not match the {arch.model_type} architecture from config.json "
            f"({arch.num_layers} layers, hidden {arch.hidden_size}): " + "; ".join(problems[:8]) + more
        )
    expected = arch.param_shapes()
    extra = [n for n in store.names() if n not in expected]
    loud = [
        n for n in extra if not n.endswith(KNOWN_EXTRAS) and not (arch.tie_word_embeddings and n == "lm_head.weight")
    ]
    if loud:
        warnings.warn(
            f"{len(loud)} tensors in the checkpoint are not used by the {arch.model_type} architecture and are "
            f"ignored: {', '.join(loud[:5])}" + (", ..." if len(loud) > 5 else ""),
            stacklevel=2,
        )
    return extra


__all__ = [
    "SAFETENSORS_DTYPES",
    "ArrayWeights",
    "LazyWeights",
    "SafetensorsWeights",
    "TensorInfo",
    "WeightError",
    "WeightStore",
    "check_weights",
    "read_safetensors_header",
    "write_safetensors",
]
