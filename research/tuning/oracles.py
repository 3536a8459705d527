"""The oracles that propose each trial's values (keras-tuner's, imported on first use, since
keras-tuner imports Keras 3 and TensorFlow).

**Oracles**: ``random``, ``bayesian`` (Gaussian process; its random start is
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

**Default first**: when the untuned configuration (the table's values, else the constructor's
defaults) lies inside the space, it is the first trial (``is_default`` in tuning.json), so the
best trial is never worse on validation than the default (Hyperband still sets its epochs).
"""
from __future__ import annotations

from research.config import Config, ModelSpec
from research.errors import ConfigError
from research.seeding import child_seed
from research.tuning.space import ORACLES, default_values, hyperparameters


def make_oracle(cfg: Config, spec: ModelSpec, objective: str, direction: str, seed: int):
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
            def _vector_to_values(self, vector):
                # keras-tuner 1.4.8's Int.prob_to_value maps prob 1.0 (the upper bound the GP's
                # acquisition optimiser may return) to max + 1: clamp into the declared box
                values = super()._vector_to_values(vector)
                for hp in self.hyperparameters.space:
                    if isinstance(hp, kt.engine.hyperparameters.Int) and hp.name in values:
                        values[hp.name] = min(max(int(values[hp.name]), hp.min_value), hp.max_value)
                return values

            def populate_space(self, trial_id):
                response = super().populate_space(trial_id)
                values = response.get("values")
                if values is not None and self._duplicate(values):
                    return self._random_populate_space()
                return response

        _BAYESIAN_CLASS = NoRepeatBayesianOracle
    return _BAYESIAN_CLASS


def requeue_failed(oracle) -> int:
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
