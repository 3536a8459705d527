"""``animerec run``: load the data once, split it per seed, fit and evaluate every model of the
config through the one harness, and write a run folder per seed (see ``research.results``).

The split uses the top-level seed itself (seed 0 is the reference split); each model
gets a child seed derived from (seed, model name), so adding a model never changes the others.
A run folder's id is ``<config hash>_<data id>-seed<seed>`` (``run_id``): the config hash covers
the config but not where its data are (``data.path``), the data id covers what was read, so the
same config on other data (another ``ANIMEREC_DATA``, the real sample instead of the synthetic
fallback) gets its own folder and a copy of the same files the same one. The data id
(``manifest_id``) hashes the sha256 of every file the data manifest lists (for a prepared folder
also what ``prepare`` made of them), or the rows themselves for an in-memory data set without
files; ``data_id`` computes the same value before loading by hashing the files the config would
read, without parsing them, so ``finished`` (``run --keep-finished``), ``tuning.tuning_dir`` and
the showcase find a run without loading the data. A folder written before ids covered the data
(``<config hash>-seed<seed>``) is still used for the same config when its ``manifest.json``
shows the same data, and one whose name no scheme reproduces (``earlier_run``) when its
``config.json`` and ``manifest.json`` show the same config and data. Running the same config on
the same data again resumes an unfinished run (models already measured are kept, Keras models
resume from their checkpoints) or, once finished, replaces it with a fresh run.

Held-out users (``split.kind = "users"``): with ``fit_on = "train"`` each model is fitted on
``split.train`` with ``split.fit_val()`` (every row of the validation users) as its validation
part; with ``"train+val"`` on ``split.train_val()``; the test users are in neither, and the
harness folds them in. A model that cannot be measured there (its ``score_history`` raises
``NotSupported``) is not in ``metrics.json["models"]`` nor in the table: it is listed with the
reason under ``metrics.json["skipped"]`` (``{"<model>": "<why>"}``, e.g. no fold-in) and below the
table.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

from research import progress
from research import results as R
from research.config import SECTIONS, Config
from research.config import from_dict as config_from_dict
from research.data.load import load_dataset
from research.data.splits import make_split
from research.errors import ConfigError
from research.eval.harness import evaluate
from research.models import registry
from research.models.base import NotSupported, Recommender
from research.report import markdown_table
from research.seeding import child_seed, seed_everything


def _hashed(cfg: Config) -> dict:
    """What a run id's config part covers: every key but the seeds, where the config came from,
    where results go and where the data are (``data.path``: what was read is the data id's part)."""
    d = cfg.to_dict()
    for key in ("seeds", "source_file", "results_dir"):  # where results go does not change them
        d.pop(key, None)
    d["data"] = {k: v for k, v in d["data"].items() if k != "path"}
    return d


def config_hash(cfg: Config) -> str:
    """The config's part of the run id (``_hashed``), with every section key that is at its default
    left out: a key added to a section later, with a default that keeps the old behaviour, leaves
    the id of every run made before it unchanged (adding ``split.fold_in_fraction`` renamed every
    run and search folder, and finished searches were no longer found). Writing a default out
    explicitly gives the same id as leaving it out. The flip side: changing a default changes what
    every config that leaves the key out means, under the same id, so tests/test_run_ids.py pins
    the defaults (change one only with a new key or by renaming the section)."""
    d = _hashed(cfg)
    for name, klass in SECTIONS.items():
        default = dataclasses.asdict(klass())
        d[name] = {k: v for k, v in d[name].items() if k not in default or v != default[k]}
    return _short_hash(d, 10)


def _full_config_hash(cfg: Config) -> str:
    """The config part of run ids written before defaults were left out (every key of ``_hashed``):
    such folders are still found (``locate``)."""
    return _short_hash(_hashed(cfg), 10)


def _legacy_config_hash(cfg: Config) -> str:
    """The whole run id before it covered the data (``data.path`` included): such folders are
    still found (``locate``)."""
    d = cfg.to_dict()
    for key in ("seeds", "source_file", "results_dir"):
        d.pop(key, None)
    return _short_hash(d, 10)


def _short_hash(obj, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


# ---- the data's part of a run id --------------------------------------------------------------
_PREPARED_KEYS = ("data_config", "buckets", "outputs")  # what prepare made of its files
_SHA_CACHE: dict = {}


def manifest_id(manifest: dict) -> str | None:
    """The data id of a data manifest: a hash of the sha256 of every file it lists (content only:
    not their names or folder), plus for a prepared folder the filters ``prepare`` applied and the
    shards it wrote. None for a manifest that lists no file."""
    files = (manifest or {}).get("files") or {}
    if not files:
        return None
    key: dict = {"files": sorted(str(f.get("sha256", "")) for f in files.values())}
    if "outputs" in manifest:
        prepared = {k: manifest.get(k) for k in _PREPARED_KEYS}
        prepared["data_config"] = {k: v for k, v in (prepared["data_config"] or {}).items() if k != "path"}
        key["prepared"] = prepared
    return _short_hash(key, 8)


def dataset_id(dataset) -> str:
    """The data id of a loaded ``Dataset``: ``manifest_id`` of its manifest or, for a data set built
    in memory (no files listed), a hash of its rows and vocabularies."""
    found = manifest_id(dataset.manifest)
    if found is not None:
        return found
    import numpy as np

    inter = dataset.interactions
    h = hashlib.sha256(b"in-memory|" + dataset.name.encode())
    for a in (inter.user, inter.item, inter.rating, dataset.meta.users.values, dataset.meta.items.values):
        a = np.asarray(a)
        h.update(a.astype(str).tobytes() if a.dtype == object else np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()[:8]


def _sha256(path: Path) -> str:
    """A file's sha256 (the digest the manifest records), cached per (path, size, mtime, inode)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def data_id(cfg: Config) -> str:
    """The data id ``load_dataset(cfg)`` will give (``manifest_id`` of its manifest), computed
    without loading: the files are found as ``load_dataset`` finds them (the synthetic ones are
    generated if missing, as loading would) and hashed, not parsed. Bad data locations raise the
    errors loading would."""
    import dataclasses

    from research.data import load as L
    from research.data import sources

    source = cfg.data.source
    if source == "synth":
        raw, adapter, data_cfg = L.ensure_synth(cfg), "mal2020", cfg.data
    else:
        raw, adapter, data_cfg = L.find_raw(source, cfg.data.path), source, cfg.data
        if raw is None:
            if not cfg.data.fallback_to_synth:
                return "nodata"  # loading raises; nothing can have finished on it
            raw, adapter = L.ensure_synth(cfg), "mal2020"
            data_cfg = dataclasses.replace(cfg.data, ratings="", catalogue="", synopsis="")
    if adapter == "processed":
        mpath = Path(raw) / "manifest.json"
        if not mpath.is_file():
            return "nodata"
        try:
            return manifest_id(R.read_json(mpath)) or "nodata"
        except ValueError:
            return "nodata"  # loading says what is wrong with it
    plan = sources.plan_files(adapter, Path(raw), data_cfg)
    paths = [p for p in (plan.ratings.path, plan.catalogue, plan.synopsis, plan.status) if p is not None]
    # keyed by name, as the manifest is (sources.load), so the same files give the same id
    return manifest_id({"files": {p.name: {"sha256": _sha256(p)} for p in paths}}) or "nodata"


# ---- run ids and folders ---------------------------------------------------------------------
def run_id(cfg: Config, seed: int, data: str) -> str:
    """``<config hash>_<data id>-seed<seed>``."""
    return f"{config_hash(cfg)}_{data}-seed{seed}"


def locate(parent: Path, cfg: Config, seed: int, data: str, prefix: str = "") -> Path:
    """The folder of (cfg, seed, data) under ``parent``: ``prefix + run_id``, or, when that does not
    exist, the same config's folder named before run ids left default keys out
    (``prefix<full hash>_<data>-seed<seed>``), or one named before run ids covered the data
    (``prefix<legacy hash>-seed<seed>``) whose ``manifest.json`` shows the same data."""
    path = Path(parent) / f"{prefix}{run_id(cfg, seed, data)}"
    if path.exists():
        return path
    before = Path(parent) / f"{prefix}{_full_config_hash(cfg)}_{data}-seed{seed}"
    if before.exists():  # named when the id covered the keys at their defaults too
        return before
    old = Path(parent) / f"{prefix}{_legacy_config_hash(cfg)}-seed{seed}"
    try:
        if (old / "manifest.json").is_file() and manifest_id(R.read_json(old / "manifest.json")) == data:
            return old
    except (OSError, ValueError):
        pass
    if not prefix:  # run folders; searches have their own content check (tuning.folder.earlier_search)
        return earlier_run(Path(parent), cfg, seed, data) or path
    return path


_ID_NAME = re.compile(r"[0-9a-f]{10}(_[0-9a-z]+)?-seed(\d+)")


def earlier_run(parent: Path, cfg: Config, seed: int, data: str) -> Path | None:
    """A run folder of this config, seed and data named by an id scheme none of ``locate``'s names
    reproduces (a legacy id hashed every key the config had then, so a key added since with a
    default renames it): found by content, its ``config.json`` giving the same ``config_hash`` and
    its ``manifest.json`` the same data id. Finished folders first, then the most recent; None if
    none matches. Folders whose files do not parse are passed over, never executed or repaired."""
    want = config_hash(cfg)
    found = []
    for d in parent.glob(f"*-seed{seed}") if parent.is_dir() else ():
        m = _ID_NAME.fullmatch(d.name)
        if not m or int(m.group(2)) != seed or not (d / "config.json").is_file():
            continue
        try:
            stored = {k: v for k, v in R.read_json(d / "config.json").items() if k not in ("seed", "source_file")}
            same = config_hash(config_from_dict(stored)) == want
            manifest = R.read_json(d / "manifest.json") if same else {}
        except (OSError, ValueError, ConfigError, TypeError):
            continue
        if same and (manifest.get("data_id") or manifest_id(manifest)) == data:
            status = R.read_json(d / "status.json") if (d / "status.json").is_file() else {}
            found.append((status.get("status") == "finished", d.stat().st_mtime, d))
    return max(found)[2] if found else None


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
                model.fit(split.train, split.fit_val(), **extra)
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


__all__ = ["run", "run_seed", "load_run", "load_model", "config_hash", "data_id", "dataset_id", "manifest_id",
           "run_id", "run_folder", "finished"]
