"""Peer libraries wrapped as Recommenders, so the one harness measures them like our own models.

Size: one module because it is one adapter layer, each peer a short class over two shared
bases (Surprise's and implicit's), both imported lazily; one file lists every peer and its defaults.

- Surprise (rating prediction; ranking by the predicted score): ``SurpriseSVD``, ``SurpriseSVDpp``,
  ``SurpriseKNNBaseline`` (item-based, ``pearson_baseline`` similarity: the configuration
  Surprise's documentation recommends and the DESIGN's reference ``RMSE ≈ 1.24``).
- implicit (ranking only, on the training interactions): ``ImplicitALS``, ``ImplicitBPR``.

Hyperparameters default to each library's own defaults (scikit-surprise 1.1.5, implicit 0.7.3),
except where a docstring says otherwise, so "the peer" means what a user gets out of the box.
Every model fits on the ``train`` part only, unless ``use_validation=True``: then on train +
validation. None of the peers early-stops, so a validation part is of no other use to them; the
peers benchmark (``experiments/configs/bench_peers.toml``) sets it, giving each peer the same 80%
of the data our Keras models use (70% to fit, 10% to stop) — the strongest honest peer.

The libraries are imported inside this module only: the registry imports it lazily, so a run
without peers never needs the ``peers`` extra.

Predictions are vectorised: Surprise's per-pair ``algo.predict`` is replaced by the same formulas
applied to the fitted arrays (``bu, bi, pu, qi[, yj]``; KNNBaseline's similarity matrix), with the
same handling of unknown users/items and the same clipping to the rating scale. Tests compare
against ``algo.predict`` pair by pair.

Fold-in (``score_history``): implicit ALS only, by the library's own ``recalculate_user`` (the
least-squares user step with the item factors fixed). The Surprise models and BPR raise
``NotSupported``: their user side comes from SGD over the user's ratings (SVD, SVD++, BPR) or from
the ALS baselines of the whole fit (KNNBaseline's b_u), so no cheap step reproduces it.

Persistence: those fitted arrays are all a model needs, so every peer saves data only (the base
class' ``model.json`` + ``arrays.npz``); the library's own object (``algo``, which could only be
pickled) is not saved and is ``None`` after ``load``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions
from research.models.base import History, NotSupported, Recommender


# ------------------------------------------------------------------------------------------
# Surprise
# ------------------------------------------------------------------------------------------
class _SurpriseBase(Recommender):
    """Shared plumbing: building a Surprise trainset from dense indices and the index maps.

    Raw ids given to Surprise are our dense indices (ints), so ``algo.predict(int(u), int(i))``
    answers for dense user ``u`` and item ``i``. ``self._u_inner[u]`` / ``self._i_inner[i]`` hold
    Surprise's inner id, or -1 when Surprise never saw that user / item in training.
    """

    predicts_ratings = True
    #: the fitted Surprise object: not saved (only pickle could store it), None after ``load``
    algo = None
    transient = ("algo",)

    def _make_algo(self):
        raise NotImplementedError

    def fit(self, train: Interactions, val: Interactions | None = None) -> "_SurpriseBase":
        import pandas as pd
        from surprise import Dataset, Reader

        self.meta = train.meta
        if self.use_validation and val is not None and len(val):
            train = train.concat(val)
        t = train.only_rated()
        if len(t) == 0:
            raise ValueError(f"{type(self).__name__}: no rated training rows")
        lo, hi = float(t.rating.min()), float(t.rating.max())
        # The data's own scale (1-10 for MAL). Surprise offsets scales starting at <= 0, which
        # MAL never does; we pass the observed range so predictions clip as the library does.
        self.lo, self.hi = lo, hi
        frame = pd.DataFrame({"u": t.user.astype(np.int64), "i": t.item.astype(np.int64),
                              "r": t.rating.astype(np.float64)})
        data = Dataset.load_from_df(frame, Reader(rating_scale=(lo, hi)))
        trainset = data.build_full_trainset()
        self._u_inner = _inner_map(trainset._raw2inner_id_users, train.n_users)
        self._i_inner = _inner_map(trainset._raw2inner_id_items, train.n_items)
        self.algo = self._make_algo()
        self.algo.fit(trainset)
        self.mu = float(trainset.global_mean)
        self._after_fit(trainset)
        return self

    def _after_fit(self, trainset) -> None:
        pass

    def score_history(self, history: History) -> np.ndarray:
        raise NotSupported(f"{type(self).__name__} cannot fold in a history: Surprise's user side "
                           f"(biases, factors) comes from its fit over every user, with no exact "
                           f"per-user step to redo")

    def _baseline(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """mu + bu (if the user is known) + bi (if the item is known), as Surprise does."""
        ui, ii = self._u_inner[users], self._i_inner[items]
        est = np.full(len(users), self.mu)
        est += np.where(ui >= 0, self.bu[np.maximum(ui, 0)], 0.0)
        est += np.where(ii >= 0, self.bi[np.maximum(ii, 0)], 0.0)
        return est

    def predict(self, users, items) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return np.clip(self._estimate(users, items), self.lo, self.hi)

    def _estimate(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _inner_map(raw2inner: dict, n: int) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    if raw2inner:
        raw = np.fromiter((int(k) for k in raw2inner.keys()), dtype=np.int64, count=len(raw2inner))
        inner = np.fromiter(raw2inner.values(), dtype=np.int64, count=len(raw2inner))
        out[raw] = inner
    return out


class _SurpriseFactors(_SurpriseBase):
    """SVD-family: r̂ = mu + bu + bi + qi · user_vector(u), user_vector = pu (SVD) or
    pu + |I_u|^-1/2 Σ_{j∈I_u} yj (SVD++). Unknown users/items drop their terms, as in Surprise."""

    def _after_fit(self, trainset) -> None:
        a = self.algo
        self.bu = np.asarray(a.bu, dtype=np.float64)
        self.bi = np.asarray(a.bi, dtype=np.float64)
        self.qi = np.asarray(a.qi, dtype=np.float64)
        self.pu_eff = self._user_factors(trainset)  # (n_inner_users, f)
        # Dense-index views (zeros for unknown users/items) so that score() is one matrix product.
        n_u, n_i = len(self._u_inner), len(self._i_inner)
        f = self.qi.shape[1]
        self._P = np.zeros((n_u, f))
        self._Q = np.zeros((n_i, f))
        self._bu_dense = np.zeros(n_u)
        self._bi_dense = np.zeros(n_i)
        ku, ki = self._u_inner >= 0, self._i_inner >= 0
        self._P[ku] = self.pu_eff[self._u_inner[ku]]
        self._Q[ki] = self.qi[self._i_inner[ki]]
        self._bu_dense[ku] = self.bu[self._u_inner[ku]]
        self._bi_dense[ki] = self.bi[self._i_inner[ki]]

    def _user_factors(self, trainset) -> np.ndarray:
        return np.asarray(self.algo.pu, dtype=np.float64)

    def _estimate(self, users, items):
        # the dot term is zero whenever the user or the item is unknown (zero rows), as in Surprise
        return (self.mu + self._bu_dense[users] + self._bi_dense[items]
                + np.einsum("ij,ij->i", self._P[users], self._Q[items]))

    def score(self, users) -> np.ndarray:
        """Unclipped mu + bu + bi + p_u · q_i over all items (clipping would only create ties)."""
        users = np.asarray(users, dtype=np.int64)
        return (self.mu + self._bu_dense[users][:, None] + self._bi_dense[None, :]
                + self._P[users] @ self._Q.T)

    def item_vectors(self):
        return self._Q

    def user_vectors(self):
        return self._P


class SurpriseSVD(_SurpriseFactors):
    """Surprise's ``SVD`` (biased MF by SGD, Funk/Koren). Defaults are Surprise 1.1.5's.

    Args:
        n_factors, n_epochs, lr_all, reg_all, init_std_dev: as ``surprise.SVD``.
        use_validation: fit on train + validation (see the module docstring).
        seed: passed as ``random_state``.
    """

    def __init__(self, n_factors: int = 100, n_epochs: int = 20, lr_all: float = 0.005,
                 reg_all: float = 0.02, init_std_dev: float = 0.1, use_validation: bool = False,
                 seed: int = 0):
        super().__init__(seed)
        self.use_validation = bool(use_validation)
        self.params = dict(n_factors=int(n_factors), n_epochs=int(n_epochs), lr_all=float(lr_all),
                           reg_all=float(reg_all), init_std_dev=float(init_std_dev))

    def _make_algo(self):
        from surprise import SVD

        return SVD(random_state=self.seed, **self.params)


class SurpriseSVDpp(_SurpriseFactors):
    """Surprise's ``SVDpp`` (SVD++ with implicit feedback from the rated set). Defaults are
    Surprise 1.1.5's (20 factors, 20 epochs, lr 0.007, reg 0.02).

    Args:
        n_factors, n_epochs, lr_all, reg_all, init_std_dev: as ``surprise.SVDpp``.
        use_validation: fit on train + validation (see the module docstring).
        seed: passed as ``random_state``.
    """

    def __init__(self, n_factors: int = 20, n_epochs: int = 20, lr_all: float = 0.007,
                 reg_all: float = 0.02, init_std_dev: float = 0.1, use_validation: bool = False,
                 seed: int = 0):
        super().__init__(seed)
        self.use_validation = bool(use_validation)
        self.params = dict(n_factors=int(n_factors), n_epochs=int(n_epochs), lr_all=float(lr_all),
                           reg_all=float(reg_all), init_std_dev=float(init_std_dev))

    def _make_algo(self):
        from surprise import SVDpp

        return SVDpp(random_state=self.seed, cache_ratings=True, **self.params)

    def _user_factors(self, trainset) -> np.ndarray:
        # pu + |I_u|^-1/2 Σ_{j ∈ I_u} yj, computed once per user as a sparse product
        a = self.algo
        yj = np.asarray(a.yj, dtype=np.float64)
        rows, cols = [], []
        for u, ratings in trainset.ur.items():
            rows.extend([u] * len(ratings))
            cols.extend(j for j, _ in ratings)
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        n_u = trainset.n_users
        counts = np.bincount(rows, minlength=n_u).astype(np.float64)
        w = 1.0 / np.sqrt(counts[rows])
        implicit_sum = sp.csr_matrix((w, (rows, cols)), shape=(n_u, trainset.n_items)) @ yj
        return np.asarray(a.pu, dtype=np.float64) + implicit_sum


#: Surprise 1.1.5's similarity measures (``sim_options["name"]``)
KNN_SIMILARITIES = ("pearson_baseline", "pearson", "msd", "cosine")


class SurpriseKNNBaseline(_SurpriseBase):
    """Surprise's ``KNNBaseline``, item-based, by default with ``pearson_baseline`` similarity
    (Surprise's recommended setting for this algorithm); k, min_k and the ALS baseline options are
    Surprise 1.1.5's defaults.

    r̂(u, i) = b_ui + Σ_{j ∈ N^k_u(i), sim>0} sim(i, j)(r_uj − b_uj) / Σ sim(i, j), where N^k_u(i)
    are the k items rated by u most similar to i (ties resolved as ``heapq.nlargest`` does: the
    user's earlier rating first). Vectorised per user over all requested items.

    Args:
        k: max neighbours. min_k: fewer positive neighbours -> baseline only.
        shrinkage: pearson_baseline shrinkage (Surprise default 100; the other similarities
            have none).
        similarity: Surprise's item-item similarity, one of ``KNN_SIMILARITIES`` (searched by
            ``tune_surprise_knnbaseline.toml``).
        use_validation: fit on train + validation (see the module docstring).
        seed: unused (the algorithm is deterministic); kept for the common signature.
    """

    def __init__(self, k: int = 40, min_k: int = 1, shrinkage: int = 100,
                 similarity: str = "pearson_baseline", use_validation: bool = False, seed: int = 0):
        super().__init__(seed)
        if similarity not in KNN_SIMILARITIES:
            raise ValueError(f"similarity must be one of {', '.join(KNN_SIMILARITIES)}, got {similarity!r}")
        self.use_validation = bool(use_validation)
        self.k, self.min_k, self.shrinkage = int(k), int(min_k), int(shrinkage)
        self.similarity = similarity

    def _make_algo(self):
        from surprise import KNNBaseline

        return KNNBaseline(k=self.k, min_k=self.min_k, verbose=False,
                           sim_options={"name": self.similarity, "user_based": False,
                                        "shrinkage": self.shrinkage})

    def _after_fit(self, trainset) -> None:
        a = self.algo
        self.bu = np.asarray(a.bu, dtype=np.float64)
        self.bi = np.asarray(a.bi, dtype=np.float64)
        self.sim = np.asarray(a.sim)  # (n_inner_items, n_inner_items)
        # each user's training ratings in Surprise's order (ur[u]), as inner item ids, packed:
        # user u's are [_ur_ptr[u], _ur_ptr[u + 1]) of _ur_items / _ur_ratings
        ur = [trainset.ur[u] for u in range(trainset.n_users)]
        self._ur_ptr = np.r_[0, np.cumsum([len(r) for r in ur])].astype(np.int64)
        self._ur_items = np.fromiter((j for r in ur for j, _ in r), np.int64, int(self._ur_ptr[-1]))
        self._ur_ratings = np.fromiter((x for r in ur for _, x in r), np.float64, int(self._ur_ptr[-1]))

    def _user_estimates(self, u_inner: int, i_inner: np.ndarray) -> np.ndarray:
        """Estimates (unclipped) for one known user and known items ``i_inner``."""
        a, b = self._ur_ptr[u_inner], self._ur_ptr[u_inner + 1]
        j, r = self._ur_items[a:b], self._ur_ratings[a:b]
        base_i = self.mu + self.bu[u_inner] + self.bi[i_inner]
        if len(j) == 0:
            return base_i
        resid = r - (self.mu + self.bi[j] + self.bu[u_inner])  # r_uj - b_uj
        s = self.sim[np.ix_(i_inner, j)]
        mask = _top_k_mask(s, self.k) & (s > 0)
        sw = np.where(mask, s, 0.0)
        sum_sim = sw.sum(axis=1)
        sum_r = sw @ resid
        actual_k = mask.sum(axis=1)
        sum_r = np.where(actual_k < self.min_k, 0.0, sum_r)
        adj = np.divide(sum_r, sum_sim, out=np.zeros_like(sum_r), where=sum_sim != 0)
        return base_i + adj

    def _estimate(self, users, items):
        est = self._baseline(users, items)
        ui, ii = self._u_inner[users], self._i_inner[items]
        known = (ui >= 0) & (ii >= 0)
        idx = np.flatnonzero(known)
        if len(idx):
            order = idx[np.argsort(ui[idx], kind="stable")]
            su = ui[order]
            cuts = np.r_[0, np.flatnonzero(su[1:] != su[:-1]) + 1, len(order)]
            for a, b in zip(cuts[:-1], cuts[1:]):
                rows = order[a:b]
                est[rows] = self._user_estimates(int(su[a]), ii[rows])
        return est

    def score(self, users) -> np.ndarray:
        """Unclipped KNNBaseline estimates for every item (unknown items get mu + bu)."""
        users = np.asarray(users, dtype=np.int64)
        n_items = len(self._i_inner)
        known_items = np.flatnonzero(self._i_inner >= 0)
        inner_items = self._i_inner[known_items]
        out = np.empty((len(users), n_items))
        for row, u in enumerate(users):
            ui = self._u_inner[u]
            base_u = self.mu + (self.bu[ui] if ui >= 0 else 0.0)
            out[row] = base_u
            if ui < 0:
                out[row, known_items] += self.bi[inner_items]
            else:
                out[row, known_items] = self._user_estimates(int(ui), inner_items)
        return out

    def item_vectors(self):
        return None


def _top_k_mask(s: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest entries of each row; among equal values at the cut the
    leftmost win (``heapq.nlargest`` / stable-sort order)."""
    m, n = s.shape
    if n <= k:
        return np.ones_like(s, dtype=bool)
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1:k]
    gt = s > kth
    need = k - gt.sum(axis=1, keepdims=True)
    eq = s == kth
    return gt | (eq & (np.cumsum(eq, axis=1) <= need))


# ------------------------------------------------------------------------------------------
# implicit
# ------------------------------------------------------------------------------------------
class _ImplicitBase(Recommender):
    """implicit factor models: score = user_factors @ item_factors.T, fitted on a users x items
    CSR of the training interactions (rated or "watched, not scored").

    ``weighting``: "binary" (1 per interaction, implicit's usual input) or "rating" (the rating
    as confidence, unrated rows 1).
    """

    predicts_ratings = False

    def __init__(self, weighting: str = "binary", use_validation: bool = False, seed: int = 0):
        super().__init__(seed)
        self.use_validation = bool(use_validation)
        if weighting not in ("binary", "rating"):
            raise ValueError(f"weighting must be 'binary' or 'rating', not {weighting!r}")
        self.weighting = weighting

    def _matrix(self, train: Interactions) -> sp.csr_matrix:
        m = train.to_csr("ones")
        if self.weighting == "rating":
            r = train.to_csr("rating")  # rated entries only; same sparsity or a subset
            m = m.maximum(r).tocsr()   # rating where rated, 1 where watched without a score
        return m.astype(np.float32)

    def _make_model(self):
        raise NotImplementedError

    def fit(self, train: Interactions, val: Interactions | None = None) -> "_ImplicitBase":
        self.meta = train.meta
        if self.use_validation and val is not None and len(val):
            train = train.concat(val)
        model = self._make_model()
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit's own threads; a threaded BLAS inside them slows it
            model.fit(self._matrix(train), show_progress=False)
        if hasattr(model, "to_cpu"):  # a GPU model, should one be picked
            model = model.to_cpu()
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        return self

    def score(self, users) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return self.user_factors[users] @ self.item_factors.T

    def _history_matrix(self, history: History) -> sp.csr_matrix:
        """The history weighted as ``_matrix`` weights the training users."""
        m = history.seen
        if self.weighting == "rating":
            m = m.maximum(history.rated).tocsr()
        return m.astype(np.float32)

    def predict(self, users, items):
        raise NotSupported(f"{type(self).__name__} ranks; it does not predict ratings")

    def item_vectors(self):
        return self.item_factors

    def user_vectors(self):
        return self.user_factors


class ImplicitALS(_ImplicitBase):
    """implicit's ``AlternatingLeastSquares`` (Hu, Koren & Volinsky 2008, conjugate gradient).
    Defaults are implicit 0.7.3's: 100 factors, regularization 0.01, alpha 1.0, 15 iterations.

    Args:
        factors, regularization, alpha, iterations: as ``implicit.als.AlternatingLeastSquares``.
        weighting: "binary" or "rating" (see the base class).
        num_threads: 0 = all cores (implicit's default).
        use_validation: fit on train + validation (see the module docstring).
        seed: passed as ``random_state``.
    """

    def __init__(self, factors: int = 100, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, weighting: str = "binary", num_threads: int = 0,
                 use_validation: bool = False, seed: int = 0):
        super().__init__(weighting, use_validation, seed)
        self.params = dict(factors=int(factors), regularization=float(regularization), alpha=float(alpha),
                           iterations=int(iterations), num_threads=int(num_threads))

    def _make_model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(random_state=self.seed, **self.params)

    def score_history(self, history: History) -> np.ndarray:
        """Fold-in by implicit's ``recalculate_user``: the exact least-squares user vector for the
        history (weighted as the fit weights a user, times ``alpha``) with the item factors fixed,
        then ``score``'s product. Not equal to a training user's fitted vector: the fit's last
        user step used the previous iteration's item factors and a few conjugate-gradient steps,
        this one the final item factors and a Cholesky solve (tests state the tolerance)."""
        history = self.check_history(history)
        model = self._make_model()
        model.item_factors = np.ascontiguousarray(self.item_factors, dtype=model.dtype)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            users = model.recalculate_user(np.arange(len(history)), self._history_matrix(history))
        users = np.asarray(users, dtype=np.float32).reshape(len(history), -1)
        return users @ self.item_factors.T


class ImplicitBPR(_ImplicitBase):
    """implicit's ``BayesianPersonalizedRanking`` (Rendle et al. 2009, SGD on sampled pairs).
    Defaults are implicit 0.7.3's: 100 factors, learning rate 0.01, regularization 0.01,
    100 iterations. implicit appends an item-bias column (user column fixed at 1), so the score
    includes the item bias; ``item_vectors`` leave it out.

    Args:
        factors, learning_rate, regularization, iterations: as implicit's BPR.
        weighting: "binary" or "rating" (see the base class; BPR only uses which entries exist).
        num_threads: 0 = all cores.
        use_validation: fit on train + validation (see the module docstring).
        seed: passed as ``random_state``.
    """

    def __init__(self, factors: int = 100, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, weighting: str = "binary", num_threads: int = 0,
                 use_validation: bool = False, seed: int = 0):
        super().__init__(weighting, use_validation, seed)
        self.params = dict(factors=int(factors), learning_rate=float(learning_rate),
                           regularization=float(regularization), iterations=int(iterations),
                           num_threads=int(num_threads))

    def _make_model(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(random_state=self.seed, **self.params)

    def score_history(self, history: History) -> np.ndarray:
        raise NotSupported("ImplicitBPR cannot fold in a history: its user factors come from SGD "
                           "over sampled pairs, and implicit offers no per-user step for BPR")

    def item_vectors(self):
        return self.item_factors[:, :-1]

    def user_vectors(self):
        return self.user_factors[:, :-1]
