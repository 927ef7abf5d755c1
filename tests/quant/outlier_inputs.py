"""Calibration activations with outlier channels, for the AWQ and GPTQ tests.

LLM activations are correlated across channels (a low-dimensional signal plus noise) and a few channels
are 20–50× larger than the rest. Both matter: AWQ exploits the outlier channels, GPTQ the correlations
(with independent channels H = 2xᵀx/T is diagonal up to sampling noise, and GPTQ reduces to RTN).
`outlier_source(rng, k)` fixes one distribution (mixing matrix, outlier channels and gains); calling the
returned function draws tokens from it, so calibration and held-out tokens share the outlier channels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LATENT_DIM = 16


def outlier_source(
    rng: np.random.Generator, k: int, n_outliers: int = 4, gain: tuple[float, float] = (20.0, 50.0)
) -> Callable[[np.random.Generator, int], np.ndarray]:
    mix = rng.standard_normal((LATENT_DIM, k)) / 4  # [r, K]
    channels = rng.choice(k, n_outliers, replace=False)
    gains = rng.uniform(*gain, n_outliers)

    def draw(r: np.random.Generator, tokens: int) -> np.ndarray:
        x = r.standard_normal((tokens, LATENT_DIM)) @ mix + 0.3 * r.standard_normal((tokens, k))  # [T, K]
        x[:, channels] *= gains
        return x

    return draw
