"""``animerec tune``: check the config, load and split the data, run (or resume) the search, refit.

**Seeds**: the search uses the config's first seed. The split is the runner's split for that
seed (``make_split(..., seed)``), and every trial's model gets ``child_seed(seed, NAME)`` — the
seed ``animerec run`` gives that model — so trials differ only in their hyperparameters (common
random numbers) and the untuned default is exactly the runner's model. The oracle samples with
its own child seed ``child_seed(seed, "tune-oracle/NAME")``.
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
from research.tuning import archive
from research.tuning.context import Context
from research.tuning.folder import check_data, data_fingerprint, earlier_search, search_archive, tuning_dir
from research.tuning.hparams import declare_hparams
from research.tuning.oracles import make_oracle, requeue_failed
from research.tuning.refit import refit
from research.tuning.space import ORACLES, check_objective, check_space, default_values, tuned_spec
from research.tuning.summary import write_summary


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
    from research.run_ids import dataset_id

    out = tuning_dir(cfg, seed, dataset_id(dataset))
    kept = search_archive(cfg, seed, dataset_id(dataset))  # under the canonical name, whatever out is
    if not (out / "tuning.json").is_file():
        earlier = earlier_search(cfg, seed, split)  # the same search, named by an earlier id scheme
        if earlier is not None:
            if not quiet:
                print(f"[animerec] the same search (model, space, split) is in {earlier}: continuing there",
                      file=sys.stderr)
            out = earlier
    from research import locking

    locking.acquire(out)  # one search per tuning folder (a second one exits 2 naming this pid)
    if archive.restore(out, kept) and not quiet:  # a fresh machine: the committed state
        print(f"[animerec] {out.name}: restored from {kept}", file=sys.stderr)
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
                   model_seed=model_seed, meta=meta, trial_hook=trial_hook, quiet=quiet, defaults=defaults,
                   archive=kept)

    oracle = make_oracle(cfg, spec, objective, direction, seed)
    from research.tuning.tuner import HarnessTuner  # keras-tuner, Keras 3, TensorFlow: only now

    tuner = HarnessTuner(oracle, ctx=ctx, directory=str(out), project_name="keras_tuner", overwrite=False)
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
            archive.save_quietly(out, kept)
    summary = write_summary(ctx, oracle, status="finished")
    archive.save_quietly(out, kept)
    bad = [r for r in summary["trials"] if r["status"] != "COMPLETED"]
    if bad:  # cannot happen through run_trial (it raises); guards oracle surprises
        raise RuntimeError(f"tuning trials not completed: {[(r['trial_id'], r['status']) for r in bad]}")
    best = summary["best"]
    if not quiet:
        print(f"[animerec] tune {spec.name}: {summary['n_completed']} trials in "
              f"{time.perf_counter() - t0:.1f} s this session; best trial {best['trial_id']}: "
              f"{best['hyperparameters']} -> val {objective} = {best['value']:.4f}", file=sys.stderr)

    if cfg.tune.retrain_on_full:
        refit(ctx, dataset, split, summary, quiet=quiet)
    R.write_json(out / "status.json", {"status": "finished", "finished": time.time()})
    archive.save_quietly(out, kept)
    return out
