"""A search's archive: the few JSON files that say what a tuning folder searched and found, kept
under ``results/searches/<experiment>/<tuning folder name>/`` and committed with the results, so
that a search outlives the machine it ran on.

A tuning folder (``results/runs/<experiment>/tune-*``) is not committed: it holds TensorBoard logs,
checkpoints, refitted models and per-rating predictions (tens of MB). A fresh machine starts with
no ``results/runs``, so without this a search longer than one session could never finish (each
session would start it again), and a finished one could not feed ``experiments/tuned_config.py``.
The archive keeps what resuming and reading need, a few KB a trial:

- ``tuning.json``, ``config.json``, ``manifest.json``, ``data_fingerprint.json``, ``env.json``,
  ``status.json`` and (a finished search with its refit) ``metrics.json`` (whose ``tuned`` entry
  ``tuned_config.py`` reads);
- keras-tuner's state: ``keras_tuner/oracle.json``, ``keras_tuner/tuner0.json`` and every
  ``keras_tuner/trial_*/trial.json`` and ``trial_*/animerec.json`` (the trial's record).

The archive's name is the search's canonical folder name (``folder.canonical_tuning_dir``: the
name a fresh machine computes), also when the search runs in a folder an earlier id scheme named.
``save`` runs after every trial and when a search stops or ends (``research.tuning.command``,
``research.tuning.tuner``); it mirrors the folder (a file gone from the folder, e.g. the trials
``check_data`` discarded, goes from the archive too) by writing a complete new copy beside the old
one and swapping the two by renames, so the archive is always one whole state, never a mix.
``restore`` runs when ``animerec tune`` finds no tuning folder (nor one of an earlier name) but an
archive: it copies the files back (not ``metrics.json`` and ``status.json``), and the search
resumes as it would in its own folder (trials done are not redone; a trial that was running is run
again from its start: its checkpoint was not archived; ``check_data`` still refuses other data;
TensorBoard's logs of the earlier trials are not restored). The refit is always redone (its models
and predictions are not archived), which regenerates the report's inputs.

``restore`` copies into a temporary folder and renames it into place (the caller holds the
search's lock), so an interrupted restore leaves no half folder. Only JSON is archived and read
back (keras-tuner parses it as JSON): nothing in an archive can execute code.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

FILES = ("tuning.json", "metrics.json", "config.json", "manifest.json", "data_fingerprint.json", "env.json",
         "status.json")
TUNER_FILES = ("oracle.json", "tuner0.json")
TRIAL_FILES = ("trial.json", "animerec.json")
#: not copied back: the refit rewrites them (a restored folder is a search under way until then)
NOT_RESTORED = ("metrics.json", "status.json")
_NEW, _OLD, _RESTORING = ".saving", ".old", ".restoring"  # transient names (git-ignored)


def archive_dir(canonical: Path, results_path: Path) -> Path:
    """``<results>/searches/<experiment>/<name>`` for the canonical tuning folder
    ``<results>/runs/<experiment>/<name>``."""
    canonical = Path(canonical)
    return Path(results_path) / "searches" / canonical.parent.name / canonical.name


def current(dest: Path) -> Path | None:
    """The archive folder holding the last whole save: ``dest``, or, when a save was interrupted
    between its two renames, the previous copy beside it; None when there is none."""
    dest = Path(dest)
    for d in (dest, dest.with_name(dest.name + _OLD)):
        if (d / "keras_tuner" / "oracle.json").is_file() or (d / "tuning.json").is_file():
            return d
    return None


def _members(root: Path) -> list[Path]:
    """The archived files present under ``root`` (a tuning folder or an archive), relative to it."""
    out = [Path(f) for f in FILES if (root / f).is_file()]
    kt = root / "keras_tuner"
    out += [Path("keras_tuner") / f for f in TUNER_FILES if (kt / f).is_file()]
    for trial in sorted(kt.glob("trial_*")) if kt.is_dir() else ():
        out += [Path("keras_tuner") / trial.name / f for f in TRIAL_FILES if (trial / f).is_file()]
    return out


def _copy_tree(src: Path, dst: Path, skip=()) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    for rel in _members(src):
        if str(rel) not in skip:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst / rel)


def save(folder: Path, dest: Path) -> Path:
    """Make ``dest`` (``archive_dir``) a copy of the tuning folder's archived files, and nothing
    else; returns ``dest``."""
    folder, dest = Path(folder), Path(dest)
    new, old = dest.with_name(dest.name + _NEW), dest.with_name(dest.name + _OLD)
    _copy_tree(folder, new)
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        dest.rename(old)
    new.rename(dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def save_quietly(folder: Path, dest: Path | None) -> None:
    """``save``, with a failure to write (a full disk, a read-only checkout) a warning rather than
    the end of a search whose trials are safe in its own folder."""
    if dest is None:
        return
    try:
        save(folder, dest)
    except OSError as exc:
        print(f"[animerec] warning: could not archive {folder} to {dest}: {exc}", file=sys.stderr)


def restore(folder: Path, dest: Path) -> bool:
    """When ``folder`` does not exist and the archive ``dest`` does (``current``), copy the archive
    (but ``NOT_RESTORED``) into it, through a temporary folder renamed into place; True if so."""
    folder = Path(folder)
    src = current(dest)
    if folder.exists() or src is None:
        return False
    tmp = folder.with_name(folder.name + _RESTORING)
    _copy_tree(src, tmp, skip=NOT_RESTORED)
    tmp.rename(folder)
    return True
