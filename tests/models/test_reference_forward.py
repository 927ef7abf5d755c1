"""The float reference beyond logits: layer-by-layer use equals the whole forward, captured linear inputs
equal HF's (forward pre-hooks), overrides equal an HF model with those weights, causality and batching laws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_oracle import CASES, hf_logits, random_ids, rel_err, save, tiny_model

from lowbit.models import load_hf_dir
from lowbit.models.reference import capture_linear_inputs, decoder_layer, embed, final_logits, reference_logits


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    family, kw = CASES["llama_gqa_llama3_rope"]
    model = tiny_model(family, seed=11, **{**kw, "attention_bias": True})
    loaded = load_hf_dir(save(model, tmp_path_factory.mktemp("llama")))
    return model, loaded.arch, loaded.weights


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    family, kw = CASES["qwen2_tied_window"]
    model = tiny_model(family, seed=12, **kw)
    loaded = load_hf_dir(save(model, tmp_path_factory.mktemp("qwen")))
    return model, loaded.arch, loaded.weights


def test_layer_by_layer_equals_whole_forward(qwen):
    _, arch, weights = qwen
    ids = random_ids(arch.vocab_size, batch=2, length=9, seed=0)
    hidden = embed(arch, weights, ids)
    for layer in range(arch.num_layers):
        hidden = decoder_layer(arch, weights, layer, hidden, positions=np.arange(9))
    np.testing.assert_array_equal(final_logits(arch, weights, hidden).numpy(), reference_logits(arch, weights, ids))


def test_causal_and_batch_independent(llama):
    _, arch, weights = llama
    ids = random_ids(arch.vocab_size, batch=3, length=14, seed=1)
    full = reference_logits(arch, weights, ids)
    assert rel_err(reference_logits(arch, weights, ids[:, :6]), full[:, :6]) < 1e-12  # prefix sees no future
    assert rel_err(reference_logits(arch, weights, ids[1:2]), full[1:2]) < 1e-12
    assert reference_logits(arch, weights, ids, dtype=torch.float32).dtype == np.float32


def test_capture_equals_hf_linear_inputs(llama, qwen):
    for model, arch, weights in (llama, qwen):
        ids = random_ids(arch.vocab_size, batch=2, length=10, seed=2)
        seen: dict[str, np.ndarray] = {}

        def hook(name: str, seen: dict[str, np.ndarray] = seen):
            def record(module, args) -> None:  # returns None: the input is left as it is
                seen[name] = args[0].reshape(-1, args[0].shape[-1]).numpy().copy()

            return record

        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        hooks = [module.register_forward_pre_hook(hook(name)) for name, module in linears]
        try:
            hf_logits(model, ids)
        finally:
            for h in hooks:
                h.remove()
        got = capture_linear_inputs(arch, weights, ids)
        assert list(got) == [s.name for s in arch.linears()]
        assert set(got) == set(seen)
        for name, x in seen.items():
            assert got[name].shape == (20, x.shape[1])
            assert rel_err(got[name], x) < 1e-5, name
        a, m = "model.layers.1.self_attn", "model.layers.1.mlp"
        assert got[f"{a}.q_proj"] is got[f"{a}.k_proj"] is got[f"{a}.v_proj"]
        assert got[f"{m}.gate_proj"] is got[f"{m}.up_proj"] and got[f"{m}.down_proj"] is not got[f"{m}.up_proj"]


def test_capture_subset_and_law(llama):
    _, arch, weights = llama
    ids = random_ids(arch.vocab_size, batch=1, length=7, seed=3)
    got = capture_linear_inputs(arch, weights, ids, modules={"lm_head", "model.layers.0.mlp.down_proj"})
    assert sorted(got) == ["lm_head", "model.layers.0.mlp.down_proj"]
    logits = got["lm_head"] @ weights["lm_head.weight"].T.astype(np.float64)  # the law: logits = x W^T
    assert rel_err(logits, reference_logits(arch, weights, ids)[0]) < 1e-12
    with pytest.raises(KeyError, match="not linears"):
        capture_linear_inputs(arch, weights, ids, modules={"model.layers.0.mlp.up"})


def test_overrides_equal_hf_with_those_weights(llama):
    model, arch, weights = llama
    rng = np.random.default_rng(4)
    new = {
        "model.layers.0.mlp.down_proj": rng.standard_normal((64, 80)).astype(np.float32) * 0.1,
        "model.layers.1.self_attn.q_proj.bias": rng.standard_normal(64).astype(np.float32),
        "lm_head": rng.standard_normal((96, 64)).astype(np.float32) * 0.1,
    }
    ids = random_ids(arch.vocab_size, batch=2, length=8, seed=5)
    ours = reference_logits(arch, weights, ids, overrides=new)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for key, value in new.items():
                name = key if key.endswith("bias") else f"{key}.weight"
                model.get_parameter(name).copy_(torch.from_numpy(value))
        assert rel_err(ours, hf_logits(model, ids)) < 1e-5
    finally:
        model.load_state_dict(state)
    same = {"model.layers.0.mlp.down_proj.weight": weights["model.layers.0.mlp.down_proj.weight"]}
    np.testing.assert_array_equal(
        reference_logits(arch, weights, ids, overrides=same), reference_logits(arch, weights, ids)
    )
    assert rel_err(ours, reference_logits(arch, weights, ids)) > 1e-2


def test_override_of_tied_lm_head_leaves_embedding(qwen):
    _, arch, weights = qwen
    ids = random_ids(arch.vocab_size, batch=1, length=6, seed=6)
    head = weights["model.embed_tokens.weight"] * 2
    hidden = embed(arch, weights, ids)
    for layer in range(arch.num_layers):
        hidden = decoder_layer(arch, weights, layer, hidden)
    expected = final_logits(arch, weights, hidden).numpy() * 2  # only the head is scaled
    assert rel_err(reference_logits(arch, weights, ids, overrides={"lm_head": head}), expected) < 1e-12


def test_errors(llama):
    _, arch, weights = llama
    ids = random_ids(arch.vocab_size, batch=1, length=4, seed=7)
    with pytest.raises(KeyError, match=r"override 'model\.layers\.0\.mlp\.up'"):
        reference_logits(arch, weights, ids, overrides={"model.layers.0.mlp.up": np.zeros(3)})
    with pytest.raises(ValueError, match=r"up_proj' has shape \(3,\), expected \(80, 64\)"):
        reference_logits(arch, weights, ids, overrides={"model.layers.0.mlp.up_proj": np.zeros(3)})
    with pytest.raises(ValueError, match="outside the vocab"):
        reference_logits(arch, weights, ids + arch.vocab_size)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        reference_logits(arch, weights, ids[0])
    with pytest.raises(ValueError, match="layer 2 is outside"):
        decoder_layer(arch, weights, 2, embed(arch, weights, ids))
    with pytest.raises(ValueError, match="positions must be 4 integers"):
        decoder_layer(arch, weights, 0, embed(arch, weights, ids), positions=np.arange(3))
