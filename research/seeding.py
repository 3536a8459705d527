"""One top-level seed per run; every random thing gets a child seed spawned from it.

Child seeds come from ``numpy.random.SeedSequence(seed).spawn``-style keyed derivation, so adding a
model to a config does not change the seeds (and so the numbers) of the others: the child seed of
a component depends only on the top-level seed and the component's name.
"""
from __future__ import annotations

import hashlib
import os
import random

import numpy as np


def child_seed(seed: int, name: str) -> int:
    """A 31-bit seed derived from ``seed`` and a component ``name`` (stable across runs)."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([int(seed), key]).generate_state(1)[0] & 0x7FFFFFFF)


def rng(seed: int, name: str = "") -> np.random.Generator:
    """A numpy Generator for a component."""
    return np.random.default_rng(child_seed(seed, name) if name else seed)


def seed_everything(seed: int, tensorflow: bool = False) -> None:
    """Seed Python, NumPy and (when asked) TensorFlow, and make TF ops deterministic on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    if tensorflow:
        import tensorflow as tf

        tf.keras.utils.set_random_seed(seed)
        try:
            tf.config.experimental.enable_op_determinism()
        except Exception:  # pragma: no cover - older TF
            pass
