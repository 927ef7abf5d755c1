"""The disk cache of compiled TVM kernels: a second compile loads the library (no TVM build) and computes the
same thing; corrupt or foreign entries are rebuilt with a warning; the key separates options, programs and
code generator versions; read-only directories (an artifact's kernels/) are searched but never written."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("tvm")

import lowbit.lang as T
from lowbit.codegen import kernel_cache
from lowbit.codegen.backend import clear_compile_cache, compile_program
from lowbit.codegen.tvm import runtime
from lowbit.ir.passes import run_pipeline


@T.kernel
def affine(
    x: T.Tensor("float32", ("N",)), y: T.Tensor("float32", ("N",)), N: T.int32, A: T.constexpr = 3, B: T.constexpr = 16
):
    (pid,) = T.grid(T.cdiv(N, B))
    v = T.load(x, (pid * B,), (B,), mask=(pid * B + T.arange(B)) < N, other=0.0)
    T.store(y, (pid * B,), v * float(A) + 1.0, mask=(pid * B + T.arange(B)) < N)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh kernel directory, an empty in-process cache, and a counter of TVM builds."""
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LOWBIT_KERNEL_CACHE", raising=False)
    clear_compile_cache()
    kernel_cache.forget_compiled()
    builds: list[str] = []
    real = runtime.tvm.compile

    def counting(*args, **kwargs):
        builds.append("build")
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime.tvm, "compile", counting)
    yield builds
    clear_compile_cache()
    kernel_cache.forget_compiled()


def check_runs(kernel, A=3, N=37):
    x = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    y = np.zeros_like(x)
    kernel({"x": x, "y": y, "N": N})
    expected = x.astype(np.float64) * A + 1
    assert np.linalg.norm(y - expected) / np.linalg.norm(expected) <= 1e-6


def compile_fresh(program, options=None):
    clear_compile_cache()  # forget the in-process kernel: the next compile goes to the backend (and disk)
    return compile_program(program, "tvm", options)


def replace_file(path, data):
    """Damage a library as a new file under its name: this process still runs the kernel that was built from
    it (a fresh build runs from its saved library), and rewriting a mapped library in place would crash it."""
    tmp = path.with_suffix(".damaged")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def entry_files(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_second_compile_loads_from_disk(cache):
    program = affine.trace(A=3)
    first = compile_fresh(program)
    assert cache == ["build"] and not first._loaded
    files = entry_files(kernel_cache.kernel_dir())
    assert files == [f"{first.key}.json", f"{first.key}.so"]
    record = json.loads((kernel_cache.kernel_dir() / f"{first.key}.json").read_text())
    assert record["program"] == str(program) and record["options"] == first.options  # as traced: the key
    # a fresh build runs from the library it just saved (LLVM generated code once, for the export, not also
    # for a JIT), and exporting it again copies that file
    assert first._from_file and first.library == str(kernel_cache.kernel_dir() / f"{first.key}.so")
    check_runs(first)

    second = compile_fresh(program)
    assert cache == ["build"], "the second compile built again instead of loading the library"
    assert second._loaded and second.key == first.key and second.source == first.source
    assert second.arg_names == first.arg_names
    check_runs(second)
    assert first.key in kernel_cache.compiled_kernels()


def test_corrupt_library_is_rebuilt_with_a_warning(cache):
    program = affine.trace(A=4)
    key = compile_fresh(program).key
    so = kernel_cache.kernel_dir() / f"{key}.so"
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0xFF
    replace_file(so, bytes(data))
    with pytest.warns(kernel_cache.KernelCacheWarning, match="corrupt or modified; rebuilding"):
        kernel = compile_fresh(program)
    assert cache == ["build", "build"] and not kernel._loaded
    check_runs(kernel, A=4)
    assert kernel_cache.lookup(key) is not None, "the rebuilt kernel overwrote the corrupt entry"


def test_library_that_does_not_load_is_rebuilt(cache, tmp_path, monkeypatch):
    """A record consistent with a garbage library (hash updated): dlopen fails, the kernel is rebuilt. The
    entry is damaged in a copy of the cache, as another process would find it: this process already runs the
    first build from the original path, and dlopen hands a loaded path back without reading the file."""
    program = affine.trace(A=5)
    key = compile_fresh(program).key
    other = tmp_path / "other-process"
    shutil.copytree(kernel_cache.kernel_dir(), other / "kernels")
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(other))
    directory = kernel_cache.kernel_dir()
    assert directory == other / "kernels"
    replace_file(directory / f"{key}.so", b"not an ELF file" * 10)
    record = json.loads((directory / f"{key}.json").read_text())
    record["library_sha256"] = kernel_cache.file_sha256(directory / f"{key}.so")
    record["library_bytes"] = 150
    (directory / f"{key}.json").write_text(json.dumps(record))
    with pytest.warns(kernel_cache.KernelCacheWarning, match="does not load"):
        kernel = compile_fresh(program)
    assert cache == ["build", "build"]
    check_runs(kernel, A=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_fresh(program)._loaded and cache == ["build", "build"]


@pytest.mark.parametrize("damage", ["garbage json", "wrong key", "missing library"])
def test_broken_record_is_a_miss(cache, damage):
    program = affine.trace(A=6)
    key = compile_fresh(program).key
    directory = kernel_cache.kernel_dir()
    record_path = directory / f"{key}.json"
    if damage == "garbage json":
        record_path.write_text("{ not json")
    elif damage == "wrong key":
        record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "key": "0" * 64}))
    else:
        (directory / f"{key}.so").unlink()
    with pytest.warns(kernel_cache.KernelCacheWarning):
        compile_fresh(program)
    assert cache == ["build", "build"] and kernel_cache.lookup(key) is not None


def test_key_separates_options_programs_and_codegen(cache):
    program = run_pipeline(affine.trace(A=3))
    target = runtime.cpu_target()
    base = runtime.kernel_key_parts(program, {}, target)
    key = kernel_cache.kernel_key(base)
    assert kernel_cache.kernel_key(runtime.kernel_key_parts(program, {}, target)) == key  # stable
    assert kernel_cache.kernel_key(runtime.kernel_key_parts(program, {"vector": "auto"}, target)) == key  # defaults
    assert kernel_cache.kernel_key(runtime.kernel_key_parts(program, {"vector": 32}, target)) != key
    other = run_pipeline(affine.trace(A=7))
    assert kernel_cache.kernel_key(runtime.kernel_key_parts(other, {}, target)) != key
    for part, value in [("codegen_version", -1), ("codegen_source", "x"), ("toolchain", {}), ("isa", ["avx512f"])]:
        assert kernel_cache.kernel_key({**base, part: value}) != key, part
    assert {"program_sha256", "options", "codegen_version", "codegen_source", "toolchain", "target", "isa"} <= set(base)

    a = compile_fresh(affine.trace(A=3), {"vector": 8})
    b = compile_fresh(affine.trace(A=3), {"vector": 4})
    assert a.key != b.key and cache == ["build", "build"]
    assert len(entry_files(kernel_cache.kernel_dir())) == 4


def test_disabled_cache_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("LOWBIT_KERNEL_CACHE", "0")
    kernel = compile_fresh(affine.trace(A=3))
    check_runs(kernel)
    # it runs from a library of its own in a temporary directory of the process (`_private_library`)
    assert kernel._from_file and kernel.key in kernel.library and not kernel_cache.default_kernel_dir().exists()
    assert not kernel.library.startswith(str(kernel_cache.default_kernel_dir().parent))
    assert kernel_cache.search_dirs() == [] and kernel.key in kernel_cache.compiled_kernels()
    assert compile_fresh(affine.trace(A=3)) is not kernel and cache == ["build", "build"]


def test_read_only_directory_is_searched_not_written(cache, tmp_path):
    """The artifact flow: export the kernels a compile used, then a fresh process (a fresh write directory)
    loads them from the artifact's directory without writing there."""
    first = compile_fresh(affine.trace(A=3))
    shipped = tmp_path / "artifact" / "kernels"
    written = kernel_cache.export_kernels(shipped, [first.key])
    assert [p.name for p in written] == [f"{first.key}.so", f"{first.key}.json"]
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}

    with kernel_cache.using_kernel_dir(tmp_path / "elsewhere", read_only=[shipped]):
        loaded = compile_fresh(affine.trace(A=3))
        assert loaded._loaded and loaded.library == str(shipped / f"{first.key}.so") and cache == ["build"]
        check_runs(loaded)
        other = compile_fresh(affine.trace(A=8))  # a miss goes to the writable directory
        assert cache == ["build", "build"] and other.library.startswith(str(tmp_path / "elsewhere"))
        # a kernel loaded from disk exports by copying its library
        again = kernel_cache.export_kernels(tmp_path / "copy", [first.key])
        assert again[0].read_bytes() == before[f"{first.key}.so"]
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before
    with pytest.raises(KeyError, match="not compiled in this process"):
        kernel_cache.export_kernels(tmp_path / "x", ["0" * 64])


def test_export_without_disk_cache_builds_the_library(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_KERNEL_CACHE", "0")
    kernel = compile_fresh(affine.trace(A=9))
    written = kernel_cache.export_kernels(tmp_path / "k", [kernel.key])  # from the in-memory build
    assert written[0].stat().st_size > 0 and not kernel_cache.default_kernel_dir().exists()
    monkeypatch.delenv("LOWBIT_KERNEL_CACHE")
    with kernel_cache.using_kernel_dir(read_only=[tmp_path / "k"]):
        assert compile_fresh(affine.trace(A=9))._loaded and cache == ["build"]


def test_regenerate_from_record(cache, tmp_path):
    first = compile_fresh(affine.trace(A=3))
    record = json.loads((kernel_cache.kernel_dir() / f"{first.key}.json").read_text())
    with kernel_cache.using_kernel_dir(tmp_path / "fresh"):
        clear_compile_cache()
        again = runtime.regenerate(record)
    # the same key (the program text is the same); the TVMScript differs only in comments (no DSL line numbers)
    assert not again._loaded and again.key == first.key and cache == ["build", "build"]
    check_runs(again)


def test_unwritable_directory_warns_and_still_compiles(cache, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with kernel_cache.using_kernel_dir(blocker / "kernels"), pytest.warns(kernel_cache.KernelCacheWarning):
        kernel = compile_fresh(affine.trace(A=3))
    check_runs(kernel)
    assert kernel.key in kernel.library and not kernel.library.startswith(str(blocker))  # a private library
