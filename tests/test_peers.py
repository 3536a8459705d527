"""The peers (Surprise, implicit) as Recommenders: the Recommender contract on tiny data, and the
vectorised predictions equal to the libraries' own per-pair ``algo.predict``."""
import numpy as np
import pytest

pytest.importorskip("surprise")
pytest.importorskip("implicit")

from research.data.interactions import Interactions, Meta, Vocab  # noqa: E402
from research.data.splits import random_split  # noqa: E402
from research.eval.harness import evaluate  # noqa: E402
from research.models import registry  # noqa: E402
from research.models.peers import _top_k_mask  # noqa: E402

PEERS = ["surprise_svd", "surprise_svdpp", "surprise_knnbaseline", "implicit_als", "implicit_bpr"]
SMALL = {"surprise_svd": {"n_factors": 8, "n_epochs": 10}, "surprise_svdpp": {"n_factors": 4, "n_epochs": 5},
         "surprise_knnbaseline": {"k": 5}, "implicit_als": {"factors": 8, "iterations": 5},
         "implicit_bpr": {"factors": 8, "iterations": 20}}


def tiny(seed=0, n_users=40, n_items=60, per_user=15, extra_items=5):
    """Low-rank 1-10 ratings; ``extra_items`` catalogue items nobody rated; a few unrated rows."""
    r = np.random.default_rng(seed)
    pu, qi = r.normal(size=(n_users, 3)), r.normal(size=(n_items, 3))
    users, items, ratings = [], [], []
    for u in range(n_users):
        its = r.choice(n_items, per_user, replace=False)
        users += [u] * per_user
        items += list(its)
        ratings += list(np.clip(np.round(6 + 1.5 * (pu[u] @ qi[its].T)), 1, 10))
    ratings = np.asarray(ratings, dtype=np.float32)
    ratings[r.random(len(ratings)) < 0.05] = np.nan  # "watched, not scored"
    meta = Meta(Vocab(np.arange(n_users) + 1000), Vocab(np.arange(n_items + extra_items) + 1))
    return Interactions(np.asarray(users), np.asarray(items), ratings, meta)


@pytest.fixture(scope="module")
def split():
    return random_split(tiny(), test_fraction=0.2, val_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def fitted(split):
    return {name: registry.build(name, SMALL[name], seed=3).fit(split.train, split.val) for name in PEERS}


@pytest.mark.parametrize("name", PEERS)
def test_contract(name, fitted, split):
    m = fitted[name]
    users = np.arange(split.train.n_users)
    s = m.score(users[:7])
    assert s.shape == (7, split.train.n_items)
    seen = split.train.to_csr("ones")
    items, scores = m.recommend(users, k=10, exclude=seen)
    assert items.shape == (len(users), 10)
    for u in users:
        row = items[u][items[u] >= 0]
        assert len(set(row)) == len(row)                       # unique
        assert not np.isin(row, seen[u].indices).any()         # unseen
        assert (scores[u][:-1] >= scores[u][1:]).all()         # best first
    if m.predicts_ratings:
        p = m.predict(split.test.user, split.test.item)
        assert p.shape == (len(split.test),) and np.isfinite(p).all()
        rated = split.train.only_rated().rating
        assert p.min() >= rated.min() and p.max() <= rated.max()
    vecs = m.item_vectors()
    if vecs is not None:
        assert vecs.shape[0] == split.train.n_items
        idx, _ = m.similar_items([0, 1], k=3)
        assert idx.shape == (2, 3) and 0 not in idx[0]


@pytest.mark.parametrize("name", ["surprise_svd", "surprise_svdpp", "surprise_knnbaseline"])
def test_predict_equals_surprise(name, fitted, split):
    m = fitted[name]
    # test pairs (unseen), training pairs, and pairs with an item no one rated in training
    unseen_item = split.train.n_items - 1
    users = np.r_[split.test.user[:40], split.train.user[:20], [0, 1]]
    items = np.r_[split.test.item[:40], split.train.item[:20], [unseen_item, unseen_item]]
    ours = m.predict(users, items)
    theirs = np.array([m.algo.predict(int(u), int(i)).est for u, i in zip(users, items)])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


@pytest.mark.parametrize("similarity", ["pearson", "msd", "cosine"])
def test_knnbaseline_similarities_equal_surprise(similarity, split):
    """The vectorised neighbourhood estimate holds for every similarity the tuner searches."""
    m = registry.build("surprise_knnbaseline", {"k": 5, "similarity": similarity}, seed=0).fit(split.train)
    users, items = split.test.user[:60], split.test.item[:60]
    theirs = np.array([m.algo.predict(int(u), int(i)).est for u, i in zip(users, items)])
    np.testing.assert_allclose(m.predict(users, items), theirs, rtol=0, atol=1e-9)


def test_knnbaseline_rejects_unknown_similarity():
    with pytest.raises(Exception, match="similarity must be one of"):
        registry.build("surprise_knnbaseline", {"similarity": "jaccard"}, seed=0)


@pytest.mark.parametrize("name", ["surprise_svd", "surprise_knnbaseline"])
def test_score_is_unclipped_estimate(name, fitted, split):
    """score(u)[i] equals the unclipped per-pair estimate (ranking uses it); where the library's
    prediction is inside the scale, the two agree."""
    m = fitted[name]
    u = 5
    s = m.score(np.array([u]))[0]
    items = np.flatnonzero(m._i_inner >= 0)[:30]
    theirs = np.array([m.algo.predict(u, int(i)).est for i in items])
    inside = (theirs > m.lo) & (theirs < m.hi)
    np.testing.assert_allclose(s[items][inside], theirs[inside], atol=1e-9)


def test_implicit_score_is_factor_product(fitted):
    m = fitted["implicit_als"]
    np.testing.assert_allclose(m.score(np.array([2]))[0], m.item_factors @ m.user_factors[2], rtol=1e-6)
    bpr = fitted["implicit_bpr"]
    assert (bpr.user_factors[:, -1] == 1).all()  # implicit's bias column: score includes item bias
    assert bpr.item_vectors().shape[1] == bpr.params["factors"]


def test_seeds_reproduce(split):
    a = registry.build("surprise_svd", SMALL["surprise_svd"], seed=7).fit(split.train)
    b = registry.build("surprise_svd", SMALL["surprise_svd"], seed=7).fit(split.train)
    c = registry.build("surprise_svd", SMALL["surprise_svd"], seed=8).fit(split.train)
    p = split.test.user, split.test.item
    np.testing.assert_array_equal(a.predict(*p), b.predict(*p))
    assert not np.array_equal(a.predict(*p), c.predict(*p))
    x = registry.build("implicit_als", SMALL["implicit_als"], seed=7).fit(split.train)
    y = registry.build("implicit_als", SMALL["implicit_als"], seed=7).fit(split.train)
    np.testing.assert_allclose(x.score(np.arange(5)), y.score(np.arange(5)), rtol=1e-5, atol=1e-6)


def test_harness_metrics(fitted, split):
    rmse_model = evaluate(fitted["surprise_svd"], split).summary
    assert {"rmse", "mae", "ndcg@10"} <= set(rmse_model)
    rank_model = evaluate(fitted["implicit_als"], split).summary
    assert "ndcg@10" in rank_model and "rmse" not in rank_model  # absent, not faked


def test_rating_weighting_uses_ratings(split):
    m = registry.build("implicit_als", {"weighting": "rating"}, seed=0)
    mat = m._matrix(split.train)
    ref = split.train.to_csr("rating")
    r, c = ref.nonzero()
    np.testing.assert_array_equal(np.asarray(mat[r, c]).ravel(), np.asarray(ref[r, c]).ravel())
    assert mat.nnz == split.train.to_csr("ones").nnz  # unrated rows kept with weight 1
    with pytest.raises(Exception):
        registry.build("implicit_als", {"weighting": "nope"}, seed=0)


def test_top_k_mask_ties_like_heapq():
    import heapq

    r = np.random.default_rng(0)
    s = r.integers(0, 4, size=(50, 12)).astype(float)  # many ties
    mask = _top_k_mask(s, 5)
    for row, mrow in zip(s, mask):
        ref = {j for j, _ in heapq.nlargest(5, enumerate(row), key=lambda t: t[1])}
        assert set(np.flatnonzero(mrow)) == ref


def test_save_load_roundtrip(fitted, split, tmp_path):
    m = fitted["surprise_svd"]
    m.save(tmp_path / "svd")
    back = type(m).load(tmp_path / "svd", split.meta)
    np.testing.assert_array_equal(back.predict(split.test.user, split.test.item),
                                  m.predict(split.test.user, split.test.item))


def test_use_validation_fits_on_train_and_val(split):
    a = registry.build("implicit_als", {**SMALL["implicit_als"], "use_validation": True}, seed=0).fit(split.train, split.val)
    b = registry.build("implicit_als", SMALL["implicit_als"], seed=0).fit(split.train_val())
    np.testing.assert_allclose(a.score(np.arange(5)), b.score(np.arange(5)), rtol=1e-5, atol=1e-6)
    s = registry.build("surprise_svd", {"use_validation": True, "n_epochs": 2}, seed=0).fit(split.train, split.val)
    assert s.algo.trainset.n_ratings == len(split.train_val().only_rated())
