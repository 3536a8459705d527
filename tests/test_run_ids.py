"""Run ids cover the data (issue 14.1): ``<config hash>_<data id>-seed<seed>``, the data id a hash of
the sha256 of the files read, computed before loading (``data_id``) exactly as after
(``dataset_id`` of the loaded manifest), so ``run --keep-finished``, ``tune`` and the showcase find
a run without loading and never take one made on other data."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from research import config
from research.data import prepare
from research.data.load import load_dataset
from research.experiment import finished, run, run_folder
from research.run_ids import _full_config_hash, _legacy_config_hash, config_hash, data_id, dataset_id, run_id

MODELS = "[models.global_mean]\n[models.bias]\n[models.popularity]\n"


def _ratings(path: Path, seed: int, users: int = 40, items: int = 30) -> Path:
    r = np.random.default_rng(seed)
    lines = ["user_id,anime_id,rating"]
    for u in range(users):
        for i in sorted(r.choice(items, 12, replace=False)):
            lines.append(f"{u + 1},{i + 1},{int(r.integers(1, 11))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(tmp_path: Path, data: str = "", extra: str = "", fallback: bool = False):
    p = tmp_path / "c.toml"
    p.write_text(f'experiment = "ids"\nresults_dir = "{tmp_path / "results"}"\nseeds = [0]\n'
                 f'[data]\nsource = "mal2020"\nfallback_to_synth = {str(fallback).lower()}\n{data}\n'
                 f'[synth]\nusers = 40\nitems = 30\nratings_per_user = 10\n{extra}{MODELS}')
    return config.load(p)


@pytest.fixture
def two_folders(tmp_path, monkeypatch):
    """Two ANIMEREC_DATA folders with different mal2020 ratings, and a byte copy of the first."""
    a, b, copy = tmp_path / "A", tmp_path / "B", tmp_path / "copy_of_A"
    _ratings(a / "mal2020" / "rating_complete.csv", 1)
    _ratings(b / "mal2020" / "rating_complete.csv", 2)
    shutil.copytree(a, copy)
    return a, b, copy


def test_same_config_on_two_data_folders_gets_two_run_folders(tmp_path, monkeypatch, two_folders):
    """Fails on the old ids (config hash only): the second run replaced the first's folder."""
    a, b, _ = two_folders
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    (run_a,) = run(cfg, quiet=True)
    stamp_a = (run_a / "status.json").read_text()
    metrics_a = (run_a / "metrics.json").read_text()
    monkeypatch.setenv("ANIMEREC_DATA", str(b))
    (run_b,) = run(cfg, quiet=True)
    assert run_b != run_a and run_a.parent == run_b.parent
    assert (run_a / "status.json").read_text() == stamp_a  # the first run is untouched
    assert (run_a / "metrics.json").read_text() == metrics_a
    assert json.loads((run_a / "manifest.json").read_text())["raw"].startswith(str(a))
    assert json.loads((run_b / "manifest.json").read_text())["raw"].startswith(str(b))
    assert metrics_a != (run_b / "metrics.json").read_text()
    # the id: the config's part is shared, the data's differs and is recorded in the manifest
    ha, da = run_a.name.rsplit("-seed", 1)[0].split("_")
    hb, db = run_b.name.rsplit("-seed", 1)[0].split("_")
    assert ha == hb and da != db
    assert json.loads((run_a / "manifest.json").read_text())["data_id"] == da


def test_same_data_gives_the_same_id_and_a_copy_of_the_files_too(tmp_path, monkeypatch, two_folders):
    a, _, copy = two_folders
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    first = data_id(cfg)
    assert data_id(cfg) == first == dataset_id(load_dataset(cfg, quiet=True))
    monkeypatch.setenv("ANIMEREC_DATA", str(copy))
    assert data_id(cfg) == first  # content, not location
    # data.path in the config is where, not what: the same files there give the same run id
    monkeypatch.delenv("ANIMEREC_DATA")
    there = _cfg(tmp_path, data=f'path = "{copy / "mal2020"}"')
    assert run_id(there, 0, data_id(there)) == run_id(cfg, 0, first)


def test_keep_finished_looks_up_without_loading_and_never_takes_other_data(tmp_path, monkeypatch, two_folders):
    import research.experiment as E

    a, b, copy = two_folders
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    (run_a,) = run(cfg, quiet=True)
    assert finished(cfg, 0) == run_a

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the data to look a finished run up")

    with monkeypatch.context() as m:
        m.setattr(E, "load_dataset", no_loading)
        assert run(cfg, quiet=True, keep_finished=True) == [run_a]
        m.setenv("ANIMEREC_DATA", str(copy))  # the same files elsewhere: the same run
        assert run(cfg, quiet=True, keep_finished=True) == [run_a]
    monkeypatch.setenv("ANIMEREC_DATA", str(b))
    assert finished(cfg, 0) is None
    (run_b,) = run(cfg, quiet=True, keep_finished=True)  # other data: run, beside the first
    assert run_b != run_a and finished(cfg, 0) == run_b
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    assert finished(cfg, 0) == run_a


def test_a_changed_file_is_other_data(tmp_path, monkeypatch, two_folders):
    a, _, _ = two_folders
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    (run_a,) = run(cfg, quiet=True)
    f = a / "mal2020" / "rating_complete.csv"
    f.write_text(f.read_text() + "999,1,5\n")
    assert finished(cfg, 0) is None and run_folder(cfg, 0).path != run_a


def _check_ids_agree(cfg):
    before = data_id(cfg)
    assert before == dataset_id(load_dataset(cfg, quiet=True))
    return before


def test_data_id_before_loading_equals_the_loaded_manifests_for_every_source(tmp_path, monkeypatch):
    """Every adapter and the synthetic source (generated and fallen back to): the cheap id is the
    loaded one, so a lookup before loading finds what the run wrote."""
    monkeypatch.delenv("ANIMEREC_DATA", raising=False)
    raw = tmp_path / "raw"
    _ratings(raw / "rating_complete.csv", 3)
    (raw / "anime.csv").write_text("MAL_ID,Name,Genres\n" + "".join(f"{i},A{i},Action\n" for i in range(1, 31)))
    ids = {"mal2020": _check_ids_agree(_cfg(tmp_path, data=f'path = "{raw}"'))}
    # animelist layout with the status codes file
    al = tmp_path / "al"
    al.mkdir()
    rows = ["user_id,anime_id,rating,watching_status,watched_episodes"]
    rows += [f"{u},{i},{(u * i) % 11},{1 + (u + i) % 4},3" for u in range(1, 30) for i in range(1, 15)]
    (al / "animelist.csv").write_text("\n".join(rows) + "\n")
    (al / "watching_status.csv").write_text("status, description\n1,Watching\n2,Completed\n3,On Hold\n4,Dropped\n")
    ids["animelist"] = _check_ids_agree(_cfg(tmp_path, data=f'path = "{al}"\nunrated = "keep"'))
    # cooperunion, headerless with -1
    cu = tmp_path / "cu"
    cu.mkdir()
    (cu / "rating.csv").write_text("".join(f"{u},{i},{(u + i) % 11 or -1}\n" for u in range(1, 30)
                                           for i in range(1, 15)))
    p = tmp_path / "cu.toml"
    p.write_text(f'experiment = "ids"\nresults_dir = "{tmp_path / "results"}"\n[data]\nsource = "cooperunion2017"\n'
                 f'path = "{cu}"\n{MODELS}')
    ids["cooperunion2017"] = _check_ids_agree(config.load(p))
    # generic TSV
    g = tmp_path / "g"
    g.mkdir()
    (g / "r.tsv").write_text("u\ti\tr\n" + "".join(f"{u}\t{i}\t{(u * i) % 5 + 1}\n" for u in range(1, 30)
                                                  for i in range(1, 12)))
    p = tmp_path / "g.toml"
    p.write_text(f'experiment = "ids"\nresults_dir = "{tmp_path / "results"}"\n[data]\nsource = "generic"\n'
                 f'path = "{g}"\nratings = "r.tsv"\ndelimiter = "tab"\nuser_col = "u"\nitem_col = "i"\n'
                 f'rating_col = "r"\n{MODELS}')
    ids["generic"] = _check_ids_agree(config.load(p))
    # prepared parquet
    from research.config import DataConfig

    out = tmp_path / "processed"
    prepare.prepare("mal2020", raw, out, data_cfg=DataConfig(source="mal2020"))
    p = tmp_path / "p.toml"
    p.write_text(f'experiment = "ids"\nresults_dir = "{tmp_path / "results"}"\n[data]\nsource = "processed"\n'
                 f'path = "{out}"\n{MODELS}')
    ids["processed"] = _check_ids_agree(config.load(p))
    shutil.copytree(out, tmp_path / "processed_copy")  # a copy of the prepared folder: the same data
    p.write_text(p.read_text().replace(str(out), str(tmp_path / "processed_copy")))
    assert data_id(config.load(p)) == ids["processed"]
    # the synthetic source, and the fallback to it when no data were given
    p = tmp_path / "s.toml"
    p.write_text(f'experiment = "ids"\nresults_dir = "{tmp_path / "results"}"\n[data]\nsource = "synth"\n'
                 f'[synth]\nusers = 40\nitems = 30\nratings_per_user = 10\n{MODELS}')
    ids["synth"] = _check_ids_agree(config.load(p))
    fallback = _cfg(tmp_path, fallback=True)
    monkeypatch.setattr("research.data.load.REPO_ROOT", tmp_path / "no_repo")  # no data/raw/mal2020 here
    monkeypatch.setattr("research.data.load.synth_dir", lambda cfg: tmp_path / "synthdir")
    ids["fallback"] = _check_ids_agree(fallback)
    assert ids.pop("fallback") == ids["synth"]  # the same generated files, however they were asked for
    assert len(set(ids.values())) == len(ids), ids  # every other data set its own id


def test_a_folder_named_before_ids_covered_the_data_is_used_for_the_same_data_only(tmp_path, monkeypatch,
                                                                                   two_folders):
    """Run folders written as ``<config hash>-seed<seed>`` keep working (``--keep-finished``, resume,
    tuned_config.py): used when their manifest shows the same data, left alone otherwise."""
    a, b, _ = two_folders
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    (new,) = run(cfg, quiet=True)
    old = new.parent / f"{_legacy_config_hash(cfg)}-seed0"
    new.rename(old)
    assert finished(cfg, 0) == old
    assert run(cfg, quiet=True, keep_finished=True) == [old]
    monkeypatch.setenv("ANIMEREC_DATA", str(b))
    stamp = (old / "status.json").read_text()
    assert finished(cfg, 0) is None
    (other,) = run(cfg, quiet=True)
    assert other != old and (old / "status.json").read_text() == stamp


def test_tuning_folders_differ_by_data(tmp_path, monkeypatch, two_folders):
    from research.tuning import tuning_dir

    a, b, copy = two_folders
    cfg = _cfg(tmp_path, extra='[tune]\nmodel = "bias"\nmax_trials = 2\n'
                               '[models.bias.space]\nuser_damping = {type="float", min=0.0, max=5.0}\n')
    found = {}
    for name, folder in (("a", a), ("b", b), ("copy", copy)):
        monkeypatch.setenv("ANIMEREC_DATA", str(folder))
        found[name] = tuning_dir(cfg, 0)
    assert found["a"] != found["b"] and found["a"] == found["copy"]
    assert found["a"].name.startswith("tune-") and found["a"].name.endswith("-seed0")


def test_an_in_memory_data_set_is_identified_by_its_rows(tmp_path):
    import pandas as pd

    from research.data.interactions import build_dataset

    f = pd.DataFrame({"user": [1, 1, 2, 2, 3], "item": [1, 2, 1, 3, 2], "rating": [5.0, 6, 7, 8, 9]})
    one, same = build_dataset(f, name="toy"), build_dataset(f.copy(), name="toy")
    other = build_dataset(f.assign(rating=[5.0, 6, 7, 8, 1]), name="toy")
    assert dataset_id(one) == dataset_id(same) != dataset_id(other)


def test_a_key_added_with_its_default_does_not_change_the_id(tmp_path, monkeypatch):
    """A key added to a section later (with a default) keeps every earlier run's and search's
    folder; the key away from its default changes the id. Simulated: [split] gains ``new_key``."""
    import dataclasses

    cfg = _cfg(tmp_path)
    before = config_hash(cfg)
    Extended = dataclasses.make_dataclass("SplitConfig", [("new_key", int, 5)], bases=(config.SplitConfig,),
                                          frozen=True)
    monkeypatch.setitem(config.SECTIONS, "split", Extended)
    at_default = dataclasses.replace(cfg, split=Extended(**dataclasses.asdict(cfg.split)))
    moved = dataclasses.replace(cfg, split=Extended(**dataclasses.asdict(cfg.split), new_key=6))
    assert config_hash(at_default) == before != config_hash(moved)
    assert config_hash(dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, val_fraction=0.2))) != before


# The defaults the run ids leave out (config_hash): changing one changes what every config that
# does not set the key means, under the same run id. Add new keys here; do not change these.
PINNED_DEFAULTS = {
    "data": {"source": "synth", "ratings": "", "catalogue": "", "synopsis": "", "unrated": "drop",
             "max_rows": 0, "min_user_ratings": 0, "fallback_to_synth": True, "delimiter": ",",
             "header": True, "user_col": "user", "item_col": "item", "rating_col": "rating",
             "timestamp_col": ""},
    "synth": {"users": 600, "items": 800, "ratings_per_user": 60, "segments": 5, "factors": 8,
              "unrated_fraction": 0.1, "seed": 0},
    "split": {"kind": "random", "test_fraction": 0.2, "test_rows": 0, "val_fraction": 0.1, "k": 1,
              "fold_in_fraction": 0.8, "fit_on": "train"},
    "eval": {"k": 10, "batch_users": 1024, "relevance_threshold": 0.0},
    "tune": {"model": "", "oracle": "random", "max_trials": 10, "objective": "rmse", "max_epochs": 20,
             "hyperband_factor": 3, "retrain_on_full": True},
}


def test_section_defaults_are_pinned():
    import dataclasses

    for name, klass in config.SECTIONS.items():
        now = dataclasses.asdict(klass())
        now.pop("path", None)  # data.path is not in the id (the data id covers what was read)
        missing = set(now) - set(PINNED_DEFAULTS[name])
        assert not missing, f"new [{name}] keys: add them to PINNED_DEFAULTS with their defaults: {missing}"
        changed = {k: (v, now.get(k)) for k, v in PINNED_DEFAULTS[name].items() if now.get(k, v) != v or k not in now}
        assert not changed, (f"[{name}] defaults changed (pinned, now): {changed}: every run id that leaves "
                             f"the key out would keep its folder but change its meaning")


def test_a_folder_named_with_the_full_config_is_still_found(tmp_path, monkeypatch, two_folders):
    """Folders named before ids left default keys out (``<full hash>_<data id>-seed<seed>``) are found."""
    a, _, _ = two_folders
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    (new,) = run(cfg, quiet=True)
    old = new.parent / f"{_full_config_hash(cfg)}_{data_id(cfg)}-seed0"
    assert old != new
    new.rename(old)
    assert finished(cfg, 0) == old
    assert run(cfg, quiet=True, keep_finished=True) == [old]


def test_a_folder_no_name_scheme_reproduces_is_found_by_its_content(tmp_path, monkeypatch, two_folders):
    """A legacy id hashed every key the config had then, so a key added since renames it where no
    name ``locate`` tries matches: such a folder is found by its ``config.json`` and ``manifest.json``
    (``earlier_run``), for the same config and data only, and an unfinished one resumes there."""
    a, b, _ = two_folders
    cfg = _cfg(tmp_path)
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    (new,) = run(cfg, quiet=True)
    old = new.parent / "0123456789-seed0"  # a name none of the schemes gives
    new.rename(old)
    assert finished(cfg, 0) == old
    assert run(cfg, quiet=True, keep_finished=True) == [old]
    other_cfg = _cfg(tmp_path, extra="[models.item_knn]\n")  # another config: not its folder
    assert finished(other_cfg, 0) is None and run_folder(other_cfg, 0).path != old
    monkeypatch.setenv("ANIMEREC_DATA", str(b))  # other data: not its folder
    assert finished(cfg, 0) is None and run_folder(cfg, 0).path != old
    monkeypatch.setenv("ANIMEREC_DATA", str(a))
    (old / "status.json").write_text('{"status": "running"}')
    assert finished(cfg, 0) is None and run_folder(cfg, 0).path == old  # unfinished: resumed there
    (old / "config.json").write_text("{not json")
    assert run_folder(cfg, 0).path != old  # unreadable: passed over
