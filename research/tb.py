"""TensorBoard: ``animerec tensorboard`` (serve a run's or an experiment's logs on 127.0.0.1) and the
TensorFlow-free writers the runner uses (HParams sessions, the projector's run marker).

What a run folder holds for TensorBoard (the target of ``animerec tensorboard``):

- ``logs/<model>/``: one HParams session per model of the run (its parameters, ``model``, ``type``,
  ``seed``, and its test metrics as ``test/<metric>`` scalars at step 0), written for every model,
  classical ones included, by :func:`write_session`; for a Keras model also the projector
  (``projector_config.pbtxt``, ``metadata.tsv`` with anime names, ``embedding.tsv``) in that same
  folder, which is a TensorBoard run of its own;
- ``logs/<model>/train`` and ``logs/<model>/validation``: a Keras model's per-epoch scalars.

``animerec tensorboard``: warns on stderr, and still serves (TensorBoard reloads, so a board started
before a run writes its first epoch fills in), when the target holds no event files; forwards the
child's error and exits 2 when TensorBoard fails to start (e.g. the port is in use); stops the child
on SIGTERM / SIGINT (Ctrl-C) of ``animerec`` and then exits 0.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from research.config import REPO_ROOT
from research.errors import AnimeRecError, ConfigError

SESSION_SUFFIX = ".hparams"  # the event file of a run's HParams session
MARKER_SUFFIX = ".run"  # an empty event file that makes a folder a TensorBoard run (the projector's)

# TensorFlow's start-up lines that TF_CPP_MIN_LOG_LEVEL does not reach (absl logs written before
# absl::InitializeLog), and TensorBoard's own banner / fast-loading note: dropped from the child's stderr.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor|gpu_device"
    r"|gpu_timer|dso_loader)\.cc:\d+\]"
    r"|To enable the following instructions:"
    r"|NOTE: Using experimental fast data loading logic"
    r"|\s+\"--load_fast=false\" and report issues on GitHub"
    r"|\s+https://github.com/tensorflow/tensorboard/issues/4784"
    r"|\s*$)")
_BANNER = re.compile(r"^TensorBoard \S+ at (http://\S+)")


class TensorBoardError(AnimeRecError):
    """TensorBoard did not start (its own message follows)."""


# ---- writing (no TensorFlow) ---------------------------------------------------------------
def _event_file(logdir: Path, suffix: str):
    """A new event file in ``logdir`` (its version record written), as a TFRecord writer."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / f"events.out.tfevents.{int(time.time()):010d}.{os.uname().nodename}.{os.getpid()}{suffix}"
    w = RecordWriter(open(path, "wb"))
    w.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    return w, path


def mark_run(logdir) -> None:
    """Make ``logdir`` a TensorBoard run (an event file in it) if it is not one already, so the
    projector finds the ``projector_config.pbtxt`` there."""
    logdir = Path(logdir)
    if not any(logdir.glob("events.out.tfevents.*")):
        _event_file(logdir, MARKER_SUFFIX)[0].close()


def _hparam_value(v):
    import numpy as np

    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v if isinstance(v, str) else str(v)  # None, lists, tables: shown as text


def write_session(logdir, hparams: dict, metrics: dict, session: str, prefix: str = "test/") -> Path:
    """Write ``logdir`` as one HParams session: ``hparams`` and ``metrics`` (``<prefix><name>``
    scalars at step 0; non-finite and non-numeric values are left out). Replaces an earlier session
    written there. TensorFlow is not imported. Returns the event file."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import summary_v2 as hp
    from tensorboard.plugins.scalar import summary_v2 as scalar

    logdir = Path(logdir)
    for old in logdir.glob(f"events.out.tfevents.*{SESSION_SUFFIX}"):
        old.unlink()
    values = {str(k): _hparam_value(v) for k, v in hparams.items()}
    w, path = _event_file(logdir, SESSION_SUFFIX)
    now = time.time()
    try:
        w.write(event_pb2.Event(wall_time=now, step=0, summary=hp.hparams_pb(
            values, trial_id=session, start_time_secs=now)).SerializeToString())
        for k, v in metrics.items():
            v = _hparam_value(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                f = float(v)
                w.write(event_pb2.Event(wall_time=now, step=0,
                                        summary=scalar.scalar_pb(prefix + str(k), f)).SerializeToString())
    finally:
        w.flush()
        w.close()
    return path


def log_model_session(log_dir, spec, model, extra: dict, measured: dict, session: str) -> Path:
    """A run's model as an HParams session in its log folder (``animerec run``): its parameters (the
    config's ``[models.NAME]`` values over the model's full configuration when it has one), ``model``
    (the config's name), ``type``, the ``extra`` values (``seed``, ``experiment``) and its test
    metrics as ``test/<metric>``.

    The session's name (the HParams table's "Trial ID") starts with the seed, ``seed N · <session>``:
    the table shows only its first dozen characters and, of the parameters, only the first five by
    name (``seed`` is not among them), so with ``<run folder>/<model>`` alone a model's sessions of
    two seeds looked the same."""
    params = dict(model.get_config()) if hasattr(model, "get_config") else {}
    params.update(spec.params)
    params.pop("seed", None)  # the model's child seed; the run's seed comes in ``extra``
    if "seed" in extra:
        session = f"seed {extra['seed']} · {session}"
    return write_session(log_dir, {**params, "model": spec.name, "type": spec.type, **extra}, measured, session)


# ---- serving ------------------------------------------------------------------------------
def log_dir(target: str) -> Path:
    """The logs folder of a run folder, an experiment's runs folder, or a path holding logs."""
    p = Path(target)
    for cand in (p, REPO_ROOT / p, REPO_ROOT / "results" / "runs" / p):
        if cand.is_dir():
            return cand
    raise ConfigError(f"no run or experiment folder at {target!r}")


def contents(logdir: Path) -> dict:
    """What TensorBoard will show below ``logdir``: counts of HParams sessions, folders of per-epoch
    scalars (Keras models) and projector configs."""
    events = [f for f in Path(logdir).rglob("events.out.tfevents.*") if f.is_file()]
    return {"sessions": sum(f.name.endswith(SESSION_SUFFIX) for f in events),
            "curves": len({f.parent for f in events if not f.name.endswith((SESSION_SUFFIX, MARKER_SUFFIX))}),
            "projectors": sum(1 for _ in Path(logdir).rglob("projector_config.pbtxt")),
            "event_files": len(events)}


def _no_orphan():  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM when animerec dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Server:
    """A TensorBoard child process serving ``logdir`` on 127.0.0.1:``port``."""

    def __init__(self, logdir: Path, port: int, startup_timeout: float = 300.0):
        self.logdir, self.port = Path(logdir), int(port)
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", "127.0.0.1",
               "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace",
                                     preexec_fn=_no_orphan if sys.platform.startswith("linux") else None)
        self.url = None
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._wait_ready(startup_timeout)
        except BaseException:  # Ctrl-C / SIGTERM while it starts: no orphan
            self.stop()
            raise

    def _wait_ready(self, startup_timeout: float) -> None:
        deadline = time.monotonic() + startup_timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(timeout=5)
                rc = self.proc.poll()
                self.stop()
                said = [ln for ln in self._lines if not _NOISE.match(ln)] or self._lines[-5:]
                why = f"exited with status {rc}" if rc is not None else f"did not start in {startup_timeout:.0f} s"
                raise TensorBoardError(f"tensorboard {why}: " + " / ".join(s.strip() for s in said))

    def _read(self):
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            m = _BANNER.match(line)
            if m and not self._ready.is_set():
                self.url = m.group(1)
                self._ready.set()
            elif not self._ready.is_set():
                self._lines.append(line)
            elif not _NOISE.match(line):
                print(f"[tensorboard] {line}", file=sys.stderr, flush=True)  # its later warnings

    def stop(self, timeout: float = 15.0) -> int | None:
        """Terminate the child (kill it if it does not exit in ``timeout`` s); its exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def serve(target: str, port: int = 6006, block: bool = True):
    """Start TensorBoard on the logs below ``target`` bound to 127.0.0.1 and print its URL.

    Warns on stderr when ``target`` holds no event files yet. Raises :class:`TensorBoardError` (the
    CLI: its message, exit 2) when the child fails to start. ``block``: serve until SIGINT / SIGTERM,
    then stop the child and return 0; else return the :class:`Server`.
    """
    logdir = log_dir(target)
    found = contents(logdir)
    if not found["event_files"]:
        print(f"animerec: warning: nothing to show yet in {logdir}: no TensorBoard event files below it "
              f"(an `animerec run` writes them under <run>/logs/; serving anyway, TensorBoard reloads)",
              file=sys.stderr, flush=True)
    print(f"starting TensorBoard on {logdir} ...", file=sys.stderr, flush=True)
    if not block:
        server = Server(logdir, port)
        print(f"TensorBoard on {logdir}: {server.url}  (Ctrl-C to stop)", flush=True)
        return server

    def _stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)  # SIGTERM stops it as Ctrl-C does
    server = None
    try:
        server = Server(logdir, port)
        print(f"TensorBoard on {logdir}: {server.url}  (Ctrl-C to stop)", flush=True)
        rc = server.proc.wait()
        raise TensorBoardError(f"tensorboard exited with status {rc}")
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, old)
