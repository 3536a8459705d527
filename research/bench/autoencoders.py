"""``autoencoders``: fit time, training and scoring throughput, and peak memory of the two
autoencoder-style ranking models, ``ease`` (``research.models.ease.EASE``) and ``multvae``
(``research.models.keras.multvae.MultVAE``), at their defaults.

Data sets (each model on each set in its own fresh subprocess, so ``peak_rss_mb`` is that
model's own, data loading included; ``input_rss_mb`` is the peak after loading the data):

- ``mal2020_sample``: ``experiments/configs/mal2020_sample.toml``'s data, seed-0 split
  (``research.data.load.load_dataset`` + ``research.data.splits.make_split``): fit on train
  (validation passed to ``fit`` as the harness does), score every user.
- ``cooperunion_5k``: the same with ``experiments/configs/cooperunion_5k.toml``'s data.
- ``synthetic``: ``research.bench.neighbors.generate``'s long-tailed matrix at the full MAL size
  (310,059 users x 17,562 anime, ~57M ratings; ``--quick``: its 5,000 x 1,000 quick size and only
  this set), generated once into ``results/bench/tmp/`` (shared with ``neighbors``). All of it is
  the training part; there is no validation part.

Measured:

- ``ease``: ``EASE().fit`` wall and CPU seconds (CPU: user + system of every thread of the
  process), the active anime (the size n of its n x n matrices), then ``score`` of the users in
  batches of 1,024 (users/s). On the full synthetic set scoring stops after ``SCORE_USERS_FULL``
  users (the first ones: synthetic users are i.i.d.), which the result names.
- ``multvae``: ``MultVAE(epochs=...)`` at its defaults otherwise (``params`` in the result records
  every setting used, batch size included: the defaults come from its tuning), with
  ``early_stopping=False``. Training throughput is users per second of the gradient
  steps alone (a Keras callback timestamps every batch), excluding the first epoch on the real
  sets (it includes tracing) and the first ``WARMUP_STEPS`` steps on the synthetic one. On the
  synthetic set one epoch of 310k users takes tens of minutes on 2 shared cores, so the real
  full-size model (softmax over the ~17.5k active anime, every user's history in its tables) trains for
  ``WARMUP_STEPS + TIMED_STEPS`` steps and the callback stops it: the steps, users and seconds
  measured are reported; the epoch time beside them is *extrapolated* (steps per epoch x seconds
  per step) and labelled so. On the synthetic set (quick and full) Mult-VAE is measured twice, at
  its defaults and with its fast path (``FAST_PATH``: ``sparse_input`` and ``fused_adam``, the
  same model and loss; issue 16), in separate subprocesses one after the other; each run's
  ``variant`` says which. Scoring: ``score`` in batches of 1,024 users (its
  ``eval_batch_size``), after one untimed batch that traces the ``tf.function``; capped as EASE's
  on the full synthetic set.
- The 1-minute load average at the start and the end of every timed step: the machine has 2 cores
  shared with other jobs, and wall time includes waiting for a core (CPU time does not).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from research.bench.report import in_subprocess, md_table
from research.config import REPO_ROOT

CONFIGS = REPO_ROOT / "experiments" / "configs"
REAL = {"mal2020_sample": "mal2020_sample.toml", "cooperunion_5k": "cooperunion_5k.toml"}
SCORE_BATCH = 1_024
#: multvae full epochs on the real sets (the first is not in the throughput)
EPOCHS = {"mal2020_sample": 6, "cooperunion_5k": 4}
#: multvae gradient steps on the synthetic set: untimed warm-up (tracing), then timed
WARMUP_STEPS, TIMED_STEPS = 10, 200
WARMUP_STEPS_QUICK, TIMED_STEPS_QUICK = 3, 20
#: users scored on the full synthetic set (all of them on the others)
SCORE_USERS_FULL = 50 * SCORE_BATCH
#: multvae's fast path (research/models/keras/multvae.py's "Fast path"), measured beside its defaults
FAST_PATH = {"sparse_input": True, "fused_adam": True}


def _load() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


def _cpu() -> float:
    return time.process_time()  # user + system time of every thread of this process


# ---- data -------------------------------------------------------------------------------------
def synthetic_path(quick: bool) -> Path:
    """The neighbors benchmark's synthetic matrix of this size, generated if missing (into a
    temporary name, then renamed, so that a concurrent reader never sees half a file)."""
    from research.bench import neighbors as N

    size = N.QUICK if quick else N.FULL
    d = N.tmp_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"neighbors_u{size['users']}_i{size['items']}_m{int(size['mean_per_user'])}.npz"
    if not path.exists():
        tmp = d / f"{path.stem}.{os.getpid()}.tmp.npz"
        if quick:
            N.generate(str(tmp), **size)
        else:  # ~2 GB of temporaries at full size: keep them out of this process
            in_subprocess("research.bench.neighbors:generate", path=str(tmp), **size)
        os.replace(tmp, path)
    return path


def load_data(data: dict):
    """(train, val or None, description) of ``data``: {"kind": "real", "config": file name} or
    {"kind": "synthetic", "path": npz}."""
    if data["kind"] == "synthetic":
        import scipy.sparse as sp

        from research.bench.neighbors import _interactions

        train = _interactions(sp.load_npz(data["path"]).tocsr())
        return train, None, {"users": train.n_users, "items": train.n_items, "train_rows": len(train),
                             "val_rows": 0}
    from research import config
    from research.bench.peers import load_data as peers_load
    from research.data.splits import make_split

    cfg = config.load(CONFIGS / data["config"])
    ds, loader = peers_load(cfg)
    split = make_split(ds.interactions, cfg.split, 0)
    return split.train, split.val, {"users": split.train.n_users, "items": split.train.n_items,
                                    "train_rows": len(split.train), "val_rows": len(split.val),
                                    "split": "seed 0", "loader": loader}


def _score_loop(score, n_users: int, max_users: int | None, batch: int = SCORE_BATCH) -> dict:
    users = np.arange(n_users if max_users is None else min(n_users, int(max_users)), dtype=np.int64)
    l0, t0, c0 = _load(), time.perf_counter(), _cpu()
    for a in range(0, len(users), batch):
        s = score(users[a:a + batch])
        assert s.shape[0] == min(batch, len(users) - a)
        del s
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"users": int(len(users)), "of_users": int(n_users), "batch": batch, "seconds": wall,
            "cpu_seconds": cpu, "users_per_s": len(users) / wall if wall > 0 else None,
            "load_average_1min": l0, "load_average_1min_end": _load()}


# ---- subprocess targets -----------------------------------------------------------------------
def measure_ease(data: dict, max_score_users: int | None = None) -> dict:
    """(Subprocess target) load ``data``, time ``EASE().fit`` and ``score`` of its users."""
    from research.bench.report import peak_rss_mb
    from research.models.ease import EASE

    train, val, info = load_data(data)
    input_rss = peak_rss_mb()
    model = EASE()
    l0, t0, c0 = _load(), time.perf_counter(), _cpu()
    model.fit(train, val)
    fit = {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0, "load_average_1min": l0,
           "load_average_1min_end": _load(), "active_items": int(len(model.active)),
           "peak_rss_mb": peak_rss_mb()}
    score = _score_loop(model.score, train.n_users, max_score_users)
    score["peak_rss_mb"] = peak_rss_mb()
    return {"model": "ease", "params": {"lam": model.lam, "weighting": model.weighting}, "data": info,
            "input_rss_mb": input_rss, "fit": fit, "score": score}


def measure_multvae(data: dict, epochs: int = 1, stop_after_steps: int | None = None,
                    warmup_steps: int = 0, max_score_users: int | None = None,
                    params: dict | None = None) -> dict:
    """(Subprocess target) load ``data``, train ``MultVAE(**params)`` for ``epochs`` full epochs
    (the first untimed), or, with ``stop_after_steps``, for that many gradient steps of which the
    first ``warmup_steps`` are untimed; then time ``score``."""
    import research  # noqa: F401  (legacy Keras before TensorFlow)
    from research.bench.report import peak_rss_mb
    from research.models.keras.common import tf
    from research.models.keras.multvae import MultVAE

    class Timer(tf.keras.callbacks.Callback):
        """Timestamps (wall, CPU) of epoch starts, batch ends and validation; stops training
        after ``stop_after`` batches."""

        def __init__(self, stop_after):
            super().__init__()
            self.stop_after = stop_after
            self.train_begin = None
            self.epochs = []  # per epoch: {"begin", "batches": [(wall, cpu)], "test": (t0, t1), "end"}
            self.n = 0

        def on_train_begin(self, logs=None):
            self.train_begin = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"begin": (time.perf_counter(), _cpu()), "batches": [], "test": None})

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1]["batches"].append((time.perf_counter(), _cpu()))
            self.n += 1
            if self.stop_after is not None and self.n >= self.stop_after:
                self.model.stop_training = True

        def on_test_begin(self, logs=None):
            if self.epochs:
                self.epochs[-1]["test"] = [time.perf_counter(), None]

        def on_test_end(self, logs=None):
            if self.epochs and self.epochs[-1]["test"]:
                self.epochs[-1]["test"][1] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1]["end"] = time.perf_counter()

    train, val, info = load_data(data)
    input_rss = peak_rss_mb()
    model = MultVAE(epochs=epochs, **(params or {}))
    timer = Timer(stop_after_steps)
    l0, t0, c0 = _load(), time.perf_counter(), _cpu()
    model.fit(train, val, epochs=epochs, early_stopping=False, callbacks=[timer])
    fit_wall, fit_cpu, l1 = time.perf_counter() - t0, _cpu() - c0, _load()
    n_train_users = int(len(np.unique(train.user)))
    bs = model.batch_size
    steps_per_epoch = int(model.fit_state["steps_per_epoch"])

    def batch_users(i):
        return min(bs, n_train_users - i * bs)

    ep = timer.epochs
    fit = {"batch_size": bs, "training_users": n_train_users, "steps_per_epoch": steps_per_epoch,
           "fit_seconds": fit_wall, "fit_cpu_seconds": fit_cpu, "load_average_1min": l0,
           "load_average_1min_end": l1, "setup_seconds": timer.train_begin - t0,
           "epochs_run": len(ep), "steps_run": timer.n,
           "epoch_train_seconds": [e["batches"][-1][0] - e["begin"][0] for e in ep if e["batches"]],
           "epoch_validation_seconds": [e["test"][1] - e["test"][0] for e in ep if e["test"] and e["test"][1]],
           "final_loss": float(model.history["loss"][-1]) if model.history.get("loss") else None}
    if stop_after_steps is None:  # full epochs: time epochs 2.. (the first includes tracing)
        timed = ep[1:]
        if not timed:
            raise ValueError("multvae timing needs epochs >= 2")
        seconds = sum(e["batches"][-1][0] - e["begin"][0] for e in timed)
        cpu = sum(e["batches"][-1][1] - e["begin"][1] for e in timed)
        users = n_train_users * len(timed)
        fit.update(mode="epochs", timed_epochs=len(timed), timed_steps=steps_per_epoch * len(timed),
                   first_epoch_train_seconds=fit["epoch_train_seconds"][0],
                   epoch_seconds=seconds / len(timed), epoch_seconds_extrapolated=False)
    else:  # a fixed number of steps inside the first epoch, the first warmup_steps untimed
        b = ep[0]["batches"]
        if len(b) <= warmup_steps:
            raise ValueError(f"multvae ran {len(b)} steps, not more than the {warmup_steps} warm-up steps")
        start = b[warmup_steps - 1] if warmup_steps else ep[0]["begin"]
        seconds, cpu = b[-1][0] - start[0], b[-1][1] - start[1]
        users = sum(batch_users(i) for i in range(warmup_steps, len(b)))
        per_step = seconds / (len(b) - warmup_steps)
        fit.update(mode="steps", warmup_steps=warmup_steps, timed_steps=len(b) - warmup_steps,
                   warmup_seconds=start[0] - ep[0]["begin"][0],
                   epoch_seconds=per_step * steps_per_epoch, epoch_seconds_extrapolated=True)
    fit.update(timed_users=int(users), timed_seconds=seconds, timed_cpu_seconds=cpu,
               users_per_s=users / seconds if seconds > 0 else None,
               seconds_per_step=seconds / fit["timed_steps"], peak_rss_mb=peak_rss_mb())
    n_users = model.meta.n_users
    model.score(np.arange(min(SCORE_BATCH, n_users), dtype=np.int64))  # traces the tf.function
    score = _score_loop(model.score, n_users, max_score_users)
    score.update(peak_rss_mb=peak_rss_mb(), warmup="one untimed batch (tf.function tracing)")
    params = {k: v for k, v in model.get_config().items() if k not in ("epochs", "checkpoint_dir", "verbose")}
    variant = "fast_path" if params.get("sparse_input") or params.get("fused_adam") else "default"
    return {"model": "multvae", "variant": variant,
            "params": {**params, "modelled_items": int(len(model.fit_state["out_items"]))},
            "data": info, "input_rss_mb": input_rss, "fit": fit, "score": score}


# ---- the benchmark ----------------------------------------------------------------------------
def run(quick: bool = False) -> dict:
    """Measure (see the module docstring). Returns the JSON-able result."""
    notes = []
    sets = [] if quick else [(name, {"kind": "real", "config": cfg}) for name, cfg in REAL.items()]
    t0 = time.perf_counter()
    synth = synthetic_path(quick)
    gen_seconds = time.perf_counter() - t0
    sets.append(("synthetic", {"kind": "synthetic", "path": str(synth)}))
    warmup, timed = (WARMUP_STEPS_QUICK, TIMED_STEPS_QUICK) if quick else (WARMUP_STEPS, TIMED_STEPS)
    runs = []
    for name, data in sets:
        big = name == "synthetic" and not quick
        vae = ({"epochs": 1, "stop_after_steps": warmup + timed, "warmup_steps": warmup}
               if name == "synthetic" else {"epochs": EPOCHS[name]})
        plan = [("ease", "research.bench.autoencoders:measure_ease",
                 {"max_score_users": SCORE_USERS_FULL if big else None}),
                ("multvae", "research.bench.autoencoders:measure_multvae",
                 {**vae, "max_score_users": SCORE_USERS_FULL if big else None})]
        if name == "synthetic":
            plan.append(("multvae (fast path)", "research.bench.autoencoders:measure_multvae",
                         {**vae, "max_score_users": SCORE_USERS_FULL if big else None, "params": FAST_PATH}))
        for model, target, kw in plan:
            print(f"[bench] autoencoders: {model} on {name} ...", flush=True, file=sys.stderr)
            try:
                out = in_subprocess(target, data=data, **kw)
            except Exception as exc:  # keep the other measurements
                notes.append(f"{model} on {name} failed: {str(exc)[-400:]}")
                continue
            runs.append({"dataset": name, **out["result"], "peak_rss_mb": out["peak_rss_mb"],
                         "rss_after_imports_mb": out["rss_after_imports_mb"],
                         "process_seconds": out["process_seconds"], "call_cpu_seconds": out["cpu_seconds"]})
    configs = {json.dumps({k: v for k, v in r["params"].items() if k != "modelled_items"}, sort_keys=True,
                          default=str) for r in runs if r["model"] == "multvae" and r.get("variant") != "fast_path"}
    if len(configs) > 1:  # research/models/keras/multvae.py's defaults changed during the run
        notes.append("multvae ran with different configurations on different data sets (its defaults "
                     "changed during the run): compare its rows with care; see each run's params")
    if not quick:
        notes.append(f"synthetic: ease and multvae score the first {SCORE_USERS_FULL:,} of its users; "
                     f"multvae trains {WARMUP_STEPS} untimed + {TIMED_STEPS} timed steps of one epoch "
                     "(its epoch time is extrapolated)")
    return {"status": "ok" if runs else "failed", "runs": runs, "notes": notes,
            "settings": {"score_batch": SCORE_BATCH, "multvae_epochs_real": EPOCHS,
                         "multvae_warmup_steps": warmup, "multvae_timed_steps": timed,
                         "synthetic_path": str(synth.relative_to(REPO_ROOT)) if synth.is_relative_to(REPO_ROOT)
                         else str(synth), "synthetic_lookup_seconds": gen_seconds}}


def _f(v, digits=3):
    if v is None:
        return None
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _ld(d):
    a, b = d.get("load_average_1min"), d.get("load_average_1min_end")
    return f"{a:.1f} → {b:.1f}" if a is not None and b is not None else None


def markdown(res: dict) -> str:
    if not res.get("runs"):
        return ""
    rows = []
    for r in res.get("runs", []):
        d, fit, sc = r["data"], r["fit"], r["score"]
        size = f"{d['users']:,} x {d['items']:,}, {d['train_rows']:,} train rows"
        if r["model"] == "ease":
            rows.append([r["dataset"], size, "ease", f"fit: {fit['active_items']:,} active anime",
                         _f(fit["seconds"]), _f(fit["cpu_seconds"]), None, f"{fit['peak_rss_mb']:,.0f}",
                         _ld(fit)])
        else:
            if fit["mode"] == "epochs":
                what = (f"train: epochs 2-{fit['epochs_run']} ({fit['timed_steps']:,} steps, "
                        f"{fit['timed_users']:,} users), {_f(fit['epoch_seconds'])} s/epoch "
                        f"(first: {_f(fit['first_epoch_train_seconds'])} s)")
            else:
                what = (f"train: {fit['timed_steps']:,} steps after {fit['warmup_steps']} untimed "
                        f"({fit['timed_users']:,} users), {_f(fit['seconds_per_step'])} s/step; epoch of "
                        f"{fit['steps_per_epoch']:,} steps ≈ {_f(fit['epoch_seconds'])} s (*extrapolated*)")
            fast = " fast path (sparse_input, fused_adam)" if r.get("variant") == "fast_path" else ""
            rows.append([r["dataset"], size, f"multvae{fast} ({r['params']['modelled_items']:,} anime modelled)",
                         what, _f(fit["timed_seconds"]), _f(fit["timed_cpu_seconds"]), _f(fit["users_per_s"]),
                         f"{fit['peak_rss_mb']:,.0f}", _ld(fit)])
        part = "all" if sc["users"] == sc["of_users"] else "first"
        label = r["model"] + (" fast path" if r.get("variant") == "fast_path" else "")
        rows.append([r["dataset"], size, label, f"score: {part} {sc['users']:,} of {sc['of_users']:,} users",
                     _f(sc["seconds"]), _f(sc["cpu_seconds"]), _f(sc["users_per_s"]),
                     f"{r['peak_rss_mb']:,.0f}", _ld(sc)])
    batches = sorted({r["params"].get("batch_size") for r in res.get("runs", []) if r["model"] == "multvae"})
    batch = " / ".join(f"{b:,}" for b in batches if b) or "?"
    table = md_table(["data", "users x anime", "model", "timed step", "wall s", "CPU s", "users/s",
                      "peak RSS MB (process, so far)", "load 1 min (start → end)"], rows)
    return "\n".join([
        "EASE and Mult-VAE at their defaults (Mult-VAE without early stopping), each on each data set in "
        "a fresh subprocess: EASE's fit (XᵀX over the active anime and its inverse), Mult-VAE's gradient "
        f"steps (batches of {batch} users; the first epoch, or the first warm-up steps, are excluded as "
        "they include tracing; s/epoch counts the steps only, not the per-epoch validation), and `score` "
        "in batches of 1,024 users. Times are wall-clock seconds on a "
        "shared 2-core machine (the load average is beside each row; CPU seconds count every thread). "
        "Peak RSS is the subprocess's high-water mark at the end of the step, data loading included. "
        "Real sets: seed-0 split, fit on train; synthetic: `neighbors`' long-tailed matrix, all rows "
        "in training. Mult-VAE's fast path (`sparse_input`, `fused_adam`: the same model and loss, "
        "its bag kept sparse and Adam's update fused) is measured on the synthetic set beside its defaults.",
        "", table])
