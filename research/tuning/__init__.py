"""``animerec tune``: keras-tuner searches over any registered model, scored by the one harness.

keras-tuner 1.4 builds on Keras 3 and refuses the tf-keras / TFRS models this project uses as a
``build(hp)`` result, so the search does not use a hypermodel at all: a ``keras_tuner.Tuner``
subclass overrides ``run_trial`` to build the model from the registry, fit it on the split's
train part (with the validation part for the model's own early stopping, if it has any), and score
it with :func:`research.eval.harness.evaluate` on the **validation** part (train items excluded).
The test part is never looked at during the search. Because the trial is just "build, fit,
evaluate", the same tuner searches the classical models too (damping of ``bias``, neighbours and
shrinkage of ``item_knn``, clusters of ``kmeans``).

The modules, in the order the data flow through them (each imports only the ones above it; each
module's docstring holds its decisions and why):

- ``space``: the tuned table, ``[models.NAME.space]``, the objective, the untuned default (config
  checks, before any data are read).
- ``folder``: the tuning folder's name and the resume check on the data.
- ``oracles``: random / bayesian / hyperband, the default as the first trial, failed trials retried.
- ``context``: what the trials and the refit share; per-trial records; the progress line.
- ``summary``: ``tuning.json``.
- ``hparams``: TensorBoard HParams sessions.
- ``memory``: the RSS and the memory release after a trial or refit.
- ``tuner``: the ``keras_tuner.Tuner`` whose ``run_trial`` is one trial (imports keras-tuner).
- ``refit``: the final refit on train + validation, scored on test, written as a run folder.
- ``command``: :func:`tune`, which runs them in that order (its seeds).

keras-tuner (and with it Keras 3 and TensorFlow) is imported only by ``tuner`` and inside functions
of the others, and ``command`` imports ``tuner`` inside :func:`tune`, so importing this package
(``animerec tune --help``, ``experiments/tuned_config.py``) does not load TensorFlow.
"""
from research.tuning.command import tune
from research.tuning.folder import data_fingerprint, tuning_dir
from research.tuning.memory import rss_mb
from research.tuning.space import (
    BASELINES,
    ORACLES,
    SPACE_TYPES,
    check_objective,
    check_space,
    default_values,
    tuned_spec,
)

__all__ = ["tune", "check_space", "check_objective", "tuned_spec", "tuning_dir", "rss_mb", "default_values",
           "data_fingerprint", "ORACLES", "BASELINES", "SPACE_TYPES"]
