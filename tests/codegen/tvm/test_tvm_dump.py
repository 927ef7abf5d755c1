"""`LOWBIT_DUMP_TVM=dir` (`runtime.dump_path`): every specialisation of a kernel gets its own file,
`<kernel>.<hash>.tvm.py` with 12 hex digits of the source's sha256; as `<kernel>.tvm.py` the fp16 and fp32
softmax overwrote each other. A cached kernel loaded again writes the same file."""

from __future__ import annotations

import hashlib

import lowbit.lang as T
from lowbit.codegen.backend import clear_compile_cache, compile_program


@T.kernel
def softmax(
    x: T.Tensor("dt", ("M", 16)), y: T.Tensor("dt", ("M", 16)), M: T.int32, dt: T.constexpr = "float32"
):  # fmt: skip
    (p,) = T.grid(M)
    v = T.cast(T.load(x, (p, 0), (1, 16)), T.float32)
    e = T.exp(v - T.max(v, axis=1, keepdims=True))
    T.store(y, (p, 0), T.cast(e / T.sum(e, axis=1, keepdims=True), dt))


def test_each_specialisation_is_dumped_to_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_DUMP_TVM", str(tmp_path))
    sources = {dt: compile_program(softmax.trace(dt=dt), "tvm").source for dt in ("float16", "float32")}
    assert sources["float16"] != sources["float32"]
    files = sorted(tmp_path.glob("*.tvm.py"))
    assert len(files) == 2, files
    for source in sources.values():
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        assert (tmp_path / f"softmax.{digest}.tvm.py").read_text() == source
    clear_compile_cache()  # the next compile loads the kernel from the disk cache: the same file again
    compile_program(softmax.trace(dt="float16"), "tvm")
    assert sorted(tmp_path.glob("*.tvm.py")) == files
