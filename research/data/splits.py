"""Train / validation / test splits. Every function takes ``seed``; the same seed gives the same
split. Parts are disjoint sets of rows whose union is the input (invariants tested in
``tests/test_splits.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from research.data.interactions import Interactions
from research.errors import ConfigError

SPLITS = ("random", "user_holdout", "leave_k_out", "cold_start")


@dataclass
class Split:
    """Three disjoint parts of one Interactions set over the same Meta."""

    train: Interactions
    val: Interactions
    test: Interactions
    name: str

    @property
    def meta(self):
        return self.train.meta

    def train_val(self) -> Interactions:
        """Train and validation together (for the final refit after tuning)."""
        return self.train.concat(self.val)


def _parts(data: Interactions, part: np.ndarray, name: str) -> Split:
    """part: 0 train, 1 val, 2 test for each row."""
    return Split(data.take(part == 0), data.take(part == 1), data.take(part == 2), name)


def random_split(data: Interactions, test_fraction: float = 0.2, val_fraction: float = 0.1,
                 seed: int = 0, test_rows: int = 0) -> Split:
    """Rows at random: ``test_fraction`` to test, then ``val_fraction`` of the rest to validation.

    The reference protocol (docs/ARCHITECTURE.md) (80/20 with 10% of train for validation). A user may end up with
    no test row (counted by the harness) or no train row (a cold user in test). ``test_rows > 0``
    holds out exactly that many rows instead of a fraction (the study's 10,000-row holdout).
    """
    _check_fraction(test_fraction, val_fraction)
    r = np.random.default_rng(seed)
    n = len(data)
    order = r.permutation(n)
    if test_rows < 0 or test_rows >= n > 0:
        raise ConfigError(f"split.test_rows must be in [0, {n}), got {test_rows}")
    n_test = int(test_rows) if test_rows else int(round(test_fraction * n))
    n_val = int(round(val_fraction * (n - n_test)))
    part = np.zeros(n, dtype=np.int8)
    part[order[:n_test]] = 2
    part[order[n_test:n_test + n_val]] = 1
    held = f"test_rows={test_rows}" if test_rows else f"test={test_fraction}"
    return _parts(data, part, f"random({held},val={val_fraction},seed={seed})")


def _rank_within_user(user: np.ndarray, r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random rank 0..c-1 of each row within its user, and each row's user row count."""
    key = r.random(len(user))
    order = np.lexsort((key, user))
    su = user[order]
    starts = np.r_[0, np.flatnonzero(su[1:] != su[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(su)])
    rank_sorted = np.arange(len(su)) - np.repeat(starts, counts)
    rank = np.empty(len(user), dtype=np.int64)
    rank[order] = rank_sorted
    count = np.empty(len(user), dtype=np.int64)
    count[order] = np.repeat(counts, counts)
    return rank, count


def user_holdout(data: Interactions, test_fraction: float = 0.2, val_fraction: float = 0.1,
                 seed: int = 0) -> Split:
    """Per user, a random ``test_fraction`` of their rows to test and ``val_fraction`` of the rest
    to validation, so the same users appear in every part (the study's protocol). A user with one
    row keeps it in train."""
    _check_fraction(test_fraction, val_fraction)
    rank, count = _rank_within_user(data.user, np.random.default_rng(seed))
    n_test = np.where(count >= 2, np.maximum(1, np.floor(test_fraction * count + 0.5)), 0).astype(np.int64)
    rest = count - n_test
    n_val = np.where(rest >= 2, np.floor(val_fraction * rest + 0.5), 0).astype(np.int64)
    part = np.where(rank < n_test, 2, np.where(rank < n_test + n_val, 1, 0)).astype(np.int8)
    return _parts(data, part, f"user_holdout(test={test_fraction},val={val_fraction},seed={seed})")


def leave_k_out(data: Interactions, k: int = 1, seed: int = 0) -> Split:
    """Per user, ``k`` random rows to test and ``k`` more to validation. Users with at most
    ``2k`` rows stay whole in train (counted by the harness as users without test items)."""
    if k < 1:
        raise ConfigError(f"split.k must be >= 1, got {k}")
    rank, count = _rank_within_user(data.user, np.random.default_rng(seed))
    eligible = count > 2 * k
    part = np.where(eligible & (rank < k), 2, np.where(eligible & (rank < 2 * k), 1, 0)).astype(np.int8)
    return _parts(data, part, f"leave_{k}_out(seed={seed})")


def cold_start_users(data: Interactions, test_fraction: float = 0.2, val_fraction: float = 0.1,
                     seed: int = 0) -> Split:
    """Whole users held out: a random ``test_fraction`` of users go to test, ``val_fraction`` of the
    remaining users to validation. No test user has a training row."""
    _check_fraction(test_fraction, val_fraction)
    r = np.random.default_rng(seed)
    users = np.unique(data.user)
    order = r.permutation(users)
    n_test = int(round(test_fraction * len(users)))
    n_val = int(round(val_fraction * (len(users) - n_test)))
    user_part = np.zeros(data.n_users, dtype=np.int8)
    user_part[order[:n_test]] = 2
    user_part[order[n_test:n_test + n_val]] = 1
    return _parts(data, user_part[data.user], f"cold_start(test={test_fraction},val={val_fraction},seed={seed})")


def make_split(data: Interactions, cfg, seed: int) -> Split:
    """The split a ``SplitConfig`` asks for."""
    if cfg.kind == "random":
        return random_split(data, cfg.test_fraction, cfg.val_fraction, seed, cfg.test_rows)
    if cfg.kind == "user_holdout":
        return user_holdout(data, cfg.test_fraction, cfg.val_fraction, seed)
    if cfg.kind == "leave_k_out":
        return leave_k_out(data, cfg.k, seed)
    if cfg.kind == "cold_start":
        return cold_start_users(data, cfg.test_fraction, cfg.val_fraction, seed)
    import difflib

    near = difflib.get_close_matches(cfg.kind, SPLITS, n=1)
    raise ConfigError(f"unknown split.kind {cfg.kind!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                          f" (valid: {', '.join(SPLITS)})"))


def _check_fraction(test_fraction: float, val_fraction: float) -> None:
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= f < 1.0:
            raise ConfigError(f"split.{name} must be in [0, 1), got {f}")
