"""``animerec verify``: a run trained on a synthetic world, verified on the world's later snapshot
(new users, new anime, drifted tastes): the manifest balances, models that cannot fold in are
listed not zeroed, the same seed gives the same numbers, and the planted taste makes fold-in beat
popularity."""
from __future__ import annotations

import json

import numpy as np
import pytest

from research import config as C
from research import experiment
from research.data import synth
from research.errors import ConfigError
from research.verify import DROP_REASONS, fold_in_parts, verify


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify")
    raw, later = tmp / "raw", tmp / "later"
    synth.generate(raw, users=300, items=250, ratings_per_user=40, seed=3, later=later)
    cfg_file = tmp / "c.toml"
    cfg_file.write_text(
        f'experiment = "verify_test"\nresults_dir = "{tmp / "results"}"\nseeds = [0]\n'
        f'[data]\nsource = "mal2020"\npath = "{raw}"\nratings = "animelist.csv"\nunrated = "keep"\n'
        "fallback_to_synth = false\n"
        "[models.popularity]\n[models.item_knn]\n[models.ease]\n[models.implicit_bpr]\nfactors = 8\n")
    run_dir = experiment.run(C.load(cfg_file), quiet=True)[0]
    return run_dir, later


def test_verify_on_the_later_snapshot(world):
    run_dir, later = world
    rep = verify(run_dir, later, file="animelist.csv", seed=0, quiet=True)
    stage = rep["manifest"]["verify"]
    assert set(stage["dropped"]) == set(DROP_REASONS)
    assert stage["rows_in"] == stage["history"] + stage["targets"] + sum(stage["dropped"].values())
    # the later catalogue has anime the run never saw: counted, not silently lost
    assert stage["dropped"]["anime_not_in_run_catalogue"] > 0
    assert set(rep["models"]) == {"popularity", "item_knn", "ease"}
    assert "implicit_bpr" in rep["skipped"] and "fold in" in rep["skipped"]["implicit_bpr"]
    ndcg = {m: rep["models"][m]["ndcg@10"] for m in rep["models"]}
    # the planted taste carries over a "year": the best fold-in model beats popularity (measured
    # on this world: ease 0.438, popularity 0.344, item_knn at its defaults 0.302)
    assert max(ndcg.values()) > ndcg["popularity"] and ndcg["ease"] > ndcg["popularity"]
    # novelty's popularity shares are the run's (users of the run, not of the later file)
    assert all(s["novelty@10"] > 0 for s in rep["models"].values())
    on_disk = json.loads((run_dir / "verify.json").read_text())
    assert on_disk["models"] == json.loads(json.dumps(rep["models"]))


def test_report_writes_the_verification_table_from_verify_json(world):
    """``animerec report`` renders verify.json (no pasted numbers): every measured model's ndcg as
    verify gave it, the skipped model with its reason, the row balance."""
    from research import report

    run_dir, later = world
    rep = verify(run_dir, later, file="animelist.csv", seed=0, quiet=True)
    results = run_dir.parents[2]
    written = report.build("verify_test", results_dir=results, figures=False)
    md = results / "tables" / "verify_test_verify.md"
    assert md in written
    text = md.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    for name, m in rep["models"].items():
        assert f"{m['ndcg@10']:.4f}" in rows[name]
    assert "implicit_bpr:" in text and f"{rep['manifest']['verify']['rows_in']:,} read" in text
    (run_dir / "verify.json").unlink()
    assert md not in report.build("verify_test", results_dir=results, figures=False)
    verify(run_dir, later, file="animelist.csv", seed=0, quiet=True)  # the other tests read it


def test_verify_is_deterministic_per_seed(world):
    run_dir, later = world
    a = verify(run_dir, later, file="animelist.csv", seed=1, quiet=True, models=["item_knn"])
    b = verify(run_dir, later, file="animelist.csv", seed=1, quiet=True, models=["item_knn"])
    c = verify(run_dir, later, file="animelist.csv", seed=2, quiet=True, models=["item_knn"])
    def numbers(rep):  # the metrics, without the wall-clock seconds
        return {m: {k: v for k, v in s.items() if not k.endswith("seconds")} for m, s in rep["models"].items()}

    assert numbers(a) == numbers(b) and a["manifest"] == b["manifest"]
    assert numbers(a) != numbers(c)


def test_verify_min_rows_counts_users_left_out(world):
    run_dir, later = world
    rep = verify(run_dir, later, file="animelist.csv", seed=0, min_rows=30, quiet=True, models=["popularity"])
    stage = rep["manifest"]["verify"]
    assert stage["users_below_min_rows"] > 0 and stage["dropped"]["user_below_min_rows"] > 0
    with pytest.raises(ConfigError, match="min-rows"):
        verify(run_dir, later, min_rows=1, quiet=True)
    with pytest.raises(ConfigError, match="no model"):
        verify(run_dir, later, file="animelist.csv", models=["nope"], quiet=True)


def test_fold_in_parts_rule():
    user = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    h = fold_in_parts(user, 0.8, seed=0)
    assert h[user == 0].sum() == 4 and h[user == 1].sum() == 1 and h[user == 2].sum() == 1
    assert np.array_equal(h, fold_in_parts(user, 0.8, seed=0))
    with pytest.raises(ConfigError):
        fold_in_parts(user, 1.0, seed=0)


def test_verify_command_line(world):
    """The CLI: a table on stdout, verify.json written; a bad --raw is one line and exit 2."""
    import subprocess
    import sys

    run_dir, later = world
    cmd = [sys.executable, "-m", "research", "verify", "--run", str(run_dir), "--raw", str(later),
           "--file", "animelist.csv", "--model", "popularity", "--model", "ease"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "| ease |" in p.stdout and "| popularity |" in p.stdout and "verify.json" in p.stdout
    p = subprocess.run(cmd[:7] + [str(later / "nope")] + cmd[8:], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
