"""The final refit on train + validation, scored on test, written as a run folder.

**Final refit** (``tune.retrain_on_full``): the untuned default (the table's own arguments) is
fitted on train and scored on validation like a trial (``default`` in tuning.json: the number
the search had to beat) — unless the search's first trial was that very configuration (the usual
case: the oracles try the default first), whose metrics are then used (``default.from_trial``)
instead of the same fit a second time. Then the best configuration and the default are both refitted
on train + validation with ``val=None`` — no internal holdout, so neither loses data and they
stay comparable. Without validation a Keras model cannot stop early, so it trains for the
epoch that early stopping kept in its validation fit (``best_epoch``; its ``epochs`` otherwise).
They are scored on test by the harness, next to the trivial baselines (global mean, bias,
popularity) refitted the same way. When the tuned model is itself a baseline (``bias``), its
baseline row is the default. This writes
``metrics.json`` (models ``NAME`` and ``NAME_tuned``), ``table.md``, and the refitted models with
``meta/``/``seen.npz`` (``research.results.RunFolder``, as the runner writes them) so the folder
works with ``animerec recommend --run``.
"""
from __future__ import annotations

import sys
import time

from research import results as R
from research.models import registry
from research.seeding import child_seed
from research.tuning.context import Context, short
from research.tuning.memory import release_memory
from research.tuning.space import BASELINES


def _fit_score(ctx: Context, typ: str, params: dict, seed: int, split, part: str, log_name: str, *,
               refit_on=None):
    """Build, fit and score one model; returns (model, EvalResult, metrics dict). ``refit_on``
    (the refit: train + validation rows) fits on those rows without validation; None fits on the
    split's training part with its validation part (``Recommender.fit_split``), as a trial does."""
    model = registry.build(typ, params, seed, where=f" ({log_name})")
    model.log_dir = str(ctx.out / "logs" / log_name)
    t0 = time.perf_counter()
    if refit_on is None:
        model.fit_split(split)
    else:
        model.fit(refit_on, None)
    fit_seconds = time.perf_counter() - t0
    res = ctx.evaluate(model, split, part=part)
    return model, res, {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}


def _refit_params(typ: str, params: dict, val_metrics: dict) -> dict:
    """A Keras model refitted without validation cannot stop early: give it the epoch count that
    early stopping kept when it was fitted with validation (``best_epoch``), if any."""
    if typ in registry.KERAS_MODELS and val_metrics.get("best_epoch"):
        return {**params, "epochs": int(val_metrics["best_epoch"])}
    return dict(params)


def _default_trial(summary: dict) -> dict | None:
    """The completed trial that fitted exactly the default, if any (``is_default``: its values are
    the table's, or the constructor's where the table is silent). A trial builds its model from
    the table's parameters updated with those values, with the same seed, training rows and
    validation scoring as the default's own fit below, so its metrics are that fit's (seeded fits
    are reproducible on CPU). Not with Hyperband, whose trials set their own epochs."""
    for r in summary["trials"]:
        if (r.get("is_default") and r["status"] == "COMPLETED" and r.get("metrics")
                and "epochs" not in r["hyperparameters"]):
            return r
    return None


def refit(ctx: Context, dataset, split, summary: dict, quiet: bool = False) -> None:
    """Score the untuned default on validation (for tuning.json), then refit default, tuned and
    baselines on train + validation, score them on test, and write metrics.json and the table."""
    from research.report import markdown_table

    cfg, spec, out = ctx.cfg, ctx.spec, ctx.out
    best = summary["best"]
    best_metrics = next(r for r in summary["trials"] if r["trial_id"] == best["trial_id"]).get("metrics", {})

    # the default on validation: the number the search had to beat
    trial = _default_trial(summary)
    if trial is not None:  # the search's first trial was the default itself: the same fit, not redone
        default_val = dict(trial["metrics"])
    else:
        if not quiet:
            print(f"[animerec] default {spec.name} on validation ...", file=sys.stderr, flush=True)
        model, _, default_val = _fit_score(ctx, spec.type, dict(spec.params), ctx.model_seed, split, "val",
                                           "default_val")
        del model
        release_memory()
    summary["default"] = {"params": dict(spec.params), "objective": default_val.get(ctx.objective),
                          "metrics": default_val, "from_trial": trial["trial_id"] if trial else None}
    R.write_json(out / "tuning.json", summary)

    train_val = split.train_val()
    rows = []  # (name, type, params, seed)
    for b in BASELINES:
        params = next((dict(m.params) for m in cfg.models if m.name == b and m.type == b), {})
        rows.append((b, b, params, child_seed(ctx.seed, b)))
    default_params = _refit_params(spec.type, spec.params, default_val)
    if spec.name not in BASELINES:
        rows.append((spec.name, spec.type, default_params, ctx.model_seed))
    else:  # the baseline row is the default itself
        rows = [(n, t, default_params if n == spec.name else p, sd) for n, t, p, sd in rows]
    tuned_params = _refit_params(spec.type, best["params"], best_metrics)
    rows.append((f"{spec.name}_tuned", spec.type, tuned_params, ctx.model_seed))

    folder = R.RunFolder(out, cfg.results_path)  # the runner's writer: the same files, per_rating too
    folder.write_meta(dataset.meta)
    folder.write_seen(train_val)
    folder.metrics = {"experiment": cfg.experiment, "dataset": dataset.name, "split": split.name, "seed": ctx.seed,
               "rows": {"train": len(train_val), "val": 0, "test": len(split.test)},
               "fitted_on": "train+validation", "scored_on": "test",
               "tuned": {"model": spec.name, "trial_id": best["trial_id"], "hyperparameters": best["hyperparameters"],
                         "objective": ctx.objective, "val_value": best["value"],
                         "default_val_value": summary["default"]["objective"],
                         "refit_params": tuned_params, "default_refit_params": default_params},
               "models": {}}
    run_cfg = cfg.to_dict()
    run_cfg["models"] = {name: {"type": typ, **params} for name, typ, params, _ in rows}
    R.write_json(folder.file("config.json"), {**run_cfg, "seed": ctx.seed, "tuned_from": cfg.to_dict()["models"]})
    for name, typ, params, mseed in rows:
        if not quiet:
            print(f"[animerec] refit on train+validation: {name} ...", file=sys.stderr, flush=True)
        model, res, m = _fit_score(ctx, typ, params, mseed, split, "test", f"refit_{name}", refit_on=train_val)
        folder.add_model(name, m, model, res)
        del model
        release_memory()
    table = markdown_table([folder.metrics["models"]], cfg.eval.k)
    folder.finish(table)
    if not quiet:
        hp = ", ".join(f"{k}={short(v)}" for k, v in best["hyperparameters"].items())
        dv = summary["default"]["objective"]
        print(f"\n{cfg.experiment} — {dataset.name}, {split.name}; refit on train+validation, scored on test\n"
              f"{spec.name}_tuned: {hp} (trial {best['trial_id']}; val {ctx.objective} {best['value']:.4f}, "
              f"default {dv:.4f})\n\n{table}\ntuning folder: {out}")
