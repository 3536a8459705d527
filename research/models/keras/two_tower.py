"""``two_tower``: retrieval with a user tower and an anime tower, ``tfrs.tasks.Retrieval``.

- Anime tower: an anime-id embedding (initialised at zero, so an anime nobody interacted with is
  embedded by its features alone) concatenated with the side features of ``features.item_encoder``
  (genres, studios, type, source, log episodes, the top TF-IDF terms of the synopsis), then a
  Dense projection to ``dim`` and an L2 normalisation.
- User tower: a user-id embedding (zero-initialised too) concatenated with the mean of a history
  embedding over the user's *training* anime, then a Dense projection and L2 normalisation. While
  training on the pair (u, i), i is taken out of u's history mean (otherwise the tower learns to
  find i in its own input, which it cannot do at test time).
- Loss: in-batch softmax over the batch's anime (``tfrs.tasks.Retrieval``) with a temperature
  (logits are cosines / ``temperature``), accidental hits (the same anime twice in a batch) removed,
  and the log-frequency ("logQ") sampling-bias correction: in-batch negatives are drawn in
  proportion to popularity, so without it popular anime are over-penalised.
- Trained on every training interaction (rated or "watched"), optionally weighted by rating.
- Early stopping on the validation part's ndcg@``val_k``, computed in the graph exactly as the
  harness does on ``part="val"`` (candidates: anime with a training row; each user's training anime
  excluded; every validation anime relevant), over at most ``val_users`` validation users.
  ``FactorizedTopK`` is not used: it cannot exclude seen anime, so its numbers would not be the
  harness's.

``score(users)`` is the dot product of the user vector with every anime vector (both from the
towers, computed once after fitting); ``similar_items`` / ``similar_users`` use the same vectors.
"""
from __future__ import annotations

import numpy as np

from research.data.interactions import Interactions
from research.errors import ConfigError
from research.models.keras.common import KerasRecommender, TFRSModel, tf, tfrs
from research.models.keras.features import build_item_features, item_encoder
from research.models.keras.validation import ndcg_at_k, validation_targets
from research.seeding import child_seed

_FEATURES = ("genres", "studios", "type", "source", "episodes", "synopsis")


class _TwoTowerModel(TFRSModel):
    def __init__(self, n_users, n_items, id_dim, dim, item_features, feature_dims, use_features, history,
                 hist_indptr, hist_items, candidates, log_q, temperature, l2, val_k):
        super().__init__()
        zeros = "zeros"
        self.n_items = n_items
        self.item_id = tf.keras.layers.Embedding(n_items, id_dim, embeddings_initializer=zeros, name="item_id_embedding")
        self.side = item_encoder(item_features, feature_dims, use=use_features) if use_features else None
        self.item_proj = tf.keras.layers.Dense(dim, name="item_projection")
        self.user_id = tf.keras.layers.Embedding(n_users, id_dim, embeddings_initializer=zeros, name="user_id_embedding")
        self.use_history = bool(history)
        self.hist_emb = tf.keras.layers.Embedding(n_items, id_dim, embeddings_initializer=zeros, name="history_embedding")
        self.user_proj = tf.keras.layers.Dense(dim, name="user_projection")
        # each user's training anime, as a ragged table (row u = u's distinct anime)
        self.hist = tf.RaggedTensor.from_row_splits(tf.constant(hist_items, tf.int32),
                                                    tf.constant(hist_indptr, tf.int64))
        self.candidates = tf.constant(candidates, tf.bool)
        self.log_q = tf.constant(log_q, tf.float32)
        self.l2 = float(l2)
        self.val_k = int(val_k)
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)
        self.ndcg = tf.keras.metrics.Mean(name=f"ndcg_at_{val_k}")

    # ---- towers --------------------------------------------------------------------------
    def item_tower(self, items):
        parts = [self.item_id(items)]
        if self.side is not None:
            parts.append(self.side(items))
        return tf.math.l2_normalize(self.item_proj(tf.concat(parts, -1)), axis=-1)

    def user_tower(self, users, leave_out=None):
        parts = [self.user_id(users)]
        if self.use_history:
            # each distinct user's history is summed once per batch (a batch of B pairs holds far
            # fewer distinct users than B, and every history row costs a lookup and a gradient row)
            uniq, pos = tf.unique(users)
            rows = tf.gather(self.hist, uniq)  # (U, None) anime ids
            sums = tf.math.unsorted_segment_sum(self.hist_emb(rows.flat_values), rows.value_rowids(),
                                                tf.size(uniq))
            total = tf.gather(sums, pos)
            count = tf.cast(tf.gather(rows.row_lengths(), pos), tf.float32)[:, None]
            if leave_out is not None:  # training pair (u, i): i is in u's history, take it out
                total -= self.hist_emb(leave_out)
                count -= 1.0
            parts.append(total / tf.maximum(count, 1.0))
        return tf.math.l2_normalize(self.user_proj(tf.concat(parts, -1)), axis=-1)

    def call(self, inputs, training=False):
        """User vectors for ``inputs["user"]``. The anime tower is run too (on ``inputs["item"]``, or
        anime 0) so that one call builds every variable, as checkpoint restoring needs."""
        users = inputs["user"]
        self.item_tower(inputs["item"] if "item" in inputs else tf.zeros_like(users))
        return self.user_tower(users)

    # ---- training ------------------------------------------------------------------------
    def compute_loss(self, inputs, training=False):
        users, items = inputs["user"], inputs["item"]
        q = self.user_tower(users, leave_out=items if self.use_history else None)
        c = self.item_tower(items)
        loss = self.task(q, c, sample_weight=inputs.get("weight"),
                         candidate_sampling_probability=tf.exp(tf.gather(self.log_q, items)),
                         candidate_ids=items, compute_metrics=False, compute_batch_metrics=False)
        if self.l2:
            loss += self.l2 * (tf.reduce_sum(self.user_id(users) ** 2) + tf.reduce_sum(self.item_id(items) ** 2))
        return loss

    def train_step(self, inputs):
        logs = super().train_step(inputs)
        return {"loss": logs["loss"]}  # the validation ndcg does not apply to training batches

    def test_step(self, inputs):
        """ndcg@k of the batch's validation users, as the harness computes it on ``part="val"``."""
        users, targets = inputs["user"], inputs["targets"]  # targets: (B, T) anime, -1 = padding
        q = self.user_tower(users)
        c = self.item_tower(tf.range(self.n_items))
        s = tf.matmul(q, c, transpose_b=True)
        self.ndcg.update_state(ndcg_at_k(s, self.candidates, tf.gather(self.hist, users), targets, self.val_k))
        return {self.ndcg.name: self.ndcg.result()}


class TwoTower(KerasRecommender):
    """Two-tower retrieval model (see the module docstring).

    Args:
        dim: output size of both towers (the space ``score`` works in).
        id_dim: size of the user-id, anime-id and history embeddings.
        use_history: add the mean history embedding to the user tower.
        side_features: anime side features among "genres", "studios", "type", "source",
            "episodes", "synopsis" (empty: ids only, and cold anime all get the same vector).
        feature_dims: embedding size per side feature (see ``features.item_encoder``).
        synopsis_terms: top TF-IDF terms kept per synopsis; synopsis_vocab: words kept overall.
        temperature: softmax temperature on the cosine logits.
        sampling_correction: subtract log(training frequency) from in-batch logits (logQ).
        rating_weight: weight of a rated interaction = 1 + rating_weight * (r - μ) / σ, floored at
            0.1; unrated ones weigh 1 (0 = all interactions equal).
        l2: L2 penalty on the batch's user-id and anime-id embedding rows.
        val_k: cut-off of the validation ndcg used for early stopping.
        val_users: at most this many validation users (a seeded sample) for that ndcg.
        epochs, batch_size, learning_rate, patience, ...: see ``KerasRecommender``.
    """

    predicts_ratings = False
    monitor = "val_ndcg_at_10"
    monitor_mode = "max"
    rated_only = False

    train_defaults = {"epochs": 40, "batch_size": 1024, "learning_rate": 0.003, "patience": 4, "eval_batch_size": 4096}

    def __init__(self, dim: int = 64, id_dim: int = 32, use_history: bool = True,
                 side_features: list = _FEATURES, feature_dims: dict | None = None, synopsis_terms: int = 24,
                 synopsis_vocab: int = 5000, temperature: float = 0.05, sampling_correction: bool = True,
                 rating_weight: float = 0.0, l2: float = 0.0, val_k: int = 10, val_users: int = 2000,
                 seed: int = 0, **train):
        super().__init__(seed=seed, **train)
        bad = [f for f in side_features if f not in _FEATURES]
        if bad:
            raise ConfigError(f"unknown two_tower feature(s) {bad} (valid: {', '.join(_FEATURES)})")
        if int(dim) < 1 or int(id_dim) < 1 or temperature <= 0 or int(val_k) < 1 or int(val_users) < 1:
            raise ConfigError("dim, id_dim, val_k, val_users must be >= 1 and temperature > 0")
        if l2 < 0 or rating_weight < 0:
            raise ConfigError("l2 and rating_weight must be >= 0")
        self.monitor = f"val_ndcg_at_{int(val_k)}"
        self.dim, self.id_dim = int(dim), int(id_dim)
        self.use_history = bool(use_history)
        self.side_features = list(side_features)
        self.feature_dims = dict(feature_dims or {})
        self.synopsis_terms, self.synopsis_vocab = int(synopsis_terms), int(synopsis_vocab)
        self.temperature = float(temperature)
        self.sampling_correction = bool(sampling_correction)
        self.rating_weight = float(rating_weight)
        self.l2 = float(l2)
        self.val_k, self.val_users = int(val_k), int(val_users)

    # ---- data ----------------------------------------------------------------------------
    def prepare(self, train: Interactions) -> dict:
        seen = train.to_csr("ones")
        counts = np.bincount(train.item, minlength=train.n_items).astype(np.float64)
        r = train.rating[train.rated].astype(np.float64)
        return {"hist_indptr": seen.indptr.astype(np.int64), "hist_items": seen.indices.astype(np.int32),
                "trained_items": counts > 0, "item_count": counts.astype(np.float32),
                "rating_mu": float(r.mean()) if r.size else 0.0, "rating_sd": float(r.std()) if r.size else 1.0}

    def features(self, data: Interactions, training: bool) -> dict[str, np.ndarray]:
        if training:
            cols = {"user": data.user.astype(np.int32), "item": data.item.astype(np.int32)}
            if self.rating_weight:
                st = self.fit_state
                z = (np.nan_to_num(data.rating, nan=st["rating_mu"]) - st["rating_mu"]) / max(st["rating_sd"], 1e-6)
                cols["weight"] = np.maximum(1.0 + self.rating_weight * z, 0.1).astype(np.float32)
            return cols
        # validation: one row per user, their validation anime padded with -1
        return validation_targets(data, self.val_users, child_seed(self.seed, "val_users"))

    def _item_features(self):
        if getattr(self, "_features_of", None) is not self.meta:  # built once per data set
            terms = self.synopsis_terms if "synopsis" in self.side_features else 0
            self._features, self._features_of = build_item_features(
                self.meta, synopsis_terms=terms, synopsis_vocab=self.synopsis_vocab), self.meta
        return self._features

    def build_model(self):
        st = self.fit_state
        counts = st["item_count"].astype(np.float64)
        # logQ: log of each anime's share of the training interactions (floored for unseen anime)
        log_q = np.log(np.maximum(counts, 1.0) / max(counts.sum(), 1.0)) if self.sampling_correction \
            else np.zeros(len(counts))
        return _TwoTowerModel(self.meta.n_users, self.meta.n_items, self.id_dim, self.dim, self._item_features(),
                              self.feature_dims, tuple(self.side_features), self.use_history, st["hist_indptr"],
                              st["hist_items"], st["trained_items"], log_q.astype(np.float32), self.temperature,
                              self.l2, self.val_k)

    def after_fit(self) -> None:
        m = self.model
        b = 8192
        self._items = np.concatenate([m.item_tower(tf.range(s, min(s + b, self.meta.n_items))).numpy()
                                      for s in range(0, self.meta.n_items, b)])
        self._users = np.concatenate([m.user_tower(tf.range(s, min(s + b, self.meta.n_users))).numpy()
                                      for s in range(0, self.meta.n_users, b)])

    # ---- inference -----------------------------------------------------------------------
    def score(self, users):
        return self._users[np.asarray(users)] @ self._items.T

    def item_vectors(self):
        return self._items

    def user_vectors(self):
        return self._users

    def embed_items(self, items) -> np.ndarray:
        """Anime-tower vectors for ``items`` (also for anime with no interaction)."""
        return self._items[np.asarray(items)]
