"""``rating_models``: fit time, training throughput, prediction throughput and peak memory of the
rating models of the rating-at-its-peak work — ``embedding_dot`` (the reference), ``svdpp``
(its SVD++ history term), ``autorec`` (I-AutoRec) and ``blend`` (ridge over bias, item_knn,
user_knn) — at their defaults.

Data sets (each model on each set in its own fresh subprocess, so ``peak_rss_mb`` is that model's
own, data loading included): ``mal2020_sample`` and ``cooperunion_5k``, the seed-0 split of their
configs (``research.bench.autoencoders.load_data``), fitted as the harness fits them (train, with
the validation part for early stopping / the blend's ridge); ``--quick``: the synthetic generator's
small set: a 300-user synthetic world written once to ``results/bench/tmp``.

Measured: ``fit`` wall and CPU seconds (CPU: user + system of every thread), the epochs the Keras
models ran (early stopping decides), ``train_rows_per_s`` = rated training rows x epochs / fit
seconds (the whole fit, validation passes and tracing included: a lower bound on the step
throughput), then ``predict`` of every rated test row (rows/s) and its rmse (as a sanity check
against the tables, not a result). The 1-minute load average at the start and end of the fit:
the machine has 2 cores shared with other jobs, and wall time includes waiting for a core.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from research.bench.autoencoders import REAL, _cpu, _load
from research.bench.report import in_subprocess, md_table
from research.config import REPO_ROOT

MODELS = ("embedding_dot", "svdpp", "autorec", "blend")
QUICK_PARAMS = {"embedding_dot": {"epochs": 3}, "svdpp": {"epochs": 3}, "autorec": {"epochs": 3},
                "blend": {}}


def _quick_data() -> dict:
    """A small synthetic world (written once under results/bench/tmp) as a data spec."""
    from research.bench.neighbors import tmp_dir
    from research.data import synth

    d = tmp_dir() / "rating_models_quick"
    if not (d / "DONE").exists():
        synth.generate(d, users=300, items=200, ratings_per_user=30, seed=0)
        (d / "DONE").write_text("ok\n")
    return {"kind": "synth", "path": str(d)}


def _load_split(data: dict):
    """(train, val, test, description) of ``data``'s seed-0 split, loaded as the runner loads it."""
    from research import config as C
    from research.data.load import load_dataset
    from research.data.splits import make_split

    configs = REPO_ROOT / "experiments" / "configs"
    if data["kind"] == "synth":
        cfg = C.load(configs / "base.toml", [f'data.path="{data["path"]}"', 'data.ratings="rating_complete.csv"'])
    else:
        cfg = C.load(configs / data["config"])
    split = make_split(load_dataset(cfg, quiet=True).interactions, cfg.split, 0)
    return split.train, split.val, split.test, {"users": split.train.n_users, "items": split.train.n_items,
                                                "train_rows": len(split.train), "split": "seed 0"}


def measure(name: str, data: dict, params: dict | None = None) -> dict:
    """(Subprocess target) fit ``name`` at its defaults (``params`` over them) and predict the test part."""
    from research.bench.report import peak_rss_mb
    from research.models import registry

    train, val, test, info = _load_split(data)
    model = registry.build(name, dict(params or {}), seed=0)
    l0, t0, c0 = _load(), time.perf_counter(), _cpu()
    model.fit(train, val)
    fit_s, fit_cpu = time.perf_counter() - t0, _cpu() - c0
    em = model.extra_metrics()
    epochs = em.get("fit_epochs")
    rated = int(np.count_nonzero(train.rated))
    rated_test = test.only_rated()
    t1 = time.perf_counter()
    pred = model.predict(rated_test.user, rated_test.item)
    pred_s = time.perf_counter() - t1
    rmse = float(np.sqrt(np.mean((np.asarray(pred, np.float64) - rated_test.rating) ** 2)))
    return {"model": name, "params": dict(params or {}), "data": info,
            "fit": {"seconds": fit_s, "cpu_seconds": fit_cpu, "epochs": epochs,
                    "load_average_1min": l0, "load_average_1min_end": _load(), "peak_rss_mb": peak_rss_mb()},
            "train_rows_per_s": (rated * (epochs or 1)) / fit_s if fit_s > 0 else None,
            "predict": {"rows": int(len(rated_test)), "seconds": pred_s,
                        "rows_per_s": len(rated_test) / pred_s if pred_s > 0 else None, "rmse": rmse}}


def run(quick: bool = False) -> dict:
    """Measure (see the module docstring). Returns the JSON-able result."""
    sets = [("synthetic_quick", _quick_data())] if quick else \
        [(name, {"kind": "real", "config": cfg}) for name, cfg in REAL.items()]
    runs, notes = [], []
    for set_name, data in sets:
        for name in MODELS:
            print(f"[bench] rating_models: {name} on {set_name} ...", flush=True, file=sys.stderr)
            try:
                out = in_subprocess("research.bench.rating_models:measure", name=name, data=data,
                                    params=QUICK_PARAMS[name] if quick else {})
            except Exception as exc:  # keep the other measurements
                notes.append(f"{name} on {set_name} failed: {str(exc)[-400:]}")
                continue
            runs.append({"dataset": set_name, **out["result"], "peak_rss_mb": out["peak_rss_mb"],
                         "process_seconds": out["process_seconds"]})
    return {"status": "ok" if runs else "failed", "runs": runs, "notes": notes}


def _f(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"


def markdown(res: dict) -> str:
    if not res.get("runs"):
        return ""
    rows = [[r["dataset"], r["model"], _f(r["fit"]["seconds"]), _f(r["fit"]["cpu_seconds"]),
             str(r["fit"]["epochs"] or "—"), _f(r["train_rows_per_s"], 0), _f(r["predict"]["rows_per_s"], 0),
             f"{r['predict']['rmse']:.4f}", _f(r["peak_rss_mb"], 0),
             f"{_f(r['fit']['load_average_1min'])}–{_f(r['fit']['load_average_1min_end'])}"]
            for r in res["runs"]]
    head = ["data", "model", "fit s", "fit CPU s", "epochs", "train rows/s (whole fit)", "predict rows/s",
            "test rmse", "peak RSS MB", "load"]
    notes = "".join(f"\n- {n}" for n in res.get("notes", []))
    return md_table(head, rows) + notes + "\n"
