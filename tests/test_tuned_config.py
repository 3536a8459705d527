"""experiments/tuned_config.py: the tuned-against-tuned config written from finished searches."""
from __future__ import annotations

import importlib.util
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from research import config

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("tuned_config", ROOT / "experiments" / "tuned_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _search(tmp_path, model: str, typ: str, objective: str, refit: dict) -> tuple[Path, Path]:
    """A tune config of ``model`` and a folder holding a finished search's metrics.json."""
    cfg = tmp_path / f"tune_{model}.toml"
    cfg.write_text(f'experiment = "tune_{model}"\nresults_dir = "{tmp_path / "results"}"\n'
                   f'[data]\nsource = "synth"\n[tune]\nmodel = "{model}"\nobjective = "{objective}"\n'
                   f'[models.{model}]\ntype = "{typ}"\n')
    folder = tmp_path / "runs" / model
    folder.mkdir(parents=True)
    tuned = {"trial_id": "3", "objective": objective, "val_value": 1.2, "default_val_value": 1.3,
             "refit_params": refit, "default_refit_params": {}}
    (folder / "metrics.json").write_text(json.dumps({"tuned": tuned}))
    return cfg, folder


@pytest.fixture
def searches(tmp_path, monkeypatch):
    mod = _script()
    made = {"bias": _search(tmp_path, "bias", "bias", "rmse", {"user_damping": 4.0}),
            "embedding_dot": _search(tmp_path, "embedding_dot", "embedding_dot", "rmse", {"dim": 19, "epochs": 27}),
            "surprise_svd": _search(tmp_path, "surprise_svd", "surprise_svd", "rmse", {"n_factors": 64}),
            "ease": _search(tmp_path, "ease", "ease", "ndcg@10", {"l2": 300.0})}
    monkeypatch.setattr(mod, "tuning_dir", lambda cfg, seed: made[cfg.tune.model][1])
    return mod, {k: str(v[0]) for k, v in made.items()}


def test_blend_takes_our_tuned_rating_models_and_not_the_peers_or_rankers(searches):
    mod, cfgs = searches
    text = mod.build([cfgs["embedding_dot"], cfgs["surprise_svd"], cfgs["ease"]], "peak", [0, 1], blend=True)
    cfg = config.from_dict(tomllib.loads(text))  # loads, and every model is buildable by name
    models = tomllib.loads(text)["models"]
    assert models["blend"] == {}  # the default blend beside it
    b = models["blend_tuned"]
    assert b["type"] == "blend" and b["bases"] == ["bias", "item_knn", "user_knn", "embedding_dot"]
    assert b["base_params"] == {"embedding_dot": {"dim": 19, "epochs": 27}}  # the search's refit, epochs included
    assert models["surprise_svd_tuned"]["n_factors"] == 64 and "surprise_svd" not in b["bases"]
    assert "ease" not in b["bases"]  # a ranking search is not a rating base
    assert cfg.split.fit_on == "train+val"


def test_a_tuned_default_base_replaces_its_default(searches):
    mod, cfgs = searches
    b = tomllib.loads(mod.build([cfgs["bias"], cfgs["embedding_dot"]], "peak", [0], blend=True))["models"]["blend_tuned"]
    assert b["bases"] == ["bias", "item_knn", "user_knn", "embedding_dot"]  # bias once, at its tuned values
    assert b["base_params"]["bias"] == {"user_damping": 4.0}


def test_blend_needs_a_rating_search(searches):
    mod, cfgs = searches
    with pytest.raises(SystemExit, match="none of the searches"):
        mod.build([cfgs["ease"]], "peak", [0], blend=True)
    assert "blend" not in tomllib.loads(mod.build([cfgs["ease"]], "peak", [0]))["models"]


def test_reuse_takes_a_search_without_folder_from_the_earlier_config(searches, tmp_path):
    """--reuse: a search whose folder is gone comes from the config written before, verbatim (the
    whole text is then the same); without it, or with a config lacking it, a clear exit."""
    mod, cfgs = searches
    order = [cfgs["embedding_dot"], cfgs["surprise_svd"], cfgs["ease"]]
    text = mod.build(order, "peak", [0, 1], blend=True)
    old = tmp_path / "peak.toml"
    old.write_text(text)
    (tmp_path / "runs" / "embedding_dot" / "metrics.json").unlink()  # the folder stays: under way
    with pytest.raises(SystemExit, match="has not finished"):
        mod.build(order, "peak", [0, 1], blend=True, reuse=str(old))
    shutil.rmtree(tmp_path / "runs" / "embedding_dot")  # gone, as on a fresh machine
    with pytest.raises(SystemExit, match="no finished search"):
        mod.build(order, "peak", [0, 1], blend=True)
    assert mod.build(order, "peak", [0, 1], blend=True, reuse=str(old)) == text
    shutil.rmtree(tmp_path / "runs" / "ease")
    other = tmp_path / "other.toml"
    other.write_text(mod.build([cfgs["surprise_svd"]], "peak", [0, 1], reuse=str(old)))
    with pytest.raises(SystemExit, match="no finished search"):  # other.toml has no ease: not invented
        mod.build([cfgs["ease"]], "peak", [0, 1], reuse=str(other))


def test_reuse_refuses_other_data_and_a_second_blend_base(searches, tmp_path, monkeypatch):
    mod, cfgs = searches
    monkeypatch.setattr(mod, "tuning_dir", lambda cfg, seed: tmp_path / "runs" / cfg.tune.model)
    order = [cfgs["embedding_dot"], cfgs["ease"]]
    old = tmp_path / "peak.toml"
    written = mod.build(order, "peak", [0], blend=True)
    assert "[data]\n\n" in written  # the synthetic default: no key
    old.write_text(written.replace("[data]\n", '[data]\nsource = "mal2020"\n'))
    shutil.rmtree(tmp_path / "runs" / "embedding_dot")
    with pytest.raises(SystemExit, match="its data .* differ"):  # searched for other data: not taken
        mod.build(order, "peak", [0], blend=True, reuse=str(old))
    # two searches of one type (model names embedding_dot and ed2), both gone: one blend base only
    ed2 = tmp_path / "tune_ed2.toml"
    ed2.write_text('experiment = "tune_ed2"\n[data]\nsource = "synth"\n[tune]\nmodel = "ed2"\n'
                   'objective = "rmse"\n[models.ed2]\ntype = "embedding_dot"\n')
    old.write_text(mod.build([cfgs["ease"]], "peak", [0]) + "\n" + "".join(
        f"# tuned: tune_{n}.toml, trial 3 (val rmse 1.2000; default 1.3000)\n"
        f'[models.{n}_tuned]\ntype = "embedding_dot"\ndim = 19\n\n' for n in ("embedding_dot", "ed2")))
    with pytest.raises(SystemExit, match="a blend takes each base once"):
        mod.build([cfgs["embedding_dot"], str(ed2)], "peak", [0], blend=True, reuse=str(old))


def test_reuse_takes_a_transfer_by_its_name(tmp_path, monkeypatch):
    """With ``data_from``, a search on other data is a transfer (``<model>_tuned_from_<source>``):
    --reuse finds that table, not the plain name."""
    mod = _script()
    run_data = tmp_path / "run.toml"
    run_data.write_text('experiment = "x"\n[data]\nsource = "mal2020"\n')
    cfg, folder = _search(tmp_path, "ease", "ease", "ndcg@10", {"l2": 300.0})
    monkeypatch.setattr(mod, "tuning_dir", lambda c, seed: folder)
    text = mod.build([str(cfg)], "peak", [0], data_from=str(run_data))
    assert "[models.ease_tuned_from_synth]" in text and "[models.ease]" not in text
    old = tmp_path / "peak.toml"
    old.write_text(text)
    shutil.rmtree(folder)
    assert mod.build([str(cfg)], "peak", [0], data_from=str(run_data), reuse=str(old)) == text


def test_a_finished_archive_stands_in_for_a_gone_folder_and_a_stale_one_does_not(searches, tmp_path, monkeypatch):
    """A fresh machine: the search's folder is gone, its committed archive (results/searches) holds
    tuning.json and metrics.json. Read when the search finished and the refit is of its best trial;
    a search extended since (tuning.json running, or another best) is unfinished, not read."""
    mod, cfgs = searches
    text = mod.build([cfgs["ease"]], "peak", [0])
    kept = tmp_path / "searches" / "tune_ease"
    kept.mkdir(parents=True)
    shutil.move(str(tmp_path / "runs" / "ease" / "metrics.json"), kept / "metrics.json")
    shutil.rmtree(tmp_path / "runs" / "ease")
    monkeypatch.setattr(mod, "search_archive", lambda cfg, seed: kept)
    for status, best, ok in (("finished", "3", True), ("running", "3", False), ("finished", "5", False)):
        (kept / "tuning.json").write_text(json.dumps({"status": status, "best": {"trial_id": best}}))
        if ok:
            assert mod.build([cfgs["ease"]], "peak", [0]) == text
        else:
            with pytest.raises(SystemExit, match="has not finished"):
                mod.build([cfgs["ease"]], "peak", [0])
