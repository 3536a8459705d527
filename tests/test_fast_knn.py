"""The compiled triangle paths (research.models._kernels) against the scipy implementation they
replace: item/user-kNN's pruned similarity matrix bit for bit for every ``similarity`` option, with
and without shrinkage, over several block sizes and thread counts; EASE's Gram triangle and its B
bit for bit. The reference below is a frozen copy of ``SimilarityRows.top_k`` as it was before the
triangle path (scipy products of whole row blocks, values and co-counts separately), so a later
edit of the "products" path cannot move the goalposts."""
import zlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from research.data.interactions import Interactions, Meta, Vocab, build_dataset
from research.models import _kernels
from research.models.ease import EASE
from research.models.neighbors import SIMILARITIES, ItemKNN, SimilarityRows, UserKNN, _prune

#: the compiled paths; the rest of this file (the leaner fit, the direct CSR) runs without numba too
needs_numba = pytest.mark.skipif(not _kernels.AVAILABLE, reason="numba is not installed")


def frozen_top_k(s: SimilarityRows, k: int, block_mb: float = 64.0) -> sp.csr_matrix:
    """``SimilarityRows.top_k`` before the triangle path (commit ae07077), verbatim in substance."""
    a = s.a
    at = a.T.tocsr()
    p = sp.csr_matrix((np.ones(a.nnz, np.float32), a.indices.copy(), a.indptr.copy()), shape=a.shape)
    pt = p.T.tocsr()
    m = len(s.active)
    k = int(min(k, max(m - 1, 0)))
    step = max(1, int(block_mb * 2**20 / (8 * max(m, 1))))
    parts = []
    for r0 in range(0, m, step):
        r1 = min(r0 + step, m)
        num = (a[r0:r1] @ at).toarray()
        nr = s.norms[r0:r1]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_r = np.where(nr > 0, 1.0 / nr, 0.0).astype(np.float32)
            inv_c = np.where(s.norms > 0, 1.0 / s.norms, 0.0).astype(np.float32)
        num *= inv_r[:, None]
        num *= inv_c[None, :]
        if s.shrinkage > 0:
            cnt = (p[r0:r1] @ pt).toarray()
            num *= cnt / (cnt + np.float32(s.shrinkage))
        num[np.arange(r1 - r0), np.arange(r0, r1)] = -np.inf
        parts.append(_prune(num, k))
    counts = np.zeros(s.n, dtype=np.int64)
    if parts:
        counts[s.active] = np.concatenate([q[0] for q in parts])
        indices = s.active[np.concatenate([q[1] for q in parts])].astype(np.int32)
        data = np.concatenate([q[2] for q in parts])
    else:
        indices, data = np.zeros(0, np.int32), np.zeros(0, np.float32)
    return sp.csr_matrix((data, indices, np.r_[0, np.cumsum(counts)]), shape=(s.n, s.n))


def identical(x: sp.csr_matrix, y: sp.csr_matrix) -> bool:
    """Same structure and the same float32 bits (not merely close)."""
    x, y = x.tocsr(), y.tocsr()
    return (x.shape == y.shape and np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
            and np.array_equal(np.asarray(x.data, np.float32).view(np.int32),
                               np.asarray(y.data, np.float32).view(np.int32)))


def long_tailed(seed: int, n_users: int = 160, n_items: int = 140, per_user: int = 18,
                unrated: float = 0.15) -> Interactions:
    """Users x items with a long-tailed popularity, integer ratings (ties), some unrated rows,
    catalogue items nobody rated, single-rating items and users (zero norms once centred)."""
    r = np.random.default_rng(seed)
    pop = r.lognormal(0, 1.5, n_items - 10)  # the last 10 catalogue items: never rated
    pop /= pop.sum()
    users, items, ratings = [], [], []
    for u in range(n_users - 3):
        n = int(np.clip(r.lognormal(np.log(per_user), 0.8), 1, n_items // 2))
        for i in r.choice(n_items - 10, n, replace=False, p=pop):
            users.append(u)
            items.append(int(i))
            ratings.append(np.nan if r.random() < unrated else float(r.integers(1, 11)))
    for u in range(n_users - 3, n_users):  # users with a single rating
        users.append(u)
        items.append(int(r.integers(0, n_items - 10)))
        ratings.append(7.0)
    meta = Meta(Vocab(np.arange(n_users)), Vocab(np.arange(n_items)))
    return Interactions(np.asarray(users), np.asarray(items), np.asarray(ratings, np.float32), meta)


@needs_numba
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("shrinkage", [0.0, 7.5])
@pytest.mark.parametrize("cls", [ItemKNN, UserKNN])
def test_knn_triangle_equals_the_scipy_products_bit_for_bit(cls, similarity, shrinkage):
    data = long_tailed(seed=zlib.crc32(f"{cls.__name__}/{similarity}/{shrinkage}".encode()) % 1000)
    model = cls(k=9, similarity=similarity, shrinkage=shrinkage, block_mb=0.01).fit(data)
    s = model.sim_rows_
    assert len(s.active) < s.n or cls is UserKNN  # inactive items exercised on the item side
    assert len(range(0, len(s.active), max(1, int(0.01 * 2**20 / (8 * len(s.active)))))) > 3  # many blocks
    want = frozen_top_k(s, 9, block_mb=0.01)
    assert want.nnz > 0
    assert identical(model.sim_, want)  # the fit's default (triangle) path
    assert identical(s.top_k(9, block_mb=0.01, method="products"), want)
    for block_mb, n_jobs in [(64.0, 1), (0.003, 2), (0.05, 3)]:
        assert identical(s.top_k(9, block_mb=block_mb, n_jobs=n_jobs, method="triangle"), want)


@needs_numba
def test_knn_triangle_with_every_row_as_its_own_block_and_k_past_the_rows():
    data = long_tailed(seed=5, n_users=40, n_items=35, per_user=8)
    s = ItemKNN(k=3, shrinkage=2.0).fit(data).sim_rows_
    tiny = 1e-9  # one row a block
    for k in (1, 3, 50):
        want = frozen_top_k(s, k, block_mb=tiny)
        assert identical(s.top_k(k, block_mb=tiny, n_jobs=2, method="triangle"), want)


@needs_numba
def test_knn_triangle_on_degenerate_inputs():
    meta = Meta(Vocab(np.arange(3)), Vocab(np.arange(4)))
    one = Interactions(np.array([0]), np.array([2]), np.array([5.0], np.float32), meta)
    m = ItemKNN(k=5, similarity="cosine").fit(one)  # a single active item: no neighbour
    assert m.sim_.nnz == 0 and m.sim_.shape == (4, 4)
    empty = SimilarityRows(sp.csr_matrix((4, 6), dtype=np.float32), shrinkage=3.0)
    assert identical(empty.top_k(2, method="triangle"), frozen_top_k(empty, 2))


def test_the_fitted_model_behaves_as_before():
    """Scores and predictions come from ``sim_``; with ``sim_`` identical they are too, and the
    scipy path's other users (unpruned rows for similar_items) still agree with it."""
    data = long_tailed(seed=11)
    m = ItemKNN(k=6, shrinkage=4.0, block_mb=0.02).fit(data)
    ref = frozen_top_k(m.sim_rows_, 6, block_mb=0.02)
    users = np.arange(data.n_users)
    hist = data.to_csr("ones")
    np.testing.assert_array_equal(m.score(users), np.asarray((hist @ ref.T).toarray(), np.float64))
    rows = m.sim_rows_.rows(np.arange(data.n_items))  # scipy path, patterns built on first use
    np.fill_diagonal(rows, -np.inf)
    kept = m.sim_.toarray()
    nz = kept != 0
    np.testing.assert_array_equal(kept[nz], rows[nz])  # every kept value is the unpruned one


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("cls", [ItemKNN, UserKNN])
def test_the_leaner_fit_stores_what_the_old_fit_stored(cls, similarity, monkeypatch):
    """Residuals by chunks of users, the compared matrix without copies and the active rows without
    a copy: the same arrays as the fit before (commit ae07077)."""
    data = long_tailed(seed=3, n_users=175, n_items=120)
    monkeypatch.setattr(cls, "_residual_chunk", 7)  # many chunks of users
    m = cls(k=5, similarity=similarity, shrinkage=3.0).fit(data)
    rated = data.to_csr("rating")
    u = np.repeat(np.arange(rated.shape[0]), np.diff(rated.indptr))
    b = m.baseline
    base = b.mu + b.bu[u] + b.bi[rated.indices]
    resid = sp.csr_matrix(((rated.data - base).astype(np.float32), rated.indices, rated.indptr), shape=rated.shape)
    assert identical(m.resid, resid)
    assert identical(m.rated_pattern, sp.csr_matrix((np.ones(rated.nnz, np.float32), rated.indices, rated.indptr),
                                                    shape=rated.shape))
    if similarity == "binary":
        values = data.to_csr("ones")
    elif similarity == "cosine":
        values = rated
    elif similarity == "baseline":
        values = resid
    elif (similarity == "adjusted_cosine") == (cls is ItemKNN):
        counts = np.diff(rated.indptr)
        means = np.divide(np.asarray(rated.sum(axis=1)).ravel(), counts, out=np.zeros(rated.shape[0]),
                          where=counts > 0)
        values = sp.csr_matrix(((rated.data - means[u]).astype(np.float32), rated.indices, rated.indptr),
                               shape=rated.shape)
    else:
        t = rated.T.tocsr()
        counts = np.diff(t.indptr)
        means = np.divide(np.asarray(t.sum(axis=1)).ravel(), counts, out=np.zeros(t.shape[0]), where=counts > 0)
        values = sp.csr_matrix(((rated.data - means[rated.indices]).astype(np.float32), rated.indices,
                                rated.indptr), shape=rated.shape)
    rows = values.T.tocsr() if cls is ItemKNN else values
    active = np.flatnonzero(np.diff(rows.indptr) > 0)
    a = rows[active].astype(np.float32).tocsr()
    a.sort_indices()
    s = m.sim_rows_
    assert np.array_equal(s.active, active) and identical(s.a, a)
    old_norms = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel()).astype(np.float32)
    assert np.array_equal(s.norms.view(np.int32), old_norms.view(np.int32))
    assert identical(m.sim_, frozen_top_k(s, 5))
    for stored in ("ones", "resid", "rated_pattern"):  # nothing the fit shares was changed
        assert getattr(m, stored).has_canonical_format


def test_triangle_needs_numba_and_a_known_method(monkeypatch):
    s = ItemKNN(k=3).fit(long_tailed(seed=2, n_users=30, n_items=25, per_user=5)).sim_rows_
    with pytest.raises(ValueError, match="method"):
        s.top_k(3, method="fast")
    monkeypatch.setattr(_kernels, "AVAILABLE", False)
    with pytest.raises(ValueError, match="numba"):
        s.top_k(3, method="triangle")
    assert identical(s.top_k(3), frozen_top_k(s, 3))  # auto falls back to the scipy products


# ---- EASE ------------------------------------------------------------------------------------
def ease_data(seed: int = 0, n_users: int = 200, n_items: int = 900, per_user: int = 30):
    r = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.7
    pop /= pop.sum()
    ids = r.permutation(n_items)
    rows = []
    for u in range(n_users):
        for i in ids[r.choice(n_items, per_user, replace=False, p=pop)]:
            rows.append((u, int(i), float(r.integers(1, 11)) if r.random() > 0.1 else np.nan))
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "rating"])).interactions


@needs_numba
@pytest.mark.parametrize("weighting", ["binary", "rating"])
def test_ease_gram_triangle_and_b_equal_the_scipy_products(weighting):
    data = ease_data()
    fast = EASE(lam=7.0, weighting=weighting, n_jobs=2).fit(data)
    slow = EASE(lam=7.0, weighting=weighting, block_mb=0.3)
    slow._gram = slow._gram_products  # the scipy-only fit as it was
    slow.fit(data)
    n = len(fast.active)
    low = np.tril_indices(n)
    g_fast = fast._gram_triangle(fast.history)
    g_slow = slow._gram_products(slow.history)
    assert np.array_equal(g_fast[low].view(np.int32), g_slow[low].view(np.int32))  # what spotrf reads
    assert (g_fast[np.triu_indices(n, 1)] == 0).all()  # the other triangle is never computed
    assert np.array_equal(fast.B.view(np.int32), slow.B.view(np.int32))
    assert identical(fast.history, slow.history)
    for jobs in (1, 3):
        assert np.array_equal(EASE(lam=7.0, weighting=weighting, n_jobs=jobs).fit(data).B, fast.B)


def test_ease_n_jobs_is_checked():
    from research.errors import ConfigError

    with pytest.raises(ConfigError, match="n_jobs"):
        EASE(n_jobs=-1)


# ---- the direct CSR for ordered rows ---------------------------------------------------------
def _same_csr(x: sp.csr_matrix, y: sp.csr_matrix) -> bool:
    return (x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x.indptr, y.indptr)
            and np.array_equal(x.indices, y.indices) and np.array_equal(x.data, y.data))


def test_interactions_csr_equals_to_csr_in_every_order():
    from research.models import _csr

    data = long_tailed(seed=8, n_users=90, n_items=70)
    order = np.lexsort((data.item, data.user))
    ordered = data.take(order)
    assert _csr.strictly_increasing(ordered.user, ordered.item)
    shuffled = data.take(np.random.default_rng(0).permutation(len(data)))
    assert not _csr.strictly_increasing(shuffled.user, shuffled.item)
    dup = np.r_[order, order[:25]]  # repeated pairs: to_csr keeps the last
    repeated = data.take(dup)
    for d in (ordered, shuffled, repeated):
        for values in ("ones", "rating"):
            fast, ref = _csr.interactions_csr(d, values), d.to_csr(values)
            assert _same_csr(fast, ref) and fast.has_canonical_format
            assert not np.shares_memory(fast.indices, d.item)
    meta = Meta(Vocab(np.arange(3)), Vocab(np.arange(4)))
    empty = Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), meta)
    assert _same_csr(_csr.interactions_csr(empty, "ones"), empty.to_csr("ones"))
    # the check runs by chunks: a decrease at a chunk border is seen
    u, i = np.arange(10), np.zeros(10, np.int64)
    for chunk in (1, 3, 4):
        _csr._CHUNK = chunk
        try:
            assert _csr.strictly_increasing(u, i)
            bad = u.copy()
            bad[chunk] = bad[chunk - 1]
            assert not _csr.strictly_increasing(bad, i)
        finally:
            _csr._CHUNK = 1 << 22


def test_fits_are_the_same_through_to_csr(monkeypatch):
    from research.models import _csr

    data = long_tailed(seed=9, n_users=80, n_items=60)
    ordered = data.take(np.lexsort((data.item, data.user)))
    a, e1 = ItemKNN(k=6).fit(ordered), EASE(lam=3.0).fit(ordered)
    monkeypatch.setattr(_csr, "strictly_increasing", lambda u, i: False)  # always Interactions.to_csr
    b, e2 = ItemKNN(k=6).fit(ordered), EASE(lam=3.0).fit(ordered)
    assert identical(a.sim_, b.sim_) and identical(a.resid, b.resid) and identical(a.ones, b.ones)
    assert np.array_equal(e1.B, e2.B) and identical(e1.history, e2.history)
