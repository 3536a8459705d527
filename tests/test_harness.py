"""The harness: seen items excluded for every model, candidates limited to training items,
users without test items counted, metrics that do not apply absent."""
import numpy as np
import pandas as pd
import pytest

from research.data.interactions import build_dataset
from research.data.splits import Split
from research.eval.harness import evaluate
from research.models.base import Recommender, top_k
from research.models.baselines import Bias, GlobalMean, Popularity


def _split(train, val, test, n_users=3, n_items=6):
    rows = [(u, i, r, p) for p, part in enumerate((train, val, test)) for (u, i, r) in part]
    f = pd.DataFrame(rows, columns=["user", "item", "rating", "part"]).sort_values(["user", "item"])
    ds = build_dataset(f, name="toy")
    inter = ds.interactions
    assert inter.n_users == n_users and inter.n_items == n_items  # ids 0..n-1 map to themselves
    part = f["part"].to_numpy()
    return Split(inter.take(part == 0), inter.take(part == 1), inter.take(part == 2), "toy")


class Fixed(Recommender):
    """Scores items by a fixed vector for every user (the same ranking for all)."""

    def __init__(self, scores, seed=0):
        super().__init__(seed)
        self.scores = np.asarray(scores, float)

    def fit(self, train, val=None):
        self.meta = train.meta
        return self

    def score(self, users):
        return np.tile(self.scores, (len(users), 1))


def test_seen_items_excluded_and_candidates_limited():
    # items 0..5; item 5 never in train -> not a candidate even with the top score.
    train = [(0, 0, 5.0), (0, 1, 5.0), (1, 1, 5.0), (1, 2, 5.0), (2, 3, 5.0), (2, 4, 5.0), (0, 5 - 5, 5.0)]
    val = [(0, 2, 4.0)]
    test = [(0, 3, 3.0), (1, 5, 3.0), (1, 0, 3.0)]
    s = _split(train, val, test)
    m = Fixed([10, 9, 8, 7, 6, 100]).fit(s.train)
    res = evaluate(m, s, k=2)
    pu = res.per_user.set_index("user")
    # user 0 saw 0, 1 (train) and 2 (val): list = [3, 4] -> hit at rank 1
    assert pu.loc[0, "precision@2"] == pytest.approx(0.5)
    assert pu.loc[0, "ndcg@2"] == pytest.approx(1.0)
    # user 1 saw 1, 2: list = [0, 3]; relevant {5, 0}: item 5 unreachable, hit at rank 1
    assert pu.loc[1, "recall@2"] == pytest.approx(0.5)
    assert res.summary["relevant_not_in_train"] == 1
    # user 2 has no test item: counted, not averaged in
    assert res.summary["users_evaluated"] == 2
    assert res.summary["users_without_target"] == 1
    assert "rmse" not in res.summary  # Fixed does not predict ratings


def test_val_part_excludes_only_train():
    train = [(0, 0, 5.0), (1, 1, 5.0), (2, 2, 5.0), (0, 3, 1.0), (1, 4, 1.0)]
    val = [(0, 1, 4.0)]
    test = [(0, 2, 4.0)]
    s = _split(train, val, test, n_items=5)
    m = Fixed([0, 9, 8, 7, 6]).fit(s.train)
    val_res = evaluate(m, s, k=1, part="val")
    assert val_res.summary["ndcg@1"] == pytest.approx(1.0)  # item 1 is allowed when scoring val
    test_res = evaluate(m, s, k=1, part="test")
    assert test_res.summary["ndcg@1"] == pytest.approx(1.0)  # item 1 excluded -> item 2 first


def test_rating_metrics_only_for_rating_models():
    r = np.random.default_rng(0)
    f = pd.DataFrame({"user": r.integers(0, 40, 1500), "item": r.integers(0, 60, 1500),
                      "rating": r.integers(1, 11, 1500).astype(float)}).drop_duplicates(["user", "item"])
    from research.data.splits import random_split

    s = random_split(build_dataset(f).interactions, 0.2, 0.1, 0)
    g = evaluate(GlobalMean().fit(s.train), s)
    assert "rmse" in g.summary and "ndcg@10" not in g.summary  # no ranking of its own
    p = evaluate(Popularity().fit(s.train), s)
    assert "rmse" not in p.summary and "ndcg@10" in p.summary
    b = evaluate(Bias().fit(s.train), s)
    assert "rmse" in b.summary and "ndcg@10" in b.summary
    mu = s.train.rating.mean()
    assert g.summary["rmse"] == pytest.approx(np.sqrt(np.mean((s.test.rating - mu) ** 2)), rel=1e-6)


def test_top_k_sorted_unique_and_padded():
    scores = np.array([[3.0, -np.inf, 5.0, 5.0, 1.0], [-np.inf] * 5])
    items, vals = top_k(scores, 4)
    assert items[0].tolist() == [2, 3, 0, 4]  # ties -> lower index first
    assert (vals[0, :-1] >= vals[0, 1:]).all()
    assert (items[1] == -1).all()


def test_bias_beats_global_mean_on_structured_data():
    r = np.random.default_rng(0)
    n_u, n_i = 200, 150
    bu, bi = r.normal(0, 1, n_u), r.normal(0, 1.2, n_i)
    u, i = r.integers(0, n_u, 8000), r.integers(0, n_i, 8000)
    rating = np.clip(np.round(7 + bu[u] + bi[i] + r.normal(0, 0.8, 8000)), 1, 10)
    f = pd.DataFrame({"user": u, "item": i, "rating": rating}).drop_duplicates(["user", "item"])
    from research.data.splits import random_split

    s = random_split(build_dataset(f).interactions, 0.2, 0.1, 0)
    g = evaluate(GlobalMean().fit(s.train), s).summary["rmse"]
    b = evaluate(Bias().fit(s.train), s).summary["rmse"]
    assert b < 0.8 * g


def test_summary_and_per_user_columns_come_from_the_metric_table():
    """The harness reports what research.eval.metrics.METRICS lists, in its order: the keys a
    tuner may name (harness_keys) and one per_user column per per-user metric."""
    from research.data.splits import random_split
    from research.eval.metrics import METRICS, harness_keys

    r = np.random.default_rng(1)
    f = pd.DataFrame({"user": r.integers(0, 40, 1500), "item": r.integers(0, 60, 1500),
                      "rating": r.integers(1, 11, 1500).astype(float)}).drop_duplicates(["user", "item"])
    s = random_split(build_dataset(f).interactions, 0.2, 0.1, 0)
    res = evaluate(Bias().fit(s.train), s, k=5)
    assert [key for key in res.summary if key in harness_keys(5)] == harness_keys(5)
    per_user = [f"{m.per_user_column}@5" for m in METRICS.values() if m.unit == "user"]
    assert list(res.per_user.columns) == ["user", "n_relevant", *per_user]
    assert res.summary["map@5"] == pytest.approx(res.per_user["ap@5"].mean())


def test_top_k_breaks_ties_by_lower_index_at_the_cut_off():
    """Against a sort by (-score, index): ties at the k-th place keep the lowest anime indices
    (``argpartition`` alone keeps an arbitrary subset of them), -inf and NaN never returned."""
    from research.models.base import top_k

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        s = rng.integers(0, 4, (6, n)).astype(float)  # many ties
        s[rng.random(s.shape) < 0.25] = -np.inf
        s[rng.random(s.shape) < 0.05] = np.nan
        items, vals = top_k(s, k)
        for r in range(len(s)):
            finite = [j for j in range(n) if np.isfinite(s[r, j])]
            want = sorted(finite, key=lambda j: (-s[r, j], j))[:min(k, n)]
            assert list(items[r]) == want + [-1] * (min(k, n) - len(want))
            assert np.array_equal(vals[r][:len(want)], s[r, want])
