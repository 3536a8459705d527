"""``animerec tune``: keras-tuner searches over any registered model, scored by the one harness.

keras-tuner 1.4 builds on Keras 3 and refuses the tf-keras / TFRS models this project uses as a
``build(hp)`` result, so the search does not use a hypermodel at all: a ``keras_tuner.Tuner``
subclass overrides ``run_trial`` to build the model from the registry, fit it on the split's
train part (with the validation part for the model's own early stopping, if it has any), and score
it with :func:`research.eval.harness.evaluate` on the **validation** part (train items excluded).
The test part is never looked at during the search. Because the trial is just "build, fit,
evaluate", the same tuner searches the classical models too (damping of ``bias``, neighbours and
shrinkage of ``item_knn``, clusters of ``kmeans``).

Decisions (and why); those of the search space are in ``research.tuning.space``, those of the
folder and of resuming in ``research.tuning.folder``:

- **Oracles**: ``random``, ``bayesian`` (Gaussian process; its random start is
  ``max(3, min(3 x dims, max_trials // 2))`` points, so small budgets still reach the model-based
  part; a proposal equal to a configuration already tried is replaced by a random one, since
  trials are deterministic and keras-tuner's GP oracle otherwise keeps re-proposing the box's
  corners) and ``hyperband``. Hyperband's resource is the Keras models' ``epochs`` argument, taken
  from the trial's ``tuner/epochs`` value (``tune.max_epochs``, ``tune.hyperband_factor``).
  Models without epochs (the classical ones) have no resource to allocate, so ``hyperband`` is a
  ``ConfigError`` for them rather than a silent random search. Each Hyperband trial trains from
  scratch for ``tuner/epochs`` epochs (no warm start from the previous round's weights: the
  Recommender wrappers do not expose their weights to the tuner), which costs more epochs than
  ideal Hyperband but keeps trials independent. ``tune.max_trials`` caps Hyperband's trials too.
- **Default first**: when the untuned configuration (the table's values, else the constructor's
  defaults) lies inside the space, it is the first trial (``is_default`` in tuning.json), so the
  best trial is never worse on validation than the default (Hyperband still sets its epochs).
- **Seeds**: the search uses the config's first seed. The split is the runner's split for that
  seed (``make_split(..., seed)``), and every trial's model gets ``child_seed(seed, NAME)`` — the
  seed ``animerec run`` gives that model — so trials differ only in their hyperparameters (common
  random numbers) and the untuned default is exactly the runner's model. The oracle samples with
  its own child seed ``child_seed(seed, "tune-oracle/NAME")``.
- **Failures**: a failed trial (exception, or a non-finite objective) stops the search: tuning.json
  is written with the trial's status ``FAILED`` and its error, then the trial's own exception is
  raised (with a note naming the trial).
- **Memory**: after each trial the model is dropped, ``tf.keras.backend.clear_session()`` runs
  (TensorFlow is loaded by keras-tuner anyway) and ``gc.collect()``; the process RSS after that is
  recorded per trial (``rss_mb``) so growth across trials is visible in tuning.json.
- **TensorBoard**: each trial writes an HParams session (its hyperparameters, and its validation
  metrics as scalars) under ``logs/trial_<id>/``, which is also the model's ``log_dir``; the
  domains are declared once in ``logs/``. ``animerec tensorboard <tuning folder>`` shows them in
  the HParams tab.
- **Final refit** (``tune.retrain_on_full``): the untuned default (the table's own arguments) is
  first fitted on train and scored on validation like a trial (``default`` in tuning.json: the
  number the search had to beat). Then the best configuration and the default are both refitted
  on train + validation with ``val=None`` — no internal holdout, so neither loses data and they
  stay comparable. Without validation a Keras model cannot stop early, so it trains for the
  epoch that early stopping kept in its validation fit (``best_epoch``; its ``epochs`` otherwise).
  They are scored on test by the harness, next to the trivial baselines (global mean, bias,
  popularity) refitted the same way. When the tuned model is itself a baseline (``bias``), its
  baseline row is the default. This writes
  ``metrics.json`` (models ``NAME`` and ``NAME_tuned``), ``table.md``, and the refitted models with
  ``meta/``/``seen.npz`` (``research.results.RunFolder``, as the runner writes them) so the folder
  works with ``animerec recommend --run``.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from research import results as R
from research.config import Config, ModelSpec
from research.errors import ConfigError
from research.eval import metrics as M
from research.models import registry
from research.seeding import child_seed, seed_everything
from research.tuning.folder import check_data, data_fingerprint, tuning_dir
from research.tuning.space import (
    BASELINES,
    ORACLES,
    SPACE_TYPES,
    TUNER_KEYS,
    check_objective,
    check_space,
    default_values,
    hyperparameters,
    tuned_spec,
)

# ---------------------------------------------------------------------------------------------
# keras-tuner pieces (imported lazily: keras-tuner imports Keras 3 and TensorFlow)
# ---------------------------------------------------------------------------------------------


def _oracle(cfg: Config, spec: ModelSpec, objective: str, direction: str, seed: int):
    import keras_tuner as kt

    obj = kt.Objective(objective, direction)
    hps = hyperparameters(spec.space)
    oseed = child_seed(seed, f"tune-oracle/{spec.name}") or 1  # keras-tuner treats seed 0 as "random"
    max_trials = int(cfg.tune.max_trials)
    if max_trials < 1:
        raise ConfigError(f"tune.max_trials: expected >= 1, got {max_trials}")
    common = dict(objective=obj, hyperparameters=hps, seed=oseed, max_retries_per_trial=0)
    if cfg.tune.oracle == "random":
        o = _default_first(kt.oracles.RandomSearchOracle)(max_trials=max_trials, **common)
    elif cfg.tune.oracle == "bayesian":
        initial = max(3, min(3 * len(spec.space), max_trials // 2))
        o = _default_first(_bayesian_class())(max_trials=max_trials, num_initial_points=initial, **common)
    elif cfg.tune.oracle == "hyperband":
        if cfg.tune.max_epochs < 1 or cfg.tune.hyperband_factor < 2:
            raise ConfigError("tune.max_epochs must be >= 1 and tune.hyperband_factor >= 2 for hyperband")
        o = _default_first(kt.oracles.HyperbandOracle)(
            max_epochs=int(cfg.tune.max_epochs), factor=int(cfg.tune.hyperband_factor), hyperband_iterations=1,
            **common)
        o.max_trials = max_trials  # a cap: Hyperband itself has no max_trials
    else:
        raise ConfigError(f"tune.oracle: expected one of {', '.join(ORACLES)}, got {cfg.tune.oracle!r}")
    o.default_values = default_values(spec)
    return o


def _default_first(base):
    """``base`` oracle whose first configuration is the untuned default (``default_values``), so
    that the search's best is never worse on validation than the configuration it started from
    (trials are deterministic, and all three oracles draw their first values from
    ``_random_values``). Hyperband still decides the default's epochs."""

    class DefaultFirst(base):
        default_values: dict | None = None

        def _random_values(self):
            if self.default_values and not self._tried_so_far and not self._duplicate(self.default_values):
                return dict(self.default_values)
            return super()._random_values()

    DefaultFirst.__name__ = f"DefaultFirst{base.__name__}"
    return DefaultFirst


_BAYESIAN_CLASS = None


def _bayesian_class():
    """keras-tuner's Gaussian-process oracle, minus repeats: its acquisition optimum often lands on
    a configuration already tried (e.g. a corner of the box), and a trial is deterministic here
    (same seed), so a repeat would only spend time. A repeated proposal is replaced by a random one."""
    global _BAYESIAN_CLASS
    if _BAYESIAN_CLASS is None:
        import keras_tuner as kt

        class NoRepeatBayesianOracle(kt.oracles.BayesianOptimizationOracle):
            def populate_space(self, trial_id):
                response = super().populate_space(trial_id)
                values = response.get("values")
                if values is not None and self._duplicate(values):
                    return self._random_populate_space()
                return response

        _BAYESIAN_CLASS = NoRepeatBayesianOracle
    return _BAYESIAN_CLASS


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux /proc), or None where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _release_memory() -> None:
    """Drop what the finished trial left behind: Keras graph state, then Python garbage."""
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.keras.backend.clear_session()
    gc.collect()


def _finite_metrics(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def _hparams_config(logdir: Path, space: dict, objective: str, max_epochs: int | None, metric_names) -> None:
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


def _hparams_log(logdir: Path, trial_id: str, values: dict, metrics: dict) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp_api.hparams({k: v for k, v in values.items()}, trial_id=trial_id)
        for k, v in metrics.items():
            tf.summary.scalar(k, v, step=0)
    writer.flush()
    writer.close()


_TUNER_CLASS = None


def _tuner_class():
    """The ``keras_tuner.Tuner`` subclass (defined on first use, after keras-tuner is imported)."""
    global _TUNER_CLASS
    if _TUNER_CLASS is not None:
        return _TUNER_CLASS
    import keras_tuner as kt

    class HarnessTuner(kt.Tuner):
        """Each trial: build the registered model with the trial's values over the config's
        arguments, fit on train (validation for early stopping), score on validation with the
        harness. Returns every finite harness metric; the oracle reads the objective from it."""

        def __init__(self, oracle, *, ctx: "_Context", **kwargs):
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
                model.fit(split.train, split.fit_val())  # held-out users: their history rows too
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
                _release_memory()
                record["rss_mb"] = rss_mb()
                ctx.write_record(tid, record)
                raise
            del model
            _release_memory()
            record.update(status="COMPLETED", objective=float(value), metrics=metrics,
                          seconds=time.perf_counter() - t_start, rss_mb=rss_mb())
            _hparams_log(trial_logs, tid, logged, _finite_metrics({k: metrics[k] for k in ctx.metric_names
                                                                    if k in metrics}))
            ctx.write_record(tid, record)
            ctx.progress(record)
            return _finite_metrics(metrics)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)  # the oracle records the status and saves its state
            if trial.status != "COMPLETED":
                exc = self.failure or RuntimeError(f"trial {trial.trial_id} ended {trial.status}: "
                                                   f"{trial.message or ''}")
                self.failure = None
                self.ctx.write_summary(self.oracle, status="failed")
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

    _TUNER_CLASS = HarnessTuner
    return HarnessTuner


@dataclasses.dataclass
class _Context:
    cfg: Config
    spec: ModelSpec
    out: Path
    objective: str
    direction: str
    seed: int
    model_seed: int
    meta: dict
    trial_hook: Callable | None = None
    quiet: bool = False
    defaults: dict | None = None  # the untuned configuration as a point of the space, if it is one

    @property
    def project(self) -> Path:
        return self.out / "keras_tuner"

    @property
    def metric_names(self) -> list[str]:
        return M.harness_keys(self.cfg.eval.k)

    def evaluate(self, model, split, part: str, ranking: bool = True):
        from research.eval.harness import evaluate

        e = self.cfg.eval
        return evaluate(model, split, k=e.k, part=part, batch_users=e.batch_users,
                        relevance_threshold=e.relevance_threshold, ranking=ranking)

    def _record_path(self, tid: str) -> Path:
        return self.project / f"trial_{tid}" / "animerec.json"

    def write_record(self, tid: str, record: dict) -> None:
        R.write_json(self._record_path(tid), record)

    def read_record(self, tid: str) -> dict:
        p = self._record_path(tid)
        return R.read_json(p) if p.is_file() else {}

    def progress(self, rec: dict) -> None:
        if self.quiet:
            return
        hp = ", ".join(f"{k}={_short(v)}" for k, v in rec["hyperparameters"].items())
        rss = f", rss {rec['rss_mb']:.0f} MB" if rec.get("rss_mb") else ""
        print(f"[animerec] tune {self.spec.name} trial {rec['trial_id']}: {hp} -> val {self.objective} = "
              f"{rec['objective']:.4f} ({rec['seconds']:.1f} s{rss})", file=sys.stderr, flush=True)

    def trials(self, oracle) -> list[dict]:
        rows = []
        order = list(dict.fromkeys(list(oracle.start_order) + sorted(oracle.trials)))
        for tid in order:
            t = oracle.trials[tid]
            rec = self.read_record(tid)
            status = t.status if t.status != "INVALID" else "FAILED"
            if rec.get("status") == "FAILED" and status == "RUNNING":
                status = "FAILED"
            hp_now = {k: v for k, v in t.hyperparameters.values.items() if k not in TUNER_KEYS}
            row = {"trial_id": tid, "status": status,
                   "is_default": self.defaults is not None and hp_now == self.defaults,
                   "hyperparameters": rec.get("hyperparameters",
                                              {k: v for k, v in t.hyperparameters.values.items()
                                               if k not in TUNER_KEYS}),
                   "objective": t.score if status == "COMPLETED" else None}
            for key in ("metrics", "seconds", "rss_mb", "error"):
                if key in rec:
                    row[key] = rec[key]
            rows.append(row)
        return rows

    def best(self, oracle) -> dict | None:
        done = [t for t in oracle.trials.values() if t.status == "COMPLETED" and t.score is not None]
        if not done:
            return None
        # keras-tuner's own ranking, ties broken by the earlier trial
        sign = 1.0 if self.direction == "min" else -1.0
        order = {tid: i for i, tid in enumerate(oracle.start_order)}
        t = min(done, key=lambda t: (sign * t.score, order.get(t.trial_id, 0)))
        rec = self.read_record(t.trial_id)
        hp = rec.get("hyperparameters", {k: v for k, v in t.hyperparameters.values.items() if k not in TUNER_KEYS})
        return {"trial_id": t.trial_id, "hyperparameters": hp, "params": {**self.spec.params, **hp},
                "objective": self.objective, "value": t.score}

    def write_summary(self, oracle, status: str) -> dict:
        trials = self.trials(oracle)
        summary = {**self.meta, "status": status, "trials": trials, "best": self.best(oracle),
                   "n_completed": sum(r["status"] == "COMPLETED" for r in trials),
                   "search_seconds": sum(r.get("seconds", 0.0) for r in trials),
                   "max_rss_mb": max((r["rss_mb"] for r in trials if r.get("rss_mb")), default=None)}
        R.write_json(self.out / "tuning.json", summary)
        return summary


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _requeue_failed(oracle) -> int:
    """Send trials that failed in an earlier invocation back to the oracle's retry queue (keras-tuner
    itself only re-queues the ones that were running when the process died)."""
    n = 0
    for tid, t in oracle.trials.items():
        if t.status in ("FAILED", "INVALID") and tid not in oracle._retry_queue:
            if tid in oracle.end_order:
                oracle.end_order.remove(tid)
            oracle._run_times[tid] = 0
            t.score = None
            oracle._retry_queue.append(tid)
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------

def tune(cfg: Config, dataset=None, *, quiet: bool = False, trial_hook: Callable | None = None) -> Path:
    """Run (or resume) the search of ``cfg.tune`` and, if asked, the final refit on train+validation.

    Args:
        cfg: the experiment config; ``cfg.tune`` and ``[models.NAME.space]`` describe the search.
        dataset: an already loaded ``Dataset`` (default: ``load_dataset(cfg)``).
        quiet: no progress lines or table on the terminal.
        trial_hook: called as ``hook(trial_id, params)`` at the start of every trial, before the
            model is built (for tests: raise to make a trial fail or to simulate a kill).

    Returns:
        The tuning folder (``tuning.json``; with ``retrain_on_full`` also ``metrics.json`` and
        ``table.md``).

    Raises:
        ConfigError: a bad space, oracle, objective or model argument (before any data are read).
        Exception: the exception of a failed trial, after tuning.json records it as FAILED.
    """
    from research.data.splits import make_split

    spec = tuned_spec(cfg)
    oracle_name = cfg.tune.oracle
    if oracle_name not in ORACLES:
        raise ConfigError(f"tune.oracle: expected one of {', '.join(ORACLES)}, got {oracle_name!r}")
    check_space(spec, oracle_name)
    if spec.params.get("use_validation") or "use_validation" in spec.space:
        raise ConfigError(f"models.{spec.name}.use_validation: a trial would fit on the validation part it "
                          f"is scored on; leave it false (the final refit uses train + validation anyway)")
    objective, direction = check_objective(cfg, spec)
    seed = int(cfg.seeds[0]) if cfg.seeds else 0
    model_seed = child_seed(seed, spec.name)
    registry.build(spec.type, dict(spec.params), model_seed, where=f" (models.{spec.name})")  # arg errors now
    if len(cfg.seeds) > 1 and not quiet:
        print(f"[animerec] tune: searching on the first seed ({seed}) of {list(cfg.seeds)}", file=sys.stderr)

    if dataset is None:
        from research.data.load import load_dataset

        dataset = load_dataset(cfg, quiet=quiet)
    seed_everything(seed)
    split = make_split(dataset.interactions, cfg.split, seed)
    from research.experiment import dataset_id

    out = tuning_dir(cfg, seed, dataset_id(dataset))
    from research import locking

    locking.acquire(out)  # one search per tuning folder (a second one exits 2 naming this pid)
    check_data(out, split, quiet)
    out.mkdir(parents=True, exist_ok=True)
    R.RunFolder(out, cfg.results_path).start({**cfg.to_dict(), "seed": seed}, seed, dataset.manifest)

    meta = {"experiment": cfg.experiment, "dataset": dataset.name, "split": split.name, "seed": seed,
            "data_fingerprint": data_fingerprint(split),
            "model": spec.name, "type": spec.type, "model_seed": model_seed, "oracle": oracle_name,
            "objective": objective, "direction": direction, "scored_on": "validation",
            "max_trials": cfg.tune.max_trials, "space": spec.space, "fixed_params": spec.params,
            "rows": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}}
    if oracle_name == "hyperband":
        meta.update(max_epochs=cfg.tune.max_epochs, hyperband_factor=cfg.tune.hyperband_factor)
    defaults = default_values(spec)
    meta["default_values"] = defaults  # tried first (None: the default lies outside the space)
    ctx = _Context(cfg=cfg, spec=spec, out=out, objective=objective, direction=direction, seed=seed,
                   model_seed=model_seed, meta=meta, trial_hook=trial_hook, quiet=quiet, defaults=defaults)

    oracle = _oracle(cfg, spec, objective, direction, seed)
    Tuner = _tuner_class()
    tuner = Tuner(oracle, ctx=ctx, directory=str(out), project_name="keras_tuner", overwrite=False)
    oracle = tuner.oracle
    done_before = sum(t.status == "COMPLETED" for t in oracle.trials.values())
    _requeue_failed(oracle)
    pending = list(oracle._retry_queue)
    if (done_before or pending) and not quiet:
        print(f"[animerec] resuming {out}: {done_before} trial(s) done, re-running {len(pending)} "
              f"({', '.join(pending) or 'none'})", file=sys.stderr)
    _hparams_config(out / "logs", spec.space, objective,
                    cfg.tune.max_epochs if oracle_name == "hyperband" else None, ctx.metric_names)

    t0 = time.perf_counter()
    status = "interrupted"
    try:
        tuner.search(split, verbose=0)
        status = "searched"
    finally:
        if status != "searched":
            # a failed trial has already written tuning.json (status "failed"); an interrupt has not
            summary_path = out / "tuning.json"
            failed = summary_path.is_file() and R.read_json(summary_path).get("status") == "failed"
            if not failed:
                ctx.write_summary(oracle, status="interrupted")
    summary = ctx.write_summary(oracle, status="finished")
    bad = [r for r in summary["trials"] if r["status"] != "COMPLETED"]
    if bad:  # cannot happen through run_trial (it raises); guards oracle surprises
        raise RuntimeError(f"tuning trials not completed: {[(r['trial_id'], r['status']) for r in bad]}")
    best = summary["best"]
    if not quiet:
        print(f"[animerec] tune {spec.name}: {summary['n_completed']} trials in "
              f"{time.perf_counter() - t0:.1f} s this session; best trial {best['trial_id']}: "
              f"{best['hyperparameters']} -> val {objective} = {best['value']:.4f}", file=sys.stderr)

    if cfg.tune.retrain_on_full:
        _refit(ctx, dataset, split, summary, quiet=quiet)
    R.write_json(out / "status.json", {"status": "finished", "finished": time.time()})
    return out


def _fit_score(ctx: _Context, typ: str, params: dict, seed: int, train, val, split, part: str, log_name: str):
    """Build, fit and score one model; returns (model, EvalResult, metrics dict)."""
    model = registry.build(typ, params, seed, where=f" ({log_name})")
    model.log_dir = str(ctx.out / "logs" / log_name)
    t0 = time.perf_counter()
    model.fit(train, val)
    fit_seconds = time.perf_counter() - t0
    res = ctx.evaluate(model, split, part=part)
    return model, res, {**res.summary, **model.extra_metrics(), "fit_seconds": fit_seconds}


def _refit_params(typ: str, params: dict, val_metrics: dict) -> dict:
    """A Keras model refitted without validation cannot stop early: give it the epoch count that
    early stopping kept when it was fitted with validation (``best_epoch``), if any."""
    if typ in registry.KERAS_MODELS and val_metrics.get("best_epoch"):
        return {**params, "epochs": int(val_metrics["best_epoch"])}
    return dict(params)


def _refit(ctx: _Context, dataset, split, summary: dict, quiet: bool = False) -> None:
    """Score the untuned default on validation (for tuning.json), then refit default, tuned and
    baselines on train + validation, score them on test, and write metrics.json and the table."""
    from research.report import markdown_table

    cfg, spec, out = ctx.cfg, ctx.spec, ctx.out
    best = summary["best"]
    best_metrics = next(r for r in summary["trials"] if r["trial_id"] == best["trial_id"]).get("metrics", {})

    # the default on validation: the number the search had to beat
    if not quiet:
        print(f"[animerec] default {spec.name} on validation ...", file=sys.stderr, flush=True)
    model, _, default_val = _fit_score(ctx, spec.type, dict(spec.params), ctx.model_seed, split.train,
                                       split.fit_val(), split, "val", "default_val")
    del model
    _release_memory()
    summary["default"] = {"params": dict(spec.params), "objective": default_val.get(ctx.objective),
                          "metrics": default_val}
    R.write_json(out / "tuning.json", summary)

    train_val = split.train_val()
    rows = []  # (name, type, params, seed)
    for b in BASELINES:
        params = next((dict(m.params) for m in cfg.models if m.name == b and m.type == b), {})
        rows.append((b, b, params, child_seed(ctx.seed, b)))
    default_params = _refit_params(spec.type, spec.params, default_val)
    if spec.name not in BASELINES:
        rows.append((spec.name, spec.type, default_params, ctx.model_seed))
    else:  # the baseline row is the default itself
        rows = [(n, t, default_params if n == spec.name else p, sd) for n, t, p, sd in rows]
    tuned_params = _refit_params(spec.type, best["params"], best_metrics)
    rows.append((f"{spec.name}_tuned", spec.type, tuned_params, ctx.model_seed))

    folder = R.RunFolder(out, cfg.results_path)  # the runner's writer: the same files, per_rating too
    folder.write_meta(dataset.meta)
    folder.write_seen(train_val)
    folder.metrics = {"experiment": cfg.experiment, "dataset": dataset.name, "split": split.name, "seed": ctx.seed,
               "rows": {"train": len(train_val), "val": 0, "test": len(split.test)},
               "fitted_on": "train+validation", "scored_on": "test",
               "tuned": {"model": spec.name, "trial_id": best["trial_id"], "hyperparameters": best["hyperparameters"],
                         "objective": ctx.objective, "val_value": best["value"],
                         "default_val_value": summary["default"]["objective"],
                         "refit_params": tuned_params, "default_refit_params": default_params},
               "models": {}}
    run_cfg = cfg.to_dict()
    run_cfg["models"] = {name: {"type": typ, **params} for name, typ, params, _ in rows}
    R.write_json(folder.file("config.json"), {**run_cfg, "seed": ctx.seed, "tuned_from": cfg.to_dict()["models"]})
    for name, typ, params, mseed in rows:
        if not quiet:
            print(f"[animerec] refit on train+validation: {name} ...", file=sys.stderr, flush=True)
        model, res, m = _fit_score(ctx, typ, params, mseed, train_val, None, split, "test", f"refit_{name}")
        folder.add_model(name, m, model, res)
        del model
        _release_memory()
    table = markdown_table([folder.metrics["models"]], cfg.eval.k)
    folder.finish(table)
    if not quiet:
        hp = ", ".join(f"{k}={_short(v)}" for k, v in best["hyperparameters"].items())
        dv = summary["default"]["objective"]
        print(f"\n{cfg.experiment} — {dataset.name}, {split.name}; refit on train+validation, scored on test\n"
              f"{spec.name}_tuned: {hp} (trial {best['trial_id']}; val {ctx.objective} {best['value']:.4f}, "
              f"default {dv:.4f})\n\n{table}\ntuning folder: {out}")


__all__ = ["tune", "check_space", "check_objective", "tuned_spec", "tuning_dir", "rss_mb", "default_values",
           "data_fingerprint", "ORACLES", "BASELINES", "SPACE_TYPES"]
