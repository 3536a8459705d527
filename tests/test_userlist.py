"""Reading a user's own list (research.data.userlist): CSV and MyAnimeList XML, score 0, statuses,
bad rows named by file / line / column, a DOCTYPE / entity attack refused, an oversized file
refused, and the mapping to a run's anime (unknown and ambiguous anime reported, never dropped)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from research.data import userlist
from research.data.interactions import Meta, Vocab
from research.errors import DataError

XML_HEAD = ('<?xml version="1.0" encoding="UTF-8" ?>\n<!--\n Created by XML Export feature at MyAnimeList.net\n'
            ' Version 1.1.0\n-->\n<myanimelist>\n\t<myinfo>\n\t\t<user_id>1</user_id>\n'
            '\t\t<user_name>someone</user_name>\n\t\t<user_export_type>1</user_export_type>\n\t</myinfo>\n')


def _anime(aid, title, score, status, extra=""):
    return (f"\t<anime>\n\t\t<series_animedb_id>{aid}</series_animedb_id>\n"
            f"\t\t<series_title><![CDATA[{title}]]></series_title>\n\t\t<series_type>TV</series_type>\n"
            f"\t\t<my_watched_episodes>0</my_watched_episodes>\n{extra}"
            f"\t\t<my_score>{score}</my_score>\n\t\t<my_status>{status}</my_status>\n"
            f"\t\t<my_comments><![CDATA[]]></my_comments>\n\t</anime>\n")


def _write(tmp_path, name, text):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def _error(path, line=None, column=None, match=""):
    with pytest.raises(DataError) as info:
        userlist.read_list(path)
    e = info.value
    assert e.path == str(path)
    if line is not None:
        assert e.line == line, str(e)
    if column is not None:
        assert e.column == column, str(e)
    assert match in str(e), str(e)
    return e


# ---- CSV ---------------------------------------------------------------------------------------

def test_csv_animelist_rows_score_0_and_statuses(tmp_path):
    p = _write(tmp_path, "list.csv", "user_id,anime_id,score,watching_status,watched_episodes\n"
               "7,1,9,2,26\n7,5,0,2,1\n7,6,8,1,3\n7,30,0,6,0\n7,31,4,4,2\n7,32,0,3,5\n7,33,7,6,0\n")
    ul = userlist.read_list(p)
    assert ul.format == "csv" and len(ul) == 7
    assert [r.line for r in ul.rows] == list(range(2, 9))
    assert [r.anime_id for r in ul.rows] == [1, 5, 6, 30, 31, 32, 33]
    assert ul.rows[0].score == 9 and math.isnan(ul.rows[1].score)  # score 0 = watched, no score
    assert [r.status for r in ul.rows] == [2, 2, 1, 6, 4, 3, 6]


def test_csv_older_rating_column_names_and_crlf(tmp_path):
    p = _write(tmp_path, "l.csv", b"\xef\xbb\xbfuser_id,anime_id,rating,watching_status,watched_episodes\r\n0,67,9,1,1\r\n0,6702,0,1,4")
    ul = userlist.read_list(p)
    assert [(r.anime_id, r.status) for r in ul.rows] == [(67, 1), (6702, 1)]
    assert ul.rows[0].score == 9 and math.isnan(ul.rows[1].score) and ul.rows[1].line == 3


def test_csv_names_status_words_and_empty_cells(tmp_path):
    p = _write(tmp_path, "l.csv", 'name,score,watching_status\n"Gintama&#039;",10,Completed\nAlpha,,\n'
               '\nBeta,0,plan to watch\n')
    ul = userlist.read_list(p)
    assert [r.name for r in ul.rows] == ["Gintama&#039;", "Alpha", "Beta"]
    assert [r.line for r in ul.rows] == [2, 3, 5]  # the blank line 4 is skipped, lines stay physical
    assert [r.status for r in ul.rows] == [2, None, 6]
    assert math.isnan(ul.rows[1].score)


@pytest.mark.parametrize("body,line,column,match", [
    ("anime_id,score\n1,9\n2,7.5\n", 3, "score", "whole number"),
    ("anime_id,score\n1,11\n", 2, "score", "0 to 10"),
    ("anime_id,score\n1,-1\n", 2, "score", "0 to 10"),
    ("anime_id,score\n1,nine\n", 2, "score", "not a number"),
    ("anime_id,watching_status\n1,2\n2,5\n", 3, "watching_status", "unknown watching status"),
    ("anime_id,watching_status\n1,Finished\n", 2, "watching_status", "unknown watching status"),
    ("anime_id,score\n1,9\nx1,9\n", 3, "anime_id", "not an integer"),
    ("anime_id,score\n99999999999999999999,9\n", 2, "anime_id", "int64"),
    ("anime_id,score\n1,9\n2,8,7\n", 3, None, "expected 2 fields, found 3"),
    ("anime_id,name\n,\n", 2, "anime_id", "no anime"),
    ("animeid,score\n1,9\n", 1, "anime_id", "did you mean 'animeid'"),
    ("anime_id;score\n1;9\n", 1, "anime_id", "wrong delimiter"),
    ("anime_id,score\n", 2, None, "no data rows"),
    ("user_id,anime_id\n1,5\n1,6\n2,7\n", 4, "user_id", "one user's rows"),
    ("anime_id,Anime_ID\n1,2\n", 1, None, "twice"),
])
def test_csv_bad_rows_name_line_and_column(tmp_path, body, line, column, match):
    _error(_write(tmp_path, "bad.csv", body), line, column, match)


def test_empty_and_utf16_files_refused(tmp_path):
    _error(_write(tmp_path, "e.csv", b""), 1, None, "empty")
    _error(_write(tmp_path, "u.csv", "anime_id\n1\n".encode("utf-16")), 1, None, "UTF-16")


# ---- XML ---------------------------------------------------------------------------------------

def test_xml_export(tmp_path):
    text = (XML_HEAD + _anime(1, "Cowboy Bebop", 9, "Completed") + _anime(5, "Tengoku no Tobira", 0, "Plan to Watch")
            + _anime(6, "Trigun", 0, "Watching") + _anime(7, "Witch Hunter Robin", 3, "Dropped")
            + _anime(8, "Beet", 6, "On-Hold") + _anime(15, "Eyeshield 21", 8, "2") + "</myanimelist>\n")
    ul = userlist.read_list(_write(tmp_path, "animelist.xml", text))
    assert ul.format == "xml"
    assert [r.anime_id for r in ul.rows] == [1, 5, 6, 7, 8, 15]
    assert [r.status for r in ul.rows] == [2, 6, 1, 4, 3, 2]
    assert ul.rows[0].score == 9 and math.isnan(ul.rows[1].score) and math.isnan(ul.rows[2].score)
    lines = text.splitlines()
    assert all(lines[r.line - 1].strip() == "<anime>" for r in ul.rows)  # each row's line is its <anime>


def test_xml_title_when_id_missing(tmp_path):
    text = XML_HEAD + "\t<anime>\n\t\t<series_title>Alpha &amp; Beta</series_title>\n\t\t<my_score>7</my_score>\n\t</anime>\n</myanimelist>"
    (row,) = userlist.read_list(_write(tmp_path, "a.xml", text)).rows
    assert row.anime_id is None and row.name == "Alpha & Beta" and row.score == 7 and row.status is None


def test_xml_bad_values_name_line_and_element(tmp_path):
    text = XML_HEAD + _anime(1, "A", 9, "Completed") + _anime(2, "B", "8.5", "Completed") + "</myanimelist>\n"
    bad_line = next(i for i, ln in enumerate(text.splitlines(), 1) if "8.5" in ln)
    _error(_write(tmp_path, "s.xml", text), bad_line, "my_score", "whole number")
    text = XML_HEAD + _anime(1, "A", 9, "Finished") + "</myanimelist>\n"
    bad_line = next(i for i, ln in enumerate(text.splitlines(), 1) if "Finished" in ln)
    _error(_write(tmp_path, "t.xml", text), bad_line, "my_status", "unknown watching status")
    text = XML_HEAD + _anime("abc", "A", 9, "Completed") + "</myanimelist>\n"
    _error(_write(tmp_path, "i.xml", text), None, "series_animedb_id", "not an integer")


def test_xml_not_well_formed_and_wrong_root(tmp_path):
    text = XML_HEAD + "\t<anime>\n\t\t<my_score>9</my_scor>\n\t</anime>\n</myanimelist>\n"
    e = _error(_write(tmp_path, "w.xml", text), len(XML_HEAD.splitlines()) + 2, None, "not well-formed")
    assert isinstance(e.column, int)
    _error(_write(tmp_path, "r.xml", "<?xml version='1.0'?>\n<html><anime/></html>\n"), 2, "html", "<myanimelist>")
    _error(_write(tmp_path, "n.xml", XML_HEAD + "</myanimelist>\n"), None, "anime", "no <anime>")
    _error(_write(tmp_path, "u.xml", XML_HEAD + _anime(1, "A", "&undefined;", "Completed") + "</myanimelist>"),
           None, None, "undefined entity")


@pytest.mark.parametrize("attack", [
    # billion laughs: nested internal entities
    '<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
    ' <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">\n]>\n',
    # external entity: a local file
    '<!DOCTYPE myanimelist [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n',
    # external DTD
    '<!DOCTYPE myanimelist SYSTEM "http://127.0.0.1:9/evil.dtd">\n',
])
def test_xml_doctype_and_entities_refused(tmp_path, attack):
    text = ('<?xml version="1.0" encoding="UTF-8"?>\n' + attack
            + "<myanimelist><anime><series_animedb_id>1</series_animedb_id>"
              "<series_title>&lol3;&xxe;</series_title><my_score>9</my_score></anime></myanimelist>\n")
    e = _error(_write(tmp_path, "attack.xml", text), 2, 1, "DOCTYPE declaration refused")
    assert "/etc/passwd" not in str(e).split("refused")[1]


def test_oversized_file_refused_unread(tmp_path):
    p = _write(tmp_path, "big.csv", "anime_id,score\n" + "1,9\n" * 1000)
    assert len(userlist.read_list(p)) == 1000
    with pytest.raises(DataError, match="more than the 100 bytes"):
        userlist.read_list(p, max_bytes=100)
    big = tmp_path / "huge.xml"
    with open(big, "wb") as fh:  # sparse: past the cap on paper, nothing written
        fh.truncate(userlist.MAX_LIST_BYTES + 1)
    with pytest.raises(DataError, match="more than"):
        userlist.read_list(big)


# ---- mapping to a run's anime --------------------------------------------------------------------

@pytest.fixture
def meta():
    ids = [1, 5, 6, 20, 99, 918, 1735]  # item index 0..6 (a Vocab is sorted); table rows in that order
    table = pd.DataFrame({"name": ["Cowboy Bebop", "Cowboy Bebop: Tengoku no Tobira", "Trigun", "Gintama'",
                                   "Naruto", "Naruto: Shippuuden", np.nan]})
    return Meta(users=Vocab([1, 2]), items=Vocab(ids), item_table=table)


def test_map_list_statuses_unknown_and_duplicates(tmp_path, meta):
    p = _write(tmp_path, "l.csv", "anime_id,name,score,watching_status\n"
               "1,,9,2\n5,,0,6\n,Trigun,0,1\n,Gintama&#039;,10,2\n,naruto,7,2\n,Naru,8,2\n4242,,8,2\n"
               ",Nothing Like It,5,2\n918,,0,4\n1735,,6,6\n1,,10,2\n")
    m = userlist.map_list(userlist.read_list(p), meta)
    assert m.counts == {"watched_scored": 3, "watched_unscored": 2, "plan_to_watch": 1,
                        "plan_to_watch_scored": 1, "duplicate": 1, "unknown": 3}
    assert sum(m.counts.values()) == 11  # every row accounted for
    assert m.items.tolist() == [0, 2, 3, 4, 5, 6]  # the unscored plan-to-watch (index 1) not folded in
    assert np.array_equal(m.ratings, [10, np.nan, 10, 7, np.nan, 6], equal_nan=True)  # anime 1: last row wins
    assert m.exclude.tolist() == [0, 1, 2, 3, 4, 5, 6]  # but never recommended back
    assert [(u.line, u.what) for u in m.unknown] == [(7, "name 'Naru'"), (8, "anime_id 4242"),
                                                     (9, "name 'Nothing Like It'")]
    assert "ambiguous (2 anime: Naruto (id 99), Naruto: Shippuuden (id 918)" in m.unknown[0].reason
    assert "not in this run's catalogue" in m.unknown[1].reason
    h = m.history(meta.n_items)
    assert h.seen.shape == (1, 7) and h.seen.nnz == 6 and h.rated.nnz == 4
    assert m.exclude_matrix(meta.n_items).nnz == 7


def test_resolve_anime_is_the_similar_anime_resolver(meta):
    names = userlist.AnimeNames(meta)
    assert userlist.resolve_anime(meta, "6") == [2]  # an id first
    assert userlist.resolve_anime(meta, "cowboy bebop") == [0]  # exact beats the partial match of 1
    assert names.match_name("Bebop") == [0, 1]
    assert names.match_name("  TRIGUN ") == [2]
    assert names.match_name("") == [] and names.match_name("zzz") == []
