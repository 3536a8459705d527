"""Item side features for the Keras models (``dnn``, ``two_tower``), as dense numpy arrays
indexed by item index, and the Keras layer that embeds them.

``build_item_features(meta)`` turns ``meta.item_table`` into fixed-shape integer / float arrays
(one row per item of the run's vocabulary), so that a model can keep them as constant tables and
look them up by item index inside the graph: the input pipelines carry only (user, item, rating),
and an anime nobody rated still has features. Every vocabulary here is built from the catalogue
(side information known before any rating), never from the ratings, so no split leaks into it.

- ``genres`` / ``studios``: multi-valued, padded id lists (0 = padding), embedded as a mean bag.
- ``type`` / ``source``: one id each (0 = unknown), embedded (equivalent to a one-hot + Dense).
- ``episodes``: ``log1p(episodes)`` standardised over the catalogue, plus a "missing" flag.
- ``synopsis``: the ``synopsis_terms`` highest-TF-IDF terms of each synopsis (a vocabulary of the
  ``synopsis_vocab`` most frequent informative words, English stop words removed), as padded ids.

The catalogue's ``score`` and ``members`` are deliberately not features: MAL computed them from
all its users, including the ratings a test split holds out, so they leak the target.

TensorFlow is only imported by ``ItemFeatureEncoder`` (the numpy part is TF-free).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from research.data.interactions import Meta

#: the integer id columns of an ``ItemFeatures`` and their padded widths (2-d) or scalars (1-d)
ID_COLUMNS = ("genres", "studios", "type", "source", "synopsis")


@dataclass
class ItemFeatures:
    """Side features of every item, row ``i`` = item index ``i``.

    Attributes:
        genres: (n_items, max_genres) int32 ids into ``vocabs["genres"]`` (1-based, 0 = padding).
        studios: (n_items, max_studios) int32, likewise.
        type: (n_items,) int32 (0 = unknown).
        source: (n_items,) int32 (0 = unknown).
        synopsis: (n_items, synopsis_terms) int32 term ids (0 = padding).
        numeric: (n_items, 2) float32: standardised log1p(episodes) (0 when unknown), unknown flag.
        vocabs: name -> list of values; id ``j`` (>= 1) is ``vocabs[name][j - 1]``.
    """

    genres: np.ndarray
    studios: np.ndarray
    type: np.ndarray
    source: np.ndarray
    synopsis: np.ndarray
    numeric: np.ndarray
    vocabs: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.type)

    def vocab_size(self, name: str) -> int:
        """Number of ids of column ``name`` including the 0 (padding / unknown) id."""
        return len(self.vocabs.get(name, [])) + 1

    def arrays(self) -> dict[str, np.ndarray]:
        """The feature arrays by name (what the encoder gathers from)."""
        return {"genres": self.genres, "studios": self.studios, "type": self.type, "source": self.source,
                "synopsis": self.synopsis, "numeric": self.numeric}

    def has_any(self) -> np.ndarray:
        """Boolean per item: at least one known side feature (a cold item can be embedded)."""
        return ((self.genres > 0).any(1) | (self.studios > 0).any(1) | (self.type > 0) | (self.source > 0)
                | (self.synopsis > 0).any(1) | (self.numeric[:, 1] == 0))


def _column(meta: Meta, name: str, n: int, default):
    t = meta.item_table
    if t is None or name not in t:
        return [default] * n
    return list(t[name].to_numpy(dtype=object))


def _clean_str(v) -> str | None:
    if isinstance(v, str):
        v = v.strip()
        return v if v and v.lower() != "unknown" else None
    return None


def _clean_list(v) -> list[str]:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [s for s in (_clean_str(x) for x in v) if s]
    if isinstance(v, str):  # a comma-separated string, as in the raw CSVs
        return [s for s in (_clean_str(x) for x in v.split(",")) if s]
    return []


def _multi(values: list[list[str]], max_len: int, min_count: int) -> tuple[np.ndarray, list[str]]:
    counts: dict[str, int] = {}
    for vs in values:
        for v in set(vs):
            counts[v] = counts.get(v, 0) + 1
    vocab = sorted(v for v, c in counts.items() if c >= min_count)
    index = {v: j + 1 for j, v in enumerate(vocab)}
    width = max(1, min(max_len, max((len(vs) for vs in values), default=1)))
    out = np.zeros((len(values), width), dtype=np.int32)
    for i, vs in enumerate(values):
        ids = [index[v] for v in vs if v in index][:width]
        out[i, :len(ids)] = ids
    return out, vocab


def _single(values: list, min_count: int) -> tuple[np.ndarray, list[str]]:
    ids, vocab = _multi([[s] if (s := _clean_str(v)) else [] for v in values], 1, min_count)
    return ids[:, 0], vocab


def _synopsis_terms(texts: list, vocab_size: int, n_terms: int, min_df: int) -> tuple[np.ndarray, list[str]]:
    out = np.zeros((len(texts), n_terms), dtype=np.int32)
    docs = [t if isinstance(t, str) else "" for t in texts]
    if n_terms <= 0 or vocab_size <= 0 or not any(docs):
        return out, []
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(max_features=vocab_size, stop_words="english", min_df=min_df, sublinear_tf=True,
                          token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    try:
        m = vec.fit_transform(docs).tocsr()
    except ValueError:  # empty vocabulary (e.g. tiny synthetic catalogues)
        return out, []
    for i in range(m.shape[0]):
        s, e = m.indptr[i], m.indptr[i + 1]
        if s == e:
            continue
        cols, vals = m.indices[s:e], m.data[s:e]
        top = cols[np.lexsort((cols, -vals))[:n_terms]]
        out[i, :len(top)] = top + 1
    return out, [str(t) for t in vec.get_feature_names_out()]


def build_item_features(meta: Meta, max_genres: int = 12, max_studios: int = 4, min_count: int = 2,
                        synopsis_vocab: int = 5000, synopsis_terms: int = 24,
                        synopsis_min_df: int = 3) -> ItemFeatures:
    """Side-feature arrays for every item of ``meta`` (missing table or columns give all-unknown).

    Args:
        meta: the run's vocabularies and item table.
        max_genres, max_studios: padded widths (longer lists are cut).
        min_count: a genre / studio / type / source value must occur on at least this many catalogue
            rows to get its own id (rarer ones map to unknown: an id seen once cannot generalise).
        synopsis_vocab: synopsis words kept (the most frequent, after stop words and ``min_df``).
        synopsis_terms: terms kept per synopsis, highest TF-IDF first (0 disables the synopsis).
        synopsis_min_df: a word must occur in at least this many synopses.

    Returns:
        An ``ItemFeatures`` with ``meta.n_items`` rows.
    """
    n = meta.n_items
    genres, gv = _multi([_clean_list(v) for v in _column(meta, "genres", n, [])], max_genres, min_count)
    studios, sv = _multi([_clean_list(v) for v in _column(meta, "studios", n, [])], max_studios, min_count)
    typ, tv = _single(_column(meta, "type", n, None), min_count)
    src, rv = _single(_column(meta, "source", n, None), min_count)
    syn, synv = _synopsis_terms(_column(meta, "synopsis", n, None), synopsis_vocab, synopsis_terms, synopsis_min_df)
    eps = np.asarray(pd_numeric(_column(meta, "episodes", n, np.nan)), dtype=np.float64)
    known = np.isfinite(eps) & (eps > 0)
    log_eps = np.log1p(np.where(known, eps, 0.0))
    if known.any():
        mu, sd = log_eps[known].mean(), log_eps[known].std()
        log_eps = np.where(known, (log_eps - mu) / (sd if sd > 0 else 1.0), 0.0)
    numeric = np.stack([log_eps, (~known).astype(np.float64)], axis=1).astype(np.float32)
    return ItemFeatures(genres=genres, studios=studios, type=typ, source=src, synopsis=syn, numeric=numeric,
                        vocabs={"genres": gv, "studios": sv, "type": tv, "source": rv, "synopsis": synv})


def pd_numeric(values: list) -> np.ndarray:
    """Floats from a mixed list (numbers, numeric strings, 'Unknown', None) with NaN for the rest."""
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def item_encoder(features: ItemFeatures, dims: dict | None = None, l2: float = 0.0,
                 use: tuple = ("genres", "studios", "type", "source", "episodes", "synopsis"),
                 name: str = "item_features"):
    """A Keras layer mapping item indices (any shape) to the concatenated side-feature embeddings.

    Each multi-valued feature is a masked mean of its embeddings (an empty list gives zeros);
    single ids are embedded (id 0 = unknown has its own learned vector); episodes enter as the two
    numeric columns. The feature tables are constants inside the layer, looked up by item index.

    Args:
        features: from ``build_item_features``.
        dims: embedding width per feature (defaults: genres 16, studios 16, type 4, source 4,
            synopsis 16).
        l2: L2 penalty on the feature embeddings.
        use: which features to include.
        name: layer name.

    Returns:
        A ``tf.keras.layers.Layer``; ``layer.output_dim`` is the width of its output.
    """
    import tensorflow as tf

    d = {"genres": 16, "studios": 16, "type": 4, "source": 4, "synopsis": 16, **(dims or {})}
    reg = tf.keras.regularizers.l2(l2) if l2 else None

    class ItemFeatureEncoder(tf.keras.layers.Layer):
        def __init__(self):
            super().__init__(name=name)
            self.use = tuple(u for u in use if u == "episodes" or features.vocab_size(u) > 1)
            self.tables = {k: tf.constant(v) for k, v in features.arrays().items()}
            self.emb = {}
            for k in self.use:
                if k == "episodes":
                    continue
                self.emb[k] = tf.keras.layers.Embedding(features.vocab_size(k), d[k], embeddings_regularizer=reg,
                                                        embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05),
                                                        name=f"{k}_embedding")
            self.output_dim = sum(2 if k == "episodes" else d[k] for k in self.use)

        def call(self, items):
            items = tf.cast(items, tf.int32)
            parts = []
            for k in self.use:
                if k == "episodes":
                    parts.append(tf.gather(self.tables["numeric"], items))
                elif k in ("type", "source"):
                    parts.append(self.emb[k](tf.gather(self.tables[k], items)))
                else:  # bag: masked mean over the padded id list
                    ids = tf.gather(self.tables[k], items)
                    mask = tf.cast(ids > 0, tf.float32)[..., None]
                    summed = tf.reduce_sum(self.emb[k](ids) * mask, axis=-2)
                    parts.append(summed / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0))
            return tf.concat(parts, axis=-1)

    return ItemFeatureEncoder()
