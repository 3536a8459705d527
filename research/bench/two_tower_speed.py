"""``animerec bench two_tower_speed``: ``two_tower``'s training speed at its defaults (full softmax
over every candidate anime, masked history), the hand-written gradients (``fast_grad = True``, the
default) against TF's autodiff of the same loss (``fast_grad = False``, the code before the option).

- ``cooperunion_5k``: the seed-0 split of ``cooperunion_5k.toml`` (5,000 users, ~375k training
  pairs, ~7.1k candidate anime), ``TwoTower.fit`` with validation every epoch and early stopping
  off, ``EPOCHS_REAL`` epochs; the epoch's wall seconds include its validation pass (as a real fit
  pays it); examples/s = training pairs / epoch seconds over the epochs after the first (tracing).
  The per-epoch training losses of both paths are recorded: they agree to float round-off (the
  same objective).
- ``synthetic``: ``throughput.synthetic_ratings`` (uniform, with the synthetic catalogue for the
  side features) at ``N_SYNTH`` rows over 50,000 users x 10,000 anime, no validation; a steady rate
  over ``TIMED`` steps after ``WARMUP`` untimed ones of the first epoch (an epoch of 10M rows is
  ~9,800 steps), training stopped there; the epoch time is *extrapolated* from that rate.

Each measurement runs in its own subprocess (``report.in_subprocess``); the load average before
and after is beside each row (2 shared cores: a load above 2 slows every wall-clock number).

A full run writes ``results/bench/two_tower_speed.json`` and its row of ``results/bench/SUMMARY.md``
(first full run committed 2026-12-02, load 2.6-4.3 beside a nice-19 search: 5k 10.1k pairs/s
hand-written vs 5.8k autodiff; 10M synthetic 5.7k vs 4.0k). Before this option a 5k epoch took
~62 s of training alone (367 steps of ~0.17 s at load ~4.9 on 2 cores, 6.1k pairs/s); the step's time went
to the (B x N) softmax and its autodiff gradient (~0.12-0.14 CPU s of ~0.2: three dense temporaries,
a scatter of the B x |history| masked entries into a dense (B x N) gradient at ~35 ms, the matmuls
~45 ms) and the history sums of the user tower (~0.06 CPU s: an unsorted segment sum of ~140k
history rows a batch, and the optimizer's ``tf.unique`` deduplication of their IndexedSlices
gradient, ~30 ms).
"""
from __future__ import annotations

import os
import sys
import time

from research.bench.report import in_subprocess, md_table

EPOCHS_REAL = 2
N_SYNTH, SYNTH_USERS, SYNTH_ITEMS = 10_000_000, 50_000, 10_000
WARMUP, TIMED = 20, 60
#: the autodiff path at 10M rows: fewer timed steps (it is the slow one)
TIMED_REF = 20
#: grouped training (``user_folds``): folds a history and (user, fold) groups a step
GROUP_FOLDS, GROUP_BATCH = 5, 64
QUICK = {"n_ratings": 60_000, "n_users": 2_000, "n_items": 1_000, "epochs": 2}


def _load() -> float | None:
    try:
        return round(float(os.getloadavg()[0]), 2)
    except OSError:
        return None


def _epoch_timer():
    from research.bench.throughput import epoch_timer

    return epoch_timer()


def measure_real(config: str = "cooperunion_5k.toml", fast_grad: bool = True, epochs: int = EPOCHS_REAL,
                 seed: int = 0, **params) -> dict:
    """``TwoTower(fast_grad=...)`` fitted on ``config``'s seed-``seed`` split with validation, no
    early stopping; epoch wall / CPU seconds and the steady examples/s."""
    from research.bench.autoencoders import load_data
    from research.models.keras.two_tower import TwoTower

    train, val, info = load_data({"kind": "real", "config": config})
    timer = _epoch_timer()
    load0 = _load()
    m = TwoTower(epochs=epochs, early_stopping=False, seed=seed, fast_grad=fast_grad, **params)
    m.fit(train, val, callbacks=[timer])
    n = len(train)
    steady = timer.times[1:] or timer.times
    return {"data": config.removesuffix(".toml"), **info, "fast_grad": fast_grad, "params": params,
            "batch_size": m.batch_size, "epochs": epochs, "validation_each_epoch": val is not None,
            "candidates": int(m.fit_state["trained_items"].sum()),
            "epoch_seconds": [round(t, 2) for t in timer.times], "epoch_cpu_seconds": [round(t, 2) for t in timer.cpu],
            "examples_per_s": round(n * len(steady) / sum(steady)),
            "train_loss": [round(float(x), 3) for x in m.history["loss"]],
            "val_ndcg_at_10": [round(float(x), 5) for x in m.history.get("val_ndcg_at_10", [])],
            "load_start": load0, "load_end": _load()}


def measure_synthetic(n_ratings: int = N_SYNTH, n_users: int = SYNTH_USERS, n_items: int = SYNTH_ITEMS,
                      fast_grad: bool = True, warmup: int = WARMUP, timed: int = TIMED, seed: int = 0,
                      batch_size: int = 1_024, epochs: int | None = None, user_folds: int = 0) -> dict:
    """Steady steps/s of ``TwoTower(fast_grad=...)`` on synthetic ratings: ``timed`` steps after
    ``warmup`` untimed ones, then training stops (``epochs`` given: whole epochs instead, the
    first excluded from the rate). ``user_folds`` > 0: grouped training, ``batch_size`` groups a
    step; examples/s counts training pairs (a step's groups x the mean pairs a group)."""
    import tensorflow as tf

    from research.bench.throughput import synthetic_ratings
    from research.models.keras.two_tower import TwoTower

    data = synthetic_ratings(n_ratings, n_users, n_items, seed, catalogue=True)

    class Steps(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t = {}

        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == warmup:
                self.t0, self.c0 = time.perf_counter(), time.process_time()
            elif batch + 1 == warmup + timed:
                self.t["wall"], self.t["cpu"] = time.perf_counter() - self.t0, time.process_time() - self.c0
                self.model.stop_training = True

    load0 = _load()
    out = {"data": "synthetic", "n_ratings": n_ratings, "n_users": n_users, "n_items": n_items,
           "fast_grad": fast_grad, "batch_size": batch_size, "user_folds": user_folds}
    grouped = {"user_folds": user_folds} if user_folds else {}
    if epochs:
        timer = _epoch_timer()
        m = TwoTower(epochs=epochs, batch_size=batch_size, early_stopping=False, seed=seed, fast_grad=fast_grad,
                     **grouped)
        m.fit(data, None, callbacks=[timer])
        n = len(data)
        out.update(epochs=epochs, epoch_seconds=[round(t, 2) for t in timer.times],
                   epoch_cpu_seconds=[round(t, 2) for t in timer.cpu],
                   examples_per_s=round(n * (len(timer.times) - 1) / sum(timer.times[1:])),
                   train_loss=[round(float(x), 3) for x in m.history["loss"]])
    else:
        steps = Steps()
        m = TwoTower(epochs=1, batch_size=batch_size, early_stopping=False, seed=seed, fast_grad=fast_grad,
                     **grouped)
        m.fit(data, None, callbacks=[steps])
        if "wall" not in steps.t:
            raise RuntimeError(f"fewer than {warmup + timed} steps ran")
        pairs_per_example = 1.0
        if user_folds:  # a step's pairs: its groups x the mean targets of a group
            import numpy as np

            n_groups = int(np.minimum(np.diff(m.fit_state["hist_indptr"]), user_folds).sum())
            pairs_per_example = len(data) / n_groups
            out["pairs_per_group"] = round(pairs_per_example, 2)
        rate = timed * batch_size * pairs_per_example / steps.t["wall"]
        out.update(warmup_steps=warmup, timed_steps=timed, step_seconds=round(steps.t["wall"] / timed, 4),
                   step_cpu_seconds=round(steps.t["cpu"] / timed, 4), examples_per_s=round(rate),
                   epoch_seconds_extrapolated=round(n_ratings / rate, 1))
    out.update(candidates=int(m.fit_state["trained_items"].sum()), load_start=load0, load_end=_load())
    return out


def _folds(r: dict) -> int:
    return int(r.get("user_folds") or (r.get("params") or {}).get("user_folds") or 0)


def run(quick: bool = False) -> dict:
    """Measure (see the module docstring). Returns the JSON-able result."""
    plan = []
    for fast in (False, True):
        if quick:
            plan.append(("research.bench.two_tower_speed:measure_synthetic", {**QUICK, "fast_grad": fast}))
        else:
            plan.append(("research.bench.two_tower_speed:measure_real", {"fast_grad": fast}))
    grouped = {"user_folds": GROUP_FOLDS, "batch_size": GROUP_BATCH}
    if quick:
        plan.append(("research.bench.two_tower_speed:measure_synthetic", {**QUICK, **grouped}))
    else:
        plan.append(("research.bench.two_tower_speed:measure_real", grouped))
        for fast in (False, True):
            plan.append(("research.bench.two_tower_speed:measure_synthetic",
                         {"fast_grad": fast, "timed": TIMED if fast else TIMED_REF}))
        plan.append(("research.bench.two_tower_speed:measure_synthetic", {**grouped, "timed": TIMED}))
    runs, notes = [], []
    for target, kw in plan:
        print(f"[bench] two_tower_speed: {kw} ...", file=sys.stderr, flush=True)
        try:
            out = in_subprocess(target, **kw)
        except Exception as exc:  # keep the other measurements
            notes.append(f"{target} {kw} failed: {str(exc)[-400:]}")
            continue
        runs.append({**out["result"], "peak_rss_mb": out["peak_rss_mb"], "process_seconds": out["process_seconds"]})
    for data in sorted({r["data"] for r in runs}):
        rate = {r["fast_grad"]: r["examples_per_s"] for r in runs if r["data"] == data and not _folds(r)}
        if True in rate and False in rate:
            notes.append(f"{data}: fast_grad {rate[True] / rate[False]:.2f}x the autodiff path's examples/s")
        folds = [r["examples_per_s"] for r in runs if r["data"] == data and _folds(r)]
        if folds and True in rate:
            notes.append(f"{data}: grouped training (user_folds {GROUP_FOLDS}, {GROUP_BATCH} groups a step) "
                         f"{folds[0] / rate[True]:.2f}x the per-pair hand-written path's training pairs/s")
    return {"status": "ok" if runs else "failed", "runs": runs, "notes": notes,
            "settings": {"epochs_real": EPOCHS_REAL, "warmup_steps": WARMUP, "timed_steps": TIMED,
                         "timed_steps_autodiff": TIMED_REF}}


def markdown(res: dict) -> str:
    runs = res.get("runs") or []
    if not runs:
        return ""
    rows = []
    for r in runs:
        shape = (f"{r.get('users', r.get('n_users', 0)):,} users, {r.get('train_rows', r.get('n_ratings', 0)):,} rows, "
                 f"{r.get('candidates', 0):,} candidates")
        if "epoch_seconds" in r:
            timing = f"{len(r['epoch_seconds'])} epochs: " + " / ".join(f"{t:.1f}" for t in r["epoch_seconds"])
            epoch = f"{r['epoch_seconds'][-1]:.1f}"
        else:
            timing = (f"{r['timed_steps']} steps after {r['warmup_steps']}: {r['step_seconds'] * 1000:.0f} ms/step "
                      f"({r['step_cpu_seconds'] * 1000:.0f} CPU ms)")
            epoch = f"≈ {r['epoch_seconds_extrapolated']:,.0f} (*extrapolated*)"
        loss = r.get("train_loss")
        grad = "hand-written" if r["fast_grad"] else "autodiff"
        if _folds(r):
            grad = f"grouped, user_folds {_folds(r)} (autodiff)"
        rows.append([r["data"], shape, grad, r.get("batch_size"), timing,
                     epoch, f"{r['examples_per_s']:,}", " / ".join(f"{x:,.1f}" for x in loss) if loss else "—",
                     f"{r.get('peak_rss_mb', 0):,.0f}", f"{r.get('load_start')} → {r.get('load_end')}"])
    table = md_table(["data", "size", "gradient (fast_grad)", "batch", "timed", "epoch s", "examples/s",
                      "train loss per epoch", "peak RSS MB", "load 1 min"], rows)
    return "\n".join([
        "two_tower at its defaults (full softmax over every candidate anime, masked history, batch 1,024): "
        "TF's autodiff of the loss (`fast_grad = false`, the code before the option) against the "
        "hand-written gradients (`fast_grad = true`, the default); the same objective, so the same "
        "training losses up to float round-off; and grouped training (`user_folds`: (user, fold) groups, "
        "one softmax row a group shared by its targets; batch counts groups, examples/s counts training "
        "pairs; a different objective, so its losses are per group). Real set: the seed-0 split, validation each epoch "
        "(inside the epoch's seconds), the first epoch (tracing) out of the rate. Synthetic: uniform "
        "ratings with the synthetic catalogue, a steady rate over the timed steps of the first epoch. "
        "Wall-clock on a shared 2-core machine: see the load.", "", table])
