"""The fit's own Keras callbacks whose state survives an interruption: the per-epoch history
(``_History``) and early stopping with the best epoch's weights (``_EarlyStopping``). Both persist to
the fit's checkpoint folder (``state_dir``; None: nothing is written) after every epoch and take
that state back when ``BackupAndRestore`` resumes the fit, so a resumed fit ends exactly where an
uninterrupted one would (``KerasRecommender.fit`` orders them before ``BackupAndRestore``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

import research  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from research.errors import ConfigError
from research.models.keras.files import _write_json
from research.models.keras.multiworker import _StartEpoch, _WorkerBackupAndRestore
from research.results import save_npz


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


def builtin_callbacks(pipe, hist: _History, stopper: _EarlyStopping | None, *, log_dir, ckpt: Path | None,
                      strategy) -> list:
    """A fit's own callbacks, in their order: the pipeline's epoch (``pipe.callback()``), ``hist``,
    ``stopper`` (if any), TensorBoard (if ``log_dir``), ``BackupAndRestore`` into ``ckpt/backup`` (if
    ``ckpt``; each worker's own under a ``strategy``) and, under a strategy, ``_StartEpoch``."""
    cbs = [pipe.callback(), hist]
    if stopper is not None:
        cbs.append(stopper)
    if log_dir:
        cbs.append(tf.keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0,
                                                  write_graph=False, update_freq="epoch", profile_batch=0))
    if ckpt is not None:
        # last of the built-ins: the weights it saves at epoch end match the states saved above
        backup = tf.keras.callbacks.BackupAndRestore if strategy is None else _WorkerBackupAndRestore
        cbs.append(backup(str(ckpt / "backup"), save_freq="epoch", delete_checkpoint=True))
    if strategy is not None:
        cbs.append(_StartEpoch(strategy, pipe))
    return cbs
