"""One forward step's batch: the new tokens of several sequences, flattened, with their cache positions.

A sequence contributes `num_new` tokens at positions num_cached .. num_cached + num_new − 1. A chunk with
num_cached == 0 is a *prefill* (attention over its own fresh K/V, ragged by cu_seqlens); any other chunk (a
decode token, or a later chunk of a chunked prefill) attends to the paged cache, one query row per token with
context length position + 1 — after the step's K/V were appended, so causality holds inside the chunk too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SeqChunk:
    seq_id: int
    token_ids: tuple[int, ...]  # the new tokens of this step
    num_cached: int  # tokens of this sequence already in the KV cache
    block_table: tuple[int, ...]  # pages holding positions 0 .. num_cached + len(token_ids) − 1

    @property
    def num_new(self) -> int:
        return len(self.token_ids)

    @property
    def is_prefill(self) -> bool:
        return self.num_cached == 0


@dataclass
class Batch:
    """Flattened inputs of one step and the index tensors every attention layer shares (built once)."""

    seqs: Sequence[SeqChunk]
    page_size: int
    input_ids: torch.Tensor = field(init=False)  # [T] int64
    positions: torch.Tensor = field(init=False)  # [T] int32
    slot_mapping: torch.Tensor = field(init=False)  # [T] int32
    last_index: torch.Tensor = field(init=False)  # [S] int64: each sequence's last new token
    prefill_index: torch.Tensor = field(init=False)  # [Tp] int64 tokens of prefill chunks
    cu_seqlens: torch.Tensor = field(init=False)  # [Sp + 1] int32
    paged_index: torch.Tensor = field(init=False)  # [R] int64 tokens that attend to the cache
    block_tables: torch.Tensor = field(init=False)  # [R, max_pages] int32
    context_lens: torch.Tensor = field(init=False)  # [R] int32

    def __post_init__(self) -> None:
        if not self.seqs:
            raise ValueError("a batch needs at least one sequence")
        ps = self.page_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        last: list[int] = []
        pre: list[int] = []
        cu = [0]
        paged: list[int] = []
        tables: list[tuple[int, ...]] = []
        lens: list[int] = []
        for s in self.seqs:
            if s.num_new < 1:
                raise ValueError(f"sequence {s.seq_id} has no new tokens in this step")
            end = s.num_cached + s.num_new
            if len(s.block_table) * ps < end:
                raise ValueError(
                    f"sequence {s.seq_id}: block table of {len(s.block_table)} pages holds {len(s.block_table) * ps} "
                    f"tokens, but the step reaches position {end - 1}; grow it first (PagedKVCache.grow)"
                )
            start = len(ids)
            for j, t in enumerate(s.token_ids):
                p = s.num_cached + j
                ids.append(t)
                pos.append(p)
                slots.append(s.block_table[p // ps] * ps + p % ps)
                if s.is_prefill:
                    pre.append(start + j)
                else:
                    paged.append(start + j)
                    tables.append(s.block_table)
                    lens.append(p + 1)
            if s.is_prefill:
                cu.append(cu[-1] + s.num_new)
            last.append(len(ids) - 1)
        width = max((len(t) for t in tables), default=1)
        table = [list(t) + [0] * (width - len(t)) for t in tables]
        self.input_ids = torch.tensor(ids, dtype=torch.int64)
        self.positions = torch.tensor(pos, dtype=torch.int32)
        self.slot_mapping = torch.tensor(slots, dtype=torch.int32)
        self.last_index = torch.tensor(last, dtype=torch.int64)
        self.prefill_index = torch.tensor(pre, dtype=torch.int64)
        self.cu_seqlens = torch.tensor(cu, dtype=torch.int32)
        self.paged_index = torch.tensor(paged, dtype=torch.int64)
        self.block_tables = torch.tensor(table, dtype=torch.int32).reshape(len(tables), width)
        self.context_lens = torch.tensor(lens, dtype=torch.int32)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_seqs(self) -> int:
        return len(self.seqs)


__all__ = ["Batch", "SeqChunk"]
