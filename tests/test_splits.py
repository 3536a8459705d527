"""Split invariants: disjoint parts whose union is the input, per-user guarantees, same seed ->
same split, different seed -> different split."""
import numpy as np
import pandas as pd
import pytest

from research.config import SplitConfig
from research.data.interactions import build_dataset
from research.data.splits import cold_start_users, heldout_users, leave_k_out, make_split, random_split, user_holdout
from research.errors import ConfigError


@pytest.fixture(scope="module")
def data():
    r = np.random.default_rng(1)
    f = pd.DataFrame({"user": r.integers(0, 120, 5000), "item": r.integers(0, 300, 5000),
                      "rating": r.integers(1, 11, 5000).astype(float)}).drop_duplicates(["user", "item"])
    return build_dataset(f).interactions


def _keys(part):
    return set(zip(part.user.tolist(), part.item.tolist()))


SPLITTERS = [
    lambda d, s: random_split(d, 0.2, 0.1, s),
    lambda d, s: user_holdout(d, 0.2, 0.1, s),
    lambda d, s: leave_k_out(d, 2, s),
    lambda d, s: cold_start_users(d, 0.2, 0.1, s),
]


@pytest.mark.parametrize("split", SPLITTERS)
def test_disjoint_union_and_seeded(data, split):
    a = split(data, 0)
    parts = [_keys(a.train), _keys(a.val), _keys(a.test)]
    assert sum(len(p) for p in parts) == len(data)
    assert parts[0] | parts[1] | parts[2] == _keys(data)
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    b = split(data, 0)
    assert np.array_equal(a.test.user, b.test.user) and np.array_equal(a.test.item, b.test.item)
    c = split(data, 1)
    assert _keys(c.test) != _keys(a.test)


def test_random_split_sizes(data):
    s = random_split(data, 0.2, 0.1, 0)
    assert len(s.test) == round(0.2 * len(data))
    assert len(s.val) == round(0.1 * (len(data) - len(s.test)))


def test_user_holdout_same_users(data):
    s = user_holdout(data, 0.2, 0.1, 0)
    counts = np.bincount(data.user, minlength=data.n_users)
    multi = np.flatnonzero(counts >= 2)
    assert set(np.unique(s.test.user)) == set(multi)  # every user with >= 2 rows has a test row
    assert set(np.unique(s.test.user)) <= set(np.unique(s.train.user))


def test_leave_k_out_exactly_k(data):
    s = leave_k_out(data, 2, 0)
    per_user = np.bincount(s.test.user, minlength=data.n_users)
    counts = np.bincount(data.user, minlength=data.n_users)
    assert (per_user[counts > 4] == 2).all()
    assert (per_user[counts <= 4] == 0).all()
    assert (np.bincount(s.val.user, minlength=data.n_users)[counts > 4] == 2).all()


def test_cold_start_users_disjoint(data):
    s = cold_start_users(data, 0.2, 0.1, 0)
    assert not set(np.unique(s.test.user)) & set(np.unique(s.train.user))
    assert not set(np.unique(s.val.user)) & set(np.unique(s.train.user))


def test_bad_fraction(data):
    with pytest.raises(ConfigError):
        random_split(data, 1.5, 0.1, 0)


def test_random_split_fixed_test_rows(data):
    s = random_split(data, 0.2, 0.1, 0, test_rows=100)
    assert len(s.test) == 100 and len(s.val) == round(0.1 * (len(data) - 100))
    with pytest.raises(ConfigError):
        random_split(data, 0.2, 0.1, 0, test_rows=len(data))


# ---- held-out users (split.kind = "users") ---------------------------------------------------
def _heldout_parts(s):
    return [s.train, s.val_history, s.val, s.test_history, s.test]


@pytest.mark.parametrize("fold_in", [0.8, 0.5, 0.3])
def test_heldout_users_parts_disjoint_union_and_seeded(data, fold_in):
    s = heldout_users(data, 0.2, 0.1, fold_in, seed=0)
    assert s.heldout and not random_split(data, 0.2, 0.1, 0).heldout
    parts = [_keys(p) for p in _heldout_parts(s)]
    assert sum(len(p) for p in _heldout_parts(s)) == len(data)
    assert set().union(*parts) == _keys(data)
    assert sum(len(p) for p in parts) == len(_keys(data))  # pairwise disjoint
    again = heldout_users(data, 0.2, 0.1, fold_in, seed=0)
    for a, b in zip(_heldout_parts(s), _heldout_parts(again)):
        assert np.array_equal(a.user, b.user) and np.array_equal(a.item, b.item)
    other = heldout_users(data, 0.2, 0.1, fold_in, seed=1)
    assert _keys(other.test) != _keys(s.test)


def test_heldout_users_absent_from_train_and_counted_as_cold_start(data):
    s = heldout_users(data, 0.2, 0.1, 0.8, seed=0)
    train_users = set(np.unique(s.train.user))
    test_users = set(np.unique(s.test_history.user)) | set(np.unique(s.test.user))
    val_users = set(np.unique(s.val_history.user)) | set(np.unique(s.val.user))
    assert not train_users & test_users and not train_users & val_users and not test_users & val_users
    assert train_users | test_users | val_users == set(np.unique(data.user))
    # the users are drawn as cold_start_users draws them (same fractions, same seed)
    cold = cold_start_users(data, 0.2, 0.1, 0)
    assert test_users == set(np.unique(cold.test.user)) and val_users == set(np.unique(cold.val.user))
    n = len(np.unique(data.user))
    assert len(test_users) == round(0.2 * n) and len(val_users) == round(0.1 * (n - round(0.2 * n)))


@pytest.mark.parametrize("fold_in", [0.8, 0.5, 0.3])
def test_heldout_users_fold_in_fraction_per_user(fold_in):
    r = np.random.default_rng(4)
    rows = [(u, i) for u in range(60) for i in r.choice(200, int(r.integers(1, 25)), replace=False)]
    f = pd.DataFrame(rows, columns=["user", "item"]).assign(rating=7.0)
    d = build_dataset(f).interactions
    s = heldout_users(d, 0.3, 0.2, fold_in, seed=2)
    count = np.bincount(d.user, minlength=d.n_users)
    for hist, target in ((s.test_history, s.test), (s.val_history, s.val)):
        users = np.union1d(hist.user, target.user)
        h = np.bincount(hist.user, minlength=d.n_users)[users]
        t = np.bincount(target.user, minlength=d.n_users)[users]
        c = count[users]
        assert (h + t == c).all()
        expect = np.where(c >= 2, np.clip(np.floor(fold_in * c + 0.5), 1, c - 1), c)
        assert (h == expect).all()
        assert (t[c >= 2] >= 1).all() and (h >= 1).all()  # every user has a history; >= 2 rows: a target


def test_heldout_users_fit_parts(data):
    s = heldout_users(data, 0.2, 0.1, 0.8, seed=0)
    assert _keys(s.fit_val()) == _keys(s.val_history) | _keys(s.val)
    assert _keys(s.train_val()) == _keys(data) - _keys(s.test) - _keys(s.test_history)
    assert not set(np.unique(s.train_val().user)) & set(np.unique(s.test.user))
    r = random_split(data, 0.2, 0.1, 0)  # the other splits: fit_val is val, train_val as before
    assert r.fit_val() is r.val and _keys(r.train_val()) == _keys(r.train) | _keys(r.val)
    assert r.val_history is None and r.test_history is None


def test_heldout_users_from_config_and_bad_fraction(data):
    s = make_split(data, SplitConfig(kind="users", fold_in_fraction=0.5), seed=3)
    ref = heldout_users(data, 0.2, 0.1, 0.5, seed=3)
    assert _keys(s.test) == _keys(ref.test) and _keys(s.test_history) == _keys(ref.test_history)
    assert s.name == "users(test=0.2,val=0.1,fold_in=0.5,seed=3)"
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="fold_in_fraction"):
            heldout_users(data, 0.2, 0.1, bad, seed=0)
    with pytest.raises(ConfigError, match="test_fraction"):
        heldout_users(data, 1.0, 0.1, 0.8, seed=0)
