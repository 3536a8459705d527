"""Vocab (external id <-> dense index) and Interactions, shared by every model of a run.

One ``Vocab`` per entity per run: every model, split part and result speaks dense indices
``0..n-1`` internally, and only ``Vocab.ids`` turns them back into MyAnimeList ids. A missing
rating (``NaN``) marks a "watched, not scored" row (MAL score 0, CooperUnion -1): such rows count
as interactions for ranking models and are ignored by rating models and rating metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp


class Vocab:
    """A sorted set of external ids and their dense indices.

    Args:
        ids: external ids (any order, duplicates allowed); stored sorted and unique.
    """

    def __init__(self, ids):
        self._ids = np.unique(np.asarray(ids))

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} ids)"

    @property
    def values(self) -> np.ndarray:
        """All external ids, in index order."""
        return self._ids

    def index(self, ids, missing: str = "raise") -> np.ndarray:
        """Dense indices of external ``ids``.

        Args:
            ids: external ids (scalar or array).
            missing: "raise" to raise ``KeyError`` on an unknown id, or "mask" to return -1 for it.
        """
        arr = np.asarray(ids)
        if arr.dtype.kind != self._ids.dtype.kind and arr.size:
            try:
                arr = arr.astype(self._ids.dtype)
            except (TypeError, ValueError):
                if missing == "raise":
                    raise KeyError(f"unknown ids: {arr.ravel()[:5].tolist()}") from None
                return np.full(arr.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._ids, arr)
        pos = np.clip(pos, 0, max(len(self._ids) - 1, 0))
        ok = (self._ids[pos] == arr) if len(self._ids) else np.zeros(arr.shape, bool)
        if missing == "raise":
            if not np.all(ok):
                bad = np.asarray(arr)[~ok] if arr.ndim else arr
                raise KeyError(f"unknown ids: {np.atleast_1d(bad)[:5].tolist()}")
            return pos.astype(np.int64)
        return np.where(ok, pos, -1).astype(np.int64)

    def ids(self, index) -> np.ndarray:
        """External ids at dense ``index``."""
        return self._ids[np.asarray(index)]


@dataclass
class Meta:
    """What every part of a data set shares: vocabularies and the item side table.

    ``item_table`` (or None) has one row per item index with columns among ``name``, ``genres``
    (list of str), ``type``, ``studios`` (list), ``source``, ``episodes`` (float, NaN unknown),
    ``score``, ``members``, ``synopsis``; rows for anime missing from the catalogue hold NaN / [].
    """

    users: Vocab
    items: Vocab
    item_table: pd.DataFrame | None = None
    name: str = ""

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def item_names(self, index) -> list[str]:
        index = np.atleast_1d(np.asarray(index))
        if self.item_table is not None and "name" in self.item_table:
            names = self.item_table["name"].to_numpy()[index]
            return [str(n) if isinstance(n, str) else f"anime {i}" for n, i in zip(names, self.items.ids(index))]
        return [f"anime {i}" for i in self.items.ids(index)]


@dataclass
class Interactions:
    """Rows of (user index, item index, rating) over a shared ``Meta``.

    ``rating`` is float32 on the source scale (1-10 for MAL) with NaN for "watched, no score".
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    meta: Meta
    extra: dict = field(default_factory=dict)  # optional aligned columns, e.g. "status"

    def __post_init__(self):
        self.user = np.asarray(self.user, dtype=np.int32)
        self.item = np.asarray(self.item, dtype=np.int32)
        self.rating = np.asarray(self.rating, dtype=np.float32)
        if not (len(self.user) == len(self.item) == len(self.rating)):
            raise ValueError("user, item and rating must have the same length")

    def __len__(self) -> int:
        return len(self.user)

    def __repr__(self) -> str:
        return f"Interactions({len(self)} rows, {self.n_users} users, {self.n_items} items)"

    @property
    def n_users(self) -> int:
        return self.meta.n_users

    @property
    def n_items(self) -> int:
        return self.meta.n_items

    @property
    def rated(self) -> np.ndarray:
        """Boolean mask of rows that carry an explicit rating."""
        return ~np.isnan(self.rating)

    def take(self, index) -> "Interactions":
        """The rows at ``index`` (an integer array or a boolean mask)."""
        index = np.asarray(index)
        return Interactions(self.user[index], self.item[index], self.rating[index], self.meta,
                            {k: np.asarray(v)[index] for k, v in self.extra.items()})

    def only_rated(self) -> "Interactions":
        return self.take(self.rated)

    def concat(self, other: "Interactions") -> "Interactions":
        if other.meta is not self.meta:
            raise ValueError("cannot concatenate interactions over different vocabularies")
        keys = set(self.extra) & set(other.extra)
        return Interactions(np.concatenate([self.user, other.user]), np.concatenate([self.item, other.item]),
                            np.concatenate([self.rating, other.rating]), self.meta,
                            {k: np.concatenate([self.extra[k], other.extra[k]]) for k in keys})

    def to_csr(self, values: str = "ones", dtype=np.float32) -> sp.csr_matrix:
        """A users x items CSR matrix. ``values``: "ones" (interaction), "rating" (NaN -> 0,
        i.e. unrated rows dropped), or "rating_or_nan" is not offered: sparse zeros mean absent.
        Duplicate (user, item) pairs keep the last value."""
        if values == "ones":
            data = np.ones(len(self), dtype=dtype)
            mask = slice(None)
        elif values == "rating":
            mask = self.rated
            data = self.rating[mask].astype(dtype)
        else:
            raise ValueError(f"values must be 'ones' or 'rating', not {values!r}")
        user, item = self.user[mask], self.item[mask]
        # keep the last of duplicate pairs instead of summing them
        key = user.astype(np.int64) * self.n_items + item
        _, last = np.unique(key[::-1], return_index=True)
        keep = len(key) - 1 - last
        m = sp.csr_matrix((data[keep], (user[keep], item[keep])), shape=(self.n_users, self.n_items))
        m.sort_indices()
        return m

    def users_present(self) -> np.ndarray:
        return np.unique(self.user)

    def items_present(self) -> np.ndarray:
        return np.unique(self.item)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"user": self.user, "item": self.item, "rating": self.rating, **self.extra})


@dataclass
class Dataset:
    """A loaded data set: all interactions, their ``Meta``, and the preparation manifest."""

    interactions: Interactions
    manifest: dict = field(default_factory=dict)

    @property
    def meta(self) -> Meta:
        return self.interactions.meta

    @property
    def name(self) -> str:
        return self.meta.name


def build_dataset(frame: pd.DataFrame, item_table: pd.DataFrame | None = None, name: str = "",
                  manifest: dict | None = None) -> Dataset:
    """Build vocabularies and Interactions from external ids.

    Args:
        frame: columns ``user``, ``item`` (external ids), ``rating`` (float, NaN = unrated) and
            optionally ``status``.
        item_table: side features indexed by external anime id (any subset of the catalogue). The
            item vocabulary is the union of rated items and catalogue items, so side-feature models
            can embed anime nobody rated; ranking candidates are restricted by the harness to
            items seen in training.
        name: data set name.

    Rows are sorted by (user, item) so that splits do not depend on file order.
    """
    users = Vocab(frame["user"].to_numpy())
    item_ids = frame["item"].to_numpy()
    if item_table is not None:
        item_ids = np.concatenate([item_ids, item_table.index.to_numpy().astype(item_ids.dtype)])
    items = Vocab(item_ids)
    table = None
    if item_table is not None:
        table = item_table.reindex(items.values).reset_index(drop=True)
        for col in ("genres", "studios"):
            if col in table:
                table[col] = [v if isinstance(v, list) else [] for v in table[col]]
    meta = Meta(users=users, items=items, item_table=table, name=name)
    user = users.index(frame["user"].to_numpy())
    item = items.index(frame["item"].to_numpy())
    # Rows in (user, item) order: a seeded split then depends only on the data, not on the order
    # the rows came in (raw CSV vs the bucketed parquet of ``prepare`` give the same split).
    order = np.lexsort((item, user))
    extra = {"status": frame["status"].to_numpy()[order]} if "status" in frame else {}
    inter = Interactions(user[order], item[order],
                         frame["rating"].to_numpy(dtype=np.float32, na_value=np.nan)[order], meta, extra)
    return Dataset(inter, manifest or {})
