"""Typed, frozen experiment configs read from TOML.

A config file may name another with ``base = "other.toml"`` (relative to itself); its keys are
merged over the base's, table by table. ``--set a.b=v`` overrides one key after loading; ``v`` is
read as a TOML value (``--set seeds=[0,1,2]``, ``--set split.kind="leave_k_out"``) and falls back to a
plain string. Unknown keys are an error that names the key, the file and the nearest valid key.

Model tables are free-form: ``[models.NAME]`` holds the constructor arguments of the registered
model ``NAME`` (or of ``type = "registered_name"`` when one model is run twice under two names), and
an optional ``space`` sub-table used by the tuner. Model arguments are checked against the model's
constructor when the run builds its models, before anything is fitted.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from research.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


#: the raw file formats ``research.data.sources`` reads (``animerec prepare --source``)
RAW_SOURCES = ("mal2020", "cooperunion2017", "generic")
#: data.source values: the synthetic generator, the raw formats, and ``animerec prepare``'s parquet
DATA_SOURCES = ("synth", *RAW_SOURCES, "processed")


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of the synthetic MAL-shaped data set (used when ``data.source = "synth"``)."""

    users: int = 600  # number of users
    items: int = 800  # number of anime in the catalogue
    ratings_per_user: int = 60  # mean ratings per user (long-tailed across users)
    segments: int = 5  # planted taste segments over genres
    factors: int = 8  # planted latent dimension
    unrated_fraction: float = 0.1  # share of animelist rows with score 0 ("watched, no score")
    seed: int = 0  # the generator's seed; independent of the experiment seed


@dataclass(frozen=True)
class DataConfig:
    """Where the raw data are and how to read them."""

    source: Literal[DATA_SOURCES] = "synth"  # see DATA_SOURCES
    path: str = ""  # raw folder; "" -> $ANIMEREC_DATA/<source> -> data/raw/<source>
    ratings: str = ""  # ratings file in the folder ("" -> the source's default)
    catalogue: str = ""  # anime catalogue file ("" -> the source's default, if present)
    synopsis: str = ""  # synopsis file ("" -> the source's default, if present)
    # score 0 / -1 rows: "drop" (counted), "keep" (watched, no rating), "zero" (0/10, the study)
    unrated: Literal["drop", "keep", "zero"] = "drop"
    max_rows: int = 0  # read at most this many rating rows (0 = all)
    min_user_ratings: int = 0  # drop users with fewer rated rows (counted in the manifest)
    fallback_to_synth: bool = True  # with no real data found, run on the synthetic generator
    delimiter: str = ","  # generic source only
    header: bool = True  # generic source only
    user_col: str = "user"  # generic: column name, or 0-based position as a string ("0")
    item_col: str = "item"
    rating_col: str = "rating"
    timestamp_col: str = ""


@dataclass(frozen=True)
class SplitConfig:
    """How interactions are split into train, validation and test."""

    #: "users": held-out users (strong generalisation): test / validation users absent from train,
    #: each one's rows split into a history that is folded in and targets that are scored
    kind: Literal["random", "user_holdout", "leave_k_out", "cold_start", "users"] = "random"
    test_fraction: float = 0.2  # random / user_holdout / cold_start / users: share held out for test
    test_rows: int = 0  # random only: hold out exactly this many rows instead (the study: 10,000)
    val_fraction: float = 0.1  # share of the remaining train held back for validation
    k: int = 1  # leave_k_out: items per user held out for test (and for validation)
    fold_in_fraction: float = 0.8  # users: share of each held-out user's rows folded in (the rest: targets)
    #: what models are fitted on: "train" (validation for early stopping only) or "train+val"
    #: (validation folded into training, no early stopping: Keras models train ``epochs`` epochs,
    #: e.g. the epoch a tuning run's early stopping kept — the tuner's final refit protocol)
    fit_on: Literal["train", "train+val"] = "train"


@dataclass(frozen=True)
class EvalConfig:
    """What the harness measures."""

    k: int = 10  # cut-off of the ranking metrics
    batch_users: int = 1024  # users scored at once (memory: batch_users x n_items floats)
    relevance_threshold: float = 0.0  # a test item is relevant if its rating >= this (0: all)


@dataclass(frozen=True)
class TuneConfig:
    """keras-tuner search (``animerec tune``)."""

    model: str = ""  # the model table to tune; "" -> the only model in the config
    oracle: Literal["random", "bayesian", "hyperband"] = "random"
    max_trials: int = 10
    objective: str = "rmse"  # a harness metric, scored on validation (its direction is the metric's)
    max_epochs: int = 20  # hyperband's resource (epochs) for Keras models
    hyperband_factor: int = 3
    retrain_on_full: bool = True  # refit the best on train+validation, then score on test




@dataclass(frozen=True)
class TrainConfig:
    """How a Keras model trains: the arguments every Keras model shares. They sit flat in the
    model's table (``[models.two_tower] epochs = 12``); each model class states its own defaults
    over these (``KerasRecommender.train_defaults``), and ``research.models.keras.common`` reads
    them from here, so a new Keras model declares only its own hyperparameters.
    """

    epochs: int = 20  # maximum training epochs (early stopping may end sooner)
    batch_size: int = 8192  # training batch size
    learning_rate: float = 1e-3  # the optimizer's step size
    patience: int = 3  # validation epochs without improvement before stopping
    early_stopping: bool = True  # stop early, keeping the best epoch's weights, when validation is given
    min_delta: float = 0.0  # smallest change of the monitored value counted as an improvement
    jit_compile: bool = False  # XLA-compile the train step
    eval_batch_size: int = 65536  # batch size for validation and batched inference
    checkpoint_dir: str = ""  # resumable checkpoints ("" = derived from the run's log folder)
    verbose: int = 0  # Keras' fit verbosity
    # adam | lazy_adam (sparse rows only) | adagrad | sgd
    optimizer: Literal["adam", "lazy_adam", "adagrad", "sgd"] = "adam"

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"batch_size and eval_batch_size must be >= 1, got {self.batch_size}, "
                              f"{self.eval_batch_size}")
        if not self.learning_rate > 0 or self.patience < 0 or self.min_delta < 0:
            raise ConfigError("learning_rate must be > 0, patience and min_delta >= 0")

    @classmethod
    def build(cls, values: dict, where: str = "") -> "TrainConfig":
        """A TrainConfig from plain values, with unknown names and wrong types as ConfigErrors."""
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in values.items():
            if k not in hints:
                raise ConfigError(_unknown("training argument", k, hints, where))
            kwargs[k] = _coerce(v, hints[k], k, where)
        return cls(**kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """One ``[models.NAME]`` table."""

    name: str
    type: str
    params: dict
    space: dict


@dataclass(frozen=True)
class Config:
    """A resolved experiment config."""

    experiment: str = "experiment"
    seeds: tuple = (0,)  # one run per seed; child seeds are spawned from each
    results_dir: str = "results"  # relative to the repository root unless absolute
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    models: tuple = ()  # tuple[ModelSpec, ...], in file order
    source_file: str = ""  # the TOML file it was read from

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise ConfigError(_unknown("model", name, [m.name for m in self.models], self.source_file))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["models"] = {m.name: {"type": m.type, **m.params, **({"space": m.space} if m.space else {})}
                         for m in self.models}
        return out

    @property
    def results_path(self) -> Path:
        p = Path(self.results_dir)
        return p if p.is_absolute() else REPO_ROOT / p


#: the config's sections: name -> the dataclass of its keys and defaults
SECTIONS = {"data": DataConfig, "synth": SynthConfig, "split": SplitConfig, "eval": EvalConfig,
            "tune": TuneConfig}
_TOP = {"experiment", "seeds", "results_dir", "models", "base", *SECTIONS}


def _unknown(what: str, key: str, valid, source: str) -> str:
    near = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else f" (valid: {', '.join(sorted(valid))})"
    src = f" in {source}" if source else ""
    return f"unknown {what} {key!r}{src}{hint}"


def _read_toml(path: Path, seen: tuple = ()) -> tuple[dict, dict]:
    """Read ``path`` and its ``base`` chain. Returns (merged dict, key -> file it came from)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base' chain")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    origin = {k: str(path) for k in raw}
    base = raw.pop("base", None)
    if base is None:
        return raw, origin
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    merged, base_origin = _read_toml((path.parent / base), seen + (path,))
    base_origin.update(origin)
    return _merge(merged, raw), base_origin


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings to a raw config dict (values parsed as TOML)."""
    raw = _merge({}, raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a table")
        node[parts[-1]] = _parse_value(value.strip())
    return raw


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    if typing.get_origin(typ) is Literal:  # a choice: checked when the config loads
        choices = typing.get_args(typ)
        if value in choices:
            return value
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{key} in {source or 'config'}: {value!r} is not one of "
                          f"{', '.join(map(repr, choices))}{hint}")
    if typ is tuple:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, list):
            return tuple(value)
    elif typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif typ is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith("_col"):
        return str(value)
    elif isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key} in {source or 'config'}: expected {typ.__name__}, got {value!r}")


def _build(cls, raw: dict, prefix: str, origin: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        if k not in fields:
            raise ConfigError(_unknown("key", f"{prefix}{k}", [f"{prefix}{n}" for n in fields], origin))
        typ = typing.get_type_hints(cls)[k]
        kwargs[k] = _coerce(v, typ, f"{prefix}{k}", origin)
    return cls(**kwargs)


_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(what: str, name: str, where: str) -> str:
    """``name`` if it is a plain file name (it becomes a folder under results/): letters, digits,
    ``_.-``, and not ``.`` or ``..``; else a ConfigError naming the key."""
    if not isinstance(name, str) or not _PLAIN.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{what} in {where or 'config'}: {name!r} is not a plain name "
                          f"(letters, digits, '_', '.', '-'; it names a folder under results/)")
    return name


def from_dict(raw: dict, source: str = "", origin: dict | None = None) -> Config:
    """Build a Config from a raw dict, rejecting unknown keys and wrong types."""
    origin = origin or {}
    kwargs: dict[str, Any] = {"source_file": source}
    for key, value in raw.items():
        where = origin.get(key, source)
        if key not in _TOP:
            raise ConfigError(_unknown("key", key, _TOP - {"base"}, where))
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] in {where}: expected a table")
            kwargs[key] = _build(SECTIONS[key], value, f"{key}.", where)
        elif key == "models":
            if not isinstance(value, dict):
                raise ConfigError(f"models in {where}: expected [models.NAME] tables, got {value!r}")
            specs = []
            for name, table in value.items():
                check_name(f"models.{name}", name, where)
                if not isinstance(table, dict):
                    raise ConfigError(f"models.{name} in {where}: expected a table")
                table = dict(table)
                typ = table.pop("type", name)
                space = table.pop("space", {})
                specs.append(ModelSpec(name=name, type=str(typ), params=table, space=space))
            kwargs["models"] = tuple(specs)
        elif key == "base":
            continue
        else:
            typ = typing.get_type_hints(Config)[key]
            kwargs[key] = _coerce(value, typ, key, where)
    if "experiment" in kwargs:
        check_name("experiment", kwargs["experiment"], origin.get("experiment", source))
    where = origin.get("seeds", source) or "config"
    seeds = kwargs.get("seeds", (0,))
    if not seeds or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in seeds):
        raise ConfigError(f"seeds in {where}: expected a non-empty list of whole numbers >= 0, got {list(seeds)!r}")
    ev = kwargs.get("eval")
    if ev is not None and (ev.k < 1 or ev.batch_users < 1):
        raise ConfigError(f"eval.k and eval.batch_users in {origin.get('eval', source) or 'config'} must be "
                          f">= 1, got {ev.k} and {ev.batch_users}")
    return Config(**kwargs)


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (with its ``base`` chain) and apply ``--set`` overrides."""
    path = Path(path)
    raw, origin = _read_toml(path)
    raw = apply_overrides(raw, overrides or [])
    return from_dict(raw, str(path), origin)
