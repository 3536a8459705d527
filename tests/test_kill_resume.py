"""A run killed (SIGKILL) in the middle of a Keras fit resumes from its last checkpoint when run
again, and ends with the same metrics as an uninterrupted run with the same seed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CONFIG = """experiment = "kill"
results_dir = "{results}"
[data]
source = "synth"
[synth]
users = 300
items = 200
ratings_per_user = 40
[models.bias]
[models.embedding_dot]
dim = 8
epochs = 12
early_stopping = false
batch_size = 256
"""


def _run(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "research", "run", "-q", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metrics(results: Path) -> dict:
    (run,) = list((results / "runs" / "kill").iterdir())
    m = json.loads((run / "metrics.json").read_text())
    return {n: {k: v for k, v in d.items() if not k.endswith("seconds")} for n, d in m["models"].items()}


@pytest.mark.keras
@pytest.mark.slow
def test_sigkill_mid_fit_then_resume_gives_identical_metrics(tmp_path):
    ref_cfg = tmp_path / "ref.toml"
    ref_cfg.write_text(CONFIG.format(results=tmp_path / "ref"))
    p = _run(ref_cfg)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    reference = _metrics(tmp_path / "ref")

    cfg = tmp_path / "kill.toml"
    cfg.write_text(CONFIG.format(results=tmp_path / "killed"))
    p = _run(cfg)
    deadline = time.time() + 600
    ckpt = None
    while time.time() < deadline and p.poll() is None:  # wait for a checkpoint of epoch >= 2
        hits = list((tmp_path / "killed").glob("runs/kill/*/logs/ckpt/embedding_dot/history.json"))
        if hits:
            try:
                done = len(json.loads(hits[0].read_text()).get("epoch", []))
            except (ValueError, OSError):  # caught mid-write
                done = 0
            if done >= 2:
                ckpt = hits[0]
                break
        time.sleep(0.2)
    assert p.poll() is None, "the run finished before it could be killed: make it longer"
    assert ckpt is not None, "no checkpoint appeared"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # the run folder (beside it, the lock file the killed process left: flock died with it)
    (run,) = [d for d in (tmp_path / "killed" / "runs" / "kill").iterdir() if d.is_dir()]
    assert json.loads((run / "status.json").read_text())["status"] == "running"

    p = _run(cfg)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert "resuming" in err
    assert _metrics(tmp_path / "killed") == reference
    # ... and it resumed rather than refitting from scratch (which would also give the same numbers):
    # the second process's TensorBoard log starts after the epochs the first one finished. history.json
    # is written before BackupAndRestore saves the same epoch, so when it lists 2 epochs the backup
    # holds at least the first: the resumed log starts at epoch 1 or later, never at 0.
    import tensorflow as tf

    files = sorted((run / "logs" / "embedding_dot" / "train").glob("events.out.tfevents.*"),
                   key=lambda f: f.stat().st_mtime)
    assert len(files) == 2, files
    first_steps = []
    for f in files:
        ep = [e.step for e in tf.compat.v1.train.summary_iterator(str(f))
              for v in e.summary.value if v.tag == "epoch_loss"]
        first_steps.append(min(ep))
    assert first_steps[0] == 0 and first_steps[1] >= 1, first_steps
