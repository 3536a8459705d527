"""Vocab and Interactions: one id space, round trips, CSR without summing duplicates."""
import numpy as np
import pandas as pd
import pytest

from research.data.interactions import Vocab, build_dataset


def test_vocab_round_trip_and_unknown():
    v = Vocab([30, 10, 20, 10])
    assert len(v) == 3 and v.values.tolist() == [10, 20, 30]
    idx = v.index([20, 30, 10])
    assert idx.tolist() == [1, 2, 0]
    assert v.ids(idx).tolist() == [20, 30, 10]
    with pytest.raises(KeyError):
        v.index([40])
    assert v.index([40, 10], missing="mask").tolist() == [-1, 0]


def test_build_dataset_shares_one_vocab_and_keeps_catalogue_items():
    f = pd.DataFrame({"user": [5, 5, 9], "item": [100, 200, 100], "rating": [7.0, np.nan, 9.0]})
    table = pd.DataFrame({"name": ["A", "B", "C"], "genres": [["Action"], ["Drama"], ["Comedy"]]},
                         index=pd.Index([100, 200, 300], name="anime_id"))
    ds = build_dataset(f, table, name="t")
    meta = ds.meta
    assert meta.n_users == 2 and meta.n_items == 3  # item 300 unrated but in the catalogue
    assert meta.item_names(meta.items.index([300])) == ["C"]
    inter = ds.interactions
    assert inter.rated.tolist() == [True, False, True]
    part = inter.take(np.array([0, 2]))
    assert part.meta is meta
    assert meta.item_table["genres"].tolist() == [["Action"], ["Drama"], ["Comedy"]]


def test_to_csr_values_and_duplicates():
    f = pd.DataFrame({"user": [0, 0, 1, 0], "item": [0, 1, 1, 0], "rating": [3.0, np.nan, 5.0, 8.0]})
    inter = build_dataset(f).interactions
    ones = inter.to_csr("ones")
    assert ones.toarray().tolist() == [[1, 1], [0, 1]]  # duplicate (0, 0) not summed to 2
    rating = inter.to_csr("rating")
    assert rating.toarray().tolist() == [[8, 0], [0, 5]]  # last of the duplicates; unrated dropped
