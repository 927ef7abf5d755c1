"""Synthetic models: deterministic per seed, saved directories are real HF directories (transformers loads
them and computes lowbit's reference logits), next-token distributions are neither uniform nor one-hot, and
the synthetic tokenizer has exactly vocab_size ids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hf_oracle import FAMILIES, hf_logits, random_ids, rel_err

from lowbit.models import ArchConfig, load_hf_dir, save_hf_dir, synthetic_tokenizer, synthetic_weights
from lowbit.models.reference import reference_logits
from lowbit.models.synthetic import SPECIAL_TOKENS

LLAMA = ArchConfig(
    model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, rope_theta=500000.0, bos_token_id=1, eos_token_id=(2,),
    rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                  ("original_max_position_embeddings", 32), ("rope_type", "llama3")),
)  # fmt: skip
QWEN2 = dataclasses.replace(
    LLAMA, model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, rope_scaling=(), sliding_window=4,
    window_from_layer=1, torch_dtype="bfloat16",
)  # fmt: skip
MISTRAL = dataclasses.replace(LLAMA, model_type="mistral", rope_scaling=(), sliding_window=5, head_dim=24)
LLAMA_BIAS = dataclasses.replace(LLAMA, qkv_bias=True, o_bias=True, mlp_bias=True, torch_dtype="float16")
ARCHS = {"llama": LLAMA, "qwen2": QWEN2, "mistral": MISTRAL, "llama_bias": LLAMA_BIAS}


def test_deterministic_by_seed():
    a, b, c = synthetic_weights(LLAMA, seed=5), synthetic_weights(LLAMA, seed=5), synthetic_weights(LLAMA, seed=6)
    names = list(LLAMA.param_shapes())
    assert list(a) == names
    for name in reversed(names):  # order of reading does not matter: each tensor has its own stream
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])
    assert not np.array_equal(a["model.layers.0.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])


def test_distributions():
    w = synthetic_weights(LLAMA, seed=0)
    assert abs(w["model.layers.0.mlp.down_proj.weight"].std() - 0.02) < 0.002
    norm = w["model.layers.1.input_layernorm.weight"]
    assert norm.min() > 0.75 and norm.max() < 1.25 and 0.03 < norm.std() < 0.07
    assert abs(w["lm_head.weight"].std() - 4.0 / np.sqrt(64)) < 0.05


def test_values_are_representable_in_the_model_dtype():
    w = synthetic_weights(QWEN2, seed=0)
    x = w["model.layers.0.self_attn.q_proj.bias"]
    assert w.dtype("model.embed_tokens.weight") == "bfloat16"
    np.testing.assert_array_equal(x, torch.from_numpy(x.copy()).bfloat16().float().numpy())


@pytest.mark.parametrize("shard_bytes", [None, 20_000])
def test_save_load_round_trip(tmp_path, shard_bytes):
    weights = synthetic_weights(QWEN2, seed=1)
    save_hf_dir(tmp_path, QWEN2, weights, tokenizer=synthetic_tokenizer(QWEN2.vocab_size), shard_bytes=shard_bytes)
    loaded = load_hf_dir(tmp_path)
    assert loaded.arch == QWEN2
    assert list(loaded.weights) == list(QWEN2.param_shapes()) or shard_bytes
    assert sorted(loaded.weights) == sorted(QWEN2.param_shapes())
    for name in QWEN2.param_shapes():
        np.testing.assert_array_equal(loaded.weights[name], weights[name], err_msg=name)
    assert loaded.tokenizer_path == tmp_path / "tokenizer.json"
    assert loaded.eos_token_ids == (2,) and loaded.bos_token_id == 1
    assert (len(list(tmp_path.glob("model-*.safetensors"))) > 1) == (shard_bytes is not None)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_transformers_loads_saved_dirs(tmp_path, name):
    """Our saved directories are HF directories: transformers' logits equal lowbit's reference."""
    arch = ARCHS[name]
    weights = synthetic_weights(arch, seed=2)
    save_hf_dir(tmp_path, arch, weights, dtype="float32")
    model = FAMILIES[arch.model_type][1].from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = random_ids(arch.vocab_size, batch=2, length=12, seed=3)
    assert rel_err(reference_logits(arch, weights, ids), hf_logits(model, ids)) < 1e-5
    if arch.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_next_token_distributions_are_not_degenerate():
    ids = random_ids(LLAMA.vocab_size, batch=2, length=24, seed=0)
    logits = reference_logits(LLAMA, synthetic_weights(LLAMA, seed=0), ids)
    p = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()  # [B, T, V]
    entropy = -(p * np.log(p)).sum(-1) / np.log(LLAMA.vocab_size)  # fraction of uniform's entropy
    assert 0.02 < entropy.mean() < 0.8
    assert len(np.unique(logits.argmax(-1))) > 10  # the argmax moves with the context


def test_synthetic_tokenizer():
    tok = synthetic_tokenizer(400)
    assert tok.get_vocab_size() == 400
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    text = "The quick brown fox, naïve café 🙂 \x00\n\t  spaces"
    ids = tok.encode(text).ids
    assert ids[0] == 1 and max(ids) < 400
    assert tok.decode(ids) == text
    assert len(synthetic_tokenizer(1000).encode("The quick brown fox").ids) < 8  # merges learned the built-in text
    assert synthetic_tokenizer(400).to_str() == tok.to_str()
    assert synthetic_tokenizer(259).get_vocab_size() == 259
    with pytest.raises(ValueError, match=r"at least 259 ids \(256 byte tokens"):
        synthetic_tokenizer(258)


def test_synthetic_tokenizer_is_the_same_in_another_process():
    import subprocess
    import sys

    code = "from lowbit.models import synthetic_tokenizer as s; import hashlib; " + (
        "print(hashlib.sha256(s(700).to_str().encode()).hexdigest())"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}  # fmt: skip
    import hashlib

    assert runs == {hashlib.sha256(synthetic_tokenizer(700).to_str().encode()).hexdigest() + "\n"}


def test_hf_tokenizer_reads_saved_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    save_hf_dir(tmp_path, LLAMA, synthetic_weights(LLAMA), tokenizer=synthetic_tokenizer(LLAMA.vocab_size))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = "Hello, world! Ünïcödé 🙂"
    assert hf(text)["input_ids"] == synthetic_tokenizer(LLAMA.vocab_size).encode(text).ids
    assert (hf.bos_token_id, hf.eos_token_id) == (1, 2)


def test_save_checks_weights_and_dtype(tmp_path):
    weights = dict(synthetic_weights(LLAMA).materialize())
    del weights["model.norm.weight"]
    with pytest.raises(ValueError, match=r"missing model\.norm\.weight"):
        save_hf_dir(tmp_path, LLAMA, weights)
    with pytest.raises(ValueError, match="float64"):
        save_hf_dir(tmp_path, LLAMA, synthetic_weights(LLAMA), dtype="float64")


def test_chunked_tensor_does_not_depend_on_thread_count(monkeypatch):
    import lowbit.models.synthetic as synthetic

    arch = dataclasses.replace(LLAMA, vocab_size=2500, hidden_size=512, head_dim=128)  # 1.28M elements: 2 chunks
    parallel = synthetic.synthetic_tensor(arch, 3, "model.embed_tokens.weight")
    monkeypatch.setattr(synthetic.os, "cpu_count", lambda: 1)
    serial = synthetic.synthetic_tensor(arch, 3, "model.embed_tokens.weight")
    np.testing.assert_array_equal(parallel, serial)
    first, second = parallel.reshape(-1)[: synthetic.CHUNK], parallel.reshape(-1)[synthetic.CHUNK :]
    assert abs(first.std() - second.std()) < 0.01 * first.std()  # both chunks drawn from the same distribution
    assert not np.array_equal(first[: second.size], second)
