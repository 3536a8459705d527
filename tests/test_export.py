"""SavedModel top-k export: reloaded in a fresh process, it returns the in-memory model's top-k."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import research  # noqa: F401

pytestmark = pytest.mark.keras


def _fitted():
    import sys as _sys
    from pathlib import Path

    _sys.path.insert(0, str(Path(__file__).parent))
    from test_keras_embedding_dot import FAST, _data

    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data()
    return ds, split, EmbeddingDot(**FAST, seed=1).fit(split.train, split.val)


@pytest.fixture(scope="module")
def fitted():
    return _fitted()


def _in_memory_topk(ds, split, m, users, k):
    cand = np.zeros(ds.meta.n_items, dtype=bool)
    cand[np.unique(split.train.item[split.train.rated])] = True
    items, scores = m.recommend(users, k=k, candidates=cand)
    return ds.meta.items.ids(items), scores


@pytest.mark.parametrize("index", ["brute_force", "faiss"])
def test_export_round_trip_in_fresh_process(fitted, tmp_path, index):
    from research.models.keras.export import export_recommender

    ds, split, m = fitted
    users = np.arange(ds.meta.n_users)
    want_ids, want_scores = _in_memory_topk(ds, split, m, users, k=5)
    export_recommender(m, tmp_path / "sm", k=5, index=index)
    user_ids = ds.meta.users.ids(users).tolist() + [999_999]  # the last one is unknown
    code = textwrap.dedent(f"""
        import json, sys, numpy as np
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parent.parent)!r})
        import research
        from research.models.keras.export import load_topk
        rec = load_topk({str(tmp_path / 'sm')!r})
        ids, scores = rec(np.array({user_ids!r}, dtype=np.int64))
        print(json.dumps({{"ids": ids.tolist(), "scores": scores.tolist()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ids, scores = np.array(got["ids"]), np.array(got["scores"])
    assert ids.shape == (len(user_ids), 5)
    assert np.array_equal(ids[:-1], want_ids)
    # exported scores drop the per-user constant (mu + b_u): differences between ranks must agree
    np.testing.assert_allclose(np.diff(scores[:-1], axis=1), np.diff(want_scores, axis=1), atol=1e-4)
    # unknown user: zero query vector, i.e. the item-bias ranking over the candidates
    cand = np.flatnonzero(m.fit_state["trained_items"])
    top_bias = cand[np.argsort(-m.item_bias()[cand], kind="stable")[:5]]
    assert ids[-1].tolist() == ds.meta.items.ids(top_bias).tolist()


def test_export_query_model(tmp_path, fitted):
    """The generic path (a two-tower user tower): a Keras query model instead of a user table."""
    import tensorflow as tf

    from research.models.keras.export import export_topk, load_topk

    ds, split, m = fitted
    tower = tf.keras.Sequential([tf.keras.layers.Embedding(
        ds.meta.n_users, m.user_vectors().shape[1], weights=[m.user_vectors()])])
    tower(tf.constant([0]))
    cand = np.flatnonzero(m.fit_state["trained_items"])
    export_topk(tmp_path / "q", m.item_vectors()[cand], ds.meta.items.ids(cand), k=3,
                query_model=tower, query_signature=[tf.TensorSpec([None], tf.int32)])
    ids, scores = load_topk(tmp_path / "q")(np.array([0, 1, 2], np.int32))
    ref = m.user_vectors()[:3] @ m.item_vectors()[cand].T
    want = cand[np.argsort(-ref, axis=1, kind="stable")[:, :3]]
    assert np.array_equal(ids, ds.meta.items.ids(want))


def test_export_rejects_bad_arguments(tmp_path):
    from research.models.keras.export import export_topk

    v = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        export_topk(tmp_path, v, np.arange(3))
    with pytest.raises(ValueError, match="index"):
        export_topk(tmp_path, v, np.arange(3), user_vectors=v, user_ids=np.arange(3), index="scann")
