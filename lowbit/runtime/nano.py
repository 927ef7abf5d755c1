"""`NanoExecutor`: the nano-batch schedule of a step (NanoFlow): each op of the graph runs as nano-ops over
contiguous token-row ranges of the dense batch, and nano-ops of different nano-batches run concurrently on the
plan's execution units (plan.py), so a memory-bound attention overlaps a compute-bound GEMM.

`derive_tasks` (a pure function) turns the graph, the plan and the batch layout into tasks: one per node ×
row range, each with the producer tasks whose rows intersect its input rows (the graph edges give the
producers, so a layer waits for the previous layer's pieces it reads, and nothing else). Ranges follow the
plan's row fractions in multiples of its tile; an attention node's ranges are snapped to sequence boundaries
(a chunk's K/V append and causal attention are per sequence) and run on a sub-`Batch` of those sequences.
`last_token` and everything that reads it (lm_head: rows are sequences there) run as one task on the whole
batch, as does any op that is not row-wise.

Execution: one worker per unit, kept across steps, with a FIFO task queue. Every queue receives its tasks in one
global topological order (a priority topological sort: stage, then first row, then graph order, where a stage is
a run of nodes on the same unit — so one nano-batch's GEMMs are queued before the next one's and its attention
can overlap them; a plan with planned orders (`OpRule.order`, `lowbit plan --order`) sorts by (layer + the
rule's order of the nano-batch, graph order) instead, `planned_keys`); a task waits on its dependencies'
`threading.Event`s, so no queue can wait on a task behind it and the step cannot deadlock. CPU workers are
threads pinned to the unit's cores (`os.sched_setaffinity` of the thread; TVM's per-thread kernel pool is
confined to them too, since TVM binds its own workers to cores of its choosing); the kernels release the GIL. On
CUDA each unit launches on its stream and orders after its producers with `torch.cuda.Event`s. A failing task
marks the step failed; the tasks after it are skipped (their events still set) and `forward` raises the first
error.

Tensor parallelism (lowbit.parallel): every rank runs the same plan over the same batch, so its tasks and
their global order are the same on every rank. A unit runs its queue in that order, so the collectives one
unit issues come in the same order everywhere; when several units issue collectives (`collective_units`),
each gets its own subgroup of the model's process group (gloo pairs collectives by issue order within a
group). `step_timeout` (under TP by default the collectives' timeout + 30 s) turns a hung step into
`NanoStepTimeout` naming the unfinished nano-ops.

A task's inputs are the producers' output pieces, sliced to the intersecting rows (a view when one piece
covers them, a concatenation otherwise); on the CPU a piece is dropped once its last reader finished.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import queue
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.kernels.launch import resource_share
from lowbit.runtime.batch import Batch
from lowbit.runtime.executor import RULES, Executor, input_buffers, refill_inputs, step_info
from lowbit.runtime.plan import PipelinePlan, PlanError, nano_ranges, priority_topo

ROW_WISE = frozenset(
    {"embedding", "rms_norm", "add", "add_rms_norm", "rms_norm_quant", "add_rms_norm_quant", "linear", "rope",
     "silu_mul", "all_reduce"}
)  # fmt: skip  # output row i depends on input row i only (all_reduce: on every rank, which cuts the same rows)
COLLECTIVES = frozenset({"all_reduce", "all_gather"})  # issued over the tensor-parallel group
SEQUENCE_WISE = frozenset({"attention"})  # rows of a sequence stay together (a sub-Batch of whole sequences)
GRAPH_INPUT = -1


@dataclass(frozen=True)
class Source:
    """Rows [lo, hi) of output `output` of task `task` (or of graph input `tensor` when task is GRAPH_INPUT)."""

    tensor: str
    task: int
    output: int
    lo: int
    hi: int


@dataclass(frozen=True)
class NanoTask:
    index: int  # position in the global order (dependencies point to smaller indices)
    node: int  # index into the node list
    rows: tuple[int, int]  # token rows [a, b) it computes (whole tasks: all rows)
    unit: int  # index into plan.units
    deps: tuple[int, ...]  # tasks it waits for
    inputs: tuple[tuple[Source, ...], ...]  # per node input: the pieces whose concatenation is its rows
    seqs: tuple[int, int] | None = None  # attention: the sequences [i, j) of its sub-batch
    whole: bool = False  # runs on the whole batch (last_token and what reads it, ops that are not row-wise)
    share: float | None = None  # the resource share the plan gave this nano-op (None: the whole device)


def derive_tasks(
    nodes: Sequence[Any], plan: PipelinePlan, num_tokens: int, seq_bounds: Sequence[int]
) -> tuple[NanoTask, ...]:
    """The tasks of one step of `nodes` (in topological order) over `num_tokens` rows whose sequences start at
    `seq_bounds` (0, ..., num_tokens), in a topological order that the unit queues follow."""
    bounds = list(seq_bounds)
    if bounds[0] != 0 or bounds[-1] != num_tokens or any(a >= b for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"seq_bounds {bounds} must rise strictly from 0 to num_tokens {num_tokens}")
    producer: dict[str, tuple[int, int]] = {}  # tensor -> (node index, output index)
    whole_nodes: set[int] = set()
    # node, rows, unit, seqs, whole, share
    proto: list[tuple[int, tuple[int, int], int, tuple[int, int] | None, bool, float | None]] = []
    stage, last_unit = 0, None
    stages: list[int] = []
    nano_of: list[int] = []  # per proto: its nano-batch index within the node
    for ni, node in enumerate(nodes):
        for t in node.inputs:
            if t not in producer and t not in ("input_ids", "positions"):
                raise ValueError(f"node {node.name} reads {t!r}, which no earlier node produced")
        whole = node.op not in ROW_WISE | SEQUENCE_WISE or any(
            producer[t][0] in whole_nodes for t in node.inputs if t in producer
        )
        rule = plan.rule_for(node.op, node.name)
        if whole or rule is None:
            cuts, units = [0, num_tokens], [plan.unit_index(rule.units[0]) if rule else 0]
        else:
            snap = bounds if node.op in SEQUENCE_WISE else None
            cuts = nano_ranges(num_tokens, rule.fractions, plan.tile, snap)
            units = [plan.unit_index(rule.unit_of(min(k, rule.num_nano - 1))) for k in range(len(cuts) - 1)]
        if units[0] != last_unit:
            stage, last_unit = stage + (last_unit is not None), units[0]
        stages.append(stage)
        if whole:
            whole_nodes.add(ni)
        for k, (a, b) in enumerate(itertools.pairwise(cuts)):
            nano_of.append(k)
            seqs = (bounds.index(a), bounds.index(b)) if node.op in SEQUENCE_WISE and not whole else None
            share = rule.shares[min(k, len(rule.shares) - 1)] if rule is not None and rule.shares else None
            proto.append((ni, (a, b), units[k], seqs, whole, share))
        for oi, t in enumerate(node.outputs):
            producer[t] = (ni, oi)

    # dependencies by row intersection, over proto indices
    pieces: dict[int, list[int]] = {}  # node index -> its proto indices (rows ascending)
    for pi, (ni, *_) in enumerate(proto):
        pieces.setdefault(ni, []).append(pi)
    Piece = tuple[str, int, int, int, int]  # tensor, proto index (or GRAPH_INPUT), output, lo, hi
    inputs_of: list[tuple[tuple[Piece, ...], ...]] = []
    for ni, (a, b), *_ in proto:
        per_input: list[tuple[Piece, ...]] = []
        for t in nodes[ni].inputs:
            if t not in producer:
                per_input.append(((t, GRAPH_INPUT, 0, a, b),))
                continue
            pn, oi = producer[t]
            srcs: list[Piece] = []
            for pj in pieces[pn]:
                pa, pb = proto[pj][1]
                if ni in whole_nodes and pn in whole_nodes:
                    srcs.append((t, pj, oi, 0, -1))  # rows are sequences there: the whole piece
                elif max(a, pa) < min(b, pb):
                    srcs.append((t, pj, oi, max(a, pa) - pa, min(b, pb) - pa))
            per_input.append(tuple(srcs))
        inputs_of.append(tuple(per_input))
    deps_of = [sorted({s[1] for srcs in ins for s in srcs if s[1] != GRAPH_INPUT}) for ins in inputs_of]

    # a priority topological order: stage, first row, graph order; or the plan's planned order
    if plan.ordered:
        keys: list[tuple[Any, ...]] = list(planned_keys(nodes, plan, [(p[0], k) for p, k in zip(proto, nano_of)],
                                                        deps_of))  # fmt: skip
    else:
        keys = [(stages[p[0]], p[1][0], p[0]) for p in proto]
    order = priority_topo(deps_of, keys)
    new = {old: i for i, old in enumerate(order)}
    tasks = []
    for old in order:
        ni, rows, unit, seqs, whole, share = proto[old]
        ins = tuple(
            tuple(Source(t, new.get(p, GRAPH_INPUT), o, lo, hi) for t, p, o, lo, hi in s) for s in inputs_of[old]
        )
        deps = tuple(sorted(new[d] for d in deps_of[old]))
        tasks.append(NanoTask(new[old], ni, rows, unit, deps, ins, seqs, whole, share))
    return tuple(tasks)


def node_layers(nodes: Sequence[Any]) -> list[int]:
    """The decoder layer of each node (`Node.layer`); a node outside the layers is in "layer" -1 before the first
    layer node (the embedding) or num_layers after it (final norm, lm_head)."""
    layers = [n.layer for n in nodes]
    known = [x for x in layers if x is not None]
    num_layers = max(known) + 1 if known else 0
    first = next((i for i, x in enumerate(layers) if x is not None), len(nodes))
    return [x if x is not None else (-1 if i < first else num_layers) for i, x in enumerate(layers)]


def planned_keys(
    nodes: Sequence[Any], plan: PipelinePlan, pieces: Sequence[tuple[int, int]], deps: Sequence[Sequence[int]]
) -> list[tuple[float, int]]:
    """The queue keys of a plan with planned orders (`OpRule.order`, the planner's `Placement.order`) for the
    nano-ops `pieces` = (node index, nano-batch index), in node order: (layer of the node + its rule's order of
    that nano-batch, graph position) — lowbit/planner/tasks.py keys its simulated nano-ops the same way. A node
    outside the layers without a rule: (-1 or num_layers) + position / nodes (before the first / after the last
    layer); a layer node no rule matches queues right behind its latest-keyed producer (the largest key among
    `deps`, else its layer). A pure function of the graph and the plan: every tensor-parallel rank derives the
    same order."""
    layer = node_layers(nodes)
    keys: list[tuple[float, int]] = []
    for pi, (ni, k) in enumerate(pieces):
        node = nodes[ni]
        rule = plan.rule_for(node.op, node.name)
        if rule is not None and rule.order:
            key = layer[ni] + rule.order[min(k, rule.num_nano - 1)]
        elif node.layer is None:
            key = layer[ni] + ni / len(nodes)
        else:
            key = max((keys[d][0] for d in deps[pi]), default=float(layer[ni]))
        keys.append((key, ni))
    return keys


class _Step:
    """The state of one step: results, one done-event per task, the first error."""

    def __init__(
        self, ex: NanoExecutor, batch: Batch, tasks: tuple[NanoTask, ...], all_logits: bool, row_views: bool = False
    ) -> None:
        self.tasks = tasks
        self.nodes = ex.nodes
        dev = ex.device  # the batch is built on the CPU; from pinned memory the copies are captured in a graph
        nb = dev.type == "cuda"
        self.inputs = {
            "input_ids": batch.input_ids.to(dev, non_blocking=nb),
            "positions": batch.positions.to(dev, non_blocking=nb),
        }
        self.done = [threading.Event() for _ in tasks]
        self.results: list[tuple[Any, ...] | None] = [None] * len(tasks)
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.remaining = len(tasks)
        self.finished = threading.Event()
        self.free = ex.device.type == "cpu"  # CUDA: pieces live to the end of the step (other streams read them)
        self.readers = [0] * len(tasks)
        for t in tasks:
            for d in t.deps:
                self.readers[d] += 1
        self.logits_task = next(t.index for t in tasks if "logits" in ex.nodes[t.node].outputs)
        self.readers[self.logits_task] += 1  # read by forward
        # executor views: the rules read ex.batch / ex.all_logits; attention ranges get a sub-batch each; a unit
        # with its own tensor-parallel subgroup gets views whose tp_group is that subgroup
        views: dict[tuple[tuple[int, int] | None, int | None], Executor] = {}
        self.view_of: list[Executor] = []
        for t in tasks:
            own = t.unit if t.unit in ex.unit_executors else None
            key = (t.seqs, own)
            if key not in views:
                view = copy.copy(ex.executor if own is None else ex.unit_executors[own])
                if t.seqs is None:
                    view.batch = batch
                else:
                    i, j = t.seqs
                    view.batch = _decode_rows(batch, i, j) if row_views else Batch(batch.seqs[i:j], batch.page_size)
                view.all_logits = all_logits
                views[key] = view
            self.view_of.append(views[key])
        self.cuda_events: list[Any] = [None] * len(tasks)
        self.start_event: Any = None

    def arg(self, srcs: tuple[Source, ...]) -> Any:
        parts = []
        for s in srcs:
            if s.task == GRAPH_INPUT:
                parts.append(self.inputs[s.tensor][s.lo : s.hi])
                continue
            res = self.results[s.task]
            assert res is not None, f"piece of {s.tensor} from task {s.task} was freed before its reader ran"
            x = res[s.output]
            parts.append(x if s.hi < 0 else x[s.lo : s.hi])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def run(self, task: NanoTask, stream: Any) -> None:
        try:
            for d in task.deps:
                self.done[d].wait()
            if self.error is None:
                if stream is None:
                    self._execute(task)
                else:
                    with torch.cuda.stream(stream):
                        stream.wait_event(self.start_event)
                        for d in task.deps:
                            stream.wait_event(self.cuda_events[d])
                        self._execute(task)
                        ev = torch.cuda.Event()
                        ev.record(stream)
                        self.cuda_events[task.index] = ev
        except BaseException as e:  # handed to the caller of forward
            with self.lock:
                if self.error is None:
                    self.error = e
        finally:
            self.done[task.index].set()
            with self.lock:
                self.remaining -= 1
                if self.remaining == 0:
                    self.finished.set()

    def _execute(self, task: NanoTask) -> None:
        node = self.nodes[task.node]
        args = [self.arg(s) for s in task.inputs]
        with resource_share(task.share):  # what persistent kernels launched by the rule size their grid by
            outs = RULES[node.op](self.view_of[task.index], node, args)
        if len(outs) != len(node.outputs):
            raise RuntimeError(f"rule {node.op} returned {len(outs)} outputs for {node.name}'s {node.outputs}")
        self.results[task.index] = tuple(outs)
        if self.free:
            with self.lock:
                if self.readers[task.index] == 0:
                    self.results[task.index] = None
                for d in task.deps:
                    self.readers[d] -= 1
                    if self.readers[d] == 0:
                        self.results[d] = None


class NanoStepTimeout(RuntimeError):
    """A nano step did not finish within the executor's `step_timeout` (a deadlock guard)."""


class _Worker:
    """One execution unit: a thread (pinned to the unit's cores) running the tasks put on its queue in order."""

    def __init__(self, name: str, cores: tuple[int, ...], stream: Any) -> None:
        self.cores, self.stream = cores, stream
        self.threads: int | None = None  # kernel threads of an unpinned unit (None: the kernels' default)
        self.queue: queue.SimpleQueue[tuple[_Step, NanoTask] | None] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.start_error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name=f"lowbit-nano-{name}", daemon=True)
        self.thread.start()
        self.ready.wait()

    def _loop(self) -> None:
        try:
            if self.cores:
                os.sched_setaffinity(0, self.cores)  # 0 = the calling thread on Linux
        except BaseException as e:  # raised by NanoExecutor's constructor
            self.start_error = e
        self.ready.set()
        if self.start_error is not None:
            return
        confined = False
        while True:
            item = self.queue.get()
            if item is None:
                return
            if not confined and (self.cores or self.threads):
                cores = self.cores or tuple(sorted(os.sched_getaffinity(0)))
                confined = _confine_kernel_threads(cores, self.threads or len(cores))
            step, task = item
            step.run(task, self.stream)


class NanoExecutor:
    """Runs `executor`'s graph on the nano-batch schedule of `plan`; `forward` is `Executor.forward`'s.

    `cuda_graphs` (CUDA only; ignored on the CPU): a decode-only step is captured once per shape bucket
    (`graph_key`: sequences, KV splits, tokens per split) into a CUDA graph — the nano schedule with its
    streams and events, forked from and joined into the capture stream — and replayed after copying the
    step's inputs into the graph's pinned buffers. A bucket whose capture fails (a rule that synchronises or
    copies from pageable memory) runs eagerly from then on; `graph_failures` says why. `max_graphs` buckets
    are kept (LRU)."""

    def __init__(
        self,
        executor: Executor,
        plan: PipelinePlan,
        *,
        schedule_cache: int = 256,
        cuda_graphs: bool = False,
        max_graphs: int = 8,
        step_timeout: float | None = None,
    ) -> None:
        self.executor = executor
        self.plan = plan
        self.nodes = executor.nodes
        self.device = _device_of(executor)
        group: Any = getattr(executor, "tp_group", None)
        self.tp = group is not None and group.world_size > 1
        if step_timeout is None and self.tp:  # after the collectives' own timeout, whose error says more
            from lowbit.parallel.collectives import timeout_s

            step_timeout = timeout_s() + 30.0
        if step_timeout is not None and not step_timeout > 0:
            raise ValueError(f"step_timeout {step_timeout!r}: give a positive number of seconds (or None: no limit)")
        self.step_timeout = step_timeout
        # the units that issue collectives; with more than one, each gets its own subgroup (collectives match by
        # issue order within a group, and two units interleave theirs differently on different ranks)
        self.collective_units = collective_units(self.nodes, plan)
        self.unit_executors: dict[int, Executor] = {}
        if self.tp and len(self.collective_units) > 1:
            for ui in self.collective_units:
                view = copy.copy(executor)
                view.tp_group = group.subgroup(f"nano-{plan.units[ui].name}")
                self.unit_executors[ui] = view
        if self.device.type == "cpu" and any(u.cores for u in plan.units):
            have = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
            for u in plan.units:
                if u.cores and not set(u.cores) <= have:
                    raise PlanError(
                        f"unit {u.name} is pinned to cores {list(u.cores)}, but this process may run on "
                        f"{sorted(have)}; use those (or no cores: not pinned)"
                    )
        streams: dict[int | None, Any] = {}
        self.workers: list[_Worker] = []
        for i, u in enumerate(plan.units):
            stream = None
            if self.device.type == "cuda":
                key = u.stream if u.stream is not None else -1 - i
                if key not in streams:
                    streams[key] = torch.cuda.Stream(device=self.device)
                stream = streams[key]
            self.workers.append(_Worker(u.name, u.cores if self.device.type == "cpu" else (), stream))
        errors = [w.start_error for w in self.workers if w.start_error is not None]
        if errors:
            self.close()
            raise PlanError(f"could not start the plan's units: {errors[0]}") from errors[0]
        self._schedules: OrderedDict[tuple[int, tuple[int, ...]], tuple[NanoTask, ...]] = OrderedDict()
        self._cache_size = schedule_cache
        self._lock = threading.Lock()
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs: OrderedDict[tuple[int, ...], _CapturedStep] = OrderedDict()
        self.graph_failures: dict[tuple[int, ...], str] = {}
        self._max_graphs = max_graphs
        self.closed = False
        self._finalizer = weakref.finalize(self, _stop, self.workers)

    @property
    def threads(self) -> list[threading.Thread]:
        return [w.thread for w in self.workers]

    def set_kernel_threads(self, threads: int) -> None:
        """Unpinned units run their kernels on `threads` threads each (a tensor-parallel rank's share of the
        cores); call before the first step (a unit configures its kernel pool at its first nano-op)."""
        if threads < 1:
            raise ValueError(f"threads {threads}: give at least 1")
        for w in self.workers:
            w.threads = threads

    def tasks_for(self, batch: Batch) -> tuple[NanoTask, ...]:
        bounds = [0]
        for s in batch.seqs:
            bounds.append(bounds[-1] + s.num_new)
        key = (batch.num_tokens, tuple(bounds))
        tasks = self._schedules.get(key)
        if tasks is None:
            tasks = derive_tasks(self.nodes, self.plan, batch.num_tokens, bounds)
            self._schedules[key] = tasks
            if len(self._schedules) > self._cache_size:
                self._schedules.popitem(last=False)
        else:
            self._schedules.move_to_end(key)
        return tasks

    def forward(self, batch: Batch, *, all_logits: bool = False) -> torch.Tensor:
        if self.cuda_graphs and not all_logits:
            key = self.graph_key(batch)
            if key is not None and key not in self.graph_failures:
                return self._graph_step(batch, key)
        if batch.num_tokens < self.plan.min_tokens:
            return self.executor.forward(batch, all_logits=all_logits)
        return self._run(batch, all_logits)

    def graph_key(self, batch: Batch) -> tuple[int, ...] | None:
        """The CUDA-graph bucket of a decode-only step: (sequences, KV splits, tokens per split) as the decode
        attention op derives them from the longest context (they are fixed in a captured graph), or None
        for a step that is not decode-only or reaches past the graph's block-table width / positions."""
        info = step_info(batch)
        ex = self.executor
        if not info["decode_only"] or info["max_pos"] >= ex.replay_limit or batch.block_tables.shape[1] > ex.plan_pages:
            return None
        if self._decode_geometry is None:
            return (batch.num_seqs,)
        from lowbit.ops.attention import decode_splits

        backend, hkv, bn = self._decode_geometry
        return (batch.num_seqs, *decode_splits(backend, batch.num_seqs * hkv, max(info["max_len"], 1), bn))

    @functools.cached_property
    def _decode_geometry(self) -> tuple[str, int, int] | None:
        """(backend, HKV, BN: the decode kernel's KV tile) of the graph's attention, the same at every step
        (`graph_key` runs per step); None for a graph without attention."""
        attn = next((n.attrs_dict for n in self.nodes if n.op == "attention"), None)
        if attn is None:
            return None
        from lowbit.ops.attention import _decode_tiles
        from lowbit.ops.linear import select_backend

        ex = self.executor
        hq, hkv, d = attn["num_heads"], attn["num_kv_heads"], attn["head_dim"]
        backend = select_backend(ex.backend)
        return backend, hkv, _decode_tiles(backend, hq // hkv, ex.cache.page_size, d, ex.dtype_name)[1]

    def _graph_step(self, batch: Batch, key: tuple[int, ...]) -> torch.Tensor:
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = _CapturedStep(self, batch)
            except Exception as e:  # not capturable: this bucket runs eagerly from now on
                self.graph_failures[key] = f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"CUDA graph capture of the decode step {key} failed ({self.graph_failures[key]}); it runs "
                    f"without a graph",
                    stacklevel=3,
                )
                return self._run(batch, False)
            self.graphs[key] = graph
            while len(self.graphs) > self._max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        return graph.replay(batch)

    def _run(self, batch: Batch, all_logits: bool, row_views: bool = False) -> torch.Tensor:
        """The step on the nano schedule (the units' threads, streams and events)."""
        if self.closed:
            raise RuntimeError("this NanoExecutor was closed; build a new one")
        with self._lock:
            step = _Step(self, batch, self.tasks_for(batch), all_logits, row_views)
            if self.device.type == "cuda":
                step.start_event = torch.cuda.Event()
                step.start_event.record(torch.cuda.current_stream(self.device))
            for t in step.tasks:
                self.workers[t.unit].queue.put((step, t))
            if not step.finished.wait(self.step_timeout):
                with step.lock:
                    if step.error is None:
                        step.error = NanoStepTimeout("")  # the tasks not started yet are skipped
                self.closed = True  # a unit is stuck in a task: its queue will not drain
                pending = [t for t in step.tasks if not step.done[t.index].is_set()]
                names = [f"{self.nodes[t.node].name}[{t.rows[0]}:{t.rows[1]}]@{self.plan.units[t.unit].name}"
                         for t in pending[:4]]  # fmt: skip
                raise NanoStepTimeout(
                    f"a nano step ({batch.num_tokens} token rows) did not finish within {self.step_timeout:g} s; "
                    f"{len(pending)} nano-op(s) unfinished, first {names} (a collective the other ranks did not "
                    f"issue, or a hung kernel); this executor is closed: build a new one"
                )
            if step.error is not None:
                raise step.error
            if self.device.type == "cuda":
                current = torch.cuda.current_stream(self.device)
                for ev in step.cuda_events:
                    current.wait_event(ev)
            res = step.results[step.logits_task]
            assert res is not None
            return res[self.nodes[step.tasks[step.logits_task].node].outputs.index("logits")].float()

    def close(self) -> None:
        """Stop the worker threads (also done at interpreter exit: they are daemons)."""
        self.closed = True
        _stop(self.workers)


class _CapturedStep:
    """A decode-only step captured in a CUDA graph: its pinned input buffers (the step's index tensors, block
    tables padded to the executor's plan width), the graph and the logits buffer it writes."""

    def __init__(self, ex: NanoExecutor, batch: Batch) -> None:
        self.proxy = input_buffers(batch, ex.executor.plan_pages, pin=True, extra=("last_index", "paged_index"))
        dev = ex.device
        side = torch.cuda.Stream(device=dev)  # warm-up (compiles, autotunes, fills the allocator) off the graph
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            ex._run(self.proxy, False, row_views=True)
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.cuda.synchronize(dev)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the unit threads create and record events while the caller's thread captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = ex._run(self.proxy, False, row_views=True)
        self.done = torch.cuda.Event()
        self.done.record(torch.cuda.current_stream(dev))

    def replay(self, batch: Batch) -> torch.Tensor:
        self.done.synchronize()  # the previous replay's copies out of the pinned buffers have run
        refill_inputs(self.proxy, batch)
        self.proxy.seqs = batch.seqs
        self.graph.replay()
        out = self.logits.clone()  # the graph's buffer is overwritten by the next replay
        self.done.record(torch.cuda.current_stream(self.logits.device))
        return out


def collective_units(nodes: Sequence[Any], plan: PipelinePlan) -> tuple[int, ...]:
    """The plan units that may run a collective node (sorted unit indices): its rule's units, else unit 0."""
    units: set[int] = set()
    for n in nodes:
        if n.op in COLLECTIVES:
            rule = plan.rule_for(n.op, n.name)
            units |= {plan.unit_index(u) for u in rule.units} if rule is not None else {0}
    return tuple(sorted(units))


def _decode_rows(batch: Batch, i: int, j: int) -> Batch:
    """Sequences [i, j) of a decode-only batch (one row each) as views of its tensors: a sub-batch a graph
    captured on `batch` reads through the same buffers."""
    view = copy.copy(batch)
    view.__dict__.pop("_step_info", None)
    view.seqs = batch.seqs[i:j]
    for name in ("input_ids", "positions", "slot_mapping", "context_lens", "block_tables"):
        setattr(view, name, getattr(batch, name)[i:j])
    view.last_index = view.paged_index = torch.arange(j - i, dtype=torch.int64)
    return view


def _stop(workers: list[_Worker]) -> None:
    for w in workers:
        if w.thread.is_alive():
            w.queue.put(None)
    for w in workers:
        if w.thread is not threading.current_thread():
            w.thread.join(timeout=5)


def _confine_kernel_threads(cores: tuple[int, ...], threads: int) -> bool:
    """Give the calling thread's TVM thread pool (TVM keeps one per calling thread, its workers bound to cores
    of TVM's choosing) `threads` threads sharing `cores`; True once done. TVM is configured only after
    something else loaded it (a kernel call), so a process that never runs TVM kernels never imports it. A
    module another thread is still importing is in sys.modules half-initialized (no `get_global_func` yet:
    two network threads of a tensor-parallel rank hit that once in the suite): not loaded yet, so False."""
    tvm = sys.modules.get("tvm")
    if tvm is None or getattr(getattr(tvm, "__spec__", None), "_initializing", False):
        return False
    share_all = -3  # tvm::runtime::threading::ThreadGroup::kSpecifyThreadShareAllCore
    tvm.get_global_func("runtime.config_threadpool")(share_all, threads, [str(c) for c in cores])
    return True


def _device_of(executor: Executor) -> torch.device:
    for p in executor.params.values():
        if isinstance(p, torch.Tensor):
            return p.device
    return torch.device("cpu")


__all__ = [
    "COLLECTIVES",
    "ROW_WISE",
    "SEQUENCE_WISE",
    "NanoExecutor",
    "NanoStepTimeout",
    "NanoTask",
    "Source",
    "collective_units",
    "derive_tasks",
    "node_layers",
    "planned_keys",
]
