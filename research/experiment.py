"""``animerec run``: load the data once, split it per seed, fit and evaluate every model of the
config through the one harness, and write a run folder per seed (see ``research.results``).

The split uses the top-level seed itself (seed 0 is the DESIGN's reference split); each model
gets a child seed derived from (seed, model name), so adding a model never changes the others.
A run folder's id is ``<config hash>-seed<seed>``: running the same config again resumes an
unfinished run (models already measured are kept, Keras models resume from their checkpoints)
or, once finished, replaces it with a fresh run.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

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


def prepare_run_dir(cfg: Config, seed: int) -> tuple[Path, dict]:
    """The run folder for (cfg, seed), and the metrics already measured in it when resuming."""
    run_dir = R.runs_root(cfg.results_path) / cfg.experiment / f"{config_hash(cfg)}-seed{seed}"
    done: dict = {}
    status = run_dir / "status.json"
    if run_dir.exists():
        if status.is_file() and R.read_json(status).get("status") == "running" and (run_dir / "metrics.json").is_file():
            done = R.read_json(run_dir / "metrics.json").get("models", {})
            print(f"[animerec] resuming {run_dir} ({len(done)} model(s) already measured)", file=sys.stderr)
        else:
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, done


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
    run_dir, done = prepare_run_dir(cfg, seed)
    R.write_json(run_dir / "status.json", {"status": "running", "started": time.time()})
    R.write_json(run_dir / "config.json", {**cfg.to_dict(), "seed": seed})
    R.write_json(run_dir / "env.json", R.environment(seed))
    R.write_json(run_dir / "manifest.json", dataset.manifest)
    with open(run_dir / "meta.pkl.tmp", "wb") as fh:
        pickle.dump(dataset.meta, fh, protocol=pickle.HIGHEST_PROTOCOL)
    (run_dir / "meta.pkl.tmp").replace(run_dir / "meta.pkl")
    save_seen(run_dir, split.train_val())

    metrics = {"experiment": cfg.experiment, "dataset": dataset.name, "split": split.name, "seed": seed,
               "rows": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
               "models": dict(done)}
    per_user_path = run_dir / "per_user.csv"
    per_user = [pd.read_csv(per_user_path)] if done and per_user_path.is_file() else []
    per_rating_path = run_dir / "per_rating.parquet"
    per_rating = [pd.read_parquet(per_rating_path)] if done and per_rating_path.is_file() else []
    for spec, model in models:
        if spec.name in done:
            continue
        model.log_dir = str(run_dir / "logs" / spec.name)
        if not quiet:
            print(f"[animerec] seed {seed}: fitting {spec.name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        model.fit(split.train, split.val)
        fit_seconds = time.perf_counter() - t0
        res = evaluate(model, split, k=cfg.eval.k, batch_users=cfg.eval.batch_users,
                       relevance_threshold=cfg.eval.relevance_threshold)
        metrics["models"][spec.name] = {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}
        model.save(run_dir / "models" / spec.name)
        per_user.append(res.per_user.assign(model=spec.name))
        R.atomic_write_text(per_user_path, pd.concat(per_user, ignore_index=True).to_csv(index=False))
        if res.per_rating is not None:  # per-rating errors, for paired tests of rmse / mae
            per_rating.append(res.per_rating.assign(model=spec.name))
            tmp = run_dir / "per_rating.tmp.parquet"
            pd.concat(per_rating, ignore_index=True).to_parquet(tmp, index=False)
            tmp.replace(per_rating_path)
        R.write_json(run_dir / "metrics.json", metrics)
    R.write_json(run_dir / "metrics.json", metrics)
    table = markdown_table([metrics["models"]], cfg.eval.k)
    R.atomic_write_text(run_dir / "table.md", table)
    R.write_json(run_dir / "status.json", {"status": "finished", "finished": time.time()})
    if not quiet:
        print(f"\n{cfg.experiment} — {dataset.name}, {split.name}\n\n{table}\nrun folder: {run_dir}")
    return run_dir


def save_seen(run_dir: Path, seen) -> None:
    """What each user had in train + validation (rating, 0 = watched without a score), so that
    ``animerec recommend`` excludes and explains exactly as the harness did."""
    import numpy as np
    import scipy.sparse as sp

    rating = np.nan_to_num(seen.rating, nan=0.0)
    m = sp.csr_matrix((rating, (seen.user, seen.item)), shape=(seen.n_users, seen.n_items))
    tmp = run_dir / "seen.tmp.npz"
    sp.save_npz(tmp, m)
    tmp.replace(run_dir / "seen.npz")


def load_seen(run_dir: Path):
    import scipy.sparse as sp

    return sp.load_npz(Path(run_dir) / "seen.npz").tocsr()


def load_run(run_dir: Path):
    """The (meta, metrics, config) of a finished or partial run folder."""
    run_dir = Path(run_dir)
    with open(run_dir / "meta.pkl", "rb") as fh:
        meta = pickle.load(fh)
    return meta, R.read_json(run_dir / "metrics.json"), R.read_json(run_dir / "config.json")


def load_model(run_dir: Path, name: str, meta):
    """Reload model ``name`` of a run folder."""
    cfg = R.read_json(Path(run_dir) / "config.json")
    spec = cfg["models"].get(name)
    if spec is None:
        from research.errors import ConfigError

        raise ConfigError(f"{run_dir}: no model {name!r} (models: {', '.join(cfg['models'])})")
    cls = registry.model_class(spec.get("type", name))
    return cls.load(Path(run_dir) / "models" / name, meta)


__all__ = ["run", "run_seed", "load_run", "load_model", "config_hash"]
