"""`MemoryPlan`: activation buffers by liveness, per token (multiply by the tokens of a forward pass).

Over `nodes_in_order()` (node i = step i), a tensor is live from the step that writes it to its last reader
(graph outputs to the end; a tensor nobody reads dies at its producer). At each step the outputs get
buffers first — the smallest free buffer that holds the tensor (best fit), else the largest free buffer
grown to fit, else a new one — and then the buffers of tensors whose last use is this step are freed.
Outputs never share a buffer with the step's inputs (kernels read inputs while writing outputs).
Graph inputs (input_ids, positions) belong to the batch and are not planned. Tensors with one row per
sequence (after `last_token`: the logits) get buffers of their own kind (`buffer_rows`), sized by
max_num_seqs rows instead of max_num_tokens.

Per token: peak = the buffers' total (the arena); naive = every tensor its own buffer; live_peak = the
largest total of simultaneously live tensors, a lower bound on any plan. `peak_bytes` = token buffers ×
max_num_tokens + sequence buffers × max_num_seqs: the arena the executor allocates.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.graph.graph import FrozenDict, OpGraph


@dataclass(frozen=True)
class MemoryPlan:
    buffer_of: FrozenDict  # tensor -> buffer index
    buffer_bytes_per_token: tuple[int, ...]  # buffer index -> bytes per token
    tensor_bytes_per_token: FrozenDict  # tensor -> bytes per token
    live_range: FrozenDict  # tensor -> (first def step, last use step)
    free_after: FrozenDict  # node name -> tensors whose last use is that node (drop them after it runs)
    max_num_tokens: int
    buffer_rows: tuple[str, ...] = ()  # buffer index -> "tokens" | "seqs" (rows it holds)
    max_num_seqs: int = 1

    @property
    def peak_bytes_per_token(self) -> int:
        return sum(self.buffer_bytes_per_token)

    @property
    def naive_bytes_per_token(self) -> int:
        return sum(self.tensor_bytes_per_token.values())

    @property
    def live_peak_bytes_per_token(self) -> int:
        steps: dict[int, int] = {}
        for t, (first, last) in self.live_range.items():
            for s in range(first, last + 1):
                steps[s] = steps.get(s, 0) + self.tensor_bytes_per_token[t]
        return max(steps.values(), default=0)

    @property
    def peak_bytes(self) -> int:
        rows = {"tokens": self.max_num_tokens, "seqs": min(self.max_num_seqs, self.max_num_tokens)}
        return sum(b * rows[r] for b, r in zip(self.buffer_bytes_per_token, self.buffer_rows, strict=True))

    def summary(self) -> str:
        return (
            f"memory plan: {len(self.buffer_bytes_per_token)} buffers for {len(self.buffer_of)} tensors, "
            f"{self.peak_bytes_per_token} B/token planned vs {self.naive_bytes_per_token} B/token naive "
            f"(live peak {self.live_peak_bytes_per_token} B/token); {_mib(self.peak_bytes)} at "
            f"{self.max_num_tokens} tokens, {min(self.max_num_seqs, self.max_num_tokens)} sequences"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def plan_buffers(
    g: OpGraph,
    tensor_bytes: dict[str, int],
    max_num_tokens: int,
    tensor_rows: dict[str, str] | None = None,
    max_num_seqs: int = 1,
) -> MemoryPlan:
    """The plan for `g` given every planned tensor's bytes per row and its rows ("tokens" by default,
    or "seqs"); see the module docstring."""
    kind = tensor_rows or {}
    nodes = g.nodes_in_order()
    end = len(nodes)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.outputs:
            first[t] = last[t] = i
        for t in n.inputs:
            if t in first:
                last[t] = i
    for t in g.outputs:
        last[t] = end
    dies_at: dict[int, list[str]] = {}
    for t in first:
        dies_at.setdefault(last[t], []).append(t)

    sizes: list[int] = []  # buffer -> bytes per row
    rows: list[str] = []  # buffer -> "tokens" | "seqs"
    free: list[int] = []  # free buffer indices
    buffer_of: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in n.outputs:
            need, r = tensor_bytes[t], kind.get(t, "tokens")
            free_here = [b for b in free if rows[b] == r]
            fits = [b for b in free_here if sizes[b] >= need]
            if fits:
                b = min(fits, key=lambda b: (sizes[b], b))  # best fit
            elif free_here:
                b = max(free_here, key=lambda b: (sizes[b], -b))  # grow the largest: adds the least
                sizes[b] = need
            else:
                sizes.append(need)
                rows.append(r)
                b = len(sizes) - 1
                free.append(b)
            free.remove(b)
            buffer_of[t] = b
        free.extend(buffer_of[t] for t in dies_at.get(i, ()))
    free_after = {n.name: tuple(dies_at.get(i, ())) for i, n in enumerate(nodes) if dies_at.get(i)}
    return MemoryPlan(
        buffer_of=FrozenDict(buffer_of),
        buffer_bytes_per_token=tuple(sizes),
        tensor_bytes_per_token=FrozenDict({t: tensor_bytes[t] for t in first}),
        live_range=FrozenDict({t: (first[t], last[t]) for t in first}),
        free_after=FrozenDict(free_after),
        max_num_tokens=max_num_tokens,
        buffer_rows=tuple(rows),
        max_num_seqs=max_num_seqs,
    )


__all__ = ["MemoryPlan", "plan_buffers"]
