"""Shared test setup: hypothesis profiles, the `gpu` marker skip, and caches in a session temp dir."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see lowbit/__init__.py)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, no oversubscription
    for _var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import importlib.util

import pytest
from hypothesis import HealthCheck, settings

# lowbit.codegen.triton chooses the interpreter (no CUDA) when it is imported, and that must happen before
# anything imports triton: torch._dynamo does (a test that compiles a model reaches it), and a worker that ran
# such a test first failed every later Triton kernel with a reduction ("Cannot call @triton.jit'd outside of
# the scope of a kernel"). So the suite imports it first, in every worker.
if importlib.util.find_spec("triton") is not None:
    import lowbit.codegen.triton  # noqa: F401

# `ci` is derandomized so CI is deterministic; `dev` explores more.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=30,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Tuning records, generated Triton sources and compiled kernels go to a temp dir of this test run, never to
    ~/.cache/lowbit. Under xdist the workers share it (the parent of their base temps), so a kernel one worker
    or subprocess (tensor-parallel ranks, `lowbit` CLIs) built is loaded by the others instead of rebuilt:
    compiling kernels is most of the suite's time. Entries are written to temporary names and renamed
    (lowbit.codegen.kernel_cache), so concurrent workers never read half files. Tests of the caches
    themselves set their own LOWBIT_CACHE_DIR; LOWBIT_KERNEL_CACHE=0 in the environment turns the disk cache
    off for the run."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = base.parent / "lowbit-cache"
        root.mkdir(exist_ok=True)
    else:
        root = tmp_path_factory.mktemp("lowbit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_CACHE_DIR", str(root))
        mp.setenv("LOWBIT_KERNEL_CACHE", os.environ.get("LOWBIT_KERNEL_CACHE", "1"))
        yield


def compile_tiny(out_dir, *sets: str):
    """Compile examples/tiny-llama.yaml with `--set` overrides into out_dir (no accuracy eval, no progress)."""
    from lowbit.compiler import compile_model
    from lowbit.config import load_config

    cfg = load_config("examples/tiny-llama.yaml", list(sets))
    return compile_model(cfg, out_dir, quiet=True, eval_tokens=0).path


@pytest.fixture(scope="session")
def tiny_compiler():
    """`compile_tiny` for tests that compile their own variant (a fixture: test modules cannot import this
    conftest by name, several test dirs have a conftest.py)."""
    return compile_tiny


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory):
    """The README's example (int4 RTN weights, KV8) with max_model_len 256, compiled once per test session:
    for engine / server / benchmark tests."""
    return compile_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", "target.max_model_len=256")


@pytest.fixture(scope="session")
def tiny_exact_artifact(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model unquantized (fp32 weights, fp32 KV), max_model_len 256: tests that compare token streams
    across schedules, preemption and against the float reference need exact-path numerics."""
    return compile_tiny(
        tmp_path_factory.mktemp("tiny-exact") / "tiny-exact",
        "quantization.algorithm=none", "quantization.kv_cache.dtype=float32", "target.max_model_len=256",
    )  # fmt: skip
