"""The bad-input corpus: every malformed file gives a correct load (with the manifest counting what
was dropped or flagged and why) or a DataError naming file, physical line and column. Each case
runs through both paths (``sources.load`` in memory and ``prepare.prepare`` streaming with a tiny
chunk size), which must agree. The files are written by the tests (nothing kept on disk).

| #  | bad input                                      | outcome                                                      |
|----|------------------------------------------------|--------------------------------------------------------------|
| 1  | missing column (no anime_id)                   | DataError line 1, column anime_id                            |
| 2  | renamed column (userid)                        | DataError line 1, column user_id, "did you mean 'userid'"    |
| 3  | wrong delimiter (;)                            | DataError line 1, column user_id, "wrong delimiter?"         |
| 4  | non-numeric rating (abc)                       | DataError line 4, column rating                              |
| 5  | out-of-range rating (11)                       | DataError line 3, column rating                              |
| 6  | fractional MAL score (7.5)                     | DataError line 3, column rating                              |
| 7  | negative MAL score (-1)                        | DataError line 2, column rating                              |
| 8  | CooperUnion rating 0 (only -1 and 1-10 valid)  | DataError line 1 (no header), column 3                       |
| 9  | empty file (0 bytes)                           | DataError line 1                                             |
| 10 | header only                                    | DataError line 2 ("no data rows")                            |
| 11 | duplicate (user, anime) rows                   | load; 2 dropped "duplicate", the last value kept             |
| 12 | anime ids not in the catalogue                 | load; all kept, rows_flagged unknown_anime = 2               |
| 13 | non-integer user id (u7)                       | DataError line 3, column user_id                             |
| 14 | fractional anime id (2.5)                      | DataError line 2, column anime_id                            |
| 15 | id beyond int64                                | DataError line 3, column anime_id                            |
| 16 | UTF-8 BOM                                      | load, format.bom = true                                      |
| 17 | CRLF line endings                              | load, format.line_endings = crlf                             |
| 18 | CR-only line endings                           | load, format.line_endings = cr                               |
| 19 | Latin-1 byte in a ratings file                 | DataError line 3, column rating                              |
| 20 | Latin-1 line in a UTF-8 catalogue              | load; name decoded (é), rows_flagged encoding_fallback = 1   |
| 21 | UTF-16 file                                    | DataError line 1                                             |
| 22 | truncated last line (fields missing, no EOL)   | load; 1 dropped "truncated_last_line"                        |
| 23 | short line in the middle                       | DataError line 3, column rating                              |
| 24 | empty rating field                             | DataError line 3, column rating                              |
| 25 | extra field (unquoted comma)                   | DataError line 4 ("expected 3 fields, found 4")              |
| 26 | quoted comma inside a ratings id ("1,2")       | DataError line 2, column anime_id                            |
| 27 | quoted commas in catalogue names / genres      | load; name and genre list intact                             |
| 28 | `Unknown` in catalogue numeric columns         | load; episodes / score NaN, genres []                        |
| 29 | `Unknown` as a rating                          | DataError line 3, column rating                              |
| 30 | non-numeric catalogue value (12 eps)           | DataError line 3, column Episodes                            |
| 31 | duplicate anime id in the catalogue            | load; catalogue 1 dropped "duplicate", last row kept         |
| 32 | non-integer catalogue id                       | DataError line 3, column MAL_ID                              |
| 33 | quoted newline in a catalogue field            | load; an error after it names the true physical line (5)     |
| 34 | blank lines inside the ratings                 | load (skipped); an error after them names line 5             |
| 35 | huge line: 1 MB field in the ratings           | DataError line 3, column rating, message < 300 chars         |
| 36 | huge line: 5 MB synopsis in the catalogue      | load; synopsis intact                                        |
| 37 | HTML entities in names                         | load; Gintama&#039; -> Gintama'                              |
| 38 | watching_status out of int8 range (200)        | DataError line 2, column watching_status                     |
| 39 | headerless MAL file with 4 fields              | DataError line 1                                             |
| 40 | generic file with string ids                   | DataError line 2, column user                                |
| 41 | generic tab-delimited, positions, timestamp    | load; timestamp int64                                        |
| 42 | unrated scores 0 (keep / drop)                 | load; NaN kept, or dropped "unrated"                         |
| 43 | extra field on the first data line             | DataError line 2 (pandas only warns and drops it: made strict) |
| 44 | catalogue line cut short (fewer fields)        | DataError line 3 ("expected 9 fields, found 3")              |

44 cases. Also hypothesis properties at the end: random valid tables round-trip through both paths
with ``rows_read == rows_kept + sum(rows_dropped)`` and the kept rows equal to a naive pandas
reference; a bad token planted at a random row is reported at its physical line.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from research.config import DataConfig
from research.data import prepare, sources
from research.data.locate import Locator
from research.data.validate import FileStats, check_balance
from research.errors import DataError

CAT = (b"MAL_ID,Name,Score,Genres,Type,Episodes,Studios,Source,Members\n"
       b"1,Alpha,8.5,\"Action, Comedy\",TV,12,Sunrise,Manga,100\n"
       b"2,Beta,7.0,Drama,Movie,1,Madhouse,Original,50\n"
       b"3,Gamma,6.0,Comedy,OVA,2,Bones,Original,20\n")
HDR = b"user_id,anime_id,rating\n"


@dataclass
class Case:
    name: str
    files: dict  # file name -> bytes
    adapter: str = "mal2020"
    cfg: dict = field(default_factory=dict)
    # error expectations
    line: int | None = None
    column: object = None
    match: str = ""
    file: str = "rating_complete.csv"
    # load expectations
    ok: bool = False
    dropped: dict = field(default_factory=dict)
    flagged: dict = field(default_factory=dict)
    check: object = None  # callable(frame, item_table, manifest)


def _err(name, files, line, column=None, match="", **kw):
    return Case(name, files, line=line, column=column, match=match, **kw)


def _ok(name, files, dropped=None, flagged=None, check=None, **kw):
    return Case(name, files, ok=True, dropped=dropped or {}, flagged=flagged or {}, check=check, **kw)


def _r(body: bytes, cat: bytes | None = CAT) -> dict:
    files = {"rating_complete.csv": body}
    if cat is not None:
        files["anime.csv"] = cat
    return files


def _check_dup(frame, table, m):
    row = frame[(frame.user == 1) & (frame.item == 2)]
    assert len(row) == 1 and row.rating.iloc[0] == 4.0  # the last of the three


def _check_latin1_name(frame, table, m):
    assert table.loc[2, "name"] == "Beta café"


def _check_quoted(frame, table, m):
    assert table.loc[1, "name"] == "Alpha, the Movie"
    assert table.loc[1, "genres"] == ["Action", "Comedy", "Drama"]


def _check_unknown(frame, table, m):
    assert np.isnan(table.loc[2, "episodes"]) and np.isnan(table.loc[2, "score"])
    assert table.loc[2, "genres"] == [] and pd.isna(table.loc[2, "type"])
    assert table.loc[1, "episodes"] == 12.0


def _check_entities(frame, table, m):
    assert table.loc[1, "name"] == "Gintama'" and table.loc[2, "name"] == "Tiger & Bunny"


def _check_big_synopsis(frame, table, m):
    assert len(table.loc[1, "synopsis"]) == 5_000_000


def _check_ts(frame, table, m):
    frame = frame.sort_values("timestamp")
    assert frame.timestamp.dtype == np.int64 and frame.timestamp.tolist() == [100, 200, 300]
    assert frame.user.tolist() == [5, 5, 6] and frame.rating.tolist() == [3.5, 4.0, 1.0]


def _check_keep(frame, table, m):
    assert frame.rating.isna().sum() == 2 and len(frame) == 4


def _dup_cat_check(frame, table, m):
    assert table.loc[2, "name"] == "Beta again"


CASES = [
    _err("missing column", _r(b"user_id,rating\n1,5\n"), 1, "anime_id", "missing column"),
    _err("renamed column", _r(b"userid,anime_id,rating\n1,2,5\n"), 1, "user_id", "did you mean 'userid'"),
    _err("wrong delimiter", _r(b"user_id;anime_id;rating\n1;2;5\n"), 1, "user_id", "wrong delimiter"),
    _err("non-numeric rating", _r(HDR + b"1,1,5\n1,2,6\n1,3,abc\n"), 4, "rating", "'abc' is not a number"),
    _err("out-of-range rating", _r(HDR + b"1,1,5\n1,2,11\n"), 3, "rating", "out of range"),
    _err("fractional MAL score", _r(HDR + b"1,1,5\n1,2,7.5\n"), 3, "rating", "whole number"),
    _err("negative MAL score", _r(HDR + b"1,1,-1\n"), 2, "rating", "out of range"),
    _err("CooperUnion rating 0", {"rating.csv": b"1,1,0\n"}, 1, 3, "out of range", adapter="cooperunion2017",
         file="rating.csv"),
    _err("empty file", _r(b""), 1, None, "empty"),
    _err("header only", _r(HDR), 2, None, "no data rows"),
    _ok("duplicate rows", _r(HDR + b"1,2,9\n1,3,5\n1,2,7\n2,2,8\n1,2,4\n"), dropped={"duplicate": 2},
        check=_check_dup),
    _ok("unknown anime ids", _r(HDR + b"1,1,5\n1,99,6\n2,98,7\n"), flagged={"unknown_anime": 2}),
    _err("non-integer user id", _r(HDR + b"1,1,5\nu7,2,6\n"), 3, "user_id", "not an integer"),
    _err("fractional anime id", _r(HDR + b"1,2.5,5\n"), 2, "anime_id", "not an integer"),
    _err("id beyond int64", _r(HDR + b"1,1,5\n1,99999999999999999999999,6\n"), 3, "anime_id", "range"),
    _ok("UTF-8 BOM", _r(b"\xef\xbb\xbf" + HDR + b"1,1,5\n"), check=lambda f, t, m: (
        m["files"]["rating_complete.csv"]["format"]["bom"] is True and len(f) == 1) or pytest.fail("bom")),
    _ok("CRLF", _r(b"user_id,anime_id,rating\r\n1,1,5\r\n1,2,6\r\n"), check=lambda f, t, m: (
        m["files"]["rating_complete.csv"]["format"]["line_endings"] == "crlf" and f.rating.tolist() == [5, 6])
        or pytest.fail("crlf")),
    _ok("CR-only", _r(b"user_id,anime_id,rating\r1,1,5\r1,2,6\r"), check=lambda f, t, m: (
        m["files"]["rating_complete.csv"]["format"]["line_endings"] == "cr" and f.rating.tolist() == [5, 6])
        or pytest.fail("cr")),
    _err("Latin-1 byte in ratings", _r(HDR + b"1,1,5\n1,2,\xe9\n"), 3, "rating", "not a number"),
    _ok("Latin-1 line in catalogue", _r(HDR + b"1,1,5\n", CAT.replace(b"Beta", b"Beta caf\xe9")),
        flagged={}, check=_check_latin1_name),
    _err("UTF-16", _r("user_id,anime_id,rating\n1,1,5\n".encode("utf-16")), 1, None, "UTF-16"),
    _ok("truncated last line", _r(HDR + b"1,1,5\n1,2,6\n1,3"), dropped={"truncated_last_line": 1}),
    _err("short line in the middle", _r(HDR + b"1,1,5\n1,2\n1,3,6\n"), 3, "rating", "missing"),
    _err("empty rating field", _r(HDR + b"1,1,5\n1,2,\n1,3,6\n"), 3, "rating", "missing"),
    _err("extra field", _r(HDR + b"1,1,5\n1,2,6\n1,3,6,7\n"), 4, None, "expected 3 fields, found 4"),
    _err("quoted comma in a ratings id", _r(HDR + b"1,\"1,2\",5\n"), 2, "anime_id", "not an integer"),
    _ok("quoted commas in catalogue", _r(HDR + b"1,1,5\n", CAT.replace(b"Alpha", b"\"Alpha, the Movie\"")
                                        .replace(b"\"Action, Comedy\"", b"\"Action, Comedy, Drama\"")),
        check=_check_quoted),
    _ok("Unknown in catalogue numerics", _r(HDR + b"1,1,5\n", CAT.replace(
        b"2,Beta,7.0,Drama,Movie,1,", b"2,Beta,Unknown,Unknown,Unknown,Unknown,")), check=_check_unknown),
    _err("Unknown as a rating", _r(HDR + b"1,1,5\n1,2,Unknown\n"), 3, "rating", "'Unknown' is not a number"),
    _err("non-numeric catalogue value", _r(HDR + b"1,1,5\n", CAT.replace(b"Movie,1,", b"Movie,12 eps,")), 3,
         "Episodes", "not a number", file="anime.csv"),
    _ok("duplicate catalogue id", _r(HDR + b"1,1,5\n", CAT + b"2,Beta again,7.0,Drama,Movie,1,M,Original,50\n"),
        check=_dup_cat_check),
    _err("non-integer catalogue id", _r(HDR + b"1,1,5\n", CAT.replace(b"2,Beta", b"x2,Beta")), 3, "MAL_ID",
         "not an integer", file="anime.csv"),
    _err("quoted newline in catalogue", _r(HDR + b"1,1,5\n", CAT.replace(b"Alpha", b"\"Al\npha\"").replace(
        b"3,Gamma", b"3x,Gamma")), 5, "MAL_ID", "not an integer", file="anime.csv"),
    _err("blank lines in ratings", _r(HDR + b"1,1,5\n\n\n1,2,x\n"), 5, "rating", "not a number"),
    _err("huge line in ratings", _r(HDR + b"1,1,5\n1,2," + b"9" * 1_000_000 + b"\n"), 3, "rating", ""),
    _ok("huge synopsis", {**_r(HDR + b"1,1,5\n"), "anime_with_synopsis.csv":
                          b"MAL_ID,Name,sypnopsis\n1,Alpha,\"" + b"s" * 5_000_000 + b"\"\n"},
        check=_check_big_synopsis),
    _ok("HTML entities", _r(HDR + b"1,1,5\n", CAT.replace(b"Alpha", b"Gintama&#039;").replace(
        b"Beta", b"Tiger &amp; Bunny")), check=_check_entities),
    _err("watching_status out of range", {"animelist.csv": b"user_id,anime_id,score,watching_status,watched_episodes\n"
                                                           b"1,1,5,200,3\n"}, 2, "watching_status", "out of range",
         file="animelist.csv"),
    _err("headerless MAL with 4 fields", _r(b"1,1,5,3\n"), 1, None, "3 fields"),
    _err("generic string ids", {"r.csv": b"user,item,rating\nalice,1,4.5\n"}, 2, "user", "not an integer",
         adapter="generic", cfg={"ratings": "r.csv"}, file="r.csv"),
    _ok("generic tab, positions, timestamp", {"r.tsv": b"5\t10\t3.5\t100\n5\t11\t4\t200\n6\t10\t1\t300\n"},
        adapter="generic", cfg={"ratings": "r.tsv", "delimiter": "\t", "header": False, "user_col": "0",
                                "item_col": "1", "rating_col": "2", "timestamp_col": "3"}, check=_check_ts),
    _ok("unrated kept", _r(HDR + b"1,1,0\n1,2,5\n2,1,0\n2,3,8\n"), cfg={"unrated": "keep"}, check=_check_keep),
    _ok("unrated dropped", _r(HDR + b"1,1,0\n1,2,5\n2,1,0\n2,3,8\n"), dropped={"unrated": 2}),
    _err("extra field on the first data line", _r(HDR + b"1,1,5,9\n1,2,6\n"), 2, None, "found 4"),
    _err("catalogue line cut short",
         _r(HDR + b"1,1,5\n", CAT.replace(b"2,Beta,7.0,Drama,Movie,1,Madhouse,Original,50", b"2,Beta,7.0")),
         3, None, "found 3", file="anime.csv"),
]


def test_the_table_counts_every_case():
    # the docstring table and CASES must not drift apart (the issue note quotes the count)
    rows = [ln for ln in __doc__.splitlines() if ln.startswith("| ") and ln[2:4].strip().isdigit()]
    assert len(rows) == 44
    assert len({c.name for c in CASES}) == len(CASES) == 45  # case 42 has two variants


def _write(tmp: Path, files: dict) -> Path:
    raw = tmp / "raw"
    raw.mkdir()
    for name, data in files.items():
        (raw / name).write_bytes(data)
    return raw


def _cfg(case: Case) -> DataConfig:
    base = {"source": case.adapter}
    if case.adapter == "mal2020" and "animelist.csv" in case.files:
        base["ratings"] = "animelist.csv"
    return DataConfig(**{**base, **case.cfg})


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path):
    raw = _write(tmp_path, case.files)
    cfg = _cfg(case)
    if not case.ok:
        for path_name, run in (("load", lambda: sources.load(case.adapter, raw, cfg)),
                               ("prepare", lambda: prepare.prepare(case.adapter, raw, tmp_path / "out", cfg,
                                                                   chunk_rows=2))):
            with pytest.raises(DataError) as info:
                run()
            err = info.value
            assert Path(err.path).name == case.file, (path_name, err)
            assert err.line == case.line, (path_name, str(err))
            assert err.column == case.column, (path_name, str(err))
            assert case.match in str(err), (path_name, str(err))
            assert len(str(err)) < 300, path_name
        assert not (tmp_path / "out" / "manifest.json").exists()  # a failed prepare leaves no manifest
        return
    frame, table, manifest = sources.load(case.adapter, raw, cfg)
    check_balance(manifest)
    rname = next(n for n, f in manifest["files"].items() if "layout" in f.get("format", {}))
    entry = manifest["files"][rname]
    assert entry["rows_dropped"] == case.dropped
    assert entry.get("rows_flagged", {}) == case.flagged
    assert entry["rows_kept"] == len(frame)
    if case.check:
        case.check(frame, table, manifest)
    # the streaming path gives the same rows and the same manifest entries
    pm = prepare.prepare(case.adapter, raw, tmp_path / "out", cfg, chunk_rows=2)
    f2, t2, m2 = prepare.load_processed(tmp_path / "out")
    key = ["user", "item"]
    pd.testing.assert_frame_equal(frame.sort_values(key, kind="stable").reset_index(drop=True),
                                  f2.sort_values(key, kind="stable").reset_index(drop=True))
    assert pm["files"] == manifest["files"]
    if table is not None:
        pd.testing.assert_frame_equal(table, t2)
    if case.check:
        case.check(f2, t2, m2)


def test_latin1_catalogue_line_is_flagged(tmp_path):
    raw = _write(tmp_path, _r(HDR + b"1,1,5\n", CAT.replace(b"Beta", b"Beta caf\xe9")))
    _, _, m = sources.load("mal2020", raw, DataConfig())
    assert m["files"]["anime.csv"]["rows_flagged"] == {"encoding_fallback": 1}


# ---------------------------------------------------------------------------------------------
# Properties


def _reference(rows: list[tuple[int, int, int]], unrated: str) -> pd.DataFrame:
    """Naive reference: keep the last of each (user, anime), then drop score 0 unless kept."""
    df = pd.DataFrame(rows, columns=["user", "item", "rating"])
    df = df.drop_duplicates(["user", "item"], keep="last")
    if unrated == "drop":
        df = df[df.rating != 0]
    df = df.assign(rating=df.rating.replace(0, np.nan).astype(np.float32))
    return df.sort_values(["user", "item"]).reset_index(drop=True)


rows_strategy = st.lists(st.tuples(st.integers(0, 6), st.integers(1, 8), st.integers(0, 10)), min_size=1,
                         max_size=60)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, eol=st.sampled_from(["\n", "\r\n"]), final=st.booleans(), bom=st.booleans(),
       unrated=st.sampled_from(["drop", "keep"]), chunk=st.integers(1, 7))
def test_random_tables_round_trip(rows, eol, final, bom, unrated, chunk):
    text = eol.join(["user_id,anime_id,rating"] + [f"{u},{i},{r}" for u, i, r in rows]) + (eol if final else "")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        (raw / "rating_complete.csv").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
        cfg = DataConfig(source="mal2020", unrated=unrated)
        frame, _, m = sources.load("mal2020", raw, cfg)
        check_balance(m)
        f = m["files"]["rating_complete.csv"]
        assert f["rows_read"] == len(rows) and f["rows_kept"] == len(frame)
        ref = _reference(rows, unrated)
        got = frame.sort_values(["user", "item"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, ref, check_dtype=False)
        assert frame.rating.dtype == np.float32 and frame.user.dtype == np.int64
        pm = prepare.prepare("mal2020", raw, Path(tmp) / "out", cfg, chunk_rows=chunk)
        f2, _, _ = prepare.load_processed(Path(tmp) / "out")
        assert pm["files"] == m["files"]
        pd.testing.assert_frame_equal(f2.sort_values(["user", "item"]).reset_index(drop=True), got)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), bad=st.data(), blanks=st.lists(st.integers(0, 40), max_size=4),
       quoted=st.lists(st.integers(0, 40), max_size=3), eol=st.sampled_from(["\n", "\r\n", "\r"]),
       column=st.sampled_from(["user_id", "anime_id", "rating", "extra field"]), chunk=st.integers(1, 9),
       piece=st.sampled_from([5, 16, 64, 1 << 22]))
def test_planted_error_names_its_physical_line(n, bad, blanks, quoted, eol, column, chunk, piece):
    """Blank lines, quoted values and CR / CRLF / LF line ends before the bad record; the line
    finder's fast path (plain pieces of whole lines) is exercised with tiny pieces too."""
    target = bad.draw(st.integers(0, n - 1))
    lines = ["user_id,anime_id,rating"]
    bad_line = None
    for k in range(n):
        if k in blanks:
            lines.append("")  # blank lines are skipped by the reader but still count as lines
        row = [str(k), str(k + 1), '"5"' if k in quoted else "5"]
        if k == target:
            if column == "extra field":
                row.append("9")
            else:
                row[["user_id", "anime_id", "rating"].index(column)] = "x?"
            bad_line = len(lines) + 1
        lines.append(",".join(row))
    old = Locator.PIECE
    Locator.PIECE = piece
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp)
            (raw / "rating_complete.csv").write_text(eol.join(lines) + eol, newline="")
            with pytest.raises(DataError) as info:
                list(sources.iter_chunks(sources.plan_files("mal2020", raw, DataConfig()).ratings,
                                         FileStats("x"), chunk_rows=chunk))
    finally:
        Locator.PIECE = old
    assert info.value.line == bad_line, str(info.value)
    assert info.value.column == (None if column == "extra field" else column)


_JUNK = ["", " ", "   ", "\t", " \t "]  # lines pandas skips: blank, or spaces and tabs only
_QUOTED = ["x{eol}y", "{eol}{eol}", "p{eol}  {eol}q", "", "a,b"]  # quoted values, some spanning lines


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 30), eol=st.sampled_from(["\n", "\r\n", "\r"]),
       delimiter=st.sampled_from([",", "\t", ";"]), piece=st.sampled_from([8, 32, 1 << 22]),
       in_memory=st.booleans())
def test_locator_maps_records_to_physical_lines(data, n, eol, delimiter, piece, in_memory):
    """Every record's line, checked against the lines the file was written with, across lines of
    spaces and tabs (issue 15.6), blank lines, values quoted over several lines, LF / CRLF / CR and
    three delimiters; pandas reads the same records in the same order (so the numbering is its own).
    One record has a wrong number of fields: ``first_bad_width`` names its line and count."""
    junk = [j for j in _JUNK if delimiter not in j]
    bad = data.draw(st.integers(0, n - 1))
    width = data.draw(st.sampled_from([2, 4]))
    out, line, truth = ["a" + delimiter + "b" + delimiter + "c" + eol], 2, []
    for k in range(n):
        for j in data.draw(st.lists(st.sampled_from(junk), max_size=2)):
            out.append(j + eol)
            line += 1
        value = str(k)
        if data.draw(st.booleans()):
            body = data.draw(st.sampled_from(_QUOTED)).format(eol=eol).replace(",", delimiter)
            value = '"' + body + '"'
        fields = [str(k), value, str(10 * k)] if k != bad else [str(k)] * width
        value = value if k != bad else ""
        truth.append(line)
        out.append(delimiter.join(fields) + eol)
        line += 1 + value.count(eol)
    text = "".join(out)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(text.encode("latin-1"))
        frame = pd.read_csv(path, sep=delimiter, header=None, skiprows=1, names=list(range(5)), index_col=False,
                            keep_default_na=False, na_values=[""], skip_blank_lines=True, engine="c")
        assert frame[0].tolist() == list(range(n))
        old = Locator.PIECE
        Locator.PIECE = piece
        try:
            loc = Locator(path, delimiter, header=True, text=text if in_memory else None)
            assert [loc.line(k) for k in range(n)] == truth
            assert loc.first_bad_width(3) == (truth[bad], width)
        finally:
            Locator.PIECE = old
