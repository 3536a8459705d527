"""The Keras side of a multi-worker fit (only when ``TF_CONFIG`` is set; see ``research.distributed``
and docs/DISTRIBUTED.md).

``KerasRecommender.fit`` takes the strategy from ``strategy_for`` (models that are not right under
it raise ``ConfigError`` naming why, ``distributed.MULTI_WORKER``), checks every worker is at the
same fit (``agree_on_fit``), builds and compiles the model under ``MultiWorkerMirroredStrategy``'s
scope, and feeds each worker its slices of the same global batches
(``InMemoryPipeline.distributed_dataset``). ``TFRSModel.train_step`` weights each replica's mean loss
by its share of the global batch (the summed gradient is the one-worker gradient of that batch; a
summed loss, ``loss_reduction = "sum"``, enters as it is), so the Keras losses inside may average
over a replica's batch (``_allow_batch_means``); models with their own step (multvae, autorec) do
the same weighting and draw their noise for the global batch (``tfrs_model.replica_rows``), and
``TFRSModel`` makes the epoch logs the metrics' global values. Each worker
keeps its own checkpoints (``_WorkerBackupAndRestore``; a non-chief's ``log_dir`` is its scratch
folder), and all must resume at the same epoch (``_StartEpoch``). Without ``TF_CONFIG`` none of
this runs and the fit is the same as before.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from research.errors import ConfigError
from research.models.keras.files import _class_path, _json_default


def strategy_for(model):
    """The ``tf.distribute`` strategy to train ``model`` (a ``KerasRecommender``) under: None without
    ``TF_CONFIG``; else ``research.distributed.strategy()``, once the model is known to train
    correctly under it."""
    if not os.environ.get("TF_CONFIG"):
        return None
    from research import distributed

    distributed.check_supported(model)
    return distributed.strategy()


def agree_on_fit(model, train, val, epochs: int) -> None:
    """Every worker at this same fit of ``model`` (class, config, rows, epochs), or a clear error
    (not a hang)."""
    from research import distributed

    distributed.agree("model fit", json.dumps(
        {"class": _class_path(type(model)), "config": model.get_config(), "rows": len(train),
         "val_rows": len(val) if val is not None else 0, "epochs": epochs}, default=_json_default))


class _WorkerBackupAndRestore(tf.keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backups are this worker's own, on every worker of a multi-worker fit.

    Keras' callback saves only on the chief; the other workers write to a temporary folder that is
    deleted right away, and all restore from the one folder (a file system every host shares).
    Here each worker's ``backup_dir`` is its own (the chief's in the run folder, the others' in
    their scratch folders, see ``research.distributed``), so each saves where it restores from: the
    replicas hold the same weights, so each worker's copy is the model, and no shared file system
    is needed."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = self._training_state
        state.write_checkpoint_manager = state.read_checkpoint_manager


class _StartEpoch(tf.keras.callbacks.Callback):
    """The first epoch of a multi-worker fit: 0, or the one after the epoch this worker's backup
    holds (Keras' own rule for ``save_freq="epoch"``). At train begin (after ``BackupAndRestore``
    restored) it sets the pipeline's epoch, which the continuous distributed dataset starts from,
    and checks that every worker starts at the same epoch: otherwise their steps would not pair up,
    and a worker would wait for ever on a collective the others never start (no heartbeat fails).
    One all-gather of a number per fit."""

    def __init__(self, strategy, pipeline):
        super().__init__()
        self.strategy, self.pipeline = strategy, pipeline

    def on_train_begin(self, logs=None):
        state = getattr(self.model, "_training_state", None)
        saved = int(state._ckpt_saved_epoch.numpy()) if state is not None else -1
        start = saved + 1 if saved >= 0 else 0
        self.pipeline.set_epoch(start)
        s = self.strategy

        def mine():
            return tf.constant([start], tf.int64)

        @tf.function(autograph=False)
        def gather():
            return s.gather(s.run(mine), axis=0)

        starts = gather().numpy()
        lo, hi = int(starts.min()), int(starts.max())
        if lo != hi:
            from research import distributed

            kind, index = distributed.task()
            raise ConfigError(f"the workers resume at different epochs ({lo + 1} to {hi + 1}; "
                              f"{kind} {index} at {start + 1}): their checkpoint folders hold different states; "
                              f"delete them (the run folder's ckpt/ and {distributed.scratch_root().parent}) "
                              f"to start over")


def _allow_batch_means(model: tf.keras.Model) -> None:
    """Let the Keras losses inside ``model`` (e.g. a TFRS task's) average over the batch under a
    strategy, as ``compile()`` lets its own: Keras refuses it outside the built-in loss because the
    mean would then be over a replica's batch only. ``TFRSModel.train_step`` weights that mean by
    the replica's share of the global batch (``_replica_objective``), which makes it right."""
    for layer in model._flatten_layers(include_self=True):
        for value in vars(layer).values():
            if isinstance(value, tf.keras.losses.Loss):
                value._allow_sum_over_batch_size = True
