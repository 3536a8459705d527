"""The same config and seed give identical metrics.json in two separate processes, for every
model (Keras ones included), on small synthetic data."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CONFIG = """experiment = "det"
results_dir = "{results}"
[data]
source = "synth"
[synth]
users = 200
items = 150
ratings_per_user = 30
[models.global_mean]
[models.bias]
[models.popularity]
[models.item_knn]
[models.user_knn]
[models.content]
[models.kmeans]
n_clusters = 4
[models.embedding_dot]
epochs = 4
[models.recommendernet]
min_user_rows = 1
epochs = 3
batch_size = 512
[models.dnn]
epochs = 3
[models.two_tower]
epochs = 2
dim = 16
[models.ease]
[models.multvae]
epochs = 3
hidden = [32]
latent = 8
"""


def _metrics(tmp_path: Path, name: str) -> dict:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(CONFIG.format(results=tmp_path / name))
    p = subprocess.run([sys.executable, "-m", "research", "run", "-q", str(cfg)], cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    (run,) = list((tmp_path / name / "runs" / "det").iterdir())
    m = json.loads((run / "metrics.json").read_text())
    return {n: {k: v for k, v in d.items() if not k.endswith("seconds")} for n, d in m["models"].items()}


@pytest.mark.keras
@pytest.mark.slow
def test_two_processes_identical_metrics(tmp_path):
    a = _metrics(tmp_path, "a")
    b = _metrics(tmp_path, "b")
    assert len(a) == 13
    for name in a:
        assert a[name] == b[name], name
