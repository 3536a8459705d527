"""``animerec tune``: keras-tuner searches over any registered model, scored by the one harness.

keras-tuner 1.4 builds on Keras 3 and refuses the tf-keras / TFRS models this project uses as a
``build(hp)`` result, so the search does not use a hypermodel at all: a ``keras_tuner.Tuner``
subclass overrides ``run_trial`` to build the model from the registry, fit it on the split's
train part (with the validation part for the model's own early stopping, if it has any), and score
it with :func:`research.eval.harness.evaluate` on the **validation** part (train items excluded).
The test part is never looked at during the search. Because the trial is just "build, fit,
evaluate", the same tuner searches the classical models too (damping of ``bias``, neighbours and
shrinkage of ``item_knn``, clusters of ``kmeans``).

Decisions (and why); the others are in the docstrings of ``research.tuning.space`` (search space),
``folder`` (folder, resume), ``oracles`` (oracles, default first), ``tuner`` (failures, memory)
and ``hparams`` (TensorBoard):

- **Seeds**: the search uses the config's first seed. The split is the runner's split for that
  seed (``make_split(..., seed)``), and every trial's model gets ``child_seed(seed, NAME)`` — the
  seed ``animerec run`` gives that model — so trials differ only in their hyperparameters (common
  random numbers) and the untuned default is exactly the runner's model. The oracle samples with
  its own child seed ``child_seed(seed, "tune-oracle/NAME")``.
- **Final refit** (``tune.retrain_on_full``): the untuned default (the table's own arguments) is
  first fitted on train and scored on validation like a trial (``default`` in tuning.json: the
  number the search had to beat). Then the best configuration and the default are both refitted
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
from pathlib import Path
from typing import Callable

from research import results as R
from research.config import Config
from research.errors import ConfigError
from research.models import registry
from research.seeding import child_seed, seed_everything
from research.tuning.context import Context, short
from research.tuning.folder import check_data, data_fingerprint, tuning_dir
from research.tuning.hparams import declare_hparams
from research.tuning.oracles import make_oracle, requeue_failed
from research.tuning.space import (
    BASELINES,
    ORACLES,
    SPACE_TYPES,
    check_objective,
    check_space,
    default_values,
    tuned_spec,
)
from research.tuning.summary import write_summary
from research.tuning.tuner import release_memory, rss_mb, tuner_class

# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------

def tune(cfg: Config, dataset=None, *, quiet: bool = False, trial_hook: Callable | None = None) -> Path:
    """Run (or resume) the search of ``cfg.tune`` and, if asked, the final refit on train+validation.

    Args:
        cfg: the experiment config; ``cfg.tune`` and ``[models.NAME.space]`` describe the search.
        dataset: an already loaded ``Dataset`` (default: ``load_dataset(cfg)``).
        quiet: no progress lines or table on the terminal.
        trial_hook: called as ``hook(trial_id, params)`` at the start of every trial, before the
            model is built (for tests: raise to make a trial fail or to simulate a kill).

    Returns:
        The tuning folder (``tuning.json``; with ``retrain_on_full`` also ``metrics.json`` and
        ``table.md``).

    Raises:
        ConfigError: a bad space, oracle, objective or model argument (before any data are read).
        Exception: the exception of a failed trial, after tuning.json records it as FAILED.
    """
    from research.data.splits import make_split

    spec = tuned_spec(cfg)
    oracle_name = cfg.tune.oracle
    if oracle_name not in ORACLES:
        raise ConfigError(f"tune.oracle: expected one of {', '.join(ORACLES)}, got {oracle_name!r}")
    check_space(spec, oracle_name)
    if spec.params.get("use_validation") or "use_validation" in spec.space:
        raise ConfigError(f"models.{spec.name}.use_validation: a trial would fit on the validation part it "
                          f"is scored on; leave it false (the final refit uses train + validation anyway)")
    objective, direction = check_objective(cfg, spec)
    seed = int(cfg.seeds[0]) if cfg.seeds else 0
    model_seed = child_seed(seed, spec.name)
    registry.build(spec.type, dict(spec.params), model_seed, where=f" (models.{spec.name})")  # arg errors now
    if len(cfg.seeds) > 1 and not quiet:
        print(f"[animerec] tune: searching on the first seed ({seed}) of {list(cfg.seeds)}", file=sys.stderr)

    if dataset is None:
        from research.data.load import load_dataset

        dataset = load_dataset(cfg, quiet=quiet)
    seed_everything(seed)
    split = make_split(dataset.interactions, cfg.split, seed)
    from research.experiment import dataset_id

    out = tuning_dir(cfg, seed, dataset_id(dataset))
    from research import locking

    locking.acquire(out)  # one search per tuning folder (a second one exits 2 naming this pid)
    check_data(out, split, quiet)
    out.mkdir(parents=True, exist_ok=True)
    R.RunFolder(out, cfg.results_path).start({**cfg.to_dict(), "seed": seed}, seed, dataset.manifest)

    meta = {"experiment": cfg.experiment, "dataset": dataset.name, "split": split.name, "seed": seed,
            "data_fingerprint": data_fingerprint(split),
            "model": spec.name, "type": spec.type, "model_seed": model_seed, "oracle": oracle_name,
            "objective": objective, "direction": direction, "scored_on": "validation",
            "max_trials": cfg.tune.max_trials, "space": spec.space, "fixed_params": spec.params,
            "rows": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}}
    if oracle_name == "hyperband":
        meta.update(max_epochs=cfg.tune.max_epochs, hyperband_factor=cfg.tune.hyperband_factor)
    defaults = default_values(spec)
    meta["default_values"] = defaults  # tried first (None: the default lies outside the space)
    ctx = Context(cfg=cfg, spec=spec, out=out, objective=objective, direction=direction, seed=seed,
                   model_seed=model_seed, meta=meta, trial_hook=trial_hook, quiet=quiet, defaults=defaults)

    oracle = make_oracle(cfg, spec, objective, direction, seed)
    Tuner = tuner_class()
    tuner = Tuner(oracle, ctx=ctx, directory=str(out), project_name="keras_tuner", overwrite=False)
    oracle = tuner.oracle
    done_before = sum(t.status == "COMPLETED" for t in oracle.trials.values())
    requeue_failed(oracle)
    pending = list(oracle._retry_queue)
    if (done_before or pending) and not quiet:
        print(f"[animerec] resuming {out}: {done_before} trial(s) done, re-running {len(pending)} "
              f"({', '.join(pending) or 'none'})", file=sys.stderr)
    declare_hparams(out / "logs", spec.space, objective,
                    cfg.tune.max_epochs if oracle_name == "hyperband" else None, ctx.metric_names)

    t0 = time.perf_counter()
    status = "interrupted"
    try:
        tuner.search(split, verbose=0)
        status = "searched"
    finally:
        if status != "searched":
            # a failed trial has already written tuning.json (status "failed"); an interrupt has not
            summary_path = out / "tuning.json"
            failed = summary_path.is_file() and R.read_json(summary_path).get("status") == "failed"
            if not failed:
                write_summary(ctx, oracle, status="interrupted")
    summary = write_summary(ctx, oracle, status="finished")
    bad = [r for r in summary["trials"] if r["status"] != "COMPLETED"]
    if bad:  # cannot happen through run_trial (it raises); guards oracle surprises
        raise RuntimeError(f"tuning trials not completed: {[(r['trial_id'], r['status']) for r in bad]}")
    best = summary["best"]
    if not quiet:
        print(f"[animerec] tune {spec.name}: {summary['n_completed']} trials in "
              f"{time.perf_counter() - t0:.1f} s this session; best trial {best['trial_id']}: "
              f"{best['hyperparameters']} -> val {objective} = {best['value']:.4f}", file=sys.stderr)

    if cfg.tune.retrain_on_full:
        _refit(ctx, dataset, split, summary, quiet=quiet)
    R.write_json(out / "status.json", {"status": "finished", "finished": time.time()})
    return out


def _fit_score(ctx: Context, typ: str, params: dict, seed: int, train, val, split, part: str, log_name: str):
    """Build, fit and score one model; returns (model, EvalResult, metrics dict)."""
    model = registry.build(typ, params, seed, where=f" ({log_name})")
    model.log_dir = str(ctx.out / "logs" / log_name)
    t0 = time.perf_counter()
    model.fit(train, val)
    fit_seconds = time.perf_counter() - t0
    res = ctx.evaluate(model, split, part=part)
    return model, res, {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}


def _refit_params(typ: str, params: dict, val_metrics: dict) -> dict:
    """A Keras model refitted without validation cannot stop early: give it the epoch count that
    early stopping kept when it was fitted with validation (``best_epoch``), if any."""
    if typ in registry.KERAS_MODELS and val_metrics.get("best_epoch"):
        return {**params, "epochs": int(val_metrics["best_epoch"])}
    return dict(params)


def _refit(ctx: Context, dataset, split, summary: dict, quiet: bool = False) -> None:
    """Score the untuned default on validation (for tuning.json), then refit default, tuned and
    baselines on train + validation, score them on test, and write metrics.json and the table."""
    from research.report import markdown_table

    cfg, spec, out = ctx.cfg, ctx.spec, ctx.out
    best = summary["best"]
    best_metrics = next(r for r in summary["trials"] if r["trial_id"] == best["trial_id"]).get("metrics", {})

    # the default on validation: the number the search had to beat
    if not quiet:
        print(f"[animerec] default {spec.name} on validation ...", file=sys.stderr, flush=True)
    model, _, default_val = _fit_score(ctx, spec.type, dict(spec.params), ctx.model_seed, split.train,
                                       split.fit_val(), split, "val", "default_val")
    del model
    release_memory()
    summary["default"] = {"params": dict(spec.params), "objective": default_val.get(ctx.objective),
                          "metrics": default_val}
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
        model, res, m = _fit_score(ctx, typ, params, mseed, train_val, None, split, "test", f"refit_{name}")
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


__all__ = ["tune", "check_space", "check_objective", "tuned_spec", "tuning_dir", "rss_mb", "default_values",
           "data_fingerprint", "ORACLES", "BASELINES", "SPACE_TYPES"]
