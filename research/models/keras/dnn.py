"""``dnn``: a ranking MLP (optionally Deep & Cross) over user, anime and side-feature embeddings.

r̂(u, i) = μ + b_u + b_i + MLP([p_u, q_i, p_u ⊙ q_i, side(i)]), where ``side(i)`` is the anime's
genres, studios, type, source and log-episodes embedding (``features.item_encoder``) and the MLP
input first goes through ``cross_layers`` ``tfrs.layers.dcn.Cross`` layers when asked (DCN-v2's
stacked structure: cross layers, then the deep layers). μ is the mean training rating; the biases
are learned (as in ``bias``, so the network only has to learn the interaction part). Trained with
``tfrs.tasks.Ranking`` (mean squared error, RMSE metric) and Adam; early stopping on validation
RMSE keeps the best epoch. Predictions are on the rating scale, clipped to the training range.

Regularisation: an L2 penalty on the batch's embedding rows divided by the row's training count
(the sparse form of a table penalty, as in ``embedding_dot``), dropout between the deep layers.

``score`` is the predicted rating of every anime that has a training row (other anime get -inf:
the harness never recommends them, and running the MLP over the whole catalogue for every user
would be wasted time).
"""
from __future__ import annotations

import numpy as np

from research.data.interactions import Interactions
from research.errors import ConfigError
from research.models.keras.common import KerasRecommender, TFRSModel, tf, tfrs
from research.models.keras.features import build_item_features, item_encoder

_FEATURES = ("genres", "studios", "type", "source", "episodes")


class _DNNModel(TFRSModel):
    def __init__(self, n_users, n_items, dim, layers, cross_layers, dropout, l2, bias_l2, mu, item_features,
                 feature_dims, use_features, user_weight, item_weight):
        super().__init__()
        init = lambda: tf.keras.initializers.RandomNormal(stddev=0.01)  # noqa: E731 (one instance per table)
        self.user_embedding = tf.keras.layers.Embedding(n_users, dim, embeddings_initializer=init(),
                                                        name="user_embedding")
        self.item_embedding = tf.keras.layers.Embedding(n_items, dim, embeddings_initializer=init(),
                                                        name="item_embedding")
        self.user_bias = tf.keras.layers.Embedding(n_users, 1, embeddings_initializer="zeros", name="user_bias")
        self.item_bias = tf.keras.layers.Embedding(n_items, 1, embeddings_initializer="zeros", name="item_bias")
        self.side = item_encoder(item_features, feature_dims, use=use_features) if use_features else None
        self.cross = [tfrs.layers.dcn.Cross(name=f"cross_{j}") for j in range(cross_layers)]
        self.deep = []
        for j, units in enumerate(layers):
            self.deep.append(tf.keras.layers.Dense(units, activation="relu", name=f"dense_{j}"))
            if dropout:
                self.deep.append(tf.keras.layers.Dropout(dropout, name=f"dropout_{j}"))
        self.out = tf.keras.layers.Dense(1, kernel_initializer="zeros", name="out")
        self.mu, self.l2, self.bias_l2 = float(mu), float(l2), float(bias_l2)
        self.user_weight = tf.constant(user_weight, tf.float32)
        self.item_weight = tf.constant(item_weight, tf.float32)
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(),
                                       metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])

    def _forward(self, inputs, training):
        u, i = inputs["user"], inputs["item"]
        p, q = self.user_embedding(u), self.item_embedding(i)
        bu, bi = tf.squeeze(self.user_bias(u), -1), tf.squeeze(self.item_bias(i), -1)
        parts = [p, q, p * q]
        if self.side is not None:
            parts.append(self.side(i))
        x0 = tf.concat(parts, axis=-1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        for layer in self.deep:
            x = layer(x, training=training)
        pred = self.mu + bu + bi + tf.squeeze(self.out(x), -1)
        return pred, p, q, bu, bi

    def call(self, inputs, training=False):
        return self._forward(inputs, training)[0]

    def compute_loss(self, inputs, training=False):
        pred, p, q, bu, bi = self._forward(inputs, training)
        loss = self.task(labels=inputs["rating"], predictions=pred)
        if training:
            wu = tf.gather(self.user_weight, inputs["user"])
            wi = tf.gather(self.item_weight, inputs["item"])
            reg = self.l2 * (wu * tf.reduce_sum(p * p, -1) + wi * tf.reduce_sum(q * q, -1))
            reg += self.bias_l2 * (wu * bu * bu + wi * bi * bi)
            loss += tf.reduce_mean(reg)
        return loss


class DNN(KerasRecommender):
    """Ranking MLP / DCN over id and side-feature embeddings (see the module docstring).

    Args:
        dim: user and anime embedding size.
        layers: units of the deep (ReLU) layers.
        cross_layers: ``tfrs.layers.dcn.Cross`` layers before the deep ones (0 = plain MLP).
        dropout: dropout rate after each deep layer.
        l2: L2 weight on the user / anime vectors (per row, divided by its training count).
        bias_l2: the same for the biases (the damping of ``bias``).
        side_features: side features of the anime, among "genres", "studios", "type", "source",
            "episodes" (empty list: ids only).
        feature_dims: embedding size per side feature, e.g. ``{"genres": 16}`` (see ``item_encoder``).
        clip: clip predictions to the training rating range.
        epochs, batch_size, learning_rate, patience, ...: see ``KerasRecommender``.
    """

    predicts_ratings = True
    monitor = "val_rmse"
    monitor_mode = "min"
    rated_only = True

    train_defaults = {"epochs": 40, "batch_size": 2048, "learning_rate": 0.003}

    def __init__(self, dim: int = 32, layers: list = (64, 32), cross_layers: int = 1, dropout: float = 0.1,
                 l2: float = 5.0, bias_l2: float = 5.0, side_features: list = _FEATURES,
                 feature_dims: dict | None = None, clip: bool = True, seed: int = 0, **train):
        super().__init__(seed=seed, **train)
        bad = [f for f in side_features if f not in _FEATURES]
        if bad:
            raise ConfigError(f"unknown dnn feature(s) {bad} (valid: {', '.join(_FEATURES)})")
        if int(dim) < 1 or any(int(u) < 1 for u in layers) or int(cross_layers) < 0:
            raise ConfigError("dim and layer sizes must be >= 1, cross_layers >= 0")
        if not 0 <= dropout < 1 or l2 < 0 or bias_l2 < 0:
            raise ConfigError("dropout must be in [0, 1), l2 and bias_l2 >= 0")
        self.dim = int(dim)
        self.layers = [int(u) for u in layers]
        self.cross_layers = int(cross_layers)
        self.dropout = float(dropout)
        self.l2, self.bias_l2 = float(l2), float(bias_l2)
        self.side_features = list(side_features)
        self.feature_dims = dict(feature_dims or {})
        self.clip = bool(clip)

    def prepare(self, train: Interactions) -> dict:
        r = train.rating[train.rated].astype(np.float64)
        if r.size == 0:
            raise ConfigError("dnn needs rated training rows")
        n_u = np.bincount(train.user[train.rated], minlength=train.n_users).astype(np.float32)
        n_i = np.bincount(train.item[train.rated], minlength=train.n_items).astype(np.float32)
        return {"mu": float(r.mean()), "lo": float(r.min()), "hi": float(r.max()),
                "trained_items": np.bincount(train.item, minlength=train.n_items) > 0,
                "user_count": n_u, "item_count": n_i}

    def build_model(self):
        st = self.fit_state
        if getattr(self, "_features_of", None) is not self.meta:  # built once per data set
            self._item_features, self._features_of = build_item_features(self.meta, synopsis_terms=0), self.meta
        return _DNNModel(self.meta.n_users, self.meta.n_items, self.dim, self.layers, self.cross_layers,
                         self.dropout, self.l2, self.bias_l2, st["mu"], self._item_features, self.feature_dims,
                         tuple(self.side_features), 1.0 / np.maximum(st["user_count"], 1.0),
                         1.0 / np.maximum(st["item_count"], 1.0))

    def after_fit(self) -> None:
        self._P = self.model.user_embedding.embeddings.numpy()
        self._Q = self.model.item_embedding.embeddings.numpy()

    def predict(self, users, items):
        users, items = np.asarray(users, np.int32), np.asarray(items, np.int32)
        p = self.predict_features({"user": users, "item": items}).astype(np.float64)
        return np.clip(p, self.fit_state["lo"], self.fit_state["hi"]) if self.clip else p

    def score(self, users):
        users = np.asarray(users, np.int32)
        items = np.flatnonzero(self.fit_state["trained_items"]).astype(np.int32)
        out = np.full((len(users), self.meta.n_items), -np.inf)
        if len(items):
            p = self.predict_features({"user": np.repeat(users, len(items)), "item": np.tile(items, len(users))})
            out[:, items] = p.reshape(len(users), len(items))
        return out

    def item_vectors(self):
        return self._Q

    def user_vectors(self):
        return self._P
