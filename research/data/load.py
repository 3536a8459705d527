"""Find the raw data a config asks for and load it as a ``Dataset``.

Raw data are found, in order, at: ``data.path`` in the config (or ``--set data.path=...``); the
environment variable ``ANIMEREC_DATA`` (its ``<source>/`` sub-folder, or itself); ``data/raw/<source>``
in the repository. With ``data.source = "synth"``, or with no real data found and
``data.fallback_to_synth`` true, the synthetic generator writes MAL-schema files under
``data/synth/<parameters>/`` (once) and they are read by the same ``mal2020`` adapter as real data.
``data.source = "processed"`` reads the parquet output of ``animerec prepare``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from research.config import REPO_ROOT, Config
from research.data.interactions import Dataset, build_dataset
from research.errors import ConfigError


def find_raw(source: str, path: str = "") -> Path | None:
    """The raw folder for ``source``, or None when none of the places holds it."""
    if path:
        p = Path(os.path.expanduser(path))
        if not p.is_absolute() and not p.exists():
            p = REPO_ROOT / p
        if not p.exists():
            raise ConfigError(f"data.path: {path!r} does not exist")
        return p
    env = os.environ.get("ANIMEREC_DATA")
    if env:
        for cand in (Path(env) / source, Path(env)):
            if cand.is_dir() and any(cand.iterdir()):
                return cand
        # a location was given and holds nothing: say so, never fall back to synthetic numbers
        raise ConfigError(f"ANIMEREC_DATA={env}: no {source} data there (looked in "
                          f"{Path(env).resolve() / source} and {Path(env).resolve()}); point it at the "
                          f"folder holding {source}/, or unset it to use the synthetic generator")
    local = REPO_ROOT / "data" / "raw" / source
    return local if local.is_dir() else None


def synth_dir(cfg: Config) -> Path:
    """Where the synthetic data set for ``cfg.synth`` lives (content-addressed by its parameters)."""
    key = hashlib.sha256(json.dumps(dataclasses.asdict(cfg.synth), sort_keys=True).encode()).hexdigest()[:12]
    return REPO_ROOT / "data" / "synth" / f"u{cfg.synth.users}_i{cfg.synth.items}_{key}"


def ensure_synth(cfg: Config) -> Path:
    """Generate the synthetic raw files for ``cfg.synth`` unless they already exist."""
    from research.data import synth

    out = synth_dir(cfg)
    if not (out / "DONE").exists():
        s = cfg.synth
        synth.generate(out, users=s.users, items=s.items, ratings_per_user=s.ratings_per_user,
                       segments=s.segments, factors=s.factors, unrated_fraction=s.unrated_fraction,
                       seed=s.seed)
        (out / "DONE").write_text("ok\n")
    return out


def load_dataset(cfg: Config, quiet: bool = False) -> Dataset:
    """Load the data set of ``cfg`` (see the module docstring for where it is looked for)."""
    from research.data import prepare, sources

    source = cfg.data.source  # one of config.DATA_SOURCES: checked when the config loaded
    if source == "synth":
        raw, adapter, name = ensure_synth(cfg), "mal2020", "synth"
    else:
        raw = find_raw(source, cfg.data.path)
        adapter, name = source, source
        if raw is None:
            if not cfg.data.fallback_to_synth:
                raise ConfigError(f"no {source} data found: set data.path, or ANIMEREC_DATA, "
                                  f"or put the files in data/raw/{source}/")
            if not quiet:
                print(f"[animerec] no {source} data given (ANIMEREC_DATA unset, no data.path, nothing in "
                      f"{REPO_ROOT / 'data' / 'raw' / source}); using the synthetic generator instead",
                      file=sys.stderr)
            raw, adapter, name = ensure_synth(cfg), "mal2020", "synth"
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, ratings="", catalogue="", synopsis=""))
    if adapter == "processed":  # prepare applied the data filters its manifest records
        frame, item_table, manifest = prepare.load_processed(raw)
    else:
        frame, item_table, manifest = sources.load(adapter, raw, cfg.data)
    manifest = {"source": adapter, "raw": str(raw), **manifest}
    return build_dataset(frame, item_table, name=name, manifest=manifest)
