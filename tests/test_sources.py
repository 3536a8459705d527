"""sources.load on the real samples (slow: a few seconds) and on small hand-made files.

Real-data expectations are computed independently with plain pandas / hashlib on the same files,
so a wrong adapter cannot pass by agreeing with itself."""
from __future__ import annotations

import hashlib
import html
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from research.config import DataConfig
from research.data import sources
from research.data.interactions import build_dataset
from research.data.locate import Locator
from research.data.validate import check_balance
from research.errors import ConfigError, DataError, ResourceError


def _sums(shared: Path) -> dict:
    out = {}
    for line in (shared / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[Path(name.lstrip("*")).name] = digest
    return out


# ---------------------------------------------------------------------------------------------
# Real samples


@pytest.mark.slow
def test_mal2020_rating_complete_sample(shared_data):
    raw = shared_data / "mal2020"
    frame, table, m = sources.load("mal2020", raw, DataConfig(source="mal2020"))
    check_balance(m)
    ref = pd.read_csv(raw / "rating_complete_head100k.csv")
    assert list(frame.columns) == ["user", "item", "rating"]
    assert frame.user.dtype == np.int64 and frame.item.dtype == np.int64 and frame.rating.dtype == np.float32
    np.testing.assert_array_equal(frame.user.to_numpy(), ref.user_id.to_numpy())
    np.testing.assert_array_equal(frame.item.to_numpy(), ref.anime_id.to_numpy())
    np.testing.assert_array_equal(frame.rating.to_numpy(), ref.rating.to_numpy(np.float32))
    f = m["files"]["rating_complete_head100k.csv"]
    assert (f["rows_read"], f["rows_kept"], f["rows_dropped"]) == (99_999, 99_999, {})
    assert f["format"]["line_endings"] == "crlf" and f["format"]["final_newline"] is False
    sums = _sums(shared_data)
    for name in ("rating_complete_head100k.csv", "anime.csv", "anime_with_synopsis.csv"):
        assert m["files"][name]["sha256"] == sums[name]
    # catalogue: anime.csv joined with the synopses
    cat = pd.read_csv(raw / "anime.csv", dtype=str, keep_default_na=False)
    syn = pd.read_csv(raw / "anime_with_synopsis.csv", dtype=str, keep_default_na=False)
    assert len(table) == len(cat) == 17_562 and table.index.dtype == np.int64
    assert list(table.columns) == ["name", "english_name", "japanese_name", "genres", "type", "studios", "source",
                                   "episodes", "score", "members", "synopsis"]
    assert int(table.episodes.isna().sum()) == int((cat.Episodes == "Unknown").sum()) == 516
    assert int(table.score.isna().sum()) == int((cat.Score == "Unknown").sum())
    assert table.loc[1, "genres"] == ["Action", "Adventure", "Comedy", "Drama", "Sci-Fi", "Space"]
    assert table.loc[1, "studios"] == ["Sunrise"] and table.loc[1, "episodes"] == 26.0
    assert table.loc[1, "synopsis"].startswith("In the year 2071")
    n_placeholder = int(syn.sypnopsis.str.strip().str.startswith(sources.SYNOPSIS_PLACEHOLDERS).sum())
    assert m["files"]["anime_with_synopsis.csv"]["rows_flagged"] == {"placeholder_synopsis": n_placeholder}
    no_syn = set(cat.MAL_ID.astype(int)) - set(syn.MAL_ID.astype(int))
    assert all(table.loc[i, "synopsis"] == "" for i in list(no_syn)[:50])
    # the sample's anime are all in the catalogue
    assert "rows_flagged" not in f


@pytest.mark.slow
def test_mal2020_animelist_sample(shared_data):
    raw = shared_data / "mal2020"
    ref = pd.read_csv(raw / "animelist_head5000.csv")
    keep, _, m = sources.load("mal2020", raw, DataConfig(ratings="animelist_head5000.csv", unrated="keep"))
    drop, _, m2 = sources.load("mal2020", raw, DataConfig(ratings="animelist_head5000.csv"))
    check_balance(m)
    check_balance(m2)
    assert keep.status.dtype == np.int8
    # unscored plan-to-watch rows are never interactions: dropped under their own reason
    ptw = (ref.watching_status == 6) & (ref.rating == 0)
    np.testing.assert_array_equal(keep.status.to_numpy(), ref.watching_status[~ptw].to_numpy())
    n_zero = int((ref.rating == 0).sum())
    assert n_zero == 2523 and int(keep.rating.isna().sum()) == n_zero - int(ptw.sum())
    assert m["files"]["animelist_head5000.csv"]["rows_dropped"] == {"plan_to_watch": int(ptw.sum())}
    assert m2["files"]["animelist_head5000.csv"]["rows_dropped"] == {"plan_to_watch": int(ptw.sum()),
                                                                    "unrated": n_zero - int(ptw.sum())}
    assert len(drop) == 5000 - n_zero
    assert m["files"]["animelist_head5000.csv"]["format"]["layout"] == "animelist"
    assert m["files"]["watching_status.csv"]["rows_read"] == 5


@pytest.mark.slow
def test_cooperunion_sample(shared_data):
    raw = shared_data / "cooperunion2017"
    ref = pd.read_csv(raw / "rating_tail97k.csv", header=None, names=["u", "i", "r"])
    frame, table, m = sources.load("cooperunion2017", raw, DataConfig(unrated="keep", ratings="rating_tail97k.csv"))
    check_balance(m)
    f = m["files"]["rating_tail97k.csv"]
    assert f["format"]["header"] is False and f["rows_read"] == len(ref) == 97_470
    assert int(frame.rating.isna().sum()) == int((ref.r == -1).sum()) == 19_319
    np.testing.assert_array_equal(frame.user.to_numpy(), ref.u.to_numpy())
    cat = pd.read_csv(raw / "anime.csv", dtype=str, keep_default_na=False)
    assert len(table) == len(cat)
    assert table.loc[9969, "name"] == "Gintama'"  # Gintama&#039; in the file
    assert all(table.name.str.contains("&#039;|&amp;|&quot;", regex=True) == False)  # noqa: E712
    expected = [html.unescape(n) for n in cat.name]
    assert table.name.tolist() == expected
    assert table.loc[9969, "score"] == 9.16 and "synopsis" not in table
    assert m["files"]["rating_tail97k.csv"]["sha256"] == _sums(shared_data)["rating_tail97k.csv"]


@pytest.mark.slow
def test_samples_feed_build_dataset(shared_data):
    frame, table, m = sources.load("mal2020", shared_data / "mal2020", DataConfig(max_rows=5000))
    ds = build_dataset(frame, table, name="mal2020", manifest=m)
    assert len(ds.interactions) == 5000 == m["files"]["rating_complete_head100k.csv"]["rows_read"]
    assert ds.meta.item_names([ds.meta.items.index(1)]) == ["Cowboy Bebop"]


@pytest.mark.slow
def test_mal_files_are_grouped_by_user(shared_data):
    """The samples hold each user's rows in one block, with no duplicate pair (prepare does not
    rely on it: see test_prepare.test_ungrouped_file_dedups_across_chunks)."""
    for path, header in ((shared_data / "mal2020" / "rating_complete_head100k.csv", 0),
                         (shared_data / "mal2020" / "animelist_head5000.csv", 0),
                         (shared_data / "cooperunion2017" / "rating_tail97k.csv", None)):
        df = pd.read_csv(path, header=header)
        u = df.iloc[:, 0].to_numpy()
        blocks = int((u[1:] != u[:-1]).sum()) + 1
        assert blocks == len(np.unique(u)), path
        assert not df.duplicated(list(df.columns[:2])).any(), path
    _, _, m = sources.load("mal2020", shared_data / "mal2020", DataConfig())
    assert m["files"]["rating_complete_head100k.csv"]["format"]["grouped_by_user"] is True


# ---------------------------------------------------------------------------------------------
# Small files


def _raw(tmp_path: Path, files: dict) -> Path:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return tmp_path


def test_filters_order_and_counts(tmp_path):
    # user 1: (1,2) three times (last = 0 -> unrated), 2 rated; user 2: 1 rated row; user 3: one unrated
    body = "user_id,anime_id,rating\n1,2,8\n1,3,7\n1,2,9\n1,4,6\n1,2,0\n2,5,5\n3,6,0\n"
    raw = _raw(tmp_path, {"rating_complete.csv": body})
    frame, table, m = sources.load("mal2020", raw, DataConfig(min_user_ratings=2))
    f = m["files"]["rating_complete.csv"]
    # duplicates first (2 earlier copies of (1,2)), then the now-unrated (1,2) and (3,6), then user 2
    assert f["rows_dropped"] == {"duplicate": 2, "unrated": 2, "min_user_ratings": 1}
    assert frame[["user", "item"]].values.tolist() == [[1, 3], [1, 4]] and table is None
    frame, _, m = sources.load("mal2020", raw, DataConfig(min_user_ratings=2, unrated="keep"))
    # kept unrated rows do not count towards min_user_ratings; user 3 has no rated row
    assert m["files"]["rating_complete.csv"]["rows_dropped"] == {"duplicate": 2, "min_user_ratings": 2}
    assert frame[["user", "item"]].values.tolist() == [[1, 3], [1, 4], [1, 2]]
    assert np.isnan(frame.rating.iloc[2])


def test_max_rows(tmp_path):
    raw = _raw(tmp_path, {"rating_complete.csv": "user_id,anime_id,rating\n" + "".join(
        f"{u},{i},5\n" for u in range(10) for i in range(10))})
    frame, _, m = sources.load("mal2020", raw, DataConfig(max_rows=37))
    assert len(frame) == 37 and m["files"]["rating_complete.csv"]["rows_read"] == 37
    assert frame.user.iloc[-1] == 3 and frame.item.iloc[-1] == 6


def test_max_rows_does_not_drop_a_complete_row_as_truncated(tmp_path):
    # no final newline, but max_rows stops before the end: the last row read is not the cut one
    raw = _raw(tmp_path, {"rating_complete.csv": "user_id,anime_id,rating\n1,1,5\n1,2,6\n1,3"})
    frame, _, m = sources.load("mal2020", raw, DataConfig(max_rows=2))
    assert len(frame) == 2 and m["files"]["rating_complete.csv"]["rows_dropped"] == {}


def test_default_file_resolution(tmp_path):
    raw = _raw(tmp_path, {"rating_complete_part.csv": "user_id,anime_id,rating\n1,1,5\n"})
    assert sources.plan_files("mal2020", raw, DataConfig()).ratings.path.name == "rating_complete_part.csv"
    (raw / "rating_complete_other.csv").write_text("user_id,anime_id,rating\n1,1,5\n")
    with pytest.raises(ConfigError, match="several"):
        sources.plan_files("mal2020", raw, DataConfig())
    (raw / "rating_complete.csv").write_text("user_id,anime_id,rating\n1,1,5\n")
    assert sources.plan_files("mal2020", raw, DataConfig()).ratings.path.name == "rating_complete.csv"
    with pytest.raises(ConfigError, match="several CooperUnion"):  # rating*.csv matches all three
        sources.plan_files("cooperunion2017", raw, DataConfig())
    with pytest.raises(DataError, match="no CooperUnion ratings file"):
        sources.plan_files("cooperunion2017", raw / "..", DataConfig())
    with pytest.raises(ConfigError, match="data.ratings"):
        sources.plan_files("generic", raw, DataConfig())
    with pytest.raises(ConfigError, match="not found"):
        sources.plan_files("mal2020", raw, DataConfig(ratings="nope.csv"))


def test_animelist_with_score_header_and_headerless(tmp_path):
    raw = _raw(tmp_path, {
        "animelist.csv": "user_id,anime_id,score,watching_status,watched_episodes\n1,1,0,1,3\n1,3,0,6,0\n"
                         "1,2,8,2,12\n",
        "al_noheader.csv": "1,1,0,1,3\n1,3,0,6,0\n1,2,8,2,12\n"})
    a, _, m = sources.load("mal2020", raw, DataConfig(unrated="keep"))
    b, _, _ = sources.load("mal2020", raw, DataConfig(unrated="keep", ratings="al_noheader.csv"))
    pd.testing.assert_frame_equal(a, b)
    assert a.status.tolist() == [1, 2] and np.isnan(a.rating.iloc[0]) and a.rating.iloc[1] == 8
    assert m["files"]["animelist.csv"]["rows_dropped"] == {"plan_to_watch": 1}


def test_unknown_status_is_flagged_not_dropped(tmp_path):
    raw = _raw(tmp_path, {
        "animelist.csv": "user_id,anime_id,rating,watching_status,watched_episodes\n1,1,5,2,1\n1,2,6,5,1\n",
        "watching_status.csv": "status, description\n1,Currently Watching\n2,Completed\n3,On Hold\n"})
    frame, _, m = sources.load("mal2020", raw, DataConfig())
    assert len(frame) == 2 and m["files"]["animelist.csv"]["rows_flagged"] == {"unknown_status": 1}


def test_generic_names_and_catalogue(tmp_path):
    raw = _raw(tmp_path, {"r.csv": "ts|uid|iid|stars\n10|1|7|4.5\n11|2|8|3\n",
                          "items.csv": "iid|title|genre\n7|Seven|\"A, B\"\n9|Nine|C\n"})
    cfg = DataConfig(source="generic", ratings="r.csv", catalogue="items.csv", delimiter="|", user_col="uid",
                     item_col="iid", rating_col="stars", timestamp_col="ts")
    frame, table, m = sources.load("generic", raw, cfg)
    assert frame.to_dict("list") == {"user": [1, 2], "item": [7, 8], "rating": [4.5, 3.0], "timestamp": [10, 11]}
    assert table.index.tolist() == [7, 9] and table.loc[7, "genres"] == ["A", "B"]
    assert m["files"]["r.csv"]["rows_flagged"] == {"unknown_anime": 1}
    check_balance(m)
    with pytest.raises(ConfigError, match="0-based positions"):
        sources.load("generic", raw, DataConfig(ratings="r.csv", header=False, delimiter="|"))


def test_locator_counts_physical_lines(tmp_path):
    p = tmp_path / "f.csv"
    p.write_bytes(b'a,b\r\n1,"x\r\ny"\r\n\r\n2,z\r\n3,w')
    loc = Locator(p, ",", header=True)
    assert [loc.line(i) for i in range(3)] == [2, 5, 6]


def test_memory_guard_is_testable(tmp_path, monkeypatch):
    raw = _raw(tmp_path, {"rating_complete.csv": "user_id,anime_id,rating\n" + "1,1,5\n" * 1000})
    with pytest.raises(ResourceError, match="animerec prepare") as info:
        sources.load("mal2020", raw, DataConfig(), memory_limit=1000)
    assert 'data.source = "processed"' in str(info.value)
    monkeypatch.setenv(sources.MEMORY_ENV, "10K")
    with pytest.raises(ResourceError):
        sources.load("mal2020", raw, DataConfig())
    # max_rows bounds the estimate: 50 rows fit in 10 KiB
    _, _, m = sources.load("mal2020", raw, DataConfig(max_rows=50))
    assert m["files"]["rating_complete.csv"]["rows_read"] == 50
    monkeypatch.setenv(sources.MEMORY_ENV, "1G")
    frame, _, m = sources.load("mal2020", raw, DataConfig())
    assert len(frame) == 1 and m["files"]["rating_complete.csv"]["rows_dropped"] == {"duplicate": 999}


def test_estimate_rows_is_close(tmp_path):
    p = tmp_path / "r.csv"
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": np.repeat(np.arange(3000), 100), "anime_id": rng.integers(1, 40000, 300_000),
                       "rating": rng.integers(1, 11, 300_000)})
    df.to_csv(p, index=False)
    est = sources.estimate_rows(p)
    assert abs(est - 300_001) / 300_001 < 0.1
    assert hashlib.sha256(p.read_bytes()).hexdigest() == sources.V.sha256_file(p)


def test_unrated_zero_reads_score_0_as_a_rating(tmp_path):
    """The study's reading: every animelist row kept, score 0 as 0/10 (plan-to-watch included)."""
    raw = _raw(tmp_path, {
        "animelist.csv": "user_id,anime_id,score,watching_status,watched_episodes\n1,1,0,1,3\n1,3,0,6,0\n"
                         "1,2,8,2,12\n"})
    frame, _, m = sources.load("mal2020", raw, DataConfig(unrated="zero"))
    got = sorted(zip(frame.item.tolist(), frame.rating.tolist()))
    assert got == [(1, 0.0), (2, 8.0), (3, 0.0)]
    f = m["files"]["animelist.csv"]
    assert f["rows_read"] == f["rows_kept"] == 3 and not f.get("rows_dropped")
