"""Trivial reference points that sit in every table: global mean, damped biases, popularity."""
from __future__ import annotations

import numpy as np

from research.data.interactions import Interactions
from research.models.base import History, Recommender


class GlobalMean(Recommender):
    """Predicts the mean training rating for everyone. It has no ranking (every item ties), so
    its ranking metrics are absent."""

    predicts_ratings = True
    ranks = False

    def fit(self, train: Interactions, val: Interactions | None = None) -> "GlobalMean":
        self.meta = train.meta
        rated = train.rating[train.rated]
        self.mu = float(rated.mean()) if rated.size else 0.0
        return self

    def score(self, users):
        return np.full((len(users), self.meta.n_items), self.mu)

    def predict(self, users, items):
        return np.full(len(users), self.mu)

    def score_history(self, history: History) -> np.ndarray:
        """The mean for everyone, as ``score`` (exact)."""
        history = self.check_history(history)
        return np.full((len(history), self.meta.n_items), self.mu)

    def predict_history(self, history: History, rows, items) -> np.ndarray:
        """The mean for every pair (held-out users' rating reference point)."""
        self.check_history(history)
        return np.full(len(np.asarray(rows)), self.mu)


class Bias(Recommender):
    """r̂(u, i) = μ + b_u + b_i with damped (shrunk) biases, fitted by alternating updates:
    b_i = Σ_u (r − μ − b_u) / (n_i + item_damping), b_u = Σ_i (r − μ − b_i) / (n_u + user_damping).
    Ranks items by b_i (the same list for everyone, minus what the user has seen).

    Args:
        user_damping: pseudo-count pulling user biases to 0.
        item_damping: pseudo-count pulling item biases to 0.
        iterations: alternating passes (3 is plenty; 1 is the classic one-pass estimate).
        clip: clip predictions to the training rating range.
    """

    predicts_ratings = True

    def __init__(self, user_damping: float = 5.0, item_damping: float = 5.0, iterations: int = 3,
                 clip: bool = True, seed: int = 0):
        super().__init__(seed)
        self.user_damping, self.item_damping = float(user_damping), float(item_damping)
        self.iterations, self.clip = int(iterations), bool(clip)

    def fit(self, train: Interactions, val: Interactions | None = None) -> "Bias":
        self.meta = train.meta
        t = train.only_rated()
        r = t.rating.astype(np.float64)
        self.mu = float(r.mean()) if r.size else 0.0
        self.lo, self.hi = (float(r.min()), float(r.max())) if r.size else (-np.inf, np.inf)
        n_u = np.bincount(t.user, minlength=train.n_users)
        n_i = np.bincount(t.item, minlength=train.n_items)
        self.bu = np.zeros(train.n_users)
        self.bi = np.zeros(train.n_items)
        for _ in range(max(self.iterations, 1)):
            self.bi = np.bincount(t.item, r - self.mu - self.bu[t.user], train.n_items) / (n_i + self.item_damping)
            self.bu = np.bincount(t.user, r - self.mu - self.bi[t.item], train.n_users) / (n_u + self.user_damping)
        return self

    def predict(self, users, items):
        p = self.mu + self.bu[np.asarray(users)] + self.bi[np.asarray(items)]
        return np.clip(p, self.lo, self.hi) if self.clip else p

    def score(self, users):
        return np.broadcast_to(self.bi, (len(users), len(self.bi)))

    def user_bias(self, history: History) -> np.ndarray:
        """Fold-in of the user bias: b_u = Σ_i (r − μ − b_i) / (n_u + user_damping) over the
        history's explicit ratings, with μ and b_i fixed. The fit's last step is this same update
        from the final b_i, so a training user's own training ratings give back their fitted b_u
        (up to float summation order; a history keeps one row per anime where the fit would
        count a repeated (user, anime) rating twice)."""
        history = self.check_history(history)
        h = history.rated
        row = np.repeat(np.arange(len(history)), np.diff(h.indptr))
        r = h.data.astype(np.float64)
        n_u = np.diff(h.indptr)
        return np.bincount(row, r - self.mu - self.bi[h.indices], len(history)) / (n_u + self.user_damping)

    def score_history(self, history: History) -> np.ndarray:
        """b_i for everyone, as ``score`` (exact: the ranking does not depend on b_u; ``user_bias``
        folds that in for rating-based uses)."""
        history = self.check_history(history)
        return np.broadcast_to(self.bi, (len(history), len(self.bi)))

    def predict_history(self, history: History, rows, items) -> np.ndarray:
        """Fold-in ratings μ + b_u + b_i of (history row, anime) pairs, b_u from ``user_bias``,
        clipped as ``predict``: the rating reference point of held-out users and ``verify``."""
        bu = self.user_bias(history)
        p = self.mu + bu[np.asarray(rows)] + self.bi[np.asarray(items)]
        return np.clip(p, self.lo, self.hi) if self.clip else p


class Popularity(Recommender):
    """Ranks items by their number of training interactions (rated or not). No ratings."""

    def fit(self, train: Interactions, val: Interactions | None = None) -> "Popularity":
        self.meta = train.meta
        self.counts = np.bincount(train.item, minlength=train.n_items).astype(np.float64)
        return self

    def score(self, users):
        return np.broadcast_to(self.counts, (len(users), len(self.counts)))

    def score_history(self, history: History) -> np.ndarray:
        """The training counts for everyone, as ``score`` (exact)."""
        history = self.check_history(history)
        return np.broadcast_to(self.counts, (len(history), len(self.counts)))
