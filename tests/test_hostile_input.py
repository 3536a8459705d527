"""Hostile inputs of issue 13, part 3 (silent data loss): each file is generated here, read by both
paths (``sources.load`` in memory, ``prepare`` streaming in tiny chunks) and by ``animerec
prepare`` in a subprocess, which must end with exit 0 and a balanced manifest, or exit 2 with one
line on stderr naming the file, line and column, and no traceback.

| # | input                                                        | ends                                   |
|---|--------------------------------------------------------------|----------------------------------------|
| 1 | user ids 2**53 and 2**53 + 1 in a column that also holds 1.0 | load: 3 users, nothing dropped         |
| 2 | user id 2**63 - 1 (int64 max) beside a 1.0                   | load: the id exact                     |
| 3 | user id -2**63 - 1 beside a 1.0                              | exit 2, line 3, column user_id, int64  |
| 4 | generic timestamps 2**53 + 1 beside a 1.0                    | load: timestamps exact                 |
| 5 | generic rating 1e39 (inf as float32)                         | exit 2, line 3, column rating          |
| 6 | generic rating 1e-50 (0 as float32)                          | exit 2, line 3, column rating          |
| 7 | ratings header naming ``rating`` twice                       | exit 2, line 1, column rating          |
| 8 | generic header naming ``user`` / ``User``                    | exit 2, line 1, column User            |
| 9 | catalogue header naming ``Name`` twice                       | exit 2, anime.csv line 1, column name  |
| 10 | a 200 KB header field                                       | exit 2, line 1, column 2, too long     |
| 11 | a 2 GB single-line header (sparse file)                     | exit 2, line 1, longer than 1 MiB      |
| 12 | a 250 MB line 3 (sparse: NUL bytes)                         | exit 2, line 3, longer than 1 MiB      |
| 13 | a 250 MB line 3 of digits (written; slow)                   | exit 2, line 3, column 3, 1 MiB        |
| 14 | a line of spaces before a bad rating on line 5              | exit 2, line 5, column rating          |
| 15 | lines of tabs / spaces / CRLF, then a bad rating on line 7  | exit 2, line 7, column rating          |
| 16 | an unclosed quote on the last line (line 4, field 3)        | exit 2, line 4, column 3, never closed |
| 17 | an unclosed quote opening line 3 of 4 (field 1)             | exit 2, line 3, column 1, never closed |
| 18 | anime.csv is a folder                                       | exit 2, anime.csv: is a folder         |
| 19 | anime.csv is a FIFO                                         | exit 2, anime.csv: is a FIFO           |
| 20 | anime.csv is a symlink loop                                 | exit 2, anime.csv: symbolic link loop  |
| 21 | a 2 GB one-line anime.csv (sparse)                          | exit 2, anime.csv line 1, column 2     |
| 22 | ANIMEREC_MEMORY_LIMIT=infG (``animerec eda``)               | exit 2, names the variable             |
| 23 | ANIMEREC_MEMORY_LIMIT=-1G                                   | exit 2, names the variable             |
| 24 | ANIMEREC_MEMORY_LIMIT=1.5.5G                                | exit 2, names the variable             |
| 25 | ANIMEREC_MEMORY_LIMIT=nan                                   | exit 2, names the variable             |
| 26 | a ``.buckets-<pid>`` left by a killed ``prepare``           | exit 0, removed, said on stderr        |

Cases 1-21 are ``CASES`` (files), 22-25 ``MEMORY_CASES``, 26 ``test_stale_buckets_are_removed``.
Each case failed before its fix (1-9: merged ids and a "duplicate" drop; 2**63 - 1 rejected; inf /
0 stored; the first of two columns used. 10: ``_csv.Error`` traceback. 11: a hang (quadratic
``buf += more``, still running after 30 s). 12: exit 0 after pandas buffered the line (1.1 GB peak
RSS measured); 13: the issue's 3.1 GB peak. 14-15: the line before (blank lines counted). 16-17: no
line, or "expected 3 fields, found 1". 18-20: skipped silently, exit 0. 21: read whole into memory.
22: OverflowError traceback; 23: a negative limit accepted. 24-25 were already exit 2 and are kept
as regressions. 26: the folder stayed forever). The peak memory and the time of the big cases are
checked in ``test_big_lines_end_fast_in_bounded_memory``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from research.config import DataConfig
from research.data import prepare, sources
from research.data.validate import check_balance
from research.errors import DataError

REPO = Path(__file__).resolve().parent.parent
HDR = b"user_id,anime_id,rating\n"
B53 = 2 ** 53
GENERIC = {"ratings": "r.csv"}


@dataclass
class Case:
    name: str
    files: dict
    adapter: str = "mal2020"
    cfg: dict = field(default_factory=dict)
    file: str = ""  # error: the file named
    line: int | None = None
    column: object = None
    match: str = ""
    check: object = None  # load: callable(frame)


def _users(want):
    def check(frame):
        assert sorted(frame.user.tolist()) == sorted(want), frame.user.tolist()
    return check


def _timestamps(frame):
    assert frame.timestamp.dtype == np.int64
    assert sorted(frame.timestamp.tolist()) == [1, B53, B53 + 1]


def _sparse(size: int, head: bytes = b""):
    """A file of ``head`` then NUL bytes up to ``size`` (sparse: no disk, read at memory speed)."""
    def make(path: Path):
        with open(path, "wb") as fh:
            fh.write(head)
            fh.truncate(size)
    return make


def _long_digits(path: Path):
    with open(path, "wb") as fh:
        fh.write(HDR + b"1,1,5\n1,2,")
        block = b"7" * (1 << 20)
        for _ in range(250):
            fh.write(block)
        fh.write(b"\n1,3,5\n")


def _fifo(path: Path):
    os.mkfifo(path)


def _loop(path: Path):
    path.symlink_to(path.name)  # anime.csv -> anime.csv


def _folder(path: Path):
    path.mkdir()
    (path / "x.csv").write_bytes(b"MAL_ID,Name\n1,A\n")


ONE = HDR + b"1,1,5\n"
LONG = "longer than 1 MiB"

CASES = [
    Case("ids at 2**53 beside 1.0", {"rating_complete.csv": HDR + f"{B53},1,5\n{B53 + 1},1,6\n1.0,2,7\n".encode()},
         check=_users([B53, B53 + 1, 1])),
    Case("int64 max beside 1.0", {"rating_complete.csv": HDR + b"9223372036854775807,1,5\n1.0,2,7\n"},
         check=_users([2 ** 63 - 1, 1])),
    Case("below int64 beside 1.0", {"r.csv": b"user,item,rating\n1.0,1,5\n-9223372036854775809,2,7\n"},
         adapter="generic", cfg=GENERIC, file="r.csv", line=3, column="user", match="out of the int64 range"),
    Case("timestamps at 2**53 beside 1.0",
         {"r.csv": f"user,item,rating,ts\n1,1,5,{B53}\n1,2,6,{B53 + 1}\n2,1,7,1.0\n".encode()},
         adapter="generic", cfg={**GENERIC, "timestamp_col": "ts"}, check=_timestamps),
    Case("rating 1e39", {"r.csv": b"user,item,rating\n1,1,4.5\n1,2,1e39\n"}, adapter="generic", cfg=GENERIC,
         file="r.csv", line=3, column="rating", match="too large"),
    Case("rating 1e-50", {"r.csv": b"user,item,rating\n1,1,4.5\n1,2,1e-50\n"}, adapter="generic", cfg=GENERIC,
         file="r.csv", line=3, column="rating", match="would be 0"),
    Case("ratings header names rating twice", {"rating_complete.csv": b"user_id,anime_id,rating,rating\n1,1,5,6\n"},
         file="rating_complete.csv", line=1, column="rating", match="twice"),
    Case("generic header names user twice", {"r.csv": b"user,item,rating,User\n1,1,5,2\n"}, adapter="generic",
         cfg=GENERIC, file="r.csv", line=1, column="User", match="twice"),
    Case("catalogue header names Name twice",
         {"rating_complete.csv": HDR + b"1,1,5\n", "anime.csv": b"MAL_ID,Name,name\n1,Alpha,Beta\n"},
         file="anime.csv", line=1, column="name", match="twice"),
    Case("a 200 KB header field", {"rating_complete.csv": b"user_id," + b"a" * 200_000 + b",anime_id,rating\n1,1,5\n"},
         file="rating_complete.csv", line=1, column=2, match="200,000 characters long"),
    Case("a 2 GB one-line header", {"rating_complete.csv": _sparse(2 << 30, b"user_id,anime_id,rating")},
         file="rating_complete.csv", line=1, match=LONG),
    Case("a 250 MB line of NULs", {"rating_complete.csv": _sparse(250 << 20, HDR + b"1,1,5\n")},
         file="rating_complete.csv", line=3, column=1, match=LONG),
    Case("a 250 MB line of digits", {"rating_complete.csv": _long_digits},
         file="rating_complete.csv", line=3, column=3, match=LONG),
    Case("a line of spaces", {"rating_complete.csv": HDR + b"1,1,5\n   \n1,2,6\n1,3,x\n"},
         file="rating_complete.csv", line=5, column="rating", match="'x' is not a number"),
    Case("lines of tabs and spaces, CRLF", {"rating_complete.csv": (HDR + b"1,1,5\n\t\n \t \r\n1,2,6\n\n1,3,y\n")
                                            .replace(b"\n", b"\r\n").replace(b"\r\r", b"\r")},
         file="rating_complete.csv", line=7, column="rating", match="'y' is not a number"),
    Case("unclosed quote on the last line", {"rating_complete.csv": HDR + b"1,1,5\n1,2,6\n1,3,\"7\n"},
         file="rating_complete.csv", line=4, column=3, match="never closed"),
    Case("unclosed quote opening a line", {"rating_complete.csv": HDR + b"1,1,5\n\"1,3,5\n1,4,5\n"},
         file="rating_complete.csv", line=3, column=1, match="never closed"),
    Case("catalogue is a folder", {"rating_complete.csv": ONE, "anime.csv": _folder}, file="anime.csv",
         match="is a folder"),
    Case("catalogue is a FIFO", {"rating_complete.csv": ONE, "anime.csv": _fifo}, file="anime.csv", match="is a FIFO"),
    Case("catalogue is a symlink loop", {"rating_complete.csv": ONE, "anime.csv": _loop}, file="anime.csv",
         match="symbolic link loop"),
    Case("a 2 GB one-line catalogue", {"rating_complete.csv": ONE, "anime.csv": _sparse(2 << 30, b"MAL_ID,Name")},
         file="anime.csv", line=1, column=2, match="longer than 64 MiB"),
]
SLOW = {"a 250 MB line of digits"}  # writes 250 MB


MEMORY_CASES = ["infG", "-1G", "1.5.5G", "nan"]


def test_the_table_counts_every_case():
    rows = [ln for ln in __doc__.splitlines() if ln.startswith("| ") and ln[2:4].strip().isdigit()]
    assert len(rows) == len(CASES) + len(MEMORY_CASES) + 1 == 26


def _params():
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.name in SLOW else []) for c in CASES]


def _raw(tmp: Path, case: Case) -> Path:
    raw = tmp / "raw"
    raw.mkdir()
    for name, data in case.files.items():
        if callable(data):
            data(raw / name)
        else:
            (raw / name).write_bytes(data)
    return raw


@pytest.mark.parametrize("case", _params())
def test_in_process(case: Case, tmp_path):
    raw = _raw(tmp_path, case)
    cfg = DataConfig(source=case.adapter, **case.cfg)
    runs = {"load": lambda: sources.load(case.adapter, raw, cfg)}
    for chunk in (1, 2):
        runs[f"prepare chunk {chunk}"] = lambda chunk=chunk: prepare.prepare(
            case.adapter, raw, tmp_path / f"out{chunk}", cfg, chunk_rows=chunk)
    for what, run in runs.items():
        if case.check is None:
            with pytest.raises(DataError) as info:
                run()
            err = info.value
            assert (Path(err.path).name, err.line, err.column) == (case.file, case.line, case.column), (what, str(err))
            assert case.match in err.reason, (what, str(err))  # the path may hold the words too
            continue
        out = run()
        if what == "load":
            frame, _, manifest = out
        else:
            manifest = out
            frame = prepare.load_processed(tmp_path / f"out{what[-1]}")[0]
        check_balance(manifest)
        assert all(not f["rows_dropped"] for f in manifest["files"].values()), (what, manifest)
        case.check(frame)


@pytest.mark.parametrize("case", _params())
def test_cli(case: Case, tmp_path):
    raw = _raw(tmp_path, case)
    args = ["prepare", "--source", case.adapter, "--raw", raw, "--out", tmp_path / "out"]  # one chunk
    if case.adapter == "generic":
        conf = tmp_path / "c.toml"
        conf.write_text("[data]\nsource = \"generic\"\n"
                        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in case.cfg.items()))
        args += ["--config", conf]
    p = subprocess.run([sys.executable, "-m", "research", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, env=dict(os.environ), timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    if case.check is not None:
        assert p.returncode == 0, p.stderr
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        check_balance(manifest)
        assert all(not f["rows_dropped"] for f in manifest["files"].values()), manifest
        case.check(prepare.load_processed(tmp_path / "out")[0])
        return
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    _one_error_line(p.stderr, case)


def _where(case: Case) -> str:
    """The location part of the message: ``file[:line][: column c]: ``."""
    where = case.file + (f":{case.line}" if case.line is not None else "")
    if case.column is not None:
        where += f": column {case.column!r}" if isinstance(case.column, str) else f": column {case.column}"
    return where + ": "


def _one_error_line(stderr: str, case: Case) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("animerec: error:") and _where(case) in line, line
    assert case.match in line.split(_where(case), 1)[1], line


def _cli(args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "research", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=300)


@pytest.mark.parametrize("value", MEMORY_CASES)
def test_memory_limit_is_checked(value, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "r.csv").write_bytes(b"user,item,rating\n1,1,5\n")
    cfg = DataConfig(source="generic", **GENERIC)
    monkeypatch.setenv(sources.MEMORY_ENV, value)
    from research.errors import ConfigError

    with pytest.raises(ConfigError, match=f"ANIMEREC_MEMORY_LIMIT='{value}'"):
        sources.load("generic", raw, cfg)
    conf = tmp_path / "c.toml"
    conf.write_text(f'experiment = "memory"\nresults_dir = "{tmp_path / "results"}"\n[data]\nsource = "generic"\n'
                    f'path = "{raw}"\nratings = "r.csv"\n')
    p = _cli(["eda", conf], env={**os.environ, sources.MEMORY_ENV: value})
    assert "Traceback" not in p.stderr and p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"animerec: error: ANIMEREC_MEMORY_LIMIT='{value}': "), p.stderr


def test_stale_buckets_are_removed(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "rating_complete.csv").write_bytes(ONE)
    out = tmp_path / "out"
    # a pid that has exited: a child we waited for (its pid is not reused this quickly)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = out / f".buckets-{dead}"
    stale.mkdir(parents=True)
    (stale / "b0000.bin").write_bytes(b"\0" * 4096)
    live = out / f".buckets-{os.getppid()}"  # a running process (pytest's parent): left alone
    live.mkdir()
    p = _cli(["prepare", "--source", "mal2020", "--raw", raw, "--out", out])
    assert p.returncode == 0, p.stderr
    assert not stale.exists() and live.is_dir()
    assert f"removed {stale}" in p.stderr and f"pid {dead}" in p.stderr and "no longer running" in p.stderr
    check_balance(json.loads((out / "manifest.json").read_text()))


def test_big_lines_end_fast_in_bounded_memory(tmp_path):
    """The sparse 2 GB header, a 2 GB line 2 and the 250 MB line end in seconds, and the child's
    peak RSS stays near the interpreter's own (pandas + pyarrow imported)."""
    sizes = {"2 GB header": _sparse(2 << 30, b"user_id,anime_id,rating"),
             "2 GB line 2": _sparse(2 << 30, HDR),
             "250 MB line 3": _sparse(250 << 20, ONE)}
    base = None
    for what, make in {"tiny": lambda p: p.write_bytes(ONE), **sizes}.items():
        raw = tmp_path / what.replace(" ", "_")
        raw.mkdir()
        make(raw / "rating_complete.csv")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "research", "prepare", "--source", "mal2020",
                                 "--raw", str(raw), "--out", str(raw / "out")], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        rss = usage.ru_maxrss * 1024  # KiB on Linux
        if base is None:
            assert os.waitstatus_to_exitcode(status) == 0, err
            base = (rss, seconds)
            continue
        assert os.waitstatus_to_exitcode(status) == 2 and LONG in err and "Traceback" not in err, (what, err)
        # the scan reads at most 1.5 MiB of the line: no more memory than a tiny file needs, give
        # or take allocator noise (64 MiB), and about the same time (imports dominate)
        assert rss < base[0] + (64 << 20), (what, rss, base)
        assert seconds < base[1] + 30, (what, seconds, base)
