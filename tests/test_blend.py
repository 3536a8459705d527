"""``blend`` (research/models/blend.py): which rows each stage sees, the ridge against numpy's
least squares, the blend against its bases, configs, persistence. Classical bases only (no
TensorFlow) except the one ``keras`` test of a Keras base's save / load."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from research.config import load as load_config
from research.data.interactions import build_dataset
from research.data.splits import random_split
from research.errors import ConfigError
from research.models import registry
from research.models.base import ARRAYS_FILE, MODEL_FILE
from research.models.baselines import Bias
from research.models.blend import Blend, ridge_fit


def _dataset(seed=0, n_users=120, n_items=80, per_user=25):
    """Low-rank 1-10 ratings with user and item biases; 5% of rows unrated."""
    r = np.random.default_rng(seed)
    pu, qi = r.normal(size=(n_users, 3)), r.normal(size=(n_items, 3))
    bu, bi = r.normal(0, 0.8, n_users), r.normal(0, 0.8, n_items)
    rows = []
    for u in range(n_users):
        for i in r.choice(n_items, per_user, replace=False):
            z = 6.5 + bu[u] + bi[i] + 0.8 * pu[u] @ qi[i] + r.normal(0, 0.7)
            rows.append((500 + u, 1 + i, float(np.clip(np.round(z), 1, 10))))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame.loc[r.random(len(frame)) < 0.05, "rating"] = np.nan
    return build_dataset(frame, name="blend-synth")


@pytest.fixture(scope="module")
def split():
    return random_split(_dataset().interactions, test_fraction=0.2, val_fraction=0.15, seed=0)


def _keys(data) -> np.ndarray:
    return np.sort(data.user.astype(np.int64) * data.n_items + data.item)


class Spy(Bias):
    """A base that records the rows it was fitted on and whether it got a validation part."""

    def fit(self, train, val=None):
        self.fit_keys = _keys(train)
        self.fit_got_val = val is not None
        return super().fit(train, val)


@pytest.fixture
def spy(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "spy", f"{Spy.__module__}:Spy")
    return "spy"


SMALL = {"item_knn": {"k": 20}, "user_knn": {"k": 20}}


# ---- which rows each stage saw ----------------------------------------------------------------
def test_bases_see_exactly_the_training_rows_never_validation(spy, split):
    m = Blend(bases=[spy, "item_knn"], base_params={"item_knn": {"k": 10}}, seed=1).fit(split.train, split.val)
    base = m.bases_[0]
    assert isinstance(base, Spy) and not base.fit_got_val            # no val, not even for early stopping
    np.testing.assert_array_equal(base.fit_keys, _keys(split.train))   # every train row, nothing else
    assert not np.isin(_keys(split.val), base.fit_keys).any()          # fails if a base saw a validation row
    assert m.rows_ == {"base": len(split.train), "base_rated": int(split.train.rated.sum()),
                       "ridge": int(split.val.rated.sum())}
    assert m.ridge_source_ == "val"


def test_without_validation_a_per_user_holdout_feeds_the_ridge(spy, split):
    train = split.train_val()
    m = Blend(bases=[spy], holdout_fraction=0.1, seed=4).fit(train, None)
    held = m.holdout(train)
    assert held.any() and train.rated[held].all()                     # only rated rows are held
    np.testing.assert_array_equal(m.bases_[0].fit_keys, _keys(train.take(~held)))
    assert not np.isin(_keys(train.take(held)), m.bases_[0].fit_keys).any()
    assert m.rows_["ridge"] == int(held.sum()) and m.ridge_source_ == "holdout"
    # per user: floor(0.1 n + 0.5) of the n rated rows, at most n - 1
    n = np.bincount(train.user[train.rated], minlength=train.n_users)
    h = np.bincount(train.user[held], minlength=train.n_users)
    np.testing.assert_array_equal(h, np.where(n >= 2, np.minimum(np.floor(0.1 * n + 0.5), n - 1), 0))
    np.testing.assert_array_equal(held, Blend(bases=[spy], seed=4).holdout(train))    # seeded
    assert not np.array_equal(held, Blend(bases=[spy], seed=5).holdout(train))


def test_each_base_gets_its_own_seed_derived_from_the_blend_seed(spy, split):
    a = Blend(bases=[spy, "bias"], seed=2).fit(split.train, split.val)
    b = Blend(bases=[spy, "bias"], seed=3).fit(split.train, split.val)
    seeds = [x.seed for x in a.bases_]
    assert len(set(seeds)) == 2 and seeds != [x.seed for x in b.bases_]


# ---- the ridge ------------------------------------------------------------------------------------
def _reference(X, y, alpha):
    """min ||y - b - Z w||^2 + n alpha ||w||^2 as one least-squares problem (intercept unpenalised)."""
    n, d = X.shape
    mean, std = X.mean(0), X.std(0)
    Z = (X - mean) / std
    A = np.vstack([np.column_stack([np.ones(n), Z]), np.column_stack([np.zeros(d), np.sqrt(n * alpha) * np.eye(d)])])
    sol = np.linalg.lstsq(A, np.r_[y, np.zeros(d)], rcond=None)[0]
    coef = sol[1:] / std
    return sol[0] - mean @ coef, coef


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 0.5])
def test_ridge_matches_numpy_least_squares(alpha):
    r = np.random.default_rng(0)
    X = r.normal(size=(12, 3)) * [1.0, 5.0, 0.2] + [7.0, -1.0, 0.0]
    y = 2.0 + X @ [0.5, -0.1, 3.0] + r.normal(0, 0.1, 12)
    b, coef, std_coef = ridge_fit(X, y, alpha)
    rb, rcoef = _reference(X, y, alpha)
    np.testing.assert_allclose(coef, rcoef, rtol=1e-9, atol=1e-12)
    assert b == pytest.approx(rb, rel=1e-9)
    np.testing.assert_allclose(std_coef, coef * X.std(0), rtol=1e-12)
    if alpha == 0:  # plain least squares on [1, X]
        plain = np.linalg.lstsq(np.column_stack([np.ones(12), X]), y, rcond=None)[0]
        np.testing.assert_allclose(np.r_[b, coef], plain, rtol=1e-8)


def test_the_blend_is_the_ridge_of_its_bases_predictions_on_validation(split):
    m = Blend(bases=["bias", "item_knn"], base_params={"item_knn": {"k": 10}}, alpha=0.01).fit(split.train, split.val)
    val = split.val.only_rated()
    P = np.column_stack([b.predict(val.user, val.item) for b in m.bases_])
    rated = split.train.only_rated()
    lu = np.log1p(np.bincount(rated.user, minlength=split.train.n_users)[val.user])
    li = np.log1p(np.bincount(rated.item, minlength=split.train.n_items)[val.item])
    X = np.column_stack([P, lu, li, P * lu[:, None], P * li[:, None]])
    rb, rcoef = _reference(X, val.rating.astype(np.float64), 0.01)
    np.testing.assert_allclose(m.coef_, rcoef, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(m.predict(val.user, val.item), np.clip(rb + X @ rcoef, 1, 10), rtol=1e-9)
    extra = m.extra_metrics()
    assert extra["blend.coef.item_knn*log1p_n_item"] == pytest.approx(rcoef[-1])
    assert extra["blend.intercept"] == pytest.approx(rb)


def test_not_worse_than_its_best_base_on_validation(split):
    m = Blend(base_params=SMALL, seed=0).fit(split.train, split.val)
    val = split.val.only_rated()
    rmse = lambda p: float(np.sqrt(np.mean((p - val.rating) ** 2)))  # noqa: E731
    best = min(rmse(b.predict(val.user, val.item)) for b in m.bases_)
    assert rmse(m.predict(val.user, val.item)) <= best
    assert m.ridge_rmse_["blend"] <= min(m.ridge_rmse_[n] for n in m.bases)


def test_predictions_clipped_and_score_ranks_every_candidate(split):
    m = Blend(bases=["bias", "user_knn"], base_params={"user_knn": {"k": 10}}, alpha=0.0).fit(split.train, split.val)
    users = np.repeat(np.arange(split.train.n_users), split.train.n_items)
    items = np.tile(np.arange(split.train.n_items), split.train.n_users)
    p = m.predict(users, items)
    r = split.train.rating[split.train.rated]
    assert p.min() >= r.min() and p.max() <= r.max()
    s = m.score(np.arange(5))
    assert s.shape == (5, split.train.n_items) and np.isfinite(s).all()
    u5 = np.repeat(np.arange(5), split.train.n_items)
    raw = m._blend(u5, np.tile(np.arange(split.train.n_items), 5)).reshape(5, -1)
    trained = np.bincount(split.train.item, minlength=split.train.n_items) > 0
    # the unclipped blended rating (score predicts the kNN base by blocks: float32 summation order)
    np.testing.assert_allclose(s[:, trained], raw[:, trained], rtol=1e-6)
    assert (s[:, ~trained] < s[:, trained].min()).all()


# ---- configs ------------------------------------------------------------------------------------
def test_a_toml_config_expresses_bases_and_their_tables(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('experiment = "b"\n[data]\nsource = "synth"\n[models.mix]\ntype = "blend"\n'
                   'bases = ["bias", "item_knn"]\nalpha = 0.01\n[models.mix.base_params.item_knn]\nk = 7\n')
    (spec,) = load_config(str(cfg)).models
    m = registry.build(spec.type, spec.params, seed=0)
    assert m.bases == ["bias", "item_knn"] and m.base_params == {"item_knn": {"k": 7}} and m.alpha == 0.01


@pytest.mark.parametrize("params, match", [
    ({"bases": ["bias", "nope"]}, "unknown model 'nope'"),
    ({"bases": ["popularity"]}, "does not predict ratings"),
    ({"bases": ["item_knn"], "base_params": {"item_knn": {"kk": 3}}}, "unknown parameter 'kk'"),
    ({"bases": ["bias"], "base_params": {"item_knn": {"k": 3}}}, "not among the bases"),
    ({"bases": ["bias", "bias"]}, "at most once"),
    ({"bases": []}, "non-empty"),
    ({"bases": ["blend"]}, "not offered"),
    ({"alpha": -1.0}, "alpha"),
])
def test_bad_parameters_are_config_errors(params, match):
    with pytest.raises(ConfigError, match=match):
        registry.build("blend", params, seed=0)


# ---- persistence and determinism --------------------------------------------------------------------
def _answers(m, split):
    t = split.test
    return m.predict(t.user, t.item), m.score(np.arange(split.train.n_users)), m.extra_metrics()


def test_save_load_round_trip_nests_the_bases(split, tmp_path):
    m = Blend(base_params=SMALL, seed=5).fit(split.train, split.val)
    m.save(tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [ARRAYS_FILE, MODEL_FILE]
    back = registry.model_class("blend").load(tmp_path / "b", split.meta)
    assert [type(b) for b in back.bases_] == [type(b) for b in m.bases_]
    p, s, e = _answers(m, split)
    bp, bs, be = _answers(back, split)
    np.testing.assert_array_equal(p, bp)
    np.testing.assert_array_equal(s, bs)
    assert e == be


def test_same_seed_same_numbers(split):
    a = Blend(base_params=SMALL, seed=9).fit(split.train, None)
    b = Blend(base_params=SMALL, seed=9).fit(split.train, None)
    for x, y in zip(_answers(a, split)[:2], _answers(b, split)[:2]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.keras
def test_a_keras_base_is_saved_by_its_own_format_beside_the_blend(split, tmp_path):
    m = Blend(bases=["bias", "embedding_dot"], base_params={"embedding_dot": {"dim": 4, "epochs": 2}},
              seed=1).fit(split.train, split.val)
    assert m.bases_[1].fit_epochs == 2  # no validation part: no early stopping on the ridge's rows
    m.save(tmp_path / "k")
    assert (tmp_path / "k" / "bases" / "1-embedding_dot" / "keras_model.json").is_file()
    back = registry.model_class("blend").load(tmp_path / "k", split.meta)
    assert type(back.bases_[1]) is type(m.bases_[1])
    t = split.test
    np.testing.assert_allclose(back.predict(t.user, t.item), m.predict(t.user, t.item), rtol=1e-6)


def test_mean_weights_are_the_bases_total_weight_at_mean_activity(split):
    m = Blend(bases=["bias", "item_knn"], base_params={"item_knn": {"k": 10}}).fit(split.train, split.val)
    val = split.val.only_rated()
    X = m.features(val.user, val.item)
    # the blend is linear in each base's prediction: the slope of the rating in p_item_knn,
    # averaged over the ridge rows, is its mean weight
    slope = m.coef_[1] + m.coef_[2 + 2 + 1] * X[:, 2] + m.coef_[2 * 2 + 2 + 1] * X[:, 3]
    assert m.extra_metrics()["blend.mean_weight.item_knn"] == pytest.approx(slope.mean())
    plain = Blend(bases=["bias"], activity=False).fit(split.train, split.val)
    assert plain.mean_weight_ == {"bias": pytest.approx(plain.coef_[0])}


# ---- the kNN bases' block prediction (what score uses) -----------------------------------------
@pytest.mark.parametrize("name", ["item_knn", "user_knn"])
@pytest.mark.parametrize("params", [{}, {"similarity": "cosine", "pred_damping": 2.0},
                                    {"similarity": "pearson", "k": 5}])
def test_knn_predict_grid_is_predict_of_every_pair(split, name, params):
    m = registry.build(name, dict(params), seed=0).fit(split.train, split.val)
    users, items = np.array([3, 0, 7, 7, 50]), np.arange(split.train.n_items)[::-1]
    grid = m.predict_grid(users, items)
    pairs = m.predict(np.repeat(users, len(items)), np.tile(items, len(users))).reshape(len(users), -1)
    assert grid.shape == (5, len(items))
    np.testing.assert_allclose(grid, pairs, rtol=0, atol=1e-5)
    assert np.ptp(grid) > 0.5  # not a constant: the neighbourhoods move the predictions
