"""One process at a time per run folder: an exclusive, non-blocking ``fcntl.flock`` on a lock file
beside the folder (``<parent>/.<name>.lock``, outside it, so resetting the folder keeps the lock).

``acquire(folder)`` takes the lock or raises ``Locked`` (a ``ConfigError``: the CLI prints one
line and exits 2) naming the pid that holds it. The lock is the kernel's: it goes with the process
(exit, crash, SIGKILL), so a lock file left by a dead process never blocks (the pid in it is only
for the message). It is released by ``release(folder)``, or at exit. Taking it again in the same
process returns the lock already held (a run that resumes, or tests that run twice in one process).

The lock file is removed when released; an acquirer checks, once it holds the lock, that the path
still names the file it locked (else another process removed it in between and it tries again),
so two processes can never both hold a lock on one folder.

Not covered: network file systems without ``flock`` (it then raises ``OSError``), and children
forked while the lock is held share it (the open file is inherited).
"""
from __future__ import annotations

import atexit
import fcntl
import os
import threading
from pathlib import Path

from research.errors import ConfigError


class Locked(ConfigError):
    """The folder is in use by another process (``pid``, or None when it wrote no pid yet)."""

    def __init__(self, folder: Path, pid: int | None):
        self.folder, self.pid = Path(folder), pid
        who = f"pid {pid}" if pid else "a process that has not written its pid yet"
        super().__init__(f"{folder}: in use by another animerec process ({who}); wait for it to finish or "
                         f"stop it, then run again (lock file {lock_path(folder)})")


_held: dict[Path, tuple[int, int]] = {}  # resolved folder -> (owner pid, fd of its locked lock file)
_guard = threading.Lock()


def lock_path(folder) -> Path:
    """The lock file of ``folder``: ``<parent>/.<name>.lock``."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire(folder) -> Path:
    """Lock ``folder`` for this process (non-blocking). Returns the lock file.

    Raises:
        Locked: another live process holds the lock.
    """
    key = Path(folder).resolve()
    with _guard:
        if key in _held and _held[key][0] == os.getpid():
            return lock_path(key)
        _held.pop(key, None)  # inherited through fork: the parent's, not ours
        path = lock_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Locked(key, _pid_in(path)) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = (os.getpid(), fd)
        return path


def release(folder) -> None:
    """Release the lock on ``folder`` if this process holds it (removing the lock file)."""
    key = Path(folder).resolve()
    with _guard:
        owner, fd = _held.pop(key, (None, None))
        if fd is None:
            return
        if owner != os.getpid():  # a forked child: the lock and its file are the parent's
            os.close(fd)
            return
        try:
            lock_path(key).unlink(missing_ok=True)  # while still holding it: see the docstring
        finally:
            os.close(fd)


def held() -> list[Path]:
    """The folders this process holds locks on."""
    return [k for k, (owner, _) in _held.items() if owner == os.getpid()]


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        try:
            release(key)
        except OSError:
            pass
