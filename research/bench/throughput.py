"""Training throughput of the Keras models (``embedding_dot``, ``two_tower``, ``dnn``) and of their
input pipeline alone, on synthetic ratings.

Examples per second are measured over the epochs after the first (the first pays for tracing and
graph building). Each model is timed through the real code path (``<Model>.fit`` with early
stopping off and no validation data: the index-shuffled tf.data pipeline, the model's train step,
its optimizer), so what limits it shows up here. ``model_over_pipeline_time`` is the pipeline's
examples/s divided by the model's: how many times longer an epoch of training takes than an epoch
of only reading the batches (large = the model, not the input, is the bottleneck).

``two_tower`` and ``dnn`` embed anime side features built from ``meta.item_table``; the synthetic
data carries a synthetic catalogue for them (``synthetic_catalogue``: genres, studios, type,
source, episodes and a synopsis drawn from ``research.data.synth``'s vocabularies), so their side
towers do the same work as on real data. ``two_tower``'s in-batch softmax makes a
batch x batch logits matrix, so it runs at a much smaller batch than the others.

Both wall-clock rates and rates per CPU-second of this process are reported: on a shared machine
(load above the core count) wall-clock rates understate the code, and ``cpu_seconds`` shows how
much of the machine the process actually got.

Run: ``python -m research.bench.throughput [n_ratings] [batch_size ...]`` (``embedding_dot`` only;
``animerec bench throughput`` runs ``embedding_dot`` and ``dnn``; ``two_tower`` at its defaults is
``animerec bench two_tower_speed``'s, and ``two_tower_throughput`` stays for ad-hoc runs).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import research  # noqa: F401

#: what ``synthetic_catalogue`` gives every item (recorded in the output of the side-feature models)
CATALOGUE_NOTE = ("synthetic catalogue: 1-4 genres (real MAL frequencies), 1-2 of 26 studios, type, "
                  "source, episodes (1/6 unknown), a 30-word synopsis (12 words of its genres + filler)")


def synthetic_catalogue(n_items: int, seed: int = 0):
    """A ``Meta.item_table`` for ``n_items`` anime, with the columns the side-feature models read.

    Values are drawn from ``research.data.synth``'s real-MAL vocabularies: genres by their
    (flattened) real frequencies, studios, type and source by their real shares, episodes among
    common counts (NaN = unknown), and a synopsis mixing words of the anime's genres with filler.
    """
    import pandas as pd

    from research.data import synth

    r = np.random.default_rng([seed, 1])
    genres = np.array(synth.GENRES)
    w = np.log(np.array([c for _, c in synth.GENRE_COUNTS], dtype=np.float64) ** 0.75)
    # Gumbel top-k: each anime's k genres, drawn without replacement by weight
    keys = w[None, :] + r.gumbel(size=(n_items, len(genres)))
    order = np.argsort(-keys, axis=1)
    k = r.integers(1, 5, n_items)
    item_genres = [list(genres[order[i, :k[i]]]) for i in range(n_items)]
    studios = np.array(synth.STUDIOS)
    n_st = r.integers(1, 3, n_items)
    st = r.integers(0, len(studios), (n_items, 2))
    item_studios = [sorted(set(studios[st[i, :n_st[i]]])) for i in range(n_items)]

    def shares(pairs):
        p = np.array([s for _, s in pairs], dtype=np.float64)
        return r.choice([v for v, _ in pairs], size=n_items, p=p / p.sum())

    words = {g: synth.GENRE_WORDS[g].split() for g in genres}
    filler = np.array(synth.FILLER_WORDS)
    synopsis = []
    for g in item_genres:
        pool = np.array([x for name in g for x in words[name]])
        synopsis.append(" ".join(np.concatenate([r.choice(pool, 12), r.choice(filler, 18)])[r.permutation(30)]))
    return pd.DataFrame({
        "name": [f"Anime {i}" for i in range(n_items)], "genres": item_genres, "type": shares(synth.TYPES),
        "studios": item_studios, "source": shares(synth.SOURCES),
        "episodes": np.where(r.random(n_items) < 1 / 6, np.nan, r.choice([1.0, 12.0, 13.0, 24.0, 26.0, 50.0], n_items)),
        "synopsis": synopsis})


def synthetic_ratings(n_ratings: int, n_users: int, n_items: int, seed: int = 0, catalogue: bool = False):
    """Uniformly random (user, item, rating 1-10) rows as ``Interactions`` over dense ids;
    ``catalogue=True`` gives the ``Meta`` a ``synthetic_catalogue`` item table."""
    from research.data.interactions import Interactions, Meta, Vocab

    r = np.random.default_rng(seed)
    table = synthetic_catalogue(n_items, seed) if catalogue else None
    meta = Meta(Vocab(np.arange(n_users)), Vocab(np.arange(n_items)), item_table=table, name="synthetic")
    return Interactions(r.integers(0, n_users, n_ratings), r.integers(0, n_items, n_ratings),
                        r.integers(1, 11, n_ratings).astype(np.float32), meta)


def pipeline_throughput(data, batch_size: int, epochs: int = 3, seed: int = 0) -> float:
    """Examples per wall second and per CPU second of iterating the in-memory pipeline
    (epochs after the first)."""
    from research.data import tfdata

    ds = tfdata.from_interactions(data, batch_size, seed=seed).dataset()
    times, cpu = [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for b in ds:
            n += int(b["user"].shape[0])
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return n * (epochs - 1) / sum(times[1:]), n * (epochs - 1) / sum(cpu[1:])


def epoch_timer():
    """A Keras callback recording each epoch's wall and CPU seconds (``times``, ``cpu``)."""
    import tensorflow as tf

    class Timer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.cpu = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    return Timer()


def model_throughput(model_cls, data, batch_size: int, epochs: int = 3, seed: int = 0, **params) -> dict:
    """Examples/s of ``model_cls(...).fit`` (a ``KerasRecommender``; no validation, no early
    stopping) over the epochs after the first; ``params`` go to the constructor."""
    timer = epoch_timer()
    m = model_cls(batch_size=batch_size, epochs=epochs, early_stopping=False, seed=seed, **params)
    m.fit(data, None, callbacks=[timer])
    n = len(m.features(data, training=True)["user"])  # rows one epoch trains on
    steady, cpu = timer.times[1:], timer.cpu[1:]
    out = {"examples_per_s": n * len(steady) / sum(steady), "examples_per_cpu_s": n * len(cpu) / sum(cpu),
           "epoch_seconds": [round(t, 3) for t in timer.times], "epoch_cpu_seconds": [round(t, 3) for t in timer.cpu],
           "final_train_loss": m.history["loss"][-1]}
    if "rmse" in m.history:
        out["final_train_rmse"] = m.history["rmse"][-1]
    return out


def measure(model_cls, n_ratings: int, batch_size: int, epochs: int, seed: int, n_users: int, n_items: int,
            catalogue: bool = False, **params) -> dict:
    """The input pipeline alone, then ``model_cls``'s training loop, on the same synthetic data.

    Args:
        model_cls: a ``KerasRecommender`` class.
        n_ratings, n_users, n_items: synthetic data size (``synthetic_ratings``).
        batch_size: batch size of both the pipeline and the model.
        epochs: epochs timed (the first is excluded from the rates; must be >= 2).
        seed: data and model seed.
        catalogue: give the data a ``synthetic_catalogue`` (for side-feature models).
        params: constructor arguments of ``model_cls`` (recorded in the output).

    Returns:
        {"model", "n_ratings", "batch_size", ..., params, "pipeline_examples_per_s",
         "pipeline_examples_per_cpu_s", "train_examples_per_s", "train_examples_per_cpu_s",
         "model_over_pipeline_time", "epoch_seconds", ...}; also printed as one JSON line.
    """
    if epochs < 2:
        raise ValueError("epochs must be >= 2 (the first epoch is excluded)")
    import tensorflow as tf

    data = synthetic_ratings(n_ratings, n_users, n_items, seed, catalogue=catalogue)
    out = {"model": model_cls.__name__, "n_ratings": n_ratings, "batch_size": batch_size, "epochs": epochs,
           "n_users": n_users, "n_items": n_items,
           **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
           "item_features": CATALOGUE_NOTE if catalogue else "none",
           "cpu_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
           "load_average_1min": round(os.getloadavg()[0], 2)}
    wall, per_cpu = pipeline_throughput(data, batch_size, epochs, seed)
    out["pipeline_examples_per_s"], out["pipeline_examples_per_cpu_s"] = round(wall), round(per_cpu)
    res = model_throughput(model_cls, data, batch_size, epochs, seed, **params)
    out["train_examples_per_s"] = round(res["examples_per_s"])
    out["train_examples_per_cpu_s"] = round(res["examples_per_cpu_s"])
    out["model_over_pipeline_time"] = round(wall / res["examples_per_s"], 3)
    out["epoch_seconds"], out["epoch_cpu_seconds"] = res["epoch_seconds"], res["epoch_cpu_seconds"]
    out["final_train_loss"] = round(res["final_train_loss"], 4)
    if "final_train_rmse" in res:
        out["final_train_rmse"] = round(res["final_train_rmse"], 4)
    out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out), flush=True)
    return out


def embedding_dot_throughput(n_ratings: int = 1_000_000, batch_size: int = 65_536, epochs: int = 3, seed: int = 0,
                             n_users: int = 50_000, n_items: int = 10_000, dim: int = 32,
                             jit_compile: bool = False, learning_rate: float = 0.01, optimizer: str = "adam") -> dict:
    """Measure the input pipeline alone and the ``embedding_dot`` training loop (see ``measure``).

    Args:
        n_ratings: synthetic rows.
        batch_size: training batch size.
        epochs: epochs timed (the first is excluded from the rates; must be >= 2).
        seed: data and model seed.
        n_users, n_items, dim: table sizes (Adam touches every row of both tables at every step).
        jit_compile: XLA-compile the train step.
        learning_rate: Adam's step (irrelevant to speed; set to something that trains).
        optimizer: "adam" (Keras: moments of whole tables updated every step) or "lazy_adam".

    Returns:
        ``measure``'s dict. Per-CPU-second rates: divide by the cores used (2 here) for a
        machine-wide upper bound on an idle machine.
    """
    from research.models.keras.embedding_dot import EmbeddingDot

    return measure(EmbeddingDot, n_ratings, batch_size, epochs, seed, n_users, n_items, dim=dim,
                   jit_compile=jit_compile, learning_rate=learning_rate, optimizer=optimizer)


def two_tower_throughput(n_ratings: int = 1_000_000, batch_size: int = 1_024, epochs: int = 3, seed: int = 0,
                         n_users: int = 50_000, n_items: int = 10_000, dim: int = 64, id_dim: int = 32,
                         use_history: bool = True,
                         side_features: tuple = ("genres", "studios", "type", "source", "episodes", "synopsis"),
                         jit_compile: bool = False, optimizer: str = "adam") -> dict:
    """Measure the input pipeline alone and the ``two_tower`` training loop (see ``measure``), on
    synthetic ratings with a synthetic catalogue for the anime tower's side features.

    Args:
        n_ratings, batch_size, epochs, seed, n_users, n_items, jit_compile, optimizer: as
            ``embedding_dot_throughput``. The batch is small by default (the model's own
            default): the in-batch softmax makes a batch x batch logits matrix (65,536 would be
            17 GB), and its cost per example grows linearly with the batch (on 200k synthetic
            ratings, 50k users, 10k anime: 20.8k examples/s at 1,024, 11.2k at 2,048, 5.2k at
            4,096, with or without the history and side features).
        dim, id_dim, use_history, side_features: ``TwoTower``'s (defaults: the model's). With
            ``use_history`` every step also sums each distinct user's training history
            (n_ratings / n_users anime on average).
    """
    from research.models.keras.two_tower import TwoTower

    return measure(TwoTower, n_ratings, batch_size, epochs, seed, n_users, n_items, catalogue=bool(side_features),
                   dim=dim, id_dim=id_dim, use_history=use_history, side_features=list(side_features),
                   jit_compile=jit_compile, optimizer=optimizer)


def dnn_throughput(n_ratings: int = 1_000_000, batch_size: int = 65_536, epochs: int = 3, seed: int = 0,
                   n_users: int = 50_000, n_items: int = 10_000, dim: int = 32, layers: tuple = (64, 32),
                   cross_layers: int = 1, side_features: tuple = ("genres", "studios", "type", "source", "episodes"),
                   jit_compile: bool = False, optimizer: str = "adam") -> dict:
    """Measure the input pipeline alone and the ``dnn`` training loop (see ``measure``), on
    synthetic ratings with a synthetic catalogue for the side features.

    Args:
        n_ratings, batch_size, epochs, seed, n_users, n_items, jit_compile, optimizer: as
            ``embedding_dot_throughput``.
        dim, layers, cross_layers, side_features: ``DNN``'s (defaults: the model's).
    """
    from research.models.keras.dnn import DNN

    return measure(DNN, n_ratings, batch_size, epochs, seed, n_users, n_items, catalogue=bool(side_features),
                   dim=dim, layers=list(layers), cross_layers=cross_layers, side_features=list(side_features),
                   jit_compile=jit_compile, optimizer=optimizer)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    for bs in [int(a) for a in sys.argv[2:]] or [65_536]:
        for opt in ("adam", "lazy_adam"):
            embedding_dot_throughput(n, batch_size=bs, optimizer=opt)
