"""``animerec tensorboard``: serve a run's (or an experiment's) logs on 127.0.0.1."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from research.config import REPO_ROOT
from research.errors import ConfigError


def log_dir(target: str) -> Path:
    """The logs folder of a run folder, an experiment's runs folder, or a path holding logs."""
    p = Path(target)
    for cand in (p, REPO_ROOT / p, REPO_ROOT / "results" / "runs" / p):
        if cand.is_dir():
            return cand
    raise ConfigError(f"no run or experiment folder at {target!r}")


def serve(target: str, port: int = 6006, block: bool = True):
    """Start TensorBoard on the logs below ``target`` bound to 127.0.0.1 and print its URL."""
    logdir = log_dir(target)
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"TensorBoard on {logdir}: http://127.0.0.1:{port}/  (Ctrl-C to stop)", flush=True)
    if not block:
        return proc
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return 0
