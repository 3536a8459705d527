"""Fold-in: ``Recommender.score_history`` scores users given only by a ``History`` (their anime and
ratings), without refitting.

For every model that folds in, a training user's own training history gives back what ``score``
gives that user (exactly for the classical models; implicit ALS within a stated tolerance), a new
user's history gives finite scores and a ``recommend_history`` list without the history's anime,
and malformed input raises ``HistoryError``. Models that cannot fold in raise ``NotSupported``.
The registry is iterated: a newly registered model must be added to ``FOLD_IN`` or
``NO_FOLD_IN`` here, so a model without fold-in is noticed. Keras models are left to their own
suites (this file never imports TensorFlow).
"""
import importlib.util

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from research.data.interactions import build_dataset
from research.data.splits import random_split
from research.models import registry
from research.models.base import History, HistoryError, NotSupported

#: models whose ``score_history`` works (the classical ones and implicit ALS)
FOLD_IN = {"global_mean", "bias", "popularity", "item_knn", "user_knn", "ease", "content", "kmeans",
           "implicit_als"}
#: models that raise NotSupported (say why in the model); names not registered are ignored
NO_FOLD_IN = {"surprise_svd", "surprise_svdpp", "surprise_knnbaseline", "implicit_bpr", "blend"}
PEER_EXTRA = {"implicit_als": "implicit", "implicit_bpr": "implicit", "surprise_svd": "surprise",
              "surprise_svdpp": "surprise", "surprise_knnbaseline": "surprise"}
PARAMS = {
    "user_knn": {"k": 6},
    "item_knn": {"k": 6},
    "content": {"min_df": 1, "max_features": 100},
    "kmeans": {"n_clusters": 3, "svd_components": 4, "n_init": 2},
    "ease": {"lam": 10.0},
    "implicit_als": {"factors": 8, "iterations": 50, "num_threads": 1},
    "implicit_bpr": {"factors": 8, "iterations": 10, "num_threads": 1},
    "surprise_svd": {"n_factors": 4, "n_epochs": 5},
    "surprise_svdpp": {"n_factors": 4, "n_epochs": 3},
    "surprise_knnbaseline": {"k": 5},
}
#: the variants whose own-history fold-in is checked against ``score``
VARIANTS = [("global_mean", {}), ("bias", {}), ("popularity", {}),
            *[("item_knn", {"similarity": s}) for s in ("baseline", "binary")],
            ("item_knn", {"history": "centred"}),
            *[("user_knn", {"similarity": s})
              for s in ("pearson", "adjusted_cosine", "baseline", "cosine", "binary")],
            ("user_knn", {"history": "centred", "similarity": "baseline"}),
            ("ease", {}), ("ease", {"weighting": "binary", "lam": 5.0}),
            ("content", {}), ("content", {"implicit_weight": 0.0}),
            ("kmeans", {}), ("kmeans", {"features": ["genre"], "genre_taste": "centred"}),
            ("kmeans", {"features": ["svd"], "rank_by": "rating"})]

N_USERS, N_HELD, N_ITEMS = 40, 6, 50
GENRES = ["Action", "Comedy", "Drama", "Mecha", "Romance", "Sci-Fi", "Slice of Life"]
WORDS = ["robot", "pilot", "school", "love", "war", "space", "festival", "detective", "magic", "sword"]


def world(seed=1):
    """Low-rank 1-10 ratings of ``N_USERS + N_HELD`` users over a catalogue with side features;
    a few rows watched without a score, three catalogue anime nobody watched."""
    r = np.random.default_rng(seed)
    n_users = N_USERS + N_HELD
    pu, qi = r.normal(size=(n_users, 3)), r.normal(size=(N_ITEMS, 3))
    rows = []
    for u in range(n_users):
        for i in r.choice(N_ITEMS, int(r.integers(6, 16)), replace=False):
            rows.append((500 + u, 10 + i, float(np.clip(np.round(6.5 + 1.6 * pu[u] @ qi[i]), 1, 10))))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame.loc[r.random(len(frame)) < 0.08, "rating"] = np.nan
    ids = np.arange(10, 10 + N_ITEMS + 3)
    table = pd.DataFrame({
        "name": [f"Anime {i}" for i in ids],
        "genres": [list(r.choice(GENRES, int(r.integers(1, 4)), replace=False)) for _ in ids],
        "type": r.choice(["TV", "Movie", "OVA"], len(ids)),
        "studios": [[str(s)] for s in r.choice(["Sunrise", "Madhouse", "Bones", "Kyoto"], len(ids))],
        "source": r.choice(["Manga", "Original", "Light novel"], len(ids)),
        "synopsis": [" ".join(r.choice(WORDS, 7)) for _ in ids],
    }, index=ids)
    return build_dataset(frame, table, name="fold-in")


@pytest.fixture(scope="module")
def data():
    """(split of the first N_USERS users' rows, every row of the N_HELD held-out users)."""
    inter = world().interactions
    held = inter.user >= N_USERS  # users 0.. in id order; the last N_HELD never reach a fit
    split = random_split(inter.take(~held), test_fraction=0.2, val_fraction=0.1, seed=0)
    return split, inter.take(held)


def _available(name):
    extra = PEER_EXTRA.get(name)
    return extra is None or importlib.util.find_spec(extra) is not None


def _build(name, extra, split):
    if not _available(name):
        pytest.skip(f"{name} needs the peers extra ({PEER_EXTRA[name]})")
    return registry.build(name, {**PARAMS.get(name, {}), **extra}, seed=3).fit(split.train, split.val)


@pytest.fixture(scope="module")
def fitted(data):
    cache = {}

    def get(name, **extra):
        key = (name, tuple(sorted((k, str(v)) for k, v in extra.items())))
        if key not in cache:
            cache[key] = _build(name, extra, data[0])
        return cache[key]
    return get


def own_history(train):
    users = train.users_present()
    return users, History.from_interactions(train, users, model_users=True)


CLASSICAL = sorted(n for n in registry.MODELS if n not in registry.KERAS_MODELS)


# ---- the registry: every model is accounted for ----------------------------------------------
def test_every_non_keras_model_is_listed():
    listed = FOLD_IN | NO_FOLD_IN
    assert not FOLD_IN & NO_FOLD_IN
    missing = [n for n in CLASSICAL if n not in listed]
    assert not missing, (f"add {missing} to FOLD_IN (and implement score_history) or to NO_FOLD_IN "
                         f"(score_history raises NotSupported, with the reason)")
    assert FOLD_IN <= set(registry.MODELS)


@pytest.mark.parametrize("name", CLASSICAL)
def test_fold_in_or_not_supported(name, fitted, data):
    model = fitted(name)
    _, h = own_history(data[0].train)
    if name in FOLD_IN:
        assert model.score_history(h).shape == (len(h), data[0].train.n_items)
    else:
        with pytest.raises(NotSupported, match=type(model).__name__):
            model.score_history(h)
        with pytest.raises(NotSupported):
            model.recommend_history(h, k=3)


# ---- a training user's own history gives back ``score`` -------------------------------------
@pytest.mark.parametrize("name,extra", VARIANTS, ids=[f"{n}-{e}" for n, e in VARIANTS])
def test_own_history_reproduces_score_exactly(name, extra, fitted, data):
    """The classical models rebuild the user from the history with the fit's own operations in
    the same order, so the scores are bit-identical (not merely close)."""
    model = fitted(name, **extra)
    users, h = own_history(data[0].train)
    np.testing.assert_array_equal(model.score_history(h), model.score(users))
    if name == "kmeans":
        np.testing.assert_array_equal(model.history_labels(h), model.labels_[users])


def test_bias_folds_in_the_user_bias(fitted, data):
    """The fit's last step is b_u = Σ(r − μ − b_i) / (n_u + damping) from the final b_i: folding it
    in from a user's training ratings gives the fitted b_u (up to float summation order)."""
    model = fitted("bias")
    users, h = own_history(data[0].train)
    np.testing.assert_allclose(model.user_bias(h), model.bu[users], rtol=0, atol=1e-12)
    # and the fold-in ratings are the fitted model's predictions for those users
    rows, items = np.repeat(np.arange(3), 4), np.tile(np.arange(4), 3)
    np.testing.assert_allclose(model.predict_history(h, rows, items), model.predict(users[rows], items), atol=1e-9)


def test_user_knn_without_the_self_mark_finds_itself(fitted, data):
    """Unmarked, a training user's history has that user as its nearest neighbour (similarity 1),
    so the scores differ: ``model_users`` is what makes the comparison with ``score`` fair."""
    model = fitted("user_knn")
    users, h = own_history(data[0].train)
    unmarked = History(h.seen, h.rated)
    assert not np.array_equal(model.score_history(unmarked), model.score(users))


@pytest.mark.parametrize("weighting", ["binary", "rating"])
def test_implicit_als_fold_in(weighting, fitted, data):
    """ALS folds in by implicit's ``recalculate_user``: the exact least-squares user vector with
    the item factors fixed. It cannot equal the fitted vector: the fit's last user step used the
    previous iteration's item factors and three conjugate-gradient steps. So (1) the folded-in
    vector solves the normal equations (float32: 1e-3 relative), and (2) after 50 iterations the
    scores are within 3% of the largest |score| (measured on this data: 0.7% binary, 0.8% rating)
    and the top-5 lists agree for nearly every user (measured: all of them)."""
    model = fitted("implicit_als", weighting=weighting)
    train = data[0].train
    users, h = own_history(train)
    got = model.score_history(h)
    want = model.score(users)
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()
    top = lambda s: np.argsort(-s, axis=1, kind="stable")[:, :5]  # noqa: E731
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(top(got), top(want))]
    assert np.mean(overlap) >= 0.95
    # (1) the normal equations of Hu, Koren & Volinsky with c = alpha * weight, p = 1 on the history
    y = model.item_factors.astype(np.float64)
    reg, alpha = model.params["regularization"], model.params["alpha"]
    x_hist = h.seen.maximum(h.rated).tocsr() if weighting == "rating" else h.seen
    lhs_rhs = []
    for row in range(0, len(h), 7):
        items = x_hist[row].indices
        c = alpha * x_hist[row].data.astype(np.float64)
        a = y.T @ y + reg * np.eye(y.shape[1]) + (y[items].T * (c - 1)) @ y[items]
        b = y[items].T @ c
        xu = np.linalg.lstsq(y, got[row].astype(np.float64), rcond=None)[0]
        lhs_rhs.append((a @ xu, b))
    for lhs, rhs in lhs_rhs:
        np.testing.assert_allclose(lhs, rhs, rtol=1e-3, atol=1e-3 * np.abs(rhs).max())


# ---- new users -------------------------------------------------------------------------------
def new_histories(held, n_items):
    """The held-out users (never in a fit), a list-built user with unrated anime only, and an
    empty history."""
    hist = History.from_interactions(held)
    rows, items, ratings = hist.triples()
    lists = [items[rows == r] for r in range(len(hist))] + [np.array([0, 5, 11]), np.array([], np.int64)]
    scores = [ratings[rows == r] for r in range(len(hist))] + [np.full(3, np.nan), np.array([])]
    return History.from_lists(lists, scores, n_items=n_items)


@pytest.mark.parametrize("name", sorted(FOLD_IN))
def test_new_users_finite_scores_and_lists_without_their_anime(name, fitted, data):
    split, held = data
    model = fitted(name)
    h = new_histories(held, split.train.n_items)
    assert h.model_users.tolist() == [-1] * len(h)
    s = model.score_history(h)
    assert s.shape == (len(h), split.train.n_items)
    assert np.isfinite(s).all()
    if not model.ranks:
        return
    k = 5
    candidates = np.zeros(split.train.n_items, bool)
    candidates[split.train.items_present()] = True
    items, scores = model.recommend_history(h, k=k, candidates=candidates)
    assert items.shape == scores.shape == (len(h), k)
    assert (items >= 0).all() and candidates[items].all()
    assert not h.seen[np.repeat(np.arange(len(h)), k), items.ravel()].any()  # never their own anime
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    # exclude=None puts them back; the order is the scores'
    items_all, _ = model.recommend_history(h, k=k, exclude=None, candidates=candidates)
    best = np.where(candidates, s, -np.inf).max(axis=1)
    np.testing.assert_allclose(s[np.arange(len(h)), items_all[:, 0]], best)


@pytest.mark.parametrize("name", sorted(FOLD_IN))
def test_fold_in_survives_save_and_load(name, fitted, data, tmp_path):
    split, held = data
    model = fitted(name)
    model.save(tmp_path / name)
    again = type(model).load(tmp_path / name, split.train.meta)
    h = new_histories(held, split.train.n_items)
    np.testing.assert_array_equal(again.score_history(h), model.score_history(h))


# ---- the History type and bad input ----------------------------------------------------------
def test_history_keeps_unrated_rows_and_the_last_duplicate(data):
    split, _ = data
    h = History.from_lists([[3, 1, 3, 2], [4]], [[7, np.nan, 9, np.nan], [np.nan]], n_items=split.train.n_items)
    assert h.seen[0].indices.tolist() == [1, 2, 3] and h.seen[1].indices.tolist() == [4]
    assert h.rated[0].indices.tolist() == [3] and h.rated[0].data.tolist() == [9.0]  # last wins
    assert h.rated[1].nnz == 0
    rows, items, ratings = h.triples()
    assert rows.tolist() == [0, 0, 0, 1] and items.tolist() == [1, 2, 3, 4]
    assert np.isnan(ratings[[0, 1, 3]]).all() and ratings[2] == 9.0
    np.testing.assert_allclose(h.rating_means(), [9.0, 0.0])
    sub = h.take([1])
    assert len(sub) == 1 and sub.seen[0].indices.tolist() == [4]
    # from_interactions: every interaction, rated or not, and the ratings where present
    t = split.train
    users, full = own_history(t)
    assert full.seen.nnz == len(t) and full.rated.nnz == int(t.rated.sum())
    assert full.model_users.tolist() == users.tolist()


@pytest.mark.parametrize("items,ratings,match", [
    ([[0, 999]], None, "outside"),          # item index beyond the model's items
    ([[-1, 2]], None, "outside"),
    ([[0.5, 2]], None, "integers"),
    ([[0, 2]], [[7.0]], "2 items but 1 ratings"),
    ([[0, 2]], [[7.0, np.inf]], "finite"),
    ([[0, 2], [1]], [[7.0, 8.0]], "2 item lists but 1 rating lists"),
])
def test_bad_lists_raise(items, ratings, match):
    with pytest.raises(HistoryError, match=match):
        History.from_lists(items, ratings, n_items=60)


@pytest.mark.parametrize("name", sorted(FOLD_IN))
def test_bad_history_raises_a_clear_error(name, fitted, data):
    split, _ = data
    model = fitted(name)
    n_items = split.train.n_items
    wrong = History.from_lists([[0, 1]], n_items=n_items + 1)
    with pytest.raises(HistoryError, match=f"{type(model).__name__}.*{n_items + 1} item columns"):
        model.score_history(wrong)
    with pytest.raises(HistoryError, match="History"):
        model.score_history(sp.csr_matrix((1, n_items)))  # a matrix is not a History
    ok = History.from_lists([[0, 1]], n_items=n_items)
    with pytest.raises(HistoryError, match="exclude"):
        model.recommend_history(ok, k=3, exclude=sp.csr_matrix((2, n_items)))
    bad_user = History(ok.seen, ok.rated, model_users=[split.train.n_users + 5])
    with pytest.raises(HistoryError, match="model_users"):
        model.score_history(bad_user)


def test_history_checks_its_own_shape():
    with pytest.raises(HistoryError, match="one shape"):
        History(sp.csr_matrix((2, 5)), sp.csr_matrix((2, 6)))
    with pytest.raises(HistoryError, match="subset|also be in seen"):
        History(sp.csr_matrix((1, 5)), sp.csr_matrix(([8.0], ([0], [2])), shape=(1, 5)))
    with pytest.raises(HistoryError, match="model_users"):
        History(sp.csr_matrix((2, 5)), sp.csr_matrix((2, 5)), model_users=[0])
