"""Metrics against naive per-user loops and hand-computed cases (perfect, empty, no hit)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from research.eval import metrics as M


def _naive(ranked, relevant, k):
    """Textbook definitions, one user at a time."""
    top = ranked[:k]
    hits = [1.0 if i in relevant else 0.0 for i in top]
    dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
    idcg = sum(1 / math.log2(j + 2) for j in range(min(len(relevant), k)))
    ap, seen = 0.0, 0
    for j, h in enumerate(hits):
        if h:
            seen += 1
            ap += seen / (j + 1)
    return {"precision": sum(hits) / k, "recall": sum(hits) / len(relevant), "ndcg": dcg / idcg if idcg else 0.0,
            "ap": ap / min(len(relevant), k), "hit": float(any(hits))}


def _vectorised(ranked, relevant, k):
    hits = np.array([[i in relevant for i in ranked[:k]]])
    nr = np.array([len(relevant)])
    return {"precision": M.precision_at_k(hits, k)[0], "recall": M.recall_at_k(hits, nr, k)[0],
            "ndcg": M.ndcg_at_k(hits, nr, k)[0], "ap": M.average_precision_at_k(hits, nr, k)[0],
            "hit": M.hit_rate_at_k(hits, k)[0]}


def test_perfect_list_scores_one():
    got = _vectorised([1, 2, 3], {1, 2, 3}, 3)
    assert got == pytest.approx({"precision": 1.0, "recall": 1.0, "ndcg": 1.0, "ap": 1.0, "hit": 1.0})


def test_no_hit_scores_zero():
    got = _vectorised([4, 5, 6], {1, 2}, 3)
    assert got == pytest.approx({"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "ap": 0.0, "hit": 0.0})


def test_hand_computed_case():
    # relevant {a=1, b=3}; list [1, 2, 3]: hits at ranks 1 and 3.
    got = _vectorised([1, 2, 3], {1, 3}, 3)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert got["ndcg"] == pytest.approx(dcg / idcg)
    assert got["ap"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(1.0)


def test_ndcg_idcg_zero_is_zero():
    hits = np.zeros((1, 3), bool)
    assert M.ndcg_at_k(hits, np.array([0]), 3)[0] == 0.0
    assert M.average_precision_at_k(hits, np.array([0]), 3)[0] == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=15, unique=True),
       st.sets(st.integers(0, 30), min_size=1, max_size=10), st.integers(1, 12))
def test_matches_naive_reference(ranked, relevant, k):
    ranked = ranked + [-1] * max(0, k - len(ranked))  # padding never hits
    naive = _naive(ranked, relevant, k)
    got = _vectorised(ranked, relevant, k)
    assert got == pytest.approx(naive)
    for v in got.values():
        assert 0.0 <= v <= 1.0 + 1e-12


def test_rmse_mae():
    assert M.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert M.mae([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert math.isnan(M.rmse([], []))


def test_coverage_and_novelty():
    rec = np.array([[0, 1, -1], [1, 2, 3]])
    assert M.coverage(rec, 8) == pytest.approx(4 / 8)
    pop = np.array([0.5, 0.25, 0.125, 0.0])
    nov = M.novelty(rec, pop)
    assert nov[0] == pytest.approx((1 + 2) / 2)
    assert nov[1] == pytest.approx((2 + 3) / 2)  # item 3 has p = 0: skipped


def test_wcss_matches_naive():
    r = np.random.default_rng(0)
    x = r.normal(size=(30, 4))
    labels = r.integers(0, 3, 30)
    centers = np.stack([x[labels == c].mean(0) for c in range(3)])
    naive = sum(float(np.sum((x[i] - centers[labels[i]]) ** 2)) for i in range(30))
    assert M.wcss(x, labels, centers) == pytest.approx(naive)


def test_silhouette_undefined_is_nan():
    x = np.zeros((5, 2))
    assert math.isnan(M.silhouette(x, np.zeros(5, int)))
