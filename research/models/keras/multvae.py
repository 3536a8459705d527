"""``multvae``: Mult-VAE^PR and Mult-DAE (Liang, Krishnan, Hoffman, Jebara, WWW 2018, "Variational
Autoencoders for Collaborative Filtering").

Size: one module because it is one model (Mult-VAE / Mult-DAE with RecVAE's options), whose
loss, encoder and fit loop share its hyperparameters; a sixth is this docstring, the paper setting.

- **Input**: a user's history as a bag of anime: every training interaction (rated or "watched
  without a score") counts 1 (``weighting="binary"``, the paper's), or rating / mean training
  rating with unrated rows at 1 (``weighting="rating"``). The bag is L2-normalised, then input
  dropout (rate ``dropout``, kept entries scaled by 1/(1 - rate)) is applied while training: the
  order of the paper's code (``h = l2_normalize(x); h = dropout(h)``), not dropout first.
- **Modelled anime** (``catalogue``): "trained" (default) models, as input and in the softmax, the
  anime with a training interaction; "all" the whole catalogue (``meta.n_items``). On the MAL
  sample 6,539 of the 17,562 catalogue anime have a training row; the others can never be
  candidates (the harness recommends only anime with a training row) and a full-catalogue
  softmax only pushes their logits down, at 2.7x the cost of a step (0.48 s against 0.18 s at
  batch 64, hidden 600). ``score`` returns the whole catalogue either way, the anime not
  modelled at (the row's lowest logit − 1); validation anime outside the modelled set are left
  out of the fold-in input (with "all" they would feed untrained input weights).
- **Data pipeline**: the training examples are users (``features()`` yields ``{"user": int32}``, one
  row per user with a training interaction, index-shuffled per epoch by ``tfdata.from_arrays``).
  The Keras model holds each user's history as a ragged table (user -> anime, weights) and
  densifies each batch in the graph (a scatter into a (B, modelled anime) tensor), so the (users x anime)
  matrix is never dense in memory and the ``KerasRecommender`` machinery (early stopping,
  TensorBoard, BackupAndRestore checkpoints, save / load) is unchanged.
- **Network**: encoder MLP ``hidden`` (tanh) -> μ and log σ² of size ``latent`` -> z = μ + σ ε
  while training (μ at inference) -> the mirrored decoder MLP (tanh) -> logits over every anime.
  ``variant="dae"``: no sampling and no KL; the bottleneck is a deterministic tanh layer of size
  ``latent`` (the paper's Mult-DAE: tanh on every layer but the output) with L2 weight decay on the
  weight matrices (``weight_decay``; None = the paper's choice: 0.01 for the DAE, 0 for the VAE).
  Weights are Glorot-uniform, biases zero.
- **Loss**: multinomial log-likelihood −Σ_i x_ui log softmax(logits_u)_i per user, mean over the
  batch, + β · KL(q(z|x_u) || N(0, I)), KL = Σ_j ½(−log σ²_j + σ²_j + μ_j² − 1), and (DAE) the
  weight decay λ Σ W². β grows linearly from 0 to ``beta_cap`` over the first A gradient steps and
  stays there: β(t) = beta_cap · min(1, t / A). (The paper's code uses min(cap, t / A'), i.e.
  reaches the cap after cap · A' steps; here A is directly the ramp length.) A is ``anneal_steps``
  when > 0, else ``anneal_epochs`` x steps per epoch (ceil(training users / batch_size)), so that
  the default means the same thing on 575 users and on 5,000. Dropout masks and ε are stateless
  random draws keyed on (seed, gradient step), so a resumed fit sees the noise an uninterrupted
  one would have seen. TensorBoard (``train/``): ``epoch_loss`` (nll + β KL + decay, epoch mean),
  ``epoch_nll``, ``epoch_kl`` (epoch means), ``epoch_beta`` (β at the epoch's last step);
  ``validation/epoch_ndcg_at_10``.
- **Validation / early stopping**: ``monitor = "val_ndcg_at_{val_k}"``: the decoder's logits for
  the encoder fed each validation user's *training* history (μ, no dropout), scored by
  ``validation.ndcg_at_k`` (candidates: anime with a training row; training anime excluded; every
  validation anime relevant) over at most ``val_users`` validation users: exactly the harness on
  ``part="val"`` of a model whose scores use the training history
  (``scores_from_history(users, "train")``; ``tests/test_multvae.py`` checks the equality). On
  held-out users (``fits_val_history``, ``Recommender.fit_split``) a validation user has no
  training row, so their *history* rows join the input table (the encoder's input at validation;
  the training examples stay train's users): the number is the harness's ``part="val"`` of them
  folded in (``tests/test_multvae.py::test_heldout_users_validate_folded_in`` checks it), where
  before it scored an empty bag.

Which rows each stage sees:

- training batches and the validation ndcg: the training part only;
- ``score(users)`` and ``user_vectors()``: the history given to ``fit`` as input, i.e. train +
  validation interactions when ``fit`` got a validation part (fold-in: the harness excludes both
  when scoring test), else train only; ``fold_in=False``: train only. The validation interactions
  are never trained on; they are only the encoder's input at inference. Scoring ``part="val"``
  with the harness after a fold-in fit sees the targets in the input (a leak: the validation
  anime are not excluded there): hence ``fold_in=False`` in ``tune_multvae.toml``, whose trials
  are scored that way, and ``scores_from_history(users, "train")``.

**Fold-in** (``score_history``): any user given by a ``History`` is encoded from their bag, built
as the training bags are; a training user's own training rows give the scores of
``scores_from_history(users, "train")``.

**Linear skip** (``linear = true``, off by default): the decoder's logits gain x B, a full-rank
(modelled anime)² item-item matrix with a zero diagonal (``tf.linalg.set_diag`` in the forward
pass, so an anime never predicts itself), fed the same dropped-out input as the encoder and
penalised by ``linear_l2`` Σ B² — EASE's structure (Steck 2019) trained under the multinomial
likelihood beside the VAE. Measured on seed 0's validation part (mal2020 sample, training
history, the tuned defaults otherwise): linear_l2 1e-4 -> ndcg@10 0.1403, 1e-6 -> 0.1393, against 0.1440 without
the skip (EASE 0.1715, item_knn 0.1433, implicit ALS 0.1366 on the same part); it costs a
(batch, n) x (n, n) product a step (6,539² weights on the sample).

**Wide part** (``wide = "ease"``, off by default): a Wide & Deep-style sum, logits = the VAE's +
exp(s) · x B, where B is EASE's closed-form item-item matrix (``research.models.ease``, λ =
``wide_lam``, ``wide_weighting``) fitted in ``prepare`` on the training rows only (the rows the VAE
trains on; train + validation in a refit), frozen unless ``wide_trainable``, and s a trained
log-scale starting at log ``wide_scale``. x is the user's whole history in EASE's weighting,
without dropout, at training as at inference, so the VAE is trained on what EASE leaves
unexplained under the multinomial likelihood. The kernel is a (modelled anime)² weight (kept
with the weights, not in the fit state); the product is sparse (history) x dense. It asks
whether the deep part adds anything to the linear item-item model. Measured on seed 0's
validation part (training history, multvae's defaults otherwise, frozen kernel): mal2020 sample,
EASE's defaults (rating weighting, λ 6900) inside, ndcg@10 0.1693 / 0.1711 at wide_scale 10 / 30
and 0.1714 at scale 10 with lr 5e-4 and dropout 0.5, against EASE alone 0.1715 (and the VAE alone
0.1400, measured alongside); binary λ 300: 0.1619 (scale 10) against that EASE's 0.1623; every run's best epoch was
its first, i.e. training the deep part only moved it away from EASE. On the 5k CooperUnion set
(scale 30): 0.1507 against EASE 0.2181 and the VAE alone 0.1654. So no: under joint training the
deep part takes nothing from EASE's residual on either set (EASE's scores of its own training
rows are optimistic, so the residual the VAE is fitted to is not the one it meets on held-out
anime). Kept for that measurement and off by default.

**RecVAE's pieces** (Shenbin, Alekseev, Tutubalina, Malykh, Nikolenko, WSDM 2020; off by default):
``encoder = "dense"``: each of the ``hidden`` layers (equal widths) is LayerNorm(ε 0.1) of
swish(W_j h_{j-1} + h_1 + ... + h_{j-1}), every layer fed the sum of all earlier outputs;
``decoder = "linear"``: z straight to the logits; ``prior = "composite"``: the KL term is the
one-sample estimate Σ_j [log q(z_j|x) − log p(z_j)] against p = 3/20 N(0, 1) + 3/4 q_old(z|x) +
1/10 N(0, e^10), q_old a frozen copy of the encoder refreshed at the first step of every epoch
(``refresh_old_encoder``, keyed on the step counter, so a resumed fit refreshes where an
uninterrupted one would); ``kl_gamma`` = γ > 0: user u's KL weight is γ · |x_u| (the bag's total
weight) instead of the annealed β. RecVAE's alternating encoder / decoder updates are not
implemented (the paper's ablation credits most of its gain to the prior and the encoder).
Measured on seed 0's validation part (``experiments/val_probe.py``, training history): on the 5k
CooperUnion set the linear decoder alone lifts ndcg@10 from 0.1654 to 0.1868, RecVAE's settings
(5 x 600 dense encoder, linear decoder, composite prior, dropout 0.5, γ 0.005 / 0.01) reach
0.1889 / 0.1909 (EASE 0.2181); on the 575-user mal2020 sample they do not help (0.1354, dense 1 x
600 + linear 0.1430, against 0.1400 for the defaults in the same check): the gains need users
(``experiments/configs/recvae_5k.toml``).

``user_vectors()``: μ of the encoder for every user (on the scoring history). ``item_vectors()``:
the rows of the decoder's output kernel (n_items x last hidden width); anime with no training
interaction get zero vectors (their rows only ever received the softmax's push-down gradient, so
they carry no co-occurrence information), which puts them at cosine 0 from everything.

**Fast path** (``sparse_input``, ``fused_adam``; off by default, so that the committed results
stay bit-identical; pieces in ``multvae_sparse.py``): ``sparse_input`` keeps each batch's bag a
SparseTensor from the table to the loss: the L2 norm and the input dropout on its nonzeros (the
mask is the dense draw's values there, so the same entries are dropped as in the dense path), the
first encoder layer as a dense matmul over the batch's distinct anime only, the linear skip as a
sparse x dense product, and the nll as (Σ x) · logsumexp(logits) − Σ_{x_i≠0} x_i logit_i;
``fused_adam`` runs Adam's dense update (the same formula) as TensorFlow's fused kernel. The same
model and loss: losses, gradients and logits equal the dense path's to 2e-5 of each array's scale
(``tests/test_multvae_sparse.py``, every option above). Measured (issue 16) at batch 128 and
hidden 600 on 2 shared cores: 60,000 users of the bench's synthetic matrix (183 anime a user,
17,365 modelled), default and fast runs alternated twice at load 5.5-6.2: 0.310 / 0.343 -> 0.220 /
0.243 s a step (1.41x), an epoch of 310,059 users ~750-830 -> ~530-590 s; on 20,000 users (17,562
anime, load 5.9-7.4, runs in sequence) both options 0.188, fused_adam alone 0.249, sparse_input
alone 0.340, neither 0.387 s a step (Adam's update alone: 130-140 -> 40-45 ms a step); batch
1,024: 1.60 -> 1.39 s a step. What is left is per user and dense: the output layer's three B x 600 x anime
products (~0.75 ms a user at the ~85-120 GFLOPS these cores give), the softmax over every anime, and
the (B, anime) uniform draw the exact dropout mask needs (18 ms at batch 128); a larger batch
therefore saves little (Adam's ~45 ms a step, amortised).

Defaults: chosen on the validation part of seed 0 of ``experiments/configs/mal2020_sample.toml``
by the search of ``experiments/configs/tune_multvae.toml`` (see its header for the result).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from research.data.interactions import Interactions
from research.errors import ConfigError
from research.models.keras.common import KerasRecommender, TFRSModel, tf
from research.models.keras.multvae_sparse import (
    FusedAdam,
    bag_tensor,
    dense_apply,
    l2_normalize_rows,
    multinomial_nll_sparse,
    row_sums,
    sparse_layer,
)
from research.models.keras.tfrs_model import global_noise, num_replicas, replica_rows
from research.models.keras.validation import ndcg_at_k, validation_targets
from research.seeding import child_seed

VARIANTS = ("vae", "dae")
WEIGHTINGS = ("binary", "rating")
CATALOGUES = ("trained", "all")
WIDES = ("none", "ease")
ENCODERS = ("mlp", "dense")
DECODERS = ("mlp", "linear")
PRIORS = ("normal", "composite")
MATMUL_DTYPES = ("float32", "bfloat16")
_DAE_WEIGHT_DECAY = 0.01  # the paper's lambda for Mult-DAE


def _ragged(indptr, items, weights):
    splits = tf.constant(np.asarray(indptr, np.int64))
    return (tf.RaggedTensor.from_row_splits(tf.constant(np.asarray(items, np.int32)), splits),
            tf.RaggedTensor.from_row_splits(tf.constant(np.asarray(weights, np.float32)), splits))


def multinomial_nll(logits, x):
    """Per-row −Σ_i x_i log softmax(logits)_i: (B, n) logits and bag ``x`` -> (B,)."""
    return -tf.reduce_sum(tf.nn.log_softmax(logits, axis=-1) * x, axis=-1)


def gaussian_kl(mu, logvar):
    """Per-row KL(N(μ, diag σ²) || N(0, I)) = Σ_j ½(−log σ²_j + σ²_j + μ_j² − 1) -> (B,)."""
    return tf.reduce_sum(0.5 * (-logvar + tf.exp(logvar) + tf.square(mu) - 1.0), axis=-1)


_LOG_2PI = math.log(2.0 * math.pi)
#: RecVAE's composite prior: weights of N(0, I), the old posterior, and the wide N(0, e^10 I)
COMPOSITE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)


def gaussian_log_pdf(z, mu, logvar):
    """Elementwise log N(z; μ, exp(log σ²))."""
    return -0.5 * (logvar + _LOG_2PI + tf.square(z - mu) / tf.exp(logvar))


def composite_log_prior(z, old_mu, old_logvar):
    """Elementwise log of RecVAE's prior: Σ_k w_k N(z; μ_k, σ_k²) over N(0, 1), the old encoder's
    posterior N(old μ, old σ²), and N(0, e^10) (Shenbin et al., WSDM 2020)."""
    zeros = tf.zeros_like(z)
    parts = [gaussian_log_pdf(z, zeros, zeros), gaussian_log_pdf(z, old_mu, old_logvar),
             gaussian_log_pdf(z, zeros, zeros + 10.0)]
    parts = [p + math.log(w) for p, w in zip(parts, COMPOSITE_WEIGHTS)]
    return tf.reduce_logsumexp(tf.stack(parts, axis=-1), axis=-1)


def beta_schedule(step, beta_cap: float, anneal_steps: int):
    """β after ``step`` gradient steps: beta_cap · min(1, step / anneal_steps) (anneal_steps 0: cap)."""
    step = tf.cast(step, tf.float32)
    if anneal_steps <= 0:
        return tf.constant(float(beta_cap), tf.float32) + 0.0 * step
    return float(beta_cap) * tf.minimum(1.0, step / float(anneal_steps))


class _MultVAEModel(TFRSModel):
    replica_invariant_logs = ("beta",)  # β(step): the same on every replica (see TFRSModel)

    def __init__(self, n_items, out_items, hidden, latent, variant, dropout, weight_decay, beta_cap,
                 anneal_steps, train_hist, score_hist, candidates, val_k, noise_seed, linear_l2=None,
                 wide=None, wide_trainable=False, wide_scale=1.0, encoder="mlp", decoder="mlp",
                 prior="normal", kl_gamma=0.0, steps_per_epoch=1, sparse_input=False,
                 matmul_dtype="float32"):
        super().__init__()
        self.sparse_input = bool(sparse_input)
        self.matmul_dtype = matmul_dtype
        self.n_items = int(n_items)  # the catalogue
        self.n_out = len(out_items)  # the modelled anime (input and softmax), indexed 0..n_out-1
        inv = np.full(self.n_items, self.n_out, np.int32)
        inv[np.asarray(out_items)] = np.arange(self.n_out, dtype=np.int32)
        self.to_modelled = tf.constant(inv)  # catalogue anime -> modelled index (n_out: not modelled)
        self.variant = variant
        self.dropout = float(dropout)
        self.beta_cap = float(beta_cap)
        self.anneal_steps = int(anneal_steps)
        self.val_k = int(val_k)
        self.noise_seed = int(noise_seed)
        reg = tf.keras.regularizers.L2(weight_decay) if weight_decay else None
        dense = lambda n, act, name: tf.keras.layers.Dense(  # noqa: E731
            n, activation=act, kernel_regularizer=reg, name=name)
        self.encoder_kind, self.decoder_kind, self.prior = encoder, decoder, prior
        self.kl_gamma = float(kl_gamma)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.encoder, self.norms, self.bottleneck = self._encoder_layers(dense, hidden, latent, variant, "")
        if decoder == "mlp":
            self.decoder = [dense(h, "tanh", f"decoder_{j}") for j, h in enumerate(reversed(hidden))]
        else:  # RecVAE's: z straight to the logits
            self.decoder = []
        self.logits_layer = dense(self.n_out, None, "logits")
        self.latent = int(latent)
        self.old_encoder = None
        if prior == "composite":  # RecVAE: a frozen copy of the encoder, refreshed every epoch
            self.old_encoder = self._encoder_layers(dense, hidden, latent, variant, "old_")
            for layers, norms, bottleneck in ((self.encoder, self.norms, self.bottleneck), self.old_encoder):
                width = self.n_out  # built now, so that the copy has variables to copy into
                for j, layer in enumerate(layers):
                    layer.build((None, width))
                    width = layer.units
                    if norms:
                        norms[j].build((None, width))
                bottleneck.build((None, width))
            for layer in self.old_encoder[0] + self.old_encoder[1] + [self.old_encoder[2]]:
                layer.trainable = False
        # the full-rank item-item skip (``linear_l2`` not None): logits += x B, diag(B) = 0
        self.linear_kernel = None
        if linear_l2 is not None:
            self.linear_kernel = self.add_weight(
                name="linear_kernel", shape=(self.n_out, self.n_out), initializer="zeros",
                regularizer=tf.keras.regularizers.L2(linear_l2) if linear_l2 > 0 else None)
        # the wide part (``wide`` not None: an (n_out, n_out) EASE matrix, or zeros when reloading)
        self.wide_kernel = None
        if wide is not None:
            init = wide if isinstance(wide, np.ndarray) else np.zeros((self.n_out, self.n_out), np.float32)
            self.wide_kernel = self.add_weight(
                name="wide_kernel", shape=(self.n_out, self.n_out), trainable=bool(wide_trainable),
                initializer=tf.constant_initializer(init))
            self.wide_log_scale = self.add_weight(
                name="wide_log_scale", shape=(), initializer=tf.constant_initializer(math.log(wide_scale)))
        # user -> (anime, weight) ragged tables: training history, and the history scored at inference
        # (the wide part's weights, EASE's weighting of the same rows, share the anime tables)
        self.train_items, self.train_weights = _ragged(*train_hist[:3])
        self.score_items, self.score_weights = _ragged(*score_hist[:3])
        if wide is not None:
            self.train_wide_weights = _ragged(train_hist[0], train_hist[1], train_hist[3])[1]
            self.score_wide_weights = _ragged(score_hist[0], score_hist[1], score_hist[3])[1]
        self.out_items = tf.constant(np.asarray(out_items, np.int32))
        self.candidates = tf.constant(candidates, tf.bool)
        self.kl_tracker = tf.keras.metrics.Mean(name="kl")
        self.nll_tracker = tf.keras.metrics.Mean(name="nll")
        self.ndcg = tf.keras.metrics.Mean(name=f"ndcg_at_{val_k}")

    def _encoder_layers(self, dense, hidden, latent, variant, prefix):
        """(dense layers, layer norms, bottleneck) of an encoder: "mlp" (the paper's tanh MLP, no
        norms) or "dense" (RecVAE's: swish, each layer fed the sum of every earlier layer's output,
        LayerNorm with epsilon 0.1)."""
        if self.encoder_kind == "mlp":
            layers = [dense(h, "tanh", f"{prefix}encoder_{j}") for j, h in enumerate(hidden)]
            norms = []
        else:
            layers = [dense(h, None, f"{prefix}encoder_{j}") for j, h in enumerate(hidden)]
            norms = [tf.keras.layers.LayerNormalization(epsilon=0.1, name=f"{prefix}norm_{j}")
                     for j in range(len(hidden))]
        if variant == "vae":
            bottleneck = dense(2 * latent, None, f"{prefix}mu_logvar")
        else:
            bottleneck = dense(latent, "tanh", f"{prefix}bottleneck")
        return layers, norms, bottleneck

    # ---- pieces --------------------------------------------------------------------------
    def bag_rows(self, users, which: str = "train"):
        """The bag of ``users`` from the ragged table ``which`` ("train" / "score") as triples
        (row in the batch, modelled anime, weight)."""
        items, weights = (self.train_items, self.train_weights) if which == "train" else \
            (self.score_items, self.score_weights)
        rows = tf.gather(items, users)
        return (tf.cast(rows.value_rowids(), tf.int32), rows.flat_values,
                tf.gather(weights, users).flat_values)

    def sparse_batch(self, users, which: str = "train"):
        """The bag of ``users`` from the table ``which`` as a (B, n_out) SparseTensor."""
        rowids, cols, vals = self.bag_rows(users, which)
        return bag_tensor(rowids, cols, vals, tf.shape(users)[0], self.n_out)

    def input_batch(self, users, which: str = "train"):
        """The encoder's input bag: sparse (``sparse_input``) or dense."""
        return self.sparse_batch(users, which) if self.sparse_input else self.dense_batch(users, which)

    def dense_batch(self, users, which: str = "train"):
        """The (B, n_out) dense bag of ``users`` (modelled anime) from the table ``which``."""
        rowids, cols, vals = self.bag_rows(users, which)
        return tf.scatter_nd(tf.stack([rowids, cols], axis=1), vals, tf.stack([tf.shape(users)[0], self.n_out]))

    def to_catalogue(self, m, fill):
        """(B, n_out) -> (B, n_items): anime not modelled get ``fill`` (a (B, 1) column)."""
        return tf.gather(tf.concat([m, fill], axis=1), self.to_modelled, axis=1)

    def _keep(self, x, noise_key, rows=None):
        """The input-dropout mask of ``x`` keyed on ``noise_key`` (None: no dropout); ``rows``: under
        a strategy, this replica's rows of the global batch (``tfrs_model.replica_rows``), whose
        rows of the global batch's mask it takes."""
        if noise_key is None or self.dropout <= 0:
            return None
        draw = lambda shape: tf.random.stateless_uniform(shape, seed=noise_key)  # noqa: E731
        if isinstance(x, tf.SparseTensor):  # the dense draw's values at the nonzeros: the same mask
            u = global_noise(draw, tf.cast(x.dense_shape, tf.int32), rows)
            return tf.gather_nd(u, x.indices) >= self.dropout
        return global_noise(draw, tf.shape(x), rows) >= self.dropout

    def _drop(self, x, keep):
        """Inverted dropout of the dense or sparse ``x`` by the mask ``keep`` (None: none)."""
        if keep is None:
            return x
        if isinstance(x, tf.SparseTensor):
            return x.with_values(tf.where(keep, x.values / (1.0 - self.dropout), tf.zeros_like(x.values)))
        return tf.where(keep, x / (1.0 - self.dropout), tf.zeros_like(x))

    def skip_logits(self, x, noise_key=None, rows=None):
        """The linear part x B (diag(B) = 0) of the dense bag ``x``, after the same input dropout
        as the encoder's (the same mask: it is keyed on the same ``noise_key``)."""
        x = self._drop(x, self._keep(x, noise_key, rows))
        kernel = tf.linalg.set_diag(self.linear_kernel, tf.zeros([self.n_out], self.linear_kernel.dtype))
        if isinstance(x, tf.SparseTensor):
            return tf.sparse.sparse_dense_matmul(x, kernel)
        return tf.matmul(x, kernel)

    def wide_rows(self, users, which: str = "train"):
        """The wide part's input of ``users`` as a (B, n_out) SparseTensor: EASE's weighting of the
        history table ``which``."""
        items = self.train_items if which == "train" else self.score_items
        weights = self.train_wide_weights if which == "train" else self.score_wide_weights
        rows = tf.gather(items, users)
        idx = tf.stack([rows.value_rowids(), tf.cast(rows.flat_values, tf.int64)], axis=1)
        shape = tf.cast(tf.stack([tf.shape(users)[0], self.n_out]), tf.int64)
        return tf.SparseTensor(idx, tf.gather(weights, users).flat_values, shape)

    def wide_logits(self, x_sparse):
        """exp(log scale) · x B of the wide part (B's diagonal is 0 in the EASE solution)."""
        return tf.exp(self.wide_log_scale) * tf.sparse.sparse_dense_matmul(x_sparse, self.wide_kernel)

    def encode(self, x, noise_key=None, old: bool = False, rows=None):
        """(μ, log σ²) of the bag ``x`` (dense, or a SparseTensor: ``sparse_input``; log σ² None
        for the DAE): L2-normalised per row, then input dropout keyed on ``noise_key`` ((2,)
        int64; None at inference). ``old``: the frozen copy of the encoder (the composite prior's).
        ``rows``: see ``_keep``."""
        h = l2_normalize_rows(x) if isinstance(x, tf.SparseTensor) else tf.math.l2_normalize(x, axis=1)
        h = self._drop(h, self._keep(h, noise_key, rows))
        layers, norms, bottleneck = (self.encoder, self.norms, self.bottleneck) if not old else self.old_encoder
        if self.encoder_kind == "mlp":
            for j, layer in enumerate(layers):  # the first layer may take the sparse bag
                h = sparse_layer(layer, h, self.n_out, self.matmul_dtype if j == 0 else "float32")
        else:  # h_j = LN(swish(W_j h_{j-1} + h_1 + ... + h_{j-1}))
            outs = []
            for layer, norm in zip(layers, norms):
                pre = layer(h) + tf.add_n(outs) if outs else \
                    sparse_layer(layer, h, self.n_out, self.matmul_dtype)
                h = norm(tf.nn.silu(pre))
                outs.append(h)
        h = bottleneck(h)
        if self.variant == "vae":
            return h[:, :self.latent], h[:, self.latent:]
        return h, None

    def encode_users(self, users, which: str = "score"):
        """Inference (μ, log σ²) of ``users`` fed the history table ``which``."""
        return self.encode(self.input_batch(users, which))

    def decode(self, z):
        for layer in self.decoder:
            z = layer(z)
        return dense_apply(self.logits_layer, z, self.matmul_dtype)

    def logits_of(self, users, which: str = "score"):
        """Inference logits over the catalogue (μ, no dropout) of ``users`` fed the history table
        ``which``; anime not modelled score (the row's lowest logit − 1)."""
        wide = self.wide_rows(users, which) if self.wide_kernel is not None else None
        return self.logits_from_bag(self.input_batch(users, which), wide)

    def logits_from_bag(self, x, x_wide=None):
        """Inference logits over the catalogue of the (B, n_out) bags ``x``, dense (fold-in) or sparse;
        ``x_wide``: the wide part's input (dense or sparse (B, n_out); needed when there is one)."""
        mu, _ = self.encode(x)
        logits = self.decode(mu)
        if self.linear_kernel is not None:
            logits = logits + self.skip_logits(x)
        if self.wide_kernel is not None:
            if not isinstance(x_wide, tf.SparseTensor):
                x_wide = tf.sparse.from_dense(x_wide)
            logits = logits + self.wide_logits(x_wide)
        return self.to_catalogue(logits, tf.reduce_min(logits, axis=1, keepdims=True) - 1.0)

    def call(self, inputs, training=False):
        """Inference logits over the catalogue for ``inputs["user"]``, from the scoring history."""
        return self.logits_of(inputs["user"], "score")

    # ---- training ------------------------------------------------------------------------
    def _keys(self, step):
        step = tf.cast(step, tf.int64)
        s = tf.constant(self.noise_seed, tf.int64)
        return tf.stack([s, 2 * step]), tf.stack([s, 2 * step + 1])

    def losses_of(self, users, step, training: bool, rows=None):
        """(nll, kl) batch means for ``users`` (training: dropout and z sampling keyed on ``step``;
        ``rows``: under a strategy, this replica's rows of the global batch, so that each user gets
        the noise of a one-worker step: see ``tfrs_model.global_noise``)."""
        x = self.input_batch(users, "train")
        k_drop, k_eps = self._keys(step) if training else (None, None)
        mu, logvar = self.encode(x, k_drop, rows=rows)
        kl_user = None
        if self.variant == "vae":
            z = mu
            if training:
                eps = global_noise(lambda shape: tf.random.stateless_normal(shape, seed=k_eps), tf.shape(mu), rows)
                z = mu + tf.exp(0.5 * logvar) * eps
            if self.prior == "composite":  # one-sample estimate of KL(q || composite prior)
                old_mu, old_logvar = self.encode(x, None, old=True)
                kl_user = tf.reduce_sum(gaussian_log_pdf(z, mu, logvar)
                                        - composite_log_prior(z, old_mu, old_logvar), axis=-1)
            else:
                kl_user = gaussian_kl(mu, logvar)
            kl = tf.reduce_mean(kl_user)
        else:
            z, kl = mu, tf.constant(0.0)
        self._kl_user = kl_user  # per user, for the γ · |x_u| weighting of train_step
        logits = self.decode(z)
        if self.linear_kernel is not None:
            logits = logits + self.skip_logits(x, k_drop, rows)
        if self.wide_kernel is not None:  # the whole history, as at inference (no dropout)
            logits = logits + self.wide_logits(self.wide_rows(users, "train"))
        nll = multinomial_nll_sparse(logits, x) if isinstance(x, tf.SparseTensor) else multinomial_nll(logits, x)
        return tf.reduce_mean(nll), kl

    def beta(self, step):
        if self.variant != "vae":
            return tf.constant(0.0)
        return beta_schedule(step, self.beta_cap, self.anneal_steps)

    def kl_term(self, users, step, kl):
        """(the KL part of the loss, the β reported): β(t) · mean KL, or with ``kl_gamma`` > 0
        RecVAE's mean over users of γ · |x_u| · KL_u (|x_u|: the bag's total weight)."""
        if self.variant != "vae" or self.kl_gamma <= 0:
            beta = self.beta(step)
            return beta * kl, beta
        x = self.input_batch(users, "train")
        weight = self.kl_gamma * (row_sums(x) if isinstance(x, tf.SparseTensor) else tf.reduce_sum(x, axis=1))
        return tf.reduce_mean(weight * self._kl_user), tf.reduce_mean(weight)

    def refresh_old_encoder(self):
        """Copy the encoder into the composite prior's frozen copy."""
        cur = [v for layer in self.encoder + self.norms + [self.bottleneck] for v in layer.weights]
        old = [v for layer in self.old_encoder[0] + self.old_encoder[1] + [self.old_encoder[2]]
               for v in layer.weights]
        for o, c in zip(old, cur):
            o.assign(c)

    def _refreshed(self):
        self.refresh_old_encoder()
        return tf.constant(True)

    def compute_loss(self, inputs, training=False):
        step = self.optimizer.iterations
        nll, kl = self.losses_of(inputs["user"], step, training)
        return nll + self.kl_term(inputs["user"], step, kl)[0]

    def train_step(self, inputs):
        users = inputs["user"]
        step = self.optimizer.iterations  # gradient steps so far (restored by BackupAndRestore)
        if self.old_encoder is not None:  # at each epoch's first step (a resumed fit does the same)
            tf.cond(tf.equal(step % self.steps_per_epoch, 0), self._refreshed, lambda: tf.constant(False))
        replicas = num_replicas()
        if replicas > 1:
            return self._replica_train_step(users, step, replicas)
        with tf.GradientTape() as tape:
            nll, kl, kl_part, beta, reg = self.objective_terms(users, step)
            total = nll + kl_part + reg
        grads = self._dense_grads(tape.gradient(total, self.trainable_variables))
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return self._train_logs(users, total, nll, kl, beta)

    def objective_terms(self, users, step, rows=None):
        """The training step's terms for ``users`` at ``step`` (call inside the gradient tape):
        the mean nll, the mean KL, the KL term β · KL with its β, and the layer penalties; ``rows``
        as in ``losses_of`` (a replica's slice of the global batch)."""
        nll, kl = self.losses_of(users, step, training=True, rows=rows)
        kl_part, beta = self.kl_term(users, step, kl)
        reg = tf.add_n(self.losses) if self.losses else tf.constant(0.0)
        return nll, kl, kl_part, beta, reg

    def _dense_grads(self, grads):
        """The sparse input layer's gradient (IndexedSlices over the batch's anime) as the dense
        gradient the dense path gives, so that Adam's dense update runs on it as there."""
        if not self.sparse_input:
            return grads
        return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]

    def _replica_train_step(self, users, step, replicas):
        """``train_step`` under a strategy of ``replicas`` replicas (``TF_CONFIG``): this replica's
        users are its slice of the global batch, so its per-user means (nll, β · KL) are weighted by
        its share n / N of the batch and the weight penalties by 1 / replicas
        (``TFRSModel._replica_objective``): the optimizer's sum over the replicas is the one-worker
        objective. The dropout masks and ε are the global batch's draws at this replica's rows, so
        every user gets the noise of a one-worker step, and the step counter (β, the noise keys,
        the old encoder's refresh) is the optimizer's, which counts global steps."""
        n = tf.cast(tf.shape(users)[0], tf.float32)
        rows = replica_rows(tf.shape(users)[0])
        share = self.replica_share(n, tf.cast(rows[1], tf.float32))
        some = n > 0  # an empty slice (a last batch smaller than the replica count): means are NaN
        with tf.GradientTape() as tape:
            nll, kl, kl_part, beta, reg = self.objective_terms(users, step, rows=rows)
            nll, kl, kl_part = (tf.where(some, v, tf.zeros_like(v)) for v in (nll, kl, kl_part))
            objective = share * (nll + kl_part) + reg / float(replicas)
        grads = self._dense_grads(tape.gradient(objective, self.trainable_variables))
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        if self.variant == "vae" and self.kl_gamma > 0:  # β reported: the mean γ · |x_u| of the global batch
            beta = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, tf.where(some, beta * n, 0.0)) / tf.cast(rows[1], tf.float32)
        return self._train_logs(users, nll + kl_part + reg, nll, kl, beta)

    def _train_logs(self, users, total, nll, kl, beta):
        n = tf.cast(tf.shape(users)[0], tf.float32)
        self.loss_tracker.update_state(total, sample_weight=n)
        self.nll_tracker.update_state(nll, sample_weight=n)
        self.kl_tracker.update_state(kl, sample_weight=n)
        return {"loss": self.loss_tracker.result(), "nll": self.nll_tracker.result(),
                "kl": self.kl_tracker.result(), "beta": beta}

    def test_step(self, inputs):
        """ndcg@k of the batch's validation users fed their training history, as the harness
        computes it on ``part="val"``."""
        users, targets = inputs["user"], inputs["targets"]  # targets: (B, T) anime, -1 = padding
        s = self.logits_of(users, "train")
        rows = tf.gather(self.train_items, users)
        seen = rows.with_flat_values(tf.gather(self.out_items, rows.flat_values))  # catalogue ids
        self.ndcg.update_state(ndcg_at_k(s, self.candidates, seen, targets, self.val_k))
        return {self.ndcg.name: self.ndcg.result()}


class MultVAE(KerasRecommender):
    """Mult-VAE^PR / Mult-DAE (see the module docstring).

    Args:
        hidden: encoder widths (an int: one layer), mirrored by the decoder.
        latent: size of z (the bottleneck).
        variant: "vae" (Mult-VAE^PR) or "dae" (Mult-DAE).
        dropout: input dropout rate while training.
        beta_cap: the KL weight β reached at the end of the annealing (VAE).
        anneal_epochs: length of β's linear ramp in epochs (used when ``anneal_steps`` is 0).
        anneal_steps: length of the ramp in gradient steps (> 0 overrides ``anneal_epochs``).
        weight_decay: L2 penalty λ Σ W² on the weight matrices; None = 0.01 for "dae", 0 for "vae".
        weighting: "binary" (every interaction 1) or "rating" (rating / mean rating, unrated 1).
        catalogue: "trained" (input and softmax over the anime with a training interaction) or
            "all" (over the whole catalogue).
        fold_in: score from train + validation history when ``fit`` got a validation part (False:
            from train only, which scoring ``part="val"`` with the harness needs, e.g. tuning).
        val_k: cut-off of the validation ndcg used for early stopping.
        val_users: at most this many validation users (a seeded sample) for that ndcg.
        linear: add a full-rank item-item skip to the decoder's logits, x B with diag(B) = 0 (see
            the module docstring): (modelled anime)² weights.
        linear_l2: L2 penalty λ Σ B² on that skip.
        wide: "none", or "ease": add a frozen EASE item-item part to the logits (see the module
            docstring).
        wide_lam, wide_weighting: that EASE's λ and weighting ("binary" / "rating").
        wide_trainable: fine-tune the EASE kernel with the VAE instead of keeping it fixed.
        wide_scale: the starting value of the wide part's trained scale.
        encoder: "mlp" (the paper's tanh MLP) or "dense" (RecVAE's densely connected swish /
            LayerNorm encoder; equal widths in ``hidden``).
        decoder: "mlp" (the encoder mirrored) or "linear" (RecVAE's: z -> logits).
        prior: "normal" (N(0, I), the KL in closed form) or "composite" (RecVAE's).
        kl_gamma: > 0: the KL weight of user u is kl_gamma · |x_u| (RecVAE), not the annealed β.
        sparse_input: keep each batch's bag sparse (the module docstring's "Fast path"): the same
            model and loss, off by default so that the committed results stay bit-identical.
        fused_adam: with ``optimizer = "adam"``, Adam's dense update as TensorFlow's fused kernel
            (``multvae_sparse.FusedAdam``; the same formula), off by default for the same reason.
        matmul_dtype: "float32", or "bfloat16": the two (batch x modelled anime)-sized products
            (the first encoder layer and the logits layer, forward and both gradients) with their
            factors rounded to bfloat16 (``multvae_sparse.matmul``); variables, sums, softmax and
            loss stay float32. A different model numerically: off by default. Measured
            (2026-12-02, shared cores, load 2-4): a 1,024 x 600 x 17,562 product 6.8x faster
            (AMX), but a whole logits step (product, log-softmax, both gradients) only 1.2-1.6x
            at batch 1,024 and ~1.0-1.3x at the default 128 (the kernel's cast each step and the
            float32 elementwise work over B x anime remain); on the 5k CooperUnion set, fast
            path, 1.35x a step; at 310k x 17.5k the alternating fast / bf16 runs were within the
            load's noise (228 / 265 s and 323 / 187 s an epoch, extrapolated).
        epochs, batch_size, learning_rate, patience, ...: see ``KerasRecommender``.
    """

    fits_val_history = True

    predicts_ratings = False
    monitor = "val_ndcg_at_10"
    monitor_mode = "max"
    rated_only = False

    train_defaults = {"epochs": 200, "batch_size": 128, "learning_rate": 3e-3, "patience": 10,
                      "eval_batch_size": 1024}

    def __init__(self, hidden=(600,), latent: int = 200, variant: str = "vae", dropout: float = 0.2,
                 beta_cap: float = 0.5, anneal_epochs: float = 60.0, anneal_steps: int = 0,
                 weight_decay: float | None = None, weighting: str = "binary", catalogue: str = "trained",
                 fold_in: bool = True, val_k: int = 10, val_users: int = 2000, linear: bool = False,
                 linear_l2: float = 1e-4, wide: str = "none", wide_lam: float = 300.0,
                 wide_weighting: str = "binary", wide_trainable: bool = False, wide_scale: float = 1.0,
                 encoder: str = "mlp", decoder: str = "mlp", prior: str = "normal", kl_gamma: float = 0.0,
                 sparse_input: bool = False, fused_adam: bool = False, matmul_dtype: str = "float32",
                 seed: int = 0, **train):
        super().__init__(seed=seed, **train)
        hidden = [hidden] if isinstance(hidden, (int, np.integer)) else list(hidden)
        if not hidden or any(int(h) < 1 for h in hidden) or int(latent) < 1:
            raise ConfigError(f"multvae: hidden widths and latent must be >= 1, got {hidden}, {latent}")
        if variant not in VARIANTS:
            raise ConfigError(f"multvae: variant must be one of {VARIANTS}, got {variant!r}")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"multvae: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not 0 <= dropout < 1 or beta_cap < 0 or anneal_epochs < 0 or int(anneal_steps) < 0:
            raise ConfigError("multvae: dropout must be in [0, 1), beta_cap, anneal_epochs, anneal_steps >= 0")
        if weight_decay is not None and weight_decay < 0:
            raise ConfigError("multvae: weight_decay must be >= 0")
        if catalogue not in CATALOGUES:
            raise ConfigError(f"multvae: catalogue must be one of {CATALOGUES}, got {catalogue!r}")
        if int(val_k) < 1 or int(val_users) < 1:
            raise ConfigError("multvae: val_k and val_users must be >= 1")
        if linear_l2 < 0:
            raise ConfigError(f"multvae: linear_l2 must be >= 0, got {linear_l2}")
        if wide not in WIDES:
            raise ConfigError(f"multvae: wide must be one of {WIDES}, got {wide!r}")
        if wide_weighting not in WEIGHTINGS:
            raise ConfigError(f"multvae: wide_weighting must be one of {WEIGHTINGS}, got {wide_weighting!r}")
        if not float(wide_lam) > 0 or not float(wide_scale) > 0:
            raise ConfigError(f"multvae: wide_lam and wide_scale must be > 0, got {wide_lam}, {wide_scale}")
        if encoder not in ENCODERS or decoder not in DECODERS or prior not in PRIORS:
            raise ConfigError(f"multvae: encoder must be one of {ENCODERS}, decoder one of {DECODERS}, "
                              f"prior one of {PRIORS}; got {encoder!r}, {decoder!r}, {prior!r}")
        if encoder == "dense" and len({int(h) for h in hidden}) != 1:
            raise ConfigError(f"multvae: encoder = 'dense' sums its layers' outputs: every width in hidden "
                              f"must be the same, got {hidden}")
        if (prior == "composite" or float(kl_gamma) > 0) and variant != "vae":
            raise ConfigError("multvae: prior = 'composite' and kl_gamma > 0 need variant = 'vae' (a KL term)")
        if float(kl_gamma) < 0:
            raise ConfigError(f"multvae: kl_gamma must be >= 0, got {kl_gamma}")
        if matmul_dtype not in MATMUL_DTYPES:
            raise ConfigError(f"multvae: matmul_dtype must be one of {MATMUL_DTYPES}, got {matmul_dtype!r}")
        if fused_adam and self.optimizer != "adam":
            raise ConfigError(f"multvae: fused_adam needs optimizer = 'adam', got {self.optimizer!r}")
        self.monitor = f"val_ndcg_at_{int(val_k)}"
        self.hidden = [int(h) for h in hidden]
        self.latent = int(latent)
        self.variant = variant
        self.dropout = float(dropout)
        self.beta_cap = float(beta_cap)
        self.anneal_epochs = float(anneal_epochs)
        self.anneal_steps = int(anneal_steps)
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.weighting = weighting
        self.catalogue = catalogue
        self.fold_in = bool(fold_in)
        self.val_k, self.val_users = int(val_k), int(val_users)
        self.linear, self.linear_l2 = bool(linear), float(linear_l2)
        self.wide, self.wide_lam, self.wide_weighting = wide, float(wide_lam), wide_weighting
        self.wide_trainable, self.wide_scale = bool(wide_trainable), float(wide_scale)
        self.encoder, self.decoder, self.prior = encoder, decoder, prior
        self.kl_gamma = float(kl_gamma)
        self.sparse_input, self.fused_adam = bool(sparse_input), bool(fused_adam)
        self.matmul_dtype = matmul_dtype
        self._fit_val = None
        self._wide_init = None  # the EASE matrix between prepare() and build_model() (not saved twice)

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return _DAE_WEIGHT_DECAY if self.variant == "dae" else 0.0

    # ---- data ----------------------------------------------------------------------------
    def fit(self, train: Interactions, val: Interactions | None = None, **kwargs) -> "MultVAE":
        """As ``KerasRecommender.fit``; ``val``'s interactions also join the scoring history."""
        self._fit_val = val
        try:
            return super().fit(train, val, **kwargs)
        finally:
            self._fit_val = None

    def _table(self, data: Interactions, mean_rating: float, modelled: np.ndarray):
        """(indptr, modelled anime index, weight) of each user's distinct modelled anime (a duplicate
        pair keeps its last row, as ``Interactions.to_csr``; anime not modelled are left out)."""
        key = data.user.astype(np.int64) * data.n_items + data.item
        _, last = np.unique(key[::-1], return_index=True)  # sorted by (user, anime)
        keep = len(key) - 1 - last
        keep = keep[modelled[data.item[keep]] >= 0]
        user, item = data.user[keep], data.item[keep]
        r = data.rating[keep]
        w = np.where(np.isnan(r), 1.0, r / max(mean_rating, 1e-6)) if self.weighting == "rating" \
            else np.ones(len(keep))
        # the wide part's input: EASE's weighting (the rating where rated, 1 where not; or 1)
        w_wide = np.where(np.isnan(r), 1.0, r) if self.wide_weighting == "rating" else np.ones(len(keep))
        indptr = np.zeros(data.n_users + 1, np.int64)
        np.cumsum(np.bincount(user, minlength=data.n_users), out=indptr[1:])
        return indptr, modelled[item].astype(np.int32), w.astype(np.float32), w_wide.astype(np.float32)

    def prepare(self, train: Interactions) -> dict:
        r = train.rating[train.rated]
        mean_rating = float(r.mean()) if r.size else 1.0
        counts = np.bincount(train.item, minlength=train.n_items)
        trained = counts > 0
        out_items = np.flatnonzero(trained) if self.catalogue == "trained" else np.arange(train.n_items)
        modelled = np.full(train.n_items, -1, np.int64)
        modelled[out_items] = np.arange(len(out_items))
        # the input bags: training users' rows, plus held-out validation users' histories (validated
        # on, never trained on: the training examples are train's users)
        rows = self.history_rows(train)
        tr = self._table(rows, mean_rating, modelled)
        val = self._fit_val
        fold = self.fold_in and val is not None and len(val)
        sc = self._table(rows.concat(val), mean_rating, modelled) if fold else tr
        n_users = len(np.unique(train.user))
        steps_per_epoch = max(math.ceil(n_users / self.batch_size), 1)
        anneal = self.anneal_steps or int(round(self.anneal_epochs * steps_per_epoch))
        self._wide_init = self._fit_wide(train, out_items) if self.wide == "ease" else None
        return {"train_indptr": tr[0], "train_items": tr[1], "train_weights": tr[2],
                "train_wide_weights": tr[3],
                "score_indptr": sc[0], "score_items": sc[1], "score_weights": sc[2],
                "score_wide_weights": sc[3],
                "out_items": out_items.astype(np.int32), "trained_items": trained, "mean_rating": mean_rating,
                "anneal_steps_used": anneal, "steps_per_epoch": steps_per_epoch}

    def _fit_wide(self, train: Interactions, out_items: np.ndarray) -> np.ndarray:
        """EASE (``research.models.ease``, λ = ``wide_lam``, ``wide_weighting``) fitted on the
        training rows, as an (n_out, n_out) matrix over the modelled anime."""
        from research.models.ease import EASE

        ease = EASE(lam=self.wide_lam, weighting=self.wide_weighting).fit(train)
        pos = np.full(train.n_items, -1, np.int64)
        pos[out_items] = np.arange(len(out_items))
        at = pos[ease.active]
        if len(at) == len(out_items) and np.array_equal(at, np.arange(len(out_items))):
            return np.ascontiguousarray(ease.B, np.float32)  # the usual case: the same anime, in order
        kernel = np.zeros((len(out_items), len(out_items)), np.float32)
        kernel[np.ix_(at, at)] = ease.B
        return kernel

    def features(self, data: Interactions, training: bool) -> dict[str, np.ndarray]:
        if training:  # one example per user with a training interaction
            return {"user": np.unique(data.user).astype(np.int32)}
        return validation_targets(data, self.val_users, child_seed(self.seed, "val_users"))

    def build_model(self):
        st = self.fit_state
        return _MultVAEModel(
            self.meta.n_items, st["out_items"], self.hidden, self.latent, self.variant, self.dropout,
            self.effective_weight_decay, self.beta_cap, st["anneal_steps_used"],
            (st["train_indptr"], st["train_items"], st["train_weights"], st.get("train_wide_weights")),
            (st["score_indptr"], st["score_items"], st["score_weights"], st.get("score_wide_weights")),
            st["trained_items"], self.val_k, child_seed(self.seed, "multvae_noise"),
            linear_l2=self.linear_l2 if self.linear else None,
            wide=(self._wide_init if self._wide_init is not None else True) if self.wide == "ease" else None,
            wide_trainable=self.wide_trainable, wide_scale=self.wide_scale, encoder=self.encoder,
            decoder=self.decoder, prior=self.prior, kl_gamma=self.kl_gamma,
            steps_per_epoch=st.get("steps_per_epoch", 1), sparse_input=self.sparse_input,
            matmul_dtype=self.matmul_dtype)

    def make_optimizer(self):
        if self.fused_adam:  # optimizer == "adam" (checked in __init__)
            return FusedAdam(learning_rate=self.learning_rate)
        return super().make_optimizer()

    def after_fit(self) -> None:
        self._wide_init = None  # now a weight of the model
        self._logits_fn = {}
        k = self.model.logits_layer.kernel.numpy().T  # (modelled anime, last hidden)
        w = np.zeros((self.meta.n_items, k.shape[1]), np.float32)
        w[self.fit_state["out_items"]] = k
        w[~np.asarray(self.fit_state["trained_items"], bool)] = 0.0
        self._items = w
        self._users = None

    # ---- inference -----------------------------------------------------------------------
    def _batched(self, fn_name: str, users, which: str) -> np.ndarray:
        self._require_fitted()
        key = (fn_name, which)
        if key not in self._logits_fn:
            m = self.model
            body = (lambda u: m.logits_of(u, which)) if fn_name == "logits" else \
                (lambda u: m.encode_users(u, which)[0])
            self._logits_fn[key] = tf.function(body, reduce_retracing=True)
        users = np.asarray(users, dtype=np.int32)
        b = self.eval_batch_size
        out = [self._logits_fn[key](tf.constant(users[s:s + b])).numpy() for s in range(0, len(users), b)]
        width = self.meta.n_items if fn_name == "logits" else self.latent
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def score(self, users):
        """Decoder logits of ``users`` fed the scoring history (train + validation given to fit)."""
        return self._batched("logits", users, "score")

    def score_history(self, history) -> np.ndarray:
        """Fold-in: the decoder's logits for users given by ``history`` alone (the encoder fed
        their bag, built as ``fit`` builds the training bags: binary, or rating / mean training
        rating with unrated rows at 1; anime not modelled are left out). A training user's own
        training history gives ``scores_from_history(users, "train")`` (float32 round-off)."""
        history = self.check_history(history)
        self._require_fitted()
        st = self.fit_state
        out_items = np.asarray(st["out_items"])
        row, item, r = history.triples()

        def weighted(rating_w):
            return sp.csr_matrix((rating_w.astype(np.float32), (row, item)), shape=history.seen.shape)

        if self.weighting == "rating":
            bag = weighted(np.where(np.isnan(r), 1.0, r / max(st["mean_rating"], 1e-6)))
        else:
            bag = history.seen
        bag = bag[:, out_items].tocsr()  # modelled anime, in the model's order
        wide = None
        if self.wide == "ease":
            wide = weighted(np.where(np.isnan(r), 1.0, r)) if self.wide_weighting == "rating" else history.seen
            wide = wide[:, out_items].tocsr()
        if "bag" not in self._logits_fn:
            self._logits_fn["bag"] = tf.function(self.model.logits_from_bag, reduce_retracing=True)
        b = self.eval_batch_size

        def dense(m, s):
            return None if m is None else tf.constant(m[s:s + b].toarray(), tf.float32)

        out = [self._logits_fn["bag"](dense(bag, s), dense(wide, s)).numpy()
               for s in range(0, bag.shape[0], b)]
        return np.concatenate(out) if out else np.zeros((0, self.meta.n_items), np.float32)

    def scores_from_history(self, users, which: str = "train") -> np.ndarray:
        """Logits of ``users`` fed the training history (``"train"``) or the scoring one (``"score"``)."""
        if which not in ("train", "score"):
            raise ValueError("which must be 'train' or 'score'")
        return self._batched("logits", users, which)

    def dense_history(self, users, which: str = "train") -> np.ndarray:
        """The input bag the model builds in the graph, on the catalogue: (len(users), n_items)
        (anime not modelled: 0)."""
        self._require_fitted()
        users = tf.constant(np.asarray(users, np.int32))
        x = self.model.dense_batch(users, which)
        return self.model.to_catalogue(x, tf.zeros_like(x[:, :1])).numpy()

    def item_vectors(self):
        return self._items

    def user_vectors(self):
        if self._users is None:
            self._users = self._batched("mu", np.arange(self.meta.n_users), "score")
        return self._users

    def extra_metrics(self) -> dict:
        out = super().extra_metrics()
        out["anneal_steps"] = int(self.fit_state.get("anneal_steps_used", 0))
        return out
