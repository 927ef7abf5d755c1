"""quantization.decode_activations: parsed, refused when unknown, and handed to the graph passes."""

from __future__ import annotations

import pytest


def test_decode_activations_reaches_the_graph_passes():
    from lowbit.compiler.compile import pass_context
    from lowbit.config import RecipeError, arch_config, load_config

    cfg = load_config("examples/tiny-llama.yaml", ["quantization.decode_activations=int8"])
    assert cfg.quantization.decode_activations == "int8"
    assert pass_context(cfg, arch_config(cfg)).decode_activations == "int8"
    assert load_config("examples/tiny-llama.yaml").quantization.decode_activations == "float"
    with pytest.raises(RecipeError, match=r"quantization\.decode_activations"):
        load_config("examples/tiny-llama.yaml", ["quantization.decode_activations=int4"])
