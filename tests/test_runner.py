"""The runner: run folders with every file, resume after a crash without refitting finished
models, identical metrics for the same seed, and atomic files."""
import json

import numpy as np
import pandas as pd
import pytest

from research import config
from research.data.interactions import build_dataset
from research.experiment import load_model, load_run, run_seed
from research.models import registry
from research.models.baselines import Bias


def _dataset():
    r = np.random.default_rng(0)
    n = 3000
    u, i = r.integers(0, 80, n), r.integers(0, 120, n)
    rating = np.clip(np.round(6 + r.normal(0, 1, 80)[u] + r.normal(0, 1, 120)[i]), 1, 10)
    f = pd.DataFrame({"user": u * 7 + 3, "item": i * 11 + 1, "rating": rating}).drop_duplicates(["user", "item"])
    return build_dataset(f, name="toy")


def _cfg(tmp_path, models="[models.global_mean]\n[models.bias]\n[models.popularity]\n"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "c.toml"
    p.write_text(f'experiment = "t"\nresults_dir = "{tmp_path / "results"}"\n{models}')
    return config.load(p)


class Crashing(Bias):
    """Bias that crashes in fit once per process (to simulate a killed run)."""

    crashed = False

    def fit(self, train, val=None):
        if not Crashing.crashed:
            Crashing.crashed = True
            raise RuntimeError("simulated crash")
        return super().fit(train, val)


def test_run_folder_contents_and_reload(tmp_path):
    cfg = _cfg(tmp_path)
    d = run_seed(cfg, _dataset(), 0, quiet=True)
    for name in ("config.json", "env.json", "metrics.json", "per_user.csv", "per_rating.parquet", "table.md",
                 "status.json", "meta/ids.npz", "meta/meta.json", "seen.npz"):
        assert (d / name).is_file(), name
    m = json.loads((d / "metrics.json").read_text())
    assert set(m) >= {"experiment", "dataset", "split", "seed", "models"}
    assert list(m["models"]) == ["global_mean", "bias", "popularity"]
    assert "ndcg@10" not in m["models"]["global_mean"] and "rmse" not in m["models"]["popularity"]
    pr = pd.read_parquet(d / "per_rating.parquet")
    assert set(pr["model"]) == {"global_mean", "bias"}  # popularity predicts no ratings
    b = pr[pr["model"] == "bias"]
    assert np.sqrt(np.mean((b["rating"] - b["prediction"]) ** 2)) == pytest.approx(m["models"]["bias"]["rmse"], rel=1e-5)
    assert all("fit_seconds" in v for v in m["models"].values())
    assert json.loads((d / "status.json").read_text())["status"] == "finished"
    env = json.loads((d / "env.json").read_text())
    assert env["seed"] == 0 and "numpy" in env["packages"]
    meta, _, _ = load_run(d)
    model = load_model(d, "bias", meta)
    assert model.predict(np.array([0]), np.array([0])).shape == (1,)


def test_same_seed_same_metrics(tmp_path):
    ds = _dataset()
    a = json.loads((run_seed(_cfg(tmp_path / "a"), ds, 0, quiet=True) / "metrics.json").read_text())
    b = json.loads((run_seed(_cfg(tmp_path / "b"), ds, 0, quiet=True) / "metrics.json").read_text())
    strip = lambda m: {n: {k: v for k, v in d.items() if not k.endswith("seconds")} for n, d in m["models"].items()}
    assert strip(a) == strip(b)
    c = json.loads((run_seed(_cfg(tmp_path / "c"), ds, 1, quiet=True) / "metrics.json").read_text())
    assert strip(c) != strip(a)


def test_resume_after_crash(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "crashing", f"{__name__}:Crashing")
    cfg = _cfg(tmp_path, "[models.bias]\n[models.crashing]\n")
    ds = _dataset()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_seed(cfg, ds, 0, quiet=True)
    run_dir = next(p for p in (tmp_path / "results" / "runs" / "t").iterdir() if p.is_dir())  # not the .lock
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "running"  # the folder says it did not finish
    partial = json.loads((run_dir / "metrics.json").read_text())
    assert list(partial["models"]) == ["bias"]
    first_fit = partial["models"]["bias"]["fit_seconds"]
    d = run_seed(cfg, ds, 0, quiet=True)
    assert d == run_dir
    m = json.loads((d / "metrics.json").read_text())
    assert list(m["models"]) == ["bias", "crashing"]
    assert m["models"]["bias"]["fit_seconds"] == first_fit  # kept, not refitted
    assert m["models"]["crashing"]["rmse"] == pytest.approx(m["models"]["bias"]["rmse"])
    assert json.loads((d / "status.json").read_text())["status"] == "finished"
    assert not list(d.glob(".*.tmp")) and not list(d.glob("*.tmp"))


def test_meta_round_trips_without_pickle(tmp_path):
    """The run's vocabularies and anime table (lists of genres, NaN episodes, names) come back
    equal from meta/ — JSON, npz without pickle, parquet."""
    from test_model_contract import tiny_dataset

    from research.results import RunFolder

    meta = tiny_dataset().meta
    folder = RunFolder(tmp_path / "runs" / "x" / "r", tmp_path)
    folder.open()
    folder.write_meta(meta)
    back = folder.read_meta()
    assert not list((tmp_path).rglob("*.pkl"))
    np.testing.assert_array_equal(back.users.values, meta.users.values)
    np.testing.assert_array_equal(back.items.values, meta.items.values)
    assert back.item_names(np.arange(5)) == meta.item_names(np.arange(5))
    pd.testing.assert_frame_equal(back.item_table, meta.item_table)


def _hold_lock(folder, ready, stop):
    from research import locking

    locking.acquire(folder)
    ready.set()
    stop.wait(30)


def test_a_second_process_cannot_open_a_live_run_folder(tmp_path):
    """RunFolder.open takes research.locking's lock: while another process holds a run folder,
    opening it raises Locked (exit 2 at the CLI) naming that pid; once it ends, it opens."""
    import multiprocessing as mp

    from research import locking
    from research import results as R

    folder = tmp_path / "runs" / "x" / "abc-seed0"
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(folder, ready, stop))
    p.start()
    try:
        assert ready.wait(60)
        with pytest.raises(locking.Locked, match=str(p.pid)):
            R.RunFolder(folder, tmp_path).open()
    finally:
        stop.set()
        p.join(30)
    rf = R.RunFolder(folder, tmp_path)
    assert rf.open() == {} and folder.is_dir()
    rf.metrics = {"models": {}}
    rf.finish("")
    assert folder not in locking.held()


def test_keep_finished_skips_a_finished_seed_and_reruns_by_default(tmp_path):
    from research.experiment import run

    cfg = _cfg(tmp_path)
    first = run(cfg, quiet=True)[0]
    stamp = (first / "status.json").read_text()
    assert run(cfg, quiet=True, keep_finished=True) == [first]
    assert (first / "status.json").read_text() == stamp  # not refitted
    assert run(cfg, quiet=True)[0] == first
    assert (first / "status.json").read_text() != stamp  # run again by default


def test_a_run_killed_in_its_first_model_keeps_its_checkpoints(tmp_path):
    """status "running" and no metrics.json yet (killed while fitting the first model, e.g. a
    config whose only model is a Keras one): reopening resumes — the checkpoints stay — while a
    finished folder is replaced."""
    from research.results import RunFolder, write_json

    d = tmp_path / "run"
    (d / "logs" / "ckpt" / "m").mkdir(parents=True)
    (d / "logs" / "ckpt" / "m" / "history.json").write_text("{}")
    write_json(d / "status.json", {"status": "running"})
    assert RunFolder(d, tmp_path).open(resume=True) == {}
    assert (d / "logs" / "ckpt" / "m" / "history.json").is_file()
    write_json(d / "status.json", {"status": "finished"})
    assert RunFolder(d, tmp_path).open(resume=True) == {}
    assert not (d / "logs").exists()
