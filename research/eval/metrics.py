"""Metrics, and ``METRICS``: the one table of what the code knows about each (its function, which
way is better, per user / per rating / per run). The harness computes what the table lists, the
report, tuner and figures read directions and per-user columns from it.

Each ranking metric takes a boolean ``hits`` matrix (users x k: is the item at rank j relevant?)
and ``n_relevant`` (relevant items per user, > 0) and returns one value per user; the harness
averages over users. Gains are binary (relevant = 1), so ``2^rel - 1`` and linear gains coincide.
Rank j is 0-based in code and 1-based in the formulas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def rmse(y_true, y_pred) -> float:
    """sqrt(mean((y - ŷ)^2)). Empty input -> NaN (there is nothing to measure)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2))) if y_true.size else float("nan")


def mae(y_true, y_pred) -> float:
    """mean(|y - ŷ|). Empty input -> NaN."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    return float(np.mean(np.abs(y_true - y_pred))) if y_true.size else float("nan")


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """|relevant ∩ top-k| / k. The divisor is k even when fewer than k items could be listed."""
    return hits[:, :k].sum(axis=1) / k


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """|relevant ∩ top-k| / |relevant|. Users must have |relevant| > 0."""
    return hits[:, :k].sum(axis=1) / n_relevant


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 if any of the top-k is relevant, else 0."""
    return hits[:, :k].any(axis=1).astype(np.float64)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """DCG@k / IDCG@k with DCG@k = Σ_{j=1..k} rel_j / log2(j + 1) and binary rel_j.

    IDCG@k is the DCG of min(|relevant|, k) hits at the top. If IDCG@k is 0 (no relevant items)
    the value is 0; the harness never passes such users (it counts them apart).
    """
    hits = hits[:, :k]
    disc = _discounts(hits.shape[1])
    dcg = (hits * disc).sum(axis=1)
    ideal_n = np.minimum(n_relevant, hits.shape[1]).astype(np.int64)
    cum = np.r_[0.0, np.cumsum(_discounts(max(k, 1)))]
    idcg = cum[ideal_n]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def average_precision_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k = Σ_{j=1..k} P@j · rel_j / min(|relevant|, k); MAP@k is its mean over users.

    Dividing by min(|relevant|, k) (not |relevant|) makes a perfect list score 1. 0 when
    |relevant| = 0.
    """
    hits = hits[:, :k].astype(np.float64)
    cum_hits = np.cumsum(hits, axis=1)
    prec_at_j = cum_hits / np.arange(1, hits.shape[1] + 1)
    denom = np.minimum(n_relevant, k).astype(np.float64)
    num = (prec_at_j * hits).sum(axis=1)
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def coverage(recommended: np.ndarray, n_candidates: int) -> float:
    """Catalogue coverage: distinct items in all top-k lists / number of candidate items.
    Padding (-1) is ignored; 0 candidates -> NaN."""
    rec = recommended[recommended >= 0]
    return float(len(np.unique(rec)) / n_candidates) if n_candidates else float("nan")


def novelty(recommended: np.ndarray, item_popularity: np.ndarray) -> np.ndarray:
    """Per user, mean self-information −log2 p(i) of the listed items, with p(i) the share of
    training users who interacted with i. Padding (-1) and items with p = 0 are skipped; a user
    with no scorable item gets NaN."""
    rec = recommended
    valid = rec >= 0
    p = np.where(valid, item_popularity[np.where(valid, rec, 0)], 0.0)
    valid &= p > 0
    info = np.where(valid, -np.log2(np.where(valid, p, 1.0)), 0.0)
    n = valid.sum(axis=1)
    return np.divide(info.sum(axis=1), n, out=np.full(len(rec), np.nan), where=n > 0)


def wcss(x: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> float:
    """Within-cluster sum of squares: Σ_i ||x_i − c_{label(i)}||² (K-means' inertia)."""
    x = np.asarray(x, np.float64)
    return float(((x - np.asarray(centers, np.float64)[labels]) ** 2).sum())


def silhouette(x: np.ndarray, labels: np.ndarray, sample_size: int = 5000, seed: int = 0) -> float:
    """Mean silhouette coefficient (b − a) / max(a, b) over at most ``sample_size`` points
    (scikit-learn's implementation, Euclidean). NaN when there are fewer than 2 clusters or
    as many clusters as points (undefined)."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return float("nan")
    size = min(sample_size, len(labels))
    return float(silhouette_score(x, labels, sample_size=size if size < len(labels) else None,
                                  random_state=seed))


# ---- the table ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lists:
    """One batch of users' top-k lists: what a per-user ranking metric is computed from."""

    hits: np.ndarray  # users x k: is the item at rank j relevant?
    n_relevant: np.ndarray  # relevant target items per user (> 0)
    k: int
    items: np.ndarray  # users x k listed item indices (-1 = padding)
    item_popularity: np.ndarray  # per item, the share of training users who interacted with it


@dataclass(frozen=True)
class Metric:
    """What the code knows about one harness metric. ``name`` carries no cut-off; ranking metrics
    appear as ``name@k`` in summaries."""

    name: str
    higher_is_better: bool
    #: "user" (a per-user value, averaged), "rating" (over rated target rows), "run" (one value)
    unit: str
    #: column of per_user.csv holding its per-user values ("" = none)
    per_user_column: str = ""
    #: the ranking cut-off applies (summary key ``name@k``)
    at_k: bool = False
    #: a measure of quality (bolded and tested in tables), not a description like coverage
    quality: bool = True
    #: how the harness computes it: unit "rating": f(ratings, predictions) -> float; unit "user":
    #: f(Lists) -> one value per user (NaN: not measurable for that user, left out of the mean);
    #: None: computed elsewhere (coverage by the harness over all lists, the rest by models)
    fn: Callable | None = None


#: Every metric the harness and the models report: the one place that says which way is better.
#: Summary keys and per_user.csv columns follow this order.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("rmse", False, "rating", fn=rmse),
    Metric("mae", False, "rating", fn=mae),
    Metric("precision", True, "user", "precision", at_k=True, fn=lambda b: precision_at_k(b.hits, b.k)),
    Metric("recall", True, "user", "recall", at_k=True, fn=lambda b: recall_at_k(b.hits, b.n_relevant, b.k)),
    Metric("ndcg", True, "user", "ndcg", at_k=True, fn=lambda b: ndcg_at_k(b.hits, b.n_relevant, b.k)),
    Metric("map", True, "user", "ap", at_k=True, fn=lambda b: average_precision_at_k(b.hits, b.n_relevant, b.k)),
    Metric("hit_rate", True, "user", "hit", at_k=True, fn=lambda b: hit_rate_at_k(b.hits, b.k)),
    Metric("coverage", True, "run", at_k=True, quality=False),
    Metric("novelty", True, "user", "novelty", at_k=True, quality=False,
           fn=lambda b: novelty(b.items, b.item_popularity)),
    Metric("wcss", False, "run", quality=False),
    Metric("silhouette", True, "run", quality=False),
    Metric("fit_seconds", False, "run", quality=False),
)}


def metric(key: str) -> Metric:
    """The ``Metric`` of a summary key (``"ndcg@10"`` -> ndcg); KeyError if unknown."""
    base, _, k = key.partition("@")
    m = METRICS[base]
    if bool(k) != m.at_k:
        raise KeyError(key)
    return m


def direction(key: str) -> str:
    """"max" or "min": how ``key`` improves (keras-tuner's and early stopping's words)."""
    return "max" if metric(key).higher_is_better else "min"


def harness_keys(k: int) -> list[str]:
    """The summary keys the harness can report at cut-off ``k`` (rating metrics first)."""
    return [m.name + (f"@{k}" if m.at_k else "") for m in METRICS.values()
            if m.unit in ("rating", "user") or m.name == "coverage"]
