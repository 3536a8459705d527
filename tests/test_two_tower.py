"""``two_tower``'s full-softmax loss and its id-free user tower (``user_id = False``): the loss
against a numpy reference on a 2-user x 4-anime batch, identical vectors for identical histories,
and ``encode_history`` reproducing the training users' vectors. A few seconds each."""
import numpy as np
import pandas as pd
import pytest

import research  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from research.data.interactions import build_dataset

pytestmark = pytest.mark.keras

SMALL = dict(dim=6, id_dim=4, batch_size=16, learning_rate=1e-2, synopsis_terms=2, seed=1,
             feature_dims={"genres": 2, "studios": 2, "type": 2, "source": 2, "synopsis": 2})


def _table(n):
    genres = ["Action", "Comedy", "Drama"]
    return pd.DataFrame({"name": [f"Anime {i}" for i in range(n)],
                         "genres": [[genres[i % 3], genres[(i + 1) % 3]] for i in range(n)],
                         "type": ["TV", "Movie"] * (n // 2) + ["TV"] * (n % 2),
                         "studios": [[f"Studio {i % 2}"] for i in range(n)],
                         "source": ["Manga"] * n, "episodes": [12.0] * n,
                         "synopsis": [f"robot school story {i % 3}" for i in range(n)]},
                        index=np.arange(100, 100 + n))


def _fit(frame, table, **kw):
    from research.models.keras.two_tower import TwoTower

    data = build_dataset(frame, table, name="tiny").interactions
    return TwoTower(**{**SMALL, **kw}).fit(data), data


# ---- the full-softmax loss ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    """2 users x 4 anime (anime 104 is in the catalogue with no interaction: not a candidate)."""
    frame = pd.DataFrame({"user": [1, 1, 1, 2, 2], "item": [100, 101, 102, 101, 103],
                          "rating": [8.0, 6.0, 9.0, 7.0, 5.0]})
    model, data = _fit(frame, _table(5), loss="full_softmax", epochs=2, temperature=0.2)
    return model, data


def _reference(q, c, hist, users, items, cand, temperature, mask, weight=None):
    """Numpy: sum over pairs of -log softmax(q c^T / T) at the target, over the candidate anime,
    the user's other training anime out of the denominator when ``mask``."""
    total = 0.0
    for b, (u, i) in enumerate(zip(users, items)):
        logits = {j: float(q[b] @ c[j]) / temperature for j in cand}
        den = [j for j in cand if not (mask and j in hist[u] and j != i)]
        lse = np.log(sum(np.exp(logits[j]) for j in den))
        total += (1.0 if weight is None else weight[b]) * (lse - logits[i])
    return total


@pytest.mark.parametrize("mask", [True, False])
def test_full_softmax_loss_matches_numpy(tiny, mask):
    import tensorflow as tf

    model, data = tiny
    m = model.model
    cand = [int(j) for j in np.flatnonzero(model.fit_state["trained_items"])]
    assert cand == [0, 1, 2, 3]  # anime 104 (index 4) had no training row
    csr = data.to_csr("ones")
    hist = {u: set(csr[u].indices.tolist()) for u in range(2)}
    users, items = np.array([0, 0, 1], np.int32), np.array([0, 2, 3], np.int32)
    q = m.user_tower(tf.constant(users), leave_out=tf.constant(items)).numpy()
    c = m.item_tower(tf.range(5)).numpy()
    weight = np.array([1.0, 0.5, 2.0], np.float32)
    m.mask_history = mask
    try:
        got = float(m.full_softmax_loss(tf.constant(q), tf.constant(users), tf.constant(items)))
        got_w = float(m.full_softmax_loss(tf.constant(q), tf.constant(users), tf.constant(items), tf.constant(weight)))
        via_step = float(m.compute_loss({"user": tf.constant(users), "item": tf.constant(items)}))
    finally:
        m.mask_history = True
    want = _reference(q, c, hist, users, items, cand, 0.2, mask)
    assert got == pytest.approx(want, rel=1e-5)
    assert got_w == pytest.approx(_reference(q, c, hist, users, items, cand, 0.2, mask, weight), rel=1e-5)
    assert via_step == pytest.approx(want, rel=1e-5)  # the training step's loss (l2 = 0)
    # the two designs differ on this batch (user 0 has other training anime): the test can tell them apart
    assert want != pytest.approx(_reference(q, c, hist, users, items, cand, 0.2, not mask), rel=1e-4)


# ---- the id-free user tower --------------------------------------------------------------
def _twin_frame(seed=0, n_users=24, n_items=20, per_user=8):
    """Random histories, user 1001 a copy of user 1000 (same anime, other ratings)."""
    r = np.random.default_rng(seed)
    rows = [(1000 + u, 100 + i, float(r.integers(1, 11))) for u in range(n_users)
            for i in r.choice(n_items, per_user, replace=False)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    twin = frame[frame.user == 1000].assign(user=1001, rating=lambda d: 11.0 - d.rating)
    return pd.concat([frame[frame.user != 1001], twin], ignore_index=True), n_items


@pytest.fixture(scope="module")
def twins():
    frame, n_items = _twin_frame()
    out = {}
    for user_id in (False, True):
        model, data = _fit(frame, _table(n_items), user_id=user_id, loss="full_softmax", epochs=3)
        out[user_id] = model
    a, b = (int(x) for x in data.meta.users.index([1000, 1001]))
    return out, data, a, b


def test_same_history_same_vector_without_user_id(twins):
    models, data, a, b = twins
    csr = data.to_csr("ones")
    assert np.array_equal(csr[a].indices, csr[b].indices)
    v = models[False].user_vectors()
    np.testing.assert_allclose(v[a], v[b], atol=1e-6)
    np.testing.assert_allclose(models[False].score([a])[0], models[False].score([b])[0], atol=1e-6)
    # with a user-id embedding the twins' vectors part (so the check above can fail)
    w = models[True].user_vectors()
    assert np.abs(w[a] - w[b]).max() > 1e-3


def test_encode_history_reproduces_training_users(twins):
    import tensorflow as tf

    models, data, _, _ = twins
    model = models[False]
    users = np.arange(data.n_users)
    in_graph = model.model.user_tower(tf.constant(users, tf.int32)).numpy()  # the tower training used
    csr = data.to_csr("ones")
    lists = [np.r_[csr[u].indices[::-1], csr[u].indices[:1]] for u in users]  # any order, a duplicate
    for enc in (model.encode_history(csr), model.encode_history(lists)):
        assert enc.shape == (data.n_users, model.dim)
        np.testing.assert_allclose(enc, in_graph, atol=1e-6)
        np.testing.assert_allclose(enc, model.user_vectors(), atol=1e-6)
    # a history the model never saw is encoded too, and moves the vector
    new = model.encode_history([csr[0].indices[:3]])
    assert new.shape == (1, model.dim) and np.abs(new[0] - in_graph[0]).max() > 1e-4
    with pytest.raises(ValueError):
        model.encode_history([np.array([data.n_items])])


def test_fold_in_equals_score_without_user_id_and_is_refused_with_it(twins):
    from research.models.base import History, NotSupported

    models, data, _, _ = twins
    users = np.arange(data.n_users)
    h = History.from_interactions(data, users)
    np.testing.assert_allclose(models[False].score_history(h), models[False].score(users), atol=1e-5)
    items, _ = models[False].recommend_history(h.take([0]), k=3)
    assert not np.isin(items[0], h.seen[0].indices).any()
    with pytest.raises(NotSupported, match="user_id = false"):
        models[True].score_history(h)


def test_user_id_false_save_load(twins, tmp_path):
    from research.models.keras.common import KerasRecommender

    model = twins[0][False]
    data = twins[1]
    model.save(tmp_path / "tt")
    loaded = KerasRecommender.load(tmp_path / "tt", data.meta)
    assert loaded.user_id is False and loaded.loss == "full_softmax"
    assert loaded.model.user_id is None and "user_id_embedding" not in str([w.name for w in loaded.model.weights])
    users = np.arange(data.n_users)
    np.testing.assert_allclose(loaded.score(users), model.score(users), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_history(data.to_csr("ones")), model.user_vectors(), atol=1e-6)


def test_rejects_bad_options():
    from research.errors import ConfigError
    from research.models.keras.two_tower import TwoTower

    with pytest.raises(ConfigError):
        TwoTower(loss="sampled")
    with pytest.raises(ConfigError):
        TwoTower(user_id=False, use_history=False)


def test_full_softmax_id_free_resume_matches_uninterrupted(tmp_path):
    import tensorflow as tf

    from research.models.keras.two_tower import TwoTower

    class Crash(Exception):
        pass

    class CrashAfter(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Crash()

    frame, n_items = _twin_frame(seed=2)
    data = build_dataset(frame, _table(n_items), name="tiny").interactions
    val = data.take(np.arange(0, len(data), 7))  # overlaps train: only the ndcg log matters here
    cfg = dict(SMALL, loss="full_softmax", user_id=False, epochs=4, patience=10)
    whole = TwoTower(**cfg).fit(data, val)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        TwoTower(**cfg, checkpoint_dir=str(ckpt)).fit(data, val, callbacks=[CrashAfter()])
    resumed = TwoTower(**cfg, checkpoint_dir=str(ckpt)).fit(data, val)
    assert resumed.history == whole.history and len(whole.history["epoch"]) == 4
    np.testing.assert_array_equal(resumed.user_vectors(), whole.user_vectors())
    np.testing.assert_array_equal(resumed.item_vectors(), whole.item_vectors())


def test_history_mask_leaves_out_anime_that_are_not_candidates():
    """A validation user's history (``val_history``) may hold an anime no training row has: it is
    not a candidate, so it has no column; the history mask must not turn its missing column (-1)
    into the last candidate's."""
    from research.models.keras import full_softmax
    from research.models.keras.two_tower import TwoTower, _candidate_history

    col = np.array([0, 1, -1, 2], np.int32)
    cols, splits = _candidate_history(col, np.array([0, 2, 2, 3, 1], np.int32), np.array([0, 2, 2, 5]))
    assert cols.tolist() == [0, 2, 1] and splits.tolist() == [0, 1, 1, 3]
    with pytest.raises(ValueError, match="drop non-candidates"):
        full_softmax.history_mask_table(1, 3, [0, 2], np.array([0, -1]))

    frame = pd.DataFrame({"user": [1, 1, 1, 2, 2, 3, 3, 3], "item": [100, 101, 102, 101, 103, 101, 104, 100],
                          "rating": [8.0, 6.0, 9.0, 7.0, 5.0, 6.0, 7.0, 8.0]})
    data = build_dataset(frame, _table(5), name="tiny").interactions
    user3 = data.user == data.meta.users.index([3])[0]
    last = user3 & (data.item == data.meta.items.index([100])[0])
    train, val_history, val = (data.take(np.flatnonzero(~user3)), data.take(np.flatnonzero(user3 & ~last)),
                               data.take(np.flatnonzero(last)))
    m = TwoTower(**{**SMALL, "user_id": False, "loss": "full_softmax", "mask_history": True, "epochs": 1}).fit(
        train, val, val_history=val_history)
    table = m.model.mask_table.numpy()
    u3 = int(val_history.user[0])
    assert table[u3].tolist() == [False, True, False, False]  # anime 101 only; 104 is no candidate
