"""The process group of one tensor-parallel model and the executor's `all_reduce` rule.

`TPGroup.connect(rank, world_size, port)` builds a standalone torch.distributed process group (gloo on the
CPU, NCCL for CUDA tensors) over a TCPStore on 127.0.0.1:port that rank 0 hosts. It is not the default
group (`init_process_group` is never called): a process may hold several models, and nothing global changes.

The rule sums a row-parallel linear's partial output over the ranks in place. Executors without a group
(`executor.tp_group` unset: the compile's kernel warm-up of one shard) pass the partial sum through, which is
the sum over one rank. Through `Executor.run`, so a recorded decode step replays the all_reduce too (every
rank records and replays the same steps: they run the same batches).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lowbit.runtime.executor import Executor, rule

DEFAULT_TIMEOUT_S = 300.0  # a collective waiting longer than this fails (LOWBIT_TP_TIMEOUT overrides)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timeout_s() -> float:
    return float(os.environ.get("LOWBIT_TP_TIMEOUT", DEFAULT_TIMEOUT_S))


@dataclass
class TPGroup:
    rank: int
    world_size: int
    pg: Any  # a torch ProcessGroupGloo / ProcessGroupNCCL
    store: Any  # the TCPStore (rank 0 hosts it; kept alive with the group)
    device: str = "cpu"
    parent: TPGroup | None = None  # a subgroup keeps its parent (and so the store) alive
    made: int = 0  # subgroups made from this group so far (their store prefixes are numbered)

    @staticmethod
    def connect(rank: int, world_size: int, port: int, device: str = "cpu") -> TPGroup:
        """Join the group of `world_size` ranks at 127.0.0.1:port (blocks until every rank has joined)."""
        timeout = datetime.timedelta(seconds=timeout_s())
        store = dist.TCPStore("127.0.0.1", port, world_size, rank == 0, timeout=timeout)
        return TPGroup(rank, world_size, _new_pg(store, rank, world_size, device), store, device)

    def subgroup(self, tag: str) -> TPGroup:
        """Another group over the same ranks (its own connections, under the store prefix `tag`): collectives
        are matched by issue order within a group, so threads that issue collectives independently each need
        one. Collective: every rank makes its subgroups in the same order (they are numbered) with the same tags;
        it blocks until all ranks have made it."""
        if not tag or "/" in tag:
            raise ValueError(f"subgroup tag {tag!r}: give a non-empty name without '/'")
        self.made += 1
        store = dist.PrefixStore(f"sub{self.made}-{tag}/", self.store)
        return TPGroup(self.rank, self.world_size, _new_pg(store, self.rank, self.world_size, self.device), store,
                       self.device, self)  # fmt: skip

    def all_reduce_(self, t: torch.Tensor) -> None:
        """t <- the sum of every rank's t, in place."""
        self.pg.allreduce([t]).wait()


def _new_pg(store: Any, rank: int, world_size: int, device: str) -> Any:
    if device.startswith("cuda"):
        nccl: Any = getattr(dist, "ProcessGroupNCCL")  # noqa: B009  (absent from CPU-only torch builds)
        return nccl(store, rank, world_size, nccl.Options())
    return dist.ProcessGroupGloo(store, rank, world_size, datetime.timedelta(seconds=timeout_s()))


def _all_reduce_into(group: TPGroup, x: torch.Tensor) -> None:
    group.all_reduce_(x)


@rule("all_reduce")
def _all_reduce(ex: Executor, node: Any, args: list[Any]) -> tuple[Any, ...]:
    group: TPGroup | None = getattr(ex, "tp_group", None)
    (x,) = args
    if group is None or group.world_size == 1:  # one rank: the sum of one part
        return (x,)
    if group.world_size != int(node.attrs_dict["world_size"]):
        raise RuntimeError(
            f"node {node.name}: the graph is sharded over {node.attrs_dict['world_size']} ranks but the process "
            f"group has {group.world_size}; start as many ranks as target.tensor_parallel"
        )
    x = ex.contiguous(x)
    ex.run(_all_reduce_into, group, x)
    return (x,)


__all__ = ["DEFAULT_TIMEOUT_S", "TPGroup", "free_port", "timeout_s"]
