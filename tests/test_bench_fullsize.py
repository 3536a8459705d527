"""``animerec bench fullsize_models --quick``: the synthetic rating_complete-shaped set (1M rows),
prepared once, each classical model and the two peers fitted in a subprocess, JSON and SUMMARY.md;
the refusals with their estimates. Nothing here asserts on how fast anything is."""
import json

import numpy as np
import pytest

from research import bench, cli
from research.bench import fullsize_models as FM
from research.data.interactions import Interactions, Meta, Vocab

pytestmark = pytest.mark.slow


def test_quick_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMEREC_BENCH_DIR", str(tmp_path))
    assert "fullsize_models" in bench.BENCHMARKS and "fullsize_models" not in bench.DEFAULT
    assert cli.main(["bench", "fullsize_models", "--quick"]) == 0
    res = json.loads((tmp_path / "quick" / "fullsize_models.json").read_text())
    assert res["benchmark"] == "fullsize_models" and res["quick"] is True
    assert res["status"] == "ok", res.get("notes")
    runs = {r["model"]: r for r in res["runs"]}
    assert list(runs) == [p[0] for p in FM.PLAN]
    for name, r in runs.items():
        assert r["status"] in ("ok", "refused"), r
        assert r["data"]["rows"] >= 0.9 * FM.QUICK_ROWS and r["data"]["items"] == FM.QUICK_ITEMS
        if r["status"] == "refused":
            assert r["reason"] and r["estimate"]
            continue
        fit = r["fit"]
        assert fit["seconds"] > 0 and fit["cpu_seconds"] >= 0 and fit["examples_per_s"] > 0
        assert r["peak_rss_mb"] >= r["data"]["input_rss_mb"] > 0
        assert set(r["ratio"]) == set(FM.PEERS)  # both peers ran at the quick size
    assert runs["implicit_als"]["ratio"]["implicit_als"]["wall"] == pytest.approx(1.0)
    summary = (tmp_path / "quick" / "SUMMARY.md").read_text()
    assert "## fullsize_models" in summary
    assert all(f"| {p[0]} |" in summary for p in FM.PLAN)


def _data(n_users=40, n_items=30, per_user=8, seed=0):
    r = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([np.sort(r.choice(n_items, per_user, replace=False)) for _ in range(n_users)])
    meta = Meta(Vocab(np.arange(n_users)), Vocab(np.arange(n_items)))
    return Interactions(users, items, r.integers(1, 11, len(users)).astype(np.float32), meta)


def test_estimates_refuse_with_their_numbers(monkeypatch):
    data = _data()
    for name in ("popularity", "item_knn", "ease", "user_knn", "surprise_svd", "implicit_als"):
        assert "refuse" not in FM.estimate(name, data, {})
    monkeypatch.setattr(FM, "MAX_SECONDS", 0.0)
    monkeypatch.setattr(FM, "MEMORY_SHARE", 0.0)
    knn = FM.estimate("user_knn", data, {})
    assert "all pairs of 40 users" in knn["refuse"] and knn["products"] > 0 and knn["seconds_estimated"] > 0
    svd = FM.estimate("surprise_svd", data, {})
    assert "Trainset for 320 ratings" in svd["refuse"] and svd["bytes_estimated"] == 320 * FM.SURPRISE_BYTES_PER_RATING
    ease = FM.estimate("ease", data, {})
    assert "30 active anime" in ease["refuse"] and ease["bytes_estimated"] > 30 * 30 * 4
    assert "refuse" not in FM.estimate("popularity", data, {})


def test_markdown_names_refused_and_failed_models():
    res = {"rows_requested": 10, "csv_mb": 0.1, "notes": ["a note"], "runs": [
        {"model": "user_knn", "kind": "ours", "status": "refused", "reason": "all pairs: too long",
         "data": {"rows": 10, "rated_rows": 10, "users": 2, "items": 3}},
        {"model": "surprise_svd", "kind": "peer", "status": "failed", "reason": "boom"}]}
    md = FM.markdown(res)
    assert "refused: all pairs: too long" in md and "failed: boom" in md
