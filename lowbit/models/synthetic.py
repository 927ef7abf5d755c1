"""Synthetic models: deterministic random weights for any `ArchConfig`, and a byte-level BPE tokenizer built
in-process. No downloads; the same seed gives the same bits on every machine (numpy PCG64).

Each chunk of 2^20 elements of a tensor has its own stream, `Generator(PCG64(SeedSequence(seed,
spawn_key=(hash(name), chunk))))`, so tensors are made lazily, in any order, one at a time, chunks on parallel
threads (a 1B model costs nothing until read, and ~4 GB if all of it is materialised as float32). Values are
rounded to `arch.torch_dtype` (bf16 / fp16), so saving at that dtype and loading back is exact.
Distributions (HF init, plus what makes the next-token distribution non-trivial):
    linear weights, biases   N(0, 0.02²)                          (HF initializer_range)
    norm weights             1 + N(0, 0.05²)                       (not all ones, so tests are not symmetric)
    embed_tokens, lm_head    N(0, (logit_std / sqrt(hidden))²)     logits ≈ N(0, logit_std²) after the final
                             norm: peaked but not one-hot next-token distributions (default logit_std 4)
"""

from __future__ import annotations

import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np

from lowbit.models.arch import ArchConfig
from lowbit.models.weights import LazyWeights

LINEAR_STD = 0.02
NORM_NOISE = 0.05
LOGIT_STD = 4.0
CHUNK = 1 << 20  # elements per random stream (fixed: part of what a seed means)
ROUND_TO = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def tensor_rng(seed: int, name: str, chunk: int = 0) -> np.random.Generator:
    """The random stream of chunk `chunk` of tensor `name` under `seed` (independent of every other one)."""
    key = np.frombuffer(hashlib.blake2b(name.encode(), digest_size=16).digest(), dtype="<u4")
    spawn_key = (*(int(k) for k in key), chunk)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=spawn_key)))


def synthetic_tensor(arch: ArchConfig, seed: int, name: str, logit_std: float = LOGIT_STD) -> np.ndarray:
    """Tensor `name` of the synthetic model (float32, values representable in arch.torch_dtype). Made in
    chunks of CHUNK elements, each from its own stream, on several threads (numpy releases the GIL while
    filling); the values do not depend on the thread count."""
    shape = arch.param_shapes()[name] if name != "lm_head.weight" else (arch.vocab_size, arch.hidden_size)
    if name.endswith("norm.weight"):
        scale, shift = NORM_NOISE, 1.0
    elif name in ("model.embed_tokens.weight", "lm_head.weight"):
        scale, shift = logit_std / float(np.sqrt(arch.hidden_size)), 0.0
    else:
        scale, shift = LINEAR_STD, 0.0
    out = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=np.float32)
    round_to = ROUND_TO.get(arch.torch_dtype)

    def fill(start: int) -> None:
        x = out[start : start + CHUNK]
        tensor_rng(seed, name, start // CHUNK).standard_normal(dtype=np.float32, out=x)
        x *= np.float32(scale)
        x += np.float32(shift)
        if round_to is not None:
            x[...] = x.astype(round_to)

    starts = range(0, out.size, CHUNK)
    if len(starts) > 1:
        with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
            list(pool.map(fill, starts))
    else:
        fill(0)
    return out.reshape(shape)


def synthetic_weights(arch: ArchConfig, seed: int = 0, logit_std: float = LOGIT_STD) -> LazyWeights:
    """Deterministic random weights for every parameter of `arch`, made lazily per tensor (see module doc)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")
    return LazyWeights(
        arch.param_shapes(),
        functools.partial(synthetic_tensor, arch, int(seed), logit_std=logit_std),
        dtype=arch.torch_dtype,
        source=f"synthetic(seed={seed})",
    )


# -- tokenizer -----------------------------------------------------------------------------------------
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama 2
BYTE_TOKENS = 256

_TEXT = """\
The quick brown fox jumps over the lazy dog. A model compiler turns a checkpoint and a quantization recipe
into a serving artifact: weights are packed into low-bit codes with scales and zeros, kernels are chosen for
every shape, and the runtime streams tokens back to the user one at a time. Numbers are stored in four bits,
three bits, six bits or eight bits; groups of thirty-two, sixty-four or one hundred and twenty-eight weights
share a scale. The attention cache keeps keys and values for every layer and every head, page by page.
Hello, world! How are you today? It is a fine day to test a language model with random weights.
def main(): return [x * 2 for x in range(10)]  # code, numbers 0123456789 and punctuation .,;:!?'"()[]{}
Ünïcödé, naïve café, Straße, 日本語のテキスト, 中文文本, Русский текст, العربية, emoji 🙂🚀.
"""


@functools.lru_cache(maxsize=8)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(vocab_size), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", SPECIAL_TOKENS.index("<s>"))]
    )
    short = vocab_size - tok.get_vocab_size()
    if short > 0:  # the corpus ran out of merges: fill the ids so every id decodes to something
        tok.add_special_tokens([f"<extra_{i}>" for i in range(short)])
    return tok.to_str()


def _corpus(vocab_size: int) -> list[str]:
    """The built-in text (repeated, so its words merge first) and made-up words enough for `vocab_size`."""
    rng = np.random.Generator(np.random.PCG64(0))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 10, size=vocab_size)
    words = ["".join(rng.choice(letters, size=n)) for n in lengths]
    made_up = [" ".join(words[i : i + 64]) for i in range(0, len(words), 64)]
    return [_TEXT] * 64 + made_up


def synthetic_tokenizer(vocab_size: int):
    """A byte-level BPE `tokenizers.Tokenizer` with exactly `vocab_size` ids: <unk>=0, <s>=1, </s>=2, the
    256 byte tokens, then merges trained (deterministically, in-process) on a built-in text. Round-trips any
    UTF-8 text; encode adds <s> in front (like Llama 2)."""
    from tokenizers import Tokenizer

    minimum = len(SPECIAL_TOKENS) + BYTE_TOKENS
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < minimum:
        raise ValueError(
            f"vocab_size {vocab_size!r} is too small for a byte-level tokenizer: it needs at least {minimum} ids "
            f"({BYTE_TOKENS} byte tokens + {len(SPECIAL_TOKENS)} specials {list(SPECIAL_TOKENS)})"
        )
    return Tokenizer.from_str(_tokenizer_json(int(vocab_size)))


__all__ = ["SPECIAL_TOKENS", "synthetic_tensor", "synthetic_tokenizer", "synthetic_weights", "tensor_rng"]
