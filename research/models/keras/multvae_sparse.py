"""The fast training path of ``multvae`` (issue 16): the user's bag kept sparse from the table to
the loss, and Adam as TensorFlow's fused kernel. Each piece computes what the dense path computes
(the same model, the same loss, the same dropout mask, the same Adam formula) in another order of
float32 operations; ``tests/test_multvae_sparse.py`` checks losses and gradients against the dense
path and fails when a piece is broken.

- ``bag_tensor``: a batch's bag as a ``tf.SparseTensor`` (rows in order, anime ascending within a
  row: the ragged table's order), never a (B, anime) tensor.
- ``l2_normalize_rows``: ``tf.math.l2_normalize(x, axis=1)`` of that bag (x · rsqrt(max(Σx², 1e-12))).
- ``sparse_layer``: a ``Dense`` layer applied to a sparse input: act(x W + b) with
  ``tf.sparse.sparse_dense_matmul``, whose gradient with respect to W is dense (anime x width),
  computed from the nonzeros. (Keras' own ``Dense`` on a ``SparseTensor`` uses
  ``embedding_lookup_sparse``, whose gradient is one row per nonzero: more floats than the dense
  kernel at batch 128 x 183 anime a user.)
- ``multinomial_nll_sparse``: −Σ_i x_i log softmax(l)_i = (Σ_i x_i) · logsumexp(l) − Σ_{x_i≠0} x_i l_i,
  the logits gathered at the bag's nonzeros.
- ``FusedAdam``: ``tf.keras.optimizers.Adam`` whose dense update is ``tf.raw_ops.ResourceApplyAdam``
  (one pass over var, m, v and the gradient instead of Keras' chain of whole-array temporaries): the
  same update m += (g − m)(1 − β1), v += (g² − v)(1 − β2), var −= α m / (√v + ε),
  α = lr √(1 − β2^t) / (1 − β1^t) (Keras' ``Adam.update_step`` and TF's kernel agree on the formula;
  rounding differs at ~1e-7 relative). Sparse gradients, AMSGrad, adaptive ε and multi-replica
  strategies take Keras' update unchanged. Same slot variables, so checkpoints are interchangeable.
"""
from __future__ import annotations

import tensorflow as tf

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from research.models.keras.optimizers import adam_state


def bag_tensor(rowids, cols, vals, n_rows, n_cols) -> tf.SparseTensor:
    """The (n_rows, n_cols) SparseTensor of triples (row, column, value), in the given order."""
    idx = tf.stack([tf.cast(rowids, tf.int64), tf.cast(cols, tf.int64)], axis=1)
    shape = tf.stack([tf.cast(n_rows, tf.int64), tf.cast(n_cols, tf.int64)])
    return tf.SparseTensor(idx, vals, shape)


def n_rows(bag: tf.SparseTensor):
    return tf.cast(bag.dense_shape[0], tf.int32)


def row_sums(bag: tf.SparseTensor):
    """Σ_i x_ui per row -> (rows,) (0 for an empty row)."""
    return tf.math.unsorted_segment_sum(bag.values, bag.indices[:, 0], n_rows(bag))


def l2_normalize_rows(bag: tf.SparseTensor, epsilon: float = 1e-12) -> tf.SparseTensor:
    """``tf.math.l2_normalize(dense(bag), axis=1)`` on the nonzeros."""
    sq = tf.math.unsorted_segment_sum(tf.square(bag.values), bag.indices[:, 0], n_rows(bag))
    inv = tf.math.rsqrt(tf.maximum(sq, epsilon))
    return bag.with_values(bag.values * tf.gather(inv, bag.indices[:, 0]))


def matmul(a, b, dtype: str = "float32"):
    """``a @ b`` in float32, or with both factors rounded to bfloat16 (``dtype="bfloat16"``: the
    product and, through the casts, both gradient products run as bfloat16 matmuls, which this
    CPU's AMX units do ~7x faster; the result, its sum and the variables stay float32)."""
    if dtype == "float32":
        return tf.matmul(a, b)
    return tf.cast(tf.matmul(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)), tf.float32)


def dense_apply(layer, x, dtype: str = "float32"):
    """``layer(x)`` for a built-or-not ``tf.keras.layers.Dense`` and a dense ``x``, its kernel
    product in ``dtype`` (``matmul``); float32 is Keras' own call."""
    if dtype == "float32":
        return layer(x)
    if not layer.built:
        layer(tf.zeros([1, int(x.shape[-1])], tf.float32))
    out = matmul(x, layer.kernel, dtype)
    if layer.use_bias:
        out = tf.nn.bias_add(out, layer.bias)
    return layer.activation(out) if layer.activation is not None else out


def sparse_layer(layer, x, width: int, dtype: str = "float32"):
    """``layer(x)`` for a ``tf.keras.layers.Dense`` and a sparse or dense ``x`` of ``width``
    columns, the kernel product in ``dtype`` (``matmul``). An unbuilt layer is built by Keras' own
    call on one row of zeros, so that its variables are named and tracked as the dense path's."""
    if not isinstance(x, tf.SparseTensor):
        return dense_apply(layer, x, dtype)
    if not layer.built:
        layer(tf.zeros([1, int(width)], x.values.dtype))
    cols, pos = tf.unique(x.indices[:, 1])  # the batch's anime, compacted
    xc = tf.scatter_nd(tf.stack([x.indices[:, 0], tf.cast(pos, tf.int64)], axis=1), x.values,
                       tf.stack([x.dense_shape[0], tf.cast(tf.size(cols), tf.int64)]))
    out = matmul(xc, tf.gather(layer.kernel, cols), dtype)
    if layer.use_bias:
        out = tf.nn.bias_add(out, layer.bias)
    return layer.activation(out) if layer.activation is not None else out


def multinomial_nll_sparse(logits, bag: tf.SparseTensor):
    """Per-row −Σ_i x_i log softmax(logits)_i of (B, n) logits and a sparse bag -> (B,)."""
    lse = tf.reduce_logsumexp(logits, axis=-1)
    picked = tf.gather_nd(logits, bag.indices)
    dot = tf.math.unsorted_segment_sum(bag.values * picked, bag.indices[:, 0], tf.shape(logits)[0])
    return row_sums(bag) * lse - dot


class FusedAdam(tf.keras.optimizers.Adam):
    """Keras' Adam, the dense update as TensorFlow's fused ``ResourceApplyAdam`` (module docstring)."""

    def update_step(self, gradient, variable):
        if (isinstance(gradient, tf.IndexedSlices) or self.amsgrad or getattr(self, "adaptive_epsilon", False)
                or tf.distribute.has_strategy()):
            return super().update_step(gradient, variable)
        lr, local_step, beta_1, beta_2, m, v = adam_state(self, variable)
        dtype = variable.dtype
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.handle, v=v.handle, beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step), lr=lr, beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=gradient, use_locking=False)
