"""Saved models are data only (issue 13, part 1): every registered non-Keras model round-trips
through ``model.json`` + ``arrays.npz`` with identical answers, and a crafted folder (a pickle, a
class outside the registry, an object array) is refused with a clear error, running nothing."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from research.data.interactions import build_dataset
from research.data.splits import random_split
from research.errors import AnimeRecError, ConfigError
from research.models import registry
from research.models.base import ARRAYS_FILE, MODEL_FILE, ModelFileError, NotSupported, PickleRefused, Recommender

REPO = Path(__file__).resolve().parent.parent
NAMES = [n for n in registry.MODELS if n not in registry.KERAS_MODELS]
PARAMS = {
    "user_knn": {"k": 5}, "item_knn": {"k": 5, "shrinkage": 10.0},
    "kmeans": {"n_clusters": 3, "svd_components": 4, "n_init": 2},
    "content": {"min_df": 1, "max_features": 100}, "ease": {"lam": 10.0},
    "surprise_svd": {"n_factors": 4, "n_epochs": 3}, "surprise_svdpp": {"n_factors": 4, "n_epochs": 2},
    "surprise_knnbaseline": {"k": 5}, "implicit_als": {"factors": 4, "iterations": 3},
    "implicit_bpr": {"factors": 4, "iterations": 5},
}
GENRES = ["Action", "Comedy", "Drama", "Mecha", "Romance"]


def _dataset(seed=0, n_users=25, n_items=30, per_user=10):
    r = np.random.default_rng(seed)
    pu, qi = r.normal(size=(n_users, 3)), r.normal(size=(n_items, 3))
    rows = [(100 + u, 1 + i, float(np.clip(np.round(6 + 1.5 * pu[u] @ qi[i]), 1, 10)))
            for u in range(n_users) for i in r.choice(n_items, per_user, replace=False)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    frame.loc[r.random(len(frame)) < 0.05, "rating"] = np.nan
    ids = np.arange(1, n_items + 2)
    table = pd.DataFrame({"name": [f"A{i}" for i in ids],
                          "genres": [list(r.choice(GENRES, 2, replace=False)) for _ in ids],
                          "type": r.choice(["TV", "Movie"], len(ids)), "studios": [["S"] for _ in ids],
                          "source": r.choice(["Manga", "Original"], len(ids)),
                          "synopsis": [" ".join(r.choice(["robot", "love", "war", "space"], 5)) for _ in ids]},
                         index=ids)
    return build_dataset(frame, table, name="tiny")


@pytest.fixture(scope="module")
def split():
    return random_split(_dataset().interactions, test_fraction=0.2, val_fraction=0.1, seed=0)


def _class(name):
    try:
        return registry.model_class(name)
    except ConfigError as exc:  # a peer library not installed
        pytest.skip(str(exc))


def _answers(m: Recommender, split) -> dict:
    users, items = np.arange(split.train.n_users), np.arange(split.train.n_items)
    out = {"score": m.score(users), "recommend": m.recommend(users, k=5, exclude=split.train.to_csr("ones")),
           "extra": m.extra_metrics()}
    test = split.test
    for key, call in (("predict", lambda: m.predict(test.user, test.item)),
                      ("similar_items", lambda: m.similar_items(items[:6], 4)),
                      ("similar_users", lambda: m.similar_users(users[:6], 4))):
        try:
            out[key] = call()
        except NotSupported as exc:
            out[key] = type(exc)
    return out


def _assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b or (a != a and b != b), where


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name, split, tmp_path):
    cls = _class(name)
    m = registry.build(name, PARAMS.get(name, {}), seed=3).fit(split.train, split.val)
    m.save(tmp_path / name)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [ARRAYS_FILE, MODEL_FILE]
    with np.load(tmp_path / name / ARRAYS_FILE, allow_pickle=False) as z:  # every entry readable as data
        assert all(not z[k].dtype.hasobject for k in z.files)
    back = cls.load(tmp_path / name, split.meta)
    assert type(back) is type(m) and back.meta is split.meta
    assert back.state_dict().keys() == m.state_dict().keys()
    _assert_same(_answers(m, split), _answers(back, split), name)
    back.save(tmp_path / "again")  # a loaded model saves the same files
    again, first = ((tmp_path / d / MODEL_FILE).read_text() for d in ("again", name))
    assert json.loads(again) == json.loads(first)


def test_round_trip_in_a_fresh_process(split, tmp_path):
    """No state of this process is needed: another interpreter loads nested objects and all."""
    m = registry.build("item_knn", {"k": 5}, seed=0).fit(split.train)
    m.save(tmp_path / "m")
    users = np.arange(split.train.n_users)
    np.save(tmp_path / "want.npy", m.score(users))
    np.save(tmp_path / "pred.npy", m.predict(split.test.user, split.test.item))
    with open(tmp_path / "meta.pkl", "wb") as fh:  # the test's own vocabularies, not the model
        pickle.dump((split.meta, split.test.user, split.test.item), fh)
    code = f"""
import pickle, numpy as np
from research.models.neighbors import ItemKNN
meta, u, i = pickle.load(open({str(tmp_path / 'meta.pkl')!r}, "rb"))
m = ItemKNN.load({str(tmp_path / 'm')!r}, meta)
assert np.array_equal(m.score(np.arange(meta.n_users)), np.load({str(tmp_path / 'want.npy')!r}))
assert np.array_equal(m.predict(u, i), np.load({str(tmp_path / 'pred.npy')!r}))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


# ---- refused folders ------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates ``path``: the proof that a load ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def saved(split, tmp_path):
    m = registry.build("bias", {}, seed=0).fit(split.train)
    m.save(tmp_path / "m")
    return tmp_path / "m"


def _doc(folder: Path) -> dict:
    return json.loads((folder / MODEL_FILE).read_text())


def _write(folder: Path, doc: dict) -> None:
    (folder / MODEL_FILE).write_text(json.dumps(doc))


def test_a_pickle_is_refused_without_the_opt_in(split, tmp_path):
    folder, marker = tmp_path / "m", tmp_path / "pwned"
    folder.mkdir()
    with open(folder / "model.pkl", "wb") as fh:
        pickle.dump({"class": "research.models.baselines:Bias", "state": {"x": _Payload(marker)}}, fh)
    with pytest.raises(PickleRefused) as info:
        registry.model_class("bias").load(folder, split.meta)
    msg = str(info.value)
    assert isinstance(info.value, AnimeRecError) and "model.pkl" in msg
    assert "pickle" in msg and "runs code" in msg and "--allow-pickle" in msg
    assert not marker.exists()


def test_an_old_pickle_loads_with_the_opt_in(split, tmp_path):
    """What the pre-JSON ``save`` wrote; read only when the caller trusts the folder."""
    m = registry.build("bias", {}, seed=0).fit(split.train)
    folder = tmp_path / "m"
    folder.mkdir()
    state = {k: v for k, v in vars(m).items() if k not in ("meta", "_params")}
    with open(folder / "model.pkl", "wb") as fh:
        pickle.dump({"class": "research.models.baselines:Bias", "state": state}, fh)
    back = registry.model_class("bias").load(folder, split.meta, allow_pickle=True)
    u, i = split.test.user, split.test.item
    np.testing.assert_array_equal(back.predict(u, i), m.predict(u, i))
    back.save(folder)  # saving again replaces the pickle
    assert not (folder / "model.pkl").exists() and (folder / MODEL_FILE).exists()


@pytest.mark.parametrize("klass, params", [
    ("os:system", {"command": "touch {marker}"}),
    ("subprocess:Popen", {"args": ["touch", "{marker}"]}),
    ("builtins:open", {"file": "{marker}", "mode": "w"}),
    ("research.models.neighbors:SimilarityRows", {}),  # ours, importable, but not a registered model
    ("evil_module:Model", {}),
])
def test_a_class_outside_the_registry_is_refused(klass, params, saved, split, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    (tmp_path / "evil_module.py").write_text(f"open({str(marker)!r}, 'w')\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = _doc(saved)
    doc["class"] = klass
    doc["params"] = json.loads(json.dumps(params).replace("{marker}", str(marker)))
    _write(saved, doc)
    with pytest.raises(ModelFileError, match="not a registered model"):
        Recommender.load(saved, split.meta)
    assert not marker.exists() and "evil_module" not in sys.modules


def test_a_nested_class_outside_the_known_ones_is_refused(split, tmp_path):
    m = registry.build("item_knn", {"k": 3}, seed=0).fit(split.train)
    m.save(tmp_path / "m")
    doc = _doc(tmp_path / "m")
    doc["state"]["baseline"]["class"] = "os:system"
    doc["state"]["baseline"]["params"] = {"command": f"touch {tmp_path / 'pwned'}"}
    _write(tmp_path / "m", doc)
    with pytest.raises(ModelFileError, match="'os:system' is not a known Stateful class"):
        registry.model_class("item_knn").load(tmp_path / "m", split.meta)
    assert not (tmp_path / "pwned").exists()


def test_a_registered_class_of_another_kind_is_refused(saved, split):
    with pytest.raises(ModelFileError, match="holds a research.models.baselines:Bias, not a ItemKNN"):
        registry.model_class("item_knn").load(saved, split.meta)


def test_an_object_array_is_refused(saved, split, tmp_path):
    marker = tmp_path / "pwned"
    with np.load(saved / ARRAYS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[_doc(saved)["state"]["bu"]["array"]] = np.array([_Payload(marker)], dtype=object)  # savez pickles it
    np.savez(saved / ARRAYS_FILE, **arrays)
    with pytest.raises(ModelFileError, match="cannot be read without pickle"):
        Recommender.load(saved, split.meta)
    assert not marker.exists()
    # scipy's own reader refuses them too (it loads with allow_pickle=False)
    np.savez(tmp_path / "s.npz", data=np.array([_Payload(marker)], dtype=object), indices=np.array([0]),
             indptr=np.array([0, 1]), shape=np.array([1, 1]), format=np.array("csr"))
    with pytest.raises(ValueError, match="allow_pickle"):
        sp.load_npz(tmp_path / "s.npz")
    assert not marker.exists()


def test_an_array_file_that_is_a_pickle_is_refused(saved, split, tmp_path):
    marker = tmp_path / "pwned"
    with open(saved / ARRAYS_FILE, "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    with pytest.raises(ModelFileError, match="arrays.npz"):
        Recommender.load(saved, split.meta)
    assert not marker.exists()


def test_sparse_indices_out_of_bounds_are_refused(split, tmp_path):
    m = registry.build("popularity", {}, seed=0).fit(split.train)
    m.extra_matrix = sp.csr_matrix(np.eye(3))
    m.save(tmp_path / "m")
    with np.load(tmp_path / "m" / ARRAYS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[_doc(tmp_path / "m")["state"]["extra_matrix"]["sparse"] + ".indices"] = np.array([0, 1, 99], dtype=np.int32)
    np.savez(tmp_path / "m" / ARRAYS_FILE, **arrays)
    with pytest.raises(ModelFileError, match="bad sparse matrix"):
        Recommender.load(tmp_path / "m", split.meta)


def test_other_malformed_folders(saved, split, tmp_path):
    with pytest.raises(ModelFileError, match="no saved model"):
        Recommender.load(tmp_path / "nothing", split.meta)
    doc = _doc(saved)
    _write(saved, {**doc, "format": "something-else"})
    with pytest.raises(ModelFileError, match="format"):
        Recommender.load(saved, split.meta)
    _write(saved, {**doc, "state": {**doc["state"], "bu": {"array": "../../etc/passwd"}}})
    with pytest.raises(ModelFileError, match="bad array name"):
        Recommender.load(saved, split.meta)
    _write(saved, {**doc, "state": {**doc["state"], "bu": {"lambda": "x"}}})
    with pytest.raises(ModelFileError, match="unknown value"):
        Recommender.load(saved, split.meta)
    _write(saved, {**doc, "n_items": doc["n_items"] + 1})
    with pytest.raises(ModelFileError, match="vocabularies"):
        Recommender.load(saved, split.meta)
    (saved / MODEL_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="not a readable model file"):
        Recommender.load(saved, split.meta)


def test_an_attribute_that_is_not_data_is_named_at_save(split, tmp_path):
    m = registry.build("bias", {}, seed=0).fit(split.train)
    m.helper = object()
    with pytest.raises(TypeError, match=r"Bias\.helper: cannot save a builtins\.object without pickle"):
        m.save(tmp_path / "m")


def test_values_json_cannot_hold_round_trip(split, tmp_path):
    """Non-finite floats, tuples, non-string dict keys, numpy scalars, 0-d and empty arrays."""
    m = registry.build("popularity", {}, seed=0).fit(split.train)
    extra = {"f": [float("inf"), float("-inf"), 1.5], "t": (1, "a", None), "k": {3: "x", (1, 2): [4]},
             "s": np.float32(0.25), "i": np.int64(2 ** 62), "e": np.zeros((0, 3)), "file": np.arange(3)}
    m.extra = extra
    m.nan = float("nan")
    m.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m", split.meta)
    assert back.extra["t"] == (1, "a", None) and back.extra["k"] == {3: "x", (1, 2): [4]}
    assert back.extra["f"] == [float("inf"), float("-inf"), 1.5] and back.nan != back.nan
    assert type(back.extra["s"]) is np.float32 and back.extra["s"] == np.float32(0.25)
    assert type(back.extra["i"]) is np.int64 and back.extra["i"] == 2 ** 62
    assert back.extra["e"].shape == (0, 3) and back.extra["file"].tolist() == [0, 1, 2]
    text = (tmp_path / "m" / MODEL_FILE).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    with zipfile.ZipFile(tmp_path / "m" / ARRAYS_FILE) as zf:
        assert all(n.endswith(".npy") for n in zf.namelist())


@pytest.mark.keras
def test_keras_load_restricts_its_class(tmp_path, split):
    from research.models.keras.common import KerasRecommender

    marker = tmp_path / "pwned"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keras_model.json").write_text(json.dumps({"class": "os:system",
                                                                 "config": {"command": f"touch {marker}"}}))
    with pytest.raises(ModelFileError, match="not a registered model"):
        KerasRecommender.load(tmp_path / "m", split.meta)
    assert not marker.exists()
