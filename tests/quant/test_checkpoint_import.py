"""AutoAWQ / GPTQ checkpoint import and export: hand-decoded words (independent of lowbit's unpacking),
bit packing against a big-integer oracle, round trips over bits and formats, HF loading, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.dtypes import decode
from lowbit.ops.weight import quantize
from lowbit.quant.checkpoint_import import (
    AWQ_ORDER,
    export_awq,
    export_gptq,
    import_awq,
    import_gptq,
    import_hf_quantized,
    pack_awq,
    pack_bits,
    parse_quantization_config,
    unpack_bits,
)


def _word(value: int) -> np.int32:
    return np.array([value], dtype=np.uint32).view(np.int32)[0]


ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's order map, written here, not imported


def _decode_awq_by_hand(qweight: np.ndarray) -> np.ndarray:
    # the documented bit order, with Python ints: nibble i of word c is column 8c + ORDER[i]
    rows, words = qweight.shape
    out = np.zeros((rows, words * 8), dtype=np.int64)
    for r in range(rows):
        for c in range(words):
            word = int(qweight[r, c]) & 0xFFFFFFFF
            for i in range(8):
                out[r, 8 * c + ORDER[i]] = (word >> (4 * i)) & 0xF
    return out


def test_awq_hand_checked_tensor() -> None:
    assert AWQ_ORDER == ORDER
    # one row, 16 columns: values 1..8 then 15, 0, 14, 1, ... ; zero 8 in group 0 and 3 in group 1 (K = 2, G = 1)
    row0 = [1, 2, 3, 4, 5, 6, 7, 8, 15, 0, 14, 1, 13, 2, 12, 3]
    row1 = list(range(16))
    # word (r, c), nibbles low to high, hold columns 8c + (0, 2, 4, 6, 1, 3, 5, 7):
    #   row 0: 1,3,5,7,2,4,6,8 -> 0x86427531   15,14,13,12,0,1,2,3 -> 0x3210CDEF
    #   row 1: 0,2,4,6,1,3,5,7 -> 0x75316420   8,10,12,14,9,11,13,15 -> 0xFDB9ECA8
    qweight = np.array([[_word(0x86427531), _word(0x3210CDEF)], [_word(0x75316420), _word(0xFDB9ECA8)]])
    hand = _decode_awq_by_hand(qweight)
    assert hand[0].tolist() == row0 and hand[1].tolist() == row1
    np.testing.assert_array_equal(pack_awq(np.array([row0, row1])), qweight)
    qzeros = pack_awq(np.array([[8] * 16, [3] * 16]))
    scales = np.array([[0.5] * 16, [0.25] * 16], np.float16)
    qw = import_awq(qweight, qzeros, scales, group_size=1)
    expected = (np.array([row0, row1]) - np.array([[8], [3]])) * np.array([[0.5], [0.25]])  # [K, N]
    np.testing.assert_array_equal(qw.dequantize(), expected.T.astype(np.float32))
    assert qw.dtype.name == "uint4" and qw.zero_mode == "post" and qw.shape == (16, 2)


def test_pack_bits_against_a_big_integer_stream() -> None:
    rng = np.random.default_rng(0)
    for bits in (2, 3, 4, 5, 8):
        count = 32 * 3
        v = rng.integers(0, 1 << bits, (2, count))
        words = pack_bits(v, bits)
        assert words.dtype == np.int32 and words.shape == (2, count * bits // 32)
        for r in range(2):
            stream = sum(int(x) << (bits * j) for j, x in enumerate(v[r]))  # value j at bits [j·b, (j+1)·b)
            expect = [(stream >> (32 * i)) & 0xFFFFFFFF for i in range(words.shape[1])]
            assert [int(x) & 0xFFFFFFFF for x in words[r]] == expect
        np.testing.assert_array_equal(unpack_bits(words, bits), v)


def test_gptq_3bit_values_straddle_words() -> None:
    v = np.arange(32) % 8  # 32 three-bit values fill exactly 3 words
    words = [int(x) & 0xFFFFFFFF for x in pack_bits(v[None], 3)[0]]
    assert (words[0] >> 30) | ((words[1] & 1) << 2) == v[10]  # value 10: bits 30, 31 | next word's bit 0
    assert (words[1] >> 31) | ((words[2] & 3) << 1) == v[21]  # value 21: bit 31 | next word's bits 0, 1
    assert (words[2] >> 29) & 7 == v[31]


def test_gptq_v1_stores_zero_minus_one() -> None:
    # 8 columns, K = 8 at 4 bits: qweight one row of words, codes k; zeros 8 stored as 7 (v1) or 8 (v2)
    codes = np.tile(np.arange(8)[:, None], (1, 8))  # [K, N]
    qweight = pack_bits(codes.T, 4).T  # [1, 8]
    scales = np.full((1, 8), 0.5, np.float16)
    for version, stored in ((1, 7), (2, 8)):
        qzeros = np.array([[_word(int("".join([f"{stored:x}"] * 8), 16))]])
        qw = import_gptq(qweight, qzeros, scales, bits=4, group_size=-1, version=version)
        assert qw.dtype.name == "int4" and qw.zero_mode == "none"
        np.testing.assert_array_equal(qw.dequantize(), ((codes - 8) * 0.5).T.astype(np.float32))
    qzeros = np.array([[_word(0x77777777)]])
    with pytest.raises(ValueError, match=r"checkpoint_format 'gptq' \(version=1\)"):
        import_gptq(qweight, qzeros, scales, bits=4, group_size=-1, version=2)


AWQ_DTYPES = [("uint4", "post"), ("int4", None)]


@settings(max_examples=10)
@given(st.integers(0, 2**16), st.sampled_from(AWQ_DTYPES), st.sampled_from([32, 64, -1]))
def test_awq_round_trip(seed: int, dt: tuple[str, str | None], group: int) -> None:
    w = np.random.default_rng(seed).standard_normal((24, 128)).astype(np.float32)
    qw = quantize(w, dt[0], group, zero_mode=dt[1])
    t = export_awq(qw)
    groups = 1 if group == -1 else 128 // group
    assert t["qweight"].shape == (128, 3) and t["qzeros"].shape == (groups, 3) and t["scales"].shape == (groups, 24)
    assert t["qweight"].dtype == np.int32 and t["scales"].dtype == np.float16
    shift = 8 if qw.dtype.is_signed else 0  # int4 is stored as uint4 with zero 8
    np.testing.assert_array_equal(_decode_awq_by_hand(t["qweight"]), decode(qw.dtype, qw.codes()) + shift)
    back = import_awq(t["qweight"], t["qzeros"], t["scales"], group_size=group)
    np.testing.assert_array_equal(back.dequantize(), qw.dequantize())


def test_torch_tensors_import_like_numpy_with_fp16_scales() -> None:
    import torch

    qw = quantize(np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32), "uint4", 32, zero_mode="post")
    t = export_awq(qw)
    back = import_awq(*(torch.from_numpy(t[k]) for k in ("qweight", "qzeros", "scales")), group_size=32)
    assert back.scales.dtype == np.float16  # the stored scale dtype, as from NumPy arrays
    np.testing.assert_array_equal(back.dequantize(), qw.dequantize())
    bf16 = torch.from_numpy(t["scales"]).to(torch.bfloat16)
    got = import_awq(torch.from_numpy(t["qweight"]), torch.from_numpy(t["qzeros"]), bf16, group_size=32)
    assert got.scales.dtype == np.float32 and np.array_equal(got.scales, bf16.float().numpy())


@settings(max_examples=30)
@given(
    st.integers(0, 2**16),
    st.sampled_from([2, 3, 4, 8]),
    st.booleans(),
    st.sampled_from([1, 2]),
    st.sampled_from([32, 64, -1]),
)
def test_gptq_round_trip(seed: int, bits: int, sym: bool, version: int, group: int) -> None:
    w = np.random.default_rng(seed).standard_normal((32, 128)).astype(np.float32)
    qw = quantize(w, f"int{bits}" if sym else f"uint{bits}", group, zero_mode=None if sym else "post")
    if version == 1 and qw.zeros is not None and qw.zeros.min() == 0:
        with pytest.raises(ValueError, match="cannot store"):
            export_gptq(qw, version)
        return
    t = export_gptq(qw, version)
    groups = 1 if group == -1 else 128 // group
    assert t["qweight"].shape == (128 * bits // 32, 32) and t["qzeros"].shape == (groups, 32 * bits // 32)
    np.testing.assert_array_equal(t["g_idx"], np.arange(128) // (128 if group == -1 else group))
    back = import_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits, group, sym, version)
    np.testing.assert_array_equal(back.dequantize(), qw.dequantize())
    assert back.dtype.name == qw.dtype.name
    # the codes of column n are the dense little-endian stream of qweight[:, n] (signed codes shifted by 2^(b−1))
    codes = decode(qw.dtype, qw.codes()).T  # [N, K]
    np.testing.assert_array_equal(unpack_bits(t["qweight"].T, bits), codes + (1 << (bits - 1)) * sym)


def test_gptq_v1_zero_field_max_imports_as_one_past_the_grid() -> None:
    codes = np.zeros((8, 8), dtype=np.int64)  # [K, N]
    qweight = pack_bits(codes.T, 4).T
    qzeros = np.array([[_word(0xFFFFFFFF)]])  # every field 15 -> zero 16 in v1
    qw = import_gptq(qweight, qzeros, np.ones((1, 8), np.float16), bits=4, group_size=-1, sym=False)
    np.testing.assert_array_equal(qw.dequantize(), np.full((8, 8), -16.0, np.float32))


def _hf_weights(method: str) -> tuple[dict[str, np.ndarray], dict[str, object], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"]
    weights: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((10, 64))}
    expect = {}
    for name in names:
        qw = quantize(rng.standard_normal((32, 64)).astype(np.float32), "uint4", 32, zero_mode="post")
        t = export_awq(qw) if method == "awq" else export_gptq(qw, 2)
        weights |= {f"{name}.{k}": v for k, v in t.items()}
        weights[f"{name}.bias"] = np.zeros(32)
        expect[name] = qw.dequantize()
    if method == "awq":
        cfg: dict[str, object] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": 32,
            "zero_point": True,
            "version": "gemm",
        }
    else:
        cfg = {
            "quant_method": "gptq",
            "bits": 4,
            "group_size": 32,
            "sym": False,
            "desc_act": False,
            "checkpoint_format": "gptq_v2",
        }
    return weights, cfg, expect


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_import_hf_quantized(method: str) -> None:
    weights, cfg, expect = _hf_weights(method)
    out = import_hf_quantized(weights, {"model_type": "llama", "quantization_config": cfg})
    assert sorted(out) == sorted(expect)
    for name, w in expect.items():
        np.testing.assert_array_equal(out[name].dequantize(), w)
    missing = {k: v for k, v in weights.items() if k != "model.layers.0.mlp.down_proj.scales"}
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.scales"):
        import_hf_quantized(missing, cfg)


def test_import_hf_errors() -> None:
    weights, cfg, _ = _hf_weights("awq")
    with pytest.raises(ValueError, match="quant_method: 'bitsandbytes': not a format lowbit imports"):
        import_hf_quantized(weights, {"quant_method": "bitsandbytes"})
    with pytest.raises(ValueError, match="version: 'gemv': only AutoAWQ's 'gemm'"):
        import_hf_quantized(weights, {**cfg, "version": "gemv"})
    with pytest.raises(ValueError, match="zero_point: False: the GEMM format stores zeros"):
        import_hf_quantized(weights, {**cfg, "zero_point": False})
    with pytest.raises(ValueError, match="checkpoint_format: 'marlin'"):
        import_hf_quantized(weights, {"quant_method": "gptq", "checkpoint_format": "marlin"})
    with pytest.raises(ValueError, match=r"no '<module>\.qweight'"):
        import_hf_quantized({"a.weight": np.ones(3)}, cfg)


def test_import_export_errors() -> None:
    qw = quantize(np.ones((8, 64), np.float32), "uint4", 32, zero_mode="post")
    t = export_gptq(qw, 2)
    with pytest.raises(ValueError, match="bits 5: GPTQ checkpoints hold"):
        import_gptq(t["qweight"], t["qzeros"], t["scales"], bits=5)
    with pytest.raises(ValueError, match="AutoAWQ's GEMM format packs 4-bit codes only"):
        import_awq(np.zeros((64, 1), np.int32), np.zeros((2, 1), np.int32), np.ones((2, 8), np.float16), bits=3)
    with pytest.raises(ValueError, match="group_size 48 does not divide in_features K = 64"):
        import_gptq(t["qweight"], t["qzeros"], t["scales"], bits=4, group_size=48)
    with pytest.raises(ValueError, match="act-order"):
        import_gptq(
            t["qweight"],
            t["qzeros"],
            t["scales"],
            np.random.default_rng(0).permutation(64) // 32,
            4,
            32,
            sym=False,
            version=2,
        )
    with pytest.raises(ValueError, match="version 3"):
        import_gptq(t["qweight"], t["qzeros"], t["scales"], bits=4, group_size=32, version=3)
    with pytest.raises(ValueError, match="dtype float32; checkpoints store packed codes as int32"):
        import_awq(
            np.zeros((64, 1), np.float32), np.zeros((2, 1), np.int32), np.ones((2, 8), np.float16), group_size=32
        )
    with pytest.raises(ValueError, match=r"scales has shape \(8, 2\); expected \[K/G, N\]"):
        import_awq(np.zeros((64, 1), np.int32), np.zeros((2, 1), np.int32), np.ones((8, 2), np.float16), group_size=32)
    with pytest.raises(ValueError, match=r"cannot be stored in AutoAWQ format"):
        export_awq(quantize(np.ones((8, 64), np.float32), "uint3", 32, zero_mode="post"))
    with pytest.raises(ValueError, match="zero_mode 'pre'"):
        export_gptq(quantize(np.ones((8, 64), np.float32), "uint4", 32, zero_mode="pre"))
    with pytest.raises(ValueError, match="multiple of 8"):
        export_awq(quantize(np.ones((4, 64), np.float32), "uint4", 32, zero_mode="post"))
    with pytest.raises(ValueError, match="whole int32 words"):
        export_gptq(quantize(np.ones((8, 64), np.float32), "int3", 32))
    with pytest.raises(ValueError, match="float16"):
        export_awq(
            quantize(
                np.full((8, 64), 1e-6, np.float32) * np.arange(64), "uint4", 32, zero_mode="post", scale_dtype="float32"
            )
        )


@pytest.mark.parametrize(
    "qc, fmt",
    [
        ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "GEMM"}, ("awq", 4, 128, False, 0)),
        ({"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": True}, ("awq", 4, 64, False, 0)),
        ({"quant_method": "gptq", "bits": 8, "group_size": -1}, ("gptq", 8, -1, True, 1)),
        ({"quant_method": "gptq", "bits": 3, "sym": False, "checkpoint_format": "gptq_v2"}, ("gptq", 3, 128, False, 2)),
        ({"quant_method": "gptq", "desc_act": True, "static_groups": True}, ("gptq", 4, 128, True, 1)),
    ],
)  # fmt: skip
def test_parse_quantization_config(qc: dict[str, object], fmt: tuple[object, ...]) -> None:
    got = parse_quantization_config({"quantization_config": qc})
    assert (got.method, got.bits, got.group_size, got.sym, got.version) == fmt
    assert got.weight_dtype == ("int" if got.sym else "uint") + str(got.bits)
    assert got.zero_mode == ("none" if got.sym else "post")


@pytest.mark.parametrize(
    "qc, match",
    [
        ({"quant_method": "awq", "bits": 3}, r"quantization_config\.bits: 3: AutoAWQ's GEMM format packs 4-bit"),
        ({"quant_method": "gptq", "bits": 5}, r"quantization_config\.bits: 5: GPTQ stores \[2, 3, 4, 8\]"),
        ({"quant_method": "gptq", "group_size": 0}, r"group_size: 0: not a group size"),
        ({"quant_method": "gptq", "group_size": "128"}, r"group_size: '128': not an integer"),
        ({"quant_method": "gptq", "desc_act": True}, r"desc_act: True: act-order.*desc_act: false"),
    ],
)  # fmt: skip
def test_parse_quantization_config_errors(qc: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_quantization_config(qc)
