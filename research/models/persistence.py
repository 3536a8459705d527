"""Models saved as data and loaded back: loading a folder never unpickles or imports anything it
names. ``save(obj, path)`` (``Recommender.save``) writes two files:

- ``model.json``: ``{"format": "animerec-model/1", "class": "module:Class", "params": {constructor
  arguments}, "state": {attribute: value}, "n_users", "n_items"}``. A value is plain JSON (null,
  bool, int, finite float, str, list) or one tagged object: ``{"float": "nan"|"inf"|"-inf"}``,
  ``{"tuple": [...]}``, ``{"dict": {str: value}}``, ``{"items": [[key, value], ...]}`` (other keys),
  ``{"array": name[, "scalar": true]}`` (numpy array / scalar in ``arrays.npz``), ``{"sparse": name,
  "format", "shape", "kind"}`` (scipy sparse: ``name.data`` / ``.indices`` / ``.indptr``, or ``.row``
  / ``.col`` for other formats, in ``arrays.npz``) and ``{"class": "module:Class", "params",
  "state"}`` (a nested ``Stateful`` object, e.g. ItemKNN's ``Bias`` baseline; ``params`` is absent
  or null when the constructor is not called).
- ``arrays.npz``: the arrays, written and read with ``allow_pickle=False`` (no object arrays).

``load`` (``Recommender.load``) accepts only a top-level class listed in
``research.models.registry.MODELS`` (a subclass of the class it is called on) and nested classes
that subclass ``Stateful`` in modules already imported; it rebuilds the object with its
constructor, then sets the state. A model whose state is arrays, sparse matrices, scalars,
containers and nested ``Stateful`` objects needs no code; a model holding anything else lists it in
``transient`` and rebuilds it in ``after_load``. An old ``model.pkl`` is loaded only with
``allow_pickle=True`` (the CLI's ``--allow-pickle``).
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from research.errors import AnimeRecError
from research.results import save_npz

MODEL_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
LEGACY_PICKLE = "model.pkl"
FORMAT = "animerec-model/1"


class ModelFileError(AnimeRecError):
    """A saved model folder is missing, malformed, or names a class that may not be loaded."""


class PickleRefused(ModelFileError):
    """The folder holds a pickle: loading it runs code, so it needs ``allow_pickle=True``."""


#: "module:Class" -> class, for every ``Stateful`` subclass defined so far (nested objects are
#: looked up here, never imported)
_STATE_CLASSES: dict[str, type] = {}


def class_path(klass: type) -> str:
    return f"{klass.__module__}:{klass.__qualname__}"


class Stateful:
    """An object saved as its attributes (minus ``transient``) and rebuilt from them.

    Subclasses list in ``transient`` what is not data (or is cheap to derive) and rebuild it in
    ``after_load``; ``transient`` accumulates over the class hierarchy.
    """

    transient: tuple = ()
    #: True for a ``Recommender``: its constructor arguments (``_params``) are saved, ``load`` calls
    #: the constructor with them and gives the object the run's vocabularies as ``meta``
    saves_params: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "<locals>" not in cls.__qualname__:
            _STATE_CLASSES[class_path(cls)] = cls

    @classmethod
    def _transient_names(cls) -> set:
        return {n for k in cls.__mro__ for n in k.__dict__.get("transient", ())}

    def state_dict(self) -> dict:
        """The attributes to save: every instance attribute except the transient ones."""
        skip = self._transient_names()
        return {k: v for k, v in vars(self).items() if k not in skip}

    def load_state(self, state: dict) -> None:
        """Set the saved attributes, then ``after_load``."""
        vars(self).update(state)
        self.after_load()

    def after_load(self) -> None:
        """Rebuild the transient attributes (nothing by default)."""


def save(obj: Stateful, path) -> None:
    """Write ``model.json`` + ``arrays.npz`` for ``obj`` (a ``Recommender``) under folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays: dict = {}
    doc = {"format": FORMAT, **_encode_object(obj, type(obj).__name__, arrays)}
    if obj.meta is not None:
        doc["n_users"], doc["n_items"] = int(obj.meta.n_users), int(obj.meta.n_items)
    save_npz(path / ARRAYS_FILE, arrays)
    tmp = path / (MODEL_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    tmp.replace(path / MODEL_FILE)
    (path / LEGACY_PICKLE).unlink(missing_ok=True)  # an older format of the same model


def load(cls: type, path, meta, *, allow_pickle: bool = False):
    """The model written by ``save`` under ``path``, of a registered class subclassing ``cls``
    (``Recommender.load`` documents the arguments)."""
    path = Path(path)
    file = path / MODEL_FILE
    if not file.is_file():
        if (path / LEGACY_PICKLE).is_file():
            if not allow_pickle:
                raise PickleRefused(
                    f"{path / LEGACY_PICKLE}: the model is a Python pickle (an older animerec format); "
                    f"unpickling runs code from the file, so it is not loaded. Pass --allow-pickle if "
                    f"you trust this folder, or re-run the experiment to save it as {MODEL_FILE}")
            return _load_pickle(cls, path / LEGACY_PICKLE, meta)
        raise ModelFileError(f"{path}: no saved model ({MODEL_FILE} not found)")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{file}: not a readable model file ({_short(str(exc), 120)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ModelFileError(f"{file}: not a model file of format {FORMAT} (format: {_short(got)})")
    klass = registered_class(doc.get("class"), cls, file)
    saved = (doc.get("n_users"), doc.get("n_items"))
    if saved != (None, None) and meta is not None and saved != (meta.n_users, meta.n_items):
        raise ModelFileError(f"{file}: saved for {saved[0]} users x {saved[1]} items, the run's "
                             f"vocabularies have {meta.n_users} x {meta.n_items}")
    with _Arrays(path / ARRAYS_FILE) as arrays:
        try:
            return _decode_object(doc, klass, _Context(file, arrays, meta), klass.__name__)
        except RecursionError:
            raise ModelFileError(f"{file}: nested too deeply") from None


def _load_pickle(cls: type, file: Path, meta):
    """The pre-JSON format (a pickle of the attributes), read only on explicit opt-in."""
    import pickle

    with open(file, "rb") as fh:
        blob = pickle.load(fh)
    klass = registered_class(blob.get("class") if isinstance(blob, dict) else None, cls, file)
    obj = klass.__new__(klass)
    vars(obj).update(blob["state"])
    obj.meta = meta
    return obj


# ---- the codec -----------------------------------------------------------------------------------
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_SPARSE_FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")


def _short(value, limit: int = 80) -> str:
    """repr of a value from a file, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def registered_class(path, base: type, where) -> type:
    """The class registered under ``path`` ("module:Class", a value of
    ``research.models.registry.MODELS``), checked to subclass ``base``. Only the registry's own
    modules are imported; any other name raises ``ModelFileError``."""
    from research.models import registry

    if not isinstance(path, str):
        raise ModelFileError(f"{where}: names no model class")
    names = [n for n, p in registry.MODELS.items() if p == path]
    if not names:
        raise ModelFileError(f"{where}: class {_short(path)} is not a registered model "
                             f"(research.models.registry.MODELS); refusing to load it")
    klass = registry.model_class(names[0])
    if not (isinstance(klass, type) and issubclass(klass, base)):
        raise ModelFileError(f"{where}: holds a {path}, not a {base.__name__}")
    return klass


def _unique_key(where: str, arrays: dict) -> str:
    key = re.sub(r"[^A-Za-z0-9_.\-]", "_", where).strip(".") or "x"
    out, n = key, 1
    while out in arrays or any(k.startswith(out + ".") for k in arrays):
        n += 1
        out = f"{key}~{n}"
    return out


def _encode(v, where: str, arrays: dict):
    """A JSON-able node for value ``v`` (arrays go to ``arrays``); ``where`` names it in errors."""
    if isinstance(v, np.generic):  # before float/str: np.float64 and np.str_ subclass them
        return {"array": _put(np.asarray(v), where, arrays), "scalar": True}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, np.ndarray) and not isinstance(v, (np.matrix, np.ma.MaskedArray)):
        return {"array": _put(np.asarray(v), where, arrays)}
    if sp.issparse(v):
        return _encode_sparse(v, where, arrays)
    if type(v) is list:
        return [_encode(x, f"{where}.{i}", arrays) for i, x in enumerate(v)]
    if type(v) is tuple:
        return {"tuple": [_encode(x, f"{where}.{i}", arrays) for i, x in enumerate(v)]}
    if type(v) is dict:
        if all(isinstance(k, str) for k in v):
            return {"dict": {k: _encode(x, f"{where}.{k}", arrays) for k, x in v.items()}}
        return {"items": [[_encode(k, f"{where}.k{i}", arrays), _encode(x, f"{where}.{i}", arrays)]
                          for i, (k, x) in enumerate(v.items())]}
    if isinstance(v, Stateful) and _STATE_CLASSES.get(class_path(type(v))) is type(v):
        return _encode_object(v, where, arrays)
    raise TypeError(f"{where}: cannot save a {type(v).__module__}.{type(v).__qualname__} without pickle; "
                    f"store its numbers as arrays, or list the attribute in `transient` and rebuild it "
                    f"in `after_load`, or make its class a research.models.base.Stateful")


def _put(arr: np.ndarray, where: str, arrays: dict) -> str:
    if arr.dtype.hasobject:
        raise TypeError(f"{where}: an object array cannot be saved without pickle")
    key = _unique_key(where, arrays)
    arrays[key] = arr
    return key


def _encode_sparse(m, where: str, arrays: dict) -> dict:
    fmt = m.format
    node = {"sparse": _unique_key(where, arrays), "format": fmt, "shape": [int(n) for n in m.shape],
            "kind": "matrix" if isinstance(m, sp.spmatrix) else "array"}
    key = node["sparse"]
    if fmt in ("csr", "csc"):
        parts = {"data": m.data, "indices": m.indices, "indptr": m.indptr}
    else:
        c = m.tocoo()
        parts = {"data": c.data, "row": c.row, "col": c.col}
    for name, arr in parts.items():
        if arr.dtype.hasobject:
            raise TypeError(f"{where}: a sparse matrix of objects cannot be saved without pickle")
        arrays[f"{key}.{name}"] = np.asarray(arr)
    return node


def _encode_object(obj: Stateful, where: str, arrays: dict) -> dict:
    node = {"class": class_path(type(obj))}
    if obj.saves_params:
        params = getattr(obj, "_params", None)
        node["params"] = None if params is None else {
            str(k): _encode(v, f"{where}.params.{k}", arrays) for k, v in params.items()}
    node["state"] = {k: _encode(v, f"{where}.{k}", arrays) for k, v in obj.state_dict().items()}
    return node


class _Arrays:
    """``arrays.npz`` opened on first use, ``allow_pickle=False``; errors name the file and key."""

    def __init__(self, file: Path):
        self.file, self.z = file, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.z is not None:
            self.z.close()

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ModelFileError(f"{self.file}: bad array name {_short(key)}")
        if self.z is None:
            try:
                z = np.load(self.file, allow_pickle=False)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ModelFileError(f"{self.file}: not a readable .npz file ({_short(str(exc), 120)})") from None
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{self.file}: not an .npz archive")
            self.z = z
        if key not in self.z.files:
            raise ModelFileError(f"{self.file}: no array {key!r}")
        try:
            return self.z[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelFileError(f"{self.file}: array {key!r} cannot be read without pickle "
                                 f"({_short(str(exc), 120)})") from None


class _Context:
    def __init__(self, file: Path, arrays: _Arrays, meta):
        self.file, self.arrays, self.meta = file, arrays, meta

    def fail(self, where: str, message: str) -> ModelFileError:
        return ModelFileError(f"{self.file}: {where}: {message}")


_TAGS = ("float", "tuple", "dict", "items", "array", "sparse", "class")


def _decode(node, ctx: _Context, where: str):
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(x, ctx, f"{where}.{i}") for i, x in enumerate(node)]
    tag = next((t for t in _TAGS if t in node), None) if isinstance(node, dict) else None
    if tag is None:
        raise ctx.fail(where, f"unknown value {_short(node)}")
    body = node[tag]
    if tag == "float":
        if body not in ("nan", "inf", "-inf"):
            raise ctx.fail(where, f"bad float {_short(body)}")
        return float(body)
    if tag == "tuple" and isinstance(body, list):
        return tuple(_decode(x, ctx, f"{where}.{i}") for i, x in enumerate(body))
    if tag == "dict" and isinstance(body, dict):
        return {k: _decode(x, ctx, f"{where}.{k}") for k, x in body.items()}
    if tag == "items" and isinstance(body, list):
        out = {}
        for i, pair in enumerate(body):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ctx.fail(where, "bad dict entry")
            key = _decode(pair[0], ctx, f"{where}.k{i}")
            try:
                out[key] = _decode(pair[1], ctx, f"{where}.{i}")
            except TypeError:
                raise ctx.fail(where, f"unhashable dict key {_short(key)}") from None
        return out
    if tag == "array":
        arr = ctx.arrays[body]
        return arr[()] if node.get("scalar") is True else arr
    if tag == "sparse":
        return _decode_sparse(node, ctx, where)
    if tag == "class":
        klass = _STATE_CLASSES.get(body) if isinstance(body, str) else None
        if klass is None:
            raise ctx.fail(where, f"class {_short(body)} is not a known Stateful class; refusing to load it")
        return _decode_object(node, klass, ctx, where)
    raise ctx.fail(where, f"bad {tag!r} value")


def _decode_sparse(node: dict, ctx: _Context, where: str):
    key, fmt, shape, kind = node["sparse"], node.get("format"), node.get("shape"), node.get("kind", "matrix")
    if (fmt not in _SPARSE_FORMATS or kind not in ("matrix", "array") or not isinstance(key, str)
            or not (isinstance(shape, list) and len(shape) == 2
                    and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape))):
        raise ctx.fail(where, "bad sparse matrix entry")
    try:
        if fmt in ("csr", "csc"):
            klass = getattr(sp, f"{fmt}_{kind}")
            data, indices, indptr = (ctx.arrays[f"{key}.{n}"] for n in ("data", "indices", "indptr"))
            m = klass((data, indices, indptr), shape=tuple(shape))
            m.check_format(full_check=True)  # index bounds: scipy's C++ code trusts them
            if indices.dtype == indptr.dtype and m.indices.dtype != indices.dtype:
                m.indices, m.indptr = indices, indptr  # keep the saved index width
            return m
        data, row, col = (ctx.arrays[f"{key}.{n}"] for n in ("data", "row", "col"))
        m = getattr(sp, f"coo_{kind}")((data, (row, col)), shape=tuple(shape))
        return m if fmt == "coo" else m.asformat(fmt)
    except (ValueError, TypeError, IndexError) as exc:
        raise ctx.fail(where, f"bad sparse matrix ({_short(str(exc), 120)})") from None


def _decode_object(node: dict, klass: type, ctx: _Context, where: str):
    state = node.get("state")
    skip = klass._transient_names()
    if not isinstance(state, dict) or not all(isinstance(k, str) and k.isidentifier() and not k.startswith("__")
                                              and k not in skip for k in state):
        raise ctx.fail(where, "bad object state")
    params = node.get("params")
    if params is not None:
        if not isinstance(params, dict):
            raise ctx.fail(where, "bad constructor arguments")
        params = {k: _decode(v, ctx, f"{where}.params.{k}") for k, v in params.items()}
        try:
            obj = klass(**params)
        except (TypeError, ValueError) as exc:
            raise ctx.fail(where, f"bad constructor arguments for {klass.__name__} ({_short(str(exc), 120)})") from None
    else:
        obj = klass.__new__(klass)
    values = {k: _decode(v, ctx, f"{where}.{k}") for k, v in state.items()}
    if obj.saves_params:
        obj.meta = ctx.meta
    obj.load_state(values)
    return obj
