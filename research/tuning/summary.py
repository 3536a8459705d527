"""``tuning.json``: every trial's status, values, metrics, time and memory, and the best trial (the
one file that says what a search found; written after every trial, status "running" or "failed",
and when the search stops or ends: "interrupted", "finished")."""
from __future__ import annotations

import time

from research import results as R
from research.tuning.context import Context
from research.tuning.space import TUNER_KEYS


def _trials(ctx: Context, oracle) -> list[dict]:
    rows = []
    order = list(dict.fromkeys(list(oracle.start_order) + sorted(oracle.trials)))
    for tid in order:
        t = oracle.trials[tid]
        rec = ctx.read_record(tid)
        status = t.status if t.status != "INVALID" else "FAILED"
        if rec.get("status") == "FAILED" and status == "RUNNING":
            status = "FAILED"
        hp_now = {k: v for k, v in t.hyperparameters.values.items() if k not in TUNER_KEYS}
        row = {"trial_id": tid, "status": status,
               "is_default": ctx.defaults is not None and hp_now == ctx.defaults,
               "hyperparameters": rec.get("hyperparameters",
                                          {k: v for k, v in t.hyperparameters.values.items()
                                           if k not in TUNER_KEYS}),
               "objective": t.score if status == "COMPLETED" else None}
        for key in ("metrics", "seconds", "rss_mb", "error"):
            if key in rec:
                row[key] = rec[key]
        rows.append(row)
    return rows


def _best(ctx: Context, oracle) -> dict | None:
    done = [t for t in oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
    if not done:
        return None
    # keras-tuner's own ranking, ties broken by the earlier trial
    sign = 1.0 if ctx.direction == "min" else -1.0
    order = {tid: i for i, tid in enumerate(oracle.start_order)}
    t = min(done, key=lambda t: (sign * t.score, order.get(t.trial_id, 0)))
    rec = ctx.read_record(t.trial_id)
    hp = rec.get("hyperparameters", {k: v for k, v in t.hyperparameters.values.items() if k not in TUNER_KEYS})
    return {"trial_id": t.trial_id, "hyperparameters": hp, "params": {**ctx.spec.params, **hp},
            "objective": ctx.objective, "value": t.score}


def write_summary(ctx: Context, oracle, status: str) -> dict:
    """Write ``tuning.json`` (the search's ``meta``, ``status``, every trial, the best) and return it."""
    trials = _trials(ctx, oracle)
    summary = {**ctx.meta, "status": status, "updated": time.time(), "trials": trials, "best": _best(ctx, oracle),
               "n_completed": sum(r["status"] == "COMPLETED" for r in trials),
               "search_seconds": sum(r.get("seconds", 0.0) for r in trials),
               "max_rss_mb": max((r["rss_mb"] for r in trials if r.get("rss_mb")), default=None)}
    R.write_json(ctx.out / "tuning.json", summary)
    return summary
