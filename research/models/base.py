"""The Recommender interface: one method to implement (``score``), the rest derived from it.

A model is built from its config table (constructor keyword arguments, plus ``seed``), fitted on
``Interactions`` (dense indices over the run's shared ``Vocab``), and asked for:

- ``score(users)``: a (len(users), n_items) float array, higher = more recommended. The harness
  masks seen items and non-candidates itself; models never see the test part.
- ``predict(users, items)``: ratings on the source scale, only where ``predicts_ratings`` is True.
- ``similar_items`` / ``similar_users``: nearest neighbours by the model's own representation,
  where it has one (``item_vectors`` / ``user_vectors``, or an override).
- ``extra_metrics()``: metrics only this kind of model has (e.g. K-means' ``wcss``).
- ``score_history(history)``: fold-in, the scores of users given only by a ``History`` (their
  anime and ratings) without refitting; ``NotSupported`` where the model cannot represent a user
  from a history (see ``History``). ``recommend_history`` is its top-k.

History and HistoryError (fold-in's input) live in ``research.models.history``, persistence
(``Stateful``, ``model.json`` + ``arrays.npz``, data only: loading never unpickles or imports
anything a file names) in ``research.models.persistence``; both are re-exported here.
"""
from __future__ import annotations

import inspect

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions, Meta
from research.models import persistence
from research.models.history import History, HistoryError
from research.models.persistence import (
    ARRAYS_FILE,
    FORMAT,
    LEGACY_PICKLE,
    MODEL_FILE,
    ModelFileError,
    PickleRefused,
    Stateful,
    class_path,
    registered_class,
)

#: the names other modules import from here (History and persistence moved out, same objects)
__all__ = ["ARRAYS_FILE", "FORMAT", "LEGACY_PICKLE", "MODEL_FILE", "History", "HistoryError",
           "ModelFileError", "NotSupported", "PickleRefused", "Recommender", "Stateful", "class_path",
           "mask_scores", "nearest", "registered_class", "top_k"]


class NotSupported(NotImplementedError):
    """The model does not offer this operation (e.g. rating prediction for a ranking model)."""


class Recommender(Stateful):
    """Base class. Subclasses implement ``fit`` and ``score``; rating models also ``predict``."""

    #: True when ``predict`` returns ratings on the source scale (rmse/mae apply).
    predicts_ratings: bool = False
    #: False when the model has no per-user ranking (e.g. a global mean): ranking metrics absent.
    ranks: bool = True
    #: Set by the runner before ``fit``: a folder for TensorBoard logs and checkpoints, or None.
    log_dir: str | None = None
    #: True when ``fit`` takes ``val_history``: on held-out users it then validates (stops early)
    #: on the validation users' targets given their histories, as the harness scores them.
    fits_val_history: bool = False

    #: not saved: the vocabularies are the run's (given to ``load``), the log folder is per run
    transient = ("meta", "log_dir", "_params")
    saves_params = True

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj._params = _bound_params(cls, args, kwargs)  # the constructor arguments, for ``save``
        return obj

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

    def fit_split(self, split, **kwargs) -> "Recommender":
        """Fit on ``split.train`` with the split's validation part (``split.fit_on = "train"``).

        Row- and user-level splits: ``fit(train, split.val)``. Held-out users (``split.heldout``):
        a model with ``fits_val_history`` gets the validation users' targets as ``val`` and their
        histories as ``val_history``, so its early stopping scores them folded in, as the
        harness's ``part="val"`` does (neither part is trained on); any other model gets every
        row of the validation users as ``val`` (``split.fit_val()``: what a peer's
        ``use_validation`` adds to its training rows)."""
        if split.heldout and self.fits_val_history:
            return self.fit(split.train, split.val, val_history=split.val_history, **kwargs)
        return self.fit(split.train, split.fit_val(), **kwargs)

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

    # ---- fold-in ------------------------------------------------------------------------
    def score_history(self, history: "History") -> np.ndarray:
        """Scores of every item for users given by ``history`` alone, without refitting:
        shape (len(history), n_items), higher = better, as ``score`` gives a fitted user (the
        harness, not the model, masks seen anime). A model that cannot represent a user from a
        history raises ``NotSupported`` (never zeros); implementations start with
        ``history = self.check_history(history)``."""
        raise NotSupported(f"{type(self).__name__} cannot score a user from a history without refitting "
                           f"(no fold-in)")

    def check_history(self, history: "History") -> "History":
        """``history`` if it fits this model (a ``History`` over the model's items), else
        ``HistoryError`` naming the model and what is wrong."""
        name = type(self).__name__
        if not isinstance(history, History):
            raise HistoryError(f"{name}: fold-in takes a History, got {type(history).__name__} "
                               f"(build one with History.from_interactions / from_lists)")
        if self.meta is None:
            raise HistoryError(f"{name}: the model is not fitted (fit or load it first)")
        if history.n_items != self.meta.n_items:
            raise HistoryError(f"{name}: the history has {history.n_items} item columns, the model "
                               f"{self.meta.n_items} (build it over the run's item vocabulary)")
        mu = history.model_users
        if mu.size and mu.max() >= self.meta.n_users:
            raise HistoryError(f"{name}: model_users index {int(mu.max())} outside the model's "
                               f"{self.meta.n_users} users")
        return history

    def recommend_history(self, history: "History", k: int = 10, exclude="history",
                          candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per history row, best first (``recommend`` for fold-in).

        Args:
            history: the users (``History``).
            k: list length (capped at the number of allowed items).
            exclude: "history" (default: each row's own anime, rated or not, are never
                recommended back), None (nothing), or a (len(history), n_items) sparse matrix
                whose stored entries are removed.
            candidates: boolean mask over items; False items are never recommended.

        Returns:
            (items, scores), as ``recommend``.
        """
        history = self.check_history(history)
        n = len(history)
        if isinstance(exclude, str):
            if exclude != "history":
                raise ValueError(f"exclude must be 'history', None or a sparse matrix, not {exclude!r}")
            exclude = history.seen
        elif exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != (n, history.n_items):
                raise HistoryError(f"{type(self).__name__}: exclude has shape {exclude.shape}, the "
                                   f"history {(n, history.n_items)}")
        scores = np.asarray(self.score_history(history), dtype=np.float64).copy()
        return top_k(mask_scores(scores, np.arange(n), exclude, candidates), k)

    # ---- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write ``model.json`` + ``arrays.npz`` under folder ``path`` (``research.models.persistence``).
        Models holding TensorFlow objects override ``save``/``load`` (weights + constructor args)."""
        persistence.save(self, path)

    @classmethod
    def load(cls, path, meta: Meta, *, allow_pickle: bool = False) -> "Recommender":
        """Read a model written by ``save``; ``meta`` is the run's shared vocabularies.

        Args:
            path: the folder given to ``save``.
            meta: the run's vocabularies (must have the sizes the model was fitted with).
            allow_pickle: also read an old ``model.pkl`` (unpickling runs code from the file:
                only for folders you trust). Without it such a folder raises ``PickleRefused``.
        """
        return persistence.load(cls, path, meta, allow_pickle=allow_pickle)

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
    """Row-wise top-k by score, best first; -inf (and NaN) entries are never returned (rows with
    fewer finite scores are padded with item -1 and score -inf). Ties broken by lower item index,
    at the k-th place too: ``argpartition`` alone keeps an arbitrary subset of the anime tied at
    the cut-off (which one depends on the array's layout), so a row with more than k anime at or
    above its k-th score is redone exactly (``_exact_top``)."""
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if k == 0:
        return np.zeros((n_rows, 0), np.int64), np.zeros((n_rows, 0))
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    kth = part_scores.min(axis=1)
    tied = np.flatnonzero(np.count_nonzero(scores >= kth[:, None], axis=1) > k)
    if len(tied):
        part[tied] = _exact_top(scores[tied], kth[tied], k)
        part_scores[tied] = np.take_along_axis(scores[tied], part[tied], axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(part_scores, order, axis=1)
    items = np.where(np.isneginf(vals), -1, items)
    return items.astype(np.int64), vals


def _exact_top(scores: np.ndarray, kth: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) column indices: every column above the row's k-th score ``kth`` plus the lowest
    columns equal to it, up to k (unordered)."""
    above = scores > kth[:, None]
    equal = scores == kth[:, None]
    room = k - np.count_nonzero(above, axis=1)
    take = above | (equal & (np.cumsum(equal, axis=1) <= room[:, None]))
    return np.nonzero(take)[1].reshape(len(scores), k)


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


def _bound_params(cls, args, kwargs) -> dict | None:
    """The constructor's arguments by name (defaults filled in); None if they cannot be named."""
    try:
        sig = inspect.signature(cls.__init__)
        bound = sig.bind(None, *args, **kwargs)
    except (TypeError, ValueError):
        return None
    bound.apply_defaults()
    out = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out
