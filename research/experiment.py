"""``animerec run``: load the data once, split it per seed, fit and evaluate every model of the
config through the one harness, and write a run folder per seed (see ``research.results``).

The split uses the top-level seed itself (seed 0 is the reference split); each model
gets a child seed derived from (seed, model name), so adding a model never changes the others.
A run folder's id is ``<config hash>-seed<seed>``: running the same config again resumes an
unfinished run (models already measured are kept, Keras models resume from their checkpoints)
or, once finished, replaces it with a fresh run.
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


def run(cfg: Config, quiet: bool = False) -> list[Path]:
    """Run ``cfg`` for each of its seeds. Returns the run folders."""
    build_models(cfg, int(cfg.seeds[0]) if cfg.seeds else 0)  # config errors before any loading
    dataset = load_dataset(cfg, quiet=quiet)
    run_dirs = []
    for seed in cfg.seeds:
        run_dirs.append(run_seed(cfg, dataset, int(seed), quiet=quiet))
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
    folder.metrics = {"experiment": cfg.experiment, "dataset": dataset.name, "split": split.name, "seed": seed,
                      "rows": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
                      "models": dict(done)}
    for spec, model in models:
        if spec.name in done:
            continue
        model.log_dir = str(folder.file(f"logs/{spec.name}"))
        if not quiet:
            print(f"[animerec] seed {seed}: fitting {spec.name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if cfg.split.fit_on == "train+val":
            model.fit(split.train_val(), None)
        else:
            model.fit(split.train, split.val)
        fit_seconds = time.perf_counter() - t0
        res = evaluate(model, split, k=cfg.eval.k, batch_users=cfg.eval.batch_users,
                       relevance_threshold=cfg.eval.relevance_threshold)
        folder.add_model(spec.name, {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}, model, res)
    table = markdown_table([folder.metrics["models"]], cfg.eval.k)
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
