"""``two_tower``'s full-softmax loss: the exact softmax of each training pair over every candidate
anime, as functions of the tower outputs (no layers, no state), in two versions of one objective.

- ``full_softmax_loss``: the reference, differentiated by TF's autodiff (``fast_grad = False``).
- ``full_softmax_fast``: the same objective with a hand-written gradient and fewer (B x N) passes
  (``fast_grad = True``, the default); the history mask comes from ``history_mask_table`` (rows of
  a (users x candidates) table) or ``scattered_history_mask`` (built per batch).

Inputs, in both: ``q`` (B, dim) user vectors and ``c`` (N, dim) anime vectors of the N candidates
(unit vectors, so every logit q . c / T is at most 1 / T), ``target`` (B,) each pair's anime as a
candidate column, ``temperature`` T, an optional (B,) ``weight``. The history (each pair's user's
training anime, as candidate columns) is what ``mask_history`` leaves out of the denominator.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def full_softmax_loss(q, c, target, temperature: float, history=None, weight=None):
    """Sum over the batch of ``weight * -log softmax(q c^T / T)[target]``; with ``history`` (a ragged
    (B, None) table of each pair's user's training anime columns) those other than the target are
    left out of the denominator. No logQ: nothing is sampled.

    The masked denominator is the full one minus the history terms, gathered (B x |history|)
    rather than written into a (B x N) mask: the dense mask cost as much as the rest of the step.
    Both sums are taken relative to the row maximum, and the result is floored at the target's
    own term (which it contains), so the subtraction cannot go negative by round-off."""
    logits = tf.matmul(q, c, transpose_b=True) / temperature  # (B, N)
    b = tf.shape(q)[0]
    top = tf.stop_gradient(tf.reduce_max(logits, axis=1))
    tgt = tf.gather_nd(logits, tf.stack([tf.range(b), target], axis=1))
    den = tf.reduce_sum(tf.exp(logits - top[:, None]), axis=1)
    if history is not None:
        h = history  # (B, None): each pair's user's training anime
        row = tf.cast(h.value_rowids(), tf.int32)
        other = tf.exp(tf.gather_nd(logits, tf.stack([row, h.flat_values], axis=1)) - tf.gather(top, row))
        other = tf.where(h.flat_values == tf.gather(target, row), tf.zeros_like(other), other)
        den = tf.maximum(den - tf.math.unsorted_segment_sum(other, row, b), tf.exp(tgt - top))
    ce = top + tf.math.log(den) - tgt
    if weight is not None:
        ce *= weight
    return tf.reduce_sum(ce)


def history_mask_table(n_users: int, n_cols: int, hist_indptr, hist_cols: np.ndarray) -> np.ndarray:
    """(n_users, n_cols) bool: True where candidate column j is one of user u's training anime
    (``hist_cols``: the histories as candidate columns, CSR rows by ``hist_indptr``)."""
    hist_cols = np.asarray(hist_cols)
    if len(hist_cols) and (hist_cols.min() < 0 or hist_cols.max() >= n_cols):
        raise ValueError(f"history columns must lie in [0, {n_cols}): drop non-candidates first "
                         "(a -1 would mark the last column)")
    table = np.zeros((n_users, n_cols), np.bool_)
    h = np.asarray(hist_indptr, np.int64)
    table[np.repeat(np.arange(n_users), np.diff(h)), hist_cols] = True
    return table


def scattered_history_mask(history, n_rows, n_cols):
    """(n_rows, n_cols) bool from a ragged (n_rows, None) table of history columns, scattered
    (B x |history| entries) for one batch."""
    h = history
    idx = tf.stack([tf.cast(h.value_rowids(), tf.int32), h.flat_values], axis=1)
    shape = tf.stack([n_rows, n_cols])
    return tf.scatter_nd(idx, tf.ones_like(h.flat_values, tf.int8), shape) > 0


def full_softmax_fast(q, c, target, temperature: float, mask=None, weight=None):
    """``full_softmax_loss``'s objective (``mask``: (B, N) bool, True = left out
    of the denominator unless it is the target) with a hand-written gradient and fewer (B x N) passes.

    E = exp(logits - top) with the user's training anime zeroed (a dense boolean mask), the
    target's own term added back, den = its row sum + the target's term; loss = top + log den -
    target logit. ``top`` is the bound 1 / T (both towers output unit vectors, so every logit is
    at most 1 / T; the ``-top`` is a 65th column of the matmul) unless 2 / T > 60, where the far
    terms could underflow, and then the row maximum. The gradient, with s = g / (den T) per row
    (g: the pair's weight): d q = s * (E c) + t c_target, d c = E^T (s * q) + the targets'
    t q rows, t = s E_target [target masked] - g / T: two matmuls on E and B-row corrections,
    no (B x N) temporary besides E. Autodiff of the reference builds several (B x N)
    temporaries and scatters B x |history| entries into a dense (B x N) gradient.

    Values equal ``full_softmax_loss``'s up to float round-off (the masked denominator is summed
    directly instead of as a difference, so there is no floor to apply)."""
    b = tf.shape(q)[0]
    tgt_idx = tf.stack([tf.range(b), target], axis=1)
    bound = 2.0 / temperature <= 60.0
    g_w = weight

    @tf.custom_gradient
    def f(q, c):
        qt = q / temperature
        if bound:  # logits - 1/T in the matmul: [q/T, -1/T] . [c, 1]
            top = tf.fill([b], 1.0 / temperature)
            z = tf.matmul(tf.concat([qt, tf.fill([b, 1], -1.0 / temperature)], 1),
                          tf.concat([c, tf.ones([tf.shape(c)[0], 1])], 1), transpose_b=True)
        else:
            logits = tf.matmul(qt, c, transpose_b=True)
            top = tf.reduce_max(logits, axis=1)
            z = logits - top[:, None]
        zt = tf.reduce_sum(qt * tf.gather(c, target), axis=1) - top  # target logit - top
        et = tf.exp(zt)
        e = tf.exp(z)
        if mask is not None:
            e = tf.where(mask, tf.zeros_like(e), e)
            t_in = tf.gather_nd(mask, tgt_idx)  # the target is one of the user's anime (always, in training)
            den = tf.reduce_sum(e, axis=1) + tf.where(t_in, et, tf.zeros_like(et))
        else:
            den = tf.reduce_sum(e, axis=1)
        ce = tf.math.log(den) - zt
        if g_w is not None:
            ce *= g_w

        def grad(dy):
            g = dy * (g_w if g_w is not None else tf.ones_like(den))  # d loss / d ce, (B,)
            sc = g / (den * temperature)
            # the target's column: + s E_target if masked out of e (added back), - g / T
            t = (tf.where(t_in, sc * et, tf.zeros_like(sc)) if mask is not None else 0.0) - g / temperature
            ct = tf.gather(c, target)
            dq = sc[:, None] * tf.matmul(e, c) + t[:, None] * ct
            dc = tf.matmul(e, sc[:, None] * q, transpose_a=True)
            dc += tf.math.unsorted_segment_sum(t[:, None] * q, target, tf.shape(c)[0])
            return dq, dc

        return tf.reduce_sum(ce), grad

    return f(q, c)
