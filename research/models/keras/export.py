"""Export a SavedModel that serves top-k recommendations, with the item index inside it.

The index is exact (brute force): scores = q · V^T (+ b_i) over the candidate items, then
``tf.math.top_k`` (ties -> lower candidate position, as ``research.models.base.top_k``). A bias is
folded in by appending it as one more coordinate (q' = [q, 1], v' = [v, b_i]), so the same index serves
biased matrix factorisation and plain dot-product retrieval. ScaNN does not load beside TF 2.21, so
the optional approximate / alternative index is faiss (``index="faiss"``): the SavedModel then serves
the query vectors and ``items.faiss`` beside it is searched by ``load_topk``.

Queries come either from a user table (``user_vectors``: the SavedModel looks external user ids
up in a hash table) or from a query model (``query_model``, e.g. a two-tower user tower, called on
inputs of ``query_signature``). Seen-item exclusion is not inside the SavedModel: ask for
``k + (items the user has seen)`` and filter, as ``Recommender.recommend`` does with ``exclude``.

Signatures of the exported module (``tf.saved_model.load(path)``):

- ``recommend(user_id)`` (user-table exports): {"item_ids": (n, k) external ids, "scores": (n, k),
  "known": (n,) bool}; unknown users get a zero query vector (i.e. the item-bias ranking).
- ``recommend_query(inputs)`` (query-model exports): the same from ``query_model(inputs)``.
- ``query(...)``: the query vectors alone (what faiss searches with).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

import research  # noqa: F401

INDEXES = ("brute_force", "faiss")


def _augment(item_vectors: np.ndarray, item_bias: np.ndarray | None) -> np.ndarray:
    v = np.asarray(item_vectors, dtype=np.float32)
    if item_bias is not None:
        v = np.concatenate([v, np.asarray(item_bias, np.float32).reshape(-1, 1)], axis=1)
    return v


class _TopK(tf.Module):
    """The exported module (built by ``export_topk``)."""

    def __init__(self, item_vectors, item_ids, k, bias: bool, user_vectors=None, user_ids=None,
                 query_model=None, query_signature=None):
        super().__init__()
        self.items = tf.Variable(item_vectors, trainable=False, name="item_index")
        self.item_ids = tf.Variable(item_ids, trainable=False, name="item_ids")
        self.k = int(min(k, len(item_ids)))
        self.bias = bool(bias)
        if user_vectors is not None:
            self.users = tf.Variable(np.asarray(user_vectors, np.float32), trainable=False, name="user_table")
            key_dtype = tf.string if np.asarray(user_ids).dtype.kind in "OUS" else tf.int64
            keys = tf.constant(np.asarray(user_ids).astype(str if key_dtype == tf.string else np.int64))
            self.user_lookup = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(user_ids), dtype=tf.int64)), default_value=-1)
            self.query = tf.function(self._user_query, input_signature=[tf.TensorSpec([None], key_dtype)])
            self.recommend = tf.function(self._recommend_users, input_signature=[tf.TensorSpec([None], key_dtype)])
        if query_model is not None:
            self.query_model = query_model
            self.query = tf.function(self._model_query, input_signature=query_signature)
            self.recommend_query = tf.function(self._recommend_query, input_signature=query_signature)

    def _with_bias(self, q):
        if self.bias:
            q = tf.concat([q, tf.ones_like(q[:, :1])], axis=1)
        return q

    def _user_query(self, user_id):
        idx = self.user_lookup.lookup(user_id)
        known = idx >= 0
        q = tf.gather(self.users, tf.maximum(idx, 0))
        q = tf.where(known[:, None], q, tf.zeros_like(q))
        return {"query": self._with_bias(q), "known": known}

    def _model_query(self, *inputs):
        q = tf.cast(self.query_model(*inputs), tf.float32)
        return {"query": self._with_bias(q), "known": tf.ones(tf.shape(q)[:1], tf.bool)}

    def _top_k(self, q):
        scores = tf.matmul(q, self.items, transpose_b=True)
        vals, pos = tf.math.top_k(scores, k=self.k, sorted=True)
        return vals, tf.gather(self.item_ids, pos)

    def _recommend_users(self, user_id):
        out = self._user_query(user_id)
        vals, ids = self._top_k(out["query"])
        return {"item_ids": ids, "scores": vals, "known": out["known"]}

    def _recommend_query(self, *inputs):
        out = self._model_query(*inputs)
        vals, ids = self._top_k(out["query"])
        return {"item_ids": ids, "scores": vals, "known": out["known"]}


def export_topk(path, item_vectors: np.ndarray, item_ids: np.ndarray, *, k: int = 10,
                item_bias: np.ndarray | None = None, user_vectors: np.ndarray | None = None,
                user_ids: np.ndarray | None = None, query_model=None, query_signature=None,
                index: str = "brute_force") -> Path:
    """Write a top-k SavedModel under ``path``.

    Args:
        path: output folder (created; a SavedModel, plus ``topk.json`` and, for faiss, ``items.faiss``).
        item_vectors: (n_candidates, d) item embeddings, already restricted to the candidates.
        item_ids: (n_candidates,) external ids returned for them (int64 or str).
        k: list length.
        item_bias: optional (n_candidates,) additive item score.
        user_vectors, user_ids: a user table and its external ids (the ``recommend`` signature).
        query_model: alternatively, a Keras model / tf.Module mapping inputs to query vectors
            (the ``recommend_query`` signature); ``query_signature`` is its list of ``tf.TensorSpec``.
        index: "brute_force" (inside the SavedModel) or "faiss" (exact inner-product faiss index file
            beside it, searched by ``load_topk``).

    Returns:
        ``path``.
    """
    if index not in INDEXES:
        raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
    if (user_vectors is None) == (query_model is None):
        raise ValueError("give exactly one of user_vectors (with user_ids) or query_model")
    if user_vectors is not None and (user_ids is None or len(user_ids) != len(user_vectors)):
        raise ValueError("user_ids must give one external id per row of user_vectors")
    if query_model is not None and query_signature is None:
        raise ValueError("query_model needs query_signature (a list of tf.TensorSpec)")
    item_ids = np.asarray(item_ids)
    vecs = _augment(item_vectors, item_bias)
    if len(vecs) != len(item_ids):
        raise ValueError(f"{len(vecs)} item vectors but {len(item_ids)} item ids")
    ids = item_ids.astype(str) if item_ids.dtype.kind in "OUS" else item_ids.astype(np.int64)
    module = _TopK(vecs, ids, k, item_bias is not None, user_vectors, user_ids, query_model, query_signature)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sigs = {"query": module.query}
    if user_vectors is not None:
        sigs["recommend"] = module.recommend
    else:
        sigs["recommend_query"] = module.recommend_query
    tf.saved_model.save(module, str(path), signatures=sigs)
    if index == "faiss":
        import faiss

        fi = faiss.IndexFlatIP(vecs.shape[1])
        fi.add(np.ascontiguousarray(vecs))
        faiss.write_index(fi, str(path / "items.faiss"))
        np.save(path / "item_ids.npy", ids)
    (path / "topk.json").write_text(json.dumps({"k": module.k, "index": index, "bias": item_bias is not None,
                                                "n_items": int(len(ids)), "dim": int(vecs.shape[1]),
                                                "query": "user_table" if user_vectors is not None else "model"}))
    return path


def export_recommender(model, path, k: int = 10, index: str = "brute_force",
                       candidates: np.ndarray | None = None) -> Path:
    """Export a fitted factorised ``KerasRecommender`` (``user_vectors`` + ``item_vectors`` and,
    if it has one, ``item_bias()``) with ids from its vocabularies.

    Args:
        model: e.g. a fitted ``EmbeddingDot``.
        path: output folder.
        k: list length.
        index: "brute_force" or "faiss".
        candidates: boolean mask over items (default: items with training ratings, the harness's
            candidates; ``fit_state["trained_items"]``).
    """
    users, items = model.user_vectors(), model.item_vectors()
    if users is None or items is None:
        raise ValueError(f"{type(model).__name__} has no user/item vectors; export its query model "
                         f"with export_topk(query_model=...)")
    if candidates is None:
        candidates = model.fit_state.get("trained_items")
    cand = np.flatnonzero(candidates) if candidates is not None else np.arange(len(items))
    bias = model.item_bias()[cand] if hasattr(model, "item_bias") else None
    return export_topk(path, np.asarray(items)[cand], model.meta.items.ids(cand), k=k, item_bias=bias,
                       user_vectors=users, user_ids=model.meta.users.values, index=index)


def load_topk(path):
    """Load an export; returns ``recommend(user_ids) -> (item_ids, scores)`` numpy arrays (n, k).

    With a faiss export the query vectors come from the SavedModel and the search from faiss.
    """
    path = Path(path)
    info = json.loads((path / "topk.json").read_text())
    module = tf.saved_model.load(str(path))
    sig = "recommend" if info["query"] == "user_table" else "recommend_query"
    if info["index"] == "brute_force":
        fn = getattr(module, sig)

        def recommend(*inputs):
            out = fn(*[tf.constant(x) for x in inputs])
            ids = out["item_ids"].numpy()
            return (ids.astype(str) if ids.dtype.kind in "OS" else ids), out["scores"].numpy()

        recommend.module = module  # the signature's variables live as long as the module
        return recommend
    import faiss

    fi = faiss.read_index(str(path / "items.faiss"))
    ids = np.load(path / "item_ids.npy")

    def recommend_faiss(*inputs):
        q = module.query(*[tf.constant(x) for x in inputs])["query"].numpy()
        scores, pos = fi.search(np.ascontiguousarray(q, dtype=np.float32), info["k"])
        return ids[pos], scores

    recommend_faiss.module = module
    return recommend_faiss
