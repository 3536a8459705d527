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

Persistence is data only: loading a folder never unpickles or imports anything it names.
``save(path)`` writes two files:

- ``model.json``: ``{"format": "animerec-model/1", "class": "module:Class", "params": {constructor
  arguments}, "state": {attribute: value}, "n_users", "n_items"}``. A value is plain JSON (null,
  bool, int, finite float, str, list) or one tagged object: ``{"float": "nan"|"inf"|"-inf"}``,
  ``{"tuple": [...]}``, ``{"dict": {str: value}}``, ``{"items": [[key, value], ...]}`` (other keys),
  ``{"array": name[, "scalar": true]}`` (numpy array / scalar in ``arrays.npz``), ``{"sparse": name,
  "format", "shape", "kind"}`` (scipy sparse: ``name.data`` / ``.indices`` / ``.indptr``, or ``.row``
  / ``.col`` for other formats, in ``arrays.npz``) and ``{"class": "module:Class", "params",
  "state"}`` (a nested ``Stateful`` object, e.g. ItemKNN's ``Bias`` baseline; ``params`` is absent
  or null when the constructor is not called).
- ``arrays.npz``: the arrays, written and read with ``allow_pickle=False`` (no object arrays).

``load`` accepts only a top-level class listed in ``research.models.registry.MODELS`` (a subclass
of the class it is called on) and nested classes that subclass ``Stateful`` in modules already
imported; it rebuilds the object with its constructor, then sets the state. A model whose state
is arrays, sparse matrices, scalars, containers and nested ``Stateful`` objects needs no code; a
model holding anything else lists it in ``transient`` and rebuilds it in ``after_load``. An old
``model.pkl`` is loaded only with ``allow_pickle=True`` (the CLI's ``--allow-pickle``).
"""
from __future__ import annotations

import inspect
import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions, Meta
from research.errors import AnimeRecError
from research.results import save_npz

MODEL_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
LEGACY_PICKLE = "model.pkl"
FORMAT = "animerec-model/1"


class NotSupported(NotImplementedError):
    """The model does not offer this operation (e.g. rating prediction for a ranking model)."""


class ModelFileError(AnimeRecError):
    """A saved model folder is missing, malformed, or names a class that may not be loaded."""


class PickleRefused(ModelFileError):
    """The folder holds a pickle: loading it runs code, so it needs ``allow_pickle=True``."""


class HistoryError(AnimeRecError, ValueError):
    """A history given to fold-in is malformed: an item index outside the model's items, a matrix
    of the wrong shape, ratings that are not finite, misaligned arrays."""


class History:
    """Users given by what they watched, not by an index the model was fitted on: fold-in's input.

    Rows are users (new users, held-out users, or training users scored from their history);
    columns are the model's item index (the run's item ``Vocab``). Two aligned float32 CSR
    matrices of shape (n, n_items), canonical (sorted indices, one entry per (row, item)):

    - ``seen``: 1.0 at every interaction, rated or not ("watched, not scored" included);
    - ``rated``: the explicit rating (source scale) where there is one; its entries are a subset
      of ``seen``'s.

    ``model_users`` (n,) int64: the model's user index of a row that *is* a user the model was
    fitted on, -1 (the default) for anyone else. Only models that compare users with each other
    use it (user-kNN leaves that user out of its own neighbours, as its fit does); it never adds
    the user's fitted state to the scores.

    Build one with ``from_interactions`` (rows of an ``Interactions`` over the run's vocabulary,
    e.g. held-out users' history rows), ``from_lists`` (one array of item indices and one of
    ratings per user, e.g. a parsed list file) or ``from_rows`` (flat row / item / rating
    arrays). Repeated (row, item) pairs keep the last one, as ``Interactions.to_csr`` does; a NaN
    rating marks a watched-without-score row.
    """

    def __init__(self, seen: sp.csr_matrix, rated: sp.csr_matrix, model_users=None):
        if not (sp.issparse(seen) and sp.issparse(rated)):
            raise HistoryError("History: seen and rated must be scipy sparse matrices")
        if seen.ndim != 2 or seen.shape != rated.shape:
            raise HistoryError(f"History: seen {seen.shape} and rated {rated.shape} must have one shape (n, n_items)")
        seen = sp.csr_matrix(seen, dtype=np.float32, copy=True)
        rated = sp.csr_matrix(rated, dtype=np.float32, copy=True)
        for m in (seen, rated):
            m.sum_duplicates()
            m.sort_indices()
        if not np.all(np.isfinite(rated.data)):
            raise HistoryError("History: ratings must be finite "
                               "(use NaN only when building, for 'watched, not scored')")
        seen.data[:] = 1.0
        if rated.nnz:
            pattern = rated.copy()
            pattern.data[:] = 1.0
            if pattern.multiply(seen).nnz < rated.nnz:
                raise HistoryError("History: every rated entry must also be in seen")
        n = seen.shape[0]
        if model_users is None:
            model_users = np.full(n, -1, dtype=np.int64)
        model_users = np.asarray(model_users)
        if model_users.shape != (n,) or (model_users.size and model_users.dtype.kind not in "iu"):
            raise HistoryError(f"History: model_users must be {n} integers (-1 = not a model user), "
                               f"got shape {model_users.shape} of {model_users.dtype}")
        self.seen, self.rated = seen, rated
        self.model_users = model_users.astype(np.int64)

    # ---- building -----------------------------------------------------------------------
    @classmethod
    def from_rows(cls, row, item, rating, n_rows: int, n_items: int, model_users=None) -> "History":
        """From flat aligned arrays: ``row`` in [0, n_rows), ``item`` in [0, n_items) (the model's
        item index), ``rating`` (NaN = watched, no score; None = every row unrated)."""
        n_rows, n_items = int(n_rows), int(n_items)
        if n_rows < 0 or n_items < 1:
            raise HistoryError(f"History: need n_rows >= 0 and n_items >= 1, got {n_rows} x {n_items}")
        row, item = np.asarray(row).ravel(), np.asarray(item).ravel()
        rating = (np.full(len(item), np.nan, np.float32) if rating is None
                  else np.asarray(rating, dtype=np.float64).ravel())
        if not (len(row) == len(item) == len(rating)):
            raise HistoryError(f"History: row, item and rating lengths differ ({len(row)}, {len(item)}, {len(rating)})")
        for name, a, n in (("item", item, n_items), ("row", row, n_rows)):
            if a.size and a.dtype.kind not in "iu":
                if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
                    continue
                raise HistoryError(f"History: {name} indices must be integers, got {a.dtype}")
            bad = (a < 0) | (a >= n)
            if bad.any():
                raise HistoryError(f"History: {int(bad.sum())} {name} index(es) outside [0, {n}), "
                                   f"e.g. {a[bad][:5].astype(np.int64).tolist()} (map external ids "
                                   f"through the run's Vocab first; unknown anime have no column)")
        row, item = row.astype(np.int64), item.astype(np.int64)
        if np.isinf(rating).any():
            raise HistoryError("History: ratings must be finite or NaN (watched, not scored)")
        # the last of repeated (row, item) pairs wins, as Interactions.to_csr
        key = row * n_items + item
        _, last = np.unique(key[::-1], return_index=True)
        keep = np.sort(len(key) - 1 - last)
        row, item, rating = row[keep], item[keep], rating[keep]
        seen = sp.csr_matrix((np.ones(len(row), np.float32), (row, item)), shape=(n_rows, n_items))
        ok = ~np.isnan(rating)
        rated = sp.csr_matrix((rating[ok].astype(np.float32), (row[ok], item[ok])), shape=(n_rows, n_items))
        return cls(seen, rated, model_users)

    @classmethod
    def from_lists(cls, items, ratings=None, *, n_items: int, model_users=None) -> "History":
        """One user per list: ``items[u]`` the item indices of user u, ``ratings[u]`` (same length,
        NaN = watched without a score) or ``ratings=None`` (all unrated)."""
        items = [np.asarray(x).ravel() for x in items]
        if ratings is None:
            ratings = [np.full(len(x), np.nan) for x in items]
        else:
            ratings = [np.asarray(x, dtype=np.float64).ravel() for x in ratings]
            if len(ratings) != len(items):
                raise HistoryError(f"History: {len(items)} item lists but {len(ratings)} rating lists")
            for u, (x, r) in enumerate(zip(items, ratings)):
                if len(x) != len(r):
                    raise HistoryError(f"History: user {u} has {len(x)} items but {len(r)} ratings")
        row = np.repeat(np.arange(len(items)), [len(x) for x in items])
        def cat(parts, dt):
            return np.concatenate(parts) if parts else np.zeros(0, dt)

        return cls.from_rows(row, cat(items, np.int64), cat(ratings, np.float64), len(items), n_items,
                             model_users)

    @classmethod
    def from_interactions(cls, data: Interactions, users=None, *, model_users: bool = False) -> "History":
        """The rows of ``data`` grouped by user: row r is user ``users[r]`` (default: every user
        with a row, in index order; a user without rows gets an empty row). ``model_users=True``
        marks the rows as those users of the model (fold-in of a model's own training users)."""
        users = data.users_present() if users is None else np.asarray(users, dtype=np.int64).ravel()
        if users.size and (users.min() < 0 or users.max() >= data.n_users):
            raise HistoryError(f"History: user indices outside [0, {data.n_users})")
        if len(np.unique(users)) != len(users):
            raise HistoryError("History: repeated users")
        pos = np.full(data.n_users, -1, dtype=np.int64)
        pos[users] = np.arange(len(users))
        keep = pos[data.user] >= 0
        return cls.from_rows(pos[data.user[keep]], data.item[keep], data.rating[keep], len(users), data.n_items,
                             users if model_users else None)

    # ---- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.seen.shape[0]

    def __repr__(self) -> str:
        return f"History({len(self)} users, {self.seen.nnz} interactions, {self.rated.nnz} rated, {self.n_items} items)"

    @property
    def n_items(self) -> int:
        return self.seen.shape[1]

    def take(self, rows) -> "History":
        """The users at ``rows`` (integer array or boolean mask)."""
        rows = np.arange(len(self))[np.asarray(rows)]
        return History(self.seen[rows], self.rated[rows], self.model_users[rows])

    def triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat (row, item, rating) arrays, one per interaction in (row, item) order; rating is
        float32 with NaN where the anime was watched without a score."""
        row = np.repeat(np.arange(len(self)), np.diff(self.seen.indptr))
        item = self.seen.indices.astype(np.int64)
        rating = np.full(len(item), np.nan, dtype=np.float32)
        r_row = np.repeat(np.arange(len(self)), np.diff(self.rated.indptr))
        # rated is a subset of seen and both are canonical: locate its entries among seen's
        at = np.searchsorted(row * self.n_items + item, r_row * self.n_items + self.rated.indices)
        rating[at] = self.rated.data
        return row, item, rating

    def rating_means(self) -> np.ndarray:
        """Each user's mean explicit rating (0 for a user with none)."""
        counts = np.diff(self.rated.indptr)
        sums = np.asarray(self.rated.sum(axis=1)).ravel()
        return np.divide(sums, counts, out=np.zeros(len(self)), where=counts > 0)


#: "module:Class" -> class, for every ``Stateful`` subclass defined so far (nested objects are
#: looked up here, never imported)
_STATE_CLASSES: dict[str, type] = {}


def class_path(klass: type) -> str:
    return f"{klass.__module__}:{klass.__qualname__}"


class Stateful:
    """An object saved as its attributes (minus ``transient``) and rebuilt from them.

    Subclasses list in ``transient`` what is not data (or is cheap to derive) and rebuild it in
    ``after_load``; ``transient`` accumulates over the class hierarchy.
    """

    transient: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "<locals>" not in cls.__qualname__:
            _STATE_CLASSES[class_path(cls)] = cls

    @classmethod
    def _transient_names(cls) -> set:
        return {n for k in cls.__mro__ for n in k.__dict__.get("transient", ())}

    def state_dict(self) -> dict:
        """The attributes to save: every instance attribute except the transient ones."""
        skip = self._transient_names()
        return {k: v for k, v in vars(self).items() if k not in skip}

    def load_state(self, state: dict) -> None:
        """Set the saved attributes, then ``after_load``."""
        vars(self).update(state)
        self.after_load()

    def after_load(self) -> None:
        """Rebuild the transient attributes (nothing by default)."""


class Recommender(Stateful):
    """Base class. Subclasses implement ``fit`` and ``score``; rating models also ``predict``."""

    #: True when ``predict`` returns ratings on the source scale (rmse/mae apply).
    predicts_ratings: bool = False
    #: False when the model has no per-user ranking (e.g. a global mean): ranking metrics absent.
    ranks: bool = True
    #: Set by the runner before ``fit``: a folder for TensorBoard logs and checkpoints, or None.
    log_dir: str | None = None

    #: not saved: the vocabularies are the run's (given to ``load``), the log folder is per run
    transient = ("meta", "log_dir", "_params")

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
        """Write ``model.json`` + ``arrays.npz`` under folder ``path`` (see the module docstring).
        Models holding TensorFlow objects override ``save``/``load`` (weights + constructor args)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict = {}
        doc = {"format": FORMAT, **_encode_object(self, type(self).__name__, arrays)}
        if self.meta is not None:
            doc["n_users"], doc["n_items"] = int(self.meta.n_users), int(self.meta.n_items)
        save_npz(path / ARRAYS_FILE, arrays)
        tmp = path / (MODEL_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
        tmp.replace(path / MODEL_FILE)
        (path / LEGACY_PICKLE).unlink(missing_ok=True)  # an older format of the same model

    @classmethod
    def load(cls, path, meta: Meta, *, allow_pickle: bool = False) -> "Recommender":
        """Read a model written by ``save``; ``meta`` is the run's shared vocabularies.

        Args:
            path: the folder given to ``save``.
            meta: the run's vocabularies (must have the sizes the model was fitted with).
            allow_pickle: also read an old ``model.pkl`` (unpickling runs code from the file:
                only for folders you trust). Without it such a folder raises ``PickleRefused``.
        """
        path = Path(path)
        file = path / MODEL_FILE
        if not file.is_file():
            if (path / LEGACY_PICKLE).is_file():
                if not allow_pickle:
                    raise PickleRefused(
                        f"{path / LEGACY_PICKLE}: the model is a Python pickle (an older animerec format); "
                        f"unpickling runs code from the file, so it is not loaded. Pass --allow-pickle if "
                        f"you trust this folder, or re-run the experiment to save it as {MODEL_FILE}")
                return cls._load_pickle(path / LEGACY_PICKLE, meta)
            raise ModelFileError(f"{path}: no saved model ({MODEL_FILE} not found)")
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFileError(f"{file}: not a readable model file ({_short(str(exc), 120)})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ModelFileError(f"{file}: not a model file of format {FORMAT} (format: {_short(got)})")
        klass = registered_class(doc.get("class"), cls, file)
        saved = (doc.get("n_users"), doc.get("n_items"))
        if saved != (None, None) and meta is not None and saved != (meta.n_users, meta.n_items):
            raise ModelFileError(f"{file}: saved for {saved[0]} users x {saved[1]} items, the run's "
                                 f"vocabularies have {meta.n_users} x {meta.n_items}")
        with _Arrays(path / ARRAYS_FILE) as arrays:
            try:
                return _decode_object(doc, klass, _Context(file, arrays, meta), klass.__name__)
            except RecursionError:
                raise ModelFileError(f"{file}: nested too deeply") from None

    @classmethod
    def _load_pickle(cls, file: Path, meta: Meta) -> "Recommender":
        """The pre-JSON format (a pickle of the attributes), read only on explicit opt-in."""
        import pickle

        with open(file, "rb") as fh:
            blob = pickle.load(fh)
        klass = registered_class(blob.get("class") if isinstance(blob, dict) else None, cls, file)
        obj = klass.__new__(klass)
        vars(obj).update(blob["state"])
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


# ---- persistence helpers -------------------------------------------------------------------------
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_SPARSE_FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")


def _short(value, limit: int = 80) -> str:
    """repr of a value from a file, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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


def registered_class(path, base: type, where) -> type:
    """The class registered under ``path`` ("module:Class", a value of
    ``research.models.registry.MODELS``), checked to subclass ``base``. Only the registry's own
    modules are imported; any other name raises ``ModelFileError``."""
    from research.models import registry

    if not isinstance(path, str):
        raise ModelFileError(f"{where}: names no model class")
    names = [n for n, p in registry.MODELS.items() if p == path]
    if not names:
        raise ModelFileError(f"{where}: class {_short(path)} is not a registered model "
                             f"(research.models.registry.MODELS); refusing to load it")
    klass = registry.model_class(names[0])
    if not (isinstance(klass, type) and issubclass(klass, base)):
        raise ModelFileError(f"{where}: holds a {path}, not a {base.__name__}")
    return klass


def _unique_key(where: str, arrays: dict) -> str:
    key = re.sub(r"[^A-Za-z0-9_.\-]", "_", where).strip(".") or "x"
    out, n = key, 1
    while out in arrays or any(k.startswith(out + ".") for k in arrays):
        n += 1
        out = f"{key}~{n}"
    return out


def _encode(v, where: str, arrays: dict):
    """A JSON-able node for value ``v`` (arrays go to ``arrays``); ``where`` names it in errors."""
    if isinstance(v, np.generic):  # before float/str: np.float64 and np.str_ subclass them
        return {"array": _put(np.asarray(v), where, arrays), "scalar": True}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, np.ndarray) and not isinstance(v, (np.matrix, np.ma.MaskedArray)):
        return {"array": _put(np.asarray(v), where, arrays)}
    if sp.issparse(v):
        return _encode_sparse(v, where, arrays)
    if type(v) is list:
        return [_encode(x, f"{where}.{i}", arrays) for i, x in enumerate(v)]
    if type(v) is tuple:
        return {"tuple": [_encode(x, f"{where}.{i}", arrays) for i, x in enumerate(v)]}
    if type(v) is dict:
        if all(isinstance(k, str) for k in v):
            return {"dict": {k: _encode(x, f"{where}.{k}", arrays) for k, x in v.items()}}
        return {"items": [[_encode(k, f"{where}.k{i}", arrays), _encode(x, f"{where}.{i}", arrays)]
                          for i, (k, x) in enumerate(v.items())]}
    if isinstance(v, Stateful) and _STATE_CLASSES.get(class_path(type(v))) is type(v):
        return _encode_object(v, where, arrays)
    raise TypeError(f"{where}: cannot save a {type(v).__module__}.{type(v).__qualname__} without pickle; "
                    f"store its numbers as arrays, or list the attribute in `transient` and rebuild it "
                    f"in `after_load`, or make its class a research.models.base.Stateful")


def _put(arr: np.ndarray, where: str, arrays: dict) -> str:
    if arr.dtype.hasobject:
        raise TypeError(f"{where}: an object array cannot be saved without pickle")
    key = _unique_key(where, arrays)
    arrays[key] = arr
    return key


def _encode_sparse(m, where: str, arrays: dict) -> dict:
    fmt = m.format
    node = {"sparse": _unique_key(where, arrays), "format": fmt, "shape": [int(n) for n in m.shape],
            "kind": "matrix" if isinstance(m, sp.spmatrix) else "array"}
    key = node["sparse"]
    if fmt in ("csr", "csc"):
        parts = {"data": m.data, "indices": m.indices, "indptr": m.indptr}
    else:
        c = m.tocoo()
        parts = {"data": c.data, "row": c.row, "col": c.col}
    for name, arr in parts.items():
        if arr.dtype.hasobject:
            raise TypeError(f"{where}: a sparse matrix of objects cannot be saved without pickle")
        arrays[f"{key}.{name}"] = np.asarray(arr)
    return node


def _encode_object(obj: Stateful, where: str, arrays: dict) -> dict:
    node = {"class": class_path(type(obj))}
    if isinstance(obj, Recommender):
        params = getattr(obj, "_params", None)
        node["params"] = None if params is None else {
            str(k): _encode(v, f"{where}.params.{k}", arrays) for k, v in params.items()}
    node["state"] = {k: _encode(v, f"{where}.{k}", arrays) for k, v in obj.state_dict().items()}
    return node


class _Arrays:
    """``arrays.npz`` opened on first use, ``allow_pickle=False``; errors name the file and key."""

    def __init__(self, file: Path):
        self.file, self.z = file, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.z is not None:
            self.z.close()

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ModelFileError(f"{self.file}: bad array name {_short(key)}")
        if self.z is None:
            try:
                z = np.load(self.file, allow_pickle=False)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ModelFileError(f"{self.file}: not a readable .npz file ({_short(str(exc), 120)})") from None
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{self.file}: not an .npz archive")
            self.z = z
        if key not in self.z.files:
            raise ModelFileError(f"{self.file}: no array {key!r}")
        try:
            return self.z[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{self.file}: array {key!r} cannot be read without pickle "
                                 f"({_short(str(exc), 120)})") from None


class _Context:
    def __init__(self, file: Path, arrays: _Arrays, meta):
        self.file, self.arrays, self.meta = file, arrays, meta

    def fail(self, where: str, message: str) -> ModelFileError:
        return ModelFileError(f"{self.file}: {where}: {message}")


_TAGS = ("float", "tuple", "dict", "items", "array", "sparse", "class")


def _decode(node, ctx: _Context, where: str):
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(x, ctx, f"{where}.{i}") for i, x in enumerate(node)]
    tag = next((t for t in _TAGS if t in node), None) if isinstance(node, dict) else None
    if tag is None:
        raise ctx.fail(where, f"unknown value {_short(node)}")
    body = node[tag]
    if tag == "float":
        if body not in ("nan", "inf", "-inf"):
            raise ctx.fail(where, f"bad float {_short(body)}")
        return float(body)
    if tag == "tuple" and isinstance(body, list):
        return tuple(_decode(x, ctx, f"{where}.{i}") for i, x in enumerate(body))
    if tag == "dict" and isinstance(body, dict):
        return {k: _decode(x, ctx, f"{where}.{k}") for k, x in body.items()}
    if tag == "items" and isinstance(body, list):
        out = {}
        for i, pair in enumerate(body):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ctx.fail(where, "bad dict entry")
            key = _decode(pair[0], ctx, f"{where}.k{i}")
            try:
                out[key] = _decode(pair[1], ctx, f"{where}.{i}")
            except TypeError:
                raise ctx.fail(where, f"unhashable dict key {_short(key)}") from None
        return out
    if tag == "array":
        arr = ctx.arrays[body]
        return arr[()] if node.get("scalar") is True else arr
    if tag == "sparse":
        return _decode_sparse(node, ctx, where)
    if tag == "class":
        klass = _STATE_CLASSES.get(body) if isinstance(body, str) else None
        if klass is None:
            raise ctx.fail(where, f"class {_short(body)} is not a known Stateful class; refusing to load it")
        return _decode_object(node, klass, ctx, where)
    raise ctx.fail(where, f"bad {tag!r} value")


def _decode_sparse(node: dict, ctx: _Context, where: str):
    key, fmt, shape, kind = node["sparse"], node.get("format"), node.get("shape"), node.get("kind", "matrix")
    if (fmt not in _SPARSE_FORMATS or kind not in ("matrix", "array") or not isinstance(key, str)
            or not (isinstance(shape, list) and len(shape) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape))):
        raise ctx.fail(where, "bad sparse matrix entry")
    try:
        if fmt in ("csr", "csc"):
            klass = getattr(sp, f"{fmt}_{kind}")
            data, indices, indptr = (ctx.arrays[f"{key}.{n}"] for n in ("data", "indices", "indptr"))
            m = klass((data, indices, indptr), shape=tuple(shape))
            m.check_format(full_check=True)  # index bounds: scipy's C++ code trusts them
            if indices.dtype == indptr.dtype and m.indices.dtype != indices.dtype:
                m.indices, m.indptr = indices, indptr  # keep the saved index width
            return m
        data, row, col = (ctx.arrays[f"{key}.{n}"] for n in ("data", "row", "col"))
        m = getattr(sp, f"coo_{kind}")((data, (row, col)), shape=tuple(shape))
        return m if fmt == "coo" else m.asformat(fmt)
    except (ValueError, TypeError, IndexError) as exc:
        raise ctx.fail(where, f"bad sparse matrix ({_short(str(exc), 120)})") from None


def _decode_object(node: dict, klass: type, ctx: _Context, where: str):
    state = node.get("state")
    skip = klass._transient_names()
    if not isinstance(state, dict) or not all(isinstance(k, str) and k.isidentifier() and not k.startswith("__")
                                              and k not in skip for k in state):
        raise ctx.fail(where, "bad object state")
    params = node.get("params")
    if params is not None:
        if not isinstance(params, dict):
            raise ctx.fail(where, "bad constructor arguments")
        params = {k: _decode(v, ctx, f"{where}.params.{k}") for k, v in params.items()}
        try:
            obj = klass(**params)
        except (TypeError, ValueError) as exc:
            raise ctx.fail(where, f"bad constructor arguments for {klass.__name__} ({_short(str(exc), 120)})") from None
    else:
        obj = klass.__new__(klass)
    values = {k: _decode(v, ctx, f"{where}.{k}") for k, v in state.items()}
    if isinstance(obj, Recommender):
        obj.meta = ctx.meta
    obj.load_state(values)
    return obj
