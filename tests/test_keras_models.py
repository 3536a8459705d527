"""Contract and behaviour tests of the Keras models ``recommendernet``, ``dnn`` and ``two_tower``
(and their shared side features), on a tiny hand-made data set: a few seconds each."""
import numpy as np
import pandas as pd
import pytest

import research  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from research.data.interactions import build_dataset
from research.data.splits import random_split

pytestmark = pytest.mark.keras

N_USERS, N_ITEMS = 40, 30
GENRES = ["Action", "Comedy", "Drama", "Romance", "Sci-Fi"]
WORDS = ["robot", "school", "love", "space", "sword", "magic", "music", "war"]


def _data(seed=0):
    """40 users x 30 rated anime with genre-driven tastes, plus 2 catalogue-only anime (no rows)."""
    r = np.random.default_rng(seed)
    n_cat = N_ITEMS + 2
    g = r.integers(0, len(GENRES), size=(n_cat, 2))
    table = pd.DataFrame({
        "name": [f"Anime {i}" for i in range(n_cat)],
        "genres": [sorted({GENRES[a], GENRES[b]}) for a, b in g],
        "type": r.choice(["TV", "Movie", "OVA"], size=n_cat),
        "studios": [[f"Studio {i % 4}"] for i in range(n_cat)],
        "source": r.choice(["Manga", "Original"], size=n_cat),
        "episodes": r.choice([1.0, 12.0, 24.0, np.nan], size=n_cat),
        "synopsis": [" ".join(r.choice(WORDS, size=6)) + " adventure story" for _ in range(n_cat)],
    }, index=np.arange(100, 100 + n_cat))
    taste = r.integers(0, len(GENRES), size=N_USERS)
    rows = []
    for u in range(N_USERS):
        for i in r.choice(N_ITEMS, size=18, replace=False):
            like = GENRES[taste[u]] in table["genres"].iloc[i]
            rows.append((1000 + u, 100 + i, float(np.clip(np.round(r.normal(8.5 if like else 5.0, 1.0)), 1, 10))))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    return build_dataset(frame, table, name="tiny")


@pytest.fixture(scope="module")
def split():
    return random_split(_data().interactions, 0.2, 0.1, 0)


def _check_contract(model, split, rating_model: bool):
    users = np.arange(split.train.n_users)
    s = model.score(users)
    assert s.shape == (len(users), split.train.n_items)
    exclude = split.train.to_csr("ones")
    items, scores = model.recommend(users, k=5, exclude=exclude)
    assert items.shape == (len(users), 5)
    for u, row, sc in zip(users, items, scores):
        assert len(set(row.tolist())) == 5
        assert not set(row.tolist()) & set(exclude[u].indices.tolist())
        assert (sc[:-1] >= sc[1:]).all()
    if rating_model:
        p = model.predict(split.test.user, split.test.item)
        assert p.shape == (len(split.test),)
        assert np.isfinite(p).all() and (p >= 1.0).all() and (p <= 10.0).all()
    sims, _ = model.similar_items(np.array([0, 1]), k=3)
    assert sims.shape == (2, 3) and 0 not in sims[0] and 1 not in sims[1]
    sims, _ = model.similar_users(np.array([0]), k=3)
    assert sims.shape == (1, 3) and 0 not in sims[0]


# ---- features -----------------------------------------------------------------------------
def test_item_features_arrays():
    from research.models.keras.features import build_item_features

    meta = _data().meta
    f = build_item_features(meta, min_count=1, synopsis_min_df=1, synopsis_terms=4)
    assert f.genres.shape[0] == meta.n_items and f.genres.shape[1] == 2
    # item 0's genre ids decode to its genres
    decoded = sorted(f.vocabs["genres"][j - 1] for j in f.genres[0] if j)
    assert decoded == sorted(meta.item_table["genres"].iloc[0])
    assert f.vocabs["type"] == ["Movie", "OVA", "TV"]
    assert set(f.vocabs["synopsis"]) >= {"robot", "space"} and "story" in f.vocabs["synopsis"]
    eps = meta.item_table["episodes"].to_numpy()
    assert np.array_equal(f.numeric[:, 1] == 1.0, np.isnan(eps))
    assert (f.numeric[np.isnan(eps), 0] == 0).all()


# ---- recommendernet -----------------------------------------------------------------------
def test_study_learning_rate_schedule():
    from research.models.keras.recommendernet import RecommenderNet, study_learning_rate

    # ramp 1e-5 -> 5e-5 in 5 epochs (+8e-6 per epoch), then 4e-5 * 0.8**(e - 5) + 1e-5
    expected = [1.0e-5, 1.8e-5, 2.6e-5, 3.4e-5, 4.2e-5, 5.0e-5, 4.2e-5, 3.56e-5, 3.048e-5, 2.6384e-5, 2.31072e-5]
    got = [study_learning_rate(e) for e in range(11)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    m = RecommenderNet(start_lr=1e-4, max_lr=1e-3, min_lr=2e-4, rampup_epochs=2, sustain_epochs=1, exp_decay=0.5)
    np.testing.assert_allclose([m.learning_rate_at(e) for e in range(5)], [1e-4, 5.5e-4, 1e-3, 1e-3, 6e-4])


def test_minmax_round_trip():
    from research.models.keras.recommendernet import minmax_scale, minmax_unscale

    r = np.array([1.0, 10.0, 5.5, 7.0])
    s = minmax_scale(r, 1.0, 10.0)
    np.testing.assert_allclose(s, [0.0, 1.0, 0.5, 6.0 / 9.0])
    np.testing.assert_allclose(minmax_unscale(s, 1.0, 10.0), r)


@pytest.fixture(scope="module")
def recnet(split):
    from research.models.keras.recommendernet import RecommenderNet

    # big steps and small batches so a tiny set learns in a few epochs; 13 rows keeps ~all users
    return RecommenderNet(dim=8, min_user_rows=12, batch_size=64, start_lr=5e-3, max_lr=2e-2, min_lr=5e-3,
                          epochs=3, seed=1).fit(split.train, split.val)


def test_recommendernet_contract(recnet, split):
    _check_contract(recnet, split, rating_model=True)
    em = recnet.extra_metrics()
    assert 0 <= em["mae_scaled"] <= 1 and len(em["history"]["val_loss"]) == em["fit_epochs"]
    # the learning rate the scheduler set is the schedule's
    np.testing.assert_allclose(float(recnet.model.optimizer.learning_rate.numpy()),
                               recnet.learning_rate_at(em["fit_epochs"] - 1), rtol=1e-6)


def test_recommendernet_numpy_inference_matches_keras(recnet, split):
    import tensorflow as tf

    kept = recnet.fit_state["kept_users"]
    rows = np.flatnonzero(kept[split.test.user] & recnet.fit_state["trained_items"][split.test.item])
    u, i = split.test.user[rows], split.test.item[rows]
    keras_out = recnet.model({"user": tf.constant(u), "item": tf.constant(i)}, training=False).numpy()
    np.testing.assert_allclose(recnet.predict_scaled(u, i), keras_out, atol=1e-5)
    lo, hi = recnet.fit_state["lo"], recnet.fit_state["hi"]
    np.testing.assert_allclose(recnet.predict(u, i), lo + keras_out * (hi - lo), atol=1e-4)


def test_recommendernet_dropout_and_l2(split):
    """The tuning knobs: L2 adds the embedding penalty to the loss, dropout is off at inference,
    so the numpy inference still equals the Keras graph."""
    import tensorflow as tf

    from research.models.keras.recommendernet import RecommenderNet

    m = RecommenderNet(dim=8, min_user_rows=12, batch_size=64, start_lr=5e-3, max_lr=2e-2, min_lr=5e-3,
                       epochs=2, dropout=0.3, l2=1e-3, seed=1).fit(split.train, split.val)
    assert len(m.model.losses) == 2  # one L2 term per embedding table
    rows = np.flatnonzero(m.fit_state["kept_users"][split.test.user] & m.fit_state["trained_items"][split.test.item])
    u, i = split.test.user[rows], split.test.item[rows]
    keras_out = m.model({"user": tf.constant(u), "item": tf.constant(i)}, training=False).numpy()
    np.testing.assert_allclose(m.predict_scaled(u, i), keras_out, atol=1e-5)
    with pytest.raises(Exception, match="dropout"):
        RecommenderNet(dropout=1.0)


def test_recommendernet_filtered_users_fall_back(split):
    from research.models.keras.recommendernet import RecommenderNet

    train = split.train
    n = np.bincount(train.user[train.rated], minlength=train.n_users)
    threshold = int(np.sort(n)[len(n) // 2]) + 1  # about half the users are dropped
    m = RecommenderNet(dim=4, min_user_rows=threshold, batch_size=64, epochs=1, seed=0).fit(train, split.val)
    dropped = np.flatnonzero(n < threshold)
    assert len(dropped) and not m.fit_state["kept_users"][dropped].any()
    mu = float(train.rating[train.rated].mean())
    np.testing.assert_allclose(m.predict(dropped, np.zeros(len(dropped), int)), mu)
    pop = np.bincount(train.item, minlength=train.n_items)
    s = m.score(dropped[:1])[0]
    assert np.array_equal(np.argsort(-s, kind="stable"), np.argsort(-pop, kind="stable"))


def test_recommendernet_rejects_filtering_everyone(split):
    from research.errors import ConfigError
    from research.models.keras.recommendernet import RecommenderNet

    with pytest.raises(ConfigError, match="min_user_rows"):
        RecommenderNet(min_user_rows=400, epochs=1).fit(split.train, split.val)


# ---- dnn ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dnn(split):
    from research.models.keras.dnn import DNN

    return DNN(dim=8, layers=[16], cross_layers=1, batch_size=64, learning_rate=1e-2, epochs=3, seed=3).fit(
        split.train, split.val)


def test_dnn_contract(dnn, split):
    _check_contract(dnn, split, rating_model=True)
    assert "val_rmse" in dnn.history


def test_dnn_determinism_and_save_load(dnn, split, tmp_path):
    from research.models.keras.common import KerasRecommender
    from research.models.keras.dnn import DNN

    again = DNN(dim=8, layers=[16], cross_layers=1, batch_size=64, learning_rate=1e-2, epochs=3, seed=3).fit(
        split.train, split.val)
    # training is bit-for-bit reproducible; inference may differ in the last float32 bit when
    # tf.function traced other batch shapes before (score vs predict), hence allclose below
    for wa, wb in zip(dnn.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    u, i = split.test.user, split.test.item
    np.testing.assert_allclose(dnn.predict(u, i), again.predict(u, i), rtol=1e-6)
    dnn.save(tmp_path / "dnn")
    loaded = KerasRecommender.load(tmp_path / "dnn", split.meta)
    np.testing.assert_allclose(loaded.predict(u, i), dnn.predict(u, i), rtol=1e-6)
    np.testing.assert_allclose(loaded.score(np.arange(3)), dnn.score(np.arange(3)), rtol=1e-6)


# ---- two_tower ----------------------------------------------------------------------------
TT = dict(dim=8, id_dim=4, batch_size=64, learning_rate=1e-2, epochs=3, synopsis_terms=4, seed=5,
          feature_dims={"genres": 4, "studios": 2, "type": 2, "source": 2, "synopsis": 4})


@pytest.fixture(scope="module")
def two_tower(split):
    from research.models.keras.two_tower import TwoTower

    return TwoTower(**TT).fit(split.train, split.val)


def test_two_tower_contract(two_tower, split):
    _check_contract(two_tower, split, rating_model=False)
    assert "val_ndcg_at_10" in two_tower.history and "ndcg_at_10" not in two_tower.history
    users = np.arange(5)
    np.testing.assert_allclose(two_tower.score(users), two_tower.user_vectors()[users] @ two_tower.item_vectors().T)


def test_two_tower_validation_ndcg_matches_harness(two_tower, split):
    from research.eval.harness import evaluate

    best = two_tower.history["val_ndcg_at_10"][two_tower.best_epoch - 1]
    harness = evaluate(two_tower, split, k=10, part="val").summary["ndcg@10"]
    assert best == pytest.approx(harness, abs=1e-5)


def test_two_tower_embeds_cold_items_by_features(two_tower, split):
    meta = split.meta
    cold = np.setdiff1d(np.arange(meta.n_items), split.train.items_present())
    assert len(cold) >= 2  # the two catalogue-only anime at least
    v = two_tower.embed_items(cold)
    assert (np.linalg.norm(v, axis=1) > 0.5).all()  # unit vectors, not zeros
    # the id embedding of an anime never trained on stays 0: its vector is its features' vector
    ids = two_tower.model.item_id.embeddings.numpy()
    assert not ids[cold].any()
    feats = two_tower._item_features()
    same = [(a, b) for a in cold for b in cold if a < b
            and all(np.array_equal(x[a], x[b]) for x in feats.arrays().values())]
    differ = [(a, b) for a in cold for b in cold if a < b and (a, b) not in same]
    for a, b in same:
        np.testing.assert_allclose(v[list(cold).index(a)], v[list(cold).index(b)], atol=1e-6)
    assert differ and all(not np.allclose(v[list(cold).index(a)], v[list(cold).index(b)]) for a, b in differ)


def test_two_tower_determinism_and_save_load(two_tower, split, tmp_path):
    from research.models.keras.common import KerasRecommender
    from research.models.keras.two_tower import TwoTower

    again = TwoTower(**TT).fit(split.train, split.val)
    for wa, wb in zip(two_tower.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    users = np.arange(split.meta.n_users)
    np.testing.assert_array_equal(two_tower.score(users), again.score(users))
    two_tower.save(tmp_path / "tt")
    loaded = KerasRecommender.load(tmp_path / "tt", split.meta)
    np.testing.assert_allclose(loaded.score(users), two_tower.score(users), atol=1e-6)
    np.testing.assert_allclose(loaded.item_vectors(), two_tower.item_vectors(), atol=1e-6)


def test_recommendernet_save_load(recnet, split, tmp_path):
    from research.models.keras.common import KerasRecommender

    recnet.save(tmp_path / "rn")
    loaded = KerasRecommender.load(tmp_path / "rn", split.meta)
    u, i = split.test.user, split.test.item
    np.testing.assert_allclose(loaded.predict(u, i), recnet.predict(u, i), rtol=1e-6)
    assert loaded.extra_metrics()["mae_scaled"] == recnet.extra_metrics()["mae_scaled"]


def test_two_tower_without_history_or_features(split):
    from research.models.keras.two_tower import TwoTower

    # ids only, no history: the user tower is the id embedding alone; cold anime share one vector
    m = TwoTower(**{**TT, "use_history": False, "side_features": [], "epochs": 1}).fit(split.train)
    assert m.score(np.arange(3)).shape == (3, split.meta.n_items)
    cold = np.setdiff1d(np.arange(split.meta.n_items), split.train.items_present())
    v = m.embed_items(cold)
    np.testing.assert_allclose(v, np.broadcast_to(v[0], v.shape), atol=1e-6)


def test_two_tower_heldout_users_validate_folded_in():
    """Held-out users: the id-free tower validates on the validation users' histories (``fit_split``
    passes them apart), so its early-stopping ndcg is the harness's ``part="val"`` folded in."""
    from research.data.splits import heldout_users
    from research.eval.harness import evaluate
    from research.models.keras.two_tower import TwoTower

    split = heldout_users(_data().interactions, 0.2, 0.2, 0.7, seed=1)
    m = TwoTower(**{**TT, "user_id": False, "val_users": 10_000}).fit_split(split)
    h = m.history["val_ndcg_at_10"]
    harness = evaluate(m, split, part="val").summary["ndcg@10"]
    assert h[m.best_epoch - 1] == pytest.approx(harness, abs=1e-5)
    plain = TwoTower(**{**TT, "user_id": False, "val_users": 10_000}).fit(split.train, split.fit_val())
    assert plain.history["val_ndcg_at_10"] != pytest.approx(h, abs=1e-5)  # empty histories before
