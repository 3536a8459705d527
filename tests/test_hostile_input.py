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

Each case failed before the fix (merged ids and a "duplicate" drop; 2**63 - 1 rejected; inf / 0
stored; the first of two columns used).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
]


def test_the_table_counts_every_case():
    rows = [ln for ln in __doc__.splitlines() if ln.startswith("| ") and ln[2:4].strip().isdigit()]
    assert len(rows) == len(CASES) == 9


def _raw(tmp: Path, case: Case) -> Path:
    raw = tmp / "raw"
    raw.mkdir()
    for name, data in case.files.items():
        (raw / name).write_bytes(data)
    return raw


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
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


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
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
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert line.startswith("animerec: error:") and case.file in line and f":{case.line}:" in line, line
    assert f"column {case.column!r}: " in line and case.match in line.split(f"column {case.column!r}: ", 1)[1], line
