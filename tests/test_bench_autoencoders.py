"""``animerec bench autoencoders --quick``: ease and multvae on the quick synthetic matrix, end to end
(subprocesses, JSON, SUMMARY.md), with the keys the Markdown reads. Nothing here asserts on how
fast anything is."""
import json
import math

import pytest

import research  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from research import bench, cli
from research.bench import autoencoders as A

pytestmark = pytest.mark.keras

LOADS = ("load_average_1min", "load_average_1min_end")


def _positive(d, *keys):
    for k in keys:
        assert isinstance(d[k], (int, float)) and math.isfinite(d[k]) and d[k] > 0, k


def test_quick_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMEREC_BENCH_DIR", str(tmp_path))
    assert "autoencoders" in bench.BENCHMARKS and "autoencoders" not in bench.DEFAULT
    assert cli.main(["bench", "autoencoders", "--quick"]) == 0
    res = json.loads((tmp_path / "quick" / "autoencoders.json").read_text())
    assert res["benchmark"] == "autoencoders" and res["quick"] is True and res["status"] == "ok"
    assert res["machine"]["cpu_count"] >= 1
    runs = {(r["model"], r.get("variant")): r for r in res["runs"]}
    assert set(runs) == {("ease", None), ("multvae", "default"), ("multvae", "fast_path")}
    assert {r["dataset"] for r in res["runs"]} == {"synthetic"}
    fast = runs["multvae", "fast_path"]["params"]
    assert all(fast[k] == v for k, v in A.FAST_PATH.items())
    assert not runs["multvae", "default"]["params"]["sparse_input"]
    for r in runs.values():
        d = r["data"]
        assert (d["users"], d["items"]) == (5_000, 1_000) and d["train_rows"] > 0
        _positive(r, "peak_rss_mb", "input_rss_mb")
        sc = r["score"]
        assert sc["users"] == sc["of_users"] == 5_000 and sc["batch"] == A.SCORE_BATCH
        _positive(sc, "seconds", "users_per_s", "peak_rss_mb")
        assert all(sc[k] >= 0 for k in LOADS) and all(r["fit"][k] >= 0 for k in LOADS)
    ease = runs["ease", None]["fit"]
    _positive(ease, "seconds", "cpu_seconds", "peak_rss_mb")
    assert 0 < ease["active_items"] <= 1_000
    for variant in ("default", "fast_path"):
        _check_multvae_fit(runs["multvae", variant]["fit"])
    summary = (tmp_path / "quick" / "SUMMARY.md").read_text()
    assert "## autoencoders" in summary and "summary failed" not in summary
    assert not any("different configurations" in n for n in res["notes"])
    body = A.markdown(res)
    assert body.count("| synthetic |") == 6 and "*extrapolated*" in body and "2-core" in body
    assert body.count("fast path") >= 3


def _check_multvae_fit(mv):
    assert mv["mode"] == "steps" and mv["epoch_seconds_extrapolated"] is True
    assert mv["warmup_steps"] == A.WARMUP_STEPS_QUICK and mv["timed_steps"] == A.TIMED_STEPS_QUICK
    assert mv["steps_run"] == A.WARMUP_STEPS_QUICK + A.TIMED_STEPS_QUICK  # the callback stopped it
    assert mv["timed_users"] == A.TIMED_STEPS_QUICK * mv["batch_size"]
    _positive(mv, "timed_seconds", "users_per_s", "seconds_per_step", "epoch_seconds", "peak_rss_mb")
    assert mv["users_per_s"] == pytest.approx(mv["timed_users"] / mv["timed_seconds"])


def test_markdown_of_full_epochs_rows():
    """The real-set rows (full epochs, the first untimed) render without the synthetic's keys."""
    fit = {"mode": "epochs", "epochs_run": 3, "timed_steps": 16, "timed_users": 920, "epoch_seconds": 0.5,
           "first_epoch_train_seconds": 4.0, "timed_seconds": 1.0, "timed_cpu_seconds": 1.5,
           "users_per_s": 920.0, "peak_rss_mb": 700.0, "load_average_1min": 2.0, "load_average_1min_end": 2.5}
    score = {"users": 575, "of_users": 575, "seconds": 0.1, "cpu_seconds": 0.1, "users_per_s": 5750.0,
             "load_average_1min": 2.5, "load_average_1min_end": 2.5}
    run = {"dataset": "mal2020_sample", "model": "multvae", "params": {"modelled_items": 6539},
           "data": {"users": 575, "items": 17562, "train_rows": 72000}, "fit": fit, "score": score,
           "peak_rss_mb": 710.0}
    body = A.markdown({"status": "ok", "runs": [run]})
    assert "epochs 2-3" in body and "2.0 → 2.5" in body and "all 575 of 575 users" in body
