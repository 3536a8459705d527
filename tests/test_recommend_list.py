"""``animerec recommend --run RUN --list FILE`` end to end, in subprocesses: a run of classical
models (no TensorFlow) on the synthetic first set, and the lists of a new user of its later
snapshot (issue 12.5) as a mal2020-style CSV and as a MyAnimeList XML export. The later lists
hold anime the run has never heard of: they must be reported, and nothing of the list comes back."""
from __future__ import annotations

import re
from xml.sax.saxutils import escape

import pandas as pd
import pytest
from test_cli import _assert_clean_error, animerec

from research.data import synth

STATUS_TEXT = {1: "Watching", 2: "Completed", 3: "On-Hold", 4: "Dropped", 6: "Plan to Watch"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reclist")
    synth.generate(tmp / "first", users=150, items=120, ratings_per_user=15, segments=3, factors=4,
                   unrated_fraction=0.2, seed=0, later=tmp / "later")
    cfg = tmp / "c.toml"
    cfg.write_text(f'experiment = "reclist"\nresults_dir = "{tmp / "results"}"\n'
                   f'[data]\nsource = "mal2020"\npath = "{tmp / "first"}"\nratings = "animelist.csv"\n'
                   'unrated = "keep"\nfallback_to_synth = false\n'
                   "[models.popularity]\n[models.item_knn]\n[models.ease]\n[models.bias]\n")
    p = animerec("run", cfg, "-q")
    assert p.returncode == 0, p.stderr
    (run,) = (tmp / "results" / "runs" / "reclist").iterdir()
    first_ids = set(pd.read_csv(tmp / "first" / "anime.csv")["MAL_ID"])
    later_list = pd.read_csv(tmp / "later" / "animelist.csv")
    names = pd.read_csv(tmp / "later" / "anime.csv", usecols=["MAL_ID", "Name"]).set_index("MAL_ID")["Name"]
    truth = synth.load_truth(tmp / "later")
    new_users = truth["user_ids"][truth["first_user_index"] < 0]
    # a new user whose later list has anime the run does not know, plan-to-watch and unscored rows
    rows = None
    for u in new_users:
        r = later_list[later_list["user_id"] == u]
        if (~r["anime_id"].isin(first_ids)).any() and (r["watching_status"] == 6).any() and (r["score"] == 0).any():
            rows = r
            break
    assert rows is not None
    return {"tmp": tmp, "run": run, "rows": rows, "first_ids": first_ids, "names": names}


def _recommended_ids(stdout: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\s*\d+\. .* \(id (\d+)\)  score ", stdout, flags=re.M)]


def _check(p, world, k):
    assert p.returncode == 0, p.stderr
    rows = world["rows"]
    n_unknown = int((~rows["anime_id"].isin(world["first_ids"])).sum())
    assert f"unknown anime, not used: {n_unknown} (" in p.stdout
    assert "is not in this run's catalogue" in p.stdout
    n_ptw = int(((rows["watching_status"] == 6) & (rows["score"] == 0) & rows["anime_id"].isin(world["first_ids"])).sum())
    assert f"{n_ptw} plan-to-watch (not folded in, not recommended back)" in p.stdout
    got = _recommended_ids(p.stdout)
    assert len(got) == k and len(set(got)) == k
    assert not set(got) & set(rows["anime_id"])  # nothing of the list comes back, plan-to-watch included
    assert set(got) <= world["first_ids"]
    lines = [ln for ln in p.stdout.splitlines() if re.match(r"^\s*\d+\. ", ln)]
    assert all(" — " in ln for ln in lines)  # every line has its reason
    return lines


def test_recommend_list_csv(world):
    path = world["tmp"] / "my_list.csv"
    world["rows"].to_csv(path, index=False)  # the mal2020 animelist columns, one user's rows
    p = animerec("recommend", "--run", world["run"], "--list", path, "-k", "7")
    lines = _check(p, world, 7)
    assert "(model: " in p.stdout
    p = animerec("recommend", "--run", world["run"], "--list", path, "-k", "5", "--model", "item_knn")
    _check(p, world, 5)
    assert "by item_knn:" in p.stdout and "(model: item_knn;" in p.stdout
    assert lines


def test_recommend_list_xml_export(world):
    names = world["names"]
    body = ['<?xml version="1.0" encoding="UTF-8" ?>', "<!--", " Created by XML Export feature at MyAnimeList.net",
            " Version 1.1.0", "-->", "<myanimelist>", "\t<myinfo>", "\t\t<user_id>1</user_id>",
            "\t\t<user_name>later_user</user_name>", "\t\t<user_export_type>1</user_export_type>", "\t</myinfo>"]
    for r in world["rows"].itertuples():
        body += ["\t<anime>", f"\t\t<series_animedb_id>{r.anime_id}</series_animedb_id>",
                 f"\t\t<series_title><![CDATA[{names[r.anime_id]}]]></series_title>",
                 f"\t\t<my_watched_episodes>{r.watched_episodes}</my_watched_episodes>",
                 f"\t\t<my_score>{r.score}</my_score>", f"\t\t<my_status>{escape(STATUS_TEXT[r.watching_status])}</my_status>",
                 "\t</anime>"]
    path = world["tmp"] / "animelist_export.xml"
    path.write_text("\n".join(body + ["</myanimelist>"]) + "\n", encoding="utf-8")
    p = animerec("recommend", "--run", world["run"], "--list", path, "-k", "6")
    _check(p, world, 6)
    assert "(xml)" in p.stdout.splitlines()[0]


def test_recommend_list_by_names_and_bad_lists(world):
    rows = world["rows"]
    known = rows[rows["anime_id"].isin(world["first_ids"])]
    names = world["names"]
    path = world["tmp"] / "names.csv"
    pd.DataFrame({"name": [names[a] for a in known["anime_id"]] + ["No Such Anime At All"],
                  "score": list(known["score"]) + [8]}).to_csv(path, index=False)
    p = animerec("recommend", "--run", world["run"], "--list", path, "-k", "4", "--model", "ease")
    assert p.returncode == 0, p.stderr
    assert "unknown anime, not used: 1 (line " in p.stdout and "'No Such Anime At All' matches no anime" in p.stdout
    assert not set(_recommended_ids(p.stdout)) & set(known["anime_id"])
    bad = world["tmp"] / "bad.csv"
    bad.write_text("anime_id,score\n1,9\n2,7.5\n")
    _assert_clean_error(animerec("recommend", "--run", world["run"], "--list", bad), "bad.csv:3", "score")
    attack = world["tmp"] / "attack.xml"
    attack.write_text('<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
                      "<myanimelist><anime><series_title>&e;</series_title></anime></myanimelist>\n")
    _assert_clean_error(animerec("recommend", "--run", world["run"], "--list", attack), "attack.xml:2", "DOCTYPE")
    none = world["tmp"] / "none.csv"
    none.write_text("anime_id,score\n999999999,9\n")
    _assert_clean_error(animerec("recommend", "--run", world["run"], "--list", none), "nothing to fold in")
    _assert_clean_error(animerec("recommend", "--run", world["run"], "--list", world["tmp"] / "missing.csv"),
                        "missing.csv")
    p = animerec("recommend", "--run", world["run"], "--list", path, "--user", "1")
    assert p.returncode == 2 and "not allowed with" in p.stderr and "Traceback" not in p.stderr
