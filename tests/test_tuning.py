"""The tuner: trials scored on validation (never test) through the harness, resume without repeating
finished trials (a larger budget, a killed trial, a failed trial), failures raise and are recorded,
config errors name the key. keras-tuner imports TensorFlow, so the searches are marked ``keras``;
the config checks are not."""
import json

import numpy as np
import pandas as pd
import pytest

from research import config
from research.data.interactions import build_dataset
from research.data.splits import make_split
from research.errors import ConfigError
from research.eval.harness import evaluate
from research.models.baselines import Bias
from research.seeding import child_seed

SPACE = ('[models.bias.space]\n'
         'user_damping = {type="float", min=0.0, max=50.0}\n'
         'item_damping = {type="float", min=0.1, max=100.0, sampling="log"}\n')


def _dataset():
    r = np.random.default_rng(0)
    n = 3000
    u, i = r.integers(0, 80, n), r.integers(0, 120, n)
    rating = np.clip(np.round(6 + r.normal(0, 1, 80)[u] + r.normal(0, 1, 120)[i] + r.normal(0, 1, n)), 1, 10)
    f = pd.DataFrame({"user": u * 7 + 3, "item": i * 11 + 1, "rating": rating}).drop_duplicates(["user", "item"])
    return build_dataset(f, name="toy")


def _cfg(tmp_path, tune="", models="[models.bias]\n" + SPACE, retrain=False):
    p = tmp_path / "c.toml"
    p.write_text(f'experiment = "t"\nresults_dir = "{tmp_path / "results"}"\n'
                 f'[tune]\nretrain_on_full = {str(retrain).lower()}\n{tune}\n{models}')
    return config.load(p)


def _tuning(out):
    return json.loads((out / "tuning.json").read_text())


class _Kill(BaseException):
    """Escapes keras-tuner's per-trial ``except Exception``, like a SIGKILL mid-trial."""


def _kill_at(trial_id: str, calls: list):
    """A trial hook recording (trial, user_damping) in ``calls`` and killing trial ``trial_id``."""
    def killer(tid, params):
        calls.append((tid, params["user_damping"]))
        if tid == trial_id:
            raise _Kill()
    return killer


# ---- searches (TensorFlow via keras-tuner) ---------------------------------------------------

@pytest.mark.keras
def test_random_search_scores_on_validation(tmp_path):
    from research.tuning import tune

    data = _dataset()
    cfg = _cfg(tmp_path, "max_trials = 3")
    out = tune(cfg, data, quiet=True)
    t = _tuning(out)
    assert t["status"] == "finished" and t["scored_on"] == "validation"
    assert [r["status"] for r in t["trials"]] == ["COMPLETED"] * 3
    assert len({r["hyperparameters"]["user_damping"] for r in t["trials"]}) == 3
    # the untuned default (Bias' constructor values) is tried first
    assert t["trials"][0]["hyperparameters"] == {"user_damping": 5.0, "item_damping": 5.0}
    assert [r["is_default"] for r in t["trials"]] == [True, False, False]
    split = make_split(data.interactions, cfg.split, 0)
    for r in t["trials"]:
        assert 0.0 <= r["hyperparameters"]["user_damping"] <= 50.0
        assert 0.1 <= r["hyperparameters"]["item_damping"] <= 100.0
        assert r["seconds"] > 0 and r["rss_mb"] > 0
        # the objective is the harness on validation, with the runner's model seed
        m = Bias(**r["hyperparameters"], seed=child_seed(0, "bias")).fit(split.train, split.val)
        val = evaluate(m, split, part="val").summary
        test = evaluate(m, split, part="test").summary
        assert r["objective"] == pytest.approx(val["rmse"], abs=1e-12)
        assert "ndcg@10" not in r["metrics"]  # an rmse search skips the ranking pass
        assert abs(r["objective"] - test["rmse"]) > 1e-6  # and not test
    best = min(t["trials"], key=lambda r: r["objective"])
    assert t["best"]["trial_id"] == best["trial_id"] and t["best"]["value"] == best["objective"]
    # one HParams session per trial for TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    for r in t["trials"]:
        acc = EventAccumulator(str(out / "logs" / f"trial_{r['trial_id']}"))
        acc.Reload()
        assert {"_hparams_/session_start_info", "rmse", "mae"} <= set(acc.Tags()["tensors"])
        logged = float(tensor_util.make_ndarray(acc.Tensors("rmse")[0].tensor_proto))
        assert logged == pytest.approx(r["objective"], rel=1e-6)
    assert not (out / "metrics.json").exists()  # retrain_on_full = false


@pytest.mark.keras
def test_resume_with_a_larger_budget_runs_only_the_new_trial(tmp_path):
    from research.tuning import tune

    data, calls = _dataset(), []
    out2 = tune(_cfg(tmp_path, "max_trials = 2"), data, quiet=True, trial_hook=lambda tid, p: calls.append(tid))
    first = _tuning(out2)["trials"]
    out3 = tune(_cfg(tmp_path, "max_trials = 3"), data, quiet=True, trial_hook=lambda tid, p: calls.append(tid))
    assert out3 == out2  # the budget is not part of the folder's hash
    assert calls == ["0", "1", "2"]  # exactly one new trial
    t = _tuning(out3)["trials"]
    assert [r["status"] for r in t] == ["COMPLETED"] * 3 and t[:2] == first


@pytest.mark.keras
def test_a_search_in_a_folder_named_by_an_earlier_id_scheme_is_continued(tmp_path):
    """A run-id scheme change (a config key added) must not redo a search: the folder is found by
    what it searched and on which split; another space or split is a different search."""
    from research.tuning import tune

    data, calls = _dataset(), []
    out = tune(_cfg(tmp_path, "max_trials = 2", retrain=True), data, quiet=True,
               trial_hook=lambda tid, p: calls.append(tid))
    old = out.parent / "tune-0123456789-seed0"  # as if named by an earlier scheme
    out.rename(old)
    again = tune(_cfg(tmp_path, "max_trials = 2", retrain=True), data, quiet=True,
                 trial_hook=lambda tid, p: calls.append(tid))
    assert again == old and calls == ["0", "1"]  # found, nothing re-searched
    from research.data.splits import make_split
    from research.tuning.folder import earlier_search

    cfg = _cfg(tmp_path, "max_trials = 2", retrain=True)
    assert earlier_search(cfg, 0, make_split(data.interactions, cfg.split, 0)) == old  # as tuned_config.py finds it
    other = _cfg(tmp_path, "max_trials = 2", models="[models.bias]\n[models.bias.space]\n"
                                                     "user_damping = {type=\"float\", min=0.0, max=9.0}\n")
    assert tune(other, data, quiet=True) != old  # another space: another search
    shifted = _cfg(tmp_path, "max_trials = 2\n[split]\nval_fraction = 0.2", retrain=True)
    assert earlier_search(shifted, 0, make_split(data.interactions, shifted.split, 0)) is None  # another split


@pytest.mark.keras
def test_killed_trial_is_rerun_and_finished_ones_are_not(tmp_path):
    from research.tuning import tune

    data, calls = _dataset(), []
    cfg = _cfg(tmp_path, "max_trials = 3")

    killer = _kill_at("1", calls)

    with pytest.raises(_Kill):
        tune(cfg, data, quiet=True, trial_hook=killer)
    t = _tuning(tuning_dir_of(cfg))
    assert t["status"] == "interrupted" and [r["status"] for r in t["trials"]] == ["COMPLETED", "RUNNING"]
    out = tune(cfg, data, quiet=True, trial_hook=lambda tid, p: calls.append((tid, p["user_damping"])))
    assert [c[0] for c in calls] == ["0", "1", "1", "2"]
    assert calls[1] == calls[2]  # the killed trial is re-run with its own values
    t = _tuning(out)
    assert [r["status"] for r in t["trials"]] == ["COMPLETED"] * 3 and t["status"] == "finished"


@pytest.mark.keras
def test_failed_trial_raises_is_recorded_and_rerun_on_resume(tmp_path):
    from research.tuning import tune

    data = _dataset()
    cfg = _cfg(tmp_path, "max_trials = 3")

    def boom(tid, params):
        if tid == "1":
            raise ValueError("injected failure")

    with pytest.raises(ValueError, match="injected failure"):
        tune(cfg, data, quiet=True, trial_hook=boom)
    t = _tuning(tuning_dir_of(cfg))
    assert t["status"] == "failed"
    assert [r["status"] for r in t["trials"]] == ["COMPLETED", "FAILED"]
    assert "injected failure" in t["trials"][1]["error"]
    calls = []
    out = tune(cfg, data, quiet=True, trial_hook=lambda tid, p: calls.append(tid))
    assert sorted(calls) == ["1", "2"]
    assert [r["status"] for r in _tuning(out)["trials"]] == ["COMPLETED"] * 3


@pytest.mark.keras
def test_bayesian_never_repeats_a_configuration(tmp_path):
    from research.tuning import tune

    space = ('[models.bias.space]\nuser_damping = {type="choice", values=[0.0, 25.0]}\n'
             'clip = {type="boolean"}\n')  # 4 configurations, budget 6
    out = tune(_cfg(tmp_path, 'oracle = "bayesian"\nmax_trials = 6', models="[models.bias]\n" + space),
               _dataset(), quiet=True)
    hps = [tuple(sorted(r["hyperparameters"].items())) for r in _tuning(out)["trials"]]
    assert len(hps) == 4 and len(set(hps)) == 4  # the space is exhausted, nothing ran twice


@pytest.mark.keras
def test_hyperband_gives_keras_models_its_epochs(tmp_path):
    from research.tuning import tune

    models = ('[models.embedding_dot]\ndim = 4\nbatch_size = 256\nlearning_rate = 0.05\nl2 = 1.0\n'
              '[models.embedding_dot.space]\nl2 = {type="float", min=0.1, max=10.0, sampling="log"}\n')
    calls = []
    out = tune(_cfg(tmp_path, 'oracle = "hyperband"\nmax_epochs = 3\nhyperband_factor = 3\nmax_trials = 4',
                    models=models), _dataset(), quiet=True, trial_hook=lambda tid, p: calls.append(p["epochs"]))
    t = _tuning(out)["trials"]
    # bracket 1 of Hyperband(max_epochs=3, factor=3): three 1-epoch trials, then the best for 3 epochs
    assert calls == [1, 1, 1, 3]
    assert [r["hyperparameters"]["epochs"] for r in t] == [1, 1, 1, 3]
    best_of_round0 = min(t[:3], key=lambda r: r["objective"])
    assert t[3]["hyperparameters"]["l2"] == best_of_round0["hyperparameters"]["l2"]
    assert all(r["metrics"]["fit_epochs"] <= r["hyperparameters"]["epochs"] for r in t)


@pytest.mark.keras
def test_retrain_on_full_writes_table_with_baselines_tuned_and_default(tmp_path):
    from research.tuning import tune

    data = _dataset()
    cfg = _cfg(tmp_path, "max_trials = 2", retrain=True)
    out = tune(cfg, data, quiet=True)
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["models"]) == ["global_mean", "bias", "popularity", "bias_tuned"]
    assert m["fitted_on"] == "train+validation" and (out / "table.md").is_file()
    best = _tuning(out)["best"]
    split = make_split(data.interactions, cfg.split, 0)
    tv = split.train_val()
    tuned = Bias(**best["hyperparameters"], seed=child_seed(0, "bias")).fit(tv, None)
    default = Bias(seed=child_seed(0, "bias")).fit(tv, None)
    assert m["models"]["bias_tuned"]["rmse"] == pytest.approx(evaluate(tuned, split).summary["rmse"], abs=1e-12)
    assert m["models"]["bias"]["rmse"] == pytest.approx(evaluate(default, split).summary["rmse"], abs=1e-12)
    # the untuned default's validation score, the number the search had to beat
    d = Bias(seed=child_seed(0, "bias")).fit(split.train, split.val)
    assert _tuning(out)["default"]["objective"] == pytest.approx(evaluate(d, split, part="val").summary["rmse"])
    # the folder is a run folder: the tuned model reloads for `animerec recommend --run`
    from research.experiment import load_model, load_run

    meta, _, _ = load_run(out)
    again = load_model(out, "bias_tuned", meta)
    assert again.user_damping == pytest.approx(best["hyperparameters"]["user_damping"])


@pytest.mark.keras
def test_refit_takes_the_default_from_its_trial_instead_of_fitting_it_again(tmp_path, monkeypatch):
    """The first trial is the default: its validation metrics are the default's (the same fit),
    so the refit does not repeat it; a search whose trials never hit the default still fits it."""
    from research.models import registry
    from research.tuning import tune

    data = _dataset()
    fits = []
    build = registry.build
    monkeypatch.setattr(registry, "build", lambda typ, params, seed, **kw: fits.append(dict(params))
                        or build(typ, params, seed, **kw))
    out = tune(_cfg(tmp_path, "max_trials = 2", retrain=True), data, quiet=True)
    t = _tuning(out)
    assert t["trials"][0]["is_default"] and t["default"]["from_trial"] == t["trials"][0]["trial_id"]
    assert t["default"]["metrics"] == t["trials"][0]["metrics"]
    # the config check's build, 2 trials, 4 refits (3 baselines + tuned): no default fit on validation
    assert len(fits) == 7
    split = make_split(data.interactions, config.load(tmp_path / "c.toml").split, 0)
    d = Bias(seed=child_seed(0, "bias")).fit(split.train, split.val)
    assert t["default"]["objective"] == pytest.approx(evaluate(d, split, part="val").summary["rmse"], abs=1e-12)

    # a default outside the space is never a trial: it is fitted for the comparison
    fits.clear()
    (tmp_path / "b").mkdir()
    space = SPACE.replace("min=0.0, max=50.0", "min=10.0, max=50.0")  # Bias' user_damping 5 is outside
    out = tune(_cfg(tmp_path / "b", "max_trials = 2", models="[models.bias]\n" + space, retrain=True),
               data, quiet=True)
    t = _tuning(out)
    assert not any(r["is_default"] for r in t["trials"]) and t["default"]["from_trial"] is None
    assert len(fits) == 8
    assert t["default"]["objective"] == pytest.approx(evaluate(d, split, part="val").summary["rmse"], abs=1e-12)


def tuning_dir_of(cfg):
    """The tuning folder of ``cfg`` on ``_dataset()`` (the folder's name covers the data)."""
    from research.run_ids import dataset_id
    from research.tuning import tuning_dir

    return tuning_dir(cfg, 0, dataset_id(_dataset()))


# ---- config checks (no TensorFlow) ----------------------------------------------------------

def test_unknown_space_parameter_names_the_key(tmp_path):
    from research.tuning import check_space, tuned_spec

    cfg = _cfg(tmp_path, models='[models.bias.space]\nuser_dampign = {type="float", min=0.0, max=5.0}\n')
    with pytest.raises(ConfigError, match=r"models\.bias\.space\.user_dampign.*did you mean 'user_damping'"):
        check_space(tuned_spec(cfg))


@pytest.mark.parametrize("entry, msg", [
    ('{type="float", min=5.0, max=1.0}', "must be below max"),
    ('{type="float", min=0.0, max=1.0, sampling="log"}', "needs min > 0"),
    ('{type="integer", min=1, max=3}', r"\.type: expected one of"),
    ('{type="float", min=0.0, max=1.0, stepp=0.1}', "unknown field"),
    ('{type="choice", values=[]}', "non-empty list"),
])
def test_bad_space_entries(tmp_path, entry, msg):
    from research.tuning import check_space, tuned_spec

    cfg = _cfg(tmp_path, models=f"[models.bias.space]\nuser_damping = {entry}\n")
    with pytest.raises(ConfigError, match=msg):
        check_space(tuned_spec(cfg))


def test_hyperband_needs_epochs(tmp_path):
    from research.tuning import check_space, tuned_spec

    with pytest.raises(ConfigError, match="hyperband"):
        check_space(tuned_spec(_cfg(tmp_path)), "hyperband")


def test_objective_checks(tmp_path):
    from research.tuning import check_objective, tuned_spec

    with pytest.raises(ConfigError, match="unknown key 'tune.direction'"):
        _cfg(tmp_path, 'objective = "ndcg@10"\ndirection = "max"')  # the metric's own, not a key
    cfg = _cfg(tmp_path, 'objective = "rmse"', models='[models.popularity.space]\n')
    with pytest.raises(ConfigError, match="does not predict ratings"):
        check_objective(cfg, tuned_spec(cfg))
    cfg = _cfg(tmp_path, 'objective = "ndgc@10"')
    with pytest.raises(ConfigError, match="did you mean 'ndcg@10'"):
        check_objective(cfg, tuned_spec(cfg))
    cfg = _cfg(tmp_path, 'objective = "ndcg@10"')
    assert check_objective(cfg, tuned_spec(cfg)) == ("ndcg@10", "max")
    cfg = _cfg(tmp_path, 'objective = "mae"', models='[models.bias.space]\n')
    assert check_objective(cfg, tuned_spec(cfg)) == ("mae", "min")


def test_which_model_is_tuned(tmp_path):
    from research.tuning import tuned_spec

    two = "[models.popularity]\n[models.bias]\n" + SPACE
    with pytest.raises(ConfigError, match="tune.model is not set"):
        tuned_spec(_cfg(tmp_path, models=two))
    assert tuned_spec(_cfg(tmp_path, 'model = "bias"', models=two)).name == "bias"
    with pytest.raises(ConfigError, match="unknown model 'bais'"):
        tuned_spec(_cfg(tmp_path, 'model = "bais"', models=two))


def test_default_values_as_a_point_of_the_space(tmp_path):
    from research.tuning import default_values, tuned_spec

    assert default_values(tuned_spec(_cfg(tmp_path))) == {"user_damping": 5.0, "item_damping": 5.0}
    # a value in the table wins over the constructor's default
    cfg = _cfg(tmp_path, models="[models.bias]\nuser_damping = 20\n" + SPACE)
    assert default_values(tuned_spec(cfg)) == {"user_damping": 20.0, "item_damping": 5.0}
    # outside the range (or the choices): the default cannot be a trial
    cfg = _cfg(tmp_path, models='[models.bias.space]\nuser_damping = {type="float", min=10.0, max=50.0}\n')
    assert default_values(tuned_spec(cfg)) is None
    cfg = _cfg(tmp_path, models='[models.bias.space]\nclip = {type="boolean"}\n'
                                'iterations = {type="choice", values=[1, 2]}\n')
    assert default_values(tuned_spec(cfg)) is None  # iterations defaults to 3


@pytest.mark.keras
def test_other_data_restart_the_search(tmp_path):
    from research.data.interactions import build_dataset as build
    from research.tuning import tune

    cfg = _cfg(tmp_path, "max_trials = 2")
    tune(cfg, _dataset(), quiet=True)
    f = _dataset().interactions.to_frame()
    f["user"] = _dataset().meta.users.ids(f["user"])
    f["item"] = _dataset().meta.items.ids(f["item"])
    f.loc[f.index[:50], "rating"] = 10.0  # the same config on changed data
    calls = []
    out = tune(cfg, build(f, name="toy"), quiet=True, trial_hook=lambda tid, p: calls.append(tid))
    assert calls == ["0", "1"]  # not resumed: every trial re-run on the new data
    assert len(_tuning(out)["trials"]) == 2


def test_importing_the_tuning_package_loads_no_tensorflow():
    """keras-tuner (Keras 3, TensorFlow) is imported by research.tuning.tuner only, which ``tune``
    imports inside the function: `animerec tune --help` and tuned_config.py stay fast."""
    import subprocess
    import sys

    code = ("import sys, research.tuning, research.tuning.command, research.tuning.refit; "
            "print(sorted(m for m in ('tensorflow', 'keras_tuner', 'keras') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


@pytest.mark.keras
def test_bayesian_proposals_stay_inside_an_int_box():
    """keras-tuner's Int maps the GP optimiser's upper bound (prob 1.0) to max + 1; the project's
    Bayesian oracle clamps it (a search once ran dim = 129 in a box of 8-128)."""
    import keras_tuner as kt

    from research.tuning.oracles import _bayesian_class
    from research.tuning.space import hyperparameters

    hps = hyperparameters({"dim": {"type": "int", "min": 8, "max": 128, "sampling": "log"},
                           "k": {"type": "int", "min": 1, "max": 10}})
    assert hps._hps["dim"][0].prob_to_value(1.0) == 129  # the library's behaviour this guards against
    o = _bayesian_class()(objective=kt.Objective("rmse", "min"), hyperparameters=hps, max_trials=3, seed=1)
    assert o._vector_to_values([1.0, 1.0]) == {"dim": 128, "k": 10}
    assert o._vector_to_values([0.0, 0.0]) == {"dim": 8, "k": 1}


# ---- the committed archive of a search (research.tuning.archive) ------------------------------
@pytest.mark.keras
def test_a_search_resumes_from_its_archive_when_its_folder_is_gone(tmp_path):
    """A fresh machine has no results/runs: the archive under results/searches (JSON only) lets the
    search go on where it stopped: a killed trial is re-run with its own values, done ones are not,
    and a finished search given a larger budget runs only the new trial."""
    import shutil

    from research.tuning import archive, tune

    data, calls = _dataset(), []
    cfg = _cfg(tmp_path, "max_trials = 3", retrain=True)

    killer = _kill_at("1", calls)

    with pytest.raises(_Kill):
        tune(cfg, data, quiet=True, trial_hook=killer)
    folder = tuning_dir_of(cfg)
    kept = archive.archive_dir(folder, cfg.results_path)
    assert kept == tmp_path / "results" / "searches" / "t" / folder.name
    assert not list(kept.parent.glob("*.saving")) and not list(kept.parent.glob("*.old"))  # swapped in whole
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert all(f.endswith(".json") for f in files) and "keras_tuner/oracle.json" in files
    assert _tuning(kept)["status"] == "interrupted"
    shutil.rmtree(folder)
    out = tune(cfg, data, quiet=True, trial_hook=lambda tid, p: calls.append((tid, p["user_damping"])))
    assert out == folder and [c[0] for c in calls] == ["0", "1", "1", "2"] and calls[1] == calls[2]
    t = _tuning(out)
    assert [r["status"] for r in t["trials"]] == ["COMPLETED"] * 3 and t["status"] == "finished"
    assert json.loads((kept / "metrics.json").read_text())["tuned"] == json.loads(
        (out / "metrics.json").read_text())["tuned"]  # what tuned_config.py reads on a fresh machine
    shutil.rmtree(folder)
    calls.clear()
    tune(_cfg(tmp_path, "max_trials = 4", retrain=True), data, quiet=True,
         trial_hook=lambda tid, p: calls.append(tid))
    assert calls == ["3"] and _tuning(kept)["trials"][:3] == t["trials"]


def test_restore_copies_only_into_a_missing_folder_and_save_mirrors(tmp_path):
    import shutil

    from research.tuning import archive

    results = tmp_path / "results"
    folder = results / "runs" / "e" / "tune-x-seed0"
    dest = archive.archive_dir(folder, results)
    (folder / "keras_tuner" / "trial_00").mkdir(parents=True)
    (folder / "keras_tuner" / "trial_01").mkdir(parents=True)
    for rel in ("tuning.json", "metrics.json", "keras_tuner/oracle.json", "keras_tuner/trial_00/trial.json",
                "keras_tuner/trial_01/trial.json"):
        (folder / rel).write_text('{"a": 1}')
    (folder / "keras_tuner" / "trial_00" / "checkpoint.h5").write_text("not archived")
    assert archive.save(folder, dest) == dest
    assert (dest / "metrics.json").is_file() and not (dest / "keras_tuner" / "trial_00" / "checkpoint.h5").exists()
    shutil.rmtree(folder / "keras_tuner" / "trial_01")  # e.g. check_data discarded it
    (folder / "metrics.json").unlink()
    archive.save(folder, dest)
    assert not (dest / "keras_tuner" / "trial_01").exists() and not (dest / "metrics.json").exists()  # a mirror
    assert not archive.restore(folder, dest)  # the folder is there: left alone
    shutil.rmtree(folder)
    dest.rename(dest.with_name(dest.name + ".old"))  # a save killed between its two renames
    assert archive.restore(folder, dest)
    assert (folder / "keras_tuner" / "oracle.json").is_file() and (folder / "tuning.json").is_file()
    assert not list(folder.parent.glob("*.restoring"))
