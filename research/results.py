"""Run folders and atomic writes.

A run folder ``results/runs/<experiment>/<run-id>/`` holds:
``config.json`` (the resolved config), ``env.json`` (versions, git SHA, dirty flag, seed, machine),
``status.json`` (``running`` until the last file is written, then ``finished``), ``metrics.json``
(DESIGN.md's schema, rewritten after each model so an interrupted run keeps what it measured),
``per_user.csv``, ``table.md``, ``meta.pkl`` (the run's vocabularies and item table) and
``models/<name>/`` (each fitted model, for ``animerec recommend`` and friends).

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file.
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
