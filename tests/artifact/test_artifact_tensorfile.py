"""lowbit's safetensors writer/reader: exact round trip of every dtype, files readable by the safetensors
library (the oracle), torch inputs, and header corruptions refused with the tensor named."""

from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from lowbit.artifact import tensorfile
from lowbit.artifact.tensorfile import DTYPES, TensorFileError

torch = pytest.importorskip("torch")


def random_array(rng, dtype, shape):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    # every bit pattern of the float dtype (NaNs included): the bits must survive
    raw = rng.integers(0, 256, (int(np.prod(shape)) * dt.itemsize,), dtype=np.uint8)
    return raw.view(dt).reshape(shape)


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).tobytes(), a.dtype, a.shape


@settings(max_examples=15)
@given(
    names=st.lists(st.sampled_from(sorted(DTYPES)), min_size=1, max_size=6),
    shapes=st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_bit_exact_and_safetensors_reads_it(tmp_path_factory, names, shapes, seed):
    rng = np.random.default_rng(seed)
    arrays = {f"t{i}.{code}": random_array(rng, DTYPES[code], tuple(shapes[i])) for i, code in enumerate(names)}
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    tensorfile.save(path, arrays, {"k": "v"})
    back = tensorfile.load(path)
    assert back.keys() == arrays.keys()
    for k, a in arrays.items():
        assert bits(back[k]) == bits(a), k
    header = tensorfile.read_header(path)
    assert header.data_start % 8 == 0 and dict(header.metadata) == {"k": "v"}
    assert all((header.data_start + t.begin) % t.numpy_dtype.itemsize == 0 for t in header.tensors.values())
    with safe_open(str(path), framework="pt") as f:  # the oracle: the reference implementation's reader
        assert set(f.keys()) == set(arrays) and f.metadata() == {"k": "v"}
        for k, a in arrays.items():
            t = f.get_tensor(k)
            assert tuple(t.shape) == a.shape
            assert t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() == a.tobytes(), k


def test_torch_inputs_keep_their_bits(tmp_path):
    src = {
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "f8": torch.randn(5).to(torch.float8_e4m3fn),
        "f8b": torch.randn(5).to(torch.float8_e5m2),
        "u32": torch.arange(6, dtype=torch.int64).to(torch.uint32),
        "f16": torch.randn(2, 2, dtype=torch.float16).t(),  # non-contiguous
    }
    path = tmp_path / "t.safetensors"
    tensorfile.save(path, src)
    back = tensorfile.load(path)
    assert back["bf16"].dtype == ml_dtypes.bfloat16 and back["f8"].dtype == ml_dtypes.float8_e4m3fn
    assert back["u32"].dtype == np.uint32 and back["f16"].shape == (2, 2)
    for k, t in src.items():
        want = t.contiguous().view(torch.uint8) if t.element_size() == 1 else t.contiguous()
        got = back[k]
        if t.dtype == torch.bfloat16:
            assert np.array_equal(got.view(np.int16), t.view(torch.int16).numpy()), k
        elif t.element_size() == 1:
            assert np.array_equal(got.view(np.uint8), want.numpy()), k
        else:
            assert np.array_equal(got, t.contiguous().numpy()), k


def test_lazy_file_is_a_read_only_mapping(tmp_path):
    path = tmp_path / "t.safetensors"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensorfile.save(path, {"a": a, "empty": np.zeros((0, 3), np.int8)})
    with tensorfile.TensorFile(path) as f:
        assert sorted(f) == ["a", "empty"] and len(f) == 2
        view = f["a"]
        assert np.array_equal(view, a) and not view.flags.writeable and f["empty"].shape == (0, 3)
        with pytest.raises(KeyError, match="has no tensor 'b'"):
            f["b"]
    assert np.array_equal(view, a)  # a view outlives close()


def test_unstorable_values_are_refused(tmp_path):
    with pytest.raises(TensorFileError, match="dtype complex64, which safetensors cannot store"):
        tensorfile.save(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex64)})
    with pytest.raises(TensorFileError, match="tensor name '__metadata__' is not allowed"):
        tensorfile.save(tmp_path / "x.safetensors", {"__metadata__": np.zeros(2)})
    with pytest.raises(TensorFileError, match="metadata must map str to str"):
        tensorfile.save(tmp_path / "x.safetensors", {"a": np.zeros(2)}, {"n": 1})  # type: ignore[dict-item]


def write_raw(path, header, data: bytes, length=None):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


GOOD = {
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]},
}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (GOOD, b"\0" * 12, None, None),
        (GOOD, b"\0" * 11, None, "need 12 data bytes, the file has 11: truncated"),
        (GOOD, b"\0" * 13, None, "trailing bytes after the last tensor"),
        (GOOD, b"\0" * 12, 10**12, "header length 1000000000000 is implausible"),
        (GOOD, b"", 400, "runs past the end of the file"),
        (
            {"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "tensor 'a': unknown dtype 'F99'",
        ),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape \\[3\\] of F32 is 12"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "not a list of non-negative"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "leaves a gap of 4 bytes"),
        (
            {**GOOD, "c": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}},
            b"\0" * 12,
            None,
            "overlaps the previous tensor",
        ),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "is not \\{dtype, shape, data_offsets\\}"),
        ({"__metadata__": {"n": 1}}, b"", None, "__metadata__ must map str to str"),
        ([1, 2], b"", None, "header is a JSON list, not an object"),
    ],
)
def test_header_checks(tmp_path, header, data, length, message):
    path = tmp_path / "h.safetensors"
    write_raw(path, header, data, length)
    if message is None:
        assert set(tensorfile.read_header(path).tensors) == {"a", "b"}
        return
    with pytest.raises(TensorFileError, match=message) as e:
        tensorfile.read_header(path)
    assert "h.safetensors" in str(e.value)


def test_garbage_and_short_files(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(TensorFileError, match="shorter than the 8-byte header length"):
        tensorfile.read_header(path)
    path.write_bytes(struct.pack("<Q", 6) + b"\xff\xfe{...")
    with pytest.raises(TensorFileError, match="header is not JSON"):
        tensorfile.read_header(path)
