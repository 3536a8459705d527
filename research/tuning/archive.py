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

``save`` runs after every trial and when a search stops or ends (``research.tuning.command``,
``research.tuning.tuner``). ``restore`` runs when ``animerec tune`` finds no tuning folder but an
archive of the same name: it copies the files back (not ``metrics.json`` and ``status.json``), and
the search resumes as it would in its own folder (trials done are not redone; a trial that was
running is run again from its start: its checkpoint was not archived; ``check_data`` still refuses
other data). The refit is always redone (its models and predictions are not archived), which
regenerates the report's inputs.

Only JSON is archived and read back (keras-tuner parses it as JSON): nothing in an archive can
execute code. Files are written to a temporary name and renamed, so an interrupted save leaves the
previous copy of each file whole.
"""
from __future__ import annotations

import shutil
from pathlib import Path

FILES = ("tuning.json", "metrics.json", "config.json", "manifest.json", "data_fingerprint.json", "env.json",
         "status.json")
TUNER_FILES = ("oracle.json", "tuner0.json")
TRIAL_FILES = ("trial.json", "animerec.json")


def archive_dir(folder: Path, results_path: Path) -> Path:
    """``<results>/searches/<experiment>/<folder name>`` for tuning folder ``<results>/runs/<experiment>/<name>``."""
    folder = Path(folder)
    return Path(results_path) / "searches" / folder.parent.name / folder.name


def _members(root: Path) -> list[Path]:
    """The archived files present under ``root`` (a tuning folder or an archive), relative to it."""
    out = [Path(f) for f in FILES if (root / f).is_file()]
    kt = root / "keras_tuner"
    out += [Path("keras_tuner") / f for f in TUNER_FILES if (kt / f).is_file()]
    for trial in sorted(kt.glob("trial_*")) if kt.is_dir() else ():
        out += [Path("keras_tuner") / trial.name / f for f in TRIAL_FILES if (trial / f).is_file()]
    return out


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def save(folder: Path, results_path: Path) -> Path:
    """Copy the tuning folder's archived files (``FILES``, keras-tuner's state) into its archive;
    returns the archive folder."""
    folder = Path(folder)
    dest = archive_dir(folder, results_path)
    for rel in _members(folder):
        _copy(folder / rel, dest / rel)
    return dest


#: not copied back: the refit rewrites them (a restored folder is a search under way until then)
NOT_RESTORED = ("metrics.json", "status.json")


def restore(folder: Path, results_path: Path) -> bool:
    """When ``folder`` does not exist and its archive does, copy the archive into it (but
    ``NOT_RESTORED``); True if so."""
    folder = Path(folder)
    src = archive_dir(folder, results_path)
    if folder.exists() or not (src / "keras_tuner" / "oracle.json").is_file():
        return False
    for rel in _members(src):
        if str(rel) not in NOT_RESTORED:
            _copy(src / rel, folder / rel)
    return True
