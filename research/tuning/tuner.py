"""The ``keras_tuner.Tuner`` subclass whose ``run_trial`` is one trial: build the registered
model, fit it, score it with the harness on validation.

This module imports keras-tuner (and with it Keras 3 and TensorFlow) at import time: only
``research.tuning.command.tune`` imports it, inside the function, so importing ``research.tuning``
loads no TensorFlow (``animerec tune --help``, ``experiments/tuned_config.py``;
tests/test_tuning.py checks it).

keras-tuner 1.4 builds on Keras 3 and refuses the tf-keras / TFRS models this project uses as a
``build(hp)`` result, so there is no hypermodel: ``run_trial`` is overridden instead.

**Failures**: a failed trial (exception, or a non-finite objective) stops the search: tuning.json
is written with the trial's status ``FAILED`` and its error, then the trial's own exception is
raised (with a note naming the trial).

**Memory**: after each trial the model is dropped, ``tf.keras.backend.clear_session()`` runs
(TensorFlow is loaded by keras-tuner anyway) and ``gc.collect()``; the process RSS after that is
recorded per trial (``rss_mb``) so growth across trials is visible in tuning.json (both in
``research.tuning.memory``, which the refit uses too).
"""
from __future__ import annotations

import math
import time

import keras_tuner as kt
import numpy as np

from research.eval import metrics as M
from research.models import registry
from research.tuning import archive
from research.tuning.context import Context
from research.tuning.hparams import log_trial
from research.tuning.memory import release_memory, rss_mb
from research.tuning.space import TUNER_KEYS
from research.tuning.summary import write_summary


def _finite_metrics(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


class HarnessTuner(kt.Tuner):
    """Each trial: build the registered model with the trial's values over the config's
    arguments, fit on train (validation for early stopping), score on validation with the
    harness. Returns every finite harness metric; the oracle reads the objective from it."""

    def __init__(self, oracle, *, ctx: "Context", **kwargs):
        super().__init__(oracle=oracle, hypermodel=None, **kwargs)
        self.ctx = ctx
        self.failure: BaseException | None = None

    def run_trial(self, trial, split, **_search_kwargs):  # search()'s verbose= lands here
        ctx = self.ctx
        tid = trial.trial_id
        values = dict(trial.hyperparameters.values)
        searched = {k: v for k, v in values.items() if k not in TUNER_KEYS}
        params = {**ctx.spec.params, **searched}
        logged = dict(searched)
        if "tuner/epochs" in values:  # Hyperband's resource
            params["epochs"] = int(values["tuner/epochs"])
            logged["epochs"] = params["epochs"]
        trial_logs = ctx.out / "logs" / f"trial_{tid}"
        record = {"trial_id": tid, "hyperparameters": logged, "params": params, "status": "RUNNING",
                  "started": time.time()}
        t_start = time.perf_counter()
        model = None
        try:
            # A re-run of a killed trial keeps its folder: Keras models resume their fit from the
            # checkpoint there (same configuration, same end point); the HParams session is only
            # written once a trial completes, so a trial never has two.
            if ctx.trial_hook is not None:
                ctx.trial_hook(tid, dict(params))
            model = registry.build(ctx.spec.type, params, ctx.model_seed,
                                   where=f" (trial {tid} of models.{ctx.spec.name})")
            model.log_dir = str(trial_logs)
            t0 = time.perf_counter()
            model.fit_split(split)  # held-out users: validated on their folded-in histories
            fit_seconds = time.perf_counter() - t0
            # rating objectives skip the ranking pass (scoring every user x every anime),
            # which dominated rmse-tuned dnn trials
            res = ctx.evaluate(model, split, part="val",
                               ranking=M.metric(ctx.objective).unit != "rating")
            metrics = {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}
            value = metrics.get(ctx.objective)
            if value is None or not math.isfinite(float(value)):
                raise FloatingPointError(f"objective {ctx.objective} is {value!r} on validation "
                                         f"(absent or not finite: did the model diverge?)")
        except Exception as exc:
            record.update(status="FAILED", error=f"{type(exc).__name__}: {exc}",
                          seconds=time.perf_counter() - t_start)
            self.failure = exc
            del model
            release_memory()
            record["rss_mb"] = rss_mb()
            ctx.write_record(tid, record)
            raise
        del model
        release_memory()
        record.update(status="COMPLETED", objective=float(value), metrics=metrics,
                      seconds=time.perf_counter() - t_start, rss_mb=rss_mb())
        log_trial(trial_logs, tid, logged, _finite_metrics({k: metrics[k] for k in ctx.metric_names
                                                                if k in metrics}))
        ctx.write_record(tid, record)
        ctx.progress(record)
        return _finite_metrics(metrics)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)  # the oracle records the status and saves its state
        # tuning.json after every trial (a kill leaves the trials so far recorded), then the archive
        write_summary(self.ctx, self.oracle, status="failed" if trial.status != "COMPLETED" else "running")
        archive.save_quietly(self.ctx.out, self.ctx.archive)  # what a fresh machine resumes from
        if trial.status != "COMPLETED":
            exc = self.failure or RuntimeError(f"trial {trial.trial_id} ended {trial.status}: "
                                               f"{trial.message or ''}")
            self.failure = None
            if hasattr(exc, "add_note"):
                exc.add_note(f"(tuning trial {trial.trial_id} of models.{self.ctx.spec.name}, "
                             f"hyperparameters {trial.hyperparameters.values}; see "
                             f"{self.ctx.out / 'tuning.json'})")
            raise exc

    # keras-tuner's Keras-model plumbing does not apply: the models save themselves.
    def save_model(self, trial_id, model, step=0):
        pass

    def load_model(self, trial):
        raise NotImplementedError("refit the best hyperparameters instead (tuning.json)")
