"""``animerec tensorboard`` against the real server: a small run (embedding_dot, 2 epochs, and a
classical model, on synthetic data), served by the command in a subprocess on a free port; TensorBoard's
own HTTP data endpoints must show the epoch scalars, one HParams session per model with its test
metrics (model, seed, type and the test metrics as the first columns), and the projector's embedding
with anime names; SIGTERM to animerec must stop the child (and remove the served experiment config)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.keras]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port, path, data=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode("utf-8")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    st = Path(f"/proc/{pid}/stat")
    return not (st.exists() and st.read_text().split(") ")[-1].startswith("Z"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tbrun")
    cfg = tmp / "tiny.toml"
    cfg.write_text(f'experiment = "tbtiny"\nresults_dir = "{tmp / "results"}"\nseeds = [0]\n'
                   '[data]\nsource = "synth"\n[synth]\nusers = 120\nitems = 80\nratings_per_user = 20\n'
                   '[models.popularity]\n[models.embedding_dot]\nepochs = 2\ndim = 8\n')
    p = subprocess.run([sys.executable, "-m", "research", "run", str(cfg), "-q"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    runs = list((tmp / "results" / "runs" / "tbtiny").glob("*-seed0"))
    assert len(runs) == 1
    return runs[0]


def test_real_server_shows_scalars_hparams_projector_and_stops(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())["models"]
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "research", "tensorboard", str(tiny_run), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once TensorBoard serves
        assert f"http://127.0.0.1:{port}/" in line, (line, proc.poll())
        (child,) = _children(proc.pid)

        plugins = json.loads(_get(port, "/data/plugins_listing"))
        assert {"scalars", "hparams"} <= {k for k, v in plugins.items() if v.get("enabled")}
        assert "projector" in plugins  # its "enabled" is decided in a background thread

        tags = json.loads(_get(port, "/data/plugin/scalars/tags"))
        assert "epoch_loss" in tags["logs/embedding_dot/train"]
        assert "epoch_loss" in tags["logs/embedding_dot/validation"]
        assert "test/rmse" in tags["logs/embedding_dot"] and "test/ndcg@10" in tags["logs/popularity"]

        # HParams' columns: the served experiment config, model / seed / type and test metrics first
        # (the dashboard shows the first five of each), every session's parameters and metrics in it
        req = json.dumps({"experimentName": "", "hparamsLimit": 1000, "includeMetrics": True}).encode()
        exp = json.loads(_get(port, "/data/plugin/hparams/experiment", req))
        hnames = [h["name"] for h in exp["hparamInfos"]]
        assert hnames[:3] == ["model", "seed", "type"] and {"dim", "epochs", "experiment"} <= set(hnames)
        mnames = [(m["name"].get("group", ""), m["name"]["tag"]) for m in exp["metricInfos"]]
        assert all(g == "" and t.startswith("test/") for g, t in mnames[:5]), mnames
        assert ("", "test/ndcg@10") in mnames and ("train", "epoch_loss") in mnames
        assert (tiny_run / "hparams_columns").is_dir()

        # HParams: one session per model, with its parameters and its test metrics
        req = json.dumps({"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"], "colParams": [],
                          "startIndex": 0, "sliceSize": 100, "includeMetrics": True}).encode()
        groups = json.loads(_get(port, "/data/plugin/hparams/session_groups", req))["sessionGroups"]
        by_model = {g["hparams"]["model"]: g for g in groups}
        assert set(by_model) == {"popularity", "embedding_dot"}
        emb = by_model["embedding_dot"]
        assert emb["hparams"]["type"] == "embedding_dot" and emb["hparams"]["epochs"] == 2
        assert emb["hparams"]["dim"] == 8 and emb["hparams"]["seed"] == 0
        for name, g in by_model.items():
            (session,) = g["sessions"]
            got = {m["name"]["tag"]: m["value"] for m in session["metricValues"] if m["name"].get("group", "") == ""}
            assert "test/ndcg@10" in got and ("rmse" in metrics[name]) == ("test/rmse" in got)
            for k in ("rmse", "ndcg@10", "fit_seconds"):
                if k in metrics[name]:
                    assert got[f"test/{k}"] == pytest.approx(metrics[name][k], rel=1e-6), (name, k)

        # projector: the embedding of the run logs/embedding_dot, its points named
        assert json.loads(_get(port, "/data/plugin/projector/runs")) == ["logs/embedding_dot"]
        run = urllib.parse.quote("logs/embedding_dot")
        (info,) = json.loads(_get(port, f"/data/plugin/projector/info?run={run}"))["embeddings"]
        n = info["tensorShape"][0]
        meta = _get(port, f"/data/plugin/projector/metadata?run={run}&name={urllib.parse.quote(info['tensorName'])}")
        lines = meta.splitlines()
        assert lines[0] == "name\tanime_id" and len(lines) == 1 + n
        written = (tiny_run / "logs" / "embedding_dot" / "metadata.tsv").read_text(encoding="utf-8").splitlines()
        assert lines == written and all(ln.split("\t")[0] for ln in lines[1:])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/projector/tensor?run={run}"
                                    f"&name={urllib.parse.quote(info['tensorName'])}", timeout=30) as r:
            assert len(r.read()) == 4 * n * info["tensorShape"][1]  # float32 rows x dim

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.time() + 30
        while _alive(child) and time.time() < deadline:
            time.sleep(0.2)
        assert not _alive(child), "the tensorboard child outlived animerec"
        assert not (tiny_run / "hparams_columns").exists()  # the config is the server's, removed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_is_forwarded_and_exits_2(tiny_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "research", "tensorboard", str(tiny_run), "--port", str(port)],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("animerec: error: tensorboard exited with status") and "already in use" in last
    assert "InitializeLog" not in p.stderr and "oneDNN" not in p.stderr
