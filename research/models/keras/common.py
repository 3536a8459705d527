"""What every Keras / TFRS model of the project shares: ``KerasRecommender`` and ``TFRSModel``.

The wrapper is here, its pieces beside it (``tfrs_model.py``, ``optimizers.py``, ``callbacks.py``,
``multiworker.py``, ``projector.py``, ``files.py``, ``saving.py``); the models import their names from here.

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

Multi-worker (only when ``TF_CONFIG`` is set; ``multiworker.py``, docs/DISTRIBUTED.md): ``fit``
builds and compiles under ``MultiWorkerMirroredStrategy``'s scope, feeds each worker its slices of
the same global batches, and each worker keeps its own checkpoints. Without ``TF_CONFIG`` none of
this runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
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
from research.models.keras import saving
from research.models.keras.callbacks import _EarlyStopping, _History, builtin_callbacks
from research.models.keras.files import _class_path, _json_default, _rows_digest, _write_json
from research.models.keras.multiworker import _allow_batch_means, agree_on_fit, strategy_for
from research.models.keras.optimizers import LazyAdam, make_optimizer
from research.models.keras.projector import write_projector
from research.models.keras.tfrs_model import TFRSModel
from research.seeding import child_seed, seed_everything

#: what the model modules import from here, besides the wrapper
__all__ = ["KerasRecommender", "LazyAdam", "TFRSModel", "tf", "tfrs"]

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
        return make_optimizer(self.optimizer, self.learning_rate)

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
    def _compile(self) -> None:
        self.model = self.build_model()
        self.model.compile(optimizer=self.make_optimizer(), jit_compile=self.jit_compile)

    def fit(self, train: Interactions, val: Interactions | None = None, *, epochs: int | None = None,
            early_stopping: bool | None = None, callbacks=(), val_history: Interactions | None = None
            ) -> "KerasRecommender":
        """Train from scratch (or resume an interrupted fit from the checkpoint folder).

        Args:
            train: training interactions.
            val: validation interactions (early stopping and validation curves); optional.
            val_history: held-out validation users' histories (``Recommender.fit_split``), only for
                a model with ``fits_val_history``: its validation scores ``val`` given these rows
                (``history_rows``), never trained on.
            epochs: override ``self.epochs`` (e.g. Hyperband's budget).
            early_stopping: override ``self.early_stopping``.
            callbacks: extra Keras callbacks, run after the built-in ones.

        Returns:
            self.
        """
        if val_history is not None and not self.fits_val_history:
            raise ConfigError(f"{type(self).__name__} does not validate on held-out users' histories "
                              "(fits_val_history is False): give their rows as val")
        self._val_history = val_history
        try:
            return self._fit(train, val, epochs, early_stopping, callbacks)
        finally:
            self._val_history = None

    def history_rows(self, train: Interactions) -> Interactions:
        """The rows a user's history is read from while fitting: ``train``, plus the held-out
        validation users' histories when ``fit`` got ``val_history`` (only validation reads
        theirs: training examples come from ``train`` alone)."""
        vh = getattr(self, "_val_history", None)
        return train if vh is None or not len(vh) else train.concat(vh)

    def _fit(self, train, val, epochs, early_stopping, callbacks) -> "KerasRecommender":
        t0 = time.perf_counter()
        epochs = self.epochs if epochs is None else int(epochs)
        stop_early = self.early_stopping if early_stopping is None else bool(early_stopping)
        strategy = strategy_for(self)  # None unless TF_CONFIG is set (research.distributed)
        if strategy is not None:  # every worker at this same fit, or a clear error (not a hang)
            agree_on_fit(self, train, val, epochs)
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
            self._claim_checkpoint_dir(ckpt, train, epochs, stop_early, val)
        hist = _History(ckpt)
        stopper = None
        if stop_early:
            monitor = self.monitor if self.monitor.startswith("val_") else "val_" + self.monitor
            stopper = _EarlyStopping(monitor, self.monitor_mode, self.patience, self.min_delta, ckpt)
        cbs = builtin_callbacks(pipe, hist, stopper, log_dir=self.log_dir, ckpt=ckpt, strategy=strategy)
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

    def _claim_checkpoint_dir(self, ckpt: Path, train: Interactions, epochs: int, stop_early: bool,
                              val: Interactions | None = None) -> None:
        """Keep ``ckpt`` only if it holds an interrupted fit of this exact configuration: the same
        model, training rows, and validation rows and histories (early stopping's state in the
        checkpoint is only valid against the validation part it was measured on)."""
        fp = {"class": _class_path(type(self)), "config": self.get_config(), "epochs": epochs,
              "early_stopping": stop_early, "n_users": train.n_users, "n_items": train.n_items,
              "rows": len(train), "train": _rows_digest(train), "fit_state": {k: v for k, v in self.fit_state.items()
                                                if not isinstance(v, np.ndarray)},
              "val": _rows_digest(val), "val_history": _rows_digest(getattr(self, "_val_history", None))}
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
        vecs = self.item_vectors()
        if vecs is None:
            raise NotImplementedError(f"{type(self).__name__} has no item vectors")
        if items is None:
            trained = self.fit_state.get("trained_items")
            items = np.flatnonzero(trained) if trained is not None else np.arange(len(vecs))
        return write_projector(Path(log_dir or self.log_dir), vecs, items, self.meta)

    # ---- persistence (``saving.py``) ------------------------------------------------------
    def save(self, path) -> None:
        """Write constructor arguments, fit state, history and weights under folder ``path``
        (``research.models.keras.saving.save``: JSON and ``.npz`` files, no pickle)."""
        saving.save(self, path)

    @classmethod
    def load(cls, path, meta: Meta, *, allow_pickle: bool = False) -> "KerasRecommender":
        """Rebuild a model written by ``save``, in any process (``saving.load``; ``meta``: the
        run's vocabularies; ``allow_pickle``: ignored, these files hold no pickle)."""
        return saving.load(cls, path, meta)


def _train_attribute(name: str):
    return property(lambda self: getattr(self.train, name), doc=f"``self.train.{name}`` (TrainConfig)")


for _field in dataclasses.fields(TrainConfig):  # self.epochs, self.batch_size, ... read self.train
    setattr(KerasRecommender, _field.name, _train_attribute(_field.name))

