"""research.eda: the data report on a toy data set (sections, numbers, figures) and gini."""
import json

import numpy as np
import pandas as pd
import pytest

from research import eda
from research.data.interactions import build_dataset


def _toy():
    # 4 users, 3 anime; user 1 has a score-0 (NaN) row on anime 30; genres: 10 {A}, 20 {A,B}, 30 {}
    frame = pd.DataFrame({
        "user": [1, 1, 1, 2, 2, 3, 4],
        "item": [10, 20, 30, 10, 20, 10, 10],
        "rating": [8.0, 6.0, np.nan, 10.0, 6.0, 8.0, 7.0],
        "status": np.array([2, 2, 6, 2, 1, 2, 4], dtype=np.int8),
    })
    table = pd.DataFrame({"name": ["Ten", "Twenty", "Thirty"], "genres": [["A"], ["A", "B"], []]},
                         index=pd.Index([10, 20, 30], name="anime_id"))
    manifest = {"files": {"animelist.csv": {"rows_read": 8, "rows_kept": 7, "rows_dropped": {"duplicate": 1},
                                            "format": {"layout": "animelist"}}}}
    return build_dataset(frame, table, name="toy", manifest=manifest)


def test_summary_numbers():
    s = eda.summarize(_toy())
    assert s["overview"]["rows"] == 7 and s["overview"]["users"] == 4 and s["overview"]["rated_rows"] == 6
    assert s["rating_distribution"] == {"6": 2, "7": 1, "8": 2, "10": 1}
    assert s["score0"]["rows"] == 1 and s["score0"]["share"] == pytest.approx(1 / 7)
    assert s["score0"]["mean_rating_if_zero_counted"] == pytest.approx(45 / 7)
    assert s["duplicates"] == {"dropped_by_loader": 1, "left_in_loaded_rows": 0,
                               "rule": "the last row of a (user, anime) pair in file order is kept"}
    per_genre = {d["genre"]: d for d in s["genres"]["per_genre"]}
    assert s["genres"]["unique"] == 2
    assert per_genre["A"]["users"] == 4 and per_genre["A"]["rows"] == 6
    assert per_genre["B"]["users"] == 2 and per_genre["B"]["rows"] == 2
    assert per_genre["A"]["mean_rating"] == pytest.approx((8 + 6 + 10 + 6 + 8 + 7) / 6)
    assert s["watching_status"]["6"]["score0_rows"] == 1 and s["watching_status"]["2"]["rows"] == 4
    assert s["ratings_per_anime"]["max"] == 4 and s["ratings_per_user"]["median"] == 1.5
    assert s["most_rated"][0] == {"anime_id": 10, "name": "Ten", "rows": 4, "mean_rating": pytest.approx(8.25)}


def test_score0_from_manifest_when_dropped():
    ds = _toy()
    ds = build_dataset(ds.interactions.to_frame().assign(user=lambda f: f.user + 1).dropna(subset=["rating"]),
                       name="toy", manifest={"files": {"r.csv": {
                           "rows_read": 11, "rows_kept": 6,
                           "rows_dropped": {"duplicate": 2, "plan_to_watch": 1, "unrated": 2}}}})
    s = eda.summarize(ds)
    # 6 loaded rows (all rated) + 1 plan-to-watch + 2 unrated dropped: 3 score-0 rows of 9
    assert s["score0"]["rows"] == 3 and s["score0"]["of_rows"] == 9 and s["score0"]["share"] == pytest.approx(1 / 3)
    assert s["score0"]["mean_rating_if_zero_counted"] == pytest.approx((8 + 6 + 10 + 6 + 8 + 7) / 9)


def test_report_sections_and_figures(tmp_path):
    path = eda.report(_toy(), tmp_path, "toy_exp")
    text = path.read_text()
    for section in ("## Overview", "## Rating distribution", "## Score 0", "## Duplicate ratings",
                    "## Watching status", "## Genres", "## Ratings per user and per anime", "## Most-rated anime"):
        assert section in text
    for fig in ("ratings.png", "long_tail.png", "users_per_genre.png", "watching_status.png"):
        assert (tmp_path / fig).stat().st_size > 1000 and f"]({fig})" in text
    assert json.loads((tmp_path / "summary.json").read_text())["overview"]["users"] == 4
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    eda.report(_toy(), tmp_path, "toy_exp")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first  # deterministic


def test_gini():
    assert eda.gini(np.array([5, 5, 5, 5])) == 0.0
    assert eda.gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)  # (n-1)/n for one holder
    assert np.isnan(eda.gini(np.array([])))
