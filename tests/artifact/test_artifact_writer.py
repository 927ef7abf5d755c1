"""ArtifactWriter: all-or-nothing (partial dir + one rename), overwrite rules, safe paths, exact tensors,
kernels shipped and loaded back from the artifact."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import lowbit.lang as T
from lowbit.artifact import ArtifactError, ArtifactWriter, open_artifact, verify_artifact
from lowbit.artifact.writer import hash_file


@T.kernel
def scale(x: T.Tensor("float32", ("N",)), N: T.int32, B: T.constexpr = 8):
    (pid,) = T.grid(T.cdiv(N, B))
    T.store(x, (pid * B,), T.load(x, (pid * B,), (B,)) * 2.0)


def test_written_artifact_opens_and_reads_back(artifact, sample):
    a = open_artifact(artifact)
    assert sorted(a.manifest.files) == [
        "model.yaml",
        "report.json",
        "tokenizer/tokenizer_config.json",
        "tuning/records.bin",
        "weights/model.safetensors",
    ]
    for rel, entry in a.manifest.files.items():
        assert hash_file(a.path(rel)) == entry
    assert a.read_text("model.yaml") == sample["model_yaml"] and a.read_json("report.json") == sample["report"]
    tensors = a.tensors("weights/model.safetensors")
    for k, v in sample["tensors"].items():
        assert tensors[k].dtype == v.dtype and tensors[k].tobytes() == v.tobytes(), k
    with a.tensors("weights/model.safetensors", lazy=True) as f:
        assert f.metadata == {"format": "lowbit"} and np.array_equal(f["norm.weight"], sample["tensors"]["norm.weight"])
    assert a.manifest.meta == {"model": "tiny-llama", "arch": "llama", "recipe": "w4 g128"}
    assert a.has("model.yaml") and not a.has("nope") and a.kernel_dir is None
    with pytest.raises(ArtifactError, match=r"nope\.json: not in artifact"):
        a.path("nope.json")
    assert not artifact.with_name("tiny.partial").exists()


def test_exception_inside_with_leaves_nothing(tmp_path):
    path = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), ArtifactWriter(path) as w:
        w.add_text("model.yaml", "x: 1\n")
        assert (tmp_path / "out.partial" / "model.yaml").exists() and not path.exists()
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_keyboard_interrupt_also_cleans_up(tmp_path):
    with pytest.raises(KeyboardInterrupt), ArtifactWriter(tmp_path / "out") as w:
        w.add_bytes("a.bin", b"1")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_leaving_without_finalize_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(ArtifactError, match="without finalize"), ArtifactWriter(tmp_path / "out") as w:
        w.add_bytes("a.bin", b"1")
    assert list(tmp_path.iterdir()) == []


def test_stale_partial_from_a_killed_process_is_replaced(tmp_path):
    stale = tmp_path / "out.partial"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"old")
    with pytest.warns(UserWarning, match="left by an interrupted compile"), ArtifactWriter(tmp_path / "out") as w:
        w.add_bytes("a.bin", b"1")
        w.finalize()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bin", "manifest.json"]


def test_overwrite_rules(tmp_path, make_artifact):
    path = tmp_path / "a"
    make_artifact(path)
    with pytest.raises(ArtifactError, match="already exists; choose another output path or pass overwrite=True"):
        make_artifact(path)
    before = (path / "manifest.json").read_text()
    assert not (tmp_path / "a.partial").exists() and (path / "manifest.json").read_text() == before

    with ArtifactWriter(path, overwrite=True) as w:
        w.add_text("model.yaml", "new: 1\n")
        w.finalize()
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no .old-* or .partial left

    home = tmp_path / "not-an-artifact"
    home.mkdir()
    (home / "precious.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"is not a lowbit artifact .* refusing to replace it"):
        ArtifactWriter(home, overwrite=True)
    assert (home / "precious.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    with ArtifactWriter(empty, overwrite=True) as w:
        w.add_bytes("x", b"")
        w.finalize()
    assert open_artifact(empty).manifest.files["x"].bytes == 0


@pytest.mark.parametrize("rel", ["../x", "/abs", "a/../../x", "manifest.json", "a//b", ""])
def test_paths_must_stay_inside(tmp_path, rel):
    with ArtifactWriter(tmp_path / "out") as w:
        with pytest.raises(ArtifactError, match="artifact path"):
            w.add_bytes(rel, b"x")
        w.abort()
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


def test_each_file_once_and_values_checked(tmp_path):
    with ArtifactWriter(tmp_path / "out") as w:
        w.add_json("r.json", {"a": 1})
        with pytest.raises(ArtifactError, match=r"'r\.json' was already added"):
            w.add_text("r.json", "{}")
        with pytest.raises(ValueError):
            w.add_json("nan.json", {"x": float("nan")})
        with pytest.raises(ArtifactError, match=r"should end in \.safetensors"):
            w.add_tensors("w.bin", {"a": np.zeros(2)})
        with pytest.raises(ArtifactError, match="is not a file"):
            w.add_file("copy.bin", tmp_path / "missing")
        src = tmp_path / "src.bin"
        src.write_bytes(b"abc")
        w.add_file("copy.bin", src)
        w.finalize({"model": "m"})
    with pytest.raises(ArtifactError, match="closed"):
        w.add_bytes("late.bin", b"")
    assert open_artifact(tmp_path / "out").read_bytes("copy.bin") == b"abc"


def test_symlink_inside_is_refused_at_finalize(tmp_path):
    (tmp_path / "secret").write_text("s")
    with pytest.raises(ArtifactError, match="is a symlink"), ArtifactWriter(tmp_path / "out") as w:
        w.path_for("link").symlink_to(tmp_path / "secret")
        w.finalize()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_kernels_ship_in_the_artifact_and_load_from_it(tmp_path, monkeypatch):
    """The serving flow: compile a kernel, ship it, then (as a fresh process would) load it from the artifact
    without a TVM build and without writing into the artifact."""
    pytest.importorskip("tvm")
    from lowbit.codegen import kernel_cache
    from lowbit.codegen.backend import clear_compile_cache, compile_program
    from lowbit.codegen.tvm import runtime

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LOWBIT_KERNEL_CACHE", "1")
    clear_compile_cache()
    kernel = compile_program(scale.trace(), "tvm")
    with ArtifactWriter(tmp_path / "art") as w:
        assert w.add_kernels([kernel.key]) == [kernel.key]
        w.finalize()
    a = open_artifact(tmp_path / "art")
    assert a.has(f"kernels/{kernel.key}.so") and a.has(f"kernels/{kernel.key}.json")
    index = a.read_json("kernels.json")["kernels"]
    assert [k["key"] for k in index] == [kernel.key] and index[0]["name"] == "scale"

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "other-cache"))  # a fresh machine's empty cache
    clear_compile_cache()
    builds = []
    real = runtime.tvm.compile
    monkeypatch.setattr(runtime.tvm, "compile", lambda *a, **k: builds.append(1) or real(*a, **k))
    with a.use_kernels():
        loaded = compile_program(scale.trace(), "tvm")
    assert loaded._loaded and builds == [] and loaded.library == str(a.path(f"kernels/{kernel.key}.so"))
    x = np.arange(8, dtype=np.float32)
    loaded({"x": x, "N": 8})
    assert np.array_equal(x, np.arange(8, dtype=np.float32) * 2)
    assert open_artifact(tmp_path / "art").manifest == a.manifest  # still verifies: nothing was written into it

    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    manifest["device"]["isa"] = ["avx512f", "amx_tile"]  # as if compiled on another CPU
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(manifest))
    report = verify_artifact(tmp_path / "art")
    assert report.ok and "kernels/ holds binaries for that machine: they are regenerated" in report.warnings[0]

    so = tmp_path / "art" / "kernels" / f"{kernel.key}.so"
    # a patched library, its manifest entry updated to match; written as a new file (os.replace), because
    # rewriting the mapped inode of a library this process dlopen'ed corrupts its code (segfault at exit)
    patched = so.with_name(so.name + ".patched")
    patched.write_bytes(so.read_bytes() + b"\0")
    os.replace(patched, so)
    entry = hash_file(so)
    manifest["files"][f"kernels/{kernel.key}.so"] = {"sha256": entry.sha256, "bytes": entry.bytes}
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(manifest))
    errors = verify_artifact(tmp_path / "art").errors
    assert len(errors) == 1 and errors[0].startswith(f"kernels/{kernel.key}.json: its library kernels/{kernel.key}.so")
    clear_compile_cache()
    kernel_cache.forget_compiled()


def test_fifo_inside_is_refused_at_finalize(tmp_path):
    import os

    with pytest.raises(ArtifactError, match="not a regular file"), ArtifactWriter(tmp_path / "out") as w:
        os.mkfifo(w.path_for("pipe"))
        w.finalize()
    assert list(tmp_path.iterdir()) == []
