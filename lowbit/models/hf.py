"""Load and save HF model directories: config.json + safetensors (+ tokenizer.json, generation_config.json).

    load_hf_dir(path)  -> LoadedModel   reads a local directory only: no network, no pickle
    save_hf_dir(path, arch, weights, tokenizer=None, shard_bytes=None)   writes one transformers can load

Weights are looked up as HF does: `model.safetensors`, else `model.safetensors.index.json` (weight_map ->
shards), else every `*.safetensors` in the directory. `pytorch_model*.bin` / `*.pt` checkpoints are pickles and
are refused with the command that converts them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lowbit.models.arch import ArchConfig, ConfigError
from lowbit.models.weights import (
    SAVE_DTYPES,
    ArrayWeights,
    SafetensorsWeights,
    WeightError,
    WeightStore,
    check_weights,
    write_safetensors,
)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
CONVERT_HINT = (
    "convert it once with transformers: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir, "
    "safe_serialization=True), and copy the tokenizer files"
)


@dataclass(frozen=True)
class LoadedModel:
    """An HF directory read from disk: the architecture, lazy weights, and where the tokenizer is."""

    path: Path
    arch: ArchConfig
    weights: WeightStore = field(compare=False)
    tokenizer_path: Path | None
    generation_config: Mapping[str, Any] = field(compare=False)
    source_files: tuple[Path, ...]
    config: Mapping[str, Any] = field(compare=False, default_factory=dict)  # config.json as read

    @property
    def bos_token_id(self) -> int | None:
        bos = self.generation_config.get("bos_token_id", self.arch.bos_token_id)
        return None if bos is None else int(bos)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Stop tokens: generation_config.json's eos_token_id (what HF generate uses), else config.json's."""
        eos = self.generation_config.get("eos_token_id")
        if eos is None:
            return self.arch.eos_token_id
        return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))


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
    if "quantization_config" in config:
        method = config["quantization_config"].get("quant_method", "?")
        raise ConfigError(
            f"{config_path} has quantization_config (quant_method {method!r}): the checkpoint is already quantized; "
            "lowbit quantizes from the float checkpoint: point it at the original model"
        )
    arch = ArchConfig.from_hf_config(config)
    weights, weight_files = _open_weights(root)
    if check:
        check_weights(weights, arch)

    gen_path = root / "generation_config.json"
    generation = _read_json(gen_path, "generation_config.json") if gen_path.is_file() else {}
    tok_path = root / "tokenizer.json"
    files = [config_path, *weight_files]
    files += [p for p in (gen_path, tok_path) if p.is_file()]
    return LoadedModel(
        path=root,
        arch=arch,
        weights=weights,
        tokenizer_path=tok_path if tok_path.is_file() else None,
        generation_config=generation,
        source_files=tuple(files),
        config=config,
    )


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


__all__ = ["INDEX_FILE", "SINGLE_FILE", "LoadedModel", "load_hf_dir", "save_hf_dir"]
