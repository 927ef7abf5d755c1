"""`PassContext`: what the graph passes may know besides the graph — the architecture, the recipe (as a
callable, so lowbit.graph does not depend on the config loader), the target and the token-count buckets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbit.config.spec import LinearSpec
from lowbit.dtypes import dtype as as_dtype
from lowbit.models.arch import ArchConfig
from lowbit.quant.kv import check_kv_dtype

BACKENDS = ("tvm", "triton", "reference")
COMPUTE_DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_BUCKETS = (1, 16, 64, 256, 4096)


def no_recipe(module: str) -> LinearSpec | None:
    """The recipe that quantizes nothing: every linear stays dense."""
    return None


@dataclass(frozen=True)
class PassContext:
    """arch: the model. resolve(module) -> LinearSpec | None: the recipe's decision for one HF linear module
    name (e.g. "model.layers.0.self_attn.q_proj", "lm_head"), e.g. `lambda m: lowbit.config.resolve_linear(cfg,
    m)`. backend "tvm" | "triton" | "reference"; device "cpu" | "cuda" | "cuda:N"; dtype: the activations'
    compute dtype; kv_dtype: the KV cache format (lowbit.quant.kv.KV_DTYPES). buckets: ascending token
    counts M a kernel is chosen for (bucket b serves previous bucket < M <= b). max_num_tokens / max_num_seqs:
    the most tokens / sequences one forward pass carries (size the memory plan's arena). decode_activations:
    "float" (default) or "int8": 4-bit w_a16 linears on the CPU run `quantized_gemv_a8` in every bucket,
    which quantizes activations to int8 per group (select_kernels; ~0.7% relative error per linear).
    tensor_parallel: ranks the graph is sharded over (shard_tensor_parallel: the graph is one rank's shard)."""

    arch: ArchConfig
    resolve: Callable[[str], LinearSpec | None] = no_recipe
    backend: str = "reference"
    device: str = "cpu"
    dtype: str = "float16"
    kv_dtype: str = "float16"
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    max_num_tokens: int = 4096
    max_num_seqs: int = 256
    decode_activations: str = "float"
    tensor_parallel: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.arch, ArchConfig):
            raise ValueError(f"arch is a {type(self.arch).__name__}; pass a lowbit.models.ArchConfig")
        if not callable(self.resolve):
            raise ValueError(
                f"resolve {self.resolve!r} is not callable; pass a function module name -> LinearSpec | None"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not known; use one of {list(BACKENDS)}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not a compute dtype; use one of {list(COMPUTE_DTYPES)}")
        check_kv_dtype(self.kv_dtype)
        b = tuple(self.buckets)
        if not b or any(not isinstance(x, int) or x <= 0 for x in b) or list(b) != sorted(set(b)):
            raise ValueError(
                f"buckets {self.buckets!r} must be strictly increasing positive ints, e.g. {DEFAULT_BUCKETS}"
            )
        object.__setattr__(self, "buckets", b)
        if not isinstance(self.max_num_tokens, int) or self.max_num_tokens <= 0:
            raise ValueError(f"max_num_tokens {self.max_num_tokens!r} must be a positive int (tokens per forward pass)")
        if not isinstance(self.max_num_seqs, int) or self.max_num_seqs <= 0:
            raise ValueError(f"max_num_seqs {self.max_num_seqs!r} must be a positive int (sequences per forward pass)")
        tp = self.tensor_parallel
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1 or tp & (tp - 1):
            raise ValueError(f"tensor_parallel {tp!r} must be a power of two >= 1 (ranks the model is split over)")
        if self.decode_activations not in ("float", "int8"):
            raise ValueError(f"decode_activations {self.decode_activations!r} is not known; use 'float' or 'int8'")

    @property
    def dtype_bytes(self) -> int:
        return as_dtype(self.dtype).bits // 8

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


__all__ = ["BACKENDS", "COMPUTE_DTYPES", "DEFAULT_BUCKETS", "PassContext", "no_recipe"]
