"""research.locking on its own: one process per run folder, a clear message naming the holder,
no blocking by the lock file of a dead process (issue 13, item 6a)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from research import locking
from research.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

HOLD = """
import sys
from research import locking
locking.acquire(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()  # hold until told
"""


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path):
    folder = tmp_path / "runs" / "exp" / "abc-seed0"
    p = _holder(folder)
    try:
        with pytest.raises(locking.Locked) as info:
            locking.acquire(folder)
        err = info.value
        assert isinstance(err, ConfigError)  # the CLI prints one line and exits 2
        assert err.pid == p.pid and f"pid {p.pid}" in str(err) and str(folder) in str(err)
        assert "\n" not in str(err)
        assert not folder.exists()  # the lock lives beside the folder, not in it
    finally:
        p.stdin.write("\n")
        p.stdin.close()
        p.wait(timeout=60)
    assert not locking.lock_path(folder).exists()  # released (and removed) at the holder's exit
    locking.acquire(folder)  # free now
    locking.release(folder)


def test_a_killed_holder_does_not_block(tmp_path):
    folder = tmp_path / "f"
    p = _holder(folder)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    lock = locking.lock_path(folder)
    assert lock.read_text().strip() == str(p.pid)  # the stale file is still there ...
    locking.acquire(folder)  # ... and does not block
    assert lock.read_text().strip() == str(os.getpid())
    locking.release(folder)
    assert not lock.exists()


def test_reentrant_in_one_process_and_release(tmp_path):
    folder = tmp_path / "f"
    assert locking.acquire(folder) == locking.acquire(folder) == locking.lock_path(folder)
    assert folder.resolve() in locking.held()
    locking.release(folder)
    locking.release(folder)  # not held: nothing to do
    assert folder.resolve() not in locking.held() and not locking.lock_path(folder).exists()


def _race(folder: str, start, results) -> None:
    start.wait()
    try:
        locking.acquire(folder)
        results.put(("won", os.getpid()))
        start.wait()  # hold until every process has tried
    except locking.Locked as exc:
        results.put(("lost", exc.pid))
        start.wait()


def test_exactly_one_of_several_racing_processes_wins(tmp_path):
    n = 4
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "f"), start, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    won = [pid for what, pid in got if what == "won"]
    assert len(won) == 1, got
    assert all(pid in (won[0], None) for what, pid in got if what == "lost"), got
