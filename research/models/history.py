"""``History``: users given by what they watched (a seen and a rated CSR matrix over the model's
items), the input of fold-in (``Recommender.score_history``; docs/ARCHITECTURE.md, Fold-in).

No model code here: the harness, the list-file reader and the API build histories, the models read
them. ``research.models.base`` re-exports both names.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions
from research.errors import AnimeRecError


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
