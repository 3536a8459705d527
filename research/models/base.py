"""The Recommender interface: one method to implement (``score``), the rest derived from it.

A model is built from its config table (constructor keyword arguments, plus ``seed``), fitted on
``Interactions`` (dense indices over the run's shared ``Vocab``), and asked for:

- ``score(users)``: a (len(users), n_items) float array, higher = more recommended. The harness
  masks seen items and non-candidates itself; models never see the test part.
- ``predict(users, items)``: ratings on the source scale, only where ``predicts_ratings`` is True.
- ``similar_items`` / ``similar_users``: nearest neighbours by the model's own representation,
  where it has one (``item_vectors`` / ``user_vectors``, or an override).
- ``extra_metrics()``: metrics only this kind of model has (e.g. K-means' ``wcss``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions, Meta


class NotSupported(NotImplementedError):
    """The model does not offer this operation (e.g. rating prediction for a ranking model)."""


class Recommender:
    """Base class. Subclasses implement ``fit`` and ``score``; rating models also ``predict``."""

    #: True when ``predict`` returns ratings on the source scale (rmse/mae apply).
    predicts_ratings: bool = False
    #: False when the model has no per-user ranking (e.g. a global mean): ranking metrics absent.
    ranks: bool = True
    #: Set by the runner before ``fit``: a folder for TensorBoard logs and checkpoints, or None.
    log_dir: str | None = None

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.meta: Meta | None = None

    @classmethod
    def param_defaults(cls) -> dict:
        """Constructor argument -> default (``inspect.Parameter.empty`` if it has none), ``seed``
        left out: what a ``[models.NAME]`` table and a tuning space may set."""
        import inspect

        sig = inspect.signature(cls.__init__)
        return {n: p.default for n, p in sig.parameters.items()
                if n not in ("self", "seed") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    # ---- to implement -------------------------------------------------------------------
    def fit(self, train: Interactions, val: Interactions | None = None) -> "Recommender":
        raise NotImplementedError

    def score(self, users: np.ndarray) -> np.ndarray:
        """Scores of every item for each user: shape (len(users), n_items)."""
        raise NotImplementedError

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings for (user, item) pairs, on the data's rating scale."""
        raise NotSupported(f"{type(self).__name__} does not predict ratings")

    def item_vectors(self) -> np.ndarray | None:
        """Item representations (n_items, d) for ``similar_items``; None if the model has none."""
        return None

    def user_vectors(self) -> np.ndarray | None:
        """User representations (n_users, d) for ``similar_users``; None if the model has none."""
        return None

    def extra_metrics(self) -> dict:
        """Metrics particular to this model (measured on training data), e.g. ``wcss``."""
        return {}

    # ---- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the fitted model under folder ``path`` (default: a pickle of its attributes).
        Models holding TensorFlow objects override ``save``/``load`` (weights + constructor args)."""
        import pickle
        from pathlib import Path

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.__dict__.items() if k != "meta"}
        tmp = path / "model.pkl.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump({"class": f"{type(self).__module__}:{type(self).__qualname__}", "state": state}, fh,
                        protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path / "model.pkl")

    @classmethod
    def load(cls, path, meta: Meta) -> "Recommender":
        """Read a model written by ``save``; ``meta`` is the run's shared vocabularies."""
        import pickle
        from pathlib import Path

        with open(Path(path) / "model.pkl", "rb") as fh:
            blob = pickle.load(fh)
        obj = cls.__new__(cls)
        obj.__dict__.update(blob["state"])
        obj.meta = meta
        return obj

    # ---- derived ------------------------------------------------------------------------
    def recommend(self, users: np.ndarray, k: int = 10, exclude: sp.csr_matrix | None = None,
                  candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per user, best first.

        Args:
            users: user indices.
            k: list length (capped at the number of allowed items).
            exclude: users x items matrix; a stored entry removes that item for that user.
            candidates: boolean mask over items; False items are never recommended.

        Returns:
            (items, scores), each of shape (len(users), k'); items are unique within a row.
        """
        users = np.asarray(users)
        scores = np.asarray(self.score(users), dtype=np.float64).copy()
        return top_k(mask_scores(scores, users, exclude, candidates), k)

    def similar_items(self, items: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items by cosine similarity of ``item_vectors`` (the item itself excluded)."""
        vecs = self.item_vectors()
        if vecs is None:
            raise NotSupported(f"{type(self).__name__} has no item representation")
        return nearest(vecs, np.asarray(items), k)

    def similar_users(self, users: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Nearest users by cosine similarity of ``user_vectors`` (the user itself excluded)."""
        vecs = self.user_vectors()
        if vecs is None:
            raise NotSupported(f"{type(self).__name__} has no user representation")
        return nearest(vecs, np.asarray(users), k)


def mask_scores(scores: np.ndarray, users: np.ndarray, exclude: sp.csr_matrix | None,
                candidates: np.ndarray | None) -> np.ndarray:
    """Set excluded and non-candidate items to -inf in place and return ``scores``."""
    if candidates is not None:
        scores[:, ~candidates] = -np.inf
    if exclude is not None:
        sub = exclude[users]
        rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
        scores[rows, sub.indices] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k by score, best first; -inf entries are never returned (rows with fewer
    finite scores are padded with item -1 and score -inf). Ties broken by lower item index."""
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if k == 0:
        return np.zeros((n_rows, 0), np.int64), np.zeros((n_rows, 0))
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(part_scores, order, axis=1)
    items = np.where(np.isneginf(vals), -1, items)
    return items.astype(np.int64), vals


def nearest(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine nearest neighbours of rows ``query`` among all rows of ``vectors`` (self excluded)."""
    if sp.issparse(vectors):
        norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1))).ravel()
        sims = np.asarray((vectors[query] @ vectors.T).todense(), dtype=np.float64)
    else:
        vectors = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1)
        sims = vectors[query] @ vectors.T
    norms = np.where(norms > 0, norms, 1.0)
    sims = sims / norms[query][:, None] / norms[None, :]
    sims[np.arange(len(query)), query] = -np.inf
    return top_k(sims, k)
