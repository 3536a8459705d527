"""``animerec bench distributed``: embedding_dot's training examples/s with 1 and 2 local workers
(``tf.distribute.MultiWorkerMirroredStrategy`` on 127.0.0.1, ``research.distributed``), against the
same fit without a strategy, and the gradient bytes every step exchanges.

On one machine the workers share its cores (2 here, with other jobs on them): this measures the
strategy's overhead, not a speed-up. Two workers do the same arithmetic as one (each half of every
global batch) plus, per step, an all-gather of the sparse gradients and the all-reduce of the
batch's row count; each also computes the whole epoch's input order (the pipeline is replicated,
then sliced). A speed-up needs workers on separate machines (or cores that are idle).

Communication per step (``gradient_bytes``): every trainable variable's gradient, as the strategy
exchanges it. A dense gradient (a Dense kernel) is all-reduced: its full size, whatever the batch.
An embedding table's gradient is ``tf.IndexedSlices`` (one row per example of the worker's slice
of the batch, not de-duplicated, plus an int index per row), all-gathered: each worker receives
the other workers' slices. The numbers are measured on the model's real gradients of one batch
(types and shapes), so a model change shows up here; ``dense_equivalent_bytes`` is what all-reducing
the whole tables would send instead.

Each configuration runs in its own processes (the launcher's, ``research.distributed.launch``):
TensorFlow allows one strategy per process. Rates are over the epochs after the first (tracing).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: (n_ratings, n_users, n_items) of the full and quick runs
FULL = (10_000_000, 50_000, 10_000)
QUICK = (100_000, 5_000, 1_000)


def gradient_bytes(recommender, batch: dict, workers: int) -> dict:
    """The gradient bytes one training step exchanges, from the model's real gradients of ``batch``
    (one worker's slice of a global batch; see the module docstring)."""
    import tensorflow as tf

    # a plain copy of the model, built outside the strategy's scope: the same variables, gradient
    # types and shapes as the trained one, whose metrics cannot be updated outside a replica
    model = recommender.build_model()
    feats = {k: tf.constant(v) for k, v in batch.items()}
    model(feats)
    with tf.GradientTape() as tape:
        loss = model.compute_loss(feats, training=True)
        if model.losses:
            loss += tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    dense = sparse = table_bytes = 0
    per_var = []
    for v, g in zip(model.trainable_variables, grads):
        full = int(np.prod(v.shape)) * v.dtype.size
        if isinstance(g, tf.IndexedSlices):
            b = (int(np.prod(g.values.shape)) * g.values.dtype.size
                 + int(np.prod(g.indices.shape)) * g.indices.dtype.size)
            sparse += b
            table_bytes += full
            per_var.append({"name": v.name, "kind": "IndexedSlices (all-gather)", "rows": int(g.values.shape[0]),
                            "bytes": b, "table_bytes": full})
        elif g is not None:
            dense += full
            per_var.append({"name": v.name, "kind": "dense (all-reduce)", "bytes": full})
    w = max(int(workers), 1)
    # ring all-reduce: each worker sends (and receives) 2 (W-1)/W of the tensor; all-gather: each
    # receives the (W-1) other slices (and sends its own W-1 times around the ring)
    per_worker = 2 * (w - 1) / w * dense + (w - 1) * sparse
    return {"local_batch_rows": int(len(next(iter(batch.values())))), "dense_bytes": dense,
            "sparse_bytes_per_worker": sparse, "sent_per_worker_per_step_bytes": round(per_worker),
            "dense_equivalent_bytes": dense + table_bytes,
            "dense_equivalent_sent_per_worker_bytes": round(2 * (w - 1) / w * (dense + table_bytes)),
            "variables": per_var}




def fit_worker(n_ratings: int, n_users: int, n_items: int, batch_size: int, epochs: int, seed: int, dim: int,
               optimizer: str, out: str | None = None) -> dict:
    """One worker's (or the no-strategy process's) part: make the strategy (when ``TF_CONFIG`` is
    set), fit embedding_dot on the synthetic ratings, and (on the chief) write the rates to ``out``."""
    from research import distributed
    from research.bench import report

    distributed.strategy()  # first, as animerec run does (the cluster's start-up barrier)
    from research.bench.throughput import synthetic_ratings
    from research.models.keras.embedding_dot import EmbeddingDot

    data = synthetic_ratings(n_ratings, n_users, n_items, seed)
    from research.bench.throughput import epoch_timer

    timer = epoch_timer()
    load0 = os.getloadavg()[0]
    m = EmbeddingDot(dim=dim, batch_size=batch_size, epochs=epochs, early_stopping=False, seed=seed,
                     learning_rate=0.01, optimizer=optimizer)
    t0 = time.perf_counter()
    m.fit(data, None, callbacks=[timer])
    fit_s = time.perf_counter() - t0
    n = len(m.features(data, training=True)["user"])  # global rows an epoch (every worker's slices)
    steady, cpu = timer.times[1:], timer.cpu[1:]
    w = distributed.num_workers()
    lo, hi = 0, batch_size // w  # worker 0's slice of a full batch
    feats = m.features(data, training=True)
    comm = gradient_bytes(m, {k: v[lo:hi] for k, v in feats.items()}, w)
    res = {"workers": w if distributed.enabled() else 0, "strategy": "MultiWorkerMirroredStrategy"
           if distributed.enabled() else "none", "n_ratings": n_ratings, "n_users": n_users, "n_items": n_items,
           "batch_size": batch_size, "epochs": epochs, "dim": dim, "optimizer": optimizer,
           "steps_per_epoch": -(-n // batch_size), "examples_per_s": round(n * len(steady) / sum(steady)),
           "examples_per_cpu_s_this_worker": round(n * len(cpu) / sum(cpu)),
           "epoch_seconds": [round(t, 3) for t in timer.times],
           "ms_per_step": round(1000 * sum(steady) / len(steady) / -(-n // batch_size), 2),
           "fit_seconds": round(fit_s, 2), "final_train_loss": round(m.history["loss"][-1], 5),
           "final_train_rmse": round(m.history["rmse"][-1], 5), "communication": comm,
           "peak_rss_mb_chief": round(report.peak_rss_mb()), "load_average_1min": round(load0, 2),
           "load_average_1min_end": round(os.getloadavg()[0], 2)}
    if out and distributed.is_chief():
        Path(out).write_text(json.dumps(res))
    return res


def _measure(workers: int, size: tuple, batch_size: int, epochs: int, seed: int, dim: int, optimizer: str) -> dict:
    from research import distributed

    n, u, i = size
    with tempfile.TemporaryDirectory(prefix="animerec-bench-") as tmp:
        out = Path(tmp) / "result.json"
        args = ["--n-ratings", str(n), "--n-users", str(u), "--n-items", str(i), "--batch-size", str(batch_size),
                "--epochs", str(epochs), "--seed", str(seed), "--dim", str(dim), "--optimizer", optimizer,
                "--out", str(out)]
        t0 = time.perf_counter()
        if workers == 0:  # no strategy: one plain process
            import subprocess

            env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
            proc = subprocess.run([sys.executable, "-m", "research.bench.distributed", *args], env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError("\n".join(proc.stderr.strip().splitlines()[-8:]))
        else:
            distributed.launch(args, workers, module="research.bench.distributed", linger=10.0)
        res = json.loads(out.read_text())
        res["process_seconds"] = round(time.perf_counter() - t0, 1)
        return res


def run(quick: bool = False) -> dict:
    """No strategy, then 1 and 2 local workers, on the same synthetic ratings (see the module docstring)."""
    size = QUICK if quick else FULL
    batch_size, epochs, dim, optimizer, seed = (4096 if quick else 65_536), (2 if quick else 3), 32, "lazy_adam", 0
    runs, notes = [], []
    for workers in (0, 1, 2):
        try:
            runs.append(_measure(workers, size, batch_size, epochs, seed, dim, optimizer))
        except Exception as exc:  # keep the others' numbers
            notes.append(f"{workers or 'no'} worker(s) failed: {str(exc)[-400:]}")
    base = next((r["examples_per_s"] for r in runs if r["workers"] == 0), None)
    for r in runs:
        if base:
            r["over_no_strategy"] = round(r["examples_per_s"] / base, 3)
    return {"status": "ok" if runs else "failed", "benchmark": "distributed", "quick": quick, "runs": runs,
            "notes": notes, "cores": os.cpu_count(),
            "meaning": "overhead, not speed-up: every worker runs on the same cores (see the module docstring)"}


def markdown(res: dict) -> str:
    from research.bench.report import md_table

    runs = res.get("runs") or []
    if not runs:
        return ""
    rows = []
    for r in runs:
        c = r.get("communication", {})
        rows.append([r["workers"] or "none", f"{r['n_ratings']:,}", f"{r['batch_size']:,}",
                     f"{r['examples_per_s']:,}", r.get("over_no_strategy", ""), r.get("ms_per_step", ""),
                     f"{c.get('sparse_bytes_per_worker', 0) / 2**20:.2f}", f"{c.get('dense_bytes', 0):,}",
                     f"{c.get('sent_per_worker_per_step_bytes', 0) / 2**20:.2f}",
                     f"{c.get('dense_equivalent_sent_per_worker_bytes', 0) / 2**20:.1f}",
                     f"{r.get('load_average_1min', '')} / {r.get('load_average_1min_end', '')}"])
    table = md_table(["workers", "ratings", "global batch", "train ex/s", "vs no strategy", "ms / step",
                      "sparse grad MiB / worker / step", "dense grad bytes", "sent MiB / worker / step",
                      "if tables were dense: MiB", "load (start / end)"], rows)
    first = runs[0]
    return "\n".join([
        f"embedding_dot (dim {first['dim']}, {first['optimizer']}) on {first['n_users']:,} users x "
        f"{first['n_items']:,} anime of synthetic ratings, {first['epochs']} epochs (rates over the epochs "
        f"after the first), `MultiWorkerMirroredStrategy` with local workers on 127.0.0.1. All workers share "
        f"this machine's {res.get('cores', '?')} cores, so this is the strategy's overhead, not a speed-up. "
        "Gradients: the embedding tables' are `IndexedSlices` (one row per example of a worker's slice, "
        "all-gathered); the last column is what all-reducing the whole tables densely would send.", "", table])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-ratings", type=int, default=FULL[0])
    p.add_argument("--n-users", type=int, default=FULL[1])
    p.add_argument("--n-items", type=int, default=FULL[2])
    p.add_argument("--batch-size", type=int, default=65_536)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--optimizer", default="lazy_adam")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    res = fit_worker(a.n_ratings, a.n_users, a.n_items, a.batch_size, a.epochs, a.seed, a.dim, a.optimizer, a.out)
    print(json.dumps({k: v for k, v in res.items() if k != "communication"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
