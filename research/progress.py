"""Progress on the terminal for long steps (issue 14.8): one status line on stderr, redrawn in place.

    with progress.Status("seed 0 · item_knn (3/7)", enabled=progress.enabled(quiet)) as st:
        st.update(note="fitting")
        ...

The line shows the label, a bar when the amount of work is known (``done``/``total``), a note and
the time since the step began, redrawn ``interval`` seconds apart by a background thread (so a
long fit with no hook of its own still shows that it is alive). While a status is shown,
``sys.stdout`` / ``sys.stderr`` go through a guard that clears the line before anything else is
printed, so log lines and tables are never cut by it; the line is drawn again only after a
finished line (a program drawing its own ``\\r`` progress, e.g. Keras with ``verbose = 1``, is left
alone). When the step ends the line is cleared: nothing of it is left in the scrollback.

Off unless stderr is a terminal (a pipe, a file, CI logs: never), off with ``-q`` / ``--quiet``,
with ``ANIMEREC_PROGRESS=0`` and under pytest (``PYTEST_CURRENT_TEST``), so it never reaches test
output. No dependency: a few lines here instead of tqdm.

Sources of progress: ``keras_callback`` (epochs and batches of a Keras fit), ``file_reader`` (how
far the process has read the data files: the read offset of its open files, from
``/proc/self/fdinfo``, so the readers themselves need no hook; elsewhere it reports nothing).
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

ENV = "ANIMEREC_PROGRESS"
_ACTIVE: list = []  # the statuses being shown, innermost last (``current``)


def current() -> "Status | None":
    """The innermost status being shown, or None: lets deep code (a model's block loop) report
    how far it is without being handed the status."""
    return _ACTIVE[-1] if _ACTIVE else None


def report(done: float, total: float, note: str) -> None:
    """``update`` the current status, if one is shown (nothing otherwise: free to call)."""
    st = current()
    if st is not None:
        st.update(done=done, total=total, note=note)


def enabled(quiet: bool = False, stream=None) -> bool:
    """Whether to show progress: not ``quiet``, ``ANIMEREC_PROGRESS`` not 0/off, not under pytest,
    and ``stream`` (default stderr) a terminal."""
    if quiet:
        return False
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return False
    if "PYTEST_CURRENT_TEST" in os.environ:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour)."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def human_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class _Guard:
    """A stream that clears the status line before anything is written to it."""

    def __init__(self, status: "Status", stream):
        self._status, self._stream = status, stream

    def write(self, text):
        with self._status._lock:
            self._status._clear()
            n = self._stream.write(text)
            if text:
                self._status._line_start = str(text).endswith("\n")
        return n

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


class Status:
    """One status line (see the module docstring). Use as a context manager; ``update`` from any
    thread.

    Args:
        label: what the step is.
        enabled: draw it (default ``enabled()``); disabled, every call does nothing.
        stream: where it is drawn (default ``sys.stderr`` when entered).
        total / unit: the amount of work, if known (``unit = "B"`` shows bytes).
        poll: called at every redraw, returns ``update`` keywords (or None): for progress that is
            read rather than reported (``file_reader``).
        interval: seconds between redraws.
    """

    def __init__(self, label: str, *, enabled: bool | None = None, stream=None, total: float | None = None,
                 unit: str = "", poll=None, interval: float = 0.25):
        self.label, self.total, self.unit, self.poll = label, total, unit, poll
        self.done: float = 0
        self.note = ""
        self.interval = interval
        self._enabled = globals()["enabled"](stream=stream) if enabled is None else bool(enabled)
        self._stream = stream
        self._lock = threading.RLock()
        self._drawn = False
        self._line_start = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: tuple | None = None
        self.t0 = time.monotonic()

    @property
    def active(self) -> bool:
        return self._enabled

    def update(self, done: float | None = None, total: float | None = None, note: str | None = None,
               label: str | None = None) -> None:
        """Set how far the step is (drawn at the next redraw)."""
        if not self._enabled:
            return
        with self._lock:
            if done is not None:
                self.done = done
            if total is not None:
                self.total = total or None
            if note is not None:
                self.note = note
            if label is not None:
                self.label = label

    def text(self, width: int | None = None) -> str:
        """The line as drawn now: label, note, bar, amount, elapsed time; within ``width``
        characters the amount goes first, then the label and note are shortened (the bar and the
        time stay)."""
        head = "  ".join(p for p in (self.label, self.note) if p)
        bar = amount = ""
        if self.total:
            frac = max(0.0, min(1.0, self.done / self.total))
            filled = int(frac * 12)
            bar = f"[{'#' * filled}{'.' * (12 - filled)}] {frac * 100:3.0f}%"
            amount = (f"{human_bytes(self.done)} of {human_bytes(self.total)}" if self.unit == "B"
                      else f"{int(self.done)}/{int(self.total)}{(' ' + self.unit) if self.unit else ''}")
        when = clock(time.monotonic() - self.t0)
        line = "  ".join(p for p in (head, bar, amount, when) if p)
        if width is None or len(line) <= width:
            return line
        tail = "  ".join(p for p in (bar, when) if p)
        room = max(width - len(tail) - 2, 4)
        return (head if len(head) <= room else head[:room - 1] + "…") + "  " + tail


    # ---- drawing ---------------------------------------------------------------------------
    def _raw(self):
        return self._saved[1] if self._saved else (self._stream or sys.stderr)

    def _clear(self) -> None:
        if self._drawn:
            self._raw().write("\r\x1b[K")
            self._drawn = False

    def _draw(self) -> None:
        with self._lock:
            if not self._line_start:
                return  # someone else's line is unfinished (their own \r progress): leave it be
            if self.poll is not None:
                try:
                    found = self.poll()
                except Exception:  # progress must never break the work it reports on
                    found = None
                if found:
                    self.update(**found)
            width = shutil.get_terminal_size((80, 24)).columns - 1
            raw = self._raw()
            raw.write("\r" + self.text(width) + "\x1b[K")
            raw.flush()
            self._drawn = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._draw()
            except (OSError, ValueError):  # the terminal went away
                return

    def __enter__(self) -> "Status":
        if not self._enabled:
            return self
        self.t0 = time.monotonic()
        out, err = sys.stdout, sys.stderr
        raw_err = self._stream or err
        self._saved = (out, raw_err, err)
        sys.stderr = _Guard(self, err)
        if enabled(stream=out):  # stdout on the same terminal: guard it too
            sys.stdout = _Guard(self, out)
        self._draw()
        self._thread = threading.Thread(target=self._run, name="animerec-progress", daemon=True)
        self._thread.start()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if not self._enabled or self._saved is None:
            return
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            try:
                self._clear()
                self._raw().flush()
            except (OSError, ValueError):
                pass
            out, _, err = self._saved
            sys.stdout, sys.stderr = out, err
            self._saved = None


def keras_callback(status: Status):
    """A Keras callback showing ``epoch e/E · batch b/B · loss …`` of a fit on ``status`` (its
    batch hook reads no logs, so it adds no per-batch synchronisation)."""
    import tensorflow as tf  # only called for Keras models: TensorFlow is loaded already

    class _Epochs(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._supports_tf_logs = True
            self.epoch, self.last = 0, ""

        def _note(self, batch=None):
            p = self.params or {}
            epochs, steps = p.get("epochs"), p.get("steps")
            text = f"epoch {self.epoch}/{epochs}" if epochs else f"epoch {self.epoch}"
            if batch is not None:
                text += f" · batch {batch}/{steps}" if steps else f" · batch {batch}"
            status.update(note=text + self.last)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1
            self._note(0)

        def on_train_batch_end(self, batch, logs=None):
            self._note(batch + 1)

        def on_epoch_end(self, epoch, logs=None):
            shown = []
            for key in ("loss", "val_loss"):
                value = (logs or {}).get(key)
                try:
                    shown.append(f"{key} {float(value):.4g}")
                except (TypeError, ValueError):
                    pass
            self.last = (" · last " + ", ".join(shown)) if shown else ""
            self._note()

    return _Epochs()


def is_keras(model) -> bool:
    """Whether ``model`` is a ``KerasRecommender`` (its ``fit`` takes ``callbacks``), told without
    importing TensorFlow."""
    return any(c.__name__ == "KerasRecommender" for c in type(model).__mro__)


def file_reader(*roots):
    """A ``Status.poll`` reporting the largest regular file under ``roots`` (folders or files) that
    this process has open for reading: its name, read offset and size (no bar while none is
    open). Linux (``/proc/self``); elsewhere it reports nothing."""
    bases = [Path(r).resolve() for r in roots if r]

    def poll():
        best = None
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return None
        for fd in fds:
            try:
                target = Path(os.readlink(f"/proc/self/fd/{fd}"))
                if not any(target == b or b in target.parents for b in bases):
                    continue
                info = dict(line.split(":", 1) for line in open(f"/proc/self/fdinfo/{fd}").read().splitlines()
                            if ":" in line)
                if int(info.get("flags", "0").strip(), 8) & os.O_ACCMODE != os.O_RDONLY:
                    continue
                size = os.stat(target).st_size
                if size and (best is None or size > best[2]):
                    best = (target.name, int(info.get("pos", "0").strip()), size)
            except (OSError, ValueError):
                continue  # closed meanwhile, not a path, or not ours to read
        if best is None:
            return {"total": 0, "note": ""}  # between files: no bar
        name, pos, size = best
        return {"done": min(pos, size), "total": size, "note": f"reading {name}"}

    return poll


__all__ = ["Status", "enabled", "keras_callback", "file_reader", "is_keras", "clock"]
