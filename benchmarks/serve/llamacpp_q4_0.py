"""llama.cpp Q4_0 decode speed (`tg`) on a synthetic TinyLlama-1.1B-shaped llama, measured on this machine.

    pip install -e .[llamacpp]      # llama-cpp-python builds llama.cpp from source (CMAKE_ARGS="-DGGML_NATIVE=ON")
    python benchmarks/serve/llamacpp_q4_0.py --threads 2 --prompt-len 32 --new-tokens 128 --repeats 3
    python benchmarks/serve/llamacpp_q4_0.py --prepare-only          # only write + quantize the GGUF (cached)

Model: the shapes of benchmarks/serve/tinyllama-w4.yaml (hidden 2048, intermediate 5632, 22 layers, 32 heads, 4 KV
heads of 64, vocab 32000, rope theta 10000, rms eps 1e-5, context 2048), random N(0, 0.02) weights from `--seed`
(speed does not depend on their values) and a synthetic SPM vocabulary (<unk> <s> </s>, the 256 byte tokens, then
filler pieces). Written as an F16 GGUF with `gguf.GGUFWriter` (norms F32), then quantized by llama.cpp itself
(`llama_model_quantize`, LLAMA_FTYPE_MOSTLY_Q4_0: every matrix Q4_0 except output.weight, which llama.cpp keeps at
Q6_K as in any real Q4_0 file); only the Q4_0 file is kept, in `--cache-dir` (reused while it exists).

Measurement (llama.cpp's C API through llama_cpp's ctypes bindings, default model/context parameters as llama-bench
uses them: CPU repack on, flash attention auto, KV cache f16): `--threads` threads, n_ctx `--n-ctx`. One warm-up
generation, then `--repeats` runs of: clear the KV cache, evaluate the same seeded `--prompt-len`-token prompt as
decode_goals.py's case (a) in one batch, then greedy (argmax of the returned logits, checked finite at every step)
single-token evals until `--new-tokens` tokens exist. The prompt eval yields the first token (its time is the
first-token time, as in lowbit's request metrics); tg = (new_tokens - 1) / (last token time - first token time),
i.e. the decode steps only, prefill excluded, as llama-bench's tg and decode_goals.py's case (a). pp = prompt_len /
prompt eval time (a 32-token prompt: a rough figure, not llama-bench's pp512). Reported: medians and the samples,
and each run's CPU share = process CPU time / (threads x wall) over the decode steps: ggml's threads spin at every
op's barrier, so ~1 means they had their cores; well below 1 means other processes held the cores, and then tg
collapses (1-4 tok/s measured here with two other busy processes on the 2 cores, ~23 tok/s when quiet).

Output: logs on stderr; on stdout a readable line, then the result as one JSON line (the interface:
`measure_llamacpp()` runs this file in a subprocess, so llama.cpp's threads and memory stay out of the caller's
process, and returns that JSON as a dict).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / "artifacts" / "llamacpp"
INSTALL_HINT = (
    "llama-cpp-python (and gguf) are not installed: `pip install -e .[llamacpp]` "
    '(builds llama.cpp from source, ~15 min on 2 cores; CMAKE_ARGS="-DGGML_NATIVE=ON" for this CPU\'s SIMD), '
    "or pass --skip-llamacpp to decode_goals.py"
)

# TinyLlama-1.1B's shapes (= benchmarks/serve/tinyllama-w4.yaml)
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 2048, 5632, 22, 32, 4, 64, 32000
ROPE_THETA, RMS_EPS, CONTEXT = 10000.0, 1e-5, 2048
WEIGHT_STD = 0.02
GGUF_VERSION = 1  # bump when the synthetic file changes: it is part of the cached file's name


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] llama.cpp: {msg}", file=sys.stderr, flush=True)


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise SystemExit(f"error: {INSTALL_HINT} ({e})") from e
    return llama_cpp


# -- the synthetic GGUF ----------------------------------------------------------------------------------------
def tensor_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """GGUF tensor names and NumPy shapes ([out_features, in_features]; GGUF stores them reversed), file order."""
    kv = KV_HEADS * HEAD_DIM
    shapes: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (VOCAB, HIDDEN))]
    for i in range(LAYERS):
        shapes += [
            (f"blk.{i}.attn_norm.weight", (HIDDEN,)),
            (f"blk.{i}.attn_q.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (f"blk.{i}.attn_k.weight", (kv, HIDDEN)),
            (f"blk.{i}.attn_v.weight", (kv, HIDDEN)),
            (f"blk.{i}.attn_output.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (f"blk.{i}.ffn_norm.weight", (HIDDEN,)),
            (f"blk.{i}.ffn_gate.weight", (INTERMEDIATE, HIDDEN)),
            (f"blk.{i}.ffn_up.weight", (INTERMEDIATE, HIDDEN)),
            (f"blk.{i}.ffn_down.weight", (HIDDEN, INTERMEDIATE)),
        ]
    return [*shapes, ("output_norm.weight", (HIDDEN,)), ("output.weight", (VOCAB, HIDDEN))]


def synthetic_vocab() -> tuple[list[str], list[float], list[int]]:
    """An SPM-style vocabulary: <unk> <s> </s>, the 256 byte tokens <0x00>.., then unique filler pieces."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, *([TokenType.BYTE] * 256)]
    tokens += [f"\u2581p{i}" for i in range(VOCAB - len(tokens))]
    types += [TokenType.NORMAL] * (VOCAB - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(VOCAB - 259)]  # SPM log-prob-like: earlier pieces preferred
    return tokens, scores, [int(t) for t in types]


def write_f16_gguf(path: Path, seed: int) -> None:
    """Stream the synthetic model into an F16 GGUF (matrices F16, norms F32), one tensor in memory at a time."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("synthetic TinyLlama-1.1B-shaped llama (random weights)")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(INTERMEDIATE)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = synthetic_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    shapes = tensor_shapes()
    for name, shape in shapes:
        dtype = np.float32 if len(shape) == 1 else np.float16
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.Generator(np.random.PCG64(seed))
    for _, shape in shapes:
        if len(shape) == 1:
            w.write_tensor_data(np.ones(shape, np.float32))  # rms norm weights
        else:
            t = rng.standard_normal(shape, dtype=np.float32)
            t *= WEIGHT_STD
            w.write_tensor_data(t.astype(np.float16))
    w.close()


def gguf_summary(path: Path) -> dict[str, Any]:
    """The file's llama file type and how many tensors of each ggml type it holds (read from the header)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    field = r.get_field("general.file_type")
    ftype = int(field.contents()) if field is not None else None
    counts = Counter(t.tensor_type.name for t in r.tensors)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    return {
        "file_type": ftype,
        "file_type_name": gguf.LlamaFileType(ftype).name if ftype is not None else None,
        "tensor_types": dict(sorted(counts.items())),
        "output_weight_type": types.get("output.weight"),
        "token_embd_type": types.get("token_embd.weight"),
        "n_params": sum(int(t.n_elements) for t in r.tensors),
    }


def ensure_q4_0_gguf(cache_dir: Path, seed: int, threads: int) -> Path:
    """The cached Q4_0 GGUF; written (F16 -> llama_model_quantize -> Q4_0, F16 removed) when missing."""
    llama_cpp = import_llama_cpp()
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"error: {INSTALL_HINT} ({e})") from e
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"tinyllama-1.1b-synthetic-seed{seed}-v{GGUF_VERSION}-q4_0.gguf"
    if out.is_file():
        return out
    f16 = out.with_name(out.name.replace("q4_0", "f16"))
    tmp = out.with_name(out.name + ".partial")
    log(f"writing the F16 GGUF {f16} (~2.2 GB, once)")
    t0 = time.perf_counter()
    write_f16_gguf(f16, seed)
    log(f"quantizing to Q4_0 with llama_model_quantize ({time.perf_counter() - t0:.0f} s so far)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({f16} -> Q4_0) returned {rc}; rerun with --verbose for its log")
    tmp.replace(out)
    f16.unlink()
    log(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s")
    return out


# -- llama.cpp -------------------------------------------------------------------------------------------------
_LOG_SINK: Any = None  # the ctypes callback must outlive every call that may log


def silence_llama_log(llama_cpp: Any) -> None:
    """Drop llama.cpp's (and ggml's) log lines from here on (--verbose keeps them)."""
    global _LOG_SINK
    if _LOG_SINK is None:
        _LOG_SINK = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_LOG_SINK, ctypes.c_void_p(0))


def make_prompt(length: int, seed: int) -> list[int]:
    """decode_goals.py's first prompt: the same generator and draws (ids 3.., no special tokens)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return [int(t) for t in rng.integers(3, VOCAB, size=length)]


def generate(llama_cpp: Any, ctx: Any, prompt: list[int], n_new: int) -> tuple[float, float, float, float, list[int]]:
    """(prompt start, first token time, last token time, process CPU seconds between those two, tokens) of one greedy
    generation from an empty KV cache."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    ids = (llama_cpp.llama_token * len(prompt))(*prompt)
    one = (llama_cpp.llama_token * 1)()

    def next_token(step: int) -> int:
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(VOCAB,))
        if not np.isfinite(row).all():
            raise RuntimeError(f"llama.cpp returned non-finite logits at step {step}: {row[~np.isfinite(row)][:4]}")
        return int(row.argmax())

    t_start = time.perf_counter()
    rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(prompt)))
    if rc != 0:
        raise RuntimeError(f"llama_decode(prompt of {len(prompt)} tokens) returned {rc}")
    out = [next_token(0)]
    t_first, cpu_first = time.perf_counter(), time.process_time()
    for step in range(1, n_new):
        one[0] = out[-1]
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1))
        if rc != 0:
            raise RuntimeError(f"llama_decode(token {step}) returned {rc}")
        out.append(next_token(step))
    t_last, cpu_last = time.perf_counter(), time.process_time()
    return t_start, t_first, t_last, cpu_last - cpu_first, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    llama_cpp = import_llama_cpp()
    if args.prompt_len + args.new_tokens > args.n_ctx:
        raise SystemExit(
            f"error: --prompt-len {args.prompt_len} + --new-tokens {args.new_tokens} exceeds --n-ctx {args.n_ctx}; "
            f"pass --n-ctx {args.prompt_len + args.new_tokens}"
        )
    path = ensure_q4_0_gguf(Path(args.cache_dir), args.seed, args.threads)
    summary = gguf_summary(path)
    if summary["file_type"] != llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0:
        raise RuntimeError(f"{path} has file type {summary['file_type_name']}, not MOSTLY_Q4_0; delete it to rebuild")
    llama_cpp.llama_backend_init()
    t_load = time.perf_counter()
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}; rerun with --verbose for its log")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = args.n_ctx
    cparams.n_threads = cparams.n_threads_batch = args.threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("llama_init_from_model failed; rerun with --verbose for its log")
    load_s = time.perf_counter() - t_load
    system_info = llama_cpp.llama_print_system_info().decode()
    ftype = llama_cpp.llama_model_ftype(model)
    if ftype != llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0:
        raise RuntimeError(f"llama.cpp loaded {path} as ftype {ftype}, not LLAMA_FTYPE_MOSTLY_Q4_0")
    prompt = make_prompt(args.prompt_len, args.prompt_seed)

    log(f"loaded in {load_s:.1f} s; warm-up ({args.threads} threads)")
    t_warm = time.perf_counter()
    generate(llama_cpp, ctx, prompt, 8)
    warmup_s = time.perf_counter() - t_warm
    tg, pp, cpu_share = [], [], []
    tokens: list[int] = []
    for i in range(args.repeats):
        t_start, t_first, t_last, cpu_s, tokens = generate(llama_cpp, ctx, prompt, args.new_tokens)
        tg.append((args.new_tokens - 1) / (t_last - t_first))
        pp.append(args.prompt_len / (t_first - t_start))
        cpu_share.append(cpu_s / (args.threads * (t_last - t_first)))
        log(f"run {i + 1}/{args.repeats}: tg {tg[-1]:.1f} tok/s, pp{args.prompt_len} {pp[-1]:.1f} tok/s, "
            f"CPU share {cpu_share[-1]:.2f}")  # fmt: skip
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return {
        "benchmark": "llamacpp_q4_0",
        "tg_tok_s": statistics.median(tg),
        "tg_samples": tg,
        "pp_tok_s": statistics.median(pp),
        "pp_samples": pp,
        # process CPU time / (threads x wall) over the decode steps: ~1 when its threads had their cores (they
        # spin while waiting); well below 1 = other processes held the cores, and the tg sample is not llama.cpp's
        "cpu_share_samples": cpu_share,
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "sampling": "greedy argmax of llama.cpp's logits (checked finite every step)",
        "tokens_head": tokens[:8],
        "model_file": str(path),
        "model_file_bytes": path.stat().st_size,
        "bits_per_weight": 8 * path.stat().st_size / summary["n_params"],
        "gguf": summary,
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": system_info,
        "avx2": "AVX2 = 1" in system_info,
        "load_average": os.getloadavg(),
    }


# -- the interface for decode_goals.py ---------------------------------------------------------------------------
def measure_llamacpp(
    threads: int,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
    cache_dir: str | Path = DEFAULT_CACHE,
    *,
    seed: int = 0,
    prompt_seed: int = 0,
    prepare_only: bool = False,
) -> dict[str, Any]:
    """Run this benchmark in a fresh Python process (its log goes to our stderr); its JSON result as a dict."""
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--threads", str(threads), "--prompt-len", str(prompt_len),
        "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--cache-dir", str(cache_dir),
        "--seed", str(seed), "--prompt-seed", str(prompt_seed), *(["--prepare-only"] if prepare_only else []),
    ]  # fmt: skip
    # llama.cpp as its users run it: `import lowbit` sets OMP_WAIT_POLICY=PASSIVE for torch's pool, and inherited,
    # it put llama.cpp's OpenMP threads to sleep at every barrier (CPU share 0.5-0.67, tg 11-15 against 23-25)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode} (its error is on stderr above)")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no JSON line; stdout was:\n{proc.stdout}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed generations (median)")
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where the Q4_0 GGUF is kept")
    p.add_argument("--seed", type=int, default=0, help="weights")
    p.add_argument("--prompt-seed", type=int, default=0, help="prompt ids (decode_goals.py's --seed)")
    p.add_argument("--prepare-only", action="store_true", help="write + quantize the GGUF if missing, then exit")
    p.add_argument("--verbose", action="store_true", help="llama.cpp's own log on stderr")
    return p.parse_args(argv)


def fmt(xs: list[float], spec: str) -> str:
    return ", ".join(format(x, spec) for x in xs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        silence_llama_log(import_llama_cpp())
    if args.prepare_only:
        path = ensure_q4_0_gguf(Path(args.cache_dir), args.seed, args.threads)
        result: dict[str, Any] = {"benchmark": "llamacpp_q4_0", "model_file": str(path)}
        result |= {"model_file_bytes": path.stat().st_size, "gguf": gguf_summary(path)}
        print(f"llama.cpp Q4_0 GGUF ready: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    else:
        result = run(args)
        g = result["gguf"]
        print(
            f"llama.cpp Q4_0 (llama-cpp-python {result['llama_cpp_python']}, AVX2 {int(result['avx2'])}), "
            f"{args.threads} threads: tg {result['tg_tok_s']:.1f} tok/s (samples {fmt(result['tg_samples'], '.1f')}; "
            f"CPU share {fmt(result['cpu_share_samples'], '.2f')}), pp{args.prompt_len} {result['pp_tok_s']:.1f} "
            f"tok/s | {result['model_file_bytes'] / 2**20:.0f} MiB, {result['bits_per_weight']:.2f} bits/weight, "
            f"{g['file_type_name']}, tensors {g['tensor_types']}, output.weight {g['output_weight_type']} | "
            f"load {fmt(result['load_average'], '.2f')}"
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
