"""Training throughput of ``embedding_dot`` and of its input pipeline alone, on synthetic ratings.

Examples per second are measured over the epochs after the first (the first pays for tracing and
graph building). The model is timed through the real code path (``EmbeddingDot.fit``: the
index-shuffled tf.data pipeline, the TFRS train step, Adam), so what limits it shows up here.

Both wall-clock rates and rates per CPU-second of this process are reported: on a shared machine
(load above the core count) wall-clock rates understate the code, and ``cpu_seconds`` shows how
much of the machine the process actually got.

Run: ``python -m research.bench.throughput [n_ratings] [batch_size ...]``.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import research  # noqa: F401


def synthetic_ratings(n_ratings: int, n_users: int, n_items: int, seed: int = 0):
    """Uniformly random (user, item, rating 1-10) rows as ``Interactions`` over dense ids."""
    from research.data.interactions import Interactions, Meta, Vocab

    r = np.random.default_rng(seed)
    meta = Meta(Vocab(np.arange(n_users)), Vocab(np.arange(n_items)), name="synthetic")
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


def model_throughput(data, batch_size: int, epochs: int = 3, seed: int = 0, **params) -> dict:
    """Examples/s of ``EmbeddingDot.fit`` (no validation) over the epochs after the first."""
    import tensorflow as tf

    from research.models.keras.embedding_dot import EmbeddingDot

    class Timer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self.cpu = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    timer = Timer()
    m = EmbeddingDot(batch_size=batch_size, epochs=epochs, early_stopping=False, seed=seed, **params)
    m.fit(data, None, callbacks=[timer])
    steady, cpu = timer.times[1:], timer.cpu[1:]
    return {"examples_per_s": len(data) * len(steady) / sum(steady),
            "examples_per_cpu_s": len(data) * len(cpu) / sum(cpu),
            "epoch_seconds": [round(t, 3) for t in timer.times], "epoch_cpu_seconds": [round(t, 3) for t in timer.cpu],
            "final_train_rmse": m.history["rmse"][-1]}


def embedding_dot_throughput(n_ratings: int = 1_000_000, batch_size: int = 65_536, epochs: int = 3, seed: int = 0,
                             n_users: int = 50_000, n_items: int = 10_000, dim: int = 32,
                             jit_compile: bool = False, learning_rate: float = 0.01, optimizer: str = "adam") -> dict:
    """Measure the input pipeline alone and the ``embedding_dot`` training loop.

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
        {"n_ratings", "batch_size", ..., "pipeline_examples_per_s", "pipeline_examples_per_cpu_s",
         "train_examples_per_s", "train_examples_per_cpu_s", "epoch_seconds", ...}; also printed as
        one JSON line. Per-CPU-second rates: divide by the cores used (2 here) for a machine-wide
        upper bound on an idle machine.
    """
    if epochs < 2:
        raise ValueError("epochs must be >= 2 (the first epoch is excluded)")
    import tensorflow as tf

    data = synthetic_ratings(n_ratings, n_users, n_items, seed)
    out = {"n_ratings": n_ratings, "batch_size": batch_size, "epochs": epochs, "n_users": n_users,
           "n_items": n_items, "dim": dim, "jit_compile": jit_compile, "optimizer": optimizer,
           "cpu_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
           "load_average_1min": round(os.getloadavg()[0], 2)}
    wall, per_cpu = pipeline_throughput(data, batch_size, epochs, seed)
    out["pipeline_examples_per_s"], out["pipeline_examples_per_cpu_s"] = round(wall), round(per_cpu)
    res = model_throughput(data, batch_size, epochs, seed, dim=dim, jit_compile=jit_compile,
                           learning_rate=learning_rate, optimizer=optimizer)
    out["train_examples_per_s"] = round(res["examples_per_s"])
    out["train_examples_per_cpu_s"] = round(res["examples_per_cpu_s"])
    out["epoch_seconds"], out["epoch_cpu_seconds"] = res["epoch_seconds"], res["epoch_cpu_seconds"]
    out["final_train_rmse"] = round(res["final_train_rmse"], 4)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    for bs in [int(a) for a in sys.argv[2:]] or [65_536]:
        for opt in ("adam", "lazy_adam"):
            embedding_dot_throughput(n, batch_size=bs, optimizer=opt)
