"""TensorBoard's HParams view of a search (TensorFlow imported inside each function).

**TensorBoard**: each trial writes an HParams session (its hyperparameters, and its validation
metrics as scalars) under ``logs/trial_<id>/``, which is also the model's ``log_dir``; the
domains are declared once in ``logs/``. ``animerec tensorboard <tuning folder>`` shows them in
the HParams tab.
"""
from __future__ import annotations

from pathlib import Path


def declare_hparams(logdir: Path, space: dict, objective: str, max_epochs: int | None, metric_names) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    hparams = []
    for name, e in space.items():
        if e["type"] == "int":
            dom = hp_api.IntInterval(int(e["min"]), int(e["max"]))
        elif e["type"] == "float":
            dom = hp_api.RealInterval(float(e["min"]), float(e["max"]))
        elif e["type"] == "choice":
            dom = hp_api.Discrete(list(e["values"]))
        else:
            dom = hp_api.Discrete([False, True])
        hparams.append(hp_api.HParam(name, dom))
    if max_epochs:  # Hyperband's resource
        hparams.append(hp_api.HParam("epochs", hp_api.IntInterval(1, int(max_epochs))))
    metrics = [hp_api.Metric(objective, display_name=f"val {objective} (objective)")]
    metrics += [hp_api.Metric(m, display_name=f"val {m}") for m in metric_names if m != objective]
    with tf.summary.create_file_writer(str(logdir)).as_default():
        hp_api.hparams_config(hparams=hparams, metrics=metrics)


def log_trial(logdir: Path, trial_id: str, values: dict, metrics: dict) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp_api.hparams({k: v for k, v in values.items()}, trial_id=trial_id)
        for k, v in metrics.items():
            tf.summary.scalar(k, v, step=0)
    writer.flush()
    writer.close()
