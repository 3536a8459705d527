"""``embedding_dot``: biased matrix factorisation for rating regression, on TFRS.

r̂(u, i) = μ + b_u + b_i + p_u · q_i, trained with ``tfrs.tasks.Ranking`` (mean squared error,
RMSE metric) and Adam; early stopping on validation RMSE keeps the best epoch. μ is the mean
training rating (fixed, not learned).

Regularisation. The objective is the ridge one,
(1/N) [Σ_(u,i) (r − r̂)² + λ Σ_u ‖p_u‖² + λ Σ_i ‖q_i‖² + λ_b (Σ_u b_u² + Σ_i b_i²)],
but applied sparsely: each example carries λ‖p_u‖²/n_u + λ‖q_i‖²/n_i + λ_b(b_u²/n_u + b_i²/n_i) (n =
training ratings of that user / item), whose sum over an epoch is exactly the table penalty. So only
the batch's rows are updated (a Keras ``embeddings_regularizer`` would touch the whole table at every
step), and the shrinkage does not depend on popularity: with vectors fixed, the optimum of b_i is
Σ(r − …)/(n_i + λ_b), the damped bias of ``bias`` with damping λ_b. ``reg="per_example"`` gives the
classic SGD-MF penalty instead (λ‖p_u‖² per example, i.e. proportional to n_u), which on the MAL
sample overfits rare users and items (RMSE 1.31-1.33 against 1.28 for ``bias``).

Defaults (validation RMSE on the MAL head-100k sample, random 80/20 split, 10% of train as
validation, seed 0; ``bias`` 1.292): ridge λ=15, λ_b=5, dim 32, batch 512, lr 0.01 -> 1.264 with
Keras' Adam (test 1.259 against 1.282 for ``bias``), and the same 1.264 with ``lazy_adam`` (test
1.258), the default because its steps touch only the batch's rows (1.2-2x the training throughput,
see ``research/bench/throughput.py``). Measured alternatives (Keras Adam, batch 1024, lr 0.01
unless said):
λ=20 -> 1.267; λ=20 lr 0.02 -> 1.270; λ=20 dim 16 -> 1.269; λ=10 -> 1.288; λ=50 -> 1.286;
batch 4096 lr 0.005: λ=10 -> 1.312, λ=30 -> 1.293 (not converged in 40 epochs).
(That grid ran before Interactions were sorted by (user, item), which changed the seed-0 split. On
the current split, defaults: validation 1.237, test RMSE 1.244 / MAE 0.930 / ndcg@10 0.101, against
``bias`` 1.266 / 1.271 / 0.953 / 0.077.)

History (``user_history=True``; registered as ``svdpp``). SVD++ (Koren 2008) with every training row as
implicit feedback: the user vector becomes p_u + |N(u)|^-½ Σ_{j∈N(u)} y_j, where N(u) is every anime
of u's training rows, rated or watched without a score (MAL score 0, CooperUnion -1: NaN ratings in
``Interactions``), which Surprise's SVD++ cannot use. The loss still sums over the rated rows only
(``rated_only``; the harness passes the NaN rows to every model, e.g. cooperunion_5k.toml's
``unrated = "keep"``; the MAL head-100k sample has none, so there N(u) = the rated anime). The y table
gets its own penalty λ_y Σ_j ‖y_j‖² (``history_l2``), applied the same sparse way: y_j enters each
rated example of every user whose history holds j, m_j = Σ_{u: j∈N(u)} n_u times an epoch, so each
example carries λ_y Σ_{j∈N(u)} ‖y_j‖²/m_j, which sums over an epoch to exactly the table penalty
(``reg="per_example"``: λ_y Σ_{j∈N(u)} ‖y_j‖² per example, the classic SGD form). Since y_j's data
gradient is scaled by |N(u)|^-½ and m_j is a count of examples, not of users, λ_y sits far above λ.
Each batch gathers the distinct y rows named by its distinct users' histories once (the gradient is
an ``IndexedSlices`` over those rows: LazyAdam updates nothing else), so a step costs Σ_{distinct u
in batch} |N(u)| rows: 103 per example at batch 512 on the MAL sample (7.4M rows an epoch), 161 on
the 5k set (48.6M; 94 at batch 2048, 61 at 4096). ``history_term`` computes the term for any
users x anime matrix of histories: the structure a fold-in of new users would start from (p_u = 0
plus the term of the anime they list; not built). XLA cannot compile the ragged gathers, so
``jit_compile`` must stay off.

History defaults (seed-0 validation RMSE, random split as above; the embedding_dot model seed 0,
so the no-history numbers differ slightly from the runner's 1.237 above):

| data | model | val RMSE | test RMSE | test MAE | fit s |
| --- | --- | --- | --- | --- | --- |
| MAL head-100k | bias | 1.2659 | 1.2707 | 0.9534 | 0 |
| MAL head-100k | embedding_dot (no history) | 1.2358 | 1.2431 | 0.9303 | 13 |
| MAL head-100k | svdpp (λ_y=100) | 1.2262 | 1.2365 | 0.9267 | 284 |
| cooperunion 5k | bias | 1.2136 | 1.2064 | 0.9195 | 0 |
| cooperunion 5k | embedding_dot (no history) | 1.1691 | 1.1653 | 0.8843 | 40 |
| cooperunion 5k | svdpp (λ_y=100) | 1.1654 | 1.1627 | 0.8829 | 506 |

(batch 512, lr 0.01, dim 32, λ=15, λ_b=5 throughout; fit seconds on the 2 shared cores under a load
of 8-13 other processes, so only the ratio means much. Training throughput at batch 512, 3 epochs
on the MAL sample under that load: 26.8k examples/s without the history, 6.3k with it.)
Measured alternatives (validation RMSE, seed 0). MAL: λ_y=15 -> 1.2526 (best epoch 4: the y table
overfits; run with an earlier gather-and-segment-sum form of the same term, which gave the same
1.2262 at λ_y=100); λ_y=150 -> 1.2279 (test 1.2371 / 0.9271); batch 2048 lr 0.02: λ_y=15 -> 1.2652,
50 -> 1.2402, 150 -> 1.2284, 500 -> 1.2343, 1500 -> 1.2372, no history -> 1.2383. 5k: λ_y=150 ->
1.1664 (test 1.1632 / 0.8831); batch 2048 lr 0.02: λ_y=150 -> 1.1707, 1500 -> 1.1719, no history ->
1.1755, and λ_y=150 with N(u) = the rated anime only (what Surprise sees) -> 1.1724: the unscored
rows are worth 0.0017 of the 0.0048. The gain is small (0.010 on MAL, 0.004 on 5k at batch 512) for
13-22x the fit time, so ``embedding_dot`` keeps ``user_history=False`` and ``svdpp`` is the same
model with the term on, at embedding_dot's training defaults. tune_svdpp.toml searches λ_y, batch and the rest.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions
from research.errors import ConfigError
from research.models.keras.common import KerasRecommender, TFRSModel, tf, tfrs


class _BiasedMF(TFRSModel):
    def __init__(self, n_users: int, n_items: int, dim: int, mu: float, l2: float, bias_l2: float,
                 init_std: float, user_weight: np.ndarray, item_weight: np.ndarray,
                 history: tuple | None = None, history_l2: float = 0.0):
        super().__init__()
        # per-row multipliers of the penalty: 1/n (ridge) or 1 (per-example)
        self.user_weight = tf.constant(user_weight, tf.float32)
        self.item_weight = tf.constant(item_weight, tf.float32)
        # one initializer instance per table: an unseeded instance called twice repeats its values
        self.user_embedding = tf.keras.layers.Embedding(
            n_users, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=init_std),
            name="user_embedding")
        self.item_embedding = tf.keras.layers.Embedding(
            n_items, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=init_std),
            name="item_embedding")
        self.user_bias = tf.keras.layers.Embedding(n_users, 1, embeddings_initializer="zeros", name="user_bias")
        self.item_bias = tf.keras.layers.Embedding(n_items, 1, embeddings_initializer="zeros", name="item_bias")
        self.use_history = history is not None
        if self.use_history:
            # N(u) as CSR over the training rows (rated or not): hist_items[indptr[u]:indptr[u + 1]]
            indptr, items, y_weight = history
            self.hist_indptr = tf.constant(indptr, tf.int64)
            self.hist_items = tf.constant(items, tf.int32)
            self.history_weight = tf.constant(y_weight, tf.float32)  # per-row multiplier of λ_y
            self.history_l2 = float(history_l2)
            # created last: the weights of a user_history=False model keep their order and count
            self.history_embedding = tf.keras.layers.Embedding(
                n_items, dim, embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=init_std),
                name="history_embedding")
        self.mu = float(mu)
        self.l2 = float(l2)
        self.bias_l2 = float(bias_l2)
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(),
                                       metrics=[tf.keras.metrics.RootMeanSquaredError(name="rmse")])

    def _history_term(self, users):
        """|N(u)|^-1/2 Σ_{j∈N(u)} y_j for each example's user, and Σ_{j∈N(u)} w_j ‖y_j‖².

        Computed once per distinct user of the batch, from one gather of the distinct rows of the
        y table those users' histories name: the gradient is an ``IndexedSlices`` over exactly
        those rows (so LazyAdam's step touches only them, and de-duplicates few indices)."""
        uniq_u, pos = tf.unique(tf.cast(users, tf.int64))
        starts = tf.gather(self.hist_indptr, uniq_u)
        ends = tf.gather(self.hist_indptr, uniq_u + 1)
        spans = tf.ragged.range(starts, ends)  # positions in hist_items, one row per distinct user
        owner = spans.value_rowids()
        uniq_i, local = tf.unique(tf.gather(self.hist_items, spans.flat_values))
        y = self.history_embedding(uniq_i)  # (distinct history anime of the batch, dim)
        k = tf.shape(uniq_u, out_type=tf.int64)[0]
        scale = tf.math.rsqrt(tf.maximum(tf.cast(ends - starts, tf.float32), 1.0))
        h = tf.SparseTensor(tf.stack([owner, tf.cast(local, tf.int64)], 1), tf.gather(scale, owner),
                            tf.stack([k, tf.shape(uniq_i, out_type=tf.int64)[0]]))
        implicit = tf.sparse.sparse_dense_matmul(h, y)
        sq = tf.gather(self.history_weight, uniq_i) * tf.reduce_sum(y * y, -1)
        penalty = tf.math.unsorted_segment_sum(tf.gather(sq, local), owner, k)
        return tf.gather(implicit, pos), tf.gather(penalty, pos)

    def _forward(self, inputs):
        p = self.user_embedding(inputs["user"])
        q = self.item_embedding(inputs["item"])
        bu = tf.squeeze(self.user_bias(inputs["user"]), -1)
        bi = tf.squeeze(self.item_bias(inputs["item"]), -1)
        y_pen = None
        if self.use_history:
            implicit, y_pen = self._history_term(inputs["user"])
            pred = self.mu + bu + bi + tf.reduce_sum((p + implicit) * q, axis=-1)
        else:
            pred = self.mu + bu + bi + tf.reduce_sum(p * q, axis=-1)
        return pred, p, q, bu, bi, y_pen

    def call(self, inputs, training=False):
        return self._forward(inputs)[0]

    def compute_loss(self, inputs, training=False):
        pred, p, q, bu, bi, y_pen = self._forward(inputs)
        loss = self.task(labels=inputs["rating"], predictions=pred)
        if training:
            wu = tf.gather(self.user_weight, inputs["user"])
            wi = tf.gather(self.item_weight, inputs["item"])
            reg = self.l2 * (wu * tf.reduce_sum(p * p, -1) + wi * tf.reduce_sum(q * q, -1))
            if self.bias_l2:
                reg += self.bias_l2 * (wu * bu * bu + wi * bi * bi)
            if y_pen is not None and self.history_l2:
                reg += self.history_l2 * y_pen
            loss += tf.reduce_mean(reg)
        return loss


class EmbeddingDot(KerasRecommender):
    """Biased matrix factorisation, optionally with the SVD++ history term (see the module docstring).

    Args:
        dim: embedding dimension.
        l2: L2 weight λ on the user and item vectors (a pseudo-count with ``reg="ridge"``).
        bias_l2: L2 weight λ_b on the biases (with ``reg="ridge"``, the damping of ``bias``).
        reg: "ridge" (table penalty applied sparsely, see the module docstring) or "per_example".
        init_std: standard deviation of the vectors' normal initialisation.
        clip: clip predicted ratings to the training rating range.
        user_history: add |N(u)|^-1/2 Σ_{j∈N(u)} y_j to p_u, N(u) = every training anime of u, rated
            or watched without a score (SVD++ with the unscored rows as implicit feedback).
        history_l2: L2 weight λ_y on the y table (with ``reg="ridge"``, see the module docstring).
        epochs, batch_size, learning_rate, patience, ...: see ``KerasRecommender``.

    ``score`` ranks by the unclipped predicted rating (clipping would create ties at the top).
    """

    predicts_ratings = True
    monitor = "val_rmse"
    monitor_mode = "min"
    rated_only = True  # the loss sees rated rows only; the history (user_history=True) sees every row

    # defaults chosen on validation RMSE of the MAL head-100k sample (random split, seed 0); see
    # the module docstring for the grid
    train_defaults = {"epochs": 60, "batch_size": 512, "learning_rate": 0.01, "optimizer": "lazy_adam"}

    def __init__(self, dim: int = 32, l2: float = 15.0, bias_l2: float = 5.0, reg: str = "ridge",
                 init_std: float = 0.01, clip: bool = True, user_history: bool = False, history_l2: float = 100.0,
                 seed: int = 0, **train):
        super().__init__(seed=seed, **train)
        if int(dim) < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        if l2 < 0 or bias_l2 < 0 or history_l2 < 0:
            raise ConfigError("l2, bias_l2 and history_l2 must be >= 0")
        if reg not in ("ridge", "per_example"):
            raise ConfigError(f"reg must be 'ridge' or 'per_example', got {reg!r}")
        if user_history and self.jit_compile:
            raise ConfigError("user_history=True gathers ragged per-user histories, which XLA cannot "
                              "compile: set jit_compile = false")
        self.dim = int(dim)
        self.reg = reg
        self.l2 = float(l2)
        self.bias_l2 = float(bias_l2)
        self.init_std = float(init_std)
        self.clip = bool(clip)
        self.user_history = bool(user_history)
        self.history_l2 = float(history_l2)

    def prepare(self, train: Interactions) -> dict:
        r = train.rating[train.rated].astype(np.float64)
        if r.size == 0:
            raise ConfigError("embedding_dot needs rated training rows")
        n_u = np.bincount(train.user[train.rated], minlength=train.n_users).astype(np.float32)
        n_i = np.bincount(train.item[train.rated], minlength=train.n_items).astype(np.float32)
        state = {"mu": float(r.mean()), "lo": float(r.min()), "hi": float(r.max()), "trained_items": n_i > 0,
                 "user_count": n_u, "item_count": n_i}
        if self.user_history:
            h = train.to_csr("ones")  # every training row, rated or not; duplicates once
            state["hist_indptr"] = h.indptr.astype(np.int64)
            state["hist_items"] = h.indices.astype(np.int32)
            # m_j = Σ_{u: j∈N(u)} n_u: how often y_j enters an example in an epoch
            state["history_count"] = np.asarray(h.T @ n_u, dtype=np.float32).ravel()
        return state

    def build_model(self):
        st = self.fit_state
        if self.reg == "ridge":
            wu, wi = 1.0 / np.maximum(st["user_count"], 1.0), 1.0 / np.maximum(st["item_count"], 1.0)
        else:
            wu, wi = np.ones(self.meta.n_users, np.float32), np.ones(self.meta.n_items, np.float32)
        history = None
        if self.user_history:
            wy = (1.0 / np.maximum(st["history_count"], 1.0) if self.reg == "ridge"
                  else np.ones(self.meta.n_items, np.float32))
            history = (st["hist_indptr"], st["hist_items"], wy)
        return _BiasedMF(self.meta.n_users, self.meta.n_items, self.dim, st["mu"], self.l2, self.bias_l2,
                         self.init_std, wu, wi, history, self.history_l2)

    def training_histories(self) -> sp.csr_matrix:
        """N(u) of the fit: a users x items 0/1 matrix of every training row (user_history=True only)."""
        st = self.fit_state
        items = st["hist_items"]
        return sp.csr_matrix((np.ones(len(items), np.float32), items, st["hist_indptr"]),
                             shape=(self.meta.n_users, self.meta.n_items))

    def history_term(self, histories: sp.spmatrix) -> np.ndarray:
        """|N|^-1/2 Σ_{j∈N} y_j for each row of a (rows x items) 0/1 matrix of histories.

        The part of a user vector that depends only on which anime the user watched: with the
        training histories it completes p_u (``after_fit``); for a user absent from training it is
        the whole vector a fold-in would start from (p_u = 0), with no refit of any table."""
        h = sp.csr_matrix(histories, dtype=np.float32)
        h.data[:] = 1.0
        n = np.asarray(h.sum(axis=1), dtype=np.float32).ravel()
        scale = 1.0 / np.sqrt(np.maximum(n, 1.0))
        return np.asarray(sp.diags(scale) @ (h @ self._Y), dtype=np.float32)

    def after_fit(self) -> None:
        m = self.model
        self._P = m.user_embedding.embeddings.numpy()  # the effective user vectors (score, predict)
        self._Q = m.item_embedding.embeddings.numpy()
        self._bu = m.user_bias.embeddings.numpy()[:, 0]
        self._bi = m.item_bias.embeddings.numpy()[:, 0]
        if self.user_history:
            self._Y = m.history_embedding.embeddings.numpy()
            self._P = self._P + self.history_term(self.training_histories())

    # ---- inference (numpy: no TF dispatch overhead, float32 matmul) -----------------------
    def predict(self, users, items):
        users, items = np.asarray(users), np.asarray(items)
        p = (self.fit_state["mu"] + self._bu[users] + self._bi[items]
             + np.einsum("ij,ij->i", self._P[users], self._Q[items]))
        return np.clip(p, self.fit_state["lo"], self.fit_state["hi"]) if self.clip else p

    def score(self, users):
        users = np.asarray(users)
        return (self.fit_state["mu"] + self._bu[users][:, None] + self._bi[None, :]
                + self._P[users] @ self._Q.T)

    # ---- fold-in (users given by a history; the item side fixed) ---------------------------
    def fold_in(self, history) -> tuple[np.ndarray, np.ndarray]:
        """(user vectors, user biases) of the users of ``history``, the item side (q, b_i, y)
        fixed: per user the minimiser of the fit's own objective restricted to that user,
        Σ_{i rated} (r_ui − μ − b_i − b_u − (h_u + p)·q_i)² + λ‖p‖² + λ_b b_u² (``reg="per_example"``:
        λ n_u ‖p‖² + λ_b n_u b_u²), a (dim + 1)² ridge solve as ALS folds a user in; h_u is the
        history term over every anime of the history (``user_history=True``; else 0). A user with
        no rating gets p = 0, b_u = 0. Returned vectors are h_u + p, as ``user_vectors``."""
        self._require_fitted()
        st = self.fit_state
        d = self.dim
        H = self.history_term(history.seen) if self.user_history else np.zeros((len(history), d), np.float32)
        R = history.rated
        P = np.zeros((len(history), d), np.float64)
        bu = np.zeros(len(history), np.float64)
        for row in range(len(history)):
            a, b = R.indptr[row], R.indptr[row + 1]
            if a == b:
                continue
            items, r = R.indices[a:b], R.data[a:b].astype(np.float64)
            Q = self._Q[items].astype(np.float64)
            A = np.hstack([Q, np.ones((len(items), 1))])
            t = r - st["mu"] - self._bi[items] - Q @ H[row]
            scale = float(len(items)) if self.reg == "per_example" else 1.0
            penalty = np.r_[np.full(d, self.l2 * scale), self.bias_l2 * scale]
            x = np.linalg.solve(A.T @ A + np.diag(penalty), A.T @ t)
            P[row], bu[row] = x[:d], x[d]
        return (H + P).astype(np.float32), bu.astype(np.float32)

    def score_history(self, history) -> np.ndarray:
        """Fold-in scores (see ``fold_in``): μ + b_u + b_i + (h_u + p)·q_i for every anime, unclipped
        as ``score``. Not equal to ``score`` for a training user: the fit stops early on
        validation, short of the per-user optimum that the fold-in solves exactly."""
        history = self.check_history(history)
        P, bu = self.fold_in(history)
        return self.fit_state["mu"] + bu[:, None] + self._bi[None, :] + P @ self._Q.T

    def predict_history(self, history, rows, items) -> np.ndarray:
        """Fold-in ratings of (history row, anime) pairs, clipped to the training range as ``predict``."""
        history = self.check_history(history)
        P, bu = self.fold_in(history)
        rows, items = np.asarray(rows), np.asarray(items)
        p = self.fit_state["mu"] + bu[rows] + self._bi[items] + np.einsum("ij,ij->i", P[rows], self._Q[items])
        return np.clip(p, self.fit_state["lo"], self.fit_state["hi"]) if self.clip else p

    def item_vectors(self):
        return self._Q

    def user_vectors(self):
        """p_u, plus |N(u)|^-1/2 Σ_{j∈N(u)} y_j with user_history=True."""
        return self._P

    def item_bias(self) -> np.ndarray:
        """b_i per item (exported beside the vectors: top-k = argmax_i p_u·q_i + b_i)."""
        return self._bi


class SVDpp(EmbeddingDot):
    """``svdpp``: ``EmbeddingDot`` with ``user_history=True`` (λ_y chosen on validation, see the module
    docstring) and embedding_dot's training defaults; registered on its own so that tables show both.

    Args: those of ``EmbeddingDot`` (``user_history`` included: ``svdpp`` with
    ``user_history = false`` is plain ``embedding_dot``).
    """

    def __init__(self, dim: int = 32, l2: float = 15.0, bias_l2: float = 5.0, reg: str = "ridge",
                 init_std: float = 0.01, clip: bool = True, user_history: bool = True,
                 history_l2: float = 100.0, seed: int = 0, **train):
        super().__init__(dim=dim, l2=l2, bias_l2=bias_l2, reg=reg, init_std=init_std, clip=clip,
                         user_history=user_history, history_l2=history_l2, seed=seed, **train)
