"""Import (and export) AutoAWQ and GPTQ checkpoints into lowbit's packed `QuantizedWeight`.

A linear W[N, K] (HF layout) is stored by both tools as three int32/fp16 tensors (ANCHORS, AWQ / GPTQ):

AutoAWQ GEMM (`quant_method: awq`, `version: gemm`, 4-bit, asymmetric, ŵ = (q − z)·s):
    qweight int32 [K, N/8]      eight 4-bit codes of one row k per word, along N, in the order map
    qzeros  int32 [K/G, N/8]    the integer zeros, packed like qweight
    scales  fp16  [K/G, N]
  Order map [0, 2, 4, 6, 1, 3, 5, 7]: bits [4i, 4i+4) of word c hold column 8c + ORDER[i], so nibbles
  0..7 of a word hold columns 8c + (0, 2, 4, 6, 1, 3, 5, 7).
GPTQ (`quant_method: gptq`, bits 2/3/4/8):
    qweight int32 [K·b/32, N]   codes of one column n packed along K, dense little-endian: code k occupies
                                bits [k·b, (k+1)·b) of the column's bit stream, words of 32 bits
                                (3-bit codes straddle words: code 10 has bits 30, 31 and the next word's 0)
    qzeros  int32 [K/G, N·b/32] zeros packed the same way along N
    scales  fp16  [K/G, N]
    g_idx   int32 [K]           the group of each input channel (act order: a permutation of groups)
  ŵ = (q − z)·s with q, z unsigned b-bit. `checkpoint_format: gptq` (v1) stores z − 1 (the kernels add
  1 back, so a stored field f means z = f + 1 ∈ [1, 2^b] and z = 0 is not representable), `gptq_v2`
  stores z. Symmetric checkpoints have z = 2^(b−1) everywhere; they import as signed int{b} without zeros.

Decisions: codes import as uint{b} with integer zeros (scheme w_a16, zero_mode "post", fp16 scales), or
int{b} symmetric when every zero is 2^(b−1); a v1 zero field 2^b − 1 imports faithfully as z = 2^b (one
past the grid; dequantize() computes (q − z)·s). A non-trivial g_idx (act order without static groups:
groups are not contiguous runs of K) is refused: lowbit's groups are contiguous. Exports write what the
tools write, so tests can round-trip without them.

`parse_quantization_config(config)` -> `CheckpointFormat(method, bits, group_size, sym, version)`: what a
config.json says, checked (errors name `quantization_config.<key>`); `import_module(weights, prefix, fmt)`
imports one module; the compiler (`lowbit.compiler.imported`) maps the format to lowbit's weight dtype:
int{b} when symmetric, else uint{b} with integer (post) zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowbit.dtypes import decode
from lowbit.dtypes.packing import pack_dense, unpack_dense
from lowbit.ir.layout import PackedLayout
from lowbit.ops.weight import QuantizedWeight, pack_quantized

WORD_BITS = 32
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds column 8c + AWQ_ORDER[i]
AWQ_BITS = 4
GPTQ_BITS = (2, 3, 4, 8)


# -- dense little-endian bit packing into int32 words, along the last axis --------------------------------
# each row is a whole number of 32-bit words, so the rows' dense streams (lowbit.dtypes.packing) concatenate
def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """values [..., M] (integers in [0, 2^bits)) -> int32 words [..., M·bits/32]; value j occupies bits
    [j·bits, (j+1)·bits) of the little-endian bit stream (so values may straddle words)."""
    v = np.asarray(values)
    m = v.shape[-1]
    if (m * bits) % WORD_BITS:
        raise ValueError(
            f"{m} values of {bits} bits do not fill whole 32-bit words; need a multiple of "
            f"{WORD_BITS // np.gcd(bits, WORD_BITS)} values"
        )
    return pack_dense(v, bits).view("<i4").astype(np.int32).reshape(*v.shape[:-1], m * bits // WORD_BITS)


def unpack_bits(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 words [..., W] -> values [..., W·32/bits] int64 (the inverse of `pack_bits`)."""
    w = np.ascontiguousarray(np.asarray(words).astype("<i4"))
    count, rest = divmod(w.shape[-1] * WORD_BITS, bits)
    if rest:
        raise ValueError(f"{w.shape[-1]} words of 32 bits do not hold whole {bits}-bit values")
    stream = w.reshape(-1).view(np.uint8)
    return unpack_dense(stream, bits, w.size * WORD_BITS // bits).astype(np.int64).reshape(*w.shape[:-1], count)


def _int32(a: Any, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    a = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a)
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape}; expected a 2-D int32 tensor")
    if a.dtype.kind not in "iu" or a.dtype.itemsize != 4:
        raise ValueError(f"{name} has dtype {a.dtype}; checkpoints store packed codes as int32")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}; expected {list(shape)}")
    return a.view(np.int32)


def _scales(a: Any, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    if hasattr(a, "detach"):  # torch: fp16 stays fp16 (the stored scale dtype); bf16 has no NumPy dtype
        t = a.detach().cpu()
        a = (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()
    a = np.asarray(a)
    if a.shape != shape:
        raise ValueError(f"scales has shape {a.shape}; expected [K/G, N] = {list(shape)}")
    return a, "float16" if a.dtype == np.float16 else "float32"


def _group(group_size: int, k: int) -> int:
    if group_size == -1:
        return k
    if not isinstance(group_size, (int, np.integer)) or group_size <= 0 or k % group_size:
        raise ValueError(f"group_size {group_size!r} does not divide in_features K = {k}; use a divisor or -1")
    return int(group_size)


# -- AutoAWQ GEMM -----------------------------------------------------------------------------------------
def _awq_columns(n: int) -> np.ndarray:
    # position p of the packed stream holds column _awq_columns(n)[p]
    return (np.arange(n // 8)[:, None] * 8 + np.array(AWQ_ORDER)[None, :]).reshape(-1)


def unpack_awq(packed: Any, name: str = "qweight") -> np.ndarray:
    """AutoAWQ int32 [R, N/8] -> 4-bit values [R, N] in column order (order map undone)."""
    words = _int32(packed, name)
    stream = unpack_bits(words, AWQ_BITS)  # [R, N], stream order
    out = np.empty_like(stream)
    out[:, _awq_columns(stream.shape[1])] = stream
    return out


def pack_awq(values: np.ndarray) -> np.ndarray:
    """4-bit values [R, N] (N a multiple of 8) -> AutoAWQ int32 [R, N/8] with the order map."""
    v = np.asarray(values)
    if v.shape[1] % 8:
        raise ValueError(f"AWQ packs 8 columns per int32; out_features N = {v.shape[1]} is not a multiple of 8")
    return pack_bits(v[:, _awq_columns(v.shape[1])], AWQ_BITS)


def import_awq(
    qweight: Any,
    qzeros: Any,
    scales: Any,
    bits: int = 4,
    group_size: int = 128,
    layout: str | PackedLayout = "row",
) -> QuantizedWeight:
    """AutoAWQ GEMM tensors (qweight [K, N/8], qzeros [K/G, N/8] int32, scales [K/G, N] fp16) ->
    QuantizedWeight(uint4, group G, zero_mode "post") with dequantize() = (q − z)·s."""
    if bits != AWQ_BITS:
        raise ValueError(f"bits {bits!r}: AutoAWQ's GEMM format packs 4-bit codes only; use bits=4")
    qw = _int32(qweight, "qweight")
    k, n = qw.shape[0], qw.shape[1] * 8
    g = _group(group_size, k)
    s, sdt = _scales(scales, (k // g, n))
    codes = unpack_awq(qw)  # [K, N]
    zeros = unpack_awq(_int32(qzeros, "qzeros", (k // g, n // 8)), "qzeros")  # [K/G, N]
    return pack_quantized(
        codes.T, s.T, zeros.T, dtype="uint4", group_size=g, zero_mode="post", scale_dtype=sdt, layout=layout
    )


def _unsigned(qw: QuantizedWeight, tool: str, bits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # values [N, K] uint, zeros [N, groups] int, scales [N, groups] fp16, from an integer w_a16 weight
    dt = qw.dtype
    if qw.scheme != "w_a16" or not dt.is_integer or dt.bits not in bits:
        raise ValueError(
            f"{qw!r} cannot be stored in {tool} format: it holds w_a16 integer weights of {list(bits)} bits; "
            f"quantize with dtype uint{bits[-1] if len(bits) == 1 else 4} (zero_mode='post') or int4"
        )
    q = decode(dt, qw.codes()).T.astype(np.int64)  # [N, K]
    mid = 1 << (dt.bits - 1)
    if qw.zero_mode == "none":  # signed symmetric: shift onto the unsigned grid with zero 2^(b−1)
        zeros = np.full((qw.out_features, qw.groups), mid, dtype=np.int64)
        q = q + mid
    elif qw.zero_mode == "post" and not dt.is_signed:
        assert qw.zeros is not None
        zeros = qw.zeros.T.astype(np.int64)
    else:
        raise ValueError(
            f"{qw!r}: {tool} stores unsigned codes with an integer (post) zero or signed symmetric codes; "
            f"zero_mode {qw.zero_mode!r} with {dt.name} has no {tool} form"
        )
    scales = qw.scales.T.astype(np.float16)
    if not np.array_equal(scales.astype(np.float64), qw.scales.T.astype(np.float64)):
        raise ValueError(f"{qw!r} has scales not exactly representable in float16; {tool} stores fp16 scales")
    return q, zeros, scales


def export_awq(qw: QuantizedWeight) -> dict[str, np.ndarray]:
    """The AutoAWQ GEMM tensors {qweight, qzeros, scales} of a uint4 (post zero) or int4 (symmetric) weight."""
    q, zeros, scales = _unsigned(qw, "AutoAWQ", (AWQ_BITS,))
    _check_fields(zeros, AWQ_BITS, "AutoAWQ zeros")
    return {"qweight": pack_awq(q.T), "qzeros": pack_awq(zeros.T), "scales": np.ascontiguousarray(scales.T)}


def _check_fields(fields: np.ndarray, bits: int, what: str) -> None:
    if fields.min() < 0 or fields.max() >= 1 << bits:
        raise ValueError(
            f"{what} span [{fields.min()}, {fields.max()}], outside the {bits}-bit field [0, {(1 << bits) - 1}]"
        )


# -- GPTQ -------------------------------------------------------------------------------------------------
def _gptq_bits(bits: int) -> int:
    if bits not in GPTQ_BITS:
        raise ValueError(f"bits {bits!r}: GPTQ checkpoints hold {list(GPTQ_BITS)}-bit codes; use one of them")
    return int(bits)


def _version(version: int) -> int:
    if version not in (1, 2):
        raise ValueError(f"version {version!r}: use 1 (checkpoint_format 'gptq', zero−1) or 2 ('gptq_v2')")
    return int(version)


def import_gptq(
    qweight: Any,
    qzeros: Any,
    scales: Any,
    g_idx: Any = None,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = True,
    version: int = 1,
    layout: str | PackedLayout = "row",
) -> QuantizedWeight:
    """GPTQ tensors (qweight [K·b/32, N], qzeros [K/G, N·b/32] int32, scales [K/G, N], g_idx [K]) ->
    QuantizedWeight: int{b} symmetric when every zero is 2^(b−1), else uint{b} with post zeros.

    version 1 adds 1 to the stored zeros, 2 does not. sym=True checks that the zeros are 2^(b−1) (a mismatch
    usually means the wrong version). Raises ValueError for other bits, non-dividing groups, shapes, and a
    g_idx that is not k // G (act order without static groups)."""
    b, ver = _gptq_bits(bits), _version(version)
    qw = _int32(qweight, "qweight")
    k, n = qw.shape[0] * WORD_BITS // b, qw.shape[1]
    if (qw.shape[0] * WORD_BITS) % b:
        raise ValueError(f"qweight has {qw.shape[0]} rows; {qw.shape[0]}·32 is not a multiple of bits={b}")
    g = _group(group_size, k)
    groups = k // g
    if (n * b) % WORD_BITS:
        raise ValueError(f"out_features N = {n} at {b} bits does not fill whole int32 words of qzeros")
    s, sdt = _scales(scales, (groups, n))
    if g_idx is not None:
        gi = np.asarray(g_idx.detach().cpu().numpy() if hasattr(g_idx, "detach") else g_idx).reshape(-1)
        if gi.shape != (k,) or not np.array_equal(gi, np.arange(k) // g):
            raise ValueError(
                "g_idx is not k // group_size: this is an act-order (desc_act) checkpoint whose groups are not "
                "contiguous runs of K, which lowbit's group layout cannot hold; re-quantize with desc_act=False "
                "or static_groups=True (its g_idx is k // G and imports)"
            )
    codes = unpack_bits(qw.T, b)  # [N, K]
    zeros = unpack_bits(_int32(qzeros, "qzeros", (groups, n * b // WORD_BITS)), b).T  # [N, groups]
    if ver == 1:
        zeros = zeros + 1
    mid = 1 << (b - 1)
    if np.all(zeros == mid):
        return pack_quantized(codes - mid, s.T, dtype=f"int{b}", group_size=g, scale_dtype=sdt, layout=layout)
    if sym:
        if np.all(zeros == mid + 1):
            hint = "checkpoint_format 'gptq_v2' (version=2)"
        elif np.all(zeros == mid - 1):
            hint = "checkpoint_format 'gptq' (version=1)"
        else:
            hint = "an asymmetric checkpoint (sym=False)"
        raise ValueError(
            f"sym=True but the zeros are {np.unique(zeros)[:4].tolist()}, not {mid}; this looks like {hint}"
        )
    return pack_quantized(
        codes.astype(np.float64),
        s.T,
        zeros,
        dtype=f"uint{b}",
        group_size=g,
        zero_mode="post",
        scale_dtype=sdt,
        layout=layout,
    )


def export_gptq(qw: QuantizedWeight, version: int = 1) -> dict[str, np.ndarray]:
    """The GPTQ tensors {qweight, qzeros, scales, g_idx} of an integer w_a16 weight of 2/3/4/8 bits.
    version 1 stores zero − 1 (a zero of 0 cannot be stored: use version 2)."""
    ver = _version(version)
    q, zeros, scales = _unsigned(qw, "GPTQ", GPTQ_BITS)
    b = qw.dtype.bits
    n, k = qw.shape
    if (k * b) % WORD_BITS or (n * b) % WORD_BITS:
        raise ValueError(
            f"shape {qw.shape} at {b} bits: GPTQ packs K and N into whole int32 words; "
            f"N and K must be multiples of {WORD_BITS // np.gcd(b, WORD_BITS)}"
        )
    if ver == 1:
        if zeros.min() == 0:
            raise ValueError("a zero point is 0, which GPTQ v1 cannot store (it stores zero − 1); use version=2")
        zeros = zeros - 1
    _check_fields(zeros, b, f"GPTQ v{ver} stored zeros")
    g = k if qw.group_size == -1 else qw.group_size
    return {
        "qweight": pack_bits(q, b).T.copy(),  # [K·b/32, N]
        "qzeros": pack_bits(zeros.T, b),  # [groups, N·b/32]
        "scales": np.ascontiguousarray(scales.T),
        "g_idx": (np.arange(k) // g).astype(np.int32),
    }


# -- HF checkpoints ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointFormat:
    """What a config.json `quantization_config` says about the stored linears (`parse_quantization_config`).

    method "awq" (AutoAWQ GEMM: uint4 codes with integer zeros) or "gptq"; bits; group_size (-1: one group
    per output channel); sym (GPTQ: every zero is 2^(b−1), imported as int{b} without zeros; AWQ: False);
    version (GPTQ zero convention: 1 = checkpoint_format gptq, stores zero − 1; 2 = gptq_v2; AWQ: 0)."""

    method: str
    bits: int
    group_size: int
    sym: bool = False
    version: int = 0

    @property
    def weight_dtype(self) -> str:
        """lowbit's code dtype for these weights: int{b} (symmetric) or uint{b} (integer zeros)."""
        return f"int{self.bits}" if self.sym else f"uint{self.bits}"

    @property
    def zero_mode(self) -> str:
        return "none" if self.sym else "post"

    def describe(self) -> str:
        tool = "AutoAWQ gemm" if self.method == "awq" else f"GPTQ v{self.version}"
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"{tool}, {self.bits}-bit, {g}, {'symmetric' if self.sym else 'asymmetric'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "quant_method": self.method,
            "bits": self.bits,
            "group_size": self.group_size,
            "sym": self.sym,
            "version": self.version,
            "weight_dtype": self.weight_dtype,
            "zero_mode": self.zero_mode,
        }


def parse_quantization_config(quantization_config: Mapping[str, Any]) -> CheckpointFormat:
    """The `CheckpointFormat` of a config.json's `quantization_config` (or the whole config.json). Raises
    ValueError naming the key (`quantization_config.bits`, ...), its value and the fix for what lowbit cannot
    import: other methods or packings, AWQ without zero points, bits outside AWQ's 4 / GPTQ's 2, 3, 4, 8, a
    group size that is not a positive int or -1, and act-order GPTQ (desc_act without static_groups)."""
    qc: dict[str, Any] = dict(quantization_config.get("quantization_config", quantization_config))
    method = str(qc.get("quant_method", "")).lower()

    def bad(key: str, problem: str, fix: str) -> ValueError:
        return ValueError(f"quantization_config.{key}: {qc.get(key)!r}: {problem}; {fix}")

    def integer(key: str, alt: str, default: int) -> tuple[str, int]:
        k = key if key in qc or alt not in qc else alt
        v = qc.get(k, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad(k, "not an integer", "write an integer")
        return k, int(v)

    gkey, group = integer("group_size", "q_group_size", 128)
    if group != -1 and group <= 0:
        raise bad(gkey, "not a group size", "the checkpoint stores a positive group size or -1 (per channel)")
    if method == "awq":
        packing = str(qc.get("version", "gemm")).lower()
        if packing != "gemm":
            raise bad("version", "only AutoAWQ's 'gemm' packing is imported", "re-save the model with version gemm")
        if not qc.get("zero_point", True):
            raise bad("zero_point", "the GEMM format stores zeros", "quantize with zero_point: true")
        bkey, bits = integer("bits", "w_bit", AWQ_BITS)
        if bits != AWQ_BITS:
            raise bad(bkey, "AutoAWQ's GEMM format packs 4-bit codes only", "use a 4-bit AWQ checkpoint")
        return CheckpointFormat("awq", bits, group, False, 0)
    if method == "gptq":
        fkey = "checkpoint_format" if "checkpoint_format" in qc or "format" not in qc else "format"
        fmt = str(qc.get(fkey, "gptq")).lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise bad(fkey, "not a GPTQ zero convention lowbit imports", "use 'gptq' (v1, zero − 1) or 'gptq_v2'")
        _, bits = integer("bits", "bits", 4)
        if bits not in GPTQ_BITS:
            raise bad("bits", f"GPTQ stores {list(GPTQ_BITS)}-bit codes", "use a 2, 3, 4 or 8-bit checkpoint")
        if qc.get("desc_act", False) and not qc.get("static_groups", False):
            raise bad(
                "desc_act",
                "act-order groups are not contiguous runs of in_features (g_idx permutes them), which lowbit's "
                "group layout cannot hold",
                "re-quantize with desc_act: false, or with static_groups: true (its g_idx is k // group_size)",
            )
        return CheckpointFormat("gptq", bits, group, bool(qc.get("sym", True)), 2 if fmt == "gptq_v2" else 1)
    raise bad(
        "quant_method", "not a format lowbit imports", "lowbit imports 'awq' (AutoAWQ GEMM) and 'gptq' checkpoints"
    )


def import_module(
    weights: Mapping[str, Any], prefix: str, fmt: CheckpointFormat, layout: str | PackedLayout = "row"
) -> QuantizedWeight:
    """The QuantizedWeight of module `prefix` (its `.qweight/.qzeros/.scales[/.g_idx]` in `weights`, raw
    int32 / fp16 arrays) stored in format `fmt`. ValueError names the module and what is wrong."""
    try:
        t = _module_tensors(weights, prefix)
        if fmt.method == "awq":
            return import_awq(t["qweight"], t["qzeros"], t["scales"], fmt.bits, fmt.group_size, layout)
        return import_gptq(
            t["qweight"], t["qzeros"], t["scales"], t.get("g_idx"), fmt.bits, fmt.group_size, fmt.sym,
            fmt.version, layout,
        )  # fmt: skip
    except ValueError as e:
        raise ValueError(f"{prefix}: {e}") from None


def quantized_modules(names: Any) -> list[str]:
    """The modules of a checkpoint stored quantized: every `<module>` with a `<module>.qweight` tensor."""
    return sorted(name[: -len(".qweight")] for name in names if name.endswith(".qweight"))


def import_hf_quantized(
    weights: Mapping[str, Any], quantization_config: Mapping[str, Any], layout: str | PackedLayout = "row"
) -> dict[str, QuantizedWeight]:
    """Import every module with `<module>.qweight/.qzeros/.scales` tensors of an HF checkpoint quantized by
    AutoAWQ (`quant_method: awq`, version gemm) or GPTQ (`quant_method: gptq`, checkpoint_format gptq |
    gptq_v2). quantization_config: the config.json's `quantization_config` (or the whole config.json).
    Returns {module name: QuantizedWeight}; everything else (biases, norms, embeddings) is the caller's."""
    fmt = parse_quantization_config(quantization_config)
    modules = quantized_modules(weights)
    if not modules:
        raise ValueError(
            f"quant_method {fmt.method!r} but no '<module>.qweight' tensor in weights; is this checkpoint quantized?"
        )
    return {m: import_module(weights, m, fmt, layout) for m in modules}


def _module_tensors(weights: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    t = {}
    for key in ("qweight", "qzeros", "scales", "g_idx"):
        if f"{prefix}.{key}" in weights:
            t[key] = weights[f"{prefix}.{key}"]
        elif key != "g_idx":
            raise ValueError(f"weights has {prefix}.qweight but no {prefix}.{key}; a quantized module needs both")
    return t


__all__ = [
    "AWQ_ORDER",
    "GPTQ_BITS",
    "CheckpointFormat",
    "export_awq",
    "export_gptq",
    "import_awq",
    "import_gptq",
    "import_hf_quantized",
    "import_module",
    "pack_awq",
    "pack_bits",
    "parse_quantization_config",
    "quantized_modules",
    "unpack_awq",
    "unpack_bits",
]
