"""tf.data pipelines: per-epoch reshuffle, determinism, every row once per epoch, streaming."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import research  # noqa: F401
from research.data import tfdata
from research.data.interactions import Interactions, Meta, Vocab
from research.errors import DataError

pytestmark = pytest.mark.keras


def _epoch_rows(ds, key="x"):
    return np.concatenate([b[key].numpy() for b in ds])


def _pipe(n=103, batch=10, seed=7, **kw):
    return tfdata.from_arrays({"x": np.arange(n, dtype=np.int64), "y": np.arange(n) * 2.0}, batch, seed=seed, **kw)


def test_every_row_once_per_epoch_and_new_order_each_epoch():
    pipe = _pipe()
    ds = pipe.dataset()
    orders = [_epoch_rows(ds) for _ in range(3)]
    for o in orders:
        assert np.array_equal(np.sort(o), np.arange(103))  # a permutation: each row exactly once
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    # batches: 10 full ones and a remainder of 3, columns stay aligned
    batches = list(ds)
    assert [len(b["x"]) for b in batches] == [10] * 10 + [3]
    for b in batches:
        assert np.array_equal(b["y"].numpy(), b["x"].numpy() * 2.0)
    assert pipe.steps_per_epoch == 11 and int(ds.cardinality()) == 11


def test_same_seed_same_orders_other_seed_differs():
    a = [_epoch_rows(_pipe(seed=7).dataset()) for _ in range(1)]
    p1, p2 = _pipe(seed=7), _pipe(seed=7)
    o1 = [_epoch_rows(p1.dataset()) for _ in range(3)]
    o2 = [_epoch_rows(p2.dataset()) for _ in range(3)]
    for x, y in zip(o1, o2):
        assert np.array_equal(x, y)
    assert np.array_equal(a[0], o1[0])
    o3 = _epoch_rows(_pipe(seed=8).dataset())
    assert not np.array_equal(o1[0], o3)


def test_set_epoch_replays_that_epoch_and_matches_permutation():
    pipe = _pipe()
    ds = pipe.dataset()
    orders = [_epoch_rows(ds) for _ in range(3)]
    pipe.set_epoch(1)
    assert np.array_equal(_epoch_rows(ds), orders[1])
    assert np.array_equal(pipe.permutation(2), orders[2])
    assert pipe.epoch == 2


def test_no_shuffle_keeps_order_and_drop_remainder():
    ds = _pipe(shuffle=False).dataset()
    assert np.array_equal(_epoch_rows(ds), np.arange(103))
    assert np.array_equal(_epoch_rows(ds), np.arange(103))
    d2 = _pipe(drop_remainder=True).dataset()
    rows = _epoch_rows(d2)
    assert len(rows) == 100 and len(np.unique(rows)) == 100


def test_from_interactions_drops_unrated_rows():
    meta = Meta(Vocab([1, 2]), Vocab([10, 20, 30]))
    inter = Interactions([0, 1, 1, 0], [0, 1, 2, 2], [5.0, np.nan, 7.0, 3.0], meta)
    pipe = tfdata.from_interactions(inter, batch_size=8, shuffle=False)
    (b,) = list(pipe.dataset())
    assert b["user"].numpy().tolist() == [0, 1, 0]
    assert b["rating"].numpy().tolist() == [5.0, 7.0, 3.0]
    assert b["item"].dtype.name == "int32"
    pipe = tfdata.from_interactions(inter, batch_size=8, shuffle=False, rated_only=False)
    assert pipe.n == 4


def _write_shards(tmp_path, n_shards=4, rows=250, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_shards):
        df = pd.DataFrame({"user": rng.integers(100, 120, rows), "item": rng.integers(5000, 5050, rows),
                           "rating": rng.integers(1, 11, rows).astype(np.float32)})
        df["row"] = np.arange(rows) + s * rows
        df.to_parquet(tmp_path / f"ratings-{s:05d}.parquet", index=False)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def test_streaming_reads_all_rows_maps_ids_and_reshuffles(tmp_path):
    full = _write_shards(tmp_path)
    users, items = Vocab(full["user"]), Vocab(full["item"])
    stream = tfdata.from_parquet(tmp_path, batch_size=64, users=users, items=items, seed=3,
                                 shuffle_buffer=300, read_rows=100)
    ds = stream.dataset()
    epochs = []
    for _ in range(2):
        batches = list(ds)  # one iteration = one epoch (iterating per column would reshuffle)
        got = pd.DataFrame({k: np.concatenate([b[k].numpy() for b in batches]) for k in ("user", "item", "rating")})
        epochs.append(got)
        assert len(got) == len(full)
        # the same multiset of (user, item, rating) rows, with ids mapped through the vocabularies
        want = pd.DataFrame({"user": users.index(full["user"]), "item": items.index(full["item"]),
                             "rating": full["rating"]})
        key = ["user", "item", "rating"]
        pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True).astype("float64"),
                                      want.sort_values(key).reset_index(drop=True).astype("float64"))
    assert not epochs[0].equals(epochs[1])
    # same seed, same epoch -> same order
    again = tfdata.from_parquet(tmp_path, 64, users=users, items=items, seed=3, shuffle_buffer=300, read_rows=100)
    first = np.concatenate([b["item"] for b in again.batches(epoch=0)])
    assert np.array_equal(first, epochs[0]["item"].to_numpy())


def test_streaming_drops_unknown_and_unrated_and_checks_columns(tmp_path):
    pd.DataFrame({"user": [1, 2, 3, 1], "item": [7, 7, 8, 9], "rating": [5.0, np.nan, 4.0, 2.0]}).to_parquet(
        tmp_path / "ratings.parquet", index=False)
    stream = tfdata.from_parquet(tmp_path, 10, users=Vocab([1, 2]), items=Vocab([7, 8, 9]), shuffle_buffer=0)
    rows = list(stream.batches(epoch=0))
    assert len(rows) == 1 and rows[0]["user"].tolist() == [0, 0] and rows[0]["item"].tolist() == [0, 2]
    assert stream.dropped_unknown == 1 and stream.dropped_unrated == 1
    pd.DataFrame({"u": [1]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="missing column"):
        tfdata.from_parquet(tmp_path / "bad.parquet", 10)
    with pytest.raises(DataError):
        tfdata.from_parquet(tmp_path / "nowhere", 10)
