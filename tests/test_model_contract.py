"""The Recommender contract for every registered model that needs neither TensorFlow nor a peer:
top-k lists are k unique unseen items sorted by score, predictions lie on the rating scale, the
same seed gives the same scores, nearest-neighbour queries never return the query, and fold-in
either scores a user known only by a list or raises NotSupported.

Every model of the registry is here (the peers' have their own suite, ``test_peers.py``, since
they need the "peers" extra); a new model joins by its registry line, with small parameters in
``PARAMS`` if its defaults are slow. Keras models carry the ``keras`` mark.
"""
import numpy as np
import pandas as pd
import pytest

from research.data.interactions import build_dataset
from research.data.splits import random_split
from research.models import registry
from research.models.base import NotSupported

KERAS = sorted(registry.KERAS_MODELS)
MODELS = [pytest.param(name, marks=pytest.mark.keras) if name in registry.KERAS_MODELS else name
          for name in registry.MODELS if name not in registry.PEER_MODELS]
PARAMS = {
    "user_knn": {"k": 5},
    "item_knn": {"k": 5},
    "content": {"min_df": 1, "max_features": 100},
    "kmeans": {"n_clusters": 3, "svd_components": 4, "n_init": 2},
    "embedding_dot": {"dim": 4, "epochs": 3},
    "recommendernet": {"min_user_rows": 1, "epochs": 2, "batch_size": 64},
    "two_tower": {"dim": 8, "epochs": 2, "batch_size": 64},
    "dnn": {"epochs": 2, "batch_size": 64},
    "ease": {"lam": 10.0},
    "multvae": {"hidden": [16], "latent": 8, "epochs": 3, "batch_size": 8},
}
K = 5

GENRES = ["Action", "Comedy", "Drama", "Mecha", "Romance", "Sci-Fi"]
WORDS = ["robot", "pilot", "school", "love", "war", "space", "festival", "detective", "magic", "sword"]


def tiny_dataset(seed=0, n_users=30, n_items=40, per_user=12):
    """Low-rank 1-10 ratings over a catalogue with every side feature; some rows unrated, two
    catalogue anime nobody watched, one anime with no side features at all."""
    r = np.random.default_rng(seed)
    pu, qi = r.normal(size=(n_users, 3)), r.normal(size=(n_items, 3))
    rows = []
    for u in range(n_users):
        for i in r.choice(n_items, per_user, replace=False):
            rows.append((1000 + u, 1 + i, float(np.clip(np.round(6 + 1.5 * pu[u] @ qi[i]), 1, 10))))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame.loc[r.random(len(frame)) < 0.05, "rating"] = np.nan  # "watched, not scored"
    ids = np.arange(1, n_items + 3)  # + two anime nobody rated
    table = pd.DataFrame({
        "name": [f"Anime {i}" for i in ids],
        "genres": [list(r.choice(GENRES, 2, replace=False)) for _ in ids],
        "type": r.choice(["TV", "Movie", "OVA"], len(ids)),
        "studios": [[str(s)] for s in r.choice(["Sunrise", "Madhouse", "Bones"], len(ids))],
        "source": r.choice(["Manga", "Original"], len(ids)),
        "synopsis": [" ".join(r.choice(WORDS, 8)) for _ in ids],
    }, index=ids)
    table = table.drop(index=7)  # anime 7 is rated but has no catalogue row: zero side features
    return build_dataset(frame, table, name="tiny")


@pytest.fixture(scope="module")
def split():
    return random_split(tiny_dataset().interactions, test_fraction=0.2, val_fraction=0.1, seed=0)


class _Fitted(dict):
    """Fits a model the first time a test asks for it (so ``-m "not keras"`` never loads TF)."""

    def __init__(self, split):
        super().__init__()
        self.split = split

    def __missing__(self, name):
        self[name] = registry.build(name, PARAMS.get(name, {}), seed=3).fit(self.split.train, self.split.val)
        return self[name]


@pytest.fixture(scope="module")
def fitted(split):
    return _Fitted(split)


@pytest.mark.parametrize("name", MODELS)
def test_recommend_k_unique_unseen_sorted(name, fitted, split):
    model = fitted[name]
    users = np.arange(split.train.n_users)
    seen = split.train.to_csr("ones")
    assert model.score(users[:4]).shape == (4, split.train.n_items)
    items, scores = model.recommend(users, k=K, exclude=seen)
    assert items.shape == scores.shape == (len(users), K)
    assert (items >= 0).all()                                   # a full list for everyone
    assert (np.sort(items, axis=1)[:, 1:] != np.sort(items, axis=1)[:, :-1]).all()  # unique
    assert not seen[np.repeat(users, K), items.ravel()].any()   # never a seen item
    assert (scores[:, :-1] >= scores[:, 1:]).all()              # best first
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", MODELS)
def test_predict_on_the_rating_scale(name, fitted, split):
    model = fitted[name]
    test = split.test.only_rated()
    if not model.predicts_ratings:
        with pytest.raises(NotSupported):
            model.predict(test.user, test.item)
        return
    p = model.predict(test.user, test.item)
    assert p.shape == (len(test),)
    assert np.isfinite(p).all()
    assert (p >= 1).all() and (p <= 10).all()


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_scores(name, fitted, split):
    again = registry.build(name, PARAMS.get(name, {}), seed=3).fit(split.train, split.val)
    users = np.arange(split.train.n_users)
    # Keras: training is bit-identical, but float32 inference may differ in the last bit with the
    # order batch shapes were first traced in; classical models must match exactly.
    tol = {"rtol": 1e-6, "atol": 1e-6} if name in KERAS else {"rtol": 0, "atol": 0}
    np.testing.assert_allclose(again.score(users), fitted[name].score(users), **tol)
    if again.predicts_ratings:
        t = split.test.only_rated()
        np.testing.assert_allclose(again.predict(t.user, t.item), fitted[name].predict(t.user, t.item), **tol)


# which nearest-neighbour queries each model must answer (others may raise NotSupported)
MUST_SIMILAR = {"item_knn": {"items"}, "user_knn": {"users"}, "content": {"items"}, "kmeans": {"users"},
                "ease": {"items"},
                **{name: {"items", "users"} for name in KERAS}}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("side", ["items", "users"])
def test_similar_shapes_never_the_query(name, side, fitted, split):
    model = fitted[name]
    n = split.train.n_items if side == "items" else split.train.n_users
    query = np.array([0, 3, n - 1])
    fn = model.similar_items if side == "items" else model.similar_users
    try:
        ids, sims = fn(query, k=4)
    except NotSupported:
        assert side not in MUST_SIMILAR.get(name, set()), f"{name} must offer similar_{side}"
        return
    assert ids.shape == sims.shape == (3, 4)
    assert ((ids >= 0) & (ids < n)).all()
    assert (ids != query[:, None]).all()
    assert (sims[:, :-1] >= sims[:, 1:]).all()


#: the models that fold a user in at their contract parameters (the others raise NotSupported;
#: two_tower only with user_id = false, tested in tests/test_two_tower.py)
FOLDS_IN = {"global_mean", "bias", "popularity", "user_knn", "item_knn", "content", "kmeans", "ease",
            "embedding_dot", "svdpp", "multvae"}


@pytest.mark.parametrize("name", MODELS)
def test_fold_in_scores_a_new_user_or_says_it_cannot(name, fitted, split):
    """Fold-in through the one interface: a user known only by a list gets (n, n_items) finite
    scores and a list without their own anime, or NotSupported — never zeros. Exactness per
    model against ``score`` is in tests/test_fold_in.py and the Keras models' own files."""
    from research.models.base import History

    model = fitted[name]
    rows = split.test.user == split.test.user[0]
    items, ratings = split.test.item[rows], split.test.rating[rows]
    h = History.from_lists([items, items[:2]], [ratings, ratings[:2]], n_items=split.train.n_items)
    if name not in FOLDS_IN:
        with pytest.raises(NotSupported):
            model.score_history(h)
        return
    s = model.score_history(h)
    assert s.shape == (2, split.train.n_items) and np.isfinite(s).all()
    if getattr(model, "ranks", True):
        top, _ = model.recommend_history(h, k=K)
        assert not np.isin(top[0], items).any() and not np.isin(top[1], items[:2]).any()
