"""``TFRSModel``: the ``tfrs.Model`` the Keras models build, whose logged ``loss`` is the epoch
mean, and whose ``train_step`` is right under a multi-worker strategy (each replica's loss weighted
by its share of the global batch, or, for a loss summed over the batch, taken as it is).

Under a strategy with more than one replica (``TF_CONFIG``; docs/DISTRIBUTED.md) it also makes the
epoch logs global: Keras sums the step outputs of the replicas, and keeps them when their names are
not exactly the model's metrics (a model that reports a subset, or a non-metric value such as
Mult-VAE's β), so a mean would be logged as the sum of the workers' means.
``_validate_and_get_metrics_result`` takes every metric's value from its variables (summed over the
replicas, i.e. the global mean), and divides the values every replica computes alike
(``replica_invariant_logs``) by the replica count. Without a strategy nothing of this runs.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_rows(n):
    """Under a strategy, in a replica: (the first row of this replica's slice in the global batch,
    the rows of the global batch), from this replica's row count ``n`` (a scalar int32). One
    all-gather; the slices are consecutive in replica order (``InMemoryPipeline.replica_dataset``),
    so a draw of random numbers for the whole global batch, sliced at these rows, gives every
    example the noise a one-worker step draws for it."""
    ctx = tf.distribute.get_replica_context()
    counts = ctx.all_gather(tf.reshape(tf.cast(n, tf.int32), [1]), axis=0)  # (replicas,)
    first = tf.reduce_sum(counts[:ctx.replica_id_in_sync_group])
    return first, tf.reduce_sum(counts)


def global_noise(draw, shape, rows):
    """``draw(shape)`` (a stateless random draw of a fixed seed) for this replica's rows of the
    global batch: ``rows`` None (no strategy) draws ``shape`` itself, as always; else (first, total)
    from ``replica_rows``: the (total, ...) draw of a one-worker step, rows [first, first + shape[0])."""
    if rows is None:
        return draw(shape)
    first, total = rows
    full = draw(tf.concat([tf.reshape(total, [1]), shape[1:]], 0))
    return full[first:first + shape[0]]


class TFRSModel(tfrs.Model):
    """A ``tfrs.Model`` whose ``loss`` log is the mean over the epoch's examples.

    ``tfrs.Model.train_step`` reports the last batch's loss as ``loss``; here ``loss`` is a running
    mean over the epoch, weighted by batch size (so for a per-example-mean loss it is the epoch's
    per-example loss). Layer regularisation losses (``self.losses``) are included in ``loss``.
    Task metrics (e.g. ``rmse``) are logged as usual. Subclasses implement
    ``compute_loss(inputs, training)`` and ``call(inputs)`` (predictions, for saving / loading).

    ``loss_reduction``: how ``compute_loss`` reduces over the batch's examples: ``"mean"`` (a
    per-example mean) or ``"sum"`` (a sum of per-example terms, e.g. ``two_tower``'s full
    softmax). It decides how a replica's loss enters the global objective under a strategy.
    ``replica_invariant_logs``: names of step outputs that are not metrics and equal on every
    replica (Keras sums them over the replicas; the epoch logs divide them back).
    """

    loss_reduction = "mean"
    replica_invariant_logs: tuple = ()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    @staticmethod
    def _batch_size(inputs):
        return tf.cast(tf.shape(tf.nest.flatten(inputs)[0])[0], tf.float32)

    def _step_logs(self, loss, reg, inputs):
        n = self._batch_size(inputs)
        if num_replicas() > 1:
            loss = tf.where(n > 0, loss, tf.zeros_like(loss))  # an empty replica batch (weight 0)
            if self.loss_reduction == "sum":  # log the global batch's sum, as one worker does
                loss = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, loss)
        self.loss_tracker.update_state(loss + reg, sample_weight=n)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, inputs):
        replicas = num_replicas()
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            reg = tf.add_n(self.losses) if self.losses else tf.constant(0.0)
            if replicas > 1:
                total = self._replica_objective(loss, reg, inputs, replicas)
            else:
                total = loss + reg
        grads = tape.gradient(total, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._step_logs(loss, reg, inputs)

    def _replica_objective(self, loss, reg, inputs, replicas):
        """Under a tf.distribute strategy with ``replicas`` replicas, the part of the global batch's
        objective this replica differentiates: the optimizer sums the replicas' gradients, so the
        per-example-mean ``loss`` of this replica's n rows is weighted by n / N (N: the rows of the
        global batch, all-reduced), a summed ``loss`` (``loss_reduction = "sum"``) is taken as it
        is (the replicas' sums add up to the global batch's), and the layer penalties, counted once
        per step, by 1 / replicas. The sum over replicas is the one-worker objective of the same
        global batch. A replica with no rows this step (a last batch smaller than the replica
        count) contributes nothing."""
        n = self._batch_size(inputs)
        if self.loss_reduction == "sum":
            return tf.where(n > 0, loss, tf.zeros_like(loss)) + reg / float(replicas)
        total_n = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, n)
        return self.replica_share(n, total_n) * tf.where(n > 0, loss, tf.zeros_like(loss)) + reg / float(replicas)

    @staticmethod
    def replica_share(n, total_n):
        """This replica's share n / N of the global batch (0 for an empty global batch)."""
        return tf.math.divide_no_nan(n, total_n)

    def test_step(self, inputs):
        loss = self.compute_loss(inputs, training=False)
        reg = tf.add_n(self.losses) if self.losses else tf.constant(0.0)
        return self._step_logs(loss, reg, inputs)

    def _validate_and_get_metrics_result(self, logs):
        """Keras' epoch logs (the last step's outputs, replaced by the metrics' results when the
        names match); under a strategy of several replicas: every metric's result (global), each
        ``replica_invariant_logs`` value divided by the replica count (Keras summed it), and an
        error for any other output, whose sum over the replicas would be logged unnoticed."""
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas <= 1 or not isinstance(logs, dict):
            return super()._validate_and_get_metrics_result(logs)
        from tf_keras.src.utils import tf_utils

        results = tf_utils.sync_to_numpy_or_python_type(self.get_metrics_result())
        out = {}
        for key, value in logs.items():
            if key in results:
                out[key] = results[key]
            elif key in self.replica_invariant_logs:
                out[key] = value / replicas
            else:
                raise ValueError(f"{type(self).__name__}: the step output {key!r} is neither a metric nor "
                                 f"in replica_invariant_logs: under a strategy Keras logs its sum over the "
                                 f"{replicas} replicas")
        return out
