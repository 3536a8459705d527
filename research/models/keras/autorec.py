"""``autorec``: I-AutoRec (Sedhain, Menon, Sanner, Xie, WWW 2015, "AutoRec: Autoencoders Meet
Collaborative Filtering"), a rating model.

- **Input**: each anime's vector of user ratings r_i ∈ R^{n_users}, from the training rows with an
  explicit rating only (``Interactions.rated``; "watched without a score" rows are left out; a
  duplicate (user, anime) pair keeps its last row, as ``Interactions.to_csr``). Unobserved entries
  are 0 in the input and masked out of the loss. The observed entries are r − b(u, i) and b is
  added back to the output, with the baseline b (``centre``) 0 ("none", the paper's), μ the mean
  training rating ("mean"), or μ + b_u + b_i, the damped biases of ``bias`` ("bias", default).
- **Network**: h_i = sigmoid(W r_i + b) (``hidden`` units), r̂_i = V h_i + c (identity output, one
  unit per user): r̂(u, i) = V[:, u] · h_i + c_u + b(u, i). Weights Glorot-uniform, biases zero.
- **Loss**: the paper's objective Σ_i ‖(r_i − r̂_i) ⊙ m_i‖² + λ/2 (‖W‖² + ‖V‖²) (m_i: the observed
  mask, ``masked_sse``), divided by the number of observed training ratings N so that the logged
  loss reads as a training MSE plus the penalty's share. A batch of B of the n anime contributes
  (n / B) Σ_batch SSE / N + λ/2 (‖W‖² + ‖V‖²) / N, an unbiased estimate of that objective / N:
  over an epoch the gradient is the full objective's (÷ N, which Adam does not see). Adam, not the
  paper's L-BFGS / Rprop.
- **Data pipeline**: the training examples are anime (``features()`` yields ``{"item": int32}``,
  one row per anime with a training rating, index-shuffled per epoch by ``tfdata.from_arrays``);
  the Keras model holds the item x user rating matrix as a ragged table and densifies each batch
  in the graph (a scatter into (B, n_users) values and mask), as ``multvae`` does for users, so the
  ``KerasRecommender`` machinery (early stopping keeping the best epoch's weights, TensorBoard,
  resumable checkpoints, save / load of weights + arguments) is unchanged.
- **Validation / early stopping**: ``monitor = "val_rmse"``, the RMSE of the validation part's
  rated rows, predicted exactly as ``predict`` does (clipped, with the fallbacks below), i.e. the
  harness's rmse on ``part="val"``. TensorBoard: ``train/epoch_loss`` (the objective / N above,
  epoch mean), ``train/epoch_mse`` (masked training MSE), ``validation/epoch_rmse``.
- **Prediction**: ``predict(users, items)`` = r̂(u, i) clipped to the training rating range;
  users or anime with no rated training row get μ + b_u + b_i (μ unless ``centre="bias"``; the
  unknown side's bias is 0), since the network never saw them: an anime's input would be all
  zeros, a user's output unit only ever received the weight decay. ``score(users)``
  ranks by the same predicted rating, unclipped (as ``embedding_dot``: clipping would create
  ties at the top), the fallbacks as in ``predict``. The encoder input is always the training
  part (the validation ratings are never input, also not at inference).
- ``item_vectors()``: the hidden code h_i of each anime (zeros for anime with no rated training
  row, which puts them at cosine 0 from everything); ``user_vectors()``: V[:, u], the decoder's
  weights of each user's output unit (r̂(u, i) − c_u = V[:, u] · h_i: the user side of the same dot
  product).

Defaults: chosen on the validation part (its 8,000 rated rows) of seed 0 of
``experiments/configs/mal2020_sample.toml`` (train 71,999 rows), never on test, by a small manual
grid (``experiments/configs/tune_autorec.toml`` is the 20-trial search, not run yet). Validation
RMSE, hidden 500, batch 64 anime, Adam, patience 10, centre "bias", lr 1e-3 unless said:

- centring (λ = 300): "none" (the paper's raw ratings) 1.371, "mean" 1.336, "bias" 1.260. The
  bias-centred network starts from ``bias``'s predictions and only learns the residuals; the
  other two must carry each anime's mean in its code, and stop improving after 2-6 epochs (mean-centred at
  λ = 1: 1.345, best epoch 2).
- λ: 30 -> 1.256, 100 -> 1.254, 300 -> 1.260, 1000 -> 1.266 (best epoch 65 of 75).
- input dropout: 0.5 at λ = 300 -> 1.259; 0.25 at λ = 100 -> 1.254 (no gain: default 0).
- learning rate 3e-3: λ = 300 -> **1.2506** (best epoch 47), λ = 100 -> 1.273 (best epoch 6).

So hidden 500, λ = 300, lr 3e-3, batch 64, centre "bias". References on the same split: ``bias``
validation RMSE 1.266 (MAE 0.951), ``embedding_dot`` at its defaults 1.239 (MAE 0.928). On test
(each fitted on train, early stopping on validation): autorec RMSE 1.256 / MAE 0.941 / ndcg@10
0.084; ``bias`` 1.271 / 0.953 / 0.077; ``embedding_dot`` 1.242 / 0.930 / 0.099. Fit: 107-172 s
(57 epochs) on the shared, heavily loaded 2 cores.
"""
from __future__ import annotations

import numpy as np

from research.data import tfdata
from research.data.interactions import Interactions
from research.errors import ConfigError
from research.models.keras.common import KerasRecommender, TFRSModel, tf
from research.models.keras.tfrs_model import global_noise, num_replicas, replica_rows
from research.seeding import child_seed

CENTRES = ("none", "mean", "bias")


def masked_sse(pred, target, mask):
    """Σ mask ⊙ (pred − target)²: the squared error over the observed entries only (a scalar)."""
    return tf.reduce_sum(mask * tf.square(pred - target))


class _Decoder(tf.keras.layers.Layer):
    """r̂ = h V + c over every user, or only at one user per row (``users``: (B,) int32)."""

    def __init__(self, n_users: int, **kwargs):
        super().__init__(**kwargs)
        self.n_users = int(n_users)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.n_users),
                                      initializer=tf.keras.initializers.GlorotUniform(), trainable=True)
        self.bias = self.add_weight(name="bias", shape=(self.n_users,), initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, h, users=None):
        if users is None:
            return tf.matmul(h, self.kernel) + self.bias
        v = tf.gather(tf.transpose(self.kernel), users)  # (B, hidden)
        return tf.reduce_sum(h * v, axis=-1) + tf.gather(self.bias, users)


class _AutoRecNet(TFRSModel):
    def __init__(self, n_users, hidden, l2, dropout, table, n_rows, n_obs, offset, mu, bu, bi, lo, hi,
                 known_users, known_items, noise_seed):
        super().__init__()
        self.n_users = int(n_users)
        self.l2 = float(l2)
        self.dropout = float(dropout)
        self.noise_seed = int(noise_seed)
        self.n_rows = float(n_rows)  # anime with a training rating (the examples of an epoch)
        self.n_obs = float(max(n_obs, 1))  # observed training ratings
        # the baseline b(u, i) = offset + bu[u] + bi[i] subtracted from the ratings (0 / μ / biases)
        # and the fallback μ + bu[u] + bi[i] of unknown users and anime
        self.offset, self.mu = float(offset), float(mu)
        self.bu = tf.constant(np.asarray(bu, np.float32))
        self.bi = tf.constant(np.asarray(bi, np.float32))
        self.lo, self.hi = float(lo), float(hi)
        indptr, users, values = table
        splits = tf.constant(np.asarray(indptr, np.int64))
        self.users_of = tf.RaggedTensor.from_row_splits(tf.constant(np.asarray(users, np.int32)), splits)
        self.values_of = tf.RaggedTensor.from_row_splits(tf.constant(np.asarray(values, np.float32)), splits)
        self.known_users = tf.constant(np.asarray(known_users, bool))
        self.known_items = tf.constant(np.asarray(known_items, bool))
        self.encoder = tf.keras.layers.Dense(int(hidden), activation="sigmoid", name="encoder")
        self.decoder = _Decoder(self.n_users, name="decoder")
        self.mse_tracker = tf.keras.metrics.Mean(name="mse")
        self.rmse = tf.keras.metrics.RootMeanSquaredError(name="rmse")

    # ---- pieces --------------------------------------------------------------------------
    def baseline_rows(self, items):
        """(B, n_users): the baseline b(u, i) of every user for ``items``."""
        return self.offset + self.bu[None, :] + tf.gather(self.bi, items)[:, None]

    def dense_batch(self, items):
        """(values, mask), each (B, n_users): the anime's training ratings minus the baseline, and
        1 where observed; 0 elsewhere."""
        rows = tf.gather(self.users_of, items)
        rowids = tf.cast(rows.value_rowids(), tf.int32)
        users = rows.flat_values
        idx = tf.stack([rowids, users], axis=1)
        shape = tf.stack([tf.shape(items)[0], self.n_users])
        vals = (tf.gather(self.values_of, items).flat_values - self.offset - tf.gather(self.bu, users)
                - tf.gather(tf.gather(self.bi, items), rowids))
        return tf.scatter_nd(idx, vals, shape), tf.scatter_nd(idx, tf.ones_like(vals), shape)

    def code(self, items):
        """The hidden code h_i of ``items`` (B, hidden)."""
        return self.encoder(self.dense_batch(items)[0])

    def rating_at(self, users, items):
        """What ``predict`` returns, in the graph: clipped r̂(u, i); the fallback for unknown users
        and anime."""
        b = tf.gather(self.bu, users) + tf.gather(self.bi, items)
        r = self.decoder(self.code(items), users=users) + self.offset + b
        known = tf.gather(self.known_users, users) & tf.gather(self.known_items, items)
        return tf.where(known, tf.clip_by_value(r, self.lo, self.hi),
                        tf.clip_by_value(self.mu + b, self.lo, self.hi))

    def weight_penalty(self):
        return 0.5 * self.l2 * (tf.reduce_sum(tf.square(self.encoder.kernel))
                                + tf.reduce_sum(tf.square(self.decoder.kernel)))

    def call(self, inputs, training=False):
        """(B, n_users) reconstructions of ``inputs["item"]`` (offset added), or, given
        ``inputs["user"]`` too, the predicted rating of each (user, anime) row."""
        if "user" in inputs:
            return self.rating_at(inputs["user"], inputs["item"])
        items = inputs["item"]
        return self.decoder(self.code(items)) + self.baseline_rows(items)

    # ---- training ------------------------------------------------------------------------
    def losses_of(self, items, step=None, rows=None):
        """(objective share, masked SSE, observed count) of a batch of anime; with ``step`` (the
        gradient step), input dropout keyed on (noise seed, step). ``rows``: under a strategy, this
        replica's (first row, rows) of the global batch (``tfrs_model.replica_rows``): the dropout
        mask is the global batch's at these rows, and the objective share is this replica's part of
        the global batch's, (n / B) SSE / N with B the global batch's rows, plus the penalty / N
        divided among the replicas; the replicas' shares add up to the one-worker objective."""
        x, m = self.dense_batch(items)
        h = x
        if step is not None and self.dropout > 0:
            key = tf.stack([tf.constant(self.noise_seed, tf.int64), tf.cast(step, tf.int64)])
            draw = lambda shape: tf.random.stateless_uniform(shape, seed=key)  # noqa: E731
            keep = global_noise(draw, tf.shape(x), rows) >= self.dropout
            h = tf.where(keep, x / (1.0 - self.dropout), tf.zeros_like(x))
        sse = masked_sse(self.decoder(self.encoder(h)), x, m)
        if rows is not None:
            b = tf.cast(rows[1], tf.float32)  # the global batch
            share = tf.math.divide_no_nan(self.n_rows, b) * sse / self.n_obs
            return share + self.weight_penalty() / self.n_obs / float(num_replicas()), sse, tf.reduce_sum(m)
        b = tf.cast(tf.shape(items)[0], tf.float32)
        loss = (self.n_rows / b) * sse / self.n_obs + self.weight_penalty() / self.n_obs
        return loss, sse, tf.reduce_sum(m)

    def compute_loss(self, inputs, training=False):
        return self.losses_of(inputs["item"])[0]

    def train_step(self, inputs):
        items = inputs["item"]
        b = tf.cast(tf.shape(items)[0], tf.float32)
        if num_replicas() > 1:  # a strategy (TF_CONFIG): this replica's share of the global objective
            rows = replica_rows(tf.shape(items)[0])
            with tf.GradientTape() as tape:
                objective, sse, n = self.losses_of(items, self.optimizer.iterations, rows)
            # logged as this replica's rows' estimate, (n_rows / b) SSE / N + penalty / N with b its
            # own rows, weighted by b: summed over the replicas, b times that is B times the
            # global batch's (n_rows / B) SSE_B / N + penalty / N, as one worker logs it
            loss = tf.math.divide_no_nan(self.n_rows, b) * sse / self.n_obs + self.weight_penalty() / self.n_obs
        else:
            with tf.GradientTape() as tape:
                objective, sse, n = self.losses_of(items, self.optimizer.iterations)
            loss = objective
        grads = tape.gradient(objective, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.loss_tracker.update_state(loss, sample_weight=b)
        self.mse_tracker.update_state(sse / tf.maximum(n, 1.0), sample_weight=n)
        return {"loss": self.loss_tracker.result(), "mse": self.mse_tracker.result()}

    def test_step(self, inputs):
        pred = self.rating_at(inputs["user"], inputs["item"])
        self.rmse.update_state(inputs["rating"], pred)
        return {"rmse": self.rmse.result()}


class AutoRec(KerasRecommender):
    """I-AutoRec (see the module docstring).

    Args:
        hidden: hidden (sigmoid) units.
        l2: λ of the objective's λ/2 (‖W‖² + ‖V‖²) (on the paper's scale: the loss is a sum over
            observed ratings, not a mean).
        centre: what is subtracted from the observed ratings (inputs and targets) and added back to
            the output: "none" (raw ratings, unobserved inputs 0: the paper's), "mean" (μ, the mean
            training rating) or "bias" (μ + b_u + b_i, the damped biases of ``bias`` at its
            defaults). Users and anime with no rated training row get μ ("none", "mean") or
            μ + b_u + b_i ("bias").
        dropout: input dropout rate while training (0: the paper's plain autoencoder); kept entries
            are scaled by 1 / (1 − rate); the loss is over every observed entry.
        clip: clip predicted ratings to the training rating range.
        epochs, batch_size (anime per batch), learning_rate, patience, ...: see ``KerasRecommender``.
    """

    predicts_ratings = True
    monitor = "val_rmse"
    monitor_mode = "min"
    rated_only = True

    # chosen on validation RMSE of seed 0 of mal2020_sample.toml (see the module docstring)
    train_defaults = {"epochs": 200, "batch_size": 64, "learning_rate": 3e-3, "patience": 10,
                      "eval_batch_size": 8192}

    def __init__(self, hidden: int = 500, l2: float = 300.0, centre: str = "bias", dropout: float = 0.0,
                 clip: bool = True, seed: int = 0, **train):
        super().__init__(seed=seed, **train)
        if int(hidden) < 1:
            raise ConfigError(f"autorec: hidden must be >= 1, got {hidden}")
        if not l2 >= 0:
            raise ConfigError(f"autorec: l2 must be >= 0, got {l2}")
        if centre not in CENTRES:
            raise ConfigError(f"autorec: centre must be one of {CENTRES}, got {centre!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"autorec: dropout must be in [0, 1), got {dropout}")
        self.hidden = int(hidden)
        self.l2 = float(l2)
        self.centre = centre
        self.dropout = float(dropout)
        self.clip = bool(clip)

    # ---- data ----------------------------------------------------------------------------
    def prepare(self, train: Interactions) -> dict:
        from research.models.baselines import Bias

        rated = train.rated
        r = train.rating[rated].astype(np.float64)
        if r.size == 0:
            raise ConfigError("autorec needs rated training rows")
        items_by_user = train.to_csr("rating").T.tocsr()  # anime x users, last of duplicate pairs
        items_by_user.sort_indices()
        n_u = np.bincount(train.user[rated], minlength=train.n_users)
        n_i = np.bincount(train.item[rated], minlength=train.n_items)
        mu = float(r.mean())
        bu, bi = np.zeros(train.n_users, np.float32), np.zeros(train.n_items, np.float32)
        if self.centre == "bias":
            base = Bias().fit(train)
            mu, bu, bi = base.mu, base.bu.astype(np.float32), base.bi.astype(np.float32)
        return {"mu": mu, "offset": 0.0 if self.centre == "none" else mu, "lo": float(r.min()),
                "hi": float(r.max()), "n_obs": int(items_by_user.nnz),
                "item_indptr": items_by_user.indptr.astype(np.int64),
                "item_users": items_by_user.indices.astype(np.int32),
                "item_ratings": items_by_user.data.astype(np.float32), "user_bias": bu, "item_bias": bi,
                "known_users": n_u > 0, "known_items": n_i > 0, "trained_items": n_i > 0}

    def features(self, data: Interactions, training: bool) -> dict[str, np.ndarray]:
        if training:  # one example per anime with a rated training row
            return {"item": np.flatnonzero(self.fit_state["known_items"]).astype(np.int32)}
        return tfdata.interaction_features(data, rated_only=True)

    def build_model(self):
        st = self.fit_state
        known_items = np.asarray(st["known_items"], bool)
        lo, hi = (st["lo"], st["hi"]) if self.clip else (-np.inf, np.inf)
        return _AutoRecNet(self.meta.n_users, self.hidden, self.l2, self.dropout,
                           (st["item_indptr"], st["item_users"], st["item_ratings"]),
                           int(known_items.sum()), st["n_obs"], st["offset"], st["mu"], st["user_bias"],
                           st["item_bias"], lo, hi, st["known_users"], known_items,
                           child_seed(self.seed, "autorec_noise"))

    def after_fit(self) -> None:
        """Pull the codes of every anime and the decoder into numpy (fast scoring)."""
        m = self.model
        st = self.fit_state
        known = np.asarray(st["known_items"], bool)
        items = np.flatnonzero(known).astype(np.int32)
        b = self.eval_batch_size
        h = np.zeros((self.meta.n_items, self.hidden), np.float32)
        # eagerly: a few large batches (a tf.function made per fit retraced in every search trial)
        for s in range(0, len(items), b):
            h[items[s:s + b]] = m.code(tf.constant(items[s:s + b])).numpy()
        self._H = h
        self._V = m.decoder.kernel.numpy().T.copy()  # (n_users, hidden)
        self._c = m.decoder.bias.numpy()
        self._known_users = np.asarray(st["known_users"], bool)
        self._known_items = known
        self._bu = np.asarray(st["user_bias"], np.float32)
        self._bi = np.asarray(st["item_bias"], np.float32)

    # ---- inference -----------------------------------------------------------------------
    def _clip(self, r):
        return np.clip(r, self.fit_state["lo"], self.fit_state["hi"]) if self.clip else r

    def predict(self, users, items):
        self._require_fitted()
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        b = self._bu[users] + self._bi[items]
        r = (np.einsum("ij,ij->i", self._V[users], self._H[items]) + self._c[users]
             + self.fit_state["offset"] + b)
        known = self._known_users[users] & self._known_items[items]
        return np.where(known, self._clip(r), self._clip(self.fit_state["mu"] + b))

    def score(self, users):
        """The unclipped predicted rating of every anime (the fallback for unknown users / anime)."""
        self._require_fitted()
        users = np.asarray(users, np.int64)
        b = self._bu[users][:, None] + self._bi[None, :]
        s = self._V[users] @ self._H.T + self._c[users][:, None] + self.fit_state["offset"] + b
        known = self._known_users[users][:, None] & self._known_items[None, :]
        return np.where(known, s, self.fit_state["mu"] + b)

    def item_vectors(self):
        return self._H

    def user_vectors(self):
        return self._V
