"""WeightStore: the torch-free safetensors reader equals the safetensors library, writes read back exactly,
reads are lazy views, and check_weights names the tensor, the shapes and the file."""

from __future__ import annotations

import json
import struct
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lowbit.models import ArchConfig, ArrayWeights, SafetensorsWeights, WeightError, check_weights
from lowbit.models.synthetic import synthetic_weights
from lowbit.models.weights import LazyWeights, read_safetensors_header, write_safetensors

TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.int32]


def test_reader_equals_safetensors_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"t.{str(dt).split('.')[1]}": (torch.randn(3, 5, generator=g) * 4).to(dt) for dt in TORCH_DTYPES}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["odd"] = torch.randn(7, generator=g).to(torch.bfloat16)  # leaves the next tensor 2-byte aligned
    tensors["after_odd"] = torch.randn(2, 3, generator=g)
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    store = SafetensorsWeights([path])
    assert sorted(store) == sorted(tensors)
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            expected = f.get_tensor(name).float().numpy()
            got = store[name]
            assert got.dtype == np.float32 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected, err_msg=name)
            assert store.dtype(name) == str(tensors[name].dtype).removeprefix("torch.")
    assert store.nbytes == sum(t.numel() * t.element_size() for t in tensors.values())


def test_float32_reads_are_read_only_views_of_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(12.0).reshape(3, 4)}, str(path))
    a = SafetensorsWeights([path])["a"]
    assert not a.flags.writeable and not a.flags.owndata
    with pytest.raises(ValueError):
        a[0, 0] = 1.0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_write_read_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((4, 6)).astype(np.float32), "y": rng.standard_normal(5).astype(np.float32)}
    path = tmp_path / "w.safetensors"
    store = ArrayWeights(arrays)
    write_safetensors(path, store, ["y", "x"], dtype, {n: a.shape for n, a in arrays.items()})
    back = SafetensorsWeights([path])
    np_dtype = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name], a.astype(np_dtype).astype(np.float32))
        assert back.dtype(name) == dtype
    with safe_open(str(path), framework="pt") as f:  # the library reads what lowbit writes
        np.testing.assert_array_equal(f.get_tensor("x").float().numpy(), back["x"])
        assert f.metadata() == {"format": "pt"}
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01\x02")
    with pytest.raises(WeightError, match="too short"):
        read_safetensors_header(bad)
    bad.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(WeightError, match="does not fit"):
        read_safetensors_header(bad)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(WeightError, match=r"w F32\[4\] needs 16 bytes"):
        read_safetensors_header(bad)
    header = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(WeightError, match="C64"):
        read_safetensors_header(bad)


def test_duplicate_tensor_across_files(tmp_path):
    for name in ("a", "b"):
        save_file({"w": torch.zeros(2)}, str(tmp_path / f"{name}.safetensors"))
    with pytest.raises(WeightError, match=r"w is in both .*a\.safetensors and .*b\.safetensors"):
        SafetensorsWeights([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


def test_missing_name_suggests(tmp_path):
    store = ArrayWeights({"model.norm.weight": np.ones(3)})
    with pytest.raises(KeyError, match=r"did you mean 'model\.norm\.weight'"):
        store["model.norm.weights"]
    assert store["model.norm.weight"].dtype == np.float32


ARCH = ArchConfig(
    model_type="llama", vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2,
    num_kv_heads=1, head_dim=8,
)  # fmt: skip


def test_check_weights_shapes_and_extras():
    full = synthetic_weights(ARCH, seed=0).materialize()
    assert check_weights(full, ARCH) == []
    arrays = {n: full[n] for n in full}
    arrays["model.layers.1.mlp.up_proj.weight"] = np.zeros((24, 15), np.float32)
    with pytest.raises(WeightError, match=r"up_proj\.weight has shape \[24, 15\], expected \[24, 16\] \(in mem"):
        check_weights(ArrayWeights(arrays, source="mem"), ARCH)
    del arrays["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(WeightError, match=r"missing model\.layers\.1\.mlp\.up_proj\.weight \[24, 16\]"):
        check_weights(ArrayWeights(arrays), ARCH)
    arrays = {n: full[n] for n in full}
    arrays["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_weights(ArrayWeights(arrays), ARCH) == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    arrays["vision_tower.weight"] = np.ones(4, np.float32)
    with pytest.warns(UserWarning, match="vision_tower.weight"):
        check_weights(ArrayWeights(arrays), ARCH)
    arrays = {n: full[n] for n in full}
    arrays["model.layers.0.self_attn.q_proj.weight"] = np.zeros((16, 16), np.int32)
    with pytest.raises(WeightError, match=r"int32.*pre-quantized"):
        check_weights(ArrayWeights(arrays), ARCH)


def test_tied_checkpoint_with_lm_head_is_quiet():
    tied = ArchConfig(**{**ARCH.__dict__, "tie_word_embeddings": True})
    full = synthetic_weights(ARCH, seed=0).materialize()
    assert "lm_head.weight" not in tied.param_shapes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_weights(full, tied) == ["lm_head.weight"]


def test_lazy_weights_check_their_shape():
    store = LazyWeights({"a": (2, 3)}, lambda name: np.zeros((3, 2), np.float32), "float32", "test")
    with pytest.raises(WeightError, match=r"test made a with shape \(3, 2\), expected \(2, 3\)"):
        store["a"]
