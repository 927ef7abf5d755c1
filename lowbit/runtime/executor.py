"""`Executor`: runs an optimized op graph (`lowbit.graph`) on a `Batch`, one rule per op, through the kernel
library (quantized linears, RoPE, RMSNorm, KV append, prefill / paged decode attention) on torch CPU or CUDA
tensors. The op semantics are the graph contract (lowbit/graph/README.md); a missing rule fails by name.

Activations are [tokens, features] in the model's compute dtype. Parameters are a mapping from the graph's
param names to dense torch tensors or `QuantizedWeight`s (a linear whose spec is None is dense).

Hot path (TVM on the CPU): each rule launches its kernels through launchers bound once per node (and per
row count for linears) — compiled kernel, weights, caches and constants converted at the first call, none of
the ops layer's per-call checks and conversions (`lowbit.kernels.launch.bind`); a decode-only batch takes the
paged-attention launcher directly. The results are those of the ops calls (same kernels, same arguments);
other backends and mixed prefill/decode attention take the ops calls themselves.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lowbit.codegen.tune.records import attach, attached
from lowbit.kernels.activation import silu_mul_launcher
from lowbit.kernels.attention_decode import decode_launcher
from lowbit.kernels.kv_append import append_kv, append_launcher
from lowbit.kernels.norm import add_rms_norm, norm_launcher, rms_norm
from lowbit.kernels.rope import apply_rope, rope_cache, rope_launcher
from lowbit.ops.attention import _KERNEL_KV, _auto_splits, _decode_tiles, paged_decode_attention, prefill_attention
from lowbit.ops.linear import (
    A8_BN,
    A8_KERNEL,
    GEMV_MAX_M,
    cpu_weight,
    linear_launcher,
    quantized_linear,
    quantized_linear_int8,
    select_backend,
    tvm_int8_dot,
)
from lowbit.ops.weight import QuantizedWeight, offset_binary, retile_columns
from lowbit.ops.x16 import x16_every_m, x16_weight
from lowbit.quant import quantize_per_token_int8
from lowbit.runtime.batch import Batch
from lowbit.runtime.kv_cache import PagedKVCache

Rule = Callable[["Executor", Any, list[Any]], tuple[Any, ...]]
RULES: dict[str, Rule] = {}


def rule(op: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        RULES[op] = fn
        return fn

    return register


class MissingRule(NotImplementedError):
    pass


class Executor:
    """Executes `graph` with `params`; `forward(batch)` returns logits [num_seqs, vocab] (or [tokens, vocab]
    with all_logits=True) in float32."""

    def __init__(
        self,
        graph: Any,
        params: Mapping[str, Any],
        cache: PagedKVCache,
        *,
        backend: str = "auto",
        dtype: torch.dtype = torch.float32,
        max_positions: int = 4096,
    ) -> None:
        missing = sorted({n.op for n in graph.nodes_in_order()} - set(RULES))
        if missing:
            raise MissingRule(f"the executor has no rule for op(s) {missing}; add one in lowbit/runtime/executor.py")
        self.graph = graph
        self.nodes = graph.nodes_in_order()
        self.linear_kernels = {n.name: _bucket_kernels(n) for n in self.nodes if n.op == "linear"}
        self.params = _load_layouts(self.nodes, params, select_backend(backend), str(dtype).removeprefix("torch."))
        self.cache = cache
        self.backend = backend
        self.dtype = dtype
        self.dtype_name = str(dtype).removeprefix("torch.")
        # the hot path: launchers bound per node (and per row count), shared by the nano executor's views
        self.fast = select_backend(backend) == "tvm" and not any(
            isinstance(p, torch.Tensor) and p.device.type != "cpu" for p in self.params.values()
        )
        self.launchers: dict[Any, Any] = {}
        self.a8_prefill = True  # int8-activation linears run their prefill rows through the a8 GEMV too
        self.tp_group: Any = None  # a tensor-parallel rank's group (lowbit.parallel): what all_reduce sums over
        plan = graph.meta.get("memory_plan") if hasattr(graph, "meta") else None
        self.free_after: Mapping[str, tuple[str, ...]] = getattr(plan, "free_after", {}) or {}
        self._rope: dict[tuple[Any, ...], torch.Tensor] = {}
        self.max_positions = max_positions
        self.batch: Batch | None = None
        self.all_logits = False
        # decode plans: recorded decode-only steps replayed as plain kernel calls (see `forward`)
        self.plans: OrderedDict[tuple[int, int], _DecodePlan] = OrderedDict()
        self.recording = False
        self.recordable = True
        attn = [n.attrs_dict for n in self.nodes if n.op == "attention"]
        windows = [a["sliding_window"] for a in attn if a.get("sliding_window") is not None]
        self.replay_limit = min([max_positions, *windows])  # positions a replay may reach (the rules' checks)
        self.plan_pages = cache.blocks.pages_for(max_positions)  # the plans' block-table width
        self.attn_geom: tuple[int, int] | None = None  # (HKV, BN: the decode kernel's KV tile) for the plan key
        if attn:
            hq, hkv, d = attn[0]["num_heads"], attn[0]["num_kv_heads"], attn[0]["head_dim"]
            self.attn_geom = (hkv, _decode_tiles("tvm", hq // hkv, cache.page_size, d, self.dtype_name)[1])

    def forward(self, batch: Batch, *, all_logits: bool = False) -> torch.Tensor:
        """Logits [num_seqs, V] (or [tokens, V]) float32. On the hot path a decode-only step (every row a
        cached sequence's next token) is recorded once per (sequences, KV splits) and then replayed: the
        step's kernel calls and copies with their arguments as recorded, on the plan's own buffers, after
        copying the batch's ids, positions, slots, block tables and context lengths into them."""
        if self.fast and not all_logits and self.attn_geom is not None:
            info = step_info(batch)
            fits = batch.block_tables.shape[1] <= self.plan_pages
            if info["decode_only"] and info["max_pos"] < self.replay_limit and fits:
                hkv, bn = self.attn_geom
                key = (batch.num_tokens, _auto_splits("tvm", batch.num_tokens * hkv, info["max_len"], bn))
                plan = self.plans.get(key)
                if plan is not None:
                    self.plans.move_to_end(key)
                    return plan.replay(batch)
                return self._record(batch, key)
        return self._forward(batch, all_logits).float()

    def _record(self, batch: Batch, key: tuple[int, int]) -> torch.Tensor:
        from lowbit.codegen.tvm.runtime import RECORDING

        proxy = input_buffers(batch, self.plan_pages)
        calls: list[tuple[Any, tuple[Any, ...]]] = []
        names: list[str] = []
        self.recording, self.recordable, RECORDING.calls, RECORDING.names = True, True, calls, names
        try:
            logits = self._forward(proxy, False)
        finally:
            self.recording, RECORDING.calls, RECORDING.names = False, None, None
        if self.recordable:
            self.plans[key] = _DecodePlan(proxy, calls, logits, names)
            while len(self.plans) > MAX_PLANS:
                self.plans.popitem(last=False)
        return logits.float()  # a replay writes a fresh buffer: this one is never written again

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) now, and again at every replay when a decode step is being recorded: the rules' data-moving
        torch ops on the hot path go through here (kernel launches record themselves). Tensors go in `args`
        (outputs too: a replay may swap the logits buffer), so wrap ops that take `out=`."""
        if self.recording:
            from lowbit.codegen.tvm.runtime import RECORDING

            assert RECORDING.calls is not None and RECORDING.names is not None  # set by `_record`
            RECORDING.calls.append((fn, args))
            RECORDING.names.append(getattr(fn, "__name__", type(fn).__name__) + " (torch)")
        return fn(*args)

    def contiguous(self, x: torch.Tensor) -> torch.Tensor:
        """x itself when contiguous, else a copy made through `run` (recorded)."""
        if x.is_contiguous():
            return x
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        self.run(out.copy_, x)
        return out

    def generic(self) -> None:
        """A rule took a path that does not record itself: the step being recorded is not kept as a plan."""
        self.recordable = False

    def _forward(self, batch: Batch, all_logits: bool) -> torch.Tensor:
        self.batch, self.all_logits = batch, all_logits
        env: dict[str, Any] = {"input_ids": batch.input_ids, "positions": batch.positions}
        for node in self.nodes:
            try:
                args = [env[name] for name in node.inputs]
            except KeyError as e:
                raise RuntimeError(f"node {node.name} ({node.op}) reads {e}, which no earlier node produced") from None
            outs = RULES[node.op](self, node, args)
            if len(outs) != len(node.outputs):
                raise RuntimeError(f"rule {node.op} returned {len(outs)} outputs for {node.name}'s {node.outputs}")
            env.update(zip(node.outputs, outs))
            for name in self.free_after.get(node.name, ()):
                if name not in self.graph.outputs:
                    env.pop(name, None)
        self.batch = None
        return env["logits"]

    # -- helpers ------------------------------------------------------------------------------------------
    def param(self, name: str | None) -> Any:
        if name is None:
            return None
        try:
            return self.params[name]
        except KeyError:
            raise KeyError(f"parameter {name!r} is not in the model's weights (artifact incomplete?)") from None

    def launcher(self, key: Any, build: Callable[[], Any]) -> Any:
        """The launcher cached under `key` (built by `build()` at the first call)."""
        f = self.launchers.get(key)
        if f is None:
            f = self.launchers[key] = build()
        return f

    def rope_table(self, head_dim: int, theta: float, scaling: Any) -> torch.Tensor:
        key = (head_dim, theta, repr(scaling))
        if key not in self._rope:
            table = rope_cache(self.max_positions, head_dim, theta, dict(scaling) if scaling else None)
            self._rope[key] = torch.from_numpy(table)
        return self._rope[key]


def _bucket_kernels(node: Any) -> tuple[tuple[int, str], ...]:
    return tuple((int(b), str(k)) for b, k in node.attrs_dict.get("kernels") or ())


def linear_kernel(kernels: tuple[tuple[int, str], ...], m: int, a8_prefill: bool = True) -> str | None:
    """The kernel `quantized_linear` must be told by name for M = m rows: the int8-activation GEMV when the graph
    chose it for this linear (select_kernels puts it in every bucket of an eligible linear), else None (its own
    rule). `a8_prefill` False: more than `A8_DECODE_ROWS` rows (a prefill) take the float W4A16 GEMM instead;
    on (the default), every M runs the a8 kernel (a prefill in row tiles of 16): on the CPU the float GEMM of a
    32-token TinyLlama prefill took 3.5 s, the a8 kernel a tenth of that, for the same ~0.7% activation
    rounding the decode steps already take."""
    if any(k == A8_KERNEL for _, k in kernels) and (a8_prefill or m <= A8_DECODE_ROWS):
        return A8_KERNEL
    return None


A8_DECODE_ROWS = GEMV_MAX_M  # more rows than this share one a8 launcher (M is a call argument there)
MAX_PLANS = 8  # decode plans kept per executor (one per batch size and KV split count seen; LRU)


class _DecodePlan:
    """A recorded decode-only step: its calls and the input buffers they read (ids, positions, slots, block
    tables padded to max_positions / page_size pages, context lengths), and the logits buffer it writes."""

    def __init__(self, proxy: Batch, calls: list[tuple[Any, tuple[Any, ...]]], logits: torch.Tensor, names: list[str]):
        self.proxy, self.calls, self.logits = proxy, calls, logits
        self.names = names  # what each call runs: a kernel's name, or "<torch op> (torch)"
        # the arguments that are the logits buffer (or a view of all of it): each replay writes a fresh buffer
        # there, so the tensor returned to the caller is never overwritten by a later step
        ptr, size = logits.data_ptr(), logits.numel()
        self.logit_args = [
            (i, j, tuple(a.shape))
            for i, (_, args) in enumerate(calls)
            for j, a in enumerate(args)
            if isinstance(a, torch.Tensor) and a.data_ptr() == ptr and a.numel() == size
        ]

    def replay(self, batch: Batch) -> torch.Tensor:
        refill_inputs(self.proxy, batch)
        logits = torch.empty_like(self.logits)
        for i, j, shape in self.logit_args:
            fn, args = self.calls[i]
            self.calls[i] = (fn, (*args[:j], logits.view(shape), *args[j + 1 :]))
        for fn, args in self.calls:
            fn(*args)
        self.logits = logits
        return logits.float()


INDEX_TENSORS = ("input_ids", "positions", "slot_mapping", "context_lens")  # what a replayed step re-reads


def input_buffers(batch: Batch, width: int, *, pin: bool = False, extra: tuple[str, ...] = ()) -> Batch:
    """A copy of `batch` whose index tensors (`INDEX_TENSORS` and `extra`) are fresh buffers, pinned when
    `pin`, and whose block tables are `width` pages wide: what a recorded or captured step reads, rewritten
    by `refill_inputs` before each replay."""
    proxy = copy.copy(batch)
    proxy.__dict__.pop("_step_info", None)  # per-batch facts belong to the batch they were computed for
    for name in (*INDEX_TENSORS, *extra):
        t = getattr(batch, name).clone()
        setattr(proxy, name, t.pin_memory() if pin else t)
    tables = torch.zeros((batch.num_tokens, width), dtype=torch.int32)
    tables[:, : batch.block_tables.shape[1]] = batch.block_tables
    proxy.block_tables = tables.pin_memory() if pin else tables
    return proxy


def refill_inputs(proxy: Batch, batch: Batch) -> None:
    """Copy `batch`'s index tensors into the buffers of `input_buffers`."""
    for name in INDEX_TENSORS:
        getattr(proxy, name).copy_(getattr(batch, name))
    proxy.block_tables[:, : batch.block_tables.shape[1]].copy_(batch.block_tables)


def step_info(batch: Batch) -> dict[str, Any]:
    """Per-batch facts the rules share, computed once per batch object (kept on it): the largest position,
    whether every row attends to the paged cache (no fresh prefill) and then the longest context, and whether
    the step is decode-only (that, and one token per sequence)."""
    info = batch.__dict__.get("_step_info")
    if info is None:
        t = batch.num_tokens
        paged = t > 0 and batch.prefill_index.numel() == 0
        info = {
            "max_pos": int(batch.positions.max()) if t else -1,
            "paged_only": paged,
            "decode_only": paged and t == batch.num_seqs,
            "max_len": int(batch.context_lens.max()) if paged else 0,
        }
        batch.__dict__["_step_info"] = info
    return info


def _load_layouts(nodes: list[Any], params: Mapping[str, Any], backend: str, dtype: str) -> Mapping[str, Any]:
    """`params`, with the weights of linears re-tiled to the layout their CPU kernels stream (the artifact
    stores the row layout): linears that run `quantized_gemv_a8` to its column-tiled layout, int4 ones as the
    equal offset-binary uint4 weight (`lowbit.ops.weight.offset_binary`: the kernel skips a xor per word); on
    the TVM backend with float16 or float32 activations (`dtype`; `x16_every_m`), those the x16 plan runs at every
    M to its plane layout (`lowbit.ops.x16.x16_weight`: the plan reads it in place, no plane copy beside it);
    every other w_a16 linear to `lowbit.ops.linear.cpu_weight`'s column tiles for `dtype` (bfloat16: a 4-bit
    weight's codes in pair order, what the bf16 pair GEMM reads; the plain tiles took it twice the time: 4096²
    int4, M = 64 / 256, 10.35 / 40.76 against 5.45 / 20.96 ms; for 4-bit integer codes 32-column blocks, which
    the x16 plan of 2-28 rows reads in place: `lowbit.ops.x16.x16_source`). One copy each: the row-layout
    original is not kept (2- and 3-bit bfloat16 linears: the x16 plan's planes beside it).
    Configs pinned to a weight (tuning.json) move to its copy. A new mapping when something changed; the
    caller's is never modified."""
    x16_all = backend == "tvm" and x16_every_m(dtype, tvm_int8_dot())
    out: dict[str, Any] | None = None
    for n in nodes:
        if n.op != "linear":
            continue
        name = n.attrs_dict["weight"]
        w = params.get(name)
        if not isinstance(w, QuantizedWeight):
            continue
        if any(k == A8_KERNEL for _, k in _bucket_kernels(n)):
            tiled = offset_binary(retile_columns(w, A8_BN))
        elif backend == "tvm":
            tiled = (x16_weight(w) if x16_all else None) or cpu_weight(w, dtype)
            for slot in ("_cpu_tiled", "_cpu_pairs"):  # the copy replaces the weight; `w` must not keep it alive
                w.__dict__.pop(slot, None)
        else:
            continue
        if tiled is not w:
            attach(tiled, attached(w))
            out = dict(params) if out is None else out
            out[name] = tiled
    return params if out is None else out


@rule("embedding")
def _embedding(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    w = ex.param(node.attrs_dict["weight"])  # [V, Dm]
    if ex.fast:
        rows = torch.empty((args[0].shape[0], w.shape[1]), dtype=w.dtype)
        ex.run(_gather_rows, w, args[0], rows)  # = F.embedding
        if w.dtype == ex.dtype:
            return (rows,)
        out = torch.empty(rows.shape, dtype=ex.dtype)
        ex.run(out.copy_, rows)
        return (out,)
    return (F.embedding(args[0], w).to(ex.dtype),)


def _norm_launch(ex: Executor, node: Any, residual: bool) -> Any:
    def build() -> Any:
        a = node.attrs_dict
        return norm_launcher(ex.param(a["weight"]), a.get("eps", 1e-6), ex.dtype_name, residual, "tvm")

    return ex.launcher(node.name, build)


@rule("rms_norm")
def _rms_norm(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    if ex.fast and args[0].dtype == ex.dtype:
        x = ex.contiguous(args[0])
        out = torch.empty_like(x)
        _norm_launch(ex, node, False)(x, out, None, None)
        return (out,)
    ex.generic()
    x = args[0].contiguous()
    a = node.attrs_dict
    return (rms_norm(x, ex.param(a["weight"]), a.get("eps", 1e-6), backend=ex.backend),)


@rule("add")
def _add(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    out = torch.empty_like(args[0])
    ex.run(_add_into, args[0], args[1], out)
    return (out,)


@rule("add_rms_norm")
def _add_rms_norm(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    x, residual = args
    if ex.fast and x.dtype == ex.dtype:
        x, residual = ex.contiguous(x), ex.contiguous(residual)
        out, summed = torch.empty_like(x), torch.empty_like(residual)  # the input residual is left as it was
        _norm_launch(ex, node, True)(x, out, residual, summed)
        return (out, summed)
    ex.generic()
    summed = residual.clone()
    x = x.contiguous()
    a = node.attrs_dict
    y = add_rms_norm(x, summed, ex.param(a["weight"]), a.get("eps", 1e-6), backend=ex.backend)
    return (y, summed)


def _quantize_tokens(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    qa, sa = quantize_per_token_int8(y.float().numpy())  # [T, K] int8, [T] fp16 (lowbit.quant's rounding)
    return torch.from_numpy(qa), torch.from_numpy(sa)


@rule("rms_norm_quant")
def _rms_norm_quant(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    ex.generic()
    (y,) = _rms_norm(ex, node, args)
    return _quantize_tokens(y)


@rule("add_rms_norm_quant")
def _add_rms_norm_quant(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    ex.generic()
    y, summed = _add_rms_norm(ex, node, args)
    return (*_quantize_tokens(y), summed)


@rule("linear")
def _linear(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    w, b = ex.param(a["weight"]), ex.param(a.get("bias"))
    m = int(args[0].shape[0])
    if a.get("act_quant_fused"):  # (xq int8 [T, K], xs fp16 [T]) from rms_norm_quant
        ex.generic()
        y = quantized_linear_int8(args[0], args[1], w, out_dtype=ex.dtype_name, backend=ex.backend, bias=b)
    elif ex.fast and m and args[0].dtype == ex.dtype and (not isinstance(w, QuantizedWeight) or w.scheme == "w_a16"):
        x = ex.contiguous(args[0])
        if isinstance(w, QuantizedWeight):
            kernel = linear_kernel(ex.linear_kernels[node.name], m, ex.a8_prefill)
            rows = "rows" if kernel == A8_KERNEL and m > A8_DECODE_ROWS else m  # one launcher for every prefill
            launch = ex.launcher((node.name, rows), lambda: linear_launcher(w, m, "tvm", ex.dtype_name, kernel))
            y = torch.empty((m, w.shape[0]), dtype=x.dtype)
            launch(x, y)
            if b is not None:  # as quantized_linear: added in fp32 after the output rounding, rounded again
                ex.run(_add_bias, y, b)
        else:  # dense: F.linear's addmm / mm, into a buffer
            y = torch.empty((m, w.shape[0]), dtype=x.dtype)
            if b is None:
                ex.run(_matmul_into, x, w, y)
            else:
                ex.run(_addmm_into, b, x, w, y)
    else:
        ex.generic()
        if isinstance(w, QuantizedWeight):
            x = args[0].contiguous()
            kernel = linear_kernel(ex.linear_kernels[node.name], m, ex.a8_prefill)
            y = quantized_linear(x, w, backend=ex.backend, bias=b, kernel=kernel)
        else:
            y = F.linear(args[0], w, b)
    splits = tuple(a.get("splits") or ())
    if len(node.outputs) == 1:
        return (y,)
    return tuple(ex.contiguous(t) for t in torch.split(y, list(splits), dim=-1))


def _gather_rows(w: torch.Tensor, ids: torch.Tensor, out: torch.Tensor) -> None:
    torch.index_select(w, 0, ids, out=out)


def _add_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    torch.add(a, b, out=out)


def _matmul_into(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    torch.mm(x, w.t(), out=out)  # F.linear without bias


def _addmm_into(b: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    torch.addmm(b, x, w.t(), out=out)  # F.linear with bias


def _add_bias(y: torch.Tensor, b: torch.Tensor) -> None:
    """y ← round(fp32(y) + fp32(b)) in place (quantized_linear's bias rule)."""
    if y.dtype == torch.float32 and b.dtype == torch.float32:
        torch.add(y, b, out=y)
    else:
        y.copy_(y.float() + b.float())


@rule("silu_mul")
def _silu_mul(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    if ex.fast and len(args) == 1 and args[0].dtype == ex.dtype:
        x = ex.contiguous(args[0])
        out = torch.empty((x.shape[0], x.shape[1] // 2), dtype=x.dtype)
        ex.launcher("silu_mul", lambda: silu_mul_launcher(ex.dtype_name, "tvm"))(x, out)
        return (out,)
    ex.generic()
    if len(args) == 1:
        gate, up = args[0].chunk(2, dim=-1)
    else:
        gate, up = args
    return (F.silu(gate.float()).mul_(up.float()).to(ex.dtype),)


@rule("rope")
def _rope(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    q, k, positions = args
    hq, hkv, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    t = q.shape[0]
    table = ex.rope_table(d, a.get("theta", 10000.0), a.get("scaling"))
    max_pos = step_info(ex.batch)["max_pos"] if ex.batch is not None else (int(positions.max()) if t else -1)
    if max_pos >= table.shape[0]:
        raise ValueError(f"position {max_pos} is beyond max_positions {table.shape[0]}")
    if ex.fast and q.dtype == ex.dtype:
        build = lambda: rope_launcher(d, a.get("style", "neox"), ex.dtype_name, hq, hkv, table, "tvm")  # noqa: E731
        qr = torch.empty((t, hq, d), dtype=q.dtype)
        kr = torch.empty((t, hkv, d), dtype=k.dtype)
        q3, k3 = ex.contiguous(q.reshape(t, hq, d)), ex.contiguous(k.reshape(t, hkv, d))
        ex.launcher(node.name, build)(q3, k3, positions, qr, kr)
        return (qr.reshape(t, hq * d), kr.reshape(t, hkv * d))
    ex.generic()
    qr, kr = apply_rope(
        q.reshape(t, hq, d).contiguous(),
        k.reshape(t, hkv, d).contiguous(),
        positions,
        table,
        a.get("style", "neox"),
        backend=ex.backend,
    )
    return (qr.reshape(t, hq * d), kr.reshape(t, hkv * d))


@rule("attention")
def _attention(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    a = node.attrs_dict
    batch = ex.batch
    assert batch is not None
    hq, hkv, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    sm = a.get("sm_scale") or 1.0 / math.sqrt(d)
    q, k, v = args
    t = q.shape[0]
    window = a.get("sliding_window")
    info = step_info(batch)
    if window is not None and t and info["max_pos"] >= window:
        raise NotImplementedError(
            f"position {info['max_pos']} is beyond the sliding window {window} of layer {a['layer']}: "
            f"the attention kernels have no window mask yet; keep max_model_len <= {window}"
        )
    layer = ex.cache.layers[a["layer"]]
    kv = ex.cache.kv_dtype
    if ex.fast and info["paged_only"] and q.dtype == ex.dtype:
        q3, k3, v3 = (ex.contiguous(z.reshape(t, h, d)) for z, h in ((q, hq), (k, hkv), (v, hkv)))
        return (_decode_attention(ex, node, q3, k3, v3, batch, info["max_len"], sm).reshape(t, hq * d),)
    ex.generic()
    q3, k3, v3 = q.reshape(t, hq, d), k.reshape(t, hkv, d).contiguous(), v.reshape(t, hkv, d).contiguous()
    append_kv(
        k3, v3, batch.slot_mapping, layer.k, layer.v, kv,
        k_layer_scale=layer.k_layer_scale, v_layer_scale=layer.v_layer_scale, backend=ex.backend, **layer.side(),
    )  # fmt: skip
    out = torch.empty_like(q3)
    if batch.prefill_index.numel():
        idx = batch.prefill_index
        o = prefill_attention(
            q3.index_select(0, idx).contiguous(),
            k3.index_select(0, idx).contiguous(),
            v3.index_select(0, idx).contiguous(),
            batch.cu_seqlens,
            causal=True,
            sm_scale=sm,
            backend=ex.backend,
        )
        out.index_copy_(0, idx, o)
    if batch.paged_index.numel():
        idx = batch.paged_index
        o = paged_decode_attention(
            q3.index_select(0, idx).contiguous(),
            layer.k,
            layer.v,
            batch.block_tables,
            batch.context_lens,
            kv_dtype=kv,
            k_layer_scale=layer.k_layer_scale,
            v_layer_scale=layer.v_layer_scale,
            sm_scale=sm,
            backend=ex.backend,
            **layer.side(),
        )
        out.index_copy_(0, idx, o)
    return (out.reshape(t, hq * d),)


def _decode_attention(
    ex: Executor, node: Any, q3: Any, k3: Any, v3: Any, batch: Batch, max_len: int, sm: float
) -> torch.Tensor:
    """A decode-only step on the hot path: append this step's K/V, then paged decode attention (every row
    attends to the cache), with the same tiles and splits as `lowbit.ops.attention.paged_decode_attention`."""
    a = node.attrs_dict
    layer = ex.cache.layers[a["layer"]]
    kv = ex.cache.kv_dtype
    hq, hkv, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    ps = int(layer.v.shape[1])  # v: [NP, PS, HKV, ..] (int4 keys are [NP, HKV, D // 8, PS])
    gp, bn, cd = _decode_tiles("tvm", hq // hkv, ps, d, ex.dtype_name)

    def build() -> tuple[Any, Any]:
        append = append_launcher(
            layer.k, layer.v, kv, ex.dtype_name, side=layer.side(), k_layer_scale=layer.k_layer_scale,
            v_layer_scale=layer.v_layer_scale, backend="tvm",
        )  # fmt: skip
        fp8 = kv == "fp8_e4m3"
        consts = {
            "qdtype": ex.dtype_name, "kvdtype": _KERNEL_KV.get(kv, kv), "D": d, "PS": ps, "GQ": hq // hkv, "GP": gp,
            "BN": bn, "CD": cd, "sm_scale": float(sm),
            "k_layer_scale": float(layer.k_layer_scale) if fp8 else 1.0,
            "v_layer_scale": float(layer.v_layer_scale) if fp8 else 1.0,
        }  # fmt: skip
        k_cache, v_cache = (c.view(torch.int32) if kv == "int4" else c for c in (layer.k, layer.v))
        return append, decode_launcher(k_cache, v_cache, layer.side(), consts, "tvm")

    append, decode = ex.launcher(node.name, build)
    append(k3, v3, batch.slot_mapping)
    b = int(q3.shape[0])
    splits = _auto_splits("tvm", b * hkv, max_len, bn)
    # tokens per split (whole tiles) as the ops layer cuts them; a step being recorded covers every context a
    # replay may bring (up to max_positions) with the same number of splits (trailing splits may be empty)
    cover = ex.max_positions if ex.recording else max(max_len, 1)
    tps = max(bn, math.ceil(math.ceil(cover / splits) / bn) * bn)
    if not ex.recording:
        splits = max(1, math.ceil(max(max_len, 1) / tps))
    return decode(q3, batch.block_tables, batch.context_lens, splits, tps)


@rule("last_token")
def _last_token(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    assert ex.batch is not None
    if ex.all_logits or step_info(ex.batch)["decode_only"]:  # decode: one row per sequence, in order
        return (args[0],)
    ex.generic()
    return (args[0].index_select(0, ex.batch.last_index).contiguous(),)


__all__ = ["RULES", "Executor", "MissingRule", "linear_kernel", "rule", "step_info"]
