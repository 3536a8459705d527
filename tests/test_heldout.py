"""Held-out users (``split.kind = "users"``, strong generalisation): the harness folds each held-out
user in from their history (``score_history``) and scores their targets with the one set of metric
functions; a model that cannot fold in is skipped (recorded why), never scored 0; the runner end to
end on synthetic data. No TensorFlow."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from research import config
from research.data.interactions import build_dataset
from research.data.splits import Split, make_split
from research.eval.harness import evaluate
from research.experiment import run_seed
from research.models import registry
from research.models.base import NotSupported, Recommender
from research.models.baselines import Bias, GlobalMean, Popularity

N_ITEMS = 6


def _heldout_split(parts: dict) -> Split:
    """parts: name -> [(user, item, rating)] for train, val_history, val, test_history, test; user
    and item ids 0..n-1 map to themselves."""
    names = ("train", "val_history", "val", "test_history", "test")
    rows = [(u, i, r, p) for p, name in enumerate(names) for (u, i, r) in parts.get(name, [])]
    f = pd.DataFrame(rows, columns=["user", "item", "rating", "part"]).sort_values(["user", "item"])
    inter = build_dataset(f, name="toy").interactions
    assert inter.n_items == N_ITEMS and inter.n_users == f["user"].max() + 1
    part = f["part"].to_numpy()
    take = [inter.take(part == p) for p in range(5)]
    return Split(take[0], take[2], take[4], "toy", val_history=take[1], test_history=take[3])


class NextItem(Recommender):
    """Fold-in only: a fixed score per item plus 10 for the anime after each history anime
    (i -> i + 1 mod 6). ``score`` fails, so a test passes only if the harness folds in."""

    base = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 9.0])  # item 5 first, but it has no training row

    def fit(self, train, val=None):
        self.meta = train.meta
        self.batches = []
        return self

    def score(self, users):
        raise AssertionError("held-out users must be folded in, not scored by index")

    def score_history(self, history):
        history = self.check_history(history)
        self.batches.append(len(history))
        shift = sp.csr_matrix(np.roll(np.eye(N_ITEMS), 1, axis=1) * 10.0)  # row i -> column i + 1
        return self.base + (history.seen @ shift).toarray()


class NoFoldIn(Popularity):
    def score_history(self, history):
        raise NotSupported("NoFoldIn: no per-user step")


class PlainNoFoldIn(Popularity):
    """Popularity without its fold-in: the base class's ``score_history`` (NotSupported)."""

    score_history = Recommender.score_history


class RatingFoldIn(Bias):
    """Bias with an unclipped fold-in rating prediction: μ + b_i + the folded-in user bias."""

    def predict_history(self, history, rows, items):
        return self.mu + self.bi[items] + self.user_bias(history)[rows]


class NoRankingNoFoldIn(GlobalMean):
    """Neither a ranking nor a fold-in rating prediction: nothing to measure on held-out users."""

    predict_history = None


class NoRatingFoldIn(Bias):
    """Predicts ratings for its training users, folds a ranking in, but has no predict_history."""

    predict_history = None


CASE = {
    # training users 0, 1, 2, 5; anime 5 has no training row (not a candidate)
    "train": [(0, 0, 8.0), (0, 1, 6.0), (0, 2, 7.0), (1, 1, 5.0), (1, 2, 9.0), (1, 3, 4.0),
              (2, 0, 6.0), (2, 3, 8.0), (2, 4, 7.0), (5, 2, 6.0)],
    "val_history": [(7, 1, 6.0)], "val": [(7, 2, 8.0)],
    # user 3: history {0}, targets {1, 4}; user 4: history {3, 4}, targets {5, 0}; user 6: one row
    "test_history": [(3, 0, 9.0), (4, 3, 5.0), (4, 4, 6.0), (6, 2, 7.0)],
    "test": [(3, 1, 7.0), (3, 4, 3.0), (4, 5, 8.0), (4, 0, 2.0)],
}


def test_heldout_metrics_equal_a_hand_computation():
    s = _heldout_split(CASE)
    m = NextItem().fit(s.train)
    res = evaluate(m, s, k=2)
    pu = res.per_user.set_index("user")
    # user 3: scores [5, 14, 3, 2, 1, 9]; 0 is history, 5 no candidate -> list [1, 2]: hit at rank 1
    # user 4: scores [5, 4, 3, 2, 11, 19]; 3, 4 history, 5 no candidate -> list [0, 1]: hit at rank 1
    ndcg = 1.0 / (1.0 + 1.0 / math.log2(3))  # one hit at rank 1 of 2 relevant, k = 2
    assert list(pu.index) == [3, 4]
    for u in (3, 4):
        assert pu.loc[u, "ndcg@2"] == pytest.approx(ndcg)
        assert pu.loc[u, "precision@2"] == pytest.approx(0.5)
        assert pu.loc[u, "recall@2"] == pytest.approx(0.5)
        assert pu.loc[u, "ap@2"] == pytest.approx(0.5)
        assert pu.loc[u, "hit@2"] == 1.0
        assert pu.loc[u, "n_relevant"] == 2
    assert res.summary["ndcg@2"] == pytest.approx(ndcg)
    assert res.summary["users_evaluated"] == 2
    assert res.summary["users_without_target"] == 1  # user 6: one row, folded in, no target
    assert res.summary["relevant_not_in_train"] == 1  # user 4's anime 5: no training row
    assert res.summary["coverage@2"] == pytest.approx(3 / 5)  # {0, 1, 2} of 5 candidates
    assert res.summary["history_rows"] == 4
    assert "rmse" not in res.summary and res.per_rating is None
    # validation users: user 7, history {1} -> scores [5, 4, 13, 2, 1, 9], list [2, 0]: hit at rank 1
    val = evaluate(m, s, k=2, part="val")
    assert val.summary["ndcg@2"] == pytest.approx(1.0) and val.summary["users_evaluated"] == 1


def test_heldout_batches_bound_memory_and_give_the_same_numbers():
    s = _heldout_split(CASE)
    m = NextItem().fit(s.train)
    whole = evaluate(m, s, k=3, batch_users=1024)
    assert m.batches == [2]
    m.batches = []
    one = evaluate(m, s, k=3, batch_users=1)
    assert m.batches == [1, 1]
    drop = lambda d: {k: v for k, v in d.items() if k != "eval_seconds"}
    assert drop(one.summary) == drop(whole.summary)
    pd.testing.assert_frame_equal(one.per_user, whole.per_user)


def test_relevance_threshold_applies_to_targets():
    s = _heldout_split(CASE)
    res = evaluate(NextItem().fit(s.train), s, k=2, relevance_threshold=7.0)
    pu = res.per_user.set_index("user")
    # user 3: relevant {1} (7.0) -> list [1, 2]: ndcg 1; user 4: relevant {5} (8.0): unreachable
    assert pu.loc[3, "ndcg@2"] == pytest.approx(1.0) and pu.loc[4, "ndcg@2"] == 0.0
    assert res.summary["users_without_target"] == 1


def test_rating_metrics_only_from_a_fold_in_prediction():
    s = _heldout_split(CASE)
    bias = NoRatingFoldIn().fit(s.train)
    res = evaluate(bias, s, k=2)
    assert "rmse" not in res.summary and "mae" not in res.summary  # predicts, but cannot fold in ratings
    assert "ndcg@2" in res.summary
    folded = RatingFoldIn().fit(s.train)
    res = evaluate(folded, s, k=2)
    tgt = s.test
    from research.models.base import History

    users = np.unique(tgt.user)
    hist = History.from_interactions(s.test_history, users)
    rows = np.searchsorted(users, tgt.user)
    expect = folded.mu + folded.bi[tgt.item] + folded.user_bias(hist)[rows]
    assert res.summary["rmse"] == pytest.approx(float(np.sqrt(np.mean((tgt.rating - expect) ** 2))))
    assert res.summary["mae"] == pytest.approx(float(np.mean(np.abs(tgt.rating - expect))))
    assert len(res.per_rating) == len(tgt)


def test_models_that_cannot_be_measured_raise_not_supported():
    s = _heldout_split(CASE)
    with pytest.raises(NotSupported, match="no per-user step"):
        evaluate(NoFoldIn().fit(s.train), s)
    with pytest.raises(NotSupported, match="no fold-in"):
        evaluate(PlainNoFoldIn().fit(s.train), s)
    with pytest.raises(NotSupported, match="nothing to measure"):
        evaluate(NoRankingNoFoldIn().fit(s.train), s)  # no ranking, no rating fold-in
    res = evaluate(GlobalMean().fit(s.train), s)  # no ranking, but a rating fold-in: rmse only
    assert "rmse" in res.summary and "ndcg@10" not in res.summary


# ---- the runner end to end -------------------------------------------------------------------
def _planted(seed=0, n_users=90, n_items=70):
    """Two taste groups over two halves of the catalogue, with a popularity tail."""
    r = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = u % 2
        n = int(r.integers(8, 20))
        own = r.choice(np.arange(group * 35, group * 35 + 35), n, replace=False)
        for i in own:
            rows.append((1000 + u, 10 + int(i), float(r.integers(6, 11))))
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "rating"]), name="planted")


def _cfg(tmp_path, models):
    p = tmp_path / "c.toml"
    p.write_text(f'experiment = "h"\nresults_dir = "{tmp_path / "results"}"\n'
                 f'[split]\nkind = "users"\ntest_fraction = 0.3\nval_fraction = 0.1\n{models}')
    return config.load(p)


def test_runner_heldout_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "nofold", f"{__name__}:NoFoldIn")
    monkeypatch.setitem(registry.MODELS, "plain", f"{__name__}:PlainNoFoldIn")
    cfg = _cfg(tmp_path, "[models.popularity]\n[models.item_knn]\nk = 10\n[models.global_mean]\n"
                         "[models.nofold]\n[models.plain]\n")
    ds = _planted()
    d = run_seed(cfg, ds, 0, quiet=True)
    m = json.loads((d / "metrics.json").read_text())
    assert list(m["models"]) == ["popularity", "item_knn", "global_mean"]
    assert "rmse" in m["models"]["global_mean"] and "ndcg@10" not in m["models"]["global_mean"]
    assert set(m["skipped"]) == {"nofold", "plain"}
    assert "no per-user step" in m["skipped"]["nofold"] and "no fold-in" in m["skipped"]["plain"]
    assert not (d / "models" / "plain").exists()  # skipped before fitting: nothing saved
    assert sum(m["rows"].values()) == len(ds.interactions)
    assert m["split"].startswith("users(")
    table = (d / "table.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["model", "popularity", "item_knn", "global_mean"]  # skipped models are no row, never 0
    assert "Not measured on held-out users" in table and "nofold" in table
    # the numbers are the harness's on the same split, and only test users are in per_user.csv
    split = make_split(ds.interactions, cfg.split, 0)
    knn = registry.build("item_knn", {"k": 10}, 0).fit(split.train, split.fit_val())
    direct = evaluate(knn, split, k=10)
    for key in ("ndcg@10", "recall@10", "users_evaluated", "users_without_target"):
        assert m["models"]["item_knn"][key] == pytest.approx(direct.summary[key])
    pu = pd.read_csv(d / "per_user.csv")
    test_ids = set(ds.meta.users.ids(np.unique(split.test.user)).tolist())
    assert set(pu["user"]) <= test_ids and not set(pu["user"]) & set(ds.meta.users.ids(split.train.users_present()))
    # folding in the history beats the same list for everyone on planted taste groups
    assert m["models"]["item_knn"]["ndcg@10"] > m["models"]["popularity"]["ndcg@10"]
    assert json.loads((d / "status.json").read_text())["status"] == "finished"


class CrashOnce(Popularity):
    crashed = False

    def fit(self, train, val=None):
        if not CrashOnce.crashed:
            CrashOnce.crashed = True
            raise RuntimeError("simulated crash")
        return super().fit(train, val)


class CountingNoFoldIn(NoFoldIn):
    fits = 0

    def fit(self, train, val=None):
        CountingNoFoldIn.fits += 1
        return super().fit(train, val)


def test_resume_keeps_skipped_models_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "nofold", f"{__name__}:CountingNoFoldIn")
    monkeypatch.setitem(registry.MODELS, "crash", f"{__name__}:CrashOnce")
    cfg = _cfg(tmp_path, "[models.popularity]\n[models.nofold]\n[models.crash]\n")
    ds = _planted()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_seed(cfg, ds, 0, quiet=True)
    assert CountingNoFoldIn.fits == 1
    d = run_seed(cfg, ds, 0, quiet=True)
    assert CountingNoFoldIn.fits == 1  # recorded as skipped: not fitted again
    m = json.loads((d / "metrics.json").read_text())
    assert list(m["models"]) == ["popularity", "crash"] and list(m["skipped"]) == ["nofold"]
