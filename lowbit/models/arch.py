"""`ArchConfig`: the architecture of a Llama-family decoder, read from an HF `config.json` or written by hand.

One frozen value shared by the model loader, the graph builder, the quantizers and the runtime. Families:
    llama    Llama 2/3 (GQA, optional llama3 / linear RoPE scaling, `attention_bias` on q/k/v/o)
    mistral  as llama without biases; `sliding_window` (all layers) is recorded: key j is visible from query i
             when i - window < j <= i (contexts longer than it are refused by the runtime)
    qwen2    bias on q/k/v only, `tie_word_embeddings` common; with `use_sliding_window`, layers from
             `max_window_layers` on (or those `layer_types` marks "sliding_attention") use the window
HF transformers 4.x writes `rope_theta` + `rope_scaling`; 5.x writes `rope_parameters` {rope_type,
rope_theta, ...}. Both are read; `to_hf_config()` writes the 4.x keys plus `rope_parameters`, which both read.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
HIDDEN_ACTS = ("silu",)

# HF module names of one decoder layer's linears, in execution order: (name, input feature, output feature)
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


class ConfigError(ValueError):
    """A config.json / architecture field is missing or unsupported; the message names field, value and fix."""


@dataclass(frozen=True)
class LinearShape:
    """One linear layer of the model: HF module name, out_features (N), in_features (K), bias."""

    name: str
    out_features: int
    in_features: int
    bias: bool = False


@dataclass(frozen=True)
class ArchConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # HF rope_scaling dict as sorted items; () = none
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    sliding_window: int | None = None
    window_from_layer: int = 0  # layers >= this use sliding_window (Qwen2 max_window_layers; 0 = all, Mistral)
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    torch_dtype: str = "float32"
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.model_type not in FAMILIES:
            raise ConfigError(f"model_type {self.model_type!r} is not supported; use one of {list(FAMILIES)}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} = {v!r}: must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads = {self.num_heads} is not a multiple of num_key_value_heads = "
                f"{self.num_kv_heads}; GQA needs whole groups"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim = {self.head_dim} is odd; RoPE rotates channel pairs")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; use one of {list(HIDDEN_ACTS)}")
        if self.sliding_window is not None and (isinstance(self.sliding_window, bool) or self.sliding_window <= 0):
            raise ConfigError(f"sliding_window = {self.sliding_window!r}: must be a positive integer or None")
        if self.window_from_layer < 0 or (self.model_type != "qwen2" and self.window_from_layer):
            raise ConfigError(
                f"window_from_layer = {self.window_from_layer}: must be >= 0, and 0 unless model_type is qwen2 "
                "(HF Llama/Mistral window every layer or none)"
            )
        rtype = self.rope_type
        if rtype not in ROPE_TYPES:
            raise ConfigError(f"rope_scaling.rope_type {rtype!r} is not supported; use one of {list(ROPE_TYPES)}")

    # -- derived ---------------------------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA ratio)."""
        return self.num_heads // self.num_kv_heads

    @property
    def rope_type(self) -> str:
        return str(dict(self.rope_scaling).get("rope_type", "default"))

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def layer_sliding_window(self, layer: int) -> int | None:
        """The attention window of decoder layer `layer` (None: full causal attention)."""
        return self.sliding_window if layer >= self.window_from_layer else None

    def layer_linears(self, layer: int) -> list[LinearShape]:
        """The seven linears of decoder layer `layer` with HF names, e.g. model.layers.0.self_attn.q_proj."""
        a, m = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
        h, i = self.hidden_size, self.intermediate_size
        return [
            LinearShape(f"{a}.q_proj", self.q_size, h, self.qkv_bias),
            LinearShape(f"{a}.k_proj", self.kv_size, h, self.qkv_bias),
            LinearShape(f"{a}.v_proj", self.kv_size, h, self.qkv_bias),
            LinearShape(f"{a}.o_proj", h, self.q_size, self.o_bias),
            LinearShape(f"{m}.gate_proj", i, h, self.mlp_bias),
            LinearShape(f"{m}.up_proj", i, h, self.mlp_bias),
            LinearShape(f"{m}.down_proj", h, i, self.mlp_bias),
        ]

    def linears(self) -> list[LinearShape]:
        """Every linear of the model, lm_head last (lm_head shares embed_tokens when tied)."""
        out = [s for layer in range(self.num_layers) for s in self.layer_linears(layer)]
        out.append(LinearShape("lm_head", self.vocab_size, self.hidden_size, False))
        return out

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every HF parameter name -> shape (the tensors an HF checkpoint of this architecture holds)."""
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, self.hidden_size)}
        for layer in range(self.num_layers):
            p = f"model.layers.{layer}"
            shapes[f"{p}.input_layernorm.weight"] = (self.hidden_size,)
            shapes[f"{p}.post_attention_layernorm.weight"] = (self.hidden_size,)
            for s in self.layer_linears(layer):
                shapes[f"{s.name}.weight"] = (s.out_features, s.in_features)
                if s.bias:
                    shapes[f"{s.name}.bias"] = (s.out_features,)
        shapes["model.norm.weight"] = (self.hidden_size,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.hidden_size)
        return shapes

    @property
    def num_params(self) -> int:
        n = 0
        for shape in self.param_shapes().values():
            size = 1
            for d in shape:
                size *= d
            n += size
        return n

    # -- HF config.json ----------------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> ArchConfig:
        """Read an HF config.json dict (transformers 4.x or 5.x keys). Raises ConfigError naming the field."""
        model_type = cfg.get("model_type")
        if model_type not in FAMILIES:
            arch = cfg.get("architectures")
            raise ConfigError(
                f"config.json model_type = {model_type!r} (architectures {arch}) is not supported; lowbit loads "
                f"{list(FAMILIES)} (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
            )

        def req(key: str) -> Any:
            if key not in cfg:
                raise ConfigError(f"config.json has no {key!r}; an HF {model_type} config always has it")
            return cfg[key]

        heads = int(req("num_attention_heads"))
        hidden = int(req("hidden_size"))
        kv_heads = cfg.get("num_key_value_heads")
        head_dim = cfg.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise ConfigError(f"hidden_size = {hidden} is not divisible by num_attention_heads = {heads}")
            head_dim = hidden // heads
        rope = cls._read_rope(cfg)
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        if rope.get("rope_type", "default") == "default":
            rope = {}
        # HF: Llama has attention_bias (q/k/v/o) and mlp_bias; Qwen2 always biases q/k/v only; Mistral none
        bias = bool(cfg.get("attention_bias", False)) if model_type == "llama" else False
        qkv_bias = True if model_type == "qwen2" else bias
        o_bias = bias
        window, window_from = cls._read_window(cfg, model_type)
        dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
        known = {"model_type", "num_attention_heads", "hidden_size", "num_key_value_heads", "head_dim"}
        return cls(
            model_type=model_type,
            vocab_size=int(req("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(req("intermediate_size")),
            num_layers=int(req("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(heads if kv_heads is None else kv_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=tuple(sorted(rope.items())),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)) if model_type == "llama" else False,
            hidden_act=str(cfg.get("hidden_act", "silu")),
            sliding_window=window,
            window_from_layer=window_from,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos_ids(cfg.get("eos_token_id")),
            torch_dtype=str(dtype).replace("torch.", ""),
            extra=tuple(sorted((k, v) for k, v in cfg.items() if k not in known and _jsonable(v))),
        )

    @staticmethod
    def _read_window(cfg: Mapping[str, Any], model_type: str) -> tuple[int | None, int]:
        """(sliding_window, first windowed layer) as HF applies them: Mistral windows every layer when
        `sliding_window` is set (HF Mistral has no use_sliding_window switch); Qwen2 only with
        `use_sliding_window`, from `max_window_layers` on, or the layers `layer_types` names
        "sliding_attention" (which must then be a suffix of the layers)."""
        if model_type == "llama" or (model_type == "qwen2" and not cfg.get("use_sliding_window", False)):
            return None, 0
        window = cfg.get("sliding_window")
        if window is None:
            return None, 0
        if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
            raise ConfigError(f"config.json sliding_window = {window!r}: expected a positive integer or null")
        if model_type == "mistral":
            return window, 0
        layers = int(cfg.get("num_hidden_layers", 0))
        types = cfg.get("layer_types")
        if types is None:
            return window, min(int(cfg.get("max_window_layers", 28)), layers)
        sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
        first = sliding[0] if sliding else len(types)
        if sliding != list(range(first, len(types))):
            raise ConfigError(
                f"config.json layer_types {types!r}: lowbit supports sliding_attention only on a suffix of the "
                "layers (as max_window_layers gives); mixed patterns are not implemented"
            )
        return window, first

    @staticmethod
    def _read_rope(cfg: Mapping[str, Any]) -> dict[str, Any]:
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if not isinstance(rope, Mapping):
            raise ConfigError(
                f"config.json rope_scaling = {rope!r}: expected a dict like {{'rope_type': 'llama3', ...}}"
            )
        rope = dict(rope)
        if "type" in rope and "rope_type" not in rope:  # transformers < 4.45 spelling
            rope["rope_type"] = rope.pop("type")
        rtype = rope.get("rope_type", "default")
        if rtype not in ROPE_TYPES:
            hint = difflib.get_close_matches(str(rtype), ROPE_TYPES, n=1)
            raise ConfigError(
                f"config.json rope_type {rtype!r} is not supported"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; lowbit implements {list(ROPE_TYPES)}"
            )
        return rope

    def to_hf_config(self) -> dict[str, Any]:
        """An HF config.json dict that `from_hf_config` (and transformers 4.x/5.x) read back to this value.
        ConfigError when HF's model class cannot express the biases (its flags cover fixed sets of linears)."""
        hf_bias = {  # (qkv_bias, o_bias, mlp_bias) each HF family can build
            "llama": {(b, b, m) for b in (False, True) for m in (False, True)},
            "mistral": {(False, False, False)},
            "qwen2": {(True, False, False)},
        }[self.model_type]
        if (self.qkv_bias, self.o_bias, self.mlp_bias) not in hf_bias:
            raise ConfigError(
                f"{self.model_type} with qkv_bias={self.qkv_bias}, o_bias={self.o_bias}, mlp_bias={self.mlp_bias} "
                f"has no HF config: transformers builds {sorted(hf_bias)} as (qkv_bias, o_bias, mlp_bias) for "
                f"{self.model_type} (llama: attention_bias sets q/k/v/o together; qwen2: q/k/v only)"
            )
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        rope_params = {"rope_type": self.rope_type, "rope_theta": self.rope_theta, **dict(self.rope_scaling)}
        cfg: dict[str, Any] = {
            "architectures": [arch[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) or None,
            "rope_parameters": rope_params,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act,
            "mlp_bias": self.mlp_bias,
            "torch_dtype": self.torch_dtype,
        }
        if self.model_type == "llama":
            cfg["attention_bias"] = self.o_bias
        if self.model_type == "mistral":
            cfg["sliding_window"] = self.sliding_window
        if self.model_type == "qwen2":
            cfg["use_sliding_window"] = self.sliding_window is not None
            if self.sliding_window is not None:
                cfg["sliding_window"] = self.sliding_window
                cfg["max_window_layers"] = self.window_from_layer
        if self.bos_token_id is not None:
            cfg["bos_token_id"] = self.bos_token_id
        if self.eos_token_id:
            cfg["eos_token_id"] = list(self.eos_token_id) if len(self.eos_token_id) > 1 else self.eos_token_id[0]
        return cfg


def eos_ids(value: Any) -> tuple[int, ...]:
    """An HF `eos_token_id` (config.json, generation_config.json: an int, a list of ints or null) as a tuple."""
    if value is None:
        return ()
    return tuple(int(e) for e in (value if isinstance(value, (list, tuple)) else [value]))


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None)))


__all__ = [
    "ATTN_LINEARS",
    "FAMILIES",
    "MLP_LINEARS",
    "ROPE_TYPES",
    "ArchConfig",
    "ConfigError",
    "LinearShape",
    "eos_ids",
]
