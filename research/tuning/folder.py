"""Where a search lives and when it may resume there.

**Folder**: ``results/runs/<experiment>/tune-<config hash>_<data id>-seed<seed>/``. The hash is
:func:`research.run_ids.config_hash` of the config with ``tune.max_trials`` and
``tune.retrain_on_full`` blanked, so raising the trial budget extends the same search; the data
id (:func:`research.run_ids.data_id`) gives a search on other data its own folder.

**Resume**: only on the same data (a fingerprint of the split is kept in the folder; other
data discard the old search, with a message). A search whose folder was named by an earlier
run-id scheme is found by what it searched and on which split (``earlier_search``) and continued
there. The keras-tuner project (``keras_tuner/`` in the
folder) is reopened with ``overwrite=False``: finished trials are kept, a trial that was running
when the process died is re-run (keras-tuner queues it for retry on reload), and a trial that
failed is re-run too (so a search only ever ends with every trial completed; the retry is
``research.tuning.oracles.requeue_failed``).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from research import results as R
from research.config import Config
from research.tuning.space import BASELINES, tuned_spec


def _searched(cfg: Config) -> Config:
    """What a search's folder name hashes: the config with only the tuned table and the baselines
    it refits (not the other models a base config lists, so adding one there keeps every search),
    and no trial budget or ``retrain_on_full``."""
    spec = tuned_spec(cfg)
    kept = tuple(m for m in cfg.models if m.name == spec.name or (m.name in BASELINES and m.type == m.name))
    return dataclasses.replace(cfg, models=kept, tune=dataclasses.replace(cfg.tune, max_trials=0, retrain_on_full=True))


def tuning_dir(cfg: Config, seed: int, data: str | None = None) -> Path:
    """``results/runs/<experiment>/tune-<hash>_<data id>-seed<seed>`` (``research.run_ids.locate``:
    ``data`` is the data id, default ``data_id(cfg)``, computed without loading); the hash ignores
    the trial budget, ``retrain_on_full`` and the config's untuned models, so that a larger
    ``max_trials`` extends the same search and a model added to a base config does not discard it."""
    from research.run_ids import data_id, locate

    return locate(R.runs_root(cfg.results_path) / cfg.experiment, _searched(cfg), seed,
                  data_id(cfg) if data is None else data, prefix="tune-")


def canonical_tuning_dir(cfg: Config, seed: int, data: str | None = None) -> Path:
    """The name ``tuning_dir`` gives when no folder of an earlier id scheme exists (a fresh
    machine's): the name of the search's archive (``research.tuning.archive``)."""
    from research.run_ids import data_id, run_id

    return (R.runs_root(cfg.results_path) / cfg.experiment
            / f"tune-{run_id(_searched(cfg), seed, data_id(cfg) if data is None else data)}")


def search_archive(cfg: Config, seed: int, data: str | None = None) -> Path:
    """Where the search's archive lives (``archive.archive_dir`` of ``canonical_tuning_dir``)."""
    from research.tuning.archive import archive_dir

    return archive_dir(canonical_tuning_dir(cfg, seed, data), cfg.results_path)


def _search_identity(cfg: Config, seed: int) -> dict:
    """What ``tuning.json`` records of the search a config asks for (with the split's fingerprint,
    what makes two searches the same search)."""
    spec = tuned_spec(cfg)
    ident = {"model": spec.name, "type": spec.type, "seed": seed, "oracle": cfg.tune.oracle,
             "objective": cfg.tune.objective, "space": spec.space, "fixed_params": spec.params}
    if cfg.tune.oracle == "hyperband":
        ident.update(max_epochs=cfg.tune.max_epochs, hyperband_factor=cfg.tune.hyperband_factor)
    return json.loads(json.dumps(ident, default=str))


def earlier_search(cfg: Config, seed: int, split) -> Path | None:
    """A search of this config in a folder named by an earlier run-id scheme (a config key added
    since, or ids from before they covered the data), so that hours of trials are not redone: a
    ``tune-*-seed<seed>`` folder of the experiment whose ``tuning.json`` records the same model,
    type, seed, oracle, objective, space and fixed parameters and the fingerprint of this very
    split (``data_fingerprint``: the same rows in train, validation and test). Finished searches
    first, then the most recent. None when there is none."""
    want = _search_identity(cfg, seed)
    fp = data_fingerprint(split)
    found = []
    for d in (R.runs_root(cfg.results_path) / cfg.experiment).glob(f"tune-*-seed{seed}"):
        try:
            meta = R.read_json(d / "tuning.json")
        except (OSError, ValueError):
            continue
        have = json.loads(json.dumps({k: meta.get(k) for k in want}, default=str))
        if have == want and meta.get("data_fingerprint") == fp:
            found.append(((d / "metrics.json").is_file(), d.stat().st_mtime, d))
    return max(found)[2] if found else None


def data_fingerprint(split) -> str:
    """A hash of the split's three parts (users, items, ratings, row order): trials of a search are
    only comparable on the same data."""
    import hashlib

    h = hashlib.sha256()
    for part in (split.train, split.val, split.test):
        for a in (part.user, part.item, part.rating):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    h.update(f"{split.meta.n_users},{split.meta.n_items}".encode())
    return h.hexdigest()[:16]


def check_data(out: Path, split, quiet: bool) -> None:
    """Resume only a search made on the same data: the folder's name covers the config and the
    files read (``run_ids.data_id``), but not the loader's code or the split, so a changed loader
    or split would still mix trials scored on different data; this fingerprint of the split itself
    catches that. On a mismatch the old search is discarded (with a message) and starts afresh."""
    import shutil

    fp = data_fingerprint(split)
    f = out / "data_fingerprint.json"
    project = out / "keras_tuner"
    if project.exists():
        old = R.read_json(f).get("fingerprint") if f.is_file() else None
        if old != fp:
            if not quiet:
                print(f"[animerec] {out}: the data differ from the ones this search was run on "
                      f"({old} -> {fp}); starting the search afresh", file=sys.stderr)
            for name in ("keras_tuner", "logs", "models", "tuning.json", "metrics.json", "table.md"):
                p = out / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
    R.write_json(f, {"fingerprint": fp, "rows": {"train": len(split.train), "val": len(split.val),
                                                  "test": len(split.test)}})
