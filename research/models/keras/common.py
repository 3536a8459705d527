"""What every Keras / TFRS model of the project shares: ``KerasRecommender`` and ``TFRSModel``.

A Keras recommender is two objects:

- a ``tf.keras.Model`` (usually a ``TFRSModel``: a ``tfrs.Model`` whose logged ``loss`` is the
  epoch mean, not the last batch's) built by the subclass's ``build_model()``;
- the ``KerasRecommender`` wrapper (a ``Recommender``) that seeds, builds the tf.data pipelines,
  runs ``model.fit`` with early stopping, TensorBoard and resumable checkpoints, keeps the
  per-epoch history as plain lists, and saves / loads weights plus constructor arguments.

A subclass implements::

    class MyModel(KerasRecommender):
        monitor = "val_rmse"                  # what early stopping watches ("val_loss" by default)

        def __init__(self, dim=32, ..., **common):      # every argument stored as self.<name>
            super().__init__(**common); self.dim = dim

        def prepare(self, train) -> dict:      # optional: json-able / numpy state from train data
        def build_model(self) -> tf.keras.Model:        # uses self.meta, self.fit_state
        def features(self, data, training) -> dict:     # optional: numpy columns for tf.data
        def after_fit(self):                   # optional: pull numpy weights out for fast scoring
        def score(self, users) -> np.ndarray:
        def item_vectors(self) / user_vectors(self)     # optional

Constructor contract (needed by ``save``/``load``, the registry and keras-tuner): every constructor
argument is a plain value (int, float, str, bool, None, list) stored on the instance under the same
name. Hyperparameters are therefore constructor arguments; ``fit(train, val, epochs=N)`` trains for
exactly ``N`` epochs (Hyperband's resource) with early stopping unless ``early_stopping=False``.

Logging and checkpoints (only when folders are set):

- ``log_dir`` (set by the runner): TensorBoard scalars per epoch (``train/`` and ``validation/``:
  ``epoch_loss``, ``epoch_rmse``, ...) and, after fit, the item-embedding projector in ``log_dir``
  itself, a TensorBoard run of its own (``projector_config.pbtxt``, ``metadata.tsv`` with anime
  names, ``embedding.tsv``; the same vectors as ``embedding.ckpt-1*``).
- ``checkpoint_dir`` (constructor argument), else ``<log_dir>/../ckpt/<basename of log_dir>``:
  ``tf.keras.callbacks.BackupAndRestore`` state after every epoch, plus the history and the
  early-stopping state, so a fit interrupted after epoch ``e`` resumes at ``e + 1`` and ends exactly
  where an uninterrupted fit would (same data order: the pipeline's order is a function of
  ``(seed, epoch)``). The folder is emptied when a fit completes, and wiped if it holds the state of
  a different configuration.

Multi-worker (only when ``TF_CONFIG`` is set; see ``research.distributed`` and docs/DISTRIBUTED.md):
``fit`` builds and compiles the model under ``MultiWorkerMirroredStrategy``'s scope, feeds each worker
its slices of the same global batches (``InMemoryPipeline.distributed_dataset``),
``TFRSModel.train_step`` weights each replica's mean loss by its share of the global batch (the
summed gradient is the one-worker gradient of that batch), and each worker keeps its own
checkpoints (``_WorkerBackupAndRestore``; a non-chief's ``log_dir`` is its scratch folder). Models
that are not right under the strategy raise ``ConfigError`` naming why (``distributed.MULTI_WORKER``).
Without ``TF_CONFIG`` none of this runs and the fit is the same as before.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from research.config import TrainConfig
from research.data import tfdata
from research.data.interactions import Interactions, Meta
from research.errors import ConfigError
from research.models.base import Recommender
from research.results import save_npz
from research.seeding import child_seed, seed_everything

_STATE_FILE = "keras_model.json"
_WEIGHTS_FILE = "weights.npz"
_ARRAYS_FILE = "arrays.npz"


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
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        alpha = lr * tf.sqrt(1 - tf.pow(b2, step)) / (1 - tf.pow(b1, step))
        rows, pos = tf.unique(gradient.indices)
        g = tf.math.unsorted_segment_sum(gradient.values, pos, tf.shape(rows)[0])
        m_rows = b1 * tf.gather(m, rows) + (1 - b1) * g
        v_rows = b2 * tf.gather(v, rows) + (1 - b2) * tf.square(g)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


# ---- callbacks ----------------------------------------------------------------------------
class _History(tf.keras.callbacks.Callback):
    """Per-epoch logs as plain lists; persisted in ``state_dir`` so a resumed fit keeps them."""

    def __init__(self, state_dir: Path | None):
        super().__init__()
        self.state_dir = state_dir
        self.logs: dict[str, list] = {}
        self._checked = False

    def _path(self):
        return self.state_dir / "history.json" if self.state_dir else None

    def on_epoch_begin(self, epoch, logs=None):
        if self._checked:
            return
        self._checked = True
        # resumed at ``epoch``: take the persisted entries of the epochs before it
        p = self._path()
        if epoch > 0 and p is not None and p.exists():
            saved = json.loads(p.read_text())
            if len(saved.get("epoch", [])) >= epoch:
                self.logs = {k: v[:epoch] for k, v in saved.items()}

    def on_epoch_end(self, epoch, logs=None):
        self.logs.setdefault("epoch", []).append(epoch + 1)
        n = len(self.logs["epoch"])
        for k, v in (logs or {}).items():
            col = self.logs.setdefault(k, [])
            col.extend([math.nan] * (n - 1 - len(col)))
            col.append(float(v))
        if self._path() is not None:
            _write_json(self._path(), self.logs)


class _EarlyStopping(tf.keras.callbacks.Callback):
    """Early stopping on ``monitor`` that restores the best epoch's weights at the end of training,
    and whose state (best value, epoch, wait, best weights) survives an interruption."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float, state_dir: Path | None):
        super().__init__()
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, int(patience), float(min_delta)
        self.state_dir = state_dir
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = -1
        self.wait = 0
        self.best_weights = None
        self.stopped_epoch = -1
        self._checked = False

    def _better(self, value) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_begin(self, epoch, logs=None):
        if self._checked:
            return
        self._checked = True
        if epoch > 0 and self.state_dir is not None and (self.state_dir / "early_stopping.json").exists():
            st = json.loads((self.state_dir / "early_stopping.json").read_text())
            if st["epoch"] == epoch - 1:  # written at the end of the epoch the checkpoint holds
                self.best, self.best_epoch, self.wait = st["best"], st["best_epoch"], st["wait"]
                with np.load(self.state_dir / "best_weights.npz") as z:
                    self.best_weights = [z[f"w{i}"] for i in range(len(z.files))]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ConfigError(f"early stopping monitors {self.monitor!r}, but the logs only have "
                              f"{sorted(logs or {})}")
        value = float(value)
        if self._better(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_weights = self.model.get_weights()
            if self.state_dir is not None:
                save_npz(self.state_dir / "best_weights.npz", {f"w{i}": w for i, w in enumerate(self.best_weights)})
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True
        if self.state_dir is not None:
            _write_json(self.state_dir / "early_stopping.json",
                        {"epoch": epoch, "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait})

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


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


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---- the wrapper --------------------------------------------------------------------------
class KerasRecommender(Recommender):
    """Base class of the Keras / TFRS recommenders (see the module docstring for the contract).

    The training arguments (``epochs``, ``batch_size``, ``learning_rate``, ``patience``,
    ``early_stopping``, ``min_delta``, ``jit_compile``, ``eval_batch_size``, ``checkpoint_dir``,
    ``verbose``, ``optimizer``) are ``research.config.TrainConfig``'s: a subclass takes them as
    ``**train``, states its own defaults in ``train_defaults``, and reads them as attributes
    (``self.epochs`` is ``self.train.epochs``). ``seed`` seeds TF, NumPy and Python at fit, and
    (via a child seed) the data order.
    """

    #: validation log watched by early stopping, and its direction
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    #: train only on rows with a rating (rating models); ranking models set False
    rated_only: bool = True
    #: this model's defaults of TrainConfig fields (the rest are TrainConfig's)
    train_defaults: dict = {}

    def __init__(self, seed: int = 0, **train):
        super().__init__(seed)
        self.train = TrainConfig.build({**self.train_defaults, **train}, where=type(self).__name__)
        self.model: tf.keras.Model | None = None
        self.fit_state: dict = {}
        #: per-epoch logs of the last fit as plain lists: "epoch" (1-based), "loss", "val_loss", ...
        self.history: dict[str, list] = {}
        self.fit_epochs = 0  # epochs trained in the last fit (including resumed ones)
        self.best_epoch = 0  # 1-based epoch whose weights were kept (0: no early stopping)
        self.fit_seconds = 0.0

    @classmethod
    def param_defaults(cls) -> dict:
        """The constructor's own arguments plus the TrainConfig fields, at this model's defaults."""
        base = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        return {**super().param_defaults(), **base, **cls.train_defaults}

    # ---- hooks ---------------------------------------------------------------------------
    def prepare(self, train: Interactions) -> dict:
        """Statistics of the training data the model needs (e.g. the mean rating). Values must be
        json-able or numpy arrays; they are saved with the model and available as ``self.fit_state``."""
        return {}

    def build_model(self) -> tf.keras.Model:
        """The (uncompiled) Keras model, from ``self.meta`` and ``self.fit_state``."""
        raise NotImplementedError

    def features(self, data: Interactions, training: bool) -> dict[str, np.ndarray]:
        """Numpy feature columns for tf.data (default: ``user``, ``item``, ``rating``)."""
        return tfdata.interaction_features(data, rated_only=self.rated_only)

    def make_optimizer(self) -> tf.keras.optimizers.Optimizer:
        """The optimizer named by ``self.optimizer`` at ``learning_rate``."""
        name = self.optimizer
        if name == "lazy_adam":
            return LazyAdam(learning_rate=self.learning_rate)
        if name == "adagrad":
            return tf.keras.optimizers.Adagrad(learning_rate=self.learning_rate)
        if name == "sgd":
            return tf.keras.optimizers.SGD(learning_rate=self.learning_rate)
        return tf.keras.optimizers.Adam(learning_rate=self.learning_rate)

    def after_fit(self) -> None:
        """Called after ``fit`` and ``load``: e.g. copy weights to numpy for fast scoring."""

    # ---- config --------------------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor arguments (including ``seed``) and training arguments, read back from the
        instance."""
        out = dataclasses.asdict(self.train)
        for cls in type(self).__mro__:
            if cls is Recommender or "__init__" not in cls.__dict__:
                continue
            for name, p in inspect.signature(cls.__init__).parameters.items():
                if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name in out:
                    continue
                out[name] = getattr(self, name)
        return out

    def resolved_checkpoint_dir(self) -> Path | None:
        """Where resumable checkpoints go: ``checkpoint_dir``, else ``<log_dir>/../ckpt/<name>``
        (a multi-worker fit's non-chief workers: a private folder standing for ``checkpoint_dir``;
        their ``log_dir`` is already theirs)."""
        if self.checkpoint_dir:
            if os.environ.get("TF_CONFIG"):
                from research import distributed

                return distributed.private_dir(self.checkpoint_dir)
            return Path(self.checkpoint_dir)
        if self.log_dir:
            log = Path(self.log_dir)
            return log.parent / "ckpt" / log.name
        return None

    # ---- fitting -------------------------------------------------------------------------
    def _strategy(self):
        """The ``tf.distribute`` strategy to train under: None without ``TF_CONFIG``; else
        ``research.distributed.strategy()``, once this model is known to train correctly under it."""
        if not os.environ.get("TF_CONFIG"):
            return None
        from research import distributed

        distributed.check_supported(self)
        return distributed.strategy()

    def _compile(self) -> None:
        self.model = self.build_model()
        self.model.compile(optimizer=self.make_optimizer(), jit_compile=self.jit_compile)

    def fit(self, train: Interactions, val: Interactions | None = None, *, epochs: int | None = None,
            early_stopping: bool | None = None, callbacks=()) -> "KerasRecommender":
        """Train from scratch (or resume an interrupted fit from the checkpoint folder).

        Args:
            train: training interactions.
            val: validation interactions (early stopping and validation curves); optional.
            epochs: override ``self.epochs`` (e.g. Hyperband's budget).
            early_stopping: override ``self.early_stopping``.
            callbacks: extra Keras callbacks, run after the built-in ones.

        Returns:
            self.
        """
        t0 = time.perf_counter()
        epochs = self.epochs if epochs is None else int(epochs)
        stop_early = self.early_stopping if early_stopping is None else bool(early_stopping)
        strategy = self._strategy()  # None unless TF_CONFIG is set (research.distributed)
        if strategy is not None:  # every worker at this same fit, or a clear error (not a hang)
            from research import distributed

            distributed.agree("model fit", json.dumps(
                {"class": _class_path(type(self)), "config": self.get_config(), "rows": len(train),
                 "val_rows": len(val) if val is not None else 0, "epochs": epochs}, default=_json_default))
        seed_everything(self.seed, tensorflow=True)
        self.meta = train.meta
        self.fit_state = dict(self.prepare(train) or {})
        scope = strategy.scope if strategy is not None else contextlib.nullcontext
        with scope():
            self._compile()

        feats = self.features(train, training=True)
        if len(next(iter(feats.values()))) == 0:
            raise ConfigError(f"{type(self).__name__}: no training rows (rated_only={self.rated_only})")
        with scope():
            # build the variables now: BackupAndRestore can only restore into a built model
            self.model({k: tf.constant(v[:1]) for k, v in feats.items()})
        if strategy is not None:
            _allow_batch_means(self.model)
        pipe = tfdata.from_arrays(feats, self.batch_size, seed=child_seed(self.seed, "tfdata"))
        train_ds = pipe.dataset() if strategy is None else pipe.distributed_dataset(strategy)
        val_ds = None
        steps = {}  # a distributed dataset has no length: Keras needs the steps
        if strategy is not None:
            steps["steps_per_epoch"] = pipe.steps_per_epoch
        if val is not None and len(val):
            vf = self.features(val, training=False)
            if len(next(iter(vf.values()))):
                vpipe = tfdata.from_arrays(vf, self.eval_batch_size, shuffle=False)
                val_ds = vpipe.dataset() if strategy is None else vpipe.distributed_dataset(strategy)
                if strategy is not None:
                    steps["validation_steps"] = vpipe.steps_per_epoch
        stop_early = stop_early and val_ds is not None

        ckpt = self.resolved_checkpoint_dir()
        if ckpt is not None:
            self._claim_checkpoint_dir(ckpt, train, epochs, stop_early)
        hist = _History(ckpt)
        cbs = [pipe.callback(), hist]
        stopper = None
        if stop_early:
            monitor = self.monitor if self.monitor.startswith("val_") else "val_" + self.monitor
            stopper = _EarlyStopping(monitor, self.monitor_mode, self.patience, self.min_delta, ckpt)
            cbs.append(stopper)
        if self.log_dir:
            cbs.append(tf.keras.callbacks.TensorBoard(log_dir=str(self.log_dir), histogram_freq=0,
                                                      write_graph=False, update_freq="epoch", profile_batch=0))
        if ckpt is not None:
            # last of the built-ins: the weights it saves at epoch end match the states saved above
            backup = tf.keras.callbacks.BackupAndRestore if strategy is None else _WorkerBackupAndRestore
            cbs.append(backup(str(ckpt / "backup"), save_freq="epoch", delete_checkpoint=True))
        if strategy is not None:
            cbs.append(_StartEpoch(strategy, pipe))
        cbs.extend(callbacks)
        try:
            self.model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs, verbose=self.verbose,
                           **steps)
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                tf.errors.AbortedError, tf.errors.InternalError) as exc:
            if strategy is None:
                raise
            from research import distributed

            raise distributed.describe_failure(exc, type(self).__name__) from None

        self.history = hist.logs
        self.fit_epochs = len(hist.logs.get("epoch", []))
        self.best_epoch = (stopper.best_epoch + 1) if stopper is not None and stopper.best_epoch >= 0 else 0
        if ckpt is not None:
            shutil.rmtree(ckpt, ignore_errors=True)  # completed: nothing to resume
            if not self.checkpoint_dir:
                try:
                    ckpt.parent.rmdir()  # the derived <log_dir>/../ckpt, when no other model uses it
                except OSError:
                    pass
        self.after_fit()
        self.fit_seconds = time.perf_counter() - t0
        if self.log_dir:
            try:
                self.export_projector()
            except NotImplementedError:
                pass
        return self

    def _claim_checkpoint_dir(self, ckpt: Path, train: Interactions, epochs: int, stop_early: bool) -> None:
        """Keep ``ckpt`` only if it holds an interrupted fit of this exact configuration."""
        fp = {"class": _class_path(type(self)), "config": self.get_config(), "epochs": epochs,
              "early_stopping": stop_early, "n_users": train.n_users, "n_items": train.n_items,
              "rows": len(train), "fit_state": {k: v for k, v in self.fit_state.items()
                                                if not isinstance(v, np.ndarray)}}
        fp = json.loads(json.dumps(fp, default=_json_default))
        f = ckpt / "fingerprint.json"
        if ckpt.exists():
            same = f.exists() and json.loads(f.read_text()) == fp
            if not same:
                shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True, exist_ok=True)
        _write_json(f, fp)

    def extra_metrics(self) -> dict:
        """Training bookkeeping: epochs run, the kept epoch, the best validation value."""
        out = {"fit_epochs": self.fit_epochs}
        if self.best_epoch:
            out["best_epoch"] = self.best_epoch
        return out

    # ---- inference helpers ---------------------------------------------------------------
    def _require_fitted(self):
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")

    def predict_features(self, feats: dict[str, np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """Run ``self.model`` (its ``call``) over numpy feature columns in large batches."""
        self._require_fitted()
        n = len(next(iter(feats.values())))
        b = batch_size or self.eval_batch_size
        if not hasattr(self, "_call_fn"):
            self._call_fn = tf.function(lambda x: self.model(x, training=False), jit_compile=self.jit_compile,
                                        reduce_retracing=True)
        out = [np.asarray(self._call_fn({k: tf.constant(v[s:s + b]) for k, v in feats.items()}))
               for s in range(0, n, b)]
        return np.concatenate(out).reshape(n, -1).squeeze(-1) if out else np.zeros(0, np.float32)

    # ---- TensorBoard projector -----------------------------------------------------------
    def export_projector(self, log_dir=None, items: np.ndarray | None = None) -> Path:
        """Write the item embeddings for TensorBoard's projector, labelled with anime names.

        Args:
            log_dir: folder (default ``self.log_dir``).
            items: item indices to include (default: items with a training interaction, since the
                others keep their random initialisation).

        Returns:
            The folder written.
        """
        from tensorboard.plugins import projector

        from research import tb

        vecs = self.item_vectors()
        if vecs is None:
            raise NotImplementedError(f"{type(self).__name__} has no item vectors")
        log_dir = Path(log_dir or self.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        if items is None:
            trained = self.fit_state.get("trained_items")
            items = np.flatnonzero(trained) if trained is not None else np.arange(len(vecs))
        items = np.asarray(items, dtype=np.int64)
        names = self.meta.item_names(items)
        ids = self.meta.items.ids(items)
        clean = lambda s: str(s).replace("\t", " ").replace("\n", " ").replace("\r", " ")  # noqa: E731
        with open(log_dir / "metadata.tsv", "w", encoding="utf-8") as fh:
            fh.write("name\tanime_id\n")
            for name, i in zip(names, ids):
                fh.write(f"{clean(name)}\t{i}\n")
        table = np.asarray(vecs)[items].astype(np.float32)
        # The projector reads the vectors from embedding.tsv, named relative to the config, so the
        # folder can move. No checkpoint state file ("checkpoint"): with one, the projector would also
        # attach these vectors, without names, to the train/ and validation/ runs below (it looks for a
        # checkpoint in a run's parent folder). The same vectors as a TF checkpoint: embedding.ckpt-1.
        np.savetxt(log_dir / "embedding.tsv", table, delimiter="\t", fmt="%.7g")
        (log_dir / "checkpoint").unlink(missing_ok=True)  # an older export's state file
        tf.train.Checkpoint(embedding=tf.Variable(table, name="item_embedding")).write(
            str(log_dir / "embedding.ckpt-1"))
        config = projector.ProjectorConfig()
        emb = config.embeddings.add()
        emb.tensor_name = "item_embedding"
        emb.tensor_path = "embedding.tsv"
        emb.tensor_shape.extend(table.shape)
        emb.metadata_path = "metadata.tsv"
        projector.visualize_embeddings(str(log_dir), config)
        tb.mark_run(log_dir)  # the projector only reads configs in the folders of runs
        return log_dir

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path) -> None:
        """Write constructor arguments, fit state, history and weights under folder ``path``.

        Files: ``keras_model.json`` (class, config, fit state, history), ``weights.npz`` (the Keras
        model's weights, in ``model.weights`` order, with their names), ``arrays.npz`` (numpy fit state).
        Reload with ``load(path, meta)`` in any process (``meta`` must be the same vocabularies).
        """
        self._require_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {k: v for k, v in self.fit_state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in self.fit_state.items() if not isinstance(v, np.ndarray)}
        state = {"class": _class_path(type(self)), "config": self.get_config(), "fit_state": scalars,
                 "array_keys": sorted(arrays), "history": self.history, "fit_epochs": self.fit_epochs,
                 "best_epoch": self.best_epoch, "fit_seconds": self.fit_seconds,
                 "n_users": self.meta.n_users, "n_items": self.meta.n_items,
                 "weight_names": [w.name for w in self.model.weights]}
        weights = self.model.get_weights()
        save_npz(path / _WEIGHTS_FILE, {f"w{i}": w for i, w in enumerate(weights)})
        save_npz(path / _ARRAYS_FILE, arrays)
        _write_json(path / _STATE_FILE, state)

    @classmethod
    def load(cls, path, meta: Meta, *, allow_pickle: bool = False) -> "KerasRecommender":
        """Rebuild a model written by ``save`` (works in a fresh process).

        Args:
            path: the folder given to ``save``.
            meta: the run's vocabularies (must have the sizes the model was trained with).
            allow_pickle: ignored (the base signature): these files hold no pickle.
        """
        from research.models.base import registered_class

        path = Path(path)
        state = json.loads((path / _STATE_FILE).read_text())
        klass = registered_class(state.get("class"), cls, path / _STATE_FILE)  # registry classes only
        if (meta.n_users, meta.n_items) != (state["n_users"], state["n_items"]):
            raise ValueError(f"{path}: saved for {state['n_users']} users x {state['n_items']} items, "
                             f"meta has {meta.n_users} x {meta.n_items}")
        obj = klass(**state["config"])
        obj.meta = meta
        obj.fit_state = dict(state["fit_state"])
        with np.load(path / _ARRAYS_FILE, allow_pickle=False) as z:
            obj.fit_state.update({k: z[k] for k in state["array_keys"]})
        obj.history = state["history"]
        obj.fit_epochs, obj.best_epoch = state["fit_epochs"], state["best_epoch"]
        obj.fit_seconds = state.get("fit_seconds", 0.0)
        obj.model = obj.build_model()
        dummy = Interactions(np.zeros(1), np.zeros(1), np.ones(1), meta)
        obj.model({k: tf.constant(v) for k, v in obj.features(dummy, training=False).items()})
        with np.load(path / _WEIGHTS_FILE, allow_pickle=False) as z:
            weights = [z[f"w{i}"] for i in range(len(z.files))]
        if len(weights) != len(obj.model.weights):
            raise ValueError(f"{path}: {len(weights)} saved weights, the rebuilt model has {len(obj.model.weights)}")
        obj.model.set_weights(weights)
        obj.after_fit()
        return obj


def _train_attribute(name: str):
    return property(lambda self: getattr(self.train, name), doc=f"``self.train.{name}`` (TrainConfig)")


for _field in dataclasses.fields(TrainConfig):  # self.epochs, self.batch_size, ... read self.train
    setattr(KerasRecommender, _field.name, _train_attribute(_field.name))


def _class_path(klass) -> str:
    return f"{klass.__module__}:{klass.__qualname__}"
