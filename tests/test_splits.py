"""Split invariants: disjoint parts whose union is the input, per-user guarantees, same seed ->
same split, different seed -> different split."""
import numpy as np
import pandas as pd
import pytest

from research.data.interactions import build_dataset
from research.data.splits import cold_start_users, leave_k_out, random_split, user_holdout
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
