"""The optimizers of the Keras models: ``TrainConfig.optimizer``'s names, and ``LazyAdam``.

``make_optimizer(name, learning_rate)`` is what ``KerasRecommender.make_optimizer`` returns (a
subclass may override that hook, e.g. RecommenderNet's rate schedule on top of it).
"""
from __future__ import annotations

import tensorflow as tf

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def adam_state(opt, variable):
    """What an Adam update of ``variable`` reads from a Keras Adam ``opt``: the learning rate, the
    step (``iterations + 1``), β1 and β2 in the variable's dtype, and its first and second moment
    slots."""
    dtype = variable.dtype
    key = opt._var_key(variable)
    return (tf.cast(opt.learning_rate, dtype), tf.cast(opt.iterations + 1, dtype), tf.cast(opt.beta_1, dtype),
            tf.cast(opt.beta_2, dtype), opt._momentums[opt._index_dict[key]], opt._velocities[opt._index_dict[key]])


class LazyAdam(tf.keras.optimizers.Adam):
    """Adam that, for sparse (embedding) gradients, updates only the rows in the batch.

    Keras' Adam decays the moments of every row of a table at every step, even for a sparse
    gradient: the step costs O(table) and dominates small batches on large tables. Here rows absent
    from the batch keep their moments and values (as TF-Addons' LazyAdam); dense gradients use
    Adam unchanged. Duplicate indices in a batch are summed first.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        lr, step, b1, b2, m, v = adam_state(self, variable)
        alpha = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
        rows, pos = tf.unique(gradient.indices)
        g = tf.math.unsorted_segment_sum(gradient.values, pos, tf.shape(rows)[0])
        m_rows = b1 * tf.gather(m, rows) + (1 - b1) * g
        v_rows = b2 * tf.gather(v, rows) + (1 - b2) * tf.square(g)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    """The optimizer ``name`` ("lazy_adam", "adagrad", "sgd"; anything else: Adam) at ``learning_rate``."""
    if name == "lazy_adam":
        return LazyAdam(learning_rate=learning_rate)
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate=learning_rate)
    if name == "sgd":
        return tf.keras.optimizers.SGD(learning_rate=learning_rate)
    return tf.keras.optimizers.Adam(learning_rate=learning_rate)
