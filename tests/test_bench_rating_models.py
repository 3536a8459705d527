"""``animerec bench rating_models --quick``: embedding_dot, svdpp, autorec and blend on a small
synthetic world, end to end (subprocesses, JSON, SUMMARY.md), with the keys the Markdown reads.
Nothing here asserts on how fast anything is."""
import json
import math

import pytest

import research  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from research import bench, cli
from research.bench import rating_models as RM

pytestmark = [pytest.mark.keras, pytest.mark.slow]


def test_quick_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMEREC_BENCH_DIR", str(tmp_path))
    assert "rating_models" in bench.BENCHMARKS and "rating_models" not in bench.DEFAULT
    assert cli.main(["bench", "rating_models", "--quick"]) == 0
    res = json.loads((tmp_path / "quick" / "rating_models.json").read_text())
    assert res["benchmark"] == "rating_models" and res["status"] == "ok", res.get("notes")
    runs = {r["model"]: r for r in res["runs"]}
    assert set(runs) == set(RM.MODELS)
    for name, r in runs.items():
        assert r["data"]["train_rows"] > 0 and r["peak_rss_mb"] > 0
        assert r["fit"]["seconds"] > 0 and r["train_rows_per_s"] > 0
        assert r["predict"]["rows"] > 0 and math.isfinite(r["predict"]["rmse"])
        assert (r["fit"]["epochs"] is None) == (name == "blend")  # the Keras models report epochs
    summary = (tmp_path / "quick" / "SUMMARY.md").read_text()
    assert all(f"| {m} |" in summary for m in RM.MODELS)
