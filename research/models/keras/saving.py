"""Saving and loading a fitted ``KerasRecommender`` (its ``save`` / ``load``): constructor
arguments, fit state, history and weights as JSON and ``.npz`` files, never a pickle, so loading a
run folder cannot execute code; the class comes from the registry (``registered_class``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from research.data.interactions import Interactions, Meta
from research.models.keras.files import _class_path, _write_json
from research.results import save_npz

STATE_FILE = "keras_model.json"
WEIGHTS_FILE = "weights.npz"
ARRAYS_FILE = "arrays.npz"


def save(model, path) -> None:
    """Write constructor arguments, fit state, history and weights under folder ``path``.

    Files: ``keras_model.json`` (class, config, fit state, history), ``weights.npz`` (the Keras
    model's weights, in ``model.weights`` order, with their names), ``arrays.npz`` (numpy fit state:
    for a model fitted with ``val_history`` — two_tower's and multvae's held-out validation users —
    the histories it holds include those users' rows, so a saved run folder carries them too).
    Reload with ``load(path, meta)`` in any process (``meta`` must be the same vocabularies).
    """
    model._require_fitted()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in model.fit_state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in model.fit_state.items() if not isinstance(v, np.ndarray)}
    state = {"class": _class_path(type(model)), "config": model.get_config(), "fit_state": scalars,
             "array_keys": sorted(arrays), "history": model.history, "fit_epochs": model.fit_epochs,
             "best_epoch": model.best_epoch, "fit_seconds": model.fit_seconds,
             "n_users": model.meta.n_users, "n_items": model.meta.n_items,
             "weight_names": [w.name for w in model.model.weights]}
    weights = model.model.get_weights()
    save_npz(path / WEIGHTS_FILE, {f"w{i}": w for i, w in enumerate(weights)})
    save_npz(path / ARRAYS_FILE, arrays)
    _write_json(path / STATE_FILE, state)


def load(cls, path, meta: Meta):
    """Rebuild a model written by ``save`` (works in a fresh process) as a registry class
    (``cls``: the class ``load`` was called on, which the saved class must be or derive from).

    Args:
        path: the folder given to ``save``.
        meta: the run's vocabularies (must have the sizes the model was trained with).
    """
    from research.models.base import registered_class

    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    klass = registered_class(state.get("class"), cls, path / STATE_FILE)  # registry classes only
    if (meta.n_users, meta.n_items) != (state["n_users"], state["n_items"]):
        raise ValueError(f"{path}: saved for {state['n_users']} users x {state['n_items']} items, "
                         f"meta has {meta.n_users} x {meta.n_items}")
    obj = klass(**state["config"])
    obj.meta = meta
    obj.fit_state = dict(state["fit_state"])
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as z:
        obj.fit_state.update({k: z[k] for k in state["array_keys"]})
    obj.history = state["history"]
    obj.fit_epochs, obj.best_epoch = state["fit_epochs"], state["best_epoch"]
    obj.fit_seconds = state.get("fit_seconds", 0.0)
    obj.model = obj.build_model()
    dummy = Interactions(np.zeros(1), np.zeros(1), np.ones(1), meta)
    obj.model({k: tf.constant(v) for k, v in obj.features(dummy, training=False).items()})
    with np.load(path / WEIGHTS_FILE, allow_pickle=False) as z:
        weights = [z[f"w{i}"] for i in range(len(z.files))]
    if len(weights) != len(obj.model.weights):
        raise ValueError(f"{path}: {len(weights)} saved weights, the rebuilt model has {len(obj.model.weights)}")
    obj.model.set_weights(weights)
    obj.after_fit()
    return obj
