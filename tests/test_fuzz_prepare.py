"""Fuzz ``animerec prepare`` over CSV bytes (issue 13): whatever the file holds, the command ends
with exit 0 and a balanced manifest (rows read = kept + dropped per reason), or exit 2 with one
line on stderr, never anything else (no traceback, no other exit code, no hang).

``research.cli.main`` is called in-process (the imports dominate a subprocess), stderr captured.
The bytes are drawn from CSV-ish pieces (ids, ratings, huge and float ids, quotes, blank and
whitespace lines, wrong delimiters, CR / CRLF, BOMs, NULs, non-UTF-8 bytes) and, sometimes, any
bytes at all; the ratings file is read with two chunk sizes (1 and the default) to cross chunk
borders.
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from research import cli
from research.data.validate import check_balance

FIELDS = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["", " ", "1.0", "1e3", "-0", "+5", "9007199254740993", "9223372036854775808",
                     "1e39", "nan", "inf", "x", "\"", "\"\"", "\"1\"", "\"1,2\"", "\"a\nb\"", "\t", "\x00",
                     "\xe9", "0x10", "1_0", "５"]),
)
LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\n   \n", "\n\t\n"])
HEADERS = st.sampled_from(["user_id,anime_id,rating", "user_id,anime_id,score,watching_status,watched_episodes",
                           "user_id,anime_id,rating,rating", "User_ID,Anime_ID,Rating", "a,b,c", "user_id;anime_id;rating",
                           "", "\ufeffuser_id,anime_id,rating"])


@st.composite
def csv_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    header = draw(HEADERS)
    width = draw(st.integers(1, 6))
    rows = draw(st.lists(st.lists(FIELDS, min_size=width - 1, max_size=width + 1), max_size=12))
    delim = draw(st.sampled_from([",", ",", ",", ";", "\t"]))
    parts = [header] if draw(st.booleans()) or not rows else []
    parts += [delim.join(r) for r in rows]
    ends = [draw(LINE_ENDS) for _ in parts]
    text = "".join(p + e for p, e in zip(parts, ends))
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # no final newline
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"]))
    return text.encode(encoding, errors="replace")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=csv_bytes(), chunk=st.sampled_from([1, 1_000_000]))
def test_prepare_ends_in_exit_0_balanced_or_exit_2_one_line(data, chunk):
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        raw.mkdir()
        (raw / "rating_complete.csv").write_bytes(data)
        err, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            rc = cli.main(["prepare", "--source", "mal2020", "--raw", str(raw), "--out", str(out),
                           "--chunk-rows", str(chunk)])
        lines = err.getvalue().strip().splitlines()
        if rc == 0:
            manifest = json.loads((out / "manifest.json").read_text())
            check_balance(manifest)
            f = manifest["files"]["rating_complete.csv"]
            assert f["rows_read"] == f["rows_kept"] + sum(f["rows_dropped"].values())
        else:
            assert rc == 2, (rc, err.getvalue())
            assert len(lines) == 1 and lines[0].startswith("animerec: error: "), err.getvalue()
