"""TensorBoard: ``animerec tensorboard`` (serve a run's or an experiment's logs on 127.0.0.1) and the
TensorFlow-free writers the runner uses (HParams sessions, the projector's run marker).

What a run folder holds for TensorBoard (the target of ``animerec tensorboard``):

- ``logs/<model>/``: one HParams session per model of the run (its parameters, ``model``, ``type``,
  ``seed``, and its test metrics as ``test/<metric>`` scalars at step 0), written for every model,
  classical ones included, by :func:`write_session`; for a Keras model also the projector
  (``projector_config.pbtxt``, ``metadata.tsv`` with anime names, ``embedding.tsv``) in that same
  folder, which is a TensorBoard run of its own;
- ``logs/<model>/train`` and ``logs/<model>/validation``: a Keras model's per-epoch scalars.

HParams shows by default the first five parameters and metrics of the experiment (inferred, they
were sorted by name: no test metric, no seed). ``animerec tensorboard`` writes one config covering
every served session (:func:`write_experiment`; TensorBoard picks one of several arbitrarily), with
``model``, ``seed``, ``type`` and the test metrics first, and removes it when it stops.

``animerec tensorboard``: warns on stderr, and still serves (TensorBoard reloads, so a board started
before a run writes its first epoch fills in), when the target holds no event files; forwards the
child's error and exits 2 when TensorBoard fails to start (e.g. the port is in use); stops the child
on SIGTERM / SIGINT (Ctrl-C) of ``animerec`` and then exits 0.
"""
from __future__ import annotations

import contextlib
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
EXPERIMENT_SUFFIX = ".experiment"  # the served folder's HParams experiment config (animerec tensorboard)
EXPERIMENT_RUN = "hparams_columns"  # the folder (a TensorBoard run) holding it, below the served folder
TEST_PREFIX = "test/"  # a session's test metrics: ``test/<metric>`` scalars
# The parameters shown first: TensorBoard orders them by ``differs`` (True first) and then by name,
# whatever the config's order; these alone are flagged, and sorted by name they are in this order.
LEAD_HPARAMS = ("model", "seed", "type")

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


# ---- the served folder's experiment config (no TensorFlow) ------------------------------------
def _records(path: Path):
    """The records of a TFRecord file (a truncated last record, a file being written, ends it)."""
    with open(path, "rb") as f:
        while len(head := f.read(12)) == 12:  # length (8 bytes) and its crc (4)
            n = int.from_bytes(head[:8], "little")
            if len(data := f.read(n)) < n or len(f.read(4)) < 4:  # the record, its crc
                return
            yield data


def scan_sessions(logdir) -> tuple[dict, dict]:
    """``({run: {hparam: Value}}, {run: {scalar tags}})``: the HParams sessions and scalar tags of the
    event files below ``logdir`` (but its experiment config), runs named as TensorBoard does."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import metadata as hp_meta
    from tensorboard.plugins.hparams import plugin_data_pb2

    logdir, sessions, scalars = Path(logdir), {}, {}
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        if not f.is_file() or f.name.endswith(EXPERIMENT_SUFFIX):
            continue
        run = f.parent.relative_to(logdir).as_posix()
        for rec in _records(f):
            try:
                ev = event_pb2.Event.FromString(rec)
            except Exception:  # a damaged record: TensorBoard skips it too
                continue
            for v in ev.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                if plugin == hp_meta.PLUGIN_NAME and v.tag == hp_meta.SESSION_START_INFO_TAG:
                    info = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    sessions[run] = dict(info.session_start_info.hparams)
                elif plugin == "scalars" or v.HasField("simple_value"):
                    scalars.setdefault(run, set()).add(v.tag)
    return sessions, scalars


def _hparam_info(name: str, values: list):
    """A parameter's type and domain from its sessions' values as TensorBoard infers them
    (plugins/hparams/backend_context.py); ``differs`` set for :data:`LEAD_HPARAMS` only."""
    from google.protobuf import json_format
    from tensorboard.plugins.hparams import api_pb2

    types = {"number_value": api_pb2.DATA_TYPE_FLOAT64, "bool_value": api_pb2.DATA_TYPE_BOOL,
             "string_value": api_pb2.DATA_TYPE_STRING}
    values = [v for v in values if v.WhichOneof("kind") in types]
    kinds = {v.WhichOneof("kind") for v in values}
    if not kinds:
        return None
    kind = kinds.pop() if len(kinds) == 1 else "string_value"  # mixed types: shown as text
    info = api_pb2.HParamInfo(name=name, type=types[kind], differs=name in LEAD_HPARAMS)
    if kind == "number_value":
        info.domain_interval.min_value = min(v.number_value for v in values)
        info.domain_interval.max_value = max(v.number_value for v in values)
    else:
        info.domain_discrete.extend(sorted({getattr(v, kind) if v.WhichOneof("kind") == kind
                                            else json_format.MessageToJson(v) for v in values}))
    return info


def _metric_order(group: str, tag: str):
    """Test metrics first, in ``METRICS``' order (and by cut-off), then other test scalars by name,
    then the other runs' (a Keras model's ``train`` / ``validation`` epoch scalars) by name."""
    from research.eval.metrics import METRICS

    test = group == "" and tag.startswith(TEST_PREFIX)
    base, _, k = tag[len(TEST_PREFIX):].partition("@")
    if test and base in METRICS:
        return (0, list(METRICS).index(base), int(k) if k.isdigit() else -1, tag)
    return (1 if test else 2 if group == "" else 3, 0, 0, f"{group}/{tag}")


def experiment_pb(logdir):
    """An HParams experiment with every parameter of the sessions below ``logdir`` and every scalar of
    their runs and sub-runs (as TensorBoard groups them), :data:`LEAD_HPARAMS` and the test metrics
    first; None when there is no session."""
    from tensorboard.plugins.hparams import api_pb2

    sessions, scalars = scan_sessions(logdir)
    if not sessions:
        return None
    names = sorted({n for hps in sessions.values() for n in hps})
    infos = [i for n in names if (i := _hparam_info(n, [h[n] for h in sessions.values() if n in h]))]
    infos.sort(key=lambda i: (not i.differs, i.name))  # as TensorBoard shows them
    metrics = set()
    for run, tags in scalars.items():
        session = run  # its session: the longest parent (or itself) that is one
        while session not in sessions and session not in ("", "."):
            session = os.path.dirname(session)
        if session in sessions:
            metrics.update(("" if run == session else os.path.relpath(run, session), t) for t in tags)
    return api_pb2.Experiment(hparam_infos=infos, metric_infos=[
        api_pb2.MetricInfo(name=api_pb2.MetricName(group=g, tag=t))
        for g, t in sorted(metrics, key=lambda gt: _metric_order(*gt))])


def remove_experiment(logdir) -> None:
    """Remove the served experiment configs below ``logdir`` (and their folders when left empty)."""
    for f in list(Path(logdir).rglob(f"events.out.tfevents.*{EXPERIMENT_SUFFIX}")):
        f.unlink(missing_ok=True)
        if f.parent.name == EXPERIMENT_RUN:
            with contextlib.suppress(OSError):  # not empty
                f.parent.rmdir()


def write_experiment(logdir) -> Path | None:
    """Write :func:`experiment_pb` of ``logdir`` as its one config, in ``logdir/hparams_columns/``,
    after removing any left below it (a server killed); None, nothing written, without sessions."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import metadata as hp_meta
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.plugins.hparams.summary_v2 import _summary_pb

    remove_experiment(logdir)
    if (experiment := experiment_pb(logdir)) is None:
        return None
    experiment.time_created_secs = time.time()
    summary = _summary_pb(hp_meta.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))
    w, path = _event_file(Path(logdir) / EXPERIMENT_RUN, EXPERIMENT_SUFFIX)
    with contextlib.closing(w):  # closing the file flushes it
        w.write(event_pb2.Event(wall_time=time.time(), step=0, summary=summary).SerializeToString())
    return path


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
    events = [f for f in Path(logdir).rglob("events.out.tfevents.*")
              if f.is_file() and not f.name.endswith(EXPERIMENT_SUFFIX)]
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

    def __init__(self, logdir: Path, port: int, startup_timeout: float = 300.0, experiment: Path | None = None):
        self.logdir, self.port = Path(logdir), int(port)
        self.experiment = experiment  # the experiment config written for it, removed by stop()
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
        """Terminate the child (killed after ``timeout`` s), remove its experiment config; its status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.experiment is not None:
            remove_experiment(self.experiment.parent.parent)
            self.experiment = None
        return self.proc.returncode


def serve(target: str, port: int = 6006, block: bool = True):
    """Start TensorBoard on the logs below ``target`` bound to 127.0.0.1 and print its URL.

    Writes the served folder's HParams config first (:func:`write_experiment`), removed when the
    server stops; a later session's new parameters and metrics get no column until a restart.
    Warns on stderr when ``target`` holds no event files yet. Raises :class:`TensorBoardError` (the
    CLI: its message, exit 2) when the child fails to start. ``block``: serve until SIGINT / SIGTERM,
    then stop the child and return 0; else return the :class:`Server`.
    """
    logdir = log_dir(target)
    if not contents(logdir)["event_files"]:
        print(f"animerec: warning: nothing to show yet in {logdir}: no TensorBoard event files below it "
              f"(an `animerec run` writes them under <run>/logs/; serving anyway, TensorBoard reloads)",
              file=sys.stderr, flush=True)
    print(f"starting TensorBoard on {logdir} ...", file=sys.stderr, flush=True)
    experiment = write_experiment(logdir)
    if not block:
        server = Server(logdir, port, experiment=experiment)
        print(f"TensorBoard on {logdir}: {server.url}  (Ctrl-C to stop)", flush=True)
        return server

    def _stop(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)  # SIGTERM stops it as Ctrl-C does
    server = None
    try:
        server = Server(logdir, port, experiment=experiment)
        print(f"TensorBoard on {logdir}: {server.url}  (Ctrl-C to stop)", flush=True)
        rc = server.proc.wait()
        raise TensorBoardError(f"tensorboard exited with status {rc}")
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()
        elif experiment is not None:  # the child did not start
            remove_experiment(logdir)
        signal.signal(signal.SIGTERM, old)
