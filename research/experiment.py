"""``animerec run``: load the data once, split it per seed, fit and evaluate every model of the
config through the one harness, and write a run folder per seed (see ``research.results``).

The split uses the top-level seed itself (seed 0 is the reference split); each model
gets a child seed derived from (seed, model name), so adding a model never changes the others.
A run folder's id is ``<config hash>-seed<seed>``: running the same config again resumes an
unfinished run (models already measured are kept, Keras models resume from their checkpoints)
or, once finished, replaces it with a fresh run.

Held-out users (``split.kind = "users"``): with ``fit_on = "train"`` each model is fitted on
``split.train`` with ``split.fit_val()`` (every row of the validation users) as its validation
part; with ``"train+val"`` on ``split.train_val()``; the test users are in neither, and the
harness folds them in. A model that cannot be measured there (its ``score_history`` raises
``NotSupported``) is not in ``metrics.json["models"]`` nor in the table: it is listed with the
reason under ``metrics.json["skipped"]`` (``{"<model>": "<why>"}``, e.g. no fold-in) and below the
table.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from research import results as R
from research.config import Config
from research.data.load import load_dataset
from research.data.splits import make_split
from research.eval.harness import evaluate
from research.models import registry
from research.models.base import NotSupported, Recommender
from research.report import markdown_table
from research.seeding import child_seed, seed_everything


def config_hash(cfg: Config) -> str:
    d = cfg.to_dict()
    for key in ("seeds", "source_file", "results_dir"):  # where results go does not change them
        d.pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def build_models(cfg: Config, seed: int) -> list:
    """Instantiate every model of ``cfg`` (so a bad name or argument fails before any fitting)."""
    if not cfg.models:
        from research.errors import ConfigError

        raise ConfigError(f"{cfg.source_file or 'config'}: no [models.*] table")
    return [(spec, registry.build(spec.type, spec.params, child_seed(seed, spec.name),
                                  where=f" (models.{spec.name} in {cfg.source_file})"))
            for spec in cfg.models]


def run_folder(cfg: Config, seed: int) -> R.RunFolder:
    """The run folder of (cfg, seed): ``results/runs/<experiment>/<config hash>-seed<seed>``."""
    return R.RunFolder(R.runs_root(cfg.results_path) / cfg.experiment / f"{config_hash(cfg)}-seed{seed}",
                       cfg.results_path)


def finished(cfg: Config, seed: int) -> Path | None:
    """The run folder of (cfg, seed) if a run of this exact config (same hash) finished there."""
    path = run_folder(cfg, seed).path
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
    kept = {s: finished(cfg, s) for s in seeds} if keep_finished else {}
    dataset = load_dataset(cfg, quiet=quiet) if not all(kept.get(s) for s in seeds) else None
    run_dirs = []
    for seed in seeds:
        if kept.get(seed):
            if not quiet:
                print(f"[animerec] seed {seed}: kept the finished run {kept[seed]}", file=sys.stderr)
            run_dirs.append(kept[seed])
            continue
        run_dirs.append(run_seed(cfg, dataset, seed, quiet=quiet))
    return run_dirs


def run_seed(cfg: Config, dataset, seed: int, quiet: bool = False) -> Path:
    models = build_models(cfg, seed)
    seed_everything(seed)
    split = make_split(dataset.interactions, cfg.split, seed)
    folder = run_folder(cfg, seed)
    done = folder.open(resume=True)
    folder.start({**cfg.to_dict(), "seed": seed}, seed, dataset.manifest)
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
    for spec, model in models:
        if spec.name in done or spec.name in skipped:
            continue
        if split.heldout and type(model).score_history is Recommender.score_history:
            skipped[spec.name] = f"no fold-in: {type(model).__name__} has no score_history"
            continue  # cannot be measured on held-out users: not even fitted
        model.log_dir = str(folder.file(f"logs/{spec.name}"))
        if not quiet:
            print(f"[animerec] seed {seed}: fitting {spec.name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if cfg.split.fit_on == "train+val":
            model.fit(split.train_val(), None)
        else:
            model.fit(split.train, split.fit_val())
        fit_seconds = time.perf_counter() - t0
        try:
            res = evaluate(model, split, k=cfg.eval.k, batch_users=cfg.eval.batch_users,
                           relevance_threshold=cfg.eval.relevance_threshold)
        except NotSupported as exc:
            if not split.heldout:
                raise
            skipped[spec.name] = str(exc)
            R.write_json(folder.file("metrics.json"), folder.metrics)
            continue
        measured = {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}
        folder.add_model(spec.name, measured, model, res)
        from research import tb  # the (model, seed) as an HParams session, without TensorFlow

        tb.log_model_session(model.log_dir, spec, model, {"seed": seed, "experiment": cfg.experiment}, measured,
                             session=f"{config_hash(cfg)}-seed{seed}/{spec.name}")
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


__all__ = ["run", "run_seed", "load_run", "load_model", "config_hash"]
