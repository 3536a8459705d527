"""``TFRSModel``: the ``tfrs.Model`` the Keras models build, whose logged ``loss`` is the epoch
mean, and whose ``train_step`` is right under a multi-worker strategy (each replica's loss weighted
by its share of the global batch)."""
from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


class TFRSModel(tfrs.Model):
    """A ``tfrs.Model`` whose ``loss`` log is the mean over the epoch's examples.

    ``tfrs.Model.train_step`` reports the last batch's loss as ``loss``; here ``loss`` is a running
    mean over the epoch, weighted by batch size (so for a per-example-mean loss it is the epoch's
    per-example loss). Layer regularisation losses (``self.losses``) are included in ``loss``.
    Task metrics (e.g. ``rmse``) are logged as usual. Subclasses implement
    ``compute_loss(inputs, training)`` and ``call(inputs)`` (predictions, for saving / loading).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    @staticmethod
    def _batch_size(inputs):
        return tf.cast(tf.shape(tf.nest.flatten(inputs)[0])[0], tf.float32)

    def _step_logs(self, loss, reg, inputs):
        n = self._batch_size(inputs)
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            loss = tf.where(n > 0, loss, tf.zeros_like(loss))  # an empty replica batch (weight 0)
        self.loss_tracker.update_state(loss + reg, sample_weight=n)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, inputs):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
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
        global batch, all-reduced) and the layer penalties, counted once per step, by 1 / replicas.
        The sum over replicas is the one-worker objective of the same global batch. A replica with
        no rows this step (a last batch smaller than the replica count) contributes nothing."""
        n = self._batch_size(inputs)
        total_n = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, n)
        share = tf.math.divide_no_nan(n, total_n)
        loss = tf.where(n > 0, loss, tf.zeros_like(loss))  # an empty batch's mean is NaN
        return share * loss + reg / float(replicas)

    def test_step(self, inputs):
        loss = self.compute_loss(inputs, training=False)
        reg = tf.add_n(self.losses) if self.losses else tf.constant(0.0)
        return self._step_logs(loss, reg, inputs)
