"""A tensor-parallel rank > 0: a spawned process that runs whatever steps rank 0 sends it on its own shard.

Protocol over its pipe to rank 0 (`multiprocessing` Connection): the worker says ("hello", rank) once it
runs, joins the process group, loads its shard and says ("ready", rank); then it takes ("step", chunks,
all_logits) messages — the step's batch description (token ids, positions via num_cached, block tables) —
and runs the forward (its logits are dropped: rank 0 holds the same ones) until ("stop",). Any error is sent
back as ("error", rank, traceback) before the process exits with status 1; a closed pipe (rank 0 gone) ends
it quietly. Commands travel over the pipe, not the process group, so an idle server never hits the
collectives' timeout.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from typing import Any


def worker_main(
    path: str, rank: int, world_size: int, port: int, device: str, runner_kw: dict[str, Any], conn: Any, threads: int
) -> None:
    try:
        conn.send(("hello", rank))
        import torch

        torch.set_num_threads(threads)
        from lowbit.compiler.load import load_compiled
        from lowbit.parallel.collectives import TPGroup
        from lowbit.parallel.runner import runner_kwargs
        from lowbit.parallel.shard import local_arch
        from lowbit.runtime.runner import ModelRunner

        group = TPGroup.connect(rank, world_size, port, device)
        model = load_compiled(path, verify="none", rank=rank)  # rank 0 verified the whole artifact
        runner = ModelRunner(
            local_arch(model.arch, world_size), model.graph, model.params, tp_group=group,
            kv_layer_scales=model.kv_scales, **runner_kwargs(runner_kw),
        )  # fmt: skip
        if runner.nano is not None:
            runner.nano.set_kernel_threads(threads)
        conn.send(("ready", rank))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            _, chunks, all_logits = msg
            runner.step(chunks, all_logits=all_logits)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # rank 0 is gone: nothing left to serve
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", rank, traceback.format_exc()))
        sys.exit(1)


__all__ = ["worker_main"]
