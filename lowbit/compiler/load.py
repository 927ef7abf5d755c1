"""Load a compiled artifact into a `ModelRunner`: verify, read the resolved model.yaml, rebuild the graph with the
same pipeline (it must print exactly like the stored graph.txt, else the artifact came from another lowbit),
read the parameters, pin the tuned kernel configs of tuning.json to them (the runtime then runs the tuned
kernels without tuning), and read the tokenizer (+ tokenizer_config.json: chat template, special tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lowbit.compiler.params import INDEX_FILE, unflatten_params, weights_file
from lowbit.compiler.tuning import TUNING_FILE, attach_tuning
from lowbit.models.arch import ArchConfig, eos_ids
from lowbit.runtime.runner import TORCH_DTYPES, ModelRunner


class ArtifactMismatch(ValueError):
    pass


@dataclass
class CompiledModel:
    path: Path
    cfg: Any
    arch: ArchConfig
    graph: Any
    params: dict[str, Any]
    tokenizer: Any
    generation_config: dict[str, Any]
    kv_scales: list[tuple[float, float]] | None
    tokenizer_config: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json ({} if absent)
    tuning: dict[str, Any] = field(default_factory=dict)  # tuning.json: policy and the records pinned to params
    rank: int = 0  # whose shard `params` are (tensor-parallel artifacts)

    @property
    def name(self) -> str:
        return str(self.cfg.model.name)

    @property
    def tensor_parallel(self) -> int:
        """Ranks the artifact is sharded over (target.tensor_parallel; 1: not sharded)."""
        return int(self.cfg.target.tensor_parallel)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.generation_config.get("eos_token_id")  # generation_config.json wins, as in HF generate
        return self.arch.eos_token_id if eos is None else eos_ids(eos)

    def runner(self, *, backend: str | None = None, max_num_seqs: int | None = None, **kw: Any) -> ModelRunner:
        """A runner of this model; for a tensor-parallel artifact a `lowbit.parallel.TPRunner` (rank 0 here,
        the other ranks spawned: call its close() when done)."""
        c = self.cfg
        if self.tensor_parallel > 1:
            from lowbit.parallel.runner import TPRunner

            return TPRunner(self, backend=backend, max_num_seqs=max_num_seqs, **kw)
        return ModelRunner(
            self.arch, self.graph, self.params,
            kv_dtype=c.quantization.kv_cache.dtype, dtype=c.model.dtype, backend=backend or c.target.effective_backend,
            max_model_len=c.target.max_model_len, max_num_seqs=max_num_seqs or c.target.max_num_seqs,
            kv_layer_scales=self.kv_scales, **kw,
        )  # fmt: skip


def load_compiled(
    path: str | Path, *, verify: Literal["full", "quick", "none"] = "full", rank: int = 0
) -> CompiledModel:
    """The artifact at `path` (checked by `verify`); `rank` picks the shard of a tensor-parallel artifact."""
    from lowbit.artifact import open_artifact
    from lowbit.compiler.compile import model_graph
    from lowbit.config import parse_config

    art = open_artifact(path, verify=verify)
    if art.kernel_dir is not None:  # the compiled kernels shipped with the artifact (foreign ones are rebuilt)
        from lowbit.codegen import kernel_cache

        kernel_cache.add_read_only_dir(art.kernel_dir)
    # the checkpoint and calibration files may have moved since compile: the artifact holds what is needed
    cfg = parse_config(yaml.safe_load(art.read_text("model.yaml")), source=f"{path}/model.yaml", check_files=False)
    arch = ArchConfig.from_hf_config(art.read_json("config.json"))
    graph = model_graph(cfg, arch)
    if graph.to_text() != art.read_text("graph.txt"):
        raise ArtifactMismatch(
            f"{path}: this lowbit builds a different graph from the artifact's model.yaml than the one it was "
            f"compiled with (graph.txt differs); re-run lowbit compile with this version"
        )
    tp = int(cfg.target.tensor_parallel)
    wfile = weights_file(tp, rank)
    if tp > 1:
        import lowbit.parallel.collectives  # noqa: F401  (registers the executor's all_reduce rule)

        if not art.has(wfile):
            raise ArtifactMismatch(f"{path}: tensor_parallel {tp} but {wfile} is missing; re-run lowbit compile")
    params = unflatten_params(art.tensors(wfile), art.read_json(INDEX_FILE), TORCH_DTYPES[cfg.model.dtype])
    tokenizer = None
    if art.has("tokenizer.json"):
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(art.read_text("tokenizer.json"))
    gen = art.read_json("generation_config.json") if art.has("generation_config.json") else {}
    kv = art.read_json("kv_scales.json") if art.has("kv_scales.json") else None
    tok_cfg = art.read_json("tokenizer_config.json") if art.has("tokenizer_config.json") else {}
    tuning = art.read_json(TUNING_FILE) if art.has(TUNING_FILE) else {}
    attach_tuning(params, tuning)
    return CompiledModel(
        Path(path), cfg, arch, graph, params, tokenizer, gen, None if kv is None else [tuple(s) for s in kv],
        tok_cfg, tuning, rank,
    )  # fmt: skip


__all__ = ["ArtifactMismatch", "CompiledModel", "load_compiled"]
