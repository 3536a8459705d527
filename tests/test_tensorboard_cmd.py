"""``animerec tensorboard`` serves a run's logs on 127.0.0.1 and prints the URL; a bad target is a
one-line error; an empty target is warned about; the HParams writer needs no TensorFlow.
(tests/test_tensorboard_server.py queries a real server on a real run.)"""
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from research import tb
from research.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serves_on_loopback(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    port = _free_port()
    server = tb.serve(str(tmp_path), port=port, block=False)
    proc = server.proc
    try:
        out, err = capsys.readouterr()
        assert f"http://127.0.0.1:{port}/" in out
        assert "nothing to show yet" in err  # no event files below it
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                assert proc.poll() is None, "tensorboard exited"
                time.sleep(0.5)
        assert status == 200
    finally:
        server.stop()
    assert proc.poll() is not None


def test_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="no run or experiment folder"):
        tb.log_dir("no/such/run")


def test_session_is_written_without_tensorflow(tmp_path):
    code = ("import sys; from research import tb; "
            f"tb.write_session({str(tmp_path)!r}, {{'k': 5, 'shrink': 1.5, 'x': None}}, "
            "{'rmse': 1.25, 'bad': float('nan'), 'name': 'x'}, session='s'); "
            "print('tensorflow' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["tensors"]) == {"_hparams_/session_start_info", "test/rmse"}  # nan and text left out
    assert float(tensor_util.make_ndarray(acc.Tensors("test/rmse")[0].tensor_proto)) == 1.25
    meta = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    info = plugin_data_pb2.HParamsPluginData.FromString(meta).session_start_info
    assert info.hparams["k"].number_value == 5 and info.hparams["x"].string_value == "None"
    # written again (a resumed run): still one session file
    tb.write_session(tmp_path, {"k": 6}, {"rmse": 1.0}, session="s")
    assert len(list(tmp_path.glob("events.out.tfevents.*.hparams"))) == 1


def test_model_session_name_starts_with_the_seed(tmp_path):
    """The HParams table cuts the Trial ID after a dozen characters and hides the ``seed`` column by
    default: the seed leads the session's name, so two seeds of a model are told apart."""
    from types import SimpleNamespace

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    spec = SimpleNamespace(name="bias", type="bias", params={"user_damping": 10})
    tb.log_model_session(tmp_path, spec, object(), {"seed": 1, "experiment": "e"}, {"rmse": 1.0},
                         session="abc123_def456-seed1/bias")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    meta = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    info = plugin_data_pb2.HParamsPluginData.FromString(meta).session_start_info
    assert info.group_name == "seed 1 · abc123_def456-seed1/bias"
    assert info.hparams["seed"].number_value == 1 and info.hparams["model"].string_value == "bias"

@pytest.mark.keras
def test_tensorflow_start_up_logs_are_silenced_unless_asked_for():
    code = "import research, tensorflow as tf; print(float(tf.constant(2.0) + 1))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "3.0"
    assert quiet.stderr == ""  # no oneDNN / CUDA / absl lines
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})  # the user's own value wins
    # which start-up lines TensorFlow prints depends on the CPU (oneDNN's on some, CUDA's / absl's
    # on every machine without a GPU): some appear when the user asks for them
    assert loud.returncode == 0 and any(w in loud.stderr for w in ("oneDNN", "cuda", "absl"))


def _fake_run(root):
    """Two sessions of a run as ``animerec run`` lays them out: a classical model, and a Keras one
    with ``train`` / ``validation`` sub-runs of epoch scalars (names sorting before ``test/``)."""
    from types import SimpleNamespace

    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar import summary_v2 as scalar

    logs = root / "run-seed3" / "logs"
    tb.log_model_session(logs / "bias", SimpleNamespace(name="bias", type="bias", params={"user_damping": 10}),
                         object(), {"seed": 3, "experiment": "e"},
                         {"rmse": 1.2, "mae": 0.9, "fit_seconds": 0.1, "n_clusters": 4}, session="r/bias")
    tb.log_model_session(logs / "mv", SimpleNamespace(name="mv", type="multvae", params={"beta_cap": 0.2, "dim": 8}),
                         object(), {"seed": 3, "experiment": "e"},
                         {"ndcg@10": 0.3, "ndcg@5": 0.2, "recall@10": 0.25, "precision@10": 0.1}, session="r/mv")
    for sub, tag in (("train", "epoch_loss"), ("validation", "epoch_ndcg_at_10")):
        w, _ = tb._event_file(logs / "mv" / sub, "")
        for step in range(2):
            w.write(event_pb2.Event(step=step, summary=scalar.scalar_pb(tag, 1.0 + step)).SerializeToString())
        w.close()
    return root


def test_served_experiment_leads_with_model_seed_type_and_test_metrics(tmp_path):
    """Without an experiment config TensorBoard's HParams table showed by default the first five
    parameters and metrics by name (``batch_size``, ... and the Keras ``train.*`` curves: no test
    metric, no seed). ``animerec tensorboard`` writes one config for the served folder: ``model``,
    ``seed``, ``type`` first (as TensorBoard orders them), the test metrics next in ``METRICS``'
    order, every session's parameters and metrics present; removed when the server stops."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import backend_context, metadata, plugin_data_pb2

    from research.eval.metrics import METRICS

    root = _fake_run(tmp_path)
    # a config left by a server killed earlier, served one level down: must not be a second config
    stale = tb.write_experiment(root / "run-seed3")
    path = tb.write_experiment(root)
    assert not stale.exists() and not (root / "run-seed3" / tb.EXPERIMENT_RUN).exists()
    assert list(root.rglob("*.experiment")) == [path] and path.parent == root / tb.EXPERIMENT_RUN
    assert tb.contents(root)["curves"] == 2  # the config is not counted as curves

    acc = EventAccumulator(str(path.parent))
    acc.Reload()
    content = acc.SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    exp = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    backend_context._sort_and_reduce_to_hparams_limit(exp, 1000)  # what the dashboard is sent
    names = [h.name for h in exp.hparam_infos]
    assert names[:3] == ["model", "seed", "type"]
    assert set(names) == {"model", "seed", "type", "experiment", "user_damping", "beta_cap", "dim"}
    model = next(h for h in exp.hparam_infos if h.name == "model")
    assert sorted(model.domain_discrete.values[i].string_value for i in range(2)) == ["bias", "mv"]

    metrics = [(m.name.group, m.name.tag) for m in exp.metric_infos]
    def rank(t):  # METRICS' order, then the cut-off
        base, _, k = t[len("test/"):].partition("@")
        return list(METRICS).index(base), int(k or 0)

    known = [t for g, t in metrics if g == "" and t[5:].partition("@")[0] in METRICS]
    assert known == sorted(known, key=rank) and len(known) == 7
    assert known[:6] == ["test/rmse", "test/mae", "test/precision@10", "test/recall@10", "test/ndcg@5",
                         "test/ndcg@10"]
    assert metrics[:len(known)] == [("", t) for t in known]  # the test metrics lead
    assert metrics[len(known):] == [("", "test/n_clusters"), ("train", "epoch_loss"),
                                    ("validation", "epoch_ndcg_at_10")]

    tb.remove_experiment(root)
    assert not list(root.rglob("*.experiment")) and not (root / tb.EXPERIMENT_RUN).exists()
    assert tb.write_experiment(tmp_path / "run-seed3" / "logs" / "mv" / "train") is None  # no session there
