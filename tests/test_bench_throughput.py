"""``research.bench.throughput``: each model's throughput function on a tiny synthetic set (keys,
positive finite rates, the model / pipeline ratio, the settings recorded), the epochs guard, the
synthetic catalogue the side-feature models read, and ``run_throughput``'s per-function batch sizes.
Nothing here asserts on how fast anything is."""
import math

import numpy as np
import pytest

import research  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from research import bench
from research.bench import throughput
from research.data.interactions import Meta, Vocab
from research.models.keras.features import build_item_features

pytestmark = pytest.mark.keras

TINY = dict(n_ratings=20_000, epochs=2, seed=0, n_users=2_000, n_items=500)
RATES = ("pipeline_examples_per_s", "pipeline_examples_per_cpu_s", "train_examples_per_s", "train_examples_per_cpu_s")
KEYS = {"model", "n_ratings", "batch_size", "epochs", "n_users", "n_items", "item_features", "cpu_threads",
        "load_average_1min", "load_average_1min_end", *RATES, "model_over_pipeline_time", "epoch_seconds",
        "epoch_cpu_seconds", "final_train_loss"}


def _check(out, model, batch_size):
    assert KEYS <= set(out)
    assert out["model"] == model and out["batch_size"] == batch_size
    assert (out["n_ratings"], out["epochs"], out["n_users"], out["n_items"]) == (20_000, 2, 2_000, 500)
    for k in RATES:
        assert math.isfinite(out[k]) and out[k] > 0, k
    # the ratio is pipeline rate / train rate (both rounded in the output, the ratio is not)
    assert out["model_over_pipeline_time"] == pytest.approx(
        out["pipeline_examples_per_s"] / out["train_examples_per_s"], rel=1e-2)
    assert len(out["epoch_seconds"]) == len(out["epoch_cpu_seconds"]) == 2
    assert all(t > 0 for t in out["epoch_seconds"])
    assert math.isfinite(out["final_train_loss"])
    assert out["load_average_1min"] >= 0 and out["load_average_1min_end"] >= 0


def test_embedding_dot_throughput():
    out = throughput.embedding_dot_throughput(batch_size=4_096, optimizer="lazy_adam", **TINY)
    _check(out, "EmbeddingDot", 4_096)
    assert out["optimizer"] == "lazy_adam" and out["item_features"] == "none"
    assert 0 < out["final_train_rmse"] < 10


def test_two_tower_throughput():
    out = throughput.two_tower_throughput(batch_size=512, **TINY)
    _check(out, "TwoTower", 512)
    assert out["side_features"] == ["genres", "studios", "type", "source", "episodes", "synopsis"]
    assert out["use_history"] is True and out["item_features"] == throughput.CATALOGUE_NOTE
    assert "final_train_rmse" not in out  # a retrieval model has no rating error


def test_dnn_throughput():
    out = throughput.dnn_throughput(batch_size=4_096, **TINY)
    _check(out, "DNN", 4_096)
    assert out["side_features"] == ["genres", "studios", "type", "source", "episodes"]
    assert out["layers"] == [64, 32] and out["item_features"] == throughput.CATALOGUE_NOTE
    assert 0 < out["final_train_rmse"] < 10


def test_dnn_without_side_features_has_no_catalogue():
    out = throughput.dnn_throughput(batch_size=4_096, side_features=(), **{**TINY, "n_ratings": 5_000})
    assert out["side_features"] == [] and out["item_features"] == "none"


@pytest.mark.parametrize("fn", ["embedding_dot_throughput", "two_tower_throughput", "dnn_throughput"])
def test_fewer_than_two_epochs_raise(fn):
    with pytest.raises(ValueError, match="epochs must be >= 2"):
        getattr(throughput, fn)(n_ratings=1_000, epochs=1, n_users=50, n_items=20)


def test_synthetic_catalogue_gives_every_side_feature():
    table = throughput.synthetic_catalogue(300, seed=1)
    assert len(table) == 300
    assert table.equals(throughput.synthetic_catalogue(300, seed=1))
    assert not table.equals(throughput.synthetic_catalogue(300, seed=2))
    f = build_item_features(Meta(Vocab(np.arange(3)), Vocab(np.arange(300)), item_table=table))
    for name in ("genres", "studios", "type", "source", "synopsis"):
        assert f.vocab_size(name) > 2, name
    assert (f.genres > 0).any(1).all() and (f.studios > 0).any(1).all()
    assert (f.synopsis > 0).sum(1).min() >= 5  # each synopsis keeps several TF-IDF terms
    unknown = f.numeric[:, 1]
    assert 0 < unknown.mean() < 0.5  # some episodes unknown, most known
    data = throughput.synthetic_ratings(1_000, 40, 300, seed=0, catalogue=True)
    assert data.meta.item_table is not None and len(data) == 1_000
    assert data.user.max() < 40 and data.item.max() < 300 and data.rating.min() >= 1 and data.rating.max() <= 10


def test_run_throughput_passes_per_function_batch_sizes(monkeypatch):
    from research.bench import report

    calls = []

    def fake(target, **kw):
        calls.append((target.split(":")[1], kw))
        return {"result": {"model": target, "n_ratings": kw["n_ratings"], "batch_size": kw["batch_size"],
                           "train_examples_per_s": 1, "pipeline_examples_per_s": 2,
                           "model_over_pipeline_time": 2.0}, "peak_rss_mb": 1.0, "process_seconds": 1.0}

    monkeypatch.setattr(report, "in_subprocess", fake)
    res = bench.run_throughput(quick=False)
    assert res["batch_sizes"] == {"embedding_dot_throughput": [65_536, 262_144], "dnn_throughput": [65_536]}
    by_fn = {}
    for fn, kw in calls:
        by_fn.setdefault(fn, []).append(kw)
        assert kw["batch_size"] in res["batch_sizes"][fn] and kw["epochs"] == res["epochs"][fn] >= 2
    assert sorted(k["n_ratings"] for k in by_fn["dnn_throughput"]) == [1_000_000, 10_000_000]
    variants = sorted((k["batch_size"], k["optimizer"]) for k in by_fn["embedding_dot_throughput"])
    assert variants == [(65_536, "adam")] * 2 + [(65_536, "lazy_adam")] * 2 + [(262_144, "adam")] * 2
    assert "two_tower_throughput" not in by_fn and len(res["runs"]) == 8 and not res["notes"]
    md = bench.markdown_throughput(res)
    assert "model / pipeline time" in md and md.count("\n| ") >= 9
