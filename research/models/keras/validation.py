"""The harness's ndcg@k inside the TensorFlow graph, for early stopping of the ranking models.

``research.eval.harness.evaluate(part="val")`` ranks, for each validation user, every candidate
anime (anime with a training row) except the user's training anime, and counts every validation
anime as relevant (binary gain). ``ndcg_at_k`` does the same on a batch of score rows, so a model
that stops early on it stops on the number the harness would report (on the sampled users).
Every in-graph validation of the project calls this one function: there is no second ndcg.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def ndcg_at_k(scores, candidates, seen, targets, k: int):
    """Per-row ndcg@k of ``scores`` as the harness computes it on the validation part.

    Args:
        scores: (B, n_items) float scores, higher = more recommended.
        candidates: (n_items,) bool, the anime with a training interaction.
        seen: a ``tf.RaggedTensor`` (B, None) of each row's training anime (excluded).
        targets: (B, T) int32 validation anime per row, -1 = padding.
        k: the cut-off.

    Returns:
        (B,) float32 ndcg@k (0 for a row without targets; the caller feeds only rows with one).
    """
    n_items = tf.shape(scores)[1]
    neg = tf.fill(tf.shape(scores), tf.constant(-np.inf, scores.dtype))
    s = tf.where(candidates[None, :], scores, neg)
    idx = tf.stack([tf.cast(seen.value_rowids(), tf.int32), tf.cast(seen.flat_values, tf.int32)], axis=1)
    s = tf.tensor_scatter_nd_update(s, idx, tf.fill([tf.shape(idx)[0]], tf.constant(-np.inf, s.dtype)))
    k = tf.minimum(int(k), n_items)
    vals, top = tf.math.top_k(s, k=k)
    hits = tf.reduce_any(top[:, :, None] == targets[:, None, :], axis=-1) & tf.math.is_finite(vals)
    disc = 1.0 / (tf.math.log(tf.cast(tf.range(k), tf.float32) + 2.0) / np.log(2.0))
    dcg = tf.reduce_sum(tf.cast(hits, tf.float32) * disc, axis=1)
    n_rel = tf.reduce_sum(tf.cast(targets >= 0, tf.int32), axis=1)
    idcg = tf.gather(tf.concat([[0.0], tf.cumsum(disc)], 0), tf.minimum(n_rel, k))
    return dcg / tf.maximum(idcg, 1e-12)


def validation_targets(data, max_users: int, seed: int) -> dict[str, np.ndarray]:
    """One row per validation user: ``user`` (int32) and ``targets`` (their validation anime,
    padded with -1), over at most ``max_users`` users (a sample seeded by ``seed``)."""
    pairs = np.unique(data.user.astype(np.int64) * data.n_items + data.item)
    users, counts = np.unique(pairs // data.n_items, return_counts=True)
    rows = np.repeat(np.arange(len(users)), counts)
    targets = np.full((len(users), max(int(counts.max()) if len(counts) else 1, 1)), -1, np.int32)
    targets[rows, np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)] = pairs % data.n_items
    if len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users, targets = users[pick], targets[pick]
    return {"user": users.astype(np.int32), "targets": targets}
