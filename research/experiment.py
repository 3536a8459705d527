"""``animerec run``: load the data once, split it per seed, fit and evaluate every model of the
config through the one harness, and write a run folder per seed (see ``research.results``).

The split uses the top-level seed itself (seed 0 is the reference split); each model
gets a child seed derived from (seed, model name), so adding a model never changes the others.
Where a run folder lives (its id, and how one written under an earlier id scheme is found) is
``research.run_ids``'s; ``run_folder`` and ``finished`` use it. Running the same config on the
same data again resumes an unfinished run (models already measured are kept, Keras models resume
from their checkpoints) or, once finished, replaces it with a fresh run.

Held-out users (``split.kind = "users"``): with ``fit_on = "train"`` each model is fitted on
``split.train`` by ``Recommender.fit_split`` (the models that validate on a user's history get the
validation users' histories and targets apart, the rest every row of the validation users);
with ``"train+val"`` on ``split.train_val()``; the test users are in neither, and the
harness folds them in. A model that cannot be measured there (its ``score_history`` raises
``NotSupported``) is not in ``metrics.json["models"]`` nor in the table: it is listed with the
reason under ``metrics.json["skipped"]`` (``{"<model>": "<why>"}``, e.g. no fold-in) and below the
table.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from research import progress
from research import results as R
from research.config import Config
from research.data.load import load_dataset
from research.data.splits import make_split
from research.eval.harness import evaluate
from research.models import registry
from research.models.base import NotSupported, Recommender
from research.report import markdown_table
from research.run_ids import data_id, dataset_id, locate
from research.seeding import child_seed, seed_everything


def build_models(cfg: Config, seed: int) -> list:
    """Instantiate every model of ``cfg`` (so a bad name or argument fails before any fitting)."""
    if not cfg.models:
        from research.errors import ConfigError

        raise ConfigError(f"{cfg.source_file or 'config'}: no [models.*] table")
    return [(spec, registry.build(spec.type, spec.params, child_seed(seed, spec.name),
                                  where=f" (models.{spec.name} in {cfg.source_file})"))
            for spec in cfg.models]


def run_folder(cfg: Config, seed: int, data: str | None = None) -> R.RunFolder:
    """The run folder of (cfg, seed) on data ``data`` (a data id; default ``data_id(cfg)``):
    ``results/runs/<experiment>/<run id>`` (``locate``)."""
    data = data_id(cfg) if data is None else data
    return R.RunFolder(locate(R.runs_root(cfg.results_path) / cfg.experiment, cfg, seed, data), cfg.results_path)


def finished(cfg: Config, seed: int, data: str | None = None) -> Path | None:
    """The run folder of (cfg, seed) if a run of this exact config on the same data (``data``, a
    data id; default ``data_id(cfg)``, computed without loading) finished there."""
    path = run_folder(cfg, seed, data).path
    status = path / "status.json"
    if status.is_file() and R.read_json(status).get("status") == "finished" and (path / "metrics.json").is_file():
        return path
    return None


def run(cfg: Config, quiet: bool = False, keep_finished: bool = False) -> list[Path]:
    """Run ``cfg`` for each of its seeds. Returns the run folders. ``keep_finished``: a seed whose
    folder holds a finished run of this config is kept as it is (not refitted); by default every
    seed is run again (an unfinished one resumes)."""
    build_models(cfg, int(cfg.seeds[0]) if cfg.seeds else 0)  # config errors before any loading
    seeds = [int(s) for s in cfg.seeds]
    show = progress.enabled(quiet)
    reader = progress.file_reader(*data_roots(cfg))
    data, kept, dataset = None, {}, None
    if keep_finished:
        with progress.Status("looking for finished runs", enabled=show, unit="B", poll=reader):
            data = data_id(cfg)  # the files hashed, not parsed
            kept = {s: finished(cfg, s, data) for s in seeds}
    if not all(kept.get(s) for s in seeds):
        with progress.Status("loading the data", enabled=show, unit="B", poll=reader):
            dataset = load_dataset(cfg, quiet=quiet)
    if dataset is not None and data is not None and dataset_id(dataset) != data and any(kept.values()):
        print(f"[animerec] warning: the data changed while loading (data id {data} -> {dataset_id(dataset)}); "
              f"the kept seeds ran on the earlier files", file=sys.stderr)
    run_dirs = []
    for seed in seeds:
        if kept.get(seed):
            if not quiet:
                print(f"[animerec] seed {seed}: kept the finished run {kept[seed]}", file=sys.stderr)
            run_dirs.append(kept[seed])
            continue
        run_dirs.append(run_seed(cfg, dataset, seed, quiet=quiet))
    return run_dirs


def data_roots(cfg: Config) -> list:
    """Where the data of ``cfg`` may be read from (for ``progress.file_reader``; nothing is resolved)."""
    from research.config import REPO_ROOT

    roots = [REPO_ROOT / "data", os.environ.get("ANIMEREC_DATA", "")]
    if cfg.data.path:
        p = Path(os.path.expanduser(cfg.data.path))
        roots += [p, REPO_ROOT / p] if not p.is_absolute() else [p]
    return [r for r in roots if r]


def run_seed(cfg: Config, dataset, seed: int, quiet: bool = False) -> Path:
    models = build_models(cfg, seed)
    show = progress.enabled(quiet)
    seed_everything(seed)
    with progress.Status(f"seed {seed}: splitting the data and writing the run folder", enabled=show):
        split = make_split(dataset.interactions, cfg.split, seed)
        data = dataset_id(dataset)
        folder = run_folder(cfg, seed, data)
        done = folder.open(resume=True)
        folder.start({**cfg.to_dict(), "seed": seed}, seed, {"data_id": data, **dataset.manifest})
        folder.write_meta(dataset.meta)
        folder.write_seen(split.train_val())
    rows = {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    skipped: dict = {}
    if split.heldout:
        rows.update(val_history=len(split.val_history), test_history=len(split.test_history))
        if done and folder.file("metrics.json").is_file():  # resumed: models skipped before stay skipped
            skipped = dict(R.read_json(folder.file("metrics.json")).get("skipped", {}))
    folder.metrics = {"experiment": cfg.experiment, "dataset": dataset.name, "split": split.name, "seed": seed,
                      "rows": rows, "models": dict(done)}
    if split.heldout:
        folder.metrics["skipped"] = skipped
    for k, (spec, model) in enumerate(models, 1):
        if spec.name in done or spec.name in skipped:
            continue
        if split.heldout and type(model).score_history is Recommender.score_history:
            skipped[spec.name] = f"no fold-in: {type(model).__name__} has no score_history"
            continue  # cannot be measured on held-out users: not even fitted
        model.log_dir = str(folder.file(f"logs/{spec.name}"))
        if not quiet:
            print(f"[animerec] seed {seed}: fitting {spec.name} ...", file=sys.stderr, flush=True)
        with progress.Status(f"seed {seed}: {spec.name} (model {k}/{len(models)})", enabled=show) as status:
            status.update(note="fitting")
            # Keras models: their epochs and batches on the line
            extra = {"callbacks": [progress.keras_callback(status)]} if status.active and progress.is_keras(model) \
                else {}
            t0 = time.perf_counter()
            if cfg.split.fit_on == "train+val":
                model.fit(split.train_val(), None, **extra)
            else:
                model.fit_split(split, **extra)
            fit_seconds = time.perf_counter() - t0
            status.update(note=f"evaluating (fitted in {fit_seconds:.1f} s)")
            try:
                res = evaluate(model, split, k=cfg.eval.k, batch_users=cfg.eval.batch_users,
                               relevance_threshold=cfg.eval.relevance_threshold)
            except NotSupported as exc:
                if not split.heldout:
                    raise
                skipped[spec.name] = str(exc)
                R.write_json(folder.file("metrics.json"), folder.metrics)
                continue
            status.update(note="saving")
            measured = {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}
            folder.add_model(spec.name, measured, model, res)
            from research import tb  # the (model, seed) as an HParams session, without TensorFlow

            tb.log_model_session(model.log_dir, spec, model, {"seed": seed, "experiment": cfg.experiment},
                                 measured, session=f"{folder.path.name}/{spec.name}")
    table = markdown_table([folder.metrics["models"]], cfg.eval.k)
    if skipped:
        table += "\nNot measured on held-out users: " + "; ".join(f"{n} ({why})" for n, why in skipped.items()) + "\n"
    folder.finish(table)
    if not quiet:
        print(f"\n{cfg.experiment} — {dataset.name}, {split.name}\n\n{table}\nrun folder: {folder.path}")
    return folder.path


def load_seen(run_dir: Path):
    """Each user's train + validation anime of a run folder (see ``RunFolder.write_seen``)."""
    return R.RunFolder(run_dir, Path(run_dir)).read_seen()


def load_run(run_dir: Path):
    """The (meta, metrics, config) of a finished or partial run folder."""
    run_dir = Path(run_dir)
    meta = R.RunFolder(run_dir, run_dir).read_meta()
    return meta, R.read_json(run_dir / "metrics.json"), R.read_json(run_dir / "config.json")


def load_model(run_dir: Path, name: str, meta, allow_pickle: bool = False):
    """Reload model ``name`` of a run folder. ``allow_pickle`` lets a peer model that can only be
    pickled (Surprise) load; nothing else in a run folder is ever unpickled."""
    cfg = R.read_json(Path(run_dir) / "config.json")
    spec = cfg["models"].get(name)
    if spec is None:
        from research.errors import ConfigError

        raise ConfigError(f"{run_dir}: no model {name!r} (models: {', '.join(cfg['models'])})")
    cls = registry.model_class(spec.get("type", name))
    path = R.inside(Path(run_dir) / "models" / name, Path(run_dir))
    if allow_pickle:
        return cls.load(path, meta, allow_pickle=True)
    return cls.load(path, meta)


__all__ = ["run", "run_seed", "load_run", "load_model", "run_folder", "finished"]
