"""`compile_model`: model.yaml -> serving artifact. Phases (timed, with progress):

validate   load + validate model.yaml, read the architecture (config.json only), model-dependent recipe
           checks, and for a quantized checkpoint (AutoAWQ / GPTQ quantization_config) the recipe's agreement
           with it (`lowbit.compiler.imported`): everything that can fail does so here, before any weight is read
load       the weights (HF safetensors, lazily; a quantized checkpoint's packed modules imported and served
           dequantized to everything reading float weights) or the synthetic random model (seeded)
graph      build the op graph and run GRAPH_PIPELINE (recipe matching, fusions, packing, kernels, memory)
calibrate  activations of every linear's input on the calibration tokens (`quantization.calibrated`)
quantize   transforms (AWQ scales, QoQ rotation/smoothing, SmoothAttention) then one weight per linear node
kernels    tune (target.tuning.policy, `lowbit.compiler.tuning`) each (kernel, shape, token bucket) the graph
           selected, pin the chosen configs to the weights, then build every kernel the runtime calls by running
           a prefill and a decode step; TVM kernels (not the tuning trials that lost) are exported
evaluate   KL divergence and top-1 agreement of the compiled model (real kernels) vs the float64 reference
           of the unquantized model (for an imported checkpoint: its exact dequantization), on held-out tokens
write      the artifact directory (manifest with sha256 of every file last), with tuning.json (the tuning
           records used) and the checkpoint's tokenizer_config.json (chat template) when it has one
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.compiler.params import INDEX_FILE, bits_per_weight, flatten_params, weights_file
from lowbit.compiler.phases import Phases
from lowbit.compiler.quantize import linear_nodes, quantize_params
from lowbit.runtime.runner import TORCH_DTYPES, ModelRunner


@dataclass
class CompileResult:
    path: Path
    report: dict[str, Any]


def resolve_source(cfg: Any) -> tuple[Any, Any]:
    """(ArchConfig, hf_dir path or None) without reading any weight (config.json only)."""
    from lowbit.config import model_arch

    return model_arch(cfg), (None if cfg.model.source == "synthetic" else Path(cfg.model.path))


PLAN_FILE = "plan.json"
EVAL_CHUNK = 8  # tokens per chunk of the evaluation prefill (chunks after the first read the KV cache)


PLAN_SEARCH_BUDGET_S = 5.0  # the planner's search at compile time (the tiny example's takes ~0.1 s)


def artifact_plan(arch: Any, cfg: Any) -> Any:
    """The pipeline plan the artifact carries (plan.json; `lowbit serve --schedule artifact` runs it): the
    planner's search over this model, recipe bit widths and tensor-parallel degree on the target device's
    preset (lowbit.planner.artifact). A split is kept only when the simulation says it beats the unsplit
    schedule by the device's margin (1.3x on the CPU, where splits measured +31% slower than the model
    predicts; 1.05x on a GPU); otherwise the plan is the runtime's unsplit one."""
    from lowbit.planner.artifact import search_for_artifact

    return search_for_artifact(arch, cfg.target.device, PLAN_SEARCH_BUDGET_S, cfg=cfg)


def pass_context(cfg: Any, arch: Any, tensor_parallel: int | None = None) -> Any:
    """The graph passes' context for `arch` under the recipe and target of `cfg` (tensor_parallel: the
    target's unless given; 1 builds the unsharded graph of a tensor-parallel recipe)."""
    from lowbit.config import resolve_linear
    from lowbit.graph import PassContext

    return PassContext(
        arch=arch,
        resolve=lambda name: resolve_linear(cfg, name),
        backend=cfg.target.effective_backend,
        device=cfg.target.device,
        dtype=cfg.model.dtype,
        kv_dtype=cfg.quantization.kv_cache.dtype,
        decode_activations=cfg.quantization.decode_activations,
        tensor_parallel=int(cfg.target.tensor_parallel if tensor_parallel is None else tensor_parallel),
    )


def model_graph(cfg: Any, arch: Any, tensor_parallel: int | None = None) -> Any:
    """The optimized op graph of `arch` under the recipe and target of `cfg` (compile and load derive it the
    same way; load checks the result prints as the artifact's graph.txt). With target.tensor_parallel > 1 it
    is one rank's shard (the same graph on every rank); tensor_parallel=1 gives the unsharded graph."""
    from lowbit.graph import build_graph, optimize

    return optimize(build_graph(arch), pass_context(cfg, arch, tensor_parallel))


def calibration_ids(cfg: Any, tokenizer: Any, vocab: int, held_out: bool = False) -> np.ndarray:
    """[num_samples, seq_len] token ids: synthetic (seeded uniform ids) or tokenized text from the file.
    held_out picks different samples (the evaluation set)."""
    cal = cfg.quantization.calibration
    n, t = int(cal.num_samples), int(cal.seq_len)
    seed = int(cal.seed) + (7919 if held_out else 0)
    if cal.source == "synthetic" or tokenizer is None:
        return np.random.default_rng(seed).integers(0, vocab, size=(n, t))
    texts = _read_texts(Path(cal.path))
    ids: list[int] = []
    for s in texts:
        ids.extend(tokenizer.encode(s).ids)
    need = 2 * n * t
    if len(ids) < need // 2:
        raise ValueError(
            f"quantization.calibration.path {cal.path}: {len(ids)} tokens, need at least {need // 2} "
            f"(num_samples {n} x seq_len {t}); give more text or lower num_samples/seq_len"
        )
    ids = (ids * (need // max(len(ids), 1) + 1))[:need]
    arr = np.asarray(ids, dtype=np.int64).reshape(2 * n, t)
    return arr[n:] if held_out else arr[:n]


def _read_texts(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return [path.read_text()]


def memory_estimate(
    arch: Any, params: dict[str, Any], kv_dtype: str, max_model_len: int, max_num_seqs: int, graph: Any
) -> dict[str, int]:
    _, _, linear_bytes = bits_per_weight(params)
    other = sum(p.numel() * p.element_size() for p in params.values() if isinstance(p, torch.Tensor) and p.ndim != 2)
    from lowbit.graph.stats import kv_bytes_per_token

    per_tok = kv_bytes_per_token(arch, kv_dtype)
    plan = graph.meta.get("memory_plan")
    act_per_tok = int(getattr(plan, "peak_bytes_per_token", 0) or 0)
    tokens = max_model_len * max_num_seqs
    act = act_per_tok * min(tokens, 4096)
    return {
        "weights_bytes": int(linear_bytes + other),
        "kv_cache_bytes_per_token": int(per_tok),
        "kv_cache_bytes": int(per_tok * tokens),
        "activation_bytes": int(act),
        "total_bytes": int(linear_bytes + other + per_tok * tokens + act),
    }


def kl_top1(ref_logits: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """Mean KL(P_ref || P) per token (nats) and top-1 agreement over [T, V] logits."""
    r = torch.from_numpy(ref_logits).double().log_softmax(-1)
    q = torch.from_numpy(logits).double().log_softmax(-1)
    kl = (r.exp() * (r - q)).sum(-1).mean().item()
    top1 = (r.argmax(-1) == q.argmax(-1)).double().mean().item()
    return float(kl), float(top1)


def compile_model(
    cfg: Any,
    out: str | Path,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    eval_tokens: int | None = None,
    tuning_measure: Any = None,
    tuning_clock: Any = None,
) -> CompileResult:
    """Compile the resolved model.yaml `cfg` into the artifact directory `out` (see the module docstring).
    `tuning_measure(job, config) -> ms` and `tuning_clock() -> s` replace the tuner's timing and its budget
    clock (tests; see lowbit.compiler.tuning)."""
    from lowbit.compiler.imported import checkpoint_of, import_report, imported_recipe
    from lowbit.compiler.transforms import apply_transforms, calibrate
    from lowbit.config import RecipeError, check_against_model

    phases = Phases(quiet=quiet)
    out = Path(out)
    with phases.phase("validate"):
        arch, hf_path = resolve_source(cfg)
        checkpoint = checkpoint_of(cfg)
        resolved = imported_recipe(cfg, checkpoint, arch)
        if resolved is not cfg:  # the checkpoint's format written in: the recipe's own rules again
            from lowbit.config.check import recipe_problems

            cfg = resolved
            problems = recipe_problems(cfg, check_files=False)
            if problems:
                raise RecipeError(problems)
        check_against_model(cfg, arch)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite (or a new output path) to replace it")

    quantized: dict[str, Any] = {}
    with phases.phase("load"):
        tokenizer, tokenizer_json, gen_config = None, None, {}
        tokenizer_config: dict[str, Any] | None = None
        weights: Any
        if hf_path is None:
            from lowbit.models.synthetic import synthetic_tokenizer, synthetic_weights

            weights = synthetic_weights(arch, int(cfg.model.seed))
            tokenizer = synthetic_tokenizer(arch.vocab_size)
            tokenizer_json = tokenizer.to_str()
        else:
            from lowbit.models.hf import load_hf_dir

            loaded = load_hf_dir(hf_path)
            arch, weights, gen_config = loaded.arch, loaded.weights, dict(loaded.generation_config or {})
            quantized = dict(loaded.quantized)
            if loaded.tokenizer_config_path is not None:
                tokenizer_config = _tokenizer_config(Path(loaded.tokenizer_config_path))
            if loaded.tokenizer_path is not None:
                from tokenizers import Tokenizer

                tokenizer_json = Path(loaded.tokenizer_path).read_text()
                tokenizer = Tokenizer.from_str(tokenizer_json)

    algorithm = cfg.quantization.algorithm
    arch, weights = untied_for_rotation(cfg, arch, weights)
    dtype = TORCH_DTYPES[cfg.model.dtype]
    kv_dtype = cfg.quantization.kv_cache.dtype
    tp = int(cfg.target.tensor_parallel)
    with phases.phase("graph"):
        graph = model_graph(cfg, arch)  # what runs (and graph.txt): with tensor_parallel > 1 one rank's shard
        full = graph if tp == 1 else model_graph(cfg, arch, tensor_parallel=1)  # quantized and evaluated

    nodes = linear_nodes(full)
    calib, ids = None, None
    with phases.phase("calibrate"):
        if cfg.quantization.calibrated:
            ids = calibration_ids(cfg, tokenizer, arch.vocab_size)
            calib = calibrate(arch, weights, ids)

    with phases.phase("quantize", total=len(nodes)) as bar:
        fweights, quantizer, kv_scales = apply_transforms(cfg, arch, full, weights, calib, ids)
        params = quantize_params(
            full, fweights, tied=arch.tie_word_embeddings, dtype=dtype, quantizer=quantizer,
            progress=lambda name: bar.update(1), imported=quantized,
        )  # fmt: skip

    from lowbit.codegen import kernel_cache
    from lowbit.codegen.tune.cache import TuningCache
    from lowbit.compiler import tuning as tuning_mod

    backend, policy = cfg.target.effective_backend, cfg.target.tuning.policy
    runner_kw: dict[str, Any] = {
        "kv_dtype": kv_dtype, "dtype": cfg.model.dtype, "backend": backend, "max_model_len": cfg.target.max_model_len,
        "max_num_seqs": 2, "kv_layer_scales": kv_scales,
    }  # fmt: skip
    runner = ModelRunner(arch, full, params, **runner_kw)
    rank_params, warm = [params], runner  # each rank's params; the runner that builds the shipped kernels
    if tp > 1:  # cut the quantized weights into shards (lowbit.parallel.shard); tune and build rank 0's shapes
        import lowbit.parallel.collectives  # noqa: F401  (the executor's all_reduce rule)
        from lowbit.parallel.shard import local_arch, shard_params

        rank_params = [shard_params(graph, params, r, tp) for r in range(tp)]
        # no process group: its all_reduce nodes sum one part, building the kernels all ranks run
        warm = ModelRunner(local_arch(arch, tp), graph, rank_params[0], **runner_kw)
    max_tokens = max(int(cfg.target.max_model_len), int(cfg.target.max_num_seqs))
    jobs = tuning_mod.tuning_jobs(graph, rank_params[0], backend, cfg.model.dtype, max_tokens)
    tuning_cache = TuningCache()
    before = set(kernel_cache.compiled_kernels())
    with phases.phase("kernels", total=len(jobs) + 1) as bar:
        tuned = tuning_mod.run_tuning(
            jobs, rank_params[0], policy=policy, backend=backend, dtype=cfg.model.dtype,
            budget_s=float(cfg.target.tuning.budget_s), cache=tuning_cache, measure=tuning_measure, progress=bar,
            verbose=not quiet, **({"clock": tuning_clock} if tuning_clock is not None else {}),
        )  # fmt: skip
        trials = set(kernel_cache.compiled_kernels()) - before  # built while tuning: only the winners ship
        for p in rank_params:
            tuning_mod.attach_results(p, tuned, backend)
        for built in {id(runner): runner, id(warm): warm}.values():  # their executors run re-tiled copies of
            tuning_mod.attach_results(built.executor.params, tuned, backend)  # the weights, made before tuning
        bar.set_postfix_str("build kernels", refresh=False)
        # prefill + decode steps of 1, 2, 4, .. sequences: the GEMV row tiles the runtime picks (a power of two
        # up to 16 rows) for decode batches and short prompts, built now rather than at a server's first
        # request of that size (seconds each: a tiny model's first 2-prompt generate had spent 12 s compiling)
        for seqs in warm_batch_sizes(int(cfg.target.max_num_seqs)):
            warm.generate([[1, 2, 3]] * seqs, _warmup_params(), ())
        bar.update(1)
    used = tuning_mod.used_kernel_keys(rank_params[0])
    ship = [k for k in kernel_cache.compiled_kernels() if k not in trials or k in used]

    report_acc: dict[str, Any] = {}
    n_eval = eval_tokens if eval_tokens is not None else min(64, cfg.target.max_model_len - 1)
    with phases.phase("evaluate"):
        if n_eval > 0:
            from lowbit.models.reference import reference_logits

            ids = calibration_ids(cfg, tokenizer, arch.vocab_size, held_out=True).reshape(-1)[:n_eval]
            ref = reference_logits(arch, weights, ids[None, :])[0]
            # a chunked prefill: every chunk after the first attends to the paged cache, so the KV format counts
            got = runner.logits(ids.tolist(), chunk=EVAL_CHUNK).numpy()
            kl, top1 = kl_top1(ref, got)
            report_acc = {"kl_divergence": kl, "top1_agreement": top1, "tokens": int(n_eval)}
            report_acc["kv_cache"] = f"{kv_dtype}, read by every position after the first {EVAL_CHUNK}"
            report_acc["reference"] = "dequantized checkpoint" if checkpoint is not None else "unquantized weights"

    bpw, elems, wbytes = bits_per_weight(params)
    report = {
        "model": cfg.model.name,
        "params": int(arch.num_params),
        "linear_weights": int(elems),
        "bits_per_weight": round(bpw, 4),
        "weight_bytes": int(wbytes),
        "memory_estimate": memory_estimate(
            arch, params, kv_dtype, cfg.target.max_model_len, cfg.target.max_num_seqs, full
        ),
        "accuracy": report_acc,
        "tuning": {
            "policy": policy,
            "budget_s": float(cfg.target.tuning.budget_s),
            "backend": backend,
            **tuning_mod.summary(tuned),
            "kernels": tuning_mod.report_rows(tuned),
        },
        "modules": [
            {
                "name": dict(n.attrs)["weight"],
                "spec": None if dict(n.attrs).get("spec") is None else dict(n.attrs)["spec"].describe(),
                "bits_per_weight": round(bits_per_weight({"w": params[dict(n.attrs)["weight"]]})[0], 4),
            }
            for n in nodes
        ],
    }
    if tp > 1:
        report["tensor_parallel"] = tp
    if checkpoint is not None:
        report["source_quantization"] = import_report(checkpoint[0], checkpoint[1], cfg.model.path)
    with phases.phase("write"):
        from lowbit.artifact import ArtifactWriter

        meta: dict[str, Any] = {"model": cfg.model.name, "arch": arch.model_type, "algorithm": algorithm}
        with ArtifactWriter(out, overwrite=overwrite) as w:
            w.add_text("model.yaml", cfg.to_yaml())
            w.add_json("config.json", arch.to_hf_config())
            index: dict[str, Any] = {}
            for r, p in enumerate(rank_params):  # one file per rank, one index for all (same names and shapes)
                tensors, rank_index = flatten_params(p)
                if r and rank_index != index:
                    raise RuntimeError(f"rank {r}'s weights index differs from rank 0's; a sharding bug")
                w.add_tensors(weights_file(tp, r), tensors)
                index = rank_index
            if tp > 1:
                meta.update(tensor_parallel=tp, rank_weights=[weights_file(tp, r) for r in range(tp)])
            w.add_json(INDEX_FILE, index)
            w.add_text("graph.txt", graph.to_text())
            if kv_scales is not None:
                w.add_json("kv_scales.json", [list(s) for s in kv_scales])
            if tokenizer_json is not None:
                w.add_text("tokenizer.json", tokenizer_json)
            if tokenizer_config is not None:
                w.add_json("tokenizer_config.json", tokenizer_config)  # chat_template, special tokens
            w.add_json("generation_config.json", gen_config)
            w.add_json(PLAN_FILE, artifact_plan(arch, cfg).to_dict())
            w.add_json(
                tuning_mod.TUNING_FILE,
                tuning_mod.tuning_json(tuned, policy=policy, budget_s=float(cfg.target.tuning.budget_s),
                                       backend=backend, cache=tuning_cache),
            )  # fmt: skip
            report["kernels"] = len(w.add_kernels(ship))  # TVM libraries built above + what regenerates them
            report["phases"] = [*phases.report(), {"name": "write", "seconds": 0.0}]
            w.add_json("report.json", report)
            w.finalize(meta)
    report["phases"] = phases.report()
    return CompileResult(out, report)


def _tokenizer_config(path: Path) -> dict[str, Any] | None:
    """The checkpoint's tokenizer_config.json (chat_template, special tokens), None with a warning when it
    is not a JSON object (the artifact then has none; the server falls back to its default template)."""
    import warnings

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        warnings.warn(f"{path} is unreadable ({e}); the artifact gets no tokenizer_config.json", stacklevel=2)
        return None
    if not isinstance(data, dict):
        warnings.warn(f"{path} is not a JSON object; the artifact gets no tokenizer_config.json", stacklevel=2)
        return None
    return data


def untied_for_rotation(cfg: Any, arch: Any, weights: Any) -> tuple[Any, Any]:
    """(the architecture the graph is built for, the float weights named as it names them). QoQ's rotation
    folds the final RMSNorm into lm_head, which then differs from the embedding: a tied model is untied, its
    lm_head.weight = embed_tokens until the rotation. Anything else is returned as is."""
    q = cfg.quantization
    if not (q.algorithm == "qoq" and q.qoq.rotate and arch.tie_word_embeddings):
        return arch, weights
    from lowbit.compiler.transforms import Overlay

    head = np.asarray(weights["model.embed_tokens.weight"], dtype=np.float32)
    return dataclasses.replace(arch, tie_word_embeddings=False), Overlay(weights, {"lm_head.weight": head})


def warm_batch_sizes(max_num_seqs: int) -> list[int]:
    """Sequence counts of the compile-time warm-up: 1, 2, 4, .. up to min(max_num_seqs, GEMV_MAX_M) (and that
    bound itself). Decode runs one row per sequence and the prefill three per sequence, so every GEMV row tile
    (the next power of two of M <= 16) is built."""
    from lowbit.ops.linear import GEMV_MAX_M

    top = max(1, min(int(max_num_seqs), GEMV_MAX_M))
    sizes = [1 << i for i in range(top.bit_length()) if 1 << i <= top]
    return sizes if sizes[-1] == top else [*sizes, top]


def _warmup_params() -> Any:
    from lowbit.runtime.sampler import SamplingParams

    return SamplingParams(max_tokens=2, ignore_eos=True)


__all__ = [
    "CompileResult",
    "calibration_ids",
    "compile_model",
    "kl_top1",
    "memory_estimate",
    "resolve_source",
    "untied_for_rotation",
    "warm_batch_sizes",
]
