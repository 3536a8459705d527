"""K-means over user taste vectors, and what each cluster likes.

Taste vectors (``features``, one or both, concatenated and then standardised column-wise):

- ``"genre"``: per user and genre (from ``Meta.item_table["genres"]``), either the mean of the
  user's mean-centred ratings over the anime of that genre (``genre_taste="centred"``, 0 where
  the user rated none), or the share of the user's interactions that carry the genre
  (``genre_taste="share"``, counting unrated "watched" rows too).
- ``"svd"``: a ``TruncatedSVD`` embedding (``svd_components`` dimensions) of the user x item
  matrix of mean-centred ratings plus ``svd_implicit`` for every interaction (so that unrated rows
  and a user who rates everything alike still place the user).

Users with no training interaction are not clustered (``labels_ = -1``) and are scored by the
global popularity / predicted by the item mean.

Ranking (``rank_by``): ``"popularity"`` scores item i for cluster c by the damped share of the
cluster's users who interacted with it, ``(n_ci + d · p_i) / (n_c + d)`` with ``p_i`` the global
share; ``"rating"`` by the damped cluster-mean rating ``(Σ_c r + d · m_i) / (n_ci + d)`` where
``m_i`` is the item mean damped towards the global mean. ``predict`` is the latter plus the user's
damped mean offset from their cluster's means (a cluster-mean rating model with a user bias, so
``predicts_ratings`` is True).

Fold-in (``score_history``): a history's taste vector is built as the fit builds a user's (the
same genre shares or centred means; the SVD part as ``TruncatedSVD.transform``, the history times
the fitted components; the fit's column standardisation), and the user is scored as the member
of the nearest centroid. A training user's own history gives back their taste vector exactly:
scikit-learn 1.9's randomized ``TruncatedSVD.fit_transform`` itself returns X·Vᵀ, not U·Σ, and
K-means' final labels are the nearest centroids of the final centres, so the cluster (and
``score``) agree too, barring an exact tie between two centroids.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions
from research.errors import ConfigError
from research.eval import metrics as M
from research.models.base import History, NotSupported, Recommender, Stateful

FEATURES = ("genre", "svd")


def _as_features(features) -> tuple[str, ...]:
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    features = tuple(features)
    bad = [f for f in features if f not in FEATURES]
    if bad or not features:
        raise ValueError(f"features must be a non-empty subset of {FEATURES}, got {list(features)}")
    return features


def _genre_matrix(table) -> sp.csr_matrix:
    """(n_items, n_genres) multi-hot genres of the item side table."""
    lists = [g if isinstance(g, (list, tuple, np.ndarray)) else [] for g in table["genres"].tolist()]
    vocab = sorted({v for g in lists for v in g if isinstance(v, str) and v})
    col = {v: j for j, v in enumerate(vocab)}
    pairs = [(i, col[v]) for i, g in enumerate(lists) for v in g if isinstance(v, str) and v]
    rows = np.fromiter((p[0] for p in pairs), np.int64, len(pairs))
    cols = np.fromiter((p[1] for p in pairs), np.int64, len(pairs))
    m = sp.csr_matrix((np.ones(len(pairs)), (rows, cols)), shape=(len(lists), len(vocab)))
    m.data[:] = 1.0
    return m


def taste_vectors(train: Interactions, features=("genre", "svd"), genre_taste: str = "centred",
                  svd_components: int = 16, svd_implicit: float = 1.0, seed: int = 0) -> np.ndarray:
    """Unstandardised taste vectors, one row per user index (all users of the vocabulary).

    Args:
        train: training interactions.
        features: "genre" and/or "svd" (see the module docstring).
        genre_taste: "centred" or "share".
        svd_components: SVD dimensions (capped below min(n_users, n_items)).
        svd_implicit: value added to every interaction in the SVD input.
        seed: TruncatedSVD's random_state.
    """
    return _taste(train.user, train.item, train.rating, train.n_users, train.n_items, train.meta.item_table,
                  features, genre_taste, svd_components, svd_implicit, seed)[0]


def _taste(user, item, rating, n_u: int, n_i: int, table, features, genre_taste: str, svd_components: int,
           svd_implicit: float, seed: int, svd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``taste_vectors`` of rows (user, item, rating with NaN = unrated), and the SVD components
    used: fitted here when ``svd`` is None, else ``svd`` (components x items, 0 rows = no SVD
    part) applied as ``TruncatedSVD.transform`` does (fold-in)."""
    features = _as_features(features)
    r = rating.astype(np.float64)
    rated = ~np.isnan(r)
    sums = np.bincount(user[rated], r[rated], n_u)
    cnt = np.bincount(user[rated], minlength=n_u)
    mean = np.divide(sums, cnt, out=np.zeros(n_u), where=cnt > 0)
    centred = np.where(rated, np.nan_to_num(r) - mean[user], 0.0)
    # duplicate (user, item) rows: the last one wins, as in Interactions.to_csr
    key = user.astype(np.int64) * n_i + item
    _, last = np.unique(key[::-1], return_index=True)
    keep = len(key) - 1 - last
    u, i = user[keep], item[keep]
    parts = []
    components = None
    if "genre" in features:
        if table is None or "genres" not in table:
            raise ConfigError("kmeans with features 'genre' needs a catalogue with genres "
                              "(or set features = [\"svd\"])")
        g = _genre_matrix(table)
        if genre_taste == "centred":
            ok = rated[keep]
            num = sp.csr_matrix((centred[keep][ok], (u[ok], i[ok])), shape=(n_u, n_i)) @ g
            den = sp.csr_matrix((np.ones(ok.sum()), (u[ok], i[ok])), shape=(n_u, n_i)) @ g
            num, den = np.asarray(num.todense()), np.asarray(den.todense())
            parts.append(np.divide(num, den, out=np.zeros_like(num), where=den > 0))
        elif genre_taste == "share":
            ones = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(n_u, n_i))
            num = np.asarray((ones @ g).todense())
            n = np.asarray(ones.sum(axis=1)).ravel()
            parts.append(num / np.maximum(n, 1)[:, None])
        else:
            raise ValueError(f"genre_taste must be 'centred' or 'share', not {genre_taste!r}")
    if "svd" in features:
        from sklearn.decomposition import TruncatedSVD

        x = sp.csr_matrix((centred[keep] + svd_implicit, (u, i)), shape=(n_u, n_i))
        if svd is None:
            dim = int(min(svd_components, min(x.shape) - 1))
            components = np.zeros((0, n_i))
            if dim >= 1:
                est = TruncatedSVD(dim, random_state=seed)
                parts.append(est.fit_transform(x))
                components = est.components_
        else:
            components = np.asarray(svd)
            if len(components):
                parts.append(np.asarray(x @ components.T))
    return (np.hstack(parts) if parts else np.zeros((n_u, 0))), components


def _standardise(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Columns scaled to mean 0, std 1 over ``rows`` (constant columns are only centred)."""
    mu, scale = _column_stats(x, rows)
    return (x - mu) / scale


def _column_stats(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The column means over ``rows`` and the divisor ``_standardise`` uses (std, 1 if 0)."""
    sd = x[rows].std(axis=0)
    return x[rows].mean(axis=0), np.where(sd > 0, sd, 1.0)


def _one_thread():
    """sklearn's KMeans on a few thousand taste vectors is 50x slower with its default OpenMP
    threads on a busy 2-core machine (10 s vs 0.2 s measured): the work is too small to share."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


class KMeansFit(Stateful):
    """What the model keeps of a fitted scikit-learn ``KMeans``: its numbers, so that a saved
    model is data only (same attribute names as the estimator)."""

    def __init__(self, km):
        self.cluster_centers_ = np.asarray(km.cluster_centers_)
        self.labels_ = np.asarray(km.labels_)
        self.inertia_ = float(km.inertia_)
        self.n_iter_ = int(km.n_iter_)
        self.n_clusters = int(km.n_clusters)


class KMeansUsers(Recommender):
    """Users clustered by taste; each cluster recommends what it likes most.

    Args:
        n_clusters: K.
        n_init: K-means restarts (the best inertia is kept).
        features: "genre" and/or "svd" (list, or a comma-separated string).
        genre_taste: "share" (share of the history per genre; default: on the MAL sample it ranks
            better than "centred", ndcg@10 0.249 vs 0.224, and predicts better, RMSE 1.316 vs
            1.321) or "centred" (mean-centred rating per genre).
        svd_components: SVD embedding size.
        svd_implicit: value added to every interaction in the SVD input.
        rank_by: "popularity" (damped share of the cluster who interacted) or "rating" (damped
            cluster-mean rating).
        damping: pseudo-count ``d`` pulling cluster statistics to the global ones (20 rather than
            5 on the sample: RMSE 1.302 vs 1.316, ndcg@10 unchanged).
        item_damping: pseudo-count pulling an item's mean rating to the global mean.
        user_damping: pseudo-count pulling the user's rating offset from their cluster to 0; a
            negative value disables the offset (pure cluster-mean prediction).
        max_iter: K-means iterations per restart.
        seed: K-means' and the SVD's random_state.
    """

    predicts_ratings = True

    def __init__(self, n_clusters: int = 8, n_init: int = 4, features=("genre", "svd"),
                 genre_taste: str = "share", svd_components: int = 16, svd_implicit: float = 1.0,
                 rank_by: str = "popularity", damping: float = 20.0, item_damping: float = 5.0,
                 user_damping: float = 5.0, max_iter: int = 300, seed: int = 0):
        super().__init__(seed)
        if int(n_clusters) < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if rank_by not in ("popularity", "rating"):
            raise ValueError(f"rank_by must be 'popularity' or 'rating', not {rank_by!r}")
        if genre_taste not in ("centred", "share"):
            raise ValueError(f"genre_taste must be 'centred' or 'share', not {genre_taste!r}")
        self.n_clusters, self.n_init, self.max_iter = int(n_clusters), int(n_init), int(max_iter)
        self.features = _as_features(features)
        self.genre_taste, self.svd_components = genre_taste, int(svd_components)
        self.svd_implicit = float(svd_implicit)
        self.rank_by, self.damping, self.item_damping = rank_by, float(damping), float(item_damping)
        self.user_damping = float(user_damping)

    def fit(self, train: Interactions, val: Interactions | None = None) -> "KMeansUsers":
        from sklearn.cluster import KMeans

        self.meta = train.meta
        n_u, n_i = train.n_users, train.n_items
        raw, self.svd_components_ = _taste(
            train.user, train.item, train.rating, n_u, n_i, train.meta.item_table, self.features,
            self.genre_taste, self.svd_components, self.svd_implicit, self.seed)
        self.active_ = np.unique(train.user)
        # kept for fold-in: the standardisation of the taste columns
        self.taste_mean_, self.taste_scale_ = _column_stats(raw, self.active_)
        x = (raw - self.taste_mean_) / self.taste_scale_
        x[np.setdiff1d(np.arange(n_u), self.active_)] = 0.0  # unclustered users: no taste
        self.taste_ = x
        k = min(self.n_clusters, len(self.active_))
        with _one_thread():
            self.km_ = KMeansFit(KMeans(n_clusters=k, n_init=self.n_init, max_iter=self.max_iter,
                                        random_state=self.seed).fit(x[self.active_]))
        self.labels_ = np.full(n_u, -1, dtype=np.int64)
        self.labels_[self.active_] = self.km_.labels_
        self._cluster_stats(train)
        return self

    def _cluster_stats(self, train: Interactions) -> None:
        n_i, k = train.n_items, self.km_.n_clusters
        key = train.user.astype(np.int64) * n_i + train.item
        _, first = np.unique(key, return_index=True)  # one count per (user, item) for popularity
        lab = self.labels_[train.user]
        ones = sp.csr_matrix((np.ones(len(first)), (lab[first], train.item[first])), shape=(k, n_i))
        n_c = np.bincount(self.labels_[self.active_], minlength=k).astype(np.float64)
        p_i = np.bincount(train.item[first], minlength=n_i) / max(len(self.active_), 1)
        d = self.damping
        self.pop_ = (ones.toarray() + d * p_i[None, :]) / (n_c[:, None] + d)
        self.global_pop_ = p_i
        rated = train.rated
        r = train.rating[rated].astype(np.float64)
        self.mu_ = float(r.mean()) if r.size else 0.0
        self.lo_, self.hi_ = (float(r.min()), float(r.max())) if r.size else (-np.inf, np.inf)
        it, lr = train.item[rated], lab[rated]
        n_item = np.bincount(it, minlength=n_i)
        self.item_mean_ = (np.bincount(it, r, n_i) + self.item_damping * self.mu_) / (n_item + self.item_damping)
        s_ci = sp.csr_matrix((r, (lr, it)), shape=(k, n_i)).toarray()
        n_ci = sp.csr_matrix((np.ones(len(r)), (lr, it)), shape=(k, n_i)).toarray()
        self.cluster_mean_ = (s_ci + d * self.item_mean_[None, :]) / (n_ci + d)
        # the user's damped mean offset from their cluster's means: clusters group tastes, not
        # rating scales, so a harsh and a generous rater of one cluster are put back on their scale
        self.user_offset_ = np.zeros(len(self.labels_))
        if self.user_damping >= 0 and r.size:
            res = r - self.cluster_mean_[lr, it]
            u = train.user[rated]
            n_u = np.bincount(u, minlength=len(self.labels_))
            self.user_offset_ = np.bincount(u, res, len(self.labels_)) / (n_u + self.user_damping)

    def score(self, users) -> np.ndarray:
        lab = self.labels_[np.asarray(users, dtype=np.int64)]
        table = self.pop_ if self.rank_by == "popularity" else self.cluster_mean_
        fallback = self.global_pop_ if self.rank_by == "popularity" else self.item_mean_
        return np.where((lab >= 0)[:, None], table[np.maximum(lab, 0)], fallback[None, :])

    def history_labels(self, history: History) -> np.ndarray:
        """The cluster of each history: the nearest centroid (squared Euclidean, as K-means
        assigns) of its standardised taste vector; -1 for an empty history (as an unclustered
        user)."""
        history = self.check_history(history)
        if not hasattr(self, "taste_mean_"):
            raise NotSupported("KMeansUsers saved before fold-in existed keeps no taste "
                               "standardisation: refit it")
        row, item, rating = history.triples()
        raw, _ = _taste(row, item, rating, len(history), history.n_items, self.meta.item_table,
                        self.features, self.genre_taste, self.svd_components, self.svd_implicit,
                        self.seed, svd=self.svd_components_ if self.svd_components_ is not None
                        else np.zeros((0, history.n_items)))
        x = (raw - self.taste_mean_) / self.taste_scale_
        c = self.km_.cluster_centers_
        d = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(axis=1)[None, :]
        lab = np.argmin(d, axis=1).astype(np.int64)
        lab[np.diff(history.seen.indptr) == 0] = -1
        return lab

    def score_history(self, history: History) -> np.ndarray:
        """Each history scored as a member of its nearest cluster (``history_labels``), as
        ``score`` scores a fitted member; an empty history gets the global fallback."""
        lab = self.history_labels(history)
        table = self.pop_ if self.rank_by == "popularity" else self.cluster_mean_
        fallback = self.global_pop_ if self.rank_by == "popularity" else self.item_mean_
        return np.where((lab >= 0)[:, None], table[np.maximum(lab, 0)], fallback[None, :])

    def predict(self, users, items) -> np.ndarray:
        lab = self.labels_[np.asarray(users, dtype=np.int64)]
        items = np.asarray(items, dtype=np.int64)
        p = np.where(lab >= 0, self.cluster_mean_[np.maximum(lab, 0), items], self.item_mean_[items])
        p = p + self.user_offset_[np.asarray(users, dtype=np.int64)]
        return np.clip(p, self.lo_, self.hi_)

    def user_vectors(self) -> np.ndarray:
        """Standardised taste vectors (zeros for users with no training interaction)."""
        return self.taste_

    def extra_metrics(self) -> dict:
        """WCSS (K-means inertia) and silhouette on the training taste vectors, and K."""
        x, lab = self.taste_[self.active_], self.labels_[self.active_]
        return {"wcss": float(self.km_.inertia_), "silhouette": M.silhouette(x, lab, seed=self.seed),
                "n_clusters": int(self.km_.n_clusters)}


def elbow(train: Interactions, ks, **params) -> list[dict]:
    """WCSS and silhouette of K-means for each K in ``ks`` on the same taste vectors.

    Args:
        train: training interactions.
        ks: the K values.
        **params: other ``KMeansUsers`` arguments (features, n_init, seed, ...).

    Returns:
        One ``{"k", "wcss", "silhouette"}`` per K, in the order of ``ks``.
    """
    from sklearn.cluster import KMeans

    proto = KMeansUsers(**params)
    raw = taste_vectors(train, proto.features, proto.genre_taste, proto.svd_components,
                        proto.svd_implicit, proto.seed)
    active = np.unique(train.user)
    x = _standardise(raw, active)[active]
    out = []
    for k in ks:
        k = int(k)
        with _one_thread():
            km = KMeans(n_clusters=min(k, len(active)), n_init=proto.n_init, max_iter=proto.max_iter,
                        random_state=proto.seed).fit(x)
        out.append({"k": k, "wcss": float(km.inertia_), "silhouette": M.silhouette(x, km.labels_, seed=proto.seed)})
    return out
