"""Run ids: where a run folder of (config, seed, data) lives, and how a folder written under an
earlier id scheme is still found.

A run folder's id is ``<config hash>_<data id>-seed<seed>`` (``run_id``): the config hash covers
the config but not where its data are (``data.path``), the data id covers what was read, so the
same config on other data (another ``ANIMEREC_DATA``, the real sample instead of the synthetic
fallback) gets its own folder and a copy of the same files the same one. The data id
(``manifest_id``) hashes the sha256 of every file the data manifest lists (for a prepared folder
also what ``prepare`` made of them), or the rows themselves for an in-memory data set without
files; ``data_id`` computes the same value before loading by hashing the files the config would
read, without parsing them, so ``research.experiment.finished`` (``run --keep-finished``),
``tuning.tuning_dir`` and the showcase find a run without loading the data. A folder written
before ids covered the data (``<config hash>-seed<seed>``) is still used for the same config when
its ``manifest.json`` shows the same data, and one whose name no scheme reproduces
(``earlier_run``) when its ``config.json`` and ``manifest.json`` show the same config and data.
Nothing here executes or repairs what it reads: files that do not parse are passed over.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

from research import results as R
from research.config import SECTIONS, Config
from research.config import from_dict as config_from_dict
from research.errors import ConfigError


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
