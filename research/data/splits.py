"""Train / validation / test splits. Every function takes ``seed``; the same seed gives the same
split. Parts are disjoint sets of rows whose union is the input (invariants tested in
``tests/test_splits.py``).

``heldout_users`` (``split.kind = "users"``, strong generalisation) adds two parts, the held-out
users' *histories* (``Split.val_history``, ``Split.test_history``): there ``val`` and ``test`` are
the held-out users' *targets*, and the five parts together are the input."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from research.data.interactions import Interactions
from research.errors import ConfigError

SPLITS = ("random", "user_holdout", "leave_k_out", "cold_start", "users")


@dataclass
class Split:
    """Disjoint parts of one Interactions set over the same Meta: three for the row- and
    user-level splits, five for held-out users.

    ``val_history`` / ``test_history`` are None except in a held-out-users split
    (``heldout_users``), where the validation and test users have no row in ``train``: each such
    user's rows are divided into a *history* (``val_history`` / ``test_history``, what the
    harness folds in with ``score_history``) and *targets* (``val`` / ``test``, what it scores).
    """

    train: Interactions
    val: Interactions
    test: Interactions
    name: str
    val_history: Interactions | None = None
    test_history: Interactions | None = None

    @property
    def meta(self):
        return self.train.meta

    @property
    def heldout(self) -> bool:
        """True for a held-out-users split (validation and test users folded in, not fitted)."""
        return self.test_history is not None

    def fit_val(self) -> Interactions:
        """What ``fit(train, val)`` gets as its validation part with ``split.fit_on = "train"``:
        ``val`` for the row- and user-level splits; for held-out users every row of the
        validation users (``val_history`` + ``val``), so a model that fits on train + validation
        (a peer's ``use_validation``) sees exactly ``train_val()``. The test users are in neither.
        Early stopping scores validation users by what it knows of them in ``train``, which a
        held-out validation user lacks (the harness's own ``part="val"`` folds them in): the
        models that validate on a history get ``val_history`` apart (``Recommender.fit_split``)."""
        return self.val if self.val_history is None else self.val_history.concat(self.val)

    def train_val(self) -> Interactions:
        """Train and validation together (for the final refit after tuning, and what every model
        is fitted on with ``split.fit_on = "train+val"``). For held-out users: train plus every
        row of the validation users (their histories and targets); the test users' rows are
        never in it, so they stay held out."""
        return self.train.concat(self.fit_val())


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


def _user_parts(data: Interactions, test_fraction: float, val_fraction: float,
                r: np.random.Generator) -> np.ndarray:
    """Per user index: 2 (test), 1 (validation) or 0 (train). A random ``test_fraction`` of the
    users with a row go to test, ``val_fraction`` of the remaining users to validation."""
    users = np.unique(data.user)
    order = r.permutation(users)
    n_test = int(round(test_fraction * len(users)))
    n_val = int(round(val_fraction * (len(users) - n_test)))
    user_part = np.zeros(data.n_users, dtype=np.int8)
    user_part[order[:n_test]] = 2
    user_part[order[n_test:n_test + n_val]] = 1
    return user_part


def cold_start_users(data: Interactions, test_fraction: float = 0.2, val_fraction: float = 0.1,
                     seed: int = 0) -> Split:
    """Whole users held out: a random ``test_fraction`` of users go to test, ``val_fraction`` of the
    remaining users to validation. No test user has a training row."""
    _check_fraction(test_fraction, val_fraction)
    user_part = _user_parts(data, test_fraction, val_fraction, np.random.default_rng(seed))
    return _parts(data, user_part[data.user], f"cold_start(test={test_fraction},val={val_fraction},seed={seed})")


def heldout_users(data: Interactions, test_fraction: float = 0.2, val_fraction: float = 0.1,
                  fold_in_fraction: float = 0.8, seed: int = 0) -> Split:
    """Strong generalisation (Liang et al. 2018): whole users held out, then folded in.

    The users are drawn as ``cold_start_users`` draws them (the same seed holds out the same
    test and validation users): a random ``test_fraction`` of the users to test,
    ``val_fraction`` of the remaining users to validation; ``train`` has every row of the other
    users and none of theirs. Each held-out user's rows are then divided at random (the same
    seeded generator, continued) into a *history* of ``round(fold_in_fraction * n)`` rows, kept
    within ``[1, n - 1]`` so that a user with ``n >= 2`` rows has both parts, and *targets*, the
    rest; a held-out user with one row keeps it as history (no target: counted by the harness).
    Parts: ``train``; ``val_history`` / ``val`` (validation users' history / targets);
    ``test_history`` / ``test`` (test users'). What ``fit`` sees: ``Split.fit_val`` and
    ``Split.train_val``.
    """
    _check_fraction(test_fraction, val_fraction)
    if not 0.0 < fold_in_fraction < 1.0:
        raise ConfigError(f"split.fold_in_fraction must be in (0, 1), got {fold_in_fraction}")
    r = np.random.default_rng(seed)
    user_part = _user_parts(data, test_fraction, val_fraction, r)[data.user]
    history = history_rows(data.user, fold_in_fraction, r)
    # 0 train, 1 val targets, 2 test targets, 3 val history, 4 test history
    part = np.where((user_part > 0) & history, user_part + 2, user_part).astype(np.int8)
    name = f"users(test={test_fraction},val={val_fraction},fold_in={fold_in_fraction},seed={seed})"
    return Split(data.take(part == 0), data.take(part == 1), data.take(part == 2), name,
                 val_history=data.take(part == 3), test_history=data.take(part == 4))


def history_rows(user: np.ndarray, fraction: float, r: np.random.Generator) -> np.ndarray:
    """Boolean mask over rows grouped by ``user``: per user a random ``round(fraction * n)`` of
    their rows, kept within ``[1, n - 1]`` when ``n >= 2`` (so both parts are non-empty); a user
    with one row keeps it. The history / target rule of ``heldout_users`` and ``animerec verify``."""
    rank, count = _rank_within_user(np.asarray(user), r)
    n_hist = np.where(count >= 2, np.clip(np.floor(fraction * count + 0.5), 1, count - 1), count)
    return rank < n_hist


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
    if cfg.kind == "users":
        return heldout_users(data, cfg.test_fraction, cfg.val_fraction, cfg.fold_in_fraction, seed)
    import difflib

    near = difflib.get_close_matches(cfg.kind, SPLITS, n=1)
    raise ConfigError(f"unknown split.kind {cfg.kind!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                          f" (valid: {', '.join(SPLITS)})"))


def _check_fraction(test_fraction: float, val_fraction: float) -> None:
    for name, f in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= f < 1.0:
            raise ConfigError(f"split.{name} must be in [0, 1), got {f}")
