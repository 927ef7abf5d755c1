"""The `model.yaml` schema, version 1: frozen pydantic models with every default of a minimal file.

Structure only (types, enums, ranges, unknown keys); the cross-field and model-dependent rules live in
`lowbit.config.check`. Defaults make `model: {source: synthetic}` a complete recipe: a built-in tiny Llama,
RTN int4 g128 on every linear but lm_head, float activations, fp16 KV cache, backend auto on the CPU.
See lowbit/config/README.md for every field.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, Strict

from lowbit.config.errors import FieldProblem, Origins

SCHEMA_VERSION = 1
Source = Literal["synthetic", "hf_dir"]
ComputeDType = Literal["float32", "float16", "bfloat16"]
Algorithm = Literal["none", "rtn", "awq", "gptq", "qoq", "imported"]  # imported: an AWQ/GPTQ checkpoint as stored
Activations = Literal["float", "int8"]
KVDType = Literal["float16", "bfloat16", "float32", "fp8_e4m3", "int8", "int4"]  # = lowbit.ops.attention's
ZeroMode = Literal["none", "post", "pre"]
CalibrationSource = Literal["synthetic", "file"]
Backend = Literal["auto", "tvm", "triton", "reference"]
Device = Literal["cpu", "cuda"]
TuningPolicy = Literal["off", "cached", "tune"]
ModelType = Literal["llama", "mistral", "qwen2"]

SOURCES: tuple[str, ...] = get_args(Source)
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
KV_CACHE_DTYPES: tuple[str, ...] = get_args(KVDType)
BACKENDS: tuple[str, ...] = get_args(Backend)
CALIBRATION_SUFFIXES = (".txt", ".jsonl")
CALIBRATED: tuple[str, ...] = ("awq", "gptq", "qoq")  # the algorithms that fit statistics of calibration data


def _number(v: Any) -> Any:
    # YAML 1.1 reads 1e-6 (no dot) as a string: accept numeric strings; refuse booleans
    if isinstance(v, bool):
        raise FieldProblem(f"{v} is a boolean, not a number", "write a number, e.g. 0.5")
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            raise FieldProblem("not a number", "write a number, e.g. 0.5 or 1.0e-6") from None
    return v


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise FieldProblem("not a finite number", "write a finite number")
    return v


def _weight_dtype(name: str) -> str:
    """A 1..8-bit int / uint / float code dtype, returned by its canonical name (i4 -> int4)."""
    from lowbit.dtypes import dtype

    try:
        dt = dtype(name)
    except (ValueError, TypeError) as e:
        raise FieldProblem(str(e).split("; accepted")[0], "use e.g. int4, uint4, int8, fp4_e2m1 or fp6_e3m2") from None
    if dt.is_bool:
        raise FieldProblem("boolean is not a code dtype", "use e.g. int4, uint4, int8, fp4_e2m1 or fp6_e3m2")
    if dt.bits > 8 or not (dt.is_integer or dt.is_float):
        raise FieldProblem(
            f"{dt.name} has {dt.bits} bits; weight codes have 1..8 bits",
            "use int1..int8, uint1..uint8 or fpN_eXmY (e.g. fp4_e2m1); for dense weights use skip: true or ignore",
        )
    return dt.name


def _group_size(g: int) -> int:
    if g != -1 and g <= 0:
        raise FieldProblem("not a group size", "use a positive divisor of in_features (32, 64, 128, ...) or -1")
    return g


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise FieldProblem(f"not a valid regular expression ({e})", "escape dots as \\. and balance brackets") from None
    return pattern


Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(gt=0)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Number = Annotated[float, BeforeValidator(_number), AfterValidator(_finite)]
WeightDType = Annotated[str, Strict(), AfterValidator(_weight_dtype)]
GroupSize = Annotated[int, Strict(), AfterValidator(_group_size)]
Regex = Annotated[str, Strict(), AfterValidator(_regex)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- model --------------------------------------------------------------------------------------------


class Architecture(Section):
    """A synthetic model's architecture; keys are `lowbit.models.ArchConfig` fields (default: a tiny Llama)."""

    model_type: ModelType = "llama"
    vocab_size: PosInt = 512
    hidden_size: PosInt = 128
    intermediate_size: PosInt = 256
    num_layers: PosInt = 2
    num_heads: PosInt = 4
    num_kv_heads: PosInt = 2
    head_dim: PosInt | None = None  # null: hidden_size // num_heads (filled in when the file is resolved)
    rms_norm_eps: Number = 1e-6
    rope_theta: Number = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF rope_scaling, e.g. {rope_type: llama3, factor: 8.0, ...}
    max_position_embeddings: PosInt = 512
    tie_word_embeddings: Bool = False
    qkv_bias: Bool = False
    o_bias: Bool = False
    mlp_bias: Bool = False
    hidden_act: Literal["silu"] = "silu"
    sliding_window: PosInt | None = None
    bos_token_id: Int | None = None
    eos_token_id: tuple[Int, ...] = ()


class ModelSection(Section):
    name: Str | None = None  # served model name; resolved: the hf dir's name, or "synthetic"
    source: Source = "synthetic"
    path: Str | None = None  # hf_dir only; relative paths resolve against the yaml file's directory
    seed: Int | None = None  # synthetic only; resolved: 0
    architecture: Architecture | None = None  # synthetic only; resolved: Architecture() with head_dim
    dtype: ComputeDType = "float32"  # compute / activation dtype


# ---- quantization ---------------------------------------------------------------------------------------


class Weights(Section):
    dtype: WeightDType = "int4"
    group_size: GroupSize = 128  # -1: one group per output channel
    symmetric: Bool | None = None  # null: by dtype (signed ints >= 2 bits and floats symmetric, uints not)
    zero_mode: ZeroMode | None = None  # null: "none" when symmetric, else "post"


class Override(Section):
    """One per-module rule. Keys left out inherit from `quantization.weights`, except that an override
    stating `dtype` also takes that dtype's default symmetry unless it states symmetric / zero_mode."""

    pattern: Regex  # re.fullmatch against HF module names, e.g. 'model\.layers\.0\..*'
    dtype: WeightDType | None = None
    group_size: GroupSize | None = None
    symmetric: Bool | None = None
    zero_mode: ZeroMode | None = None
    skip: Bool = False  # true: keep the matched modules dense


class KVCache(Section):
    dtype: KVDType = "float16"
    smooth_attention: Bool = False  # fold SmoothAttention scales into W_q / W_k (for quantized KV)


class Calibration(Section):
    source: CalibrationSource = "synthetic"
    path: Str | None = None  # file only: .txt (one sample per paragraph) or .jsonl with a "text" field
    num_samples: PosInt = 16
    seq_len: PosInt = 64
    seed: Int = 0


class AWQ(Section):
    grid: PosInt = 20  # scale search points over alpha in [0, 1)
    clip: Bool = True  # also search a per-group clipping ratio


class GPTQ(Section):
    block_size: PosInt = 128
    damp: Annotated[Number, Field(gt=0)] = 0.01  # fraction of the mean Hessian diagonal added
    act_order: Bool = False


class QoQ(Section):
    rotate: Bool = True  # rotate the residual stream (Hadamard) before quantizing
    smooth: Bool = True  # SmoothQuant-style scales on the linears' inputs
    smooth_alpha: Annotated[Number, Field(ge=0, le=1)] = 0.3


class Quantization(Section):
    algorithm: Algorithm = "rtn"
    weights: Weights = Weights()
    activations: Activations = "float"  # int8: W4A8 (per-token int8 activations)
    # int8: CPU int4/uint4 w_a16 linears quantize the activations per weight group to int8 on the fly and run
    # int8 dots (llama.cpp's Q4_0 x Q8_0 scheme) in decode and in prefill (row tiles of 16): ~4x faster decode and
    # ~6x faster prefill on AVX2, ~0.5-0.7% extra relative error per linear vs W4A16. Off by default.
    decode_activations: Activations = "float"
    kv_cache: KVCache = KVCache()
    overrides: tuple[Override, ...] = ()  # ordered; the first whose pattern matches wins
    ignore: tuple[Regex, ...] = ("lm_head",)  # re.fullmatch; matched modules stay dense (before overrides)
    calibration: Calibration = Calibration()
    awq: AWQ = AWQ()
    gptq: GPTQ = GPTQ()
    qoq: QoQ = QoQ()

    @property
    def calibrated(self) -> bool:
        """Whether compiling runs the calibration set through the model: AWQ / GPTQ / QoQ statistics,
        SmoothAttention's key scales, fp8 KV layer scales."""
        kv = self.kv_cache
        return self.algorithm in CALIBRATED or kv.smooth_attention or kv.dtype == "fp8_e4m3"


# ---- target ------------------------------------------------------------------------------------------------


class Tuning(Section):
    policy: TuningPolicy = "cached"  # off: defaults; cached: cache, never measure; tune
    budget_s: Annotated[Number, Field(ge=0)] = 60.0  # seconds of measurement for policy tune


class Target(Section):
    backend: Backend = "auto"  # auto: triton on cuda, tvm on cpu
    device: Device = "cpu"
    tuning: Tuning = Tuning()
    max_model_len: PosInt = 512
    max_num_seqs: PosInt = 8
    page_size: PosInt = 16  # tokens per KV-cache page (vLLM --block-size); a power of two
    # ranks the model is sharded over (Megatron-style, lowbit/parallel): 1, 2, 4 or 8; 1 leaves everything as is
    tensor_parallel: PosInt = 1

    @property
    def effective_backend(self) -> str:
        """The backend `auto` stands for: triton on cuda, tvm on cpu."""
        if self.backend != "auto":
            return self.backend
        return "triton" if self.device == "cuda" else "tvm"


# ---- the file --------------------------------------------------------------------------------------------


class ModelYaml(Section):
    """A whole `model.yaml`. Compare with ==; `to_yaml()` / `to_dict()` give the fully resolved file."""

    schema_version: Literal[1] = 1
    model: ModelSection = ModelSection()
    quantization: Quantization = Quantization()
    target: Target = Target()

    _origins: Origins = PrivateAttr(default_factory=lambda: Origins("model.yaml"))

    @property
    def origins(self) -> Origins:
        """Where each value came from (the file or a --set argument), for error messages."""
        return self._origins

    def to_dict(self) -> dict[str, Any]:
        """The file as plain data (lists, not tuples); overrides list only the keys they state."""
        d = self.model_dump(mode="json")
        d["quantization"]["overrides"] = [
            {k: v for k, v in o.items() if v is not None and (k != "skip" or v)} for o in d["quantization"]["overrides"]
        ]
        if d["target"]["tensor_parallel"] == 1:  # unsharded files (and artifacts) read as they did before the field
            del d["target"]["tensor_parallel"]
        return d

    def to_yaml(self) -> str:
        header = f"# lowbit model.yaml (schema_version {SCHEMA_VERSION}), fully resolved: every default filled in\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)

    def __eq__(self, other: object) -> bool:  # the values, not where they came from
        return isinstance(other, ModelYaml) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_yaml())


__all__ = [
    "AWQ",
    "BACKENDS",
    "CALIBRATED",
    "CALIBRATION_SUFFIXES",
    "GPTQ",
    "KV_CACHE_DTYPES",
    "SCHEMA_VERSION",
    "SOURCES",
    "Architecture",
    "Calibration",
    "KVCache",
    "ModelSection",
    "ModelYaml",
    "Override",
    "QoQ",
    "Quantization",
    "Target",
    "Tuning",
    "Weights",
]
