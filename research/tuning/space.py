"""What a search searches: the tuned ``[models.NAME]`` table, its space, its objective and the
untuned default as a point of the space. Config checks only: no data, no TensorFlow (keras-tuner is
imported inside :func:`hyperparameters`, the one function that needs it).

**Search space**: ``[models.NAME.space]`` in the config, one entry per constructor argument:
``{type="int"|"float", min, max[, step][, sampling="linear"|"log"|"reverse_log"]}``,
``{type="choice", values=[...]}``, ``{type="boolean"}``. Names are checked against the model's
constructor (like the model's other arguments) before any data are loaded. A trial's values are
merged over the table's fixed arguments.
"""
from __future__ import annotations

import inspect

from research.config import Config, ModelSpec
from research.errors import ConfigError
from research.eval import metrics as M
from research.models import registry

ORACLES = ("random", "bayesian", "hyperband")
#: the trivial reference rows the final refit scores beside the tuned model (their tables are part
#: of what a search depends on: ``folder.tuning_dir``)
BASELINES = ("global_mean", "bias", "popularity")
SPACE_TYPES = {"int": {"min", "max", "step", "sampling", "default"},
               "float": {"min", "max", "step", "sampling", "default"},
               "choice": {"values", "default"},
               "boolean": {"default"}}
#: keras-tuner's own entries in a trial's values (Hyperband's), not parameters of the model
TUNER_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


def tuned_spec(cfg: Config) -> ModelSpec:
    """The ``[models.NAME]`` table to tune: ``tune.model``, or the config's only model."""
    where = f" in {cfg.source_file}" if cfg.source_file else ""
    if cfg.tune.model:
        return cfg.model(cfg.tune.model)
    if len(cfg.models) == 1:
        return cfg.models[0]
    if not cfg.models:
        raise ConfigError(f"no [models.*] table to tune{where}")
    raise ConfigError(f"tune.model is not set{where} and the config has {len(cfg.models)} models "
                      f"({', '.join(m.name for m in cfg.models)}): name the one to tune")


def check_space(spec: ModelSpec, oracle: str = "random") -> dict:
    """Validate ``[models.NAME.space]`` against the model's constructor and the oracle.

    Returns:
        The space, as a dict name -> entry (unchanged).

    Raises:
        ConfigError: naming the offending key (unknown parameter, unknown entry type or field,
            a bad range, ``epochs`` searched under Hyperband, or Hyperband for a model without
            epochs).
    """
    import difflib

    key = f"models.{spec.name}.space"
    if not isinstance(spec.space, dict) or not spec.space:
        raise ConfigError(f"[{key}] is missing or empty: nothing to tune (e.g. "
                          f"user_damping = {{type=\"float\", min=0, max=50}})")
    valid = list(registry.model_class(spec.type).param_defaults())
    for name, entry in spec.space.items():
        where = f"{key}.{name}"
        if name not in valid:
            near = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (valid: {', '.join(valid)})"
            raise ConfigError(f"{where}: model {spec.type!r} has no parameter {name!r}{hint}")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table like {{type=\"int\", min=1, max=10}}, got {entry!r}")
        typ = entry.get("type")
        if typ not in SPACE_TYPES:
            raise ConfigError(f"{where}.type: expected one of {', '.join(SPACE_TYPES)}, got {typ!r}")
        extra = set(entry) - SPACE_TYPES[typ] - {"type"}
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(extra))} for type {typ!r} "
                              f"(valid: {', '.join(sorted(SPACE_TYPES[typ]))})")
        if typ in ("int", "float"):
            for f in ("min", "max"):
                if f not in entry:
                    raise ConfigError(f"{where}: {typ} needs {f!r}")
                v = entry[f]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ == "int" and not isinstance(v, int)):
                    what = "an integer" if typ == "int" else "a number"
                    raise ConfigError(f"{where}.{f}: expected {what}, got {v!r}")
            if entry["min"] >= entry["max"]:
                raise ConfigError(f"{where}: min ({entry['min']}) must be below max ({entry['max']})")
            sampling = entry.get("sampling", "linear")
            if sampling not in ("linear", "log", "reverse_log"):
                raise ConfigError(f"{where}.sampling: expected linear, log or reverse_log, got {sampling!r}")
            if sampling != "linear" and entry["min"] <= 0:
                raise ConfigError(f"{where}: {sampling} sampling needs min > 0, got {entry['min']}")
        if typ == "choice":
            values = entry.get("values")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.values: expected a non-empty list")
            kinds = {type(v) for v in values}
            if len(kinds) > 1 and kinds != {int, float}:
                raise ConfigError(f"{where}.values: all values must have one type, got {values!r}")
    if oracle == "hyperband":
        if spec.type not in registry.KERAS_MODELS or "epochs" not in valid:
            raise ConfigError(f"tune.oracle = \"hyperband\" allocates training epochs, and model "
                              f"{spec.name!r} ({spec.type}) has none: use \"random\" or \"bayesian\"")
        if "epochs" in spec.space:
            raise ConfigError(f"{key}.epochs: under tune.oracle = \"hyperband\" the epochs are "
                              f"Hyperband's resource (tune.max_epochs), not a searched parameter")
    return spec.space


def check_objective(cfg: Config, spec: ModelSpec) -> tuple[str, str]:
    """The (objective, direction) of the search, checked against what the harness measures for
    this model. The direction is the metric's own (``research.eval.metrics.METRICS``)."""
    obj, k = cfg.tune.objective, cfg.eval.k
    valid = M.harness_keys(k)
    if obj not in valid:
        import difflib

        near = difflib.get_close_matches(obj, valid, n=1)
        raise ConfigError(f"tune.objective: {obj!r} is not a harness metric"
                          + (f" (did you mean {near[0]!r}?)" if near else f" (valid: {', '.join(valid)})"))
    cls = registry.model_class(spec.type)
    rating = M.metric(obj).unit == "rating"
    if rating and not getattr(cls, "predicts_ratings", False):
        raise ConfigError(f"tune.objective = {obj!r}, but model {spec.name!r} does not predict ratings "
                          f"(tune a ranking metric, e.g. ndcg@{k})")
    if not rating and not getattr(cls, "ranks", True):
        raise ConfigError(f"tune.objective = {obj!r}, but model {spec.name!r} does not rank items")
    return obj, M.direction(obj)


def default_values(spec: ModelSpec) -> dict | None:
    """The untuned configuration as a point of the search space: each searched parameter's value
    in the config table, else the constructor's default. None when one of them lies outside its
    range (or choices): then the search cannot try the default as a trial."""
    defaults = registry.model_class(spec.type).param_defaults()
    out = {}
    for name, e in spec.space.items():
        if name in spec.params:
            v = spec.params[name]
        elif defaults.get(name, inspect.Parameter.empty) is not inspect.Parameter.empty:
            v = defaults[name]
        else:
            return None
        t = e["type"]
        if t == "boolean":
            ok = isinstance(v, bool)
        elif t == "choice":
            ok = any(v == c and type(v) is type(c) for c in e["values"])
        elif t == "int":
            ok = (isinstance(v, int) and not isinstance(v, bool) and e["min"] <= v <= e["max"]
                  and (not e.get("step") or (v - e["min"]) % e["step"] == 0))
        else:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and e["min"] <= v <= e["max"]
            v = float(v)
        if not ok:
            return None
        out[name] = v
    return out


def hyperparameters(space: dict):
    import keras_tuner as kt

    hps = kt.HyperParameters()
    for name, e in space.items():
        try:
            if e["type"] == "int":
                hps.Int(name, e["min"], e["max"], step=e.get("step"), sampling=e.get("sampling", "linear"),
                        default=e.get("default"))
            elif e["type"] == "float":
                hps.Float(name, float(e["min"]), float(e["max"]), step=e.get("step"),
                          sampling=e.get("sampling", "linear"), default=e.get("default"))
            elif e["type"] == "choice":
                hps.Choice(name, e["values"], default=e.get("default"))
            else:
                hps.Boolean(name, default=bool(e.get("default", False)))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"space entry {name!r}: {exc}") from None
    return hps
