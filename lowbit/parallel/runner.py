"""`TPRunner`: rank 0 of a tensor-parallel model, a `ModelRunner` whose `step` first sends the step to the
other ranks (spawned processes, lowbit.parallel.worker) and then runs its own shard; the all_reduce nodes
meet in the process group, and the logits (lm_head is replicated) come out of rank 0.

The scheduler, the KV page allocator, sampling and detokenization stay in rank 0 (the engine does not know
it is sharded): every rank holds a KV cache of the same pages for its KV heads, so rank 0's block tables
serve all. Lifecycle: `TPRunner(model)` spawns ranks 1..tp-1 and waits until each has loaded its shard;
`close()` (also at garbage collection and interpreter exit) stops them. A worker's error surfaces in rank 0
as `TensorParallelError` naming the rank, with its traceback; after any error the group is shut down.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_conns
from typing import Any, cast

import torch

from lowbit.parallel.collectives import TPGroup, free_port, timeout_s
from lowbit.parallel.shard import local_arch
from lowbit.parallel.worker import worker_main
from lowbit.runtime.batch import SeqChunk
from lowbit.runtime.plan import PipelinePlan, default_plan
from lowbit.runtime.runner import ModelRunner


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank failed (its traceback is in the message) or the group is down."""


class _Workers:
    """The spawned ranks and their pipes; `stop` is idempotent (weakref.finalize calls it at the latest)."""

    def __init__(self, procs: list[Any], conns: list[Connection]) -> None:
        self.procs, self.conns = procs, conns

    def send(self, msg: tuple[Any, ...]) -> None:
        for c in self.conns:
            c.send(msg)

    def errors(self, wait_s: float) -> list[tuple[int, str]]:
        """(rank, traceback) of every worker that reported an error within `wait_s` seconds."""
        out: list[tuple[int, str]] = []
        deadline = time.monotonic() + wait_s
        pending = list(self.conns)
        while pending:
            ready = cast(list[Connection], wait_conns(pending, timeout=max(0.0, deadline - time.monotonic())))
            if not ready:
                break
            for c in ready:
                pending.remove(c)
                try:
                    msg = c.recv()
                except (EOFError, OSError):
                    continue
                if msg[0] == "error":
                    out.append((int(msg[1]), str(msg[2])))
        return out

    def await_all(self, what: str, budget_s: float) -> None:
        """Wait for (what, rank) from every worker; TensorParallelError on an error, a death or a timeout."""
        deadline = time.monotonic() + budget_s
        pending = dict(zip(self.conns, range(1, len(self.conns) + 1)))
        while pending:
            left = min(1.0, max(0.0, deadline - time.monotonic()))
            ready = cast(list[Connection], wait_conns(list(pending), timeout=left))
            for c in ready:
                rank = pending[c]
                try:
                    msg = c.recv()
                except (EOFError, OSError):
                    raise TensorParallelError(self._death(rank)) from None
                if msg[0] == "error":
                    raise TensorParallelError(f"tensor-parallel rank {msg[1]} failed:\n{msg[2]}")
                del pending[c]
            for c, rank in list(pending.items()):
                if not self.procs[rank - 1].is_alive() and not c.poll():
                    raise TensorParallelError(self._death(rank))
            if pending and time.monotonic() > deadline:
                raise TensorParallelError(
                    f"tensor-parallel rank(s) {sorted(pending.values())} did not report {what!r} within "
                    f"{budget_s:.0f} s; raise LOWBIT_TP_TIMEOUT if the machine is slow"
                )

    def dead(self) -> list[tuple[int, int | None]]:
        """(rank, exit code) of every worker that is no longer running."""
        return [(r, p.exitcode) for r, p in enumerate(self.procs, start=1) if not p.is_alive()]

    def _death(self, rank: int) -> str:
        p = self.procs[rank - 1]
        p.join(timeout=2)
        return f"tensor-parallel rank {rank} exited (code {p.exitcode}) without a report; see its stderr"

    def stop(self, graceful: bool = True) -> None:
        if graceful:
            with contextlib.suppress(OSError, ValueError):
                self.send(("stop",))
        for p in self.procs:
            p.join(timeout=5 if graceful else 0.5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []


class TPRunner(ModelRunner):
    """Rank 0 of the tensor-parallel artifact `model` (a CompiledModel of tensor_parallel > 1, loaded as
    rank 0); the ModelRunner arguments as in CompiledModel.runner. `schedule`: "unsplit", or "nano" with
    `plan` (default: `default_plan(..., tensor_parallel=tp)`, the all_reduce nano-ops on a network unit), run
    by every rank. `threads`: torch / TVM threads per rank (default: the cores / tp, at least 1)."""

    def __init__(
        self,
        model: Any,
        *,
        backend: str | None = None,
        max_model_len: int | None = None,
        num_pages: int | None = None,
        page_size: int | None = None,
        max_num_seqs: int | None = None,
        schedule: str = "unsplit",
        plan: PipelinePlan | None = None,
        threads: int | None = None,
    ) -> None:
        tp = model.tensor_parallel
        if tp < 2 or model.rank != 0:
            raise ValueError(f"TPRunner runs rank 0 of a tensor-parallel artifact; got tensor_parallel {tp}, "
                             f"rank {model.rank}: use CompiledModel.runner()")  # fmt: skip
        if schedule not in ("unsplit", "nano"):
            raise ValueError(f"schedule {schedule!r} is not known; use 'unsplit' or 'nano'")
        c = model.cfg
        device = "cuda" if c.target.device == "cuda" else "cpu"
        if schedule == "nano" and plan is None:  # every rank runs this plan: the same nano-ops in the same order
            plan = default_plan(model.arch, device, tensor_parallel=tp)
        kw: dict[str, Any] = {  # num_pages None: every rank's ModelRunner derives the same default
            "kv_dtype": c.quantization.kv_cache.dtype, "dtype": c.model.dtype,
            "backend": backend or c.target.effective_backend, "num_pages": num_pages,
            "max_model_len": int(max_model_len or c.target.max_model_len),
            "page_size": int(page_size or c.target.page_size),
            "max_num_seqs": int(max_num_seqs or c.target.max_num_seqs),
        }  # fmt: skip
        if schedule == "nano":
            assert plan is not None
            kw |= {"schedule": "nano", "plan": plan.to_json()}  # the workers rebuild it (JSON: no pickled classes)
        self.world_size = tp
        self.threads = int(threads or max(1, (os.cpu_count() or 1) // tp))
        self._confined: set[int] = set()
        self._broken: str | None = None
        port = free_port()
        self.workers = _spawn(str(model.path), tp, port, device, kw, self.threads)
        self._finalizer = weakref.finalize(self, self.workers.stop, False)
        try:
            self.workers.await_all("hello", timeout_s())
            group = TPGroup.connect(0, tp, port, device)
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            super().__init__(
                local_arch(model.arch, tp), model.graph, model.params, tp_group=group,
                kv_layer_scales=model.kv_scales, **runner_kwargs(kw),
            )  # fmt: skip
            if self.nano is not None:
                self.nano.set_kernel_threads(self.threads)  # each unit's kernels: this rank's share of the cores
            self.group = group
            self.workers.await_all("ready", timeout_s())
        except BaseException:
            self.workers.stop(graceful=False)
            raise

    def step(self, chunks: Sequence[SeqChunk], *, all_logits: bool = False) -> torch.Tensor:
        """One forward step on every rank; rank 0's logits [num_seqs, V] (or [tokens, V]) float32."""
        if self._broken is not None:
            raise TensorParallelError(f"the tensor-parallel group is down ({self._broken}); create a new runner")
        self._confine_threads()
        try:
            self.workers.send(("step", list(chunks), all_logits))
            return super().step(chunks, all_logits=all_logits)
        except BaseException as e:
            errors = self.workers.errors(wait_s=5.0)
            dead = self.workers.dead()
            self.workers.stop(graceful=False)
            if errors:
                self._broken = f"rank {errors[0][0]} failed"
                raise TensorParallelError(f"tensor-parallel rank {errors[0][0]} failed:\n{errors[0][1]}") from e
            if dead:
                self._broken = f"rank {dead[0][0]} exited"
                raise TensorParallelError(
                    f"tensor-parallel rank {dead[0][0]} exited (code {dead[0][1]}) without a report; see its stderr"
                ) from e
            self._broken = f"rank 0 failed: {type(e).__name__}"
            raise

    def _confine_threads(self) -> None:
        """Give the calling thread's TVM pool `threads` threads (TVM keeps a pool per calling thread)."""
        ident = threading.get_ident()
        if ident in self._confined:
            return
        import sys

        tvm = sys.modules.get("tvm")
        if tvm is not None:
            cores = [str(i) for i in range(os.cpu_count() or 1)]
            share_all = -3  # tvm::runtime::threading::ThreadGroup::kSpecifyThreadShareAllCore
            tvm.get_global_func("runtime.config_threadpool")(share_all, self.threads, cores)
            self._confined.add(ident)

    def close(self) -> None:
        """Stop the other ranks (their processes exit) and give torch its thread count back; idempotent."""
        if self._finalizer.alive:
            self._finalizer.detach()
            self.workers.stop(graceful=self._broken is None)
            if hasattr(self, "_torch_threads"):
                torch.set_num_threads(self._torch_threads)
        self._broken = self._broken or "closed"

    def __enter__(self) -> TPRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def runner_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """The ModelRunner keywords of the picklable `kw` TPRunner sends every rank (the plan travels as JSON)."""
    if isinstance(kw.get("plan"), str):
        return kw | {"plan": PipelinePlan.from_json(kw["plan"])}
    return kw


def _spawn(path: str, tp: int, port: int, device: str, kw: dict[str, Any], threads: int) -> _Workers:
    """Start ranks 1..tp-1 (spawned: no forked torch / TVM state) with TVM_NUM_THREADS = threads."""
    ctx = mp.get_context("spawn")
    procs, conns = [], []
    old = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read by the child's TVM at import
    try:
        for rank in range(1, tp):
            here, there = ctx.Pipe()
            p = ctx.Process(
                target=worker_main, args=(path, rank, tp, port, device, kw, there, threads), daemon=True,
                name=f"lowbit-tp-rank{rank}",
            )  # fmt: skip
            p.start()
            there.close()
            procs.append(p)
            conns.append(here)
    finally:
        if old is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = old
    return _Workers(procs, conns)


__all__ = ["TPRunner", "TensorParallelError"]
