"""``animerec bench``: the cheap benchmarks end to end in quick mode (valid JSON, expected keys,
machine info), the peers summary arithmetic on hand-made numbers, and the subprocess peak-memory
measurement. Benchmarks print numbers; nothing here asserts on timings."""
import json
import textwrap

import numpy as np
import pytest

from research import cli
from research.bench import BENCHMARKS, main, report
from research.bench.peers import summarize
from research.config import REPO_ROOT, ModelSpec
from research.errors import ConfigError


@pytest.fixture
def bench_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMEREC_BENCH_DIR", str(tmp_path))
    return tmp_path


def _check_machine(res):
    m = res["machine"]
    assert m["cpu_count"] >= 1 and m["memory_bytes"] > 0
    assert "numpy" in m["packages"] and m["python"]
    assert res["wall_seconds"] >= 0


def test_neighbors_quick_cli(bench_dir):
    assert cli.main(["bench", "neighbors", "--quick"]) == 0
    res = json.loads((bench_dir / "quick" / "neighbors.json").read_text())
    assert res["benchmark"] == "neighbors" and res["quick"] is True and res["status"] == "ok"
    _check_machine(res)
    d = res["data"]
    knn = res["itemknn"]
    assert knn["nnz_in"] == d["nnz"] > 0
    # every item has at most k neighbours
    assert 0 < knn["neighbours_stored"] <= d["items"] * res["k"]
    assert knn["peak_rss_mb"] >= knn["rss_after_imports_mb"] > 0
    nv = res["naive_on_subset"]
    assert nv["items"] == res["subset"]["items"]
    assert nv["neighbours_found"] == nv["items"] * min(res["k"], nv["items"] - 1)
    assert res["ratio_naive_over_itemknn_on_subset"] > 0
    # long-tailed like MAL: the most popular 1% of items hold far more than 1% of ratings
    assert d["top_1pct_items_share"] > 0.05
    summary = (bench_dir / "quick" / "SUMMARY.md").read_text()
    assert "## neighbors" in summary and "ItemKNN" in summary


def test_peers_quick_on_tiny_synthetic(bench_dir, tmp_path, monkeypatch):
    pytest.importorskip("surprise")
    pytest.importorskip("implicit")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(textwrap.dedent(f"""
        base = "{(REPO_ROOT / 'experiments' / 'configs' / 'base.toml').as_posix()}"
        experiment = "bench_peers_tiny"
        seeds = [0, 1]
        [data]
        source = "synth"
        [synth]
        users = 120
        items = 150
        ratings_per_user = 25
        [models.misconfigured]
        type = "bias"
        user_dampng = 3
        [models.surprise_svd]
        n_factors = 8
        n_epochs = 5
        [models.implicit_als]
        factors = 8
        iterations = 3
    """))
    monkeypatch.setenv("ANIMEREC_BENCH_PEERS_CONFIG", str(cfg))
    paths = main("peers", quick=True)
    assert paths[0] == bench_dir / "quick" / "peers.json" and paths[-1].name == "SUMMARY.md"
    res = json.loads(paths[0].read_text())
    _check_machine(res)
    assert res["seeds"] == [0, 1]
    models = res["models"]
    assert {"bias", "popularity", "global_mean", "surprise_svd", "implicit_als"} <= set(models)
    assert models["surprise_svd"]["kind"] == "peer" and models["bias"]["kind"] == "project"
    assert res["reference"] == {"best_rmse_peer": "surprise_svd", "ndcg_peer": "implicit_als"}
    for s in ("0", "1"):
        bias, svd = models["bias"]["per_seed"][s], models["surprise_svd"]["per_seed"][s]
        assert models["bias"]["rmse_ratio_vs_best_peer"]["per_seed"][s] == pytest.approx(bias["rmse"] / svd["rmse"])
    assert "rmse" not in models["implicit_als"]["mean"] and "rmse" not in models["popularity"]["mean"]
    assert set(res["goals"]) == {"rmse", "ndcg@10"}
    # a model that cannot be built is left out with its reason; the others are still measured
    assert "misconfigured" not in models
    assert "user_dampng" in res["skipped_models"]["misconfigured"]
    assert "did you mean 'user_damping'" in res["skipped_models"]["misconfigured"]


def test_summarize_ratios_and_goals_by_hand():
    specs = {n: ModelSpec(n, t, {}, {}) for n, t in [("svd", "surprise_svd"), ("knn", "surprise_knnbaseline"),
                                                      ("als", "implicit_als"), ("ours", "embedding_dot")]}
    per_seed = {
        "svd": {"0": {"rmse": 1.30, "ndcg@10": 0.10}, "1": {"rmse": 1.28, "ndcg@10": 0.12}},
        "knn": {"0": {"rmse": 1.25, "ndcg@10": 0.05}, "1": {"rmse": 1.27, "ndcg@10": 0.06}},
        "als": {"0": {"ndcg@10": 0.30}, "1": {"ndcg@10": 0.40}},
        "ours": {"0": {"rmse": 1.20, "ndcg@10": 0.36}, "1": {"rmse": 1.24, "ndcg@10": 0.44}},
    }
    out = summarize(per_seed, specs)
    assert out["reference"] == {"best_rmse_peer": "knn", "ndcg_peer": "als"}  # knn: lower mean rmse
    r = out["models"]["ours"]["rmse_ratio_vs_best_peer"]
    np.testing.assert_allclose([r["per_seed"]["0"], r["per_seed"]["1"]], [1.20 / 1.25, 1.24 / 1.27])
    np.testing.assert_allclose(r["mean"], np.mean([1.20 / 1.25, 1.24 / 1.27]))
    np.testing.assert_allclose(r["std"], np.std([1.20 / 1.25, 1.24 / 1.27], ddof=1))
    n = out["models"]["ours"]["ndcg@10_ratio_vs_implicit_als"]
    np.testing.assert_allclose([n["per_seed"]["0"], n["per_seed"]["1"]], [1.2, 1.1])
    assert out["goals"]["rmse"]["met"] is True and out["goals"]["rmse"]["best_project_model"] == "ours"
    assert out["goals"]["ndcg@10"]["met"] is True  # mean 1.15 >= 1.10
    per_seed["ours"]["1"]["ndcg@10"] = 0.40  # ratios 1.2, 1.0 -> mean 1.1: still met (>=)
    assert summarize(per_seed, specs)["goals"]["ndcg@10"]["ratio"] == pytest.approx(1.1)
    per_seed["ours"]["1"]["ndcg@10"] = 0.39
    assert summarize(per_seed, specs)["goals"]["ndcg@10"]["met"] is False


def test_unknown_benchmark_is_a_config_error():
    with pytest.raises(ConfigError, match="did you mean 'neighbors'"):
        main("neighbours", quick=True)
    assert set(BENCHMARKS) == {"peers", "time_to_accuracy", "throughput", "neighbors", "fullsize", "serving",
                               "autoencoders", "rating_models", "fullsize_models", "distributed", "two_tower_speed",
                               "verify"}


def test_peak_rss_is_measured_in_a_subprocess():
    """ru_maxrss of a fresh process sees numpy's C allocations (tracemalloc would not)."""
    small = report.in_subprocess("research.bench.report:_allocate", mb=1)
    big = report.in_subprocess("research.bench.report:_allocate", mb=200)
    assert big["result"]["sum"] == 200 * 2**20 // 8
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 150


def test_summary_renders_failed_and_broken(tmp_path):
    report.write_result("serving", {"status": "failed", "cases": [],
                                    "notes": ["sample failed: boom"], "machine": report.machine(),
                                    "wall_seconds": 0.0}, quick=False, out_dir=tmp_path)
    report.write_result("peers", {"status": "ok", "machine": {}, "wall_seconds": 1.0}, quick=False,
                        out_dir=tmp_path)
    from research.bench import renderers

    assert set(renderers()) == set(BENCHMARKS)  # every benchmark module imports and renders
    out = report.write_summary(tmp_path, renderers()).read_text()
    assert "## serving" in out and "Status: **failed**" in out and "sample failed: boom" in out
    assert "## peers" in out and "(summary failed" in out  # a malformed result still gets a section


def test_a_broken_dependency_is_a_failure_not_a_skip(monkeypatch):
    """Every measurement failing (a broken export.py, say) is status "failed" with the reasons."""
    from research.bench import serving

    def broken(target, **kw):
        raise RuntimeError(f"{target} failed in a subprocess (exit 1):\nImportError: boom")

    monkeypatch.setattr(serving, "in_subprocess", broken)
    res = serving.run(quick=True)
    assert res["status"] == "failed" and res["cases"] == []
    assert any("ImportError: boom" in n for n in res["notes"])


def test_time_to_accuracy_reads_the_10m_searches(tmp_path, monkeypatch):
    """The tuned time-to-accuracy case takes each finished 10M search's chosen hyperparameters, says
    which search has not finished yet, and the table names what was chosen."""
    import research.tuning as tuning
    from research import config as C
    from research.bench import peers

    dirs = {"tune_embedding_dot_synth10m": tmp_path / "emb", "tune_surprise_svd_synth10m": tmp_path / "svd"}
    monkeypatch.setattr(tuning, "tuning_dir", lambda cfg, seed: dirs[cfg.experiment])
    params, missing = peers.searched_at_size()
    assert params is None and len(missing) == 2 and "not searched at this size yet" in missing[0]

    dirs["tune_embedding_dot_synth10m"].mkdir()
    (dirs["tune_embedding_dot_synth10m"] / "tuning.json").write_text(json.dumps(
        {"status": "finished",
         "best": {"hyperparameters": {"dim": 40, "learning_rate": 0.02, "batch_size": 262144}}}))
    params, missing = peers.searched_at_size()
    assert params is None and len(missing) == 1 and "surprise_svd" in missing[0]
    dirs["tune_surprise_svd_synth10m"].mkdir()
    (dirs["tune_surprise_svd_synth10m"] / "tuning.json").write_text(json.dumps(
        {"status": "running", "best": {"hyperparameters": {"n_factors": 50, "reg_all": 0.05}}}))
    assert peers.searched_at_size()[0] is None  # an unfinished search is not taken
    (dirs["tune_surprise_svd_synth10m"] / "tuning.json").write_text(json.dumps(
        {"status": "finished", "best": {"hyperparameters": {"n_factors": 50, "reg_all": 0.05}}}))
    params, missing = peers.searched_at_size()
    assert not missing
    assert params == {"embedding_dot": {"dim": 40, "learning_rate": 0.02, "batch_size": 262144},
                      "surprise_svd": {"n_factors": 50, "reg_all": 0.05}}

    # the two searches share the benchmark's 10M data and split
    a, b = (C.load(p) for p in peers.TTA_SEARCHES.values())
    assert a.data == b.data and a.synth == b.synth and a.split == b.split and a.synth.users == 55_000

    case = {"data": "synthetic, both searched at this size", "train_rows": 10, "searched": params,
            "svd": {"test_rmse": 0.9, "fit_seconds": 2.0, "fit_cpu_seconds": 2.0},
            "embedding_dot": {"reached": None, "curve": [{}], "best_test_rmse": 0.95}}
    md = peers.markdown_time_to_accuracy({"cases": [case]})
    assert "embedding_dot batch_size=262144, dim=40, learning_rate=0.02" in md and "n_factors=50" in md
