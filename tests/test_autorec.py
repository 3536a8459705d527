"""AutoRec (I-AutoRec): the masked loss by hand and inside the network, a fit beating the global
mean, predictions on the rating scale, the in-graph validation rmse against the harness, and
save / load giving identical predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import research  # noqa: F401
from research.data.interactions import build_dataset
from research.data.splits import random_split
from research.eval.harness import evaluate

pytestmark = pytest.mark.keras

SMALL = dict(hidden=16, l2=1.0, epochs=25, batch_size=8, learning_rate=3e-3, patience=5)


def _data(seed=0, n_users=60, n_items=40, density=0.5):
    """Item effects plus rank-2 tastes on 1-10, ~5% rows unrated, external ids not 0..n-1, and two
    catalogue anime nobody watched."""
    rng = np.random.default_rng(seed)
    pu, qi = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    bi = rng.normal(scale=1.0, size=n_items)
    rows = []
    for u in range(n_users):
        for i in np.flatnonzero(rng.random(n_items) < density):
            r = np.clip(np.round(6.5 + bi[i] + 1.2 * pu[u] @ qi[i] + rng.normal(scale=0.5)), 1, 10)
            rows.append((u * 5 + 3, i * 3 + 100, float(r)))
    df = pd.DataFrame(rows, columns=["user", "item", "rating"])
    df.loc[rng.random(len(df)) < 0.05, "rating"] = np.nan
    ids = np.arange(n_items + 2) * 3 + 100
    names = pd.DataFrame({"name": [f"Anime {j}" for j in range(len(ids))]}, index=ids)
    ds = build_dataset(df, item_table=names)
    return random_split(ds.interactions, 0.2, 0.15, seed=0)


@pytest.fixture(scope="module")
def split():
    return _data()


@pytest.fixture(scope="module")
def fitted(split):
    from research.models.keras.autorec import AutoRec

    return AutoRec(**SMALL, centre="mean", seed=4).fit(split.train, split.val)


def _rmse(model, data):
    t = data.only_rated()
    return float(np.sqrt(np.mean((model.predict(t.user, t.item) - t.rating) ** 2)))


# ---- the masked loss --------------------------------------------------------------------------
def test_masked_sse_by_hand():
    import tensorflow as tf

    from research.models.keras.autorec import masked_sse

    pred = tf.constant([[1.0, 2.0, 7.0], [3.0, 4.0, -2.0]])
    target = tf.constant([[1.5, 0.0, 0.0], [2.0, 9.0, 0.0]])
    mask = tf.constant([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    # observed: (1 - 1.5)^2 + (3 - 2)^2 + (4 - 9)^2 = 0.25 + 1 + 25; the rest must not count
    assert float(masked_sse(pred, target, mask)) == pytest.approx(26.25)
    wild = tf.where(mask > 0, pred, 1e6)  # anything at the unobserved entries
    assert float(masked_sse(wild, target, mask)) == pytest.approx(26.25)


def test_network_loss_only_over_observed_ratings(fitted, split):
    """The batch loss of the network is Σ over the observed (anime, user) cells of
    (reconstruction − centred rating)², scaled as the docstring says, plus λ/2 (‖W‖² + ‖V‖²) / N."""
    import tensorflow as tf

    net = fitted.model
    st = fitted.fit_state
    items = np.flatnonzero(st["known_items"])[:5].astype(np.int32)
    loss, sse, n = (float(v) for v in net.losses_of(tf.constant(items)))
    recon = net(
        {"item": tf.constant(items)}).numpy()  # (5, n_users), centred back: the predicted ratings
    want, count = 0.0, 0
    for row, i in enumerate(items):
        lo, hi = st["item_indptr"][i], st["item_indptr"][i + 1]
        users, ratings = st["item_users"][lo:hi], st["item_ratings"][lo:hi]
        want += float(((recon[row, users] - ratings) ** 2).sum())
        count += len(users)
    assert n == count
    assert sse == pytest.approx(want, rel=1e-4)
    w = net.encoder.kernel.numpy()
    v = net.decoder.kernel.numpy()
    reg = 0.5 * fitted.l2 * ((w ** 2).sum() + (v ** 2).sum())
    n_rows = int(np.count_nonzero(st["known_items"]))
    expect = (n_rows / len(items)) * want / st["n_obs"] + reg / st["n_obs"]
    assert loss == pytest.approx(expect, rel=1e-4)


# ---- fitting and predicting -------------------------------------------------------------------
def test_fit_beats_the_global_mean(fitted, split):
    mu = float(np.nanmean(split.train.rating))
    t = split.test.only_rated()
    base = float(np.sqrt(np.mean((t.rating - mu) ** 2)))
    assert _rmse(fitted, split.test) < 0.9 * base
    assert fitted.best_epoch >= 1 and fitted.fit_epochs >= fitted.best_epoch
    assert "loss" in fitted.history and "val_rmse" in fitted.history


def test_bias_centring_fits_too(split):
    from research.models.keras.autorec import AutoRec

    m = AutoRec(**{**SMALL, "epochs": 10}, centre="bias", seed=1).fit(split.train, split.val)
    mu = float(np.nanmean(split.train.rating))
    t = split.test.only_rated()
    assert _rmse(m, split.test) < float(np.sqrt(np.mean((t.rating - mu) ** 2)))


def test_predictions_inside_the_training_rating_range(fitted, split):
    n_u, n_i = split.train.n_users, split.train.n_items
    users, items = np.divmod(np.arange(n_u * n_i), n_i)  # every pair, unknown anime included
    p = fitted.predict(users, items)
    r = split.train.rating[split.train.rated]
    assert np.isfinite(p).all()
    assert p.min() >= r.min() and p.max() <= r.max()
    s = fitted.score(np.arange(n_u))
    assert s.shape == (n_u, n_i) and np.isfinite(s).all()
    known = fitted.fit_state["known_items"]
    assert not known.all()  # the two anime nobody watched: the global mean
    np.testing.assert_allclose(s[:, ~known], fitted.fit_state["mu"], rtol=1e-6)


def test_validation_rmse_is_the_harness_rmse_on_val(fitted, split):
    best = fitted.history["val_rmse"][fitted.best_epoch - 1]
    assert best == min(fitted.history["val_rmse"])
    res = evaluate(fitted, split, k=5, part="val").summary
    assert res["rmse"] == pytest.approx(best, rel=1e-5)


def test_vectors_and_similar(fitted, split):
    assert fitted.item_vectors().shape == (split.train.n_items, 16)
    assert fitted.user_vectors().shape == (split.train.n_users, 16)
    ids, _ = fitted.similar_items(np.array([0, 1]), k=3)
    assert (ids != np.array([[0], [1]])).all()


def test_save_load_identical_predictions(fitted, split, tmp_path):
    from research.models.keras.common import KerasRecommender

    fitted.save(tmp_path / "m")
    assert not list(tmp_path.rglob("*.pkl"))
    again = KerasRecommender.load(tmp_path / "m", split.train.meta)
    t = split.test.only_rated()
    np.testing.assert_array_equal(again.predict(t.user, t.item), fitted.predict(t.user, t.item))
    users = np.arange(split.train.n_users)
    np.testing.assert_array_equal(again.score(users), fitted.score(users))
    assert again.centre == "mean" and again.hidden == 16


def test_bad_arguments():
    from research.errors import ConfigError
    from research.models.keras.autorec import AutoRec

    for bad in ({"hidden": 0}, {"l2": -1.0}, {"centre": "median"}, {"dropout": 1.0}):
        with pytest.raises(ConfigError):
            AutoRec(**bad)
