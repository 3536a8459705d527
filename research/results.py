"""Run folders and atomic writes: ``RunFolder`` is the one writer (and reader) of a run folder,
used by ``animerec run`` and by the tuner's final refit alike.

A run folder ``results/runs/<experiment>/<run-id>/`` holds:
``config.json`` (the resolved config), ``env.json`` (versions, git SHA, dirty flag, seed, machine),
``manifest.json`` (the data's manifest), ``status.json`` (``running`` until the last file is
written, then ``finished``), ``metrics.json`` (see docs/ARCHITECTURE.md; rewritten after each
model so an interrupted run keeps what it measured), ``per_user.csv`` (per-user ranking metrics),
``per_rating.parquet`` (per-rating predictions), ``table.md``, ``meta/`` (the run's vocabularies as
``ids.npz`` and the anime table as ``items.parquet``), ``seen.npz`` (each user's train + validation
anime) and ``models/<name>/`` (each fitted model, for ``animerec recommend`` and friends).

Nothing in a run folder is a pickle: every file is JSON, CSV, parquet or an ``.npz`` of numeric
or string arrays read with ``allow_pickle=False``, so loading a folder someone shared cannot run
code. Every write is resolved and checked to lie under the results folder, and every file is
written to a temporary name and renamed into place, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from research.config import REPO_ROOT

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-recommenders", "keras-tuner", "tensorboard", "numpy",
            "pandas", "pyarrow", "scikit-learn", "scipy", "scikit-surprise", "implicit", "faiss-cpu")


def _default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.floating):
        return _clean(float(o))
    return o


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=2, default=_default, sort_keys=False) + "\n")


def read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def git_state() -> dict:
    """The repository's HEAD SHA and whether tracked files differ from it."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    sha = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if sha else None
    return {"git_sha": sha or None, "git_dirty": dirty}


def environment(seed: int | None = None) -> dict:
    """Versions, machine and git state, for env.json."""
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = None
    from research import __version__

    return {"animerec": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "memory_bytes": mem, "packages": versions, **git_state(),
            "seed": seed, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def inside(path: Path, root: Path) -> Path:
    """``path`` resolved, after checking that it lies under ``root`` (a config naming
    ``../../x`` must never write or delete outside the results folder)."""
    from research.errors import ConfigError

    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfigError(f"{path}: outside the results folder {base}; experiment and model names "
                          f"must be plain names ([A-Za-z0-9_.-]+)")
    return resolved


class RunFolder:
    """One run folder (see the module docstring for its files).

    Args:
        path: the folder, under ``results_dir``.
        results_dir: the results folder every write must stay in.
    """

    def __init__(self, path: Path, results_dir: Path):
        self.results_dir = Path(results_dir)
        self.path = inside(path, self.results_dir)
        self._per_user: list = []
        self._per_rating: list = []
        self.metrics: dict = {}

    def file(self, name: str) -> Path:
        """The path of ``name`` inside the folder (checked)."""
        return inside(self.path / name, self.path)

    # ---- lifecycle -------------------------------------------------------------------------
    def open(self, resume: bool = True) -> dict:
        """Create the folder. An unfinished run (status ``running``) is resumed when ``resume``:
        its measured models (if any: a run killed while fitting its first model has no
        ``metrics.json`` yet) are returned, its per-user / per-rating parts and its Keras
        checkpoints kept; a finished run, or anything else there, is removed first. Returns the
        models already measured."""
        import shutil

        import pandas as pd

        from research import locking

        # one process per run folder (a second `animerec run` of the same config exits 2 naming
        # the first's pid); held until finish() or the process ends
        locking.acquire(self.path)
        done: dict = {}
        status = self.path / "status.json"
        if self.path.exists():
            running = status.is_file() and read_json(status).get("status") == "running"
            if resume and running:
                metrics = self.path / "metrics.json"
                done = read_json(metrics).get("models", {}) if metrics.is_file() else {}
                print(f"[animerec] resuming {self.path} ({len(done)} model(s) already measured)", file=sys.stderr)
            else:
                shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if done:
            pu, pr = self.path / "per_user.csv", self.path / "per_rating.parquet"
            self._per_user = [pd.read_csv(pu)] if pu.is_file() else []
            self._per_rating = [pd.read_parquet(pr)] if pr.is_file() else []
        return done

    def start(self, config: dict, seed: int, manifest: dict | None = None) -> None:
        """status ``running``, ``config.json``, ``env.json`` and (if given) ``manifest.json``."""
        write_json(self.file("status.json"), {"status": "running", "started": time.time()})
        write_json(self.file("config.json"), config)
        write_json(self.file("env.json"), environment(seed))
        if manifest is not None:
            write_json(self.file("manifest.json"), manifest)

    def finish(self, table: str) -> None:
        """``metrics.json``, ``table.md``, then status ``finished`` (the last write)."""
        write_json(self.file("metrics.json"), self.metrics)
        atomic_write_text(self.file("table.md"), table)
        write_json(self.file("status.json"), {"status": "finished", "finished": time.time()})
        from research import locking

        locking.release(self.path)

    # ---- data of the run -----------------------------------------------------------------
    def write_meta(self, meta) -> None:
        """The vocabularies (``meta/ids.npz``) and anime table (``meta/items.parquet``)."""
        d = self.file("meta")
        d.mkdir(exist_ok=True)
        ids = {k: (v.astype(str) if v.dtype == object else v)  # string ids as fixed-width unicode
               for k, v in (("users", meta.users.values), ("items", meta.items.values))}
        save_npz(d / "ids.npz", ids)
        if meta.item_table is not None:
            tmp = d / ".items.parquet.tmp"
            meta.item_table.to_parquet(tmp, index=True)
            tmp.replace(d / "items.parquet")
        else:
            (d / "items.parquet").unlink(missing_ok=True)
        write_json(d / "meta.json", {"name": meta.name, "has_item_table": meta.item_table is not None})

    def read_meta(self):
        """The ``Meta`` written by ``write_meta`` (no pickle involved)."""
        import pandas as pd

        from research.data.interactions import Meta, Vocab

        d = self.path / "meta"
        info = read_json(d / "meta.json")
        with np.load(d / "ids.npz", allow_pickle=False) as z:
            users, items = Vocab(z["users"]), Vocab(z["items"])
        table = pd.read_parquet(d / "items.parquet") if info.get("has_item_table") else None
        if table is not None:  # parquet gives list columns back as arrays: the table holds lists
            for col in table.columns:
                if table[col].dtype == object:
                    table[col] = [list(v) if isinstance(v, np.ndarray) else v for v in table[col]]
        return Meta(users=users, items=items, item_table=table, name=info.get("name", ""))

    def write_seen(self, seen) -> None:
        """What each user had in train + validation (rating, 0 = watched without a score), so that
        ``animerec recommend`` excludes and explains exactly as the harness did."""
        import scipy.sparse as sp

        rating = np.nan_to_num(seen.rating, nan=0.0)
        m = sp.csr_matrix((rating, (seen.user, seen.item)), shape=(seen.n_users, seen.n_items))
        tmp = self.file("seen.tmp.npz")
        sp.save_npz(tmp, m)
        tmp.replace(self.file("seen.npz"))

    def read_seen(self):
        import scipy.sparse as sp

        return sp.load_npz(self.path / "seen.npz").tocsr()

    # ---- results -------------------------------------------------------------------------
    def add_model(self, name: str, summary: dict, model, res) -> None:
        """Record one fitted and evaluated model: its metrics, saved model, per-user and
        per-rating parts; metrics.json is rewritten so an interruption keeps it."""
        import pandas as pd

        self.metrics.setdefault("models", {})[name] = summary
        model.save(self.file(f"models/{name}"))
        self._per_user.append(res.per_user.assign(model=name))
        atomic_write_text(self.file("per_user.csv"), pd.concat(self._per_user, ignore_index=True).to_csv(index=False))
        if res.per_rating is not None:  # per-rating errors, for paired tests of rmse / mae
            self._per_rating.append(res.per_rating.assign(model=name))
            tmp = self.file("per_rating.tmp.parquet")
            pd.concat(self._per_rating, ignore_index=True).to_parquet(tmp, index=False)
            tmp.replace(self.file("per_rating.parquet"))
        write_json(self.file("metrics.json"), self.metrics)


def save_npz(path: Path, arrays: dict) -> None:
    """Write ``arrays`` as an ``.npz`` (readable by ``np.load(allow_pickle=False)``) to a temporary
    name and rename it into place. Never pickles: an object array is a TypeError. Written entry by
    entry rather than through ``np.savez``, whose keyword arguments clash with a key named ``file``.
    The project's one atomic npz writer (run folders, models, Keras checkpoints)."""
    import zipfile

    bad = [k for k, v in arrays.items() if np.asanyarray(v).dtype.hasobject]
    if bad:
        raise TypeError(f"{path}: object arrays cannot be stored without pickle: {bad}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, arr in arrays.items():
                with zf.open(key + ".npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def runs_root(results_dir: Path) -> Path:
    return Path(results_dir) / "runs"


def find_runs(results_dir: Path, experiment: str | None = None, finished_only: bool = True) -> list[Path]:
    """Run folders (optionally of one experiment), oldest first by their config.json time."""
    root = runs_root(results_dir)
    if not root.is_dir():
        return []
    pattern = f"{experiment}/*" if experiment else "*/*"
    out = []
    for d in root.glob(pattern):
        if not (d / "metrics.json").is_file():
            continue
        if finished_only:
            st = d / "status.json"
            if not st.is_file() or read_json(st).get("status") != "finished":
                continue
        out.append(d)
    return sorted(out, key=lambda d: (d / "metrics.json").stat().st_mtime)
