"""Multi-worker training with ``tf.distribute.MultiWorkerMirroredStrategy``, and a loopback launcher.

Size: one module because the TF_CONFIG reader, the strategy and the loopback launcher are one
protocol: the launcher writes the TF_CONFIG the workers read, and both sides share the scratch
folders and the failure messages defined here.

A Keras model trains data-parallel when ``TF_CONFIG`` is set (the TensorFlow convention: a JSON
``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}``). Every
worker runs the same ``animerec run CONFIG``: it loads the data, splits it (the same split: the
seed is the config's), fits the non-Keras models itself, and for a Keras model

- builds and compiles the model under ``strategy()``'s scope (variables are mirrored: one copy per
  worker, kept equal by all-reducing the gradients every step);
- feeds it its slice of every global batch (``InMemoryPipeline.distributed_dataset``: worker k of W
  takes rows ``[k*B/W, (k+1)*B/W)`` of each batch of the one-worker order), so the global batch
  size stays ``batch_size`` and the examples of step t are those of a one-worker fit's step t;
- weights each worker's loss by its share of the global batch (``TFRSModel.train_step``, or the
  model's own step: multvae, autorec), so the summed gradient is the gradient of the global
  batch's loss, as on one worker; noise keyed on the step is drawn for the global batch, each
  worker keeping its rows, and the epoch logs are the metrics' global values.

Worker 0 (or the ``chief`` task, when the cluster has one) is the chief: it writes the run folder.
Every other worker writes its run folder, TensorBoard logs and checkpoints to a private scratch
folder (``worker_results_dir``: under the system's temporary folder, named after the results folder
and the task, so a restarted worker finds its own checkpoints), never into the results.

Resumable checkpoints are per worker: every worker keeps its own ``BackupAndRestore`` state (and
history / early-stopping state) in its own folder; the replicas hold identical weights, so any of
them is the model. A resumed fit checks that all workers restart at the same epoch (an error names
them otherwise, instead of a hang).

Not every Keras model is right under the strategy: ``check_supported`` says which are and why the
others are not (``MULTI_WORKER``; for two_tower it depends on the instance's ``loss``), and a fit of
an unsupported one raises ``ConfigError`` before any worker starts training.

``launch`` (``animerec run CONFIG --workers N``) starts N workers on free 127.0.0.1 ports with
generated ``TF_CONFIG`` s, for trying this on one machine: it waits for them, and when one fails
(or on Ctrl-C) it stops the others (their process group) and says which one failed and how.

TensorFlow is imported only by ``strategy()``: importing this module costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from research.errors import AnimeRecError, ConfigError

#: seconds a collective (an all-reduce of one step) may wait for the other workers before it fails;
#: off by default: TensorFlow 2.21 starts a thread per collective that sleeps for the timeout, so
#: with a timeout of minutes a fit accumulates thousands of threads (13,000 after 11 epochs of a
#: small model here) and dies of "Resource temporarily unavailable". A dead worker is found without
#: it: the coordination service's heartbeats abort the others' collectives (about 15 s here).
TIMEOUT_ENV = "ANIMEREC_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 0.0

_STRATEGY = None

# Which Keras recommenders train correctly under MultiWorkerMirroredStrategy. A model qualifies when
# each replica's loss enters the global objective as its share of the global batch (TFRSModel's
# train_step, or a model's own step doing the same), its random draws are those a one-worker step
# makes for the same examples, and a 2-worker fit matches a 1-worker one
# (tests/test_distributed_models.py). The value is None for a checked model, the reason it is
# refused, or a function of the instance giving either (a model whose configurations differ).
_IN_BATCH = ("its in-batch retrieval loss (loss = \"in_batch\") scores each example against the other "
             "examples of the batch (in-batch negatives): a worker sees only its slice of the global batch, "
             "so the negatives, and the model, would change with the number of workers; the default "
             "loss = \"full_softmax\" (each example against the whole catalogue) trains under the strategy")


_USER_FOLDS = ("its grouped training (user_folds > 0) has not been checked against a 1-worker fit "
               "(tests/test_distributed_models.py checks per-pair training)")


def _two_tower(model) -> str | None:
    if getattr(model, "loss", "full_softmax") == "in_batch":
        return _IN_BATCH
    return _USER_FOLDS if getattr(model, "user_folds", 0) else None


MULTI_WORKER: dict = {
    "research.models.keras.embedding_dot:EmbeddingDot": None,
    "research.models.keras.embedding_dot:SVDpp": None,
    "research.models.keras.dnn:DNN": None,
    "research.models.keras.two_tower:TwoTower": _two_tower,
    "research.models.keras.multvae:MultVAE": None,  # its own step weights by share (multvae.py)
    "research.models.keras.autorec:AutoRec": None,  # its own step: rows / global batch rows (autorec.py)
}


class WorkerError(AnimeRecError):
    """Multi-worker training failed: a worker died, or a collective timed out or was aborted."""


def describe_failure(exc, model: str) -> WorkerError:
    """A ``WorkerError`` for a TensorFlow error raised in a multi-worker fit: who failed, if the
    message says (the coordination service names the tasks that stopped sending heartbeats)."""
    import re

    text = getattr(exc, "message", "") or str(exc)
    kind, index = task()
    dead = sorted(set(re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text.split("unhealthy", 1)[-1])))
    remote = sorted(set(re.findall(r"remote target /job:(\w+)/replica:\d+/task:(\d+)", text)))
    lost = re.search(r"Socket closed|Connection refused|failed to connect|Connection reset", text, re.I)
    if "heartbeat" in text and dead:
        who = ", ".join(f"{j} {t}" for j, t in dead)
        why = f"{who} stopped sending heartbeats (crashed, killed or unreachable)"
    elif remote and lost:
        who = ", ".join(f"{j} {t}" for j, t in remote)
        why = f"the connection to {who} was lost ({lost.group(0)}: it crashed, was killed or is unreachable)"
    elif "coordination service" in text.lower():
        why = "the coordination service (the chief) is unreachable: the chief crashed, was killed or is unreachable"
    elif type(exc).__name__ == "DeadlineExceededError":
        why = f"a collective waited more than {collective_timeout():g} s ({TIMEOUT_ENV}) for the other workers"
    else:
        first = text.strip().splitlines()[0][:300] if text.strip() else ""
        why = f"a collective failed ({type(exc).__name__}: {first})"
    return WorkerError(f"{model}: multi-worker training failed on {kind} {index}: {why}")


# ---- TF_CONFIG ----------------------------------------------------------------------------
def tf_config() -> dict | None:
    """``TF_CONFIG`` parsed, or None when it is unset or empty."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not JSON: {exc}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("cluster"), dict) or not cfg["cluster"]:
        raise ConfigError("TF_CONFIG needs a 'cluster' table, e.g. "
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                          '"task": {"type": "worker", "index": 0}}')
    return cfg


def enabled() -> bool:
    """True when this process is a worker of a tf.distribute cluster (``TF_CONFIG`` is set)."""
    return tf_config() is not None


def task() -> tuple[str, int]:
    """This process's (task type, index); ("worker", 0) without ``TF_CONFIG``."""
    cfg = tf_config()
    if cfg is None:
        return "worker", 0
    t = cfg.get("task") or {}
    return str(t.get("type", "worker")), int(t.get("index", 0))


def num_workers() -> int:
    """Workers training (the chief counts as one); 1 without ``TF_CONFIG``."""
    cfg = tf_config()
    if cfg is None:
        return 1
    return sum(len(cfg["cluster"].get(job, ())) for job in ("chief", "worker"))


def is_chief() -> bool:
    """The task that writes results: the ``chief`` task, else worker 0 (always True without ``TF_CONFIG``)."""
    cfg = tf_config()
    if cfg is None:
        return True
    kind, index = task()
    if "chief" in cfg["cluster"]:
        return kind == "chief"
    return kind == "worker" and index == 0


def collective_timeout() -> float:
    """Seconds a collective may wait (``ANIMEREC_COLLECTIVE_TIMEOUT``; default and 0: no limit, see
    ``TIMEOUT_ENV``)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if value < 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be >= 0, got {value}")
    return value


def strategy():
    """The process's ``MultiWorkerMirroredStrategy`` (made once: TensorFlow allows one per process), or
    None without ``TF_CONFIG``.

    Making it waits until every worker of the cluster has made its own (TensorFlow's barrier), so
    ``animerec run`` makes it first thing, before loading the data."""
    global _STRATEGY
    cfg = tf_config()
    if cfg is None:
        return None
    if _STRATEGY is not None:
        return _STRATEGY
    jobs = set(cfg["cluster"])
    if "ps" in jobs:
        raise ConfigError("TF_CONFIG names 'ps' tasks (ParameterServerStrategy): this engine trains with "
                          "MultiWorkerMirroredStrategy only (see docs/DISTRIBUTED.md for why and what a "
                          "parameter-server version would need)")
    if not jobs & {"worker", "chief"}:
        raise ConfigError(f"TF_CONFIG's cluster has no 'worker' or 'chief' job (has {sorted(jobs)})")
    kind, index = task()
    if kind not in ("worker", "chief") or index >= len(cfg["cluster"].get(kind, ())):
        raise ConfigError(f"TF_CONFIG's task {kind}:{index} is not in its cluster {cfg['cluster']}")
    import tensorflow as tf

    import research  # noqa: F401  (TF_USE_LEGACY_KERAS is set before: research is imported already)

    timeout = collective_timeout()
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=timeout or None,
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    try:
        _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver(),
            communication_options=options)
    except RuntimeError as exc:
        if "program startup" not in str(exc):
            raise
        raise ConfigError("TF_CONFIG is set, but TensorFlow was already running when the multi-worker strategy "
                          "was made (it must come first in the process): train multi-worker with animerec run, "
                          "or unset TF_CONFIG") from None
    return _STRATEGY


def check_supported(recommender) -> None:
    """Raise ``ConfigError`` naming why ``recommender`` (the instance: its configuration may
    matter) cannot train under the strategy (see ``MULTI_WORKER``); return for a checked model."""
    klass = type(recommender)
    path = f"{klass.__module__}:{klass.__qualname__}"
    if path not in MULTI_WORKER:
        checked = ", ".join(p.split(":")[1] for p, why in MULTI_WORKER.items() if why is None or callable(why))
        raise ConfigError(f"{klass.__name__} has not been checked under MultiWorkerMirroredStrategy (TF_CONFIG is "
                          f"set); checked: {checked}"
                          f". Add it to research.distributed.MULTI_WORKER once each replica's loss is weighted by "
                          f"its share of the global batch and a 2-worker fit matches a 1-worker one")
    why = MULTI_WORKER[path]
    why = why(recommender) if callable(why) else why
    if why is not None:
        raise ConfigError(f"{klass.__name__} cannot train under MultiWorkerMirroredStrategy: {why}. "
                          f"Unset TF_CONFIG (or run without --workers) to train it on one worker")


def agree(what: str, text: str) -> None:
    """Check that every worker is at the same ``what`` (a description whose ``text`` must be equal on
    all of them), e.g. the same model fit: one all-gather of a 63-bit hash. Workers that disagree
    (one resumed a run the other had finished) would otherwise pair collectives of different work
    and wait for ever; here all of them raise ``ConfigError``."""
    import tensorflow as tf

    s = strategy()
    mine = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)

    def local():
        return tf.constant([mine], tf.int64)

    @tf.function(autograph=False)
    def gather():
        return s.gather(s.run(local), axis=0)

    seen = [int(v) for v in gather().numpy()]
    if len(set(seen)) > 1:
        kind, index = task()
        raise ConfigError(f"the workers are not at the same {what} ({kind} {index}: {text[:200]}); the "
                          f"workers' run folders differ (e.g. one finished a model the other had not): delete "
                          f"the non-chief workers' folders ({scratch_root().parent}) and the unfinished run, "
                          f"or run again without --keep-finished")


# ---- where a worker writes -------------------------------------------------------------------
def scratch_root() -> Path:
    """A non-chief worker's private folder: ``<tmp>/animerec-workers/<task type>-<index>``."""
    kind, index = task()
    return Path(tempfile.gettempdir()) / "animerec-workers" / f"{kind}-{index}"


def worker_results_dir(results_path) -> Path:
    """Where a non-chief worker writes the run folders of ``results_path``: a private scratch
    folder, the same every time for the same results folder and task (so a restarted worker
    resumes from its own checkpoints)."""
    key = hashlib.sha256(str(Path(results_path).resolve()).encode()).hexdigest()[:12]
    return scratch_root() / f"results-{key}"


def private_dir(path) -> Path:
    """``path`` for the chief (or without ``TF_CONFIG``); for any other worker its own folder
    standing for ``path`` (e.g. an explicit ``checkpoint_dir`` every worker's config names)."""
    if is_chief():
        return Path(path)
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    return scratch_root() / f"dir-{key}" / Path(path).name


def as_worker(cfg):
    """``animerec run`` under ``TF_CONFIG``: make the strategy (the cluster's start-up barrier) and
    return the config this worker runs: ``cfg`` for the chief, else ``cfg`` with its results folder
    moved to this worker's scratch folder (``results_dir`` is not part of the run id)."""
    import dataclasses

    strategy()
    if is_chief():
        return cfg
    return dataclasses.replace(cfg, results_dir=str(worker_results_dir(cfg.results_path)))


def run_argv(args) -> list[str]:
    """The ``animerec run`` arguments a launched worker gets (``--workers`` left out)."""
    argv = ["run", str(args.config)]
    for item in getattr(args, "set", None) or []:
        argv += ["--set", item]
    if getattr(args, "keep_finished", False):
        argv.append("--keep-finished")
    if getattr(args, "quiet", False):
        argv.append("-q")
    return argv


# ---- the loopback launcher ------------------------------------------------------------------
def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_configs(n: int, host: str = "127.0.0.1", ports: list[int] | None = None) -> list[dict]:
    """The ``TF_CONFIG`` of each of ``n`` workers on ``host`` (worker 0 is the chief)."""
    ports = ports or free_ports(n, host)
    cluster = {"worker": [f"{host}:{p}" for p in ports]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(n)]


def _die_with_parent():  # in the child before exec: SIGKILL when the launcher dies (Linux)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    keep = [ln for ln in text if ln.strip()][-lines:]
    return "\n".join("    " + ln for ln in keep)


def launch(argv: list[str], workers: int, *, timeout: float | None = None, linger: float = 30.0,
           grace: float = 10.0, poll: float = 0.2, env: dict | None = None, out=None,
           module: str = "research") -> int:
    """Run ``python -m <module> <argv>`` as ``workers`` local workers of one cluster and wait.

    Worker 0 is the chief: its output is this process's; the others' goes to ``worker-<i>.log`` in
    a temporary folder, kept (and named in the error) when something fails. When a worker fails,
    the others get ``linger`` seconds to fail by themselves (they do, with their own message, once
    the coordination service misses the dead one's heartbeats), then they are stopped (SIGTERM to
    their process group, SIGKILL after ``grace`` seconds); on Ctrl-C (or SIGTERM) they are stopped
    at once. ``WorkerError`` says which worker failed first and how, and what became of the others.

    Args:
        argv: the ``animerec`` arguments every worker runs (e.g. ``["run", "config.toml", "-q"]``).
        workers: how many (>= 1).
        timeout: ``ANIMEREC_COLLECTIVE_TIMEOUT`` for the workers (default: the environment's, else none).
        grace: seconds between SIGTERM and SIGKILL when stopping them.
        poll: seconds between checks of the workers.
        env: the workers' environment (default: this process's).
        out: where the launcher's own lines go (default stderr).
        module: what the workers run (``research``: the ``animerec`` command).

    Returns:
        0 when every worker finished cleanly.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    out = out or sys.stderr
    base = dict(os.environ if env is None else env)
    base.pop("TF_CONFIG", None)
    if timeout is not None:
        base[TIMEOUT_ENV] = str(timeout)
    logs = Path(tempfile.mkdtemp(prefix="animerec-workers-"))
    configs = cluster_configs(workers)
    procs: list[subprocess.Popen] = []
    pgid = None
    print(f"animerec: {workers} worker(s) on {', '.join(configs[0]['cluster']['worker'])} "
          f"(worker 0 is the chief; the others' logs in {logs})", file=out, flush=True)

    def stop_all():
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                for p in alive:
                    if p.poll() is None:
                        try:
                            p.send_signal(sig)
                        except ProcessLookupError:
                            pass
            end = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < end and any(p.poll() is None for p in alive):
                time.sleep(0.05)
            if all(p.poll() is not None for p in alive):
                return

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    files = []
    try:
        for i, cfg in enumerate(configs):
            wenv = dict(base, TF_CONFIG=json.dumps(cfg))
            if i > 0:
                wenv["ANIMEREC_PROGRESS"] = "0"
            target = pgid or 0

            def pre(target=target):
                os.setpgid(0, target)
                _die_with_parent()

            if i == 0:
                stdout, stderr = None, None
            else:
                fh = open(logs / f"worker-{i}.log", "wb")
                files.append(fh)
                stdout, stderr = fh, subprocess.STDOUT
            p = subprocess.Popen([sys.executable, "-m", module, *argv], env=wenv, stdin=subprocess.DEVNULL,
                                 stdout=stdout, stderr=stderr, preexec_fn=pre)
            if pgid is None:
                pgid = p.pid
            procs.append(p)
            print(f"animerec: worker {i}: pid {p.pid}, {cfg['cluster']['worker'][i]}", file=out, flush=True)
        failed = None
        while True:
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(poll)
        if failed is None:
            for fh in files:
                fh.close()
            _rmtree(logs)
            return 0
        i, code = failed
        end = time.monotonic() + linger
        while time.monotonic() < end and any(p.poll() is None for p in procs):
            time.sleep(poll)
        stopped = [j for j, p in enumerate(procs) if p.poll() is None]
        stop_all()
        where = "its output is above" if i == 0 else f"its log: {logs / f'worker-{i}.log'}"
        tail = "" if i == 0 else _tail(logs / f"worker-{i}.log")
        others = ", ".join(f"worker {j} " + ("stopped" if j in stopped else _describe(p.returncode))
                           for j, p in enumerate(procs) if j != i)
        raise WorkerError(f"worker {i} (pid {procs[i].pid}) {_describe(code)}; the others: "
                          f"{others or 'none'}; {where}" + (f"\n{tail}" if tail else ""))
    except KeyboardInterrupt:
        stop_all()
        raise
    finally:
        if any(p.poll() is None for p in procs):
            stop_all()
        for fh in files:
            if not fh.closed:
                fh.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
