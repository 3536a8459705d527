"""EASE (research.models.ease): the closed form against an explicit float64 inverse, the blocked
Gram / in-place Cholesky paths, the treatment of items with no interaction, the options
(weighting, use_validation), the memory refusal, similar_items and the explanation terms."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from research.data.interactions import Interactions, build_dataset
from research.errors import AnimeRecError, ConfigError, ResourceError
from research.models.ease import EASE

# 5 users x 5 anime (ids 1..5) with two "watched, not scored" rows; anime 6 is in the catalogue
# but nobody watched it.
HAND = [
    (10, 1, 8.0), (10, 2, 7.0), (10, 4, np.nan),
    (11, 1, 9.0), (11, 3, 6.0),
    (12, 2, 5.0), (12, 3, 10.0), (12, 5, 4.0),
    (13, 1, 7.0), (13, 2, np.nan), (13, 3, 8.0), (13, 5, 9.0),
    (14, 4, 6.0), (14, 5, 3.0),
]


def hand_data():
    frame = pd.DataFrame(HAND, columns=["user", "item", "rating"])
    table = pd.DataFrame({"name": [f"Anime {i}" for i in range(1, 7)]}, index=range(1, 7))
    return build_dataset(frame, table, name="hand").interactions


def reference_b(x: np.ndarray, lam: float) -> np.ndarray:
    """Steck's closed form with an explicit float64 inverse."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def random_data(n_users=300, n_items=1300, per_user=40, seed=0, unrated=0.1):
    r = np.random.default_rng(seed)
    rows = []
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.7
    pop /= pop.sum()
    ids = r.permutation(n_items)  # popularity unrelated to the item index
    for u in range(n_users):
        for i in ids[r.choice(n_items, per_user, replace=False, p=pop)]:
            rows.append((u, i, float(r.integers(1, 11)) if r.random() > unrated else np.nan))
    return build_dataset(pd.DataFrame(rows, columns=["user", "item", "rating"])).interactions


def test_b_matches_explicit_inverse_on_hand_case():
    data = hand_data()
    m = EASE(lam=2.0, weighting="binary").fit(data)
    assert m.active.tolist() == [0, 1, 2, 3, 4]  # anime 6 (index 5) has no interaction
    x = np.zeros((5, 5))
    for u, i, _ in HAND:
        x[u - 10, i - 1] = 1.0
    np.testing.assert_allclose(m.B, reference_b(x, 2.0), rtol=1e-5, atol=1e-6)
    assert m.B.dtype == np.float32
    assert (np.diag(m.B) == 0).all()


def test_blocked_gram_and_mirroring_match_reference():
    # more items than one mirroring block (1024 rows) and many Gram column blocks
    data = random_data()
    m = EASE(lam=7.0, weighting="binary", block_mb=0.5).fit(data)
    n = len(m.active)
    assert n > 1024
    x = m.history.toarray().astype(np.float64)
    np.testing.assert_allclose(m.B, reference_b(x, 7.0), rtol=0, atol=2e-5)
    assert (np.diag(m.B) == 0).all()
    assert np.isfinite(m.B).all()


def test_inactive_items_below_every_active_item():
    data = random_data(n_users=60, n_items=200, per_user=15, seed=1)
    m = EASE(lam=1.0).fit(data.take(data.item < data.n_items - 8))  # the last 8: no training row
    s = m.score(np.arange(data.n_users))
    assert s.shape == (data.n_users, data.n_items) and np.isfinite(s).all()
    inactive = np.setdiff1d(np.arange(data.n_items), m.active)
    assert len(inactive) >= 5
    act = s[:, m.active]
    assert (act < 0).any()  # so the exact-EASE value 0 would rank inactive items above some
    assert (s[:, inactive].max(axis=1) < act.min(axis=1)).all()
    items, _ = m.recommend(np.arange(data.n_users), k=len(m.active))
    assert np.isin(items, m.active).all()


def test_rating_weighting_uses_ratings_and_one_for_unrated():
    data = hand_data()
    binary = EASE(lam=2.0, weighting="binary").fit(data)
    rating = EASE(lam=2.0, weighting="rating").fit(data)
    assert (binary.history.data == 1).all()
    x = rating.history.toarray()
    for u, i, r in HAND:
        assert x[u - 10, i - 1] == (1.0 if np.isnan(r) else r)
    np.testing.assert_allclose(rating.B, reference_b(x.astype(np.float64), 2.0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(rating.B, binary.B)


def test_use_validation_fits_and_scores_with_validation_rows():
    data = hand_data()
    val_mask = (data.user == 0) & (data.item == 3)  # user 10's anime 4 goes to validation
    train, val = data.take(~val_mask), data.take(val_mask)
    off = EASE(lam=2.0, weighting="binary").fit(train, val)
    on = EASE(lam=2.0, weighting="binary", use_validation=True).fit(train, val)
    assert 3 in on.active and 3 in off.active  # user 14 watched anime 4 in train
    assert on.history[0].toarray()[0, on.position[3]] == 1
    assert off.history[0].toarray()[0, off.position[3]] == 0
    assert not np.allclose(on.score([0]), off.score([0]))


def test_use_validation_activates_items_only_in_validation():
    data = hand_data()
    val_mask = data.item == 3  # every row of anime 4 in validation
    train, val = data.take(~val_mask), data.take(val_mask)
    assert 3 not in EASE(lam=2.0).fit(train, val).active
    assert 3 in EASE(lam=2.0, use_validation=True).fit(train, val).active


def test_memory_refusal_is_a_resource_error_before_allocating():
    data = random_data(n_users=50, n_items=400, per_user=10)
    m = EASE(lam=1.0, memory_limit_gb=1e-6)
    with pytest.raises(ResourceError) as exc:
        m.fit(data)
    assert isinstance(exc.value, AnimeRecError)  # the CLI prints one line and exits 2
    n = int(len(np.unique(data.item)))
    msg = str(exc.value)
    assert f"{n:,} active items" in msg and "MiB" in msg and "1.0 KiB" in msg
    assert not hasattr(m, "B")
    EASE(lam=1.0, memory_limit_gb=1.0).fit(data)  # the same data fit under a real limit


def test_memory_refusal_exits_2_from_the_cli(tmp_path, capsys):
    from research.cli import main

    rows = "\n".join(f"{u},{i},{(u + i) % 10 + 1}" for u in range(20) for i in range(u % 7, 60, 3))
    (tmp_path / "r.csv").write_text("user,item,rating\n" + rows + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'results_dir = "{tmp_path / "results"}"\n[data]\nsource = "generic"\npath = "{tmp_path}"\n'
                   f'ratings = "r.csv"\nfallback_to_synth = false\n[models.ease]\nmemory_limit_gb = 1e-9\n')
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("animerec: error: ease:") and "active items need about" in err[-1]


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        EASE(weighting="log")
    with pytest.raises(ConfigError):
        EASE(lam=0.0)
    with pytest.raises(ConfigError):
        EASE(memory_limit_gb=-1)


def test_similar_items_is_row_of_b_never_the_query():
    data = random_data(n_users=80, n_items=120, per_user=12, seed=2)
    train = data.take(data.item != 5)  # item 5: no interaction
    m = EASE(lam=3.0).fit(train)
    q = m.active
    ids, sims = m.similar_items(q, k=6)
    assert ids.shape == sims.shape == (len(q), 6)
    assert (ids != q[:, None]).all() and np.isin(ids, m.active).all()
    assert (sims[:, :-1] >= sims[:, 1:]).all()
    row = m.B[m.position[q[0]]].astype(np.float64).copy()
    row[m.position[q[0]]] = -np.inf
    assert ids[0, 0] == m.active[np.argmax(row)]
    np.testing.assert_allclose(sims[0], np.sort(row)[::-1][:6])
    every, _ = m.similar_items(q, k=len(q))  # the query is excluded even when all else is listed
    assert (every[:, :-1] != q[:, None]).all() and (every[:, -1] == -1).all()
    assert (np.sort(every[:, :-1], axis=1) == np.sort(q)[None, :].repeat(len(q), 0)[~np.eye(len(q), dtype=bool)]
            .reshape(len(q), -1)).all()
    cold_ids, cold_sims = m.similar_items(np.array([5]), k=4)
    assert cold_ids.shape == (1, 4) and (cold_ids != 5).all() and (cold_sims == 0).all()
    counts = np.bincount(train.item, minlength=train.n_items)
    assert (np.diff(counts[cold_ids[0]]) <= 0).all()  # most interacted-with first


def test_explain_terms_sum_to_the_score():
    data = random_data(n_users=40, n_items=150, per_user=15, seed=3)
    m = EASE(lam=2.0, weighting="rating").fit(data.take(data.item != 0))
    s = m.score(np.arange(data.n_users))
    r = np.random.default_rng(0)
    for u, i in zip(r.integers(0, data.n_users, 20), r.choice(m.active, 20)):
        terms = m.explain(int(u), int(i), k=None)
        assert len(terms) == m.history[int(u)].nnz
        assert sum(c for _, c in terms) == pytest.approx(float(s[u, i]), rel=1e-4, abs=1e-5)
        top = m.explain(int(u), int(i))
        assert top == terms[:3] and all(a[1] >= b[1] for a, b in zip(top, top[1:]))
        assert all(j in m.active for j, _ in top)
    assert m.explain(0, 0) == []  # item 0 has no interaction


def test_explain_hook_names_the_top_contribution():
    from research.explain import _Reasons

    data = hand_data()
    m = EASE(lam=0.5).fit(data)
    user, item = 4, 0  # user 14 (anime 4, 5) and anime 1
    terms = m.explain(user, item)
    best = max(terms, key=lambda t: t[1])
    assert best[1] > 0
    row = sp.csr_matrix((np.nan_to_num(data.rating, nan=0.0), (data.user, data.item)),
                        shape=(data.n_users, data.n_items))[user]
    line = _Reasons(m, data.meta, row.indices, row.data, user=user).reason(item)
    assert line.startswith("because you ") and f"Anime {best[0] + 1}" in line
    assert f"contribution {best[1]:.3f}" in line


def test_fitted_attributes_are_data_only():
    m = EASE(lam=2.0).fit(hand_data())
    skip = set(getattr(type(m), "transient", ())) | {"meta"}  # not saved (vocabularies, log dir)
    for name, value in vars(m).items():
        if name in skip:
            continue
        ok = isinstance(value, (np.ndarray, sp.spmatrix, sp.sparray, str, bool, int, float, type(None)))
        assert ok, (name, type(value))
    assert isinstance(m.history, sp.csr_matrix) and m.B.dtype == np.float32


def test_duplicate_rows_keep_the_last_value():
    # duplicate (user, item) rows keep the last value, as Interactions.to_csr does
    data = hand_data()
    dup = Interactions(np.r_[data.user, 0], np.r_[data.item, 0], np.r_[data.rating, 2.0], data.meta)
    m = EASE(lam=2.0, weighting="rating").fit(dup)
    assert m.history[0].toarray()[0, m.position[0]] == 2.0


def test_save_load_round_trip(tmp_path):
    data = hand_data()
    m = EASE(lam=2.0, weighting="rating").fit(data)
    m.save(tmp_path / "ease")
    again = EASE.load(tmp_path / "ease", data.meta)
    users = np.arange(data.n_users)
    np.testing.assert_array_equal(again.score(users), m.score(users))
    assert again.explain(0, 2, k=None) == m.explain(0, 2, k=None)
