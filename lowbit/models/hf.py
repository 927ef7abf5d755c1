"""Load and save HF model directories: config.json + safetensors (+ tokenizer.json, tokenizer_config.json,
generation_config.json).

    load_hf_dir(path)  -> LoadedModel   reads a local directory only: no network, no pickle
    checkpoint_quantization(path) -> (CheckpointFormat, quantized module names) | None   config + headers only
    save_hf_dir(path, arch, weights, tokenizer=None, shard_bytes=None)   writes one transformers can load

Weights are looked up as HF does: `model.safetensors`, else `model.safetensors.index.json` (weight_map ->
shards), else every `*.safetensors` in the directory. `pytorch_model*.bin` / `*.pt` checkpoints are pickles and
are refused with the command that converts them.

Quantized checkpoints (config.json `quantization_config`: AutoAWQ GEMM or GPTQ v1/v2, see
`lowbit.quant.checkpoint_import`): every `<module>.qweight/.qzeros/.scales` is imported into a
`QuantizedWeight` (`LoadedModel.quantized`), and `LoadedModel.weights` serves `<module>.weight` as its exact
dequantization, (q − z)·s, so everything that reads float weights (the float64 reference, calibration,
modules kept dense) sees the checkpoint's model. The packed tensors themselves are not in `weights`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowbit.models.arch import ArchConfig, ConfigError, eos_ids
from lowbit.models.weights import (
    SAVE_DTYPES,
    ArrayWeights,
    SafetensorsWeights,
    WeightError,
    WeightStore,
    check_weights,
    write_safetensors,
)

if TYPE_CHECKING:
    from lowbit.ops.weight import QuantizedWeight
    from lowbit.quant.checkpoint_import import CheckpointFormat

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
CONVERT_HINT = (
    "convert it once with transformers: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir, "
    "safe_serialization=True), and copy the tokenizer files"
)


@dataclass(frozen=True)
class LoadedModel:
    """An HF directory read from disk: the architecture, lazy weights, and where the tokenizer is. For a
    quantized checkpoint, `quantization` is its format and `quantized` maps module name -> QuantizedWeight
    (row layout); `weights` then holds their dequantized `<module>.weight` (see the module docstring)."""

    path: Path
    arch: ArchConfig
    weights: WeightStore = field(compare=False)
    tokenizer_path: Path | None
    generation_config: Mapping[str, Any] = field(compare=False)
    source_files: tuple[Path, ...]
    config: Mapping[str, Any] = field(compare=False, default_factory=dict)  # config.json as read
    tokenizer_config_path: Path | None = None  # tokenizer_config.json (chat_template, special tokens)
    quantization: CheckpointFormat | None = None
    quantized: Mapping[str, QuantizedWeight] = field(compare=False, default_factory=dict)

    @property
    def bos_token_id(self) -> int | None:
        bos = self.generation_config.get("bos_token_id", self.arch.bos_token_id)
        return None if bos is None else int(bos)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Stop tokens: generation_config.json's eos_token_id (what HF generate uses), else config.json's."""
        eos = self.generation_config.get("eos_token_id")
        return self.arch.eos_token_id if eos is None else eos_ids(eos)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: {what} is not valid JSON ({e})") from e


def load_hf_dir(path: Path | str, check: bool = True) -> LoadedModel:
    """Read an HF causal-LM directory (Llama / Mistral / Qwen2) from local disk; never touches the network.

    Reads config.json (ArchConfig.from_hf_config), the safetensors weights (memory-mapped, see
    SafetensorsWeights), generation_config.json if present and locates tokenizer.json. With `check`, every
    parameter the architecture needs must be present with its shape (`check_weights`).
    Raises ConfigError (config problems) or WeightError (weight files), naming the file and the fix.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"model directory {root} does not exist (lowbit loads local directories only, no hub ids)")
    if not root.is_dir():
        raise ConfigError(f"{root} is a file; pass the model directory that holds config.json")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"{root} has no config.json; an HF model directory needs config.json next to the weights")
    config = _read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    arch = ArchConfig.from_hf_config(config)
    fmt = _checkpoint_format(config_path, config)
    raw, weight_files = _open_weights(root)
    weights: WeightStore = raw
    quantized: dict[str, QuantizedWeight] = {}
    if fmt is not None:
        quantized = _import_quantized(raw, fmt, arch, config_path)
        weights = DequantizedWeights(raw, quantized)
    if check:
        check_weights(weights, arch)

    gen_path = root / "generation_config.json"
    generation = _read_json(gen_path, "generation_config.json") if gen_path.is_file() else {}
    tok_path, tok_cfg_path = root / "tokenizer.json", root / "tokenizer_config.json"
    files = [config_path, *weight_files]
    files += [p for p in (gen_path, tok_path, tok_cfg_path) if p.is_file()]
    return LoadedModel(
        path=root,
        arch=arch,
        weights=weights,
        tokenizer_path=tok_path if tok_path.is_file() else None,
        generation_config=generation,
        source_files=tuple(files),
        config=config,
        tokenizer_config_path=tok_cfg_path if tok_cfg_path.is_file() else None,
        quantization=fmt,
        quantized=quantized,
    )


# -- quantized checkpoints ---------------------------------------------------------------------------------
PACKED_SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")


def _checkpoint_format(config_path: Path, config: Mapping[str, Any]) -> CheckpointFormat | None:
    """The checkpoint's quantization format, None for a float checkpoint; ConfigError naming the key."""
    qc = config.get("quantization_config")
    if qc is None:
        return None
    from lowbit.quant.checkpoint_import import parse_quantization_config

    if not isinstance(qc, Mapping):
        raise ConfigError(f"{config_path}: quantization_config is a {type(qc).__name__}; expected an object")
    try:
        return parse_quantization_config(qc)
    except ValueError as e:
        raise ConfigError(f"{config_path}: {e}") from None


def checkpoint_quantization(path: Path | str) -> tuple[CheckpointFormat, tuple[str, ...]] | None:
    """(format, names of the modules stored quantized) of the HF directory `path`, or None when config.json
    has no quantization_config. Reads config.json and the safetensors headers only (no tensor data), so a
    compiler can check a recipe against the checkpoint before loading it: every quantized module has its
    qzeros and scales, and its packed shapes are those of the architecture at the config's bits and group
    size. ConfigError (config.json) / WeightError (tensors), naming the key or tensor and the fix."""
    root = Path(path).expanduser()
    config_path = root / "config.json"
    config = _read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    fmt = _checkpoint_format(config_path, config)
    if fmt is None:
        return None
    store, _ = _open_weights(root)
    modules = _packed_modules(store, fmt, ArchConfig.from_hf_config(config), config_path)
    return fmt, tuple(modules)


def _packed_modules(store: SafetensorsWeights, fmt: CheckpointFormat, arch: ArchConfig, config_path: Path) -> list[str]:
    """The quantized modules of `store`, each checked for its tensors and their shapes (headers only)."""
    from lowbit.quant.checkpoint_import import quantized_modules

    modules = quantized_modules(store.names())
    if not modules:
        raise WeightError(
            f"{config_path} has quantization_config (quant_method {fmt.method!r}) but no tensor is named "
            f"'<module>.qweight' in {store.describe()}; the weights are not the quantized ones: restore the "
            f"checkpoint's safetensors"
        )
    shapes = arch.param_shapes()
    for m in modules:
        missing = [s for s in ("qzeros", "scales") if f"{m}.{s}" not in store]
        if missing:
            raise WeightError(
                f"{store.source(m + '.qweight')}: {m} has a qweight but no {m}.{missing[0]}; a quantized module "
                f"needs qweight, qzeros and scales: restore the files the quantizer wrote"
            )
        want = shapes.get(f"{m}.weight")
        if want is None:
            continue
        n, k = int(want[0]), int(want[1])
        got = tuple(store.shape(f"{m}.qweight"))
        expect = (k, n * fmt.bits // 32) if fmt.method == "awq" else (k * fmt.bits // 32, n)
        if got != expect:
            held = _packed_bits(got, (n, k), fmt.method)
            raise WeightError(
                f"{store.source(m + '.qweight')}: {m}.qweight is {list(got)}, but an [{n}, {k}] weight at "
                f"quantization_config.bits={fmt.bits} packs to {list(expect)} ({fmt.describe()}); it holds "
                f"{held}-bit codes: fix quantization_config.bits in {config_path.name}"
            )
    return modules


class _Raw(Mapping[str, np.ndarray]):
    """A safetensors store's tensors at their stored dtypes (int32 codes must not be widened to float)."""

    def __init__(self, store: SafetensorsWeights) -> None:
        self.store = store

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.store:
            raise KeyError(name)
        return np.asarray(self.store._read(name))  # the stored dtype; _read is the store's raw accessor

    def __iter__(self) -> Iterator[str]:
        return iter(self.store.names())

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, name: object) -> bool:
        return name in self.store


def _import_quantized(
    store: SafetensorsWeights, fmt: CheckpointFormat, arch: ArchConfig, config_path: Path
) -> dict[str, QuantizedWeight]:
    """Every quantized module of the checkpoint as a QuantizedWeight (checked as `_packed_modules` does)."""
    from lowbit.quant.checkpoint_import import import_module

    raw = _Raw(store)
    out: dict[str, QuantizedWeight] = {}
    for m in _packed_modules(store, fmt, arch, config_path):
        try:
            out[m] = import_module(raw, m, fmt, "row")
        except ValueError as e:
            raise WeightError(
                f"{store.source(m + '.qweight')}: {e} (config.json quantization_config: {fmt.describe()}); the "
                f"checkpoint and its quantization_config disagree: restore the files the quantizer wrote"
            ) from None
    return out


def _packed_bits(qweight_shape: tuple[int, ...], want: tuple[int, int], method: str) -> str:
    # the bit width a qweight of this shape holds for an [N, K] weight: AWQ packs along N, GPTQ along K
    n, k = want
    rows, cols = int(qweight_shape[0]), int(qweight_shape[1])
    packed, count = (cols, n) if method == "awq" else (rows, k)
    return str(32 * packed // count) if count and (32 * packed) % count == 0 else "an unknown number of"


class DequantizedWeights(WeightStore):
    """A quantized checkpoint's weights as float tensors: `<module>.weight` = `quantized[module].dequantize()`
    (exact: codes, zeros and fp16 scales are exact in float32); the packed tensors are hidden, every other
    tensor is the checkpoint's."""

    def __init__(self, base: WeightStore, quantized: Mapping[str, QuantizedWeight]) -> None:
        self.base = base
        self.quantized = dict(quantized)
        packed = {f"{m}{s}" for m in self.quantized for s in PACKED_SUFFIXES}
        self._names = [n for n in base.names() if n not in packed] + [f"{m}.weight" for m in self.quantized]
        self._set = set(self._names)

    def _module(self, name: str) -> str | None:
        m = name.removesuffix(".weight")
        return m if name.endswith(".weight") and m in self.quantized else None

    def names(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._set

    def shape(self, name: str) -> tuple[int, ...]:
        m = self._module(name)
        return tuple(self.quantized[m].shape) if m is not None else self.base.shape(name)

    def dtype(self, name: str) -> str:
        m = self._module(name)
        return "float32" if m is not None else self.base.dtype(name)

    def source(self, name: str) -> str:
        m = self._module(name)
        return f"{self.base.source(m + '.qweight')} (dequantized)" if m is not None else self.base.source(name)

    def _read(self, name: str) -> np.ndarray:
        m = self._module(name)
        return self.quantized[m].dequantize() if m is not None else self.base._read(name)

    def describe(self) -> str:
        return f"{self.base.describe()}, {len(self.quantized)} modules dequantized"


def _open_weights(root: Path) -> tuple[SafetensorsWeights, list[Path]]:
    single, index_path = root / SINGLE_FILE, root / INDEX_FILE
    if single.is_file():
        return SafetensorsWeights([single]), [single]
    if index_path.is_file():
        index = _read_json(index_path, INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightError(f"{index_path} has no 'weight_map' object (tensor name -> shard file); re-save the model")
        shards = sorted({str(f) for f in weight_map.values()})
        missing = [s for s in shards if not (root / s).is_file()]
        if missing:
            raise WeightError(
                f"{index_path} lists shard {missing[0]}, which is not in {root} ({len(missing)} of {len(shards)} "
                "shards missing); download every shard the index names"
            )
        paths = [root / s for s in shards]
        return SafetensorsWeights(paths, index=weight_map), [index_path, *paths]
    found = sorted(root.glob("*.safetensors"))
    if found:
        return SafetensorsWeights(found), found
    pickles = sorted({p.name for pattern in PICKLE_PATTERNS for p in root.glob(pattern)})
    if pickles:
        raise WeightError(
            f"{root} has only pickle checkpoints ({', '.join(pickles[:3])}); lowbit never unpickles weights: "
            + CONVERT_HINT
        )
    raise WeightError(f"{root} has no weights: expected {SINGLE_FILE} or {INDEX_FILE} with its shards")


def save_hf_dir(
    path: Path | str,
    arch: ArchConfig,
    weights: Mapping[str, np.ndarray],
    tokenizer: Any = None,
    shard_bytes: int | None = None,
    dtype: str | None = None,
    generation_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write an HF directory transformers can load: config.json (`arch.to_hf_config()`), the parameters of
    `arch.param_shapes()` as safetensors at `dtype` (default arch.torch_dtype; float32/float16/bfloat16),
    sharded with model.safetensors.index.json when `shard_bytes` is given, generation_config.json (bos/eos),
    and, given a `tokenizers.Tokenizer`, tokenizer.json + tokenizer_config.json. One tensor in memory at a time.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    dtype = dtype or arch.torch_dtype
    if dtype not in SAVE_DTYPES:
        raise WeightError(f"save dtype {dtype!r} (arch.torch_dtype or dtype=) is not one of {sorted(SAVE_DTYPES)}")
    store = weights if isinstance(weights, WeightStore) else ArrayWeights(weights)
    check_weights(store, arch)
    shapes = arch.param_shapes()
    arch = dataclasses.replace(arch, torch_dtype=dtype)
    (root / "config.json").write_text(json.dumps(arch.to_hf_config(), indent=2) + "\n")

    gen = dict(generation_config or {})
    if arch.bos_token_id is not None:
        gen.setdefault("bos_token_id", arch.bos_token_id)
    if arch.eos_token_id:
        gen.setdefault("eos_token_id", list(arch.eos_token_id) if len(arch.eos_token_id) > 1 else arch.eos_token_id[0])
    (root / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    itemsize = 4 if dtype == "float32" else 2
    sizes = {n: int(np.prod(s, dtype=np.int64)) * itemsize for n, s in shapes.items()}
    if shard_bytes is None:
        write_safetensors(root / SINGLE_FILE, store, shapes, dtype, shapes)
    else:
        shards: list[list[str]] = [[]]
        used = 0
        for name in shapes:
            if shards[-1] and used + sizes[name] > shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(name)
            used += sizes[name]
        weight_map: dict[str, str] = {}
        for i, names in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(root / fname, store, names, dtype, shapes)
            weight_map.update(dict.fromkeys(names, fname))
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (root / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    if tokenizer is not None:
        tokenizer.save(str(root / "tokenizer.json"))
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        tok_cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        for key, tok in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")):
            if tok in specials:
                tok_cfg[key] = tok
        (root / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    return root


__all__ = [
    "INDEX_FILE",
    "SINGLE_FILE",
    "DequantizedWeights",
    "LoadedModel",
    "checkpoint_quantization",
    "load_hf_dir",
    "save_hf_dir",
]
