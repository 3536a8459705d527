"""``two_tower``: retrieval with a user tower and an anime tower (TFRS).

Size: one module because it is one model: the towers (with the hand-written gradient of the
history sums), the Keras model around them and the wrapper that feeds them, plus this docstring's
record of how the defaults were chosen; the full-softmax loss and its gradient are
``full_softmax.py``.

- Anime tower: an anime-id embedding (initialised at zero, so an anime nobody interacted with is
  embedded by its features alone) concatenated with the side features of ``features.item_encoder``
  (genres, studios, type, source, log episodes, the top TF-IDF terms of the synopsis), then a
  Dense projection to ``dim`` and an L2 normalisation.
- User tower: a user-id embedding (zero-initialised too; ``user_id = False`` drops it) concatenated
  with the mean of a history embedding over the user's *training* anime, optional ReLU layers
  (``user_layers``), then a Dense projection and L2 normalisation. While training on the pair
  (u, i), i is taken out of u's history mean (otherwise the tower learns to find i in its own
  input, which it cannot do at test time). Without the user id the tower reads the history alone,
  so ``encode_history`` encodes any user, one it never saw included, from a list of anime; the
  training users' vectors are computed that way too.
- Loss (``loss``), logits = cosine / ``temperature`` in both:
  - ``"full_softmax"`` (default): for each training pair (u, i) the exact softmax over every
    candidate anime (the anime with a training row, the harness's candidates: 6,539 of the
    sample's 17,562), the anime tower run once per batch over all of them, cross-entropy on i.
    With ``mask_history`` (default) u's *other* training anime are left out of the denominator:
    each positive competes with u's non-positives only. Unmasked, the per-pair losses of a user sum
    to Mult-VAE's multinomial log-likelihood of all their anime (with a leave-one-out input instead
    of input dropout); masking measured better (below), so the per-user multinomial variant is not
    built. No logQ correction: nothing is sampled, so there is no sampling bias to correct
    (``sampling_correction`` applies to ``"in_batch"`` only).
  - ``"in_batch"``: the batch's anime as negatives (``tfrs.tasks.Retrieval``), accidental hits
    (the same anime twice in a batch) removed, with the log-frequency ("logQ") sampling-bias
    correction: in-batch negatives are drawn in proportion to popularity, so without it popular
    anime are over-penalised.
- Trained on every training interaction (rated or "watched"), optionally weighted by rating.
- **Grouped training** (``user_folds`` = K >= 2; 0, the default, trains on pairs as above): the
  training examples are (user, fold) groups instead of pairs. Each epoch every user's training
  history is split into K_u = min(K, |history|) folds by a hash of (seed, epoch, user, anime)
  (``fold_of``: a new partition every epoch, the same after a resume); the group (u, f) encodes u
  from the history *outside* fold f and takes every anime of fold f as a target of the full
  softmax (masked as above), so the user vector and the (1 x N) logits are computed once per group
  and shared by its ~|history| / K targets instead of once per pair. Every training pair is a
  target exactly once an epoch, as in per-pair training; what changes is the input of its user
  tower (the history without a whole fold, not without the one anime): leave-fold-out instead of
  leave-one-out, the denoising Mult-DAE does with dropout. ``batch_size`` then counts groups.
  Autodiff gradients (``fast_grad`` is for per-pair training); not with ``rating_weight`` or
  ``loss = "in_batch"``. The logged ``loss`` is the epoch's mean per group.
- Early stopping on the validation part's ndcg@``val_k``, computed in the graph exactly as the
  harness does on ``part="val"`` (candidates: anime with a training row; each user's training anime
  excluded; every validation anime relevant), over at most ``val_users`` validation users.
  ``FactorizedTopK`` is not used: it cannot exclude seen anime, so its numbers would not be the
  harness's. On held-out users (``fits_val_history``, ``Recommender.fit_split``) the validation
  users have no training row: their histories join the history table (read by the user tower at
  validation, never a training pair), so the id-free tower stops on the harness's ``part="val"``
  of those users folded in, not on the empty-history ranking it saw before.

Defaults (loss = "full_softmax", mask_history, user_id, temperature 0.2, 60 epochs, patience 8)
were chosen on seed 0's *validation* ndcg@10 of the mal2020 sample (``mal2020_sample.toml``'s data
and split; the early-stopping value, equal to the harness's ``part="val"``); the four-way comparison
over seeds 0-2 is ``experiments/configs/two_tower_variants.toml`` (``results/tables/
two_tower_variants.md``). Seed 0, validation (test) ndcg@10:

==============================================================  ===============  ==========
configuration                                                    val (test)       best / ran
==============================================================  ===============  ==========
previous default: in_batch, T 0.05, 40 epochs, patience 4         0.1052 (0.246)   14 / 18
in_batch, T 0.13 / 0.2 / 0.3, 60 (80) epochs, patience 8          0.138 / 0.146 / 0.141
full_softmax, T 0.05 / 0.1, patience 4 (stopped early)            0.100 / 0.104
full_softmax, T 0.2, not masked, patience 8                       0.1321 (0.302)   28 / 36
full_softmax, T 0.2, masked, 60 epochs, patience 8  (default)     0.1524 (0.364)   59 / 60
full_softmax, T 0.2, masked, user_id = False                      0.1477 (0.354)   42 / 50
full_softmax, T 0.2, learning rate 0.01 instead of 0.003          0.1316 (0.323)   39 / 40
==============================================================  ===============  ==========

The temperature matters most (0.05 was the old default, and the old tuning space stopped at 0.1):
at 0.05 both losses peak within a few epochs and overfit; at 0.2 they climb for 40-60 epochs (the
climb has a dip around epochs 4-8, which patience 4 mistook for the peak; hence patience 8). At
equal epochs (40) the two losses are level; the full softmax keeps improving after that.
Cost (2 shared cores, under load ~4.5-5 from another job; cooperunion_5k seed-0 split: 374,838
training pairs, 7,080 candidates, batch 1,024, 367 steps an epoch, validation included): ``fast_grad
= True`` (the default, hand-written gradients of the same loss) 54 / 45.5 s an epoch (7,522 pairs/s)
against 116 / 116 s (3,240 pairs/s) for TF's autodiff (``fast_grad = False``, the code before the
option), with identical epoch losses (7603.28, 7212.64, 7106.69) and validation ndcg@10 over 3
epochs; on the mal2020 sample (seed 0, 12 epochs, patience off, ``experiments/val_probe.py``) both
reach validation ndcg@10 0.1129, in 288 s against 754 s. The committed two_tower tables were made
with the autodiff path: over 60 epochs the two paths' float32 round-off may move their last digits.
Where a step's time went (autodiff, one batch, CPU ms): the (B x N) softmax and its gradient
~115-145 (of which the three matmuls ~45, one exp over B x N ~14, a scatter of the B x |history|
masked entries, ~220k, into a dense (B x N) gradient ~35), the user tower's history sums ~55-65 (an
unsorted segment sum of ~140k history rows ~20, and the optimizer's ``tf.unique`` deduplication of
their IndexedSlices gradient ~30), the anime tower over all candidates with its side features
~15-25, validation ~0.6 s an epoch. The fast path: a dense boolean history mask (a users x
candidates table, or scattered per batch when that would exceed 256 MB), the bound 1 / T instead of
the row maximum, d q = s * (E c) and d c = E^T (s * q) with no (B x N) gradient temporary, a sorted
segment sum and a dense gradient for the history table (not for ``lazy_adam``, whose sparse update
differs). ``research/bench/two_tower_speed.py`` measures it.

``score(users)`` is the dot product of the user vector with every anime vector (both from the
towers, computed once after fitting); ``similar_items`` / ``similar_users`` use the same vectors.
"""
from __future__ import annotations

import numpy as np

from research.data.interactions import Interactions
from research.errors import ConfigError
from research.models.keras import full_softmax
from research.models.keras.common import KerasRecommender, TFRSModel, tf, tfrs
from research.models.keras.features import build_item_features, item_encoder
from research.models.keras.validation import ndcg_at_k, validation_targets
from research.seeding import child_seed

_FEATURES = ("genres", "studios", "type", "source", "episodes", "synopsis")
_LOSSES = ("in_batch", "full_softmax")
#: largest (users x candidates) history mask the fast full softmax keeps as a table (bytes)
_MASK_TABLE_BYTES = 256 << 20
#: the MINSTD generator's modulus and multiplier (Park and Miller), hashing ``user_folds``' folds
_MINSTD_M, _MINSTD_A = 2147483647, 48271



def _candidate_history(col: np.ndarray, hist_items, hist_indptr) -> tuple[np.ndarray, np.ndarray]:
    """The histories (CSR: ``hist_items`` by ``hist_indptr``) as candidate columns (``col``: an
    anime's column, -1 when it is not a candidate), non-candidates dropped: (columns, row splits)."""
    indptr = np.asarray(hist_indptr, np.int64)
    cols = col[np.asarray(hist_items, np.int64)]
    keep = cols >= 0
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    counts = np.bincount(rows[keep], minlength=len(indptr) - 1)
    return cols[keep], np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


class _Rows:
    """A CSR-like (indptr, indices) pair of distinct anime per user (the training histories)."""

    def __init__(self, indptr, indices):
        self.indptr, self.indices = indptr, indices


class _TwoTowerModel(TFRSModel):
    # both losses are sums over the batch's pairs (the full softmax's cross-entropies; TFRS'
    # Retrieval task reduces with SUM): under a strategy a replica's sum enters the objective as it
    # is (TFRSModel._replica_objective)
    loss_reduction = "sum"

    def __init__(self, n_users, n_items, id_dim, dim, item_features, feature_dims, use_features, history,
                 hist_indptr, hist_items, candidates, log_q, temperature, l2, val_k, loss="in_batch",
                 mask_history=True, user_id=True, user_layers=(), fast_grad=True, dense_history_grad=True,
                 user_folds=0, fold_seed=0, steps_per_epoch=1):
        super().__init__()
        self.user_folds = int(user_folds)
        self.fold_seed = int(fold_seed) % _MINSTD_M
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        zeros = "zeros"
        self.n_items = n_items
        self.id_dim = int(id_dim)
        self.item_id = tf.keras.layers.Embedding(n_items, id_dim, embeddings_initializer=zeros,
                                                 name="item_id_embedding")
        self.side = item_encoder(item_features, feature_dims, use=use_features) if use_features else None
        self.item_proj = tf.keras.layers.Dense(dim, name="item_projection")
        self.use_user_id = bool(user_id)
        self.user_id = tf.keras.layers.Embedding(n_users, id_dim, embeddings_initializer=zeros,
                                                 name="user_id_embedding") if self.use_user_id else None
        self.use_history = bool(history)
        self.hist_emb = tf.keras.layers.Embedding(n_items, id_dim, embeddings_initializer=zeros,
                                                  name="history_embedding")
        self.user_hidden = [tf.keras.layers.Dense(int(n), activation="relu", name=f"user_hidden_{j}")
                            for j, n in enumerate(user_layers)]
        self.user_proj = tf.keras.layers.Dense(dim, name="user_projection")
        # each user's training anime, as a ragged table (row u = u's distinct anime)
        self.hist = tf.RaggedTensor.from_row_splits(tf.constant(hist_items, tf.int32),
                                                    tf.constant(hist_indptr, tf.int64))
        self.candidates = tf.constant(candidates, tf.bool)
        self.log_q = tf.constant(log_q, tf.float32)
        self.l2 = float(l2)
        self.val_k = int(val_k)
        self.loss_kind = loss
        self.mask_history = bool(mask_history)
        self.temperature = float(temperature)
        self.fast_grad = bool(fast_grad)
        self.dense_history_grad = bool(dense_history_grad)
        # full softmax: the denominator runs over the candidates (anime with a training row); the
        # column of an anime among them, and each user's history as candidate columns
        cand = np.flatnonzero(np.asarray(candidates)).astype(np.int32)
        col = np.full(n_items, -1, np.int32)
        col[cand] = np.arange(len(cand), dtype=np.int32)
        self.cand_ids = tf.constant(cand)
        self.cand_col = tf.constant(col)
        # (a validation user's history may hold anime no training row has: not candidates, so not
        # in any denominator, and left out of the mask, whose -1 column would mean the last one)
        hist_cols, hist_splits = _candidate_history(col, hist_items, hist_indptr)
        self.hist_cols = tf.RaggedTensor.from_row_splits(tf.constant(hist_cols, tf.int32),
                                                         tf.constant(hist_splits, tf.int64))
        # the fast path's history mask: a (users x candidates) boolean table when it is small
        self.mask_table = None
        if self.fast_grad and self.mask_history and n_users * len(cand) <= _MASK_TABLE_BYTES:
            self.mask_table = tf.constant(full_softmax.history_mask_table(n_users, len(cand), hist_splits,
                                                                          hist_cols))
        self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)
        self.ndcg = tf.keras.metrics.Mean(name=f"ndcg_at_{val_k}")

    # ---- towers --------------------------------------------------------------------------
    def item_tower(self, items):
        parts = [self.item_id(items)]
        if self.side is not None:
            parts.append(self.side(items))
        return tf.math.l2_normalize(self.item_proj(tf.concat(parts, -1)), axis=-1)

    def _user_head(self, id_part, hist_mean):
        """The user vector from the user-id embedding rows (or None) and the mean history rows."""
        parts = ([id_part] if id_part is not None else []) + ([hist_mean] if hist_mean is not None else [])
        x = tf.concat(parts, -1) if len(parts) > 1 else parts[0]
        for layer in self.user_hidden:
            x = layer(x)
        return tf.math.l2_normalize(self.user_proj(x), axis=-1)

    def _history_sums(self, rows):
        """(sum of the history embeddings, count) per row of a ragged (R, None) table of anime."""
        sums = tf.math.unsorted_segment_sum(self.hist_emb(rows.flat_values), rows.value_rowids(),
                                            rows.nrows(out_type=tf.int32))
        return sums, tf.cast(rows.row_lengths(), tf.float32)[:, None]

    def _history_sums_fast(self, rows, pos, leave_out):
        """``gather(sums of rows, pos) - hist_emb(leave_out)`` with a hand-written gradient: the
        history table's gradient is accumulated straight into a dense (n_items, id_dim) tensor
        (one segment sum) instead of autodiff's IndexedSlices of one row per history entry of the
        batch (~140k rows a batch on the 5k set), which the optimizer first deduplicates with
        ``tf.unique`` and a segment sum. Same values; only for optimizers whose sparse update equals
        the dense one with zero rows (Adam, Adagrad, SGD; not ``lazy_adam``)."""
        if not self.hist_emb.built:
            self.hist_emb(tf.zeros([1], tf.int32))
        table = self.hist_emb.embeddings
        flat, rowids = rows.flat_values, tf.cast(rows.value_rowids(), tf.int32)
        nrows = rows.nrows(out_type=tf.int32)

        @tf.custom_gradient
        def f(t):
            # row ids are sorted (a ragged tensor's): the sorted segment sum is ~4x faster; rows
            # after the last non-empty one are padded back
            sums = tf.math.segment_sum(tf.gather(t, flat), rowids)
            sums = tf.pad(sums, [[0, nrows - tf.shape(sums)[0]], [0, 0]])
            total = tf.gather(sums, pos)
            if leave_out is not None:
                total -= tf.gather(t, leave_out)

            def grad(dy):
                ds = tf.math.unsorted_segment_sum(dy, pos, nrows)  # per distinct user
                dt = tf.math.unsorted_segment_sum(tf.gather(ds, rowids), flat, self.n_items)
                if leave_out is not None:
                    dt -= tf.math.unsorted_segment_sum(dy, leave_out, self.n_items)
                return dt

            return total, grad

        return f(tf.convert_to_tensor(table))

    def user_tower(self, users, leave_out=None):
        hist_mean = None
        if self.use_history:
            # each distinct user's history is summed once per batch (a batch of B pairs holds far
            # fewer distinct users than B, and every history row costs a lookup and a gradient row)
            uniq, pos = tf.unique(users)
            rows = tf.gather(self.hist, uniq)  # (U, None) anime ids
            if self.fast_grad and self.dense_history_grad and leave_out is not None:
                total = self._history_sums_fast(rows, pos, leave_out)
                count = tf.gather(tf.cast(rows.row_lengths(), tf.float32)[:, None], pos) - 1.0
            else:
                sums, counts = self._history_sums(rows)
                total, count = tf.gather(sums, pos), tf.gather(counts, pos)
                if leave_out is not None:  # training pair (u, i): i is in u's history, take it out
                    total -= self.hist_emb(leave_out)
                    count -= 1.0
            hist_mean = total / tf.maximum(count, 1.0)
        return self._user_head(self.user_id(users) if self.use_user_id else None, hist_mean)

    def encode_rows(self, rows):
        """User vectors of the histories ``rows`` (a ragged (R, None) table of anime indices), with
        a zero user-id part (what an id row never trained holds) when the tower has one."""
        sums, counts = self._history_sums(rows)
        id_part = tf.zeros([tf.shape(sums)[0], self.id_dim]) if self.use_user_id else None
        return self._user_head(id_part, sums / tf.maximum(counts, 1.0))

    def call(self, inputs, training=False):
        """User vectors for ``inputs["user"]``. The anime tower is run too (on ``inputs["item"]``, or
        anime 0) so that one call builds every variable, as checkpoint restoring needs."""
        users = inputs["user"]
        self.item_tower(inputs["item"] if "item" in inputs else tf.zeros_like(users))
        return self.user_tower(users)

    # ---- training ------------------------------------------------------------------------
    def full_softmax_loss(self, q, users, items, weight=None):
        """Sum over the batch of ``weight * -log softmax(q C^T / T)[i]``, C the anime-tower vectors of
        every candidate anime (computed once per batch); with ``mask_history`` the user's other
        training anime are left out of the denominator (``full_softmax.full_softmax_loss``; with
        ``fast_grad``, ``full_softmax.full_softmax_fast``)."""
        c = self.item_tower(self.cand_ids)  # (N, dim): the whole candidate catalogue
        if self.fast_grad:
            return self._full_softmax_fast(q, c, users, items, weight)
        target = tf.gather(self.cand_col, items)  # (B,) columns
        history = tf.gather(self.hist_cols, users) if self.mask_history else None
        return full_softmax.full_softmax_loss(q, c, target, self.temperature, history, weight)

    def _history_mask(self, users):
        """(B, N) bool: True where column j is one of the pair's user's training anime. Rows of the
        precomputed (users x candidates) table when it was small enough to build, else scattered
        from the users' histories (B x |history| entries) for this batch."""
        if self.mask_table is not None:
            return tf.gather(self.mask_table, users)
        return full_softmax.scattered_history_mask(tf.gather(self.hist_cols, users), tf.shape(users)[0],
                                                   tf.shape(self.cand_ids)[0])

    def _full_softmax_fast(self, q, c, users, items, weight=None):
        """``full_softmax_loss``'s objective with a hand-written gradient (``full_softmax.full_softmax_fast``)."""
        target = tf.gather(self.cand_col, items)  # (B,) columns
        mask = self._history_mask(users) if self.mask_history else None
        return full_softmax.full_softmax_fast(q, c, target, self.temperature, mask, weight)

    def compute_loss(self, inputs, training=False):
        if self.user_folds:
            return self.fold_loss(inputs["user"], inputs["fold"])
        users, items = inputs["user"], inputs["item"]
        q = self.user_tower(users, leave_out=items if self.use_history else None)
        if self.loss_kind == "full_softmax":
            loss = self.full_softmax_loss(q, users, items, inputs.get("weight"))
        else:
            c = self.item_tower(items)
            loss = self.task(q, c, sample_weight=inputs.get("weight"),
                             candidate_sampling_probability=tf.exp(tf.gather(self.log_q, items)),
                             candidate_ids=items, compute_metrics=False, compute_batch_metrics=False)
        if self.l2:
            penalty = tf.reduce_sum(self.item_id(items) ** 2)
            if self.use_user_id:
                penalty += tf.reduce_sum(self.user_id(users) ** 2)
            loss += self.l2 * penalty
        return loss

    # ---- grouped training (``user_folds``) -------------------------------------------------
    def fold_of(self, users, rows):
        """The fold (0 .. K_u - 1, K_u = min(user_folds, |history|)) of every entry of ``rows`` (the
        ragged (G, None) histories of ``users``) in this epoch: a MINSTD hash of (seed, epoch,
        user, anime), so every epoch partitions each history anew, the same on every run and
        after a resume (the epoch is the optimizer's step count // steps per epoch)."""
        epoch = tf.cast(self.optimizer.iterations // self.steps_per_epoch, tf.int64)
        rowids = rows.value_rowids()
        user = tf.cast(tf.gather(users, rowids), tf.int64)
        h = (tf.cast(rows.flat_values, tf.int64) + 1) % _MINSTD_M
        for part in (user, epoch + 0 * user, self.fold_seed + 0 * user):  # chain the parts in
            h = (h * _MINSTD_A + part + 1) % _MINSTD_M
            h = (h * _MINSTD_A) % _MINSTD_M
        k = tf.minimum(tf.cast(self.user_folds, tf.int64), tf.gather(rows.row_lengths(), rowids))
        return tf.cast(h % tf.maximum(k, 1), tf.int32), rowids

    def fold_loss(self, users, folds):
        """Σ over the targets of the batch's (user, fold) groups of -log softmax(q c^T / T)[target]:
        the user vector q is computed once per group from the history *without* the fold (the fold's
        anime are the targets, each in exactly one fold an epoch), the (G x N) logits once per group
        and shared by its targets. With ``mask_history`` every training anime of the user other than
        the target is left out of its denominator, as in per-pair training; unmasked, the softmax
        runs over every candidate. The user-id and anime-id L2 penalty counts each group's user once
        and each target anime once."""
        rows = tf.gather(self.hist, users)  # (G, None) anime
        fold, rowids = self.fold_of(users, rows)
        is_target = tf.equal(fold, tf.gather(folds, rowids))
        keep = tf.cast(tf.logical_not(is_target), tf.float32)[:, None]
        g = tf.shape(users)[0]
        hist_mean = None
        if self.use_history:
            sums = tf.math.unsorted_segment_sum(self.hist_emb(rows.flat_values) * keep, rowids, g)
            counts = tf.math.unsorted_segment_sum(keep, rowids, g)
            hist_mean = sums / tf.maximum(counts, 1.0)
        q = self._user_head(self.user_id(users) if self.use_user_id else None, hist_mean)
        c = self.item_tower(self.cand_ids)
        logits = tf.matmul(q, c, transpose_b=True) / self.temperature  # (G, N)
        top = tf.stop_gradient(tf.reduce_max(logits, axis=1))
        e = tf.exp(logits - top[:, None])
        if self.mask_history:
            e = tf.where(self._history_mask(users), tf.zeros_like(e), e)
        den = tf.reduce_sum(e, axis=1)  # (G,): the non-history (masked) or every candidate
        t_row = tf.cast(tf.boolean_mask(rowids, is_target), tf.int32)
        t_item = tf.boolean_mask(rows.flat_values, is_target)
        t_col = tf.gather(self.cand_col, t_item)
        tgt = tf.gather_nd(logits, tf.stack([t_row, t_col], axis=1))
        t_top = tf.gather(top, t_row)
        t_den = tf.gather(den, t_row)
        if self.mask_history:  # the target's own term joins its denominator
            t_den = t_den + tf.exp(tgt - t_top)
        loss = tf.reduce_sum(t_top + tf.math.log(t_den) - tgt)
        if self.l2:
            penalty = tf.reduce_sum(self.item_id(t_item) ** 2)
            if self.use_user_id:
                penalty += tf.reduce_sum(self.user_id(users) ** 2)
            loss += self.l2 * penalty
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
        sampling_correction: subtract log(training frequency) from in-batch logits (logQ);
            ``loss = "in_batch"`` only (the full softmax samples nothing).
        rating_weight: weight of a rated interaction = 1 + rating_weight * (r - μ) / σ, floored at
            0.1; unrated ones weigh 1 (0 = all interactions equal).
        l2: L2 penalty on the batch's user-id and anime-id embedding rows.
        val_k: cut-off of the validation ndcg used for early stopping.
        val_users: at most this many validation users (a seeded sample) for that ndcg.
        loss: "full_softmax" (exact softmax over every candidate anime) or "in_batch".
        mask_history: full softmax only: leave the user's other training anime out of the
            denominator of each pair's softmax.
        user_id: give the user tower a user-id embedding; False = the history alone (any user's
            vector from their anime: ``encode_history``).
        user_layers: sizes of ReLU layers between the user tower's input and its projection.
        fast_grad: hand-written gradients of the full softmax and of the history sums (the same
            objective and loss, gradients equal up to float round-off; several times faster).
            False: TF's autodiff of the same loss (the code before this option existed).
        user_folds: 0 (per-pair training) or K >= 2: grouped training on (user, fold) groups
            (see the module docstring); ``batch_size`` then counts groups.
        epochs, batch_size, learning_rate, patience, ...: see ``KerasRecommender``.
    """

    fits_val_history = True

    predicts_ratings = False
    monitor = "val_ndcg_at_10"
    monitor_mode = "max"
    rated_only = False

    train_defaults = {"epochs": 60, "batch_size": 1024, "learning_rate": 0.003, "patience": 8, "eval_batch_size": 4096}

    def __init__(self, dim: int = 64, id_dim: int = 32, use_history: bool = True,
                 side_features: list = _FEATURES, feature_dims: dict | None = None, synopsis_terms: int = 24,
                 synopsis_vocab: int = 5000, temperature: float = 0.2, sampling_correction: bool = True,
                 rating_weight: float = 0.0, l2: float = 0.0, val_k: int = 10, val_users: int = 2000,
                 loss: str = "full_softmax", mask_history: bool = True, user_id: bool = True,
                 user_layers: list = (), fast_grad: bool = True, user_folds: int = 0, seed: int = 0, **train):
        super().__init__(seed=seed, **train)
        bad = [f for f in side_features if f not in _FEATURES]
        if bad:
            raise ConfigError(f"unknown two_tower feature(s) {bad} (valid: {', '.join(_FEATURES)})")
        if int(dim) < 1 or int(id_dim) < 1 or temperature <= 0 or int(val_k) < 1 or int(val_users) < 1:
            raise ConfigError("dim, id_dim, val_k, val_users must be >= 1 and temperature > 0")
        if l2 < 0 or rating_weight < 0:
            raise ConfigError("l2 and rating_weight must be >= 0")
        if loss not in _LOSSES:
            raise ConfigError(f"two_tower loss must be one of {', '.join(_LOSSES)}, got {loss!r}")
        if not user_id and not use_history:
            raise ConfigError("two_tower with user_id = false needs use_history = true (the user tower "
                              "would have no input)")
        if any(int(n) < 1 for n in user_layers):
            raise ConfigError(f"two_tower user_layers must be sizes >= 1, got {list(user_layers)}")
        if int(user_folds) < 0 or int(user_folds) == 1:
            raise ConfigError(f"two_tower user_folds must be 0 (per-pair training) or >= 2, got {user_folds}")
        if int(user_folds) and (loss != "full_softmax" or not use_history or rating_weight):
            raise ConfigError("two_tower user_folds needs loss = 'full_softmax', use_history = true and "
                              "rating_weight = 0 (a group's targets share one softmax and carry no weights)")
        self.user_folds = int(user_folds)
        self.loss = str(loss)
        self.mask_history = bool(mask_history)
        self.user_id = bool(user_id)
        self.user_layers = [int(n) for n in user_layers]
        self.fast_grad = bool(fast_grad)
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
        # the history table: training users' anime, plus held-out validation users' histories
        # (``history_rows``: read by validation, never trained on; counts and ratings are train's)
        seen = self.history_rows(train).to_csr("ones")
        counts = np.bincount(train.item, minlength=train.n_items).astype(np.float64)
        r = train.rating[train.rated].astype(np.float64)
        grouped = {}
        if self.user_folds:  # the pipeline's steps an epoch (the fold hash's epoch counter)
            n_groups = int(np.minimum(np.diff(seen.indptr)[np.unique(train.user)], self.user_folds).sum())
            grouped["steps_per_epoch"] = max(-(-n_groups // self.batch_size), 1)
        return {**grouped, "hist_indptr": seen.indptr.astype(np.int64), "hist_items": seen.indices.astype(np.int32),
                "trained_items": counts > 0, "item_count": counts.astype(np.float32),
                "rating_mu": float(r.mean()) if r.size else 0.0, "rating_sd": float(r.std()) if r.size else 1.0}

    def features(self, data: Interactions, training: bool) -> dict[str, np.ndarray]:
        if training and self.user_folds:  # one example per (user, fold): fold < min(K, |history|)
            n = np.diff(self.fit_state["hist_indptr"])
            users = np.unique(data.user)
            k = np.minimum(n[users], self.user_folds)
            return {"user": np.repeat(users, k).astype(np.int32),
                    "fold": (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)).astype(np.int32)}
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
                              self.l2, self.val_k, loss=self.loss, mask_history=self.mask_history,
                              user_id=self.user_id, user_layers=self.user_layers, fast_grad=self.fast_grad,
                              # lazy_adam updates only the rows of a sparse gradient: keep it sparse
                              dense_history_grad=self.optimizer != "lazy_adam", user_folds=self.user_folds,
                              fold_seed=child_seed(self.seed, "two_tower_folds"),
                              steps_per_epoch=st.get("steps_per_epoch", 1))

    def after_fit(self) -> None:
        m = self.model
        b = 8192
        self._items = np.concatenate([m.item_tower(tf.range(s, min(s + b, self.meta.n_items))).numpy()
                                      for s in range(0, self.meta.n_items, b)])
        if self.user_id:
            self._users = np.concatenate([m.user_tower(tf.range(s, min(s + b, self.meta.n_users))).numpy()
                                          for s in range(0, self.meta.n_users, b)])
        else:  # the tower reads the history alone: training users are encoded like any other
            st = self.fit_state
            self._users = self.encode_history(_Rows(st["hist_indptr"], st["hist_items"]))

    def encode_history(self, items) -> np.ndarray:
        """User vectors from anime histories, for users the model may never have seen.

        Args:
            items: one array of anime indices per user (a list), or a ``scipy.sparse`` matrix whose
                row r's nonzero columns are user r's anime. Duplicates count once (as in training).

        Returns:
            (n_users_given, dim) float32 unit vectors, comparable with ``item_vectors()``. With
            ``user_id = False`` a training user's own training history gives exactly its vector
            (``after_fit`` computes them this way); with ``user_id = True`` the user-id part is zero,
            as for a user whose id row was never trained. Empty histories give the tower's bias
            direction.
        """
        self._require_fitted()
        if not self.use_history:
            raise ConfigError("two_tower.encode_history needs use_history = true")
        if isinstance(items, _Rows):
            indptr, flat = items.indptr, items.indices
        elif hasattr(items, "tocsr"):
            csr = items.tocsr().copy()
            csr.sum_duplicates()
            csr.eliminate_zeros()
            indptr, flat = csr.indptr, csr.indices
        else:
            rows = [np.unique(np.asarray(r, dtype=np.int64)) for r in items]
            indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
            flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        flat = np.asarray(flat, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.meta.n_items):
            raise ValueError(f"encode_history: anime indices must lie in [0, {self.meta.n_items})")
        indptr = np.asarray(indptr, np.int64)
        n, b = len(indptr) - 1, 8192
        out = []
        for s in range(0, n, b):
            e = min(s + b, n)
            rows = tf.RaggedTensor.from_row_splits(tf.constant(flat[indptr[s]:indptr[e]], tf.int32),
                                                   tf.constant(indptr[s:e + 1] - indptr[s], tf.int64))
            out.append(self.model.encode_rows(rows).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    # ---- inference -----------------------------------------------------------------------
    def score(self, users):
        return self._users[np.asarray(users)] @ self._items.T

    def score_history(self, history) -> np.ndarray:
        """Fold-in: the id-free user tower fed each history's anime (``encode_history`` of
        ``history.seen``; ratings are not an input of the tower), dotted with every anime vector. A
        training user's own training history gives ``score`` exactly (float32 round-off). With a
        user-id embedding (``user_id = true``) a new user would have no id row: ``NotSupported``."""
        from research.models.base import NotSupported

        history = self.check_history(history)
        if self.user_id or not self.use_history:
            raise NotSupported("two_tower folds a user in only with the id-free tower (user_id = false, "
                               "use_history = true); this one was fitted with a user-id embedding")
        return self.encode_history(history.seen) @ self._items.T

    def item_vectors(self):
        return self._items

    def user_vectors(self):
        return self._users

    def embed_items(self, items) -> np.ndarray:
        """Anime-tower vectors for ``items`` (also for anime with no interaction)."""
        return self._items[np.asarray(items)]
