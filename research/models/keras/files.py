"""The JSON files of a Keras fit and save (checkpoint state, fingerprint, ``keras_model.json``):
atomic writes of json-able values with numpy scalars and arrays, and the class path they record.
No TensorFlow here."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _class_path(klass) -> str:
    return f"{klass.__module__}:{klass.__qualname__}"


def _rows_digest(rows):
    """``None``, or an ``Interactions``' row count and a digest of its (user, item, rating) columns
    (the checkpoint fingerprint's record of which validation rows a fit measured itself on)."""
    if rows is None:
        return None
    h = hashlib.sha1()
    for a in (rows.user, rows.item, rows.rating):
        h.update(np.ascontiguousarray(a).tobytes())
    return {"rows": len(rows), "sha1": h.hexdigest()}
