"""Progress on the terminal (issue 14.8): a status line on a terminal only, never with -q, in a pipe or
under pytest; printed lines are never cut by it; Keras epochs and the data read are shown; the
numbers of a fit do not change with it."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from research import progress

REPO = Path(__file__).resolve().parent.parent


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_off_under_pytest_with_quiet_in_a_pipe_and_with_the_variable(monkeypatch):
    tty = FakeTTY()
    assert "PYTEST_CURRENT_TEST" in os.environ and not progress.enabled(stream=tty)  # never in test output
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.enabled(stream=tty)
    assert not progress.enabled(quiet=True, stream=tty)
    assert not progress.enabled(stream=io.StringIO())  # a pipe or a file
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled(stream=tty)


def test_a_disabled_status_writes_nothing_and_leaves_the_streams_alone():
    tty, err = FakeTTY(), sys.stderr
    with progress.Status("x", enabled=False, stream=tty) as st:
        st.update(done=1, total=2, note="n")
        assert sys.stderr is err and not st.active
    assert tty.getvalue() == ""


def test_status_line_is_drawn_cleared_and_never_cuts_a_printed_line(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with progress.Status("seed 0: item_knn (model 2/3)", enabled=True, stream=tty, interval=0.01) as st:
        st.update(done=5, total=20, note="fitting")
        time.sleep(0.05)
        print("[animerec] a log line", file=sys.stderr)
        time.sleep(0.05)
    out = tty.getvalue()
    assert sys.stderr is tty  # restored
    assert "seed 0: item_knn (model 2/3)" in out and "25%  5/20" in out and "fitting" in out
    before, after = out.split("[animerec] a log line\n")
    assert before.endswith("\r\x1b[K")  # the status line was cleared first: the log line is whole
    assert "\r" in after and out.endswith("\r\x1b[K")  # drawn again below it, cleared at the end


def test_status_leaves_an_unfinished_line_of_someone_else_alone(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with progress.Status("s", enabled=True, stream=tty, interval=0.01):
        sys.stderr.write("their own progress 3/10\r")
        n = len(tty.getvalue())
        time.sleep(0.05)
        assert len(tty.getvalue()) == n


def test_text_shows_bytes_and_cuts_to_the_width():
    st = progress.Status("loading the data", enabled=True, unit="B", total=4 << 20)
    st.update(done=1 << 20, note="reading rating_complete.csv")
    text = st.text()
    assert "25%  1.0 MiB of 4.0 MiB" in text and "reading rating_complete.csv" in text and text.endswith("0:00")
    short = st.text(50)  # too narrow: the amount goes, then the label is shortened; bar and time stay
    assert len(short) <= 50 and "25%" in short and short.endswith("0:00") and "MiB" not in short
    assert progress.clock(3725) == "1:02:05" and progress.clock(65) == "1:05"


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs /proc/self/fdinfo (Linux)")
def test_file_reader_reports_how_far_a_data_file_has_been_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ratings.csv").write_bytes(b"x" * 10_000)
    poll = progress.file_reader(data)
    assert poll() == {"total": 0, "note": ""}  # nothing open: no bar
    with open(tmp_path / "elsewhere.csv", "wb") as other, open(data / "out.tmp", "wb") as written:
        other.write(b"y" * 50_000)
        written.write(b"z" * 50_000)
        with open(data / "ratings.csv", "rb", buffering=0) as fh:
            fh.read(4_000)
            assert poll() == {"done": 4_000, "total": 10_000, "note": "reading ratings.csv"}


@pytest.mark.keras
def test_keras_epochs_on_the_line_and_the_same_fit_without_it():
    import pandas as pd

    from research.data.interactions import build_dataset
    from research.data.splits import random_split
    from research.models.keras.embedding_dot import EmbeddingDot

    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 30, 1500), rng.integers(0, 40, 1500)
    frame = pd.DataFrame({"user": u, "item": i, "rating": rng.integers(1, 11, 1500).astype(float)})
    split = random_split(build_dataset(frame.drop_duplicates(["user", "item"])).interactions, 0.2, 0.1, seed=0)
    params = dict(dim=4, epochs=2, batch_size=128, early_stopping=False)
    plain = EmbeddingDot(seed=3, **params).fit(split.train, split.val)
    st = progress.Status("m", enabled=True, stream=FakeTTY())
    shown = EmbeddingDot(seed=3, **params).fit(split.train, split.val, callbacks=[progress.keras_callback(st)])
    assert st.note.startswith("epoch 2/2") and "last loss" in st.note and "val_loss" in st.note
    users = np.arange(split.train.n_users)
    np.testing.assert_array_equal(plain.score(users), shown.score(users))
    assert progress.is_keras(shown) and not progress.is_keras(object())


def _pty_run(args, env):
    """Run ``animerec`` under a pseudo-terminal; what it drew."""
    import pty
    import select

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "research", *args], stdin=slave, stdout=slave, stderr=slave,
                         env=env, cwd=REPO, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(timeout=60)
    os.close(master)
    return p.returncode, out.decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal run")
def test_animerec_run_shows_progress_on_a_terminal_only(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'experiment = "p"\nresults_dir = "{tmp_path / "results"}"\n[data]\nsource = "synth"\n'
                   f'[synth]\nusers = 60\nitems = 40\nratings_per_user = 10\n[models.bias]\n[models.popularity]\n')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", progress.ENV)}
    code, out = _pty_run(["run", str(cfg)], env)
    assert code == 0, out
    assert "seed 0: bias (model 1/2)" in out and "seed 0: popularity (model 2/2)" in out and "\x1b[K" in out
    assert "| popularity |" in out  # the table is whole
    code, out = _pty_run(["run", "-q", str(cfg)], env)
    assert code == 0 and "\x1b[K" not in out and "(model 1/2)" not in out
    piped = subprocess.run([sys.executable, "-m", "research", "run", str(cfg)], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and "\x1b[K" not in piped.stderr + piped.stdout
    assert "\r" not in piped.stderr and "fitting bias" in piped.stderr  # the log lines stay


@pytest.mark.parametrize("method", ["products", "triangle"])
def test_neighbour_computation_reports_its_blocks_to_the_current_status(monkeypatch, method):
    """item_knn's similarity loop reports how far it is to the status being shown (14.8:
    neighbour computation at scale), on both paths, ending at its total; nothing without one."""
    import scipy.sparse as sp

    from research.models.neighbors import SimilarityRows

    if method == "triangle":
        pytest.importorskip("numba")
    rng = np.random.default_rng(0)
    x = sp.random(300, 60, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    seen = []
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with progress.Status("item_knn", enabled=True, stream=tty, interval=10) as st:
        real = st.update
        monkeypatch.setattr(st, "update", lambda **kw: (seen.append(kw), real(**kw)))
        SimilarityRows(x, shrinkage=3.0).top_k(5, block_mb=0.002, method=method)
    assert progress.current() is None  # popped on exit
    assert len(seen) > 1 and seen[-1]["done"] == seen[-1]["total"]
    assert [s["done"] for s in seen] == sorted(s["done"] for s in seen)
    progress.report(1, 2, "no status: nothing happens")
