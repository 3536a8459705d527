"""tf.data input pipelines for the Keras models: in memory (index-shuffled) and streamed from parquet.

Size: one module because both pipelines (in memory, streamed from parquet) implement the one
epoch-order contract described here, and the Keras fit loop takes either.

Why not ``ds.shuffle(n).batch(b).cache()`` as in the TFRS tutorials: ``cache()`` after ``shuffle``
replays one batch order every epoch, and a ``shuffle`` buffer over a million elements costs more
than the model (100-160k examples/s against 250-400k/s for the model alone on 2 cores). Here the
columns stay in memory as tensors, and each epoch draws one permutation of the row indices from
``(seed, epoch)`` with a stateless op, gathers whole columns once, and slices the result into
batches. So every epoch visits every row exactly once, in a new order, and the orders are the same
for the same seed (in any process).

The epoch number comes from the pipeline itself: each new iteration over ``dataset()`` uses the
pipeline's epoch counter and then increments it, so a plain ``for epoch ...: for batch in ds`` loop
reshuffles. Keras recreates the iterator every epoch; ``pipeline.callback()`` sets the counter to
Keras' own epoch number in ``on_epoch_begin`` so that a fit resumed by ``BackupAndRestore`` at epoch
``e`` sees exactly the order an uninterrupted fit would have seen at epoch ``e``.

Multi-worker training (``tf.distribute``, see ``research.distributed``): ``distributed_dataset``
gives each worker its replicas' slices of every global batch of the same order (``replica_dataset``),
so the global batch and the examples of each step are those of a one-worker fit.

TensorFlow is imported inside the functions: importing this module costs nothing.

Typical use::

    pipe = from_interactions(split.train, batch_size=8192, seed=0)
    model.fit(pipe.dataset(), epochs=10, callbacks=[pipe.callback()],
              validation_data=from_interactions(split.val, 65536, shuffle=False).dataset())
"""
from __future__ import annotations

import glob as _glob
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from research.data.interactions import Interactions, Vocab
from research.errors import DataError


def _epoch_callback(pipeline):
    """A Keras callback that sets ``pipeline``'s epoch to Keras' epoch number at each epoch start."""
    import tensorflow as tf

    class _SetEpoch(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            pipeline.set_epoch(epoch)

    return _SetEpoch()


def interaction_features(data: Interactions, rated_only: bool = True,
                         extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The feature columns of ``data``: ``user`` (int32), ``item`` (int32), ``rating`` (float32).

    Args:
        data: interactions over the run's vocabularies (dense indices).
        rated_only: drop "watched, not scored" rows (NaN rating), as rating models must.
        extra: further aligned columns (length ``len(data)``), e.g. side features per row.

    Returns:
        A dict of equal-length numpy arrays.
    """
    mask = data.rated if rated_only else np.ones(len(data), dtype=bool)
    cols = {"user": data.user[mask].astype(np.int32), "item": data.item[mask].astype(np.int32),
            "rating": data.rating[mask].astype(np.float32)}
    for name, col in (extra or {}).items():
        col = np.asarray(col)
        if len(col) != len(data):
            raise ValueError(f"extra column {name!r} has {len(col)} rows, interactions have {len(data)}")
        cols[name] = col[mask]
    return cols


class InMemoryPipeline:
    """Per-epoch index-shuffled batches over columns held in memory.

    Args:
        features: name -> numpy array; all the same length (first axis).
        batch_size: rows per batch.
        seed: the permutation of epoch ``e`` is a function of ``(seed, e)`` only.
        shuffle: False for validation / scoring (rows in their stored order, no epoch state).
        drop_remainder: drop the last, smaller batch (it is kept by default, so every row is seen).
        prefetch: batches prepared ahead (``None`` = tf.data AUTOTUNE, 0 = none).
    """

    def __init__(self, features: Mapping[str, np.ndarray], batch_size: int, seed: int = 0,
                 shuffle: bool = True, drop_remainder: bool = False, prefetch: int | None = None):
        if not features:
            raise ValueError("features is empty")
        lengths = {k: len(v) for k, v in features.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"feature columns differ in length: {lengths}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.features = {k: np.asarray(v) for k, v in features.items()}
        self.n = next(iter(lengths.values()))
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_remainder = bool(drop_remainder)
        self.prefetch = prefetch
        self._epoch_var = None
        self._ds = None
        self._shards: dict = {}

    # ---- epoch state ---------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch."""
        if self.drop_remainder:
            return self.n // self.batch_size
        return math.ceil(self.n / self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will use."""
        return 0 if self._epoch_var is None else int(self._epoch_var.numpy())

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the permutation of ``epoch``."""
        self._ensure_var()
        self._epoch_var.assign(int(epoch))

    def callback(self):
        """A Keras callback keeping the pipeline's epoch equal to Keras' (needed for exact resume)."""
        return _epoch_callback(self)

    def _ensure_var(self):
        import tensorflow as tf

        if self._epoch_var is None:
            self._epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="tfdata_epoch")

    # ---- the dataset ---------------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch`` (what ``dataset()`` yields that epoch), as numpy."""
        import tensorflow as tf

        return self._perm(tf.constant(int(epoch), tf.int64)).numpy()

    def _perm(self, epoch):
        import tensorflow as tf

        idx = tf.range(self.n, dtype=tf.int64)
        key = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
        return tf.random.experimental.stateless_shuffle(idx, seed=key, alg="philox")

    def dataset(self):
        """The ``tf.data.Dataset`` of dict batches (one object; iterate it once per epoch)."""
        if self._ds is None:
            self._ds = self._make()
        return self._ds

    def replica_dataset(self, first: int, count: int, replicas: int, continuous: bool = False):
        """The batches of replicas ``first .. first + count - 1`` of ``replicas``: for every batch of
        ``dataset()`` (same order, same epochs), ``count`` consecutive elements, replica r's being
        rows ``[r * b // replicas, (r + 1) * b // replicas)`` of that batch (b its size). Together
        the replicas' slices of step t are exactly batch t; a slice may be empty when a (last)
        batch has fewer rows than there are replicas.

        ``continuous``: one iteration runs epoch after epoch without end, from the pipeline's epoch
        when the iteration starts (what a distributed dataset needs: Keras keeps one iterator over
        all epochs of a fit, taking ``steps_per_epoch`` steps an epoch)."""
        if not (replicas >= 1 and 0 <= first and count >= 1 and first + count <= replicas):
            raise ValueError(f"replicas {first}..{first + count - 1} of {replicas}")
        if continuous and not self.shuffle:
            raise ValueError("continuous needs shuffle=True (an epoch-numbered order)")
        key = (int(first), int(count), int(replicas), bool(continuous))
        if key not in self._shards:
            self._shards[key] = self._make(key[:3], continuous)
        return self._shards[key]

    def distributed_dataset(self, strategy):
        """``dataset()`` split for ``strategy`` (``tf.distribute``): each worker's input pipeline
        computes the same global order and keeps only its replicas' slices of every batch
        (``replica_dataset``), so the global batch stays ``batch_size`` and step t's examples
        are those of ``dataset()``'s batch t on one worker.

        A shuffled pipeline's distributed dataset is continuous (see ``replica_dataset``): it starts
        at ``self.epoch`` when Keras starts iterating, so set the epoch before (``set_epoch``: the
        first epoch of the fit, e.g. a resumed one's) and give Keras ``steps_per_epoch``. An
        unshuffled one (validation) yields one pass per iteration."""
        import tensorflow as tf

        self._ensure_var()  # made outside the dataset function: a plain (not mirrored) variable

        def per_worker(ctx: tf.distribute.InputContext):
            local = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            return self.replica_dataset(ctx.input_pipeline_id * local, local, ctx.num_replicas_in_sync,
                                        continuous=self.shuffle)

        return strategy.distribute_datasets_from_function(per_worker)

    def _make(self, split: tuple | None = None, continuous: bool = False):
        import tensorflow as tf

        # tensors are made once ("cache"); each iteration only permutes, gathers and slices them
        cols = {k: tf.constant(v) for k, v in self.features.items()}
        b, n = self.batch_size, self.n
        n_full = n // b
        rest = 0 if self.drop_remainder else n - n_full * b

        def batches(cols_epoch):
            full = {k: tf.reshape(v[:n_full * b], tf.concat([[n_full, b], tf.shape(v)[1:]], 0))
                    for k, v in cols_epoch.items()}
            ds = tf.data.Dataset.from_tensor_slices(full)
            if rest:
                ds = ds.concatenate(tf.data.Dataset.from_tensors({k: v[n_full * b:] for k, v in cols_epoch.items()}))
            if split is not None:
                ds = ds.flat_map(replica_slices)
            return ds

        def replica_slices(batch):
            first, count, replicas = split
            size = tf.shape(tf.nest.flatten(batch)[0], out_type=tf.int64)[0]

            def piece(j):
                r = first + j
                lo, hi = r * size // replicas, (r + 1) * size // replicas
                return {k: v[lo:hi] for k, v in batch.items()}

            return tf.data.Dataset.range(count).map(piece)

        def rows_of(epoch):
            perm = self._perm(epoch)
            return {k: tf.gather(v, perm) for k, v in cols.items()}

        if self.shuffle:
            self._ensure_var()
            var = self._epoch_var
            if continuous:
                # the start epoch is read once per iteration; then epochs follow without end
                ds = (tf.data.Dataset.from_tensors(0).map(lambda _: var.read_value())
                      .flat_map(lambda e0: tf.data.Dataset.range(e0, tf.int64.max))
                      .flat_map(lambda e: batches(rows_of(e))))
            else:
                def epoch_rows(_):
                    # read-and-increment once per iteration; Keras' callback overrides it per epoch
                    epoch = var.assign_add(1) - 1
                    return rows_of(epoch)

                ds = tf.data.Dataset.from_tensors(0).map(epoch_rows).flat_map(batches)
        else:
            ds = batches(cols)
        if not continuous:
            per_batch = 1 if split is None else split[1]
            ds = ds.apply(tf.data.experimental.assert_cardinality(self.steps_per_epoch * per_batch))
        if self.prefetch != 0:
            ds = ds.prefetch(tf.data.AUTOTUNE if self.prefetch is None else self.prefetch)
        return ds


def from_arrays(features: Mapping[str, np.ndarray], batch_size: int, seed: int = 0, shuffle: bool = True,
                drop_remainder: bool = False) -> InMemoryPipeline:
    """An ``InMemoryPipeline`` over named numpy columns (see the class)."""
    return InMemoryPipeline(features, batch_size, seed=seed, shuffle=shuffle, drop_remainder=drop_remainder)


def from_interactions(data: Interactions, batch_size: int, seed: int = 0, shuffle: bool = True,
                      rated_only: bool = True, extra: Mapping[str, np.ndarray] | None = None,
                      drop_remainder: bool = False) -> InMemoryPipeline:
    """An index-shuffled in-memory pipeline over ``data``'s ``user``, ``item``, ``rating`` columns.

    Args:
        data: interactions (dense indices).
        batch_size: rows per batch.
        seed: permutation seed (the order of epoch ``e`` depends only on ``seed`` and ``e``).
        shuffle: False for validation and scoring.
        rated_only: keep only rows with a rating (rating models); False keeps "watched" rows too.
        extra: further aligned per-row columns to carry along.
        drop_remainder: drop the last, smaller batch.

    Returns:
        An ``InMemoryPipeline``; ``.dataset()`` is the tf.data.Dataset, ``.callback()`` its Keras hook.
    """
    return InMemoryPipeline(interaction_features(data, rated_only=rated_only, extra=extra), batch_size,
                            seed=seed, shuffle=shuffle, drop_remainder=drop_remainder)


# ---- streaming ----------------------------------------------------------------------------
def find_shards(path, pattern: str | None = None) -> list[Path]:
    """Parquet shard files under ``path``: the file itself, or files in the folder matching
    ``pattern`` (default: ``ratings*.parquet``, then ``ratings/*.parquet``, then ``*.parquet``)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(p, "no such file or folder of parquet shards")
    patterns = [pattern] if pattern else ["ratings*.parquet", "ratings/*.parquet", "*.parquet"]
    for pat in patterns:
        files = sorted(Path(f) for f in _glob.glob(os.path.join(str(p), pat)) if os.path.isfile(f))
        if files:
            return files
    raise DataError(p, f"no parquet shards matching {' or '.join(patterns)}")


class ParquetStream:
    """Batches streamed from parquet shards, for data that does not fit in memory.

    Each epoch reads the shards in a new order (from ``(seed, epoch)``) and mixes rows through a
    bounded shuffle buffer of ``shuffle_buffer`` rows held as numpy arrays (random draws from the
    buffer, refilled shard chunk by shard chunk), so memory is bounded by the buffer, not the data.
    Rows whose ids are not in the vocabularies are dropped and counted in ``dropped_unknown``;
    rows with a missing rating are dropped when ``rated_only`` (counted in ``dropped_unrated``).

    Args:
        path: a parquet file, a folder of shards (see ``find_shards``) or a list of files.
        batch_size: rows per batch.
        users, items: the run's vocabularies when the shards hold external ids; None when the
            shards already hold dense indices.
        seed: shard order and buffer draws of epoch ``e`` depend only on ``(seed, e)``.
        shuffle_buffer: rows mixed at once (0 or 1: no shuffling, shards in stored order).
        columns: the (user, item, rating) column names in the shards.
        rated_only: drop rows without a rating.
        read_rows: rows read from a shard at a time.
    """

    def __init__(self, path, batch_size: int, users: Vocab | None = None, items: Vocab | None = None,
                 seed: int = 0, shuffle_buffer: int = 1_000_000, columns: tuple = ("user", "item", "rating"),
                 rated_only: bool = True, read_rows: int = 65_536, pattern: str | None = None):
        if isinstance(path, (list, tuple)):
            self.files = [Path(f) for f in path]
        else:
            self.files = find_shards(path, pattern)
        if not self.files:
            raise DataError(str(path), "no parquet shards")
        self.batch_size = int(batch_size)
        self.users, self.items = users, items
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.columns = tuple(columns)
        self.rated_only = bool(rated_only)
        self.read_rows = int(read_rows)
        self._epoch = 0
        self.dropped_unknown = 0
        self.dropped_unrated = 0
        self._check_columns()

    def _check_columns(self):
        import pyarrow.parquet as pq

        for f in self.files:
            names = pq.ParquetFile(f).schema_arrow.names
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise DataError(f, f"missing column(s) {missing} (has {names})", column=missing[0])

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the shard order and draws of ``epoch``."""
        self._epoch = int(epoch)

    def callback(self):
        """A Keras callback keeping the stream's epoch equal to Keras'."""
        return _epoch_callback(self)

    def _chunks(self, order: Iterable[int]):
        import pyarrow.parquet as pq

        ucol, icol, rcol = self.columns
        for k in order:
            pf = pq.ParquetFile(self.files[k])
            for rb in pf.iter_batches(batch_size=self.read_rows, columns=list(self.columns)):
                u = rb.column(ucol).to_numpy(zero_copy_only=False)
                i = rb.column(icol).to_numpy(zero_copy_only=False)
                r = rb.column(rcol).to_numpy(zero_copy_only=False).astype(np.float32)
                ui = self.users.index(u, missing="mask") if self.users is not None else u.astype(np.int64)
                ii = self.items.index(i, missing="mask") if self.items is not None else i.astype(np.int64)
                ok = (ui >= 0) & (ii >= 0)
                self.dropped_unknown += int((~ok).sum())
                if self.rated_only:
                    rated = ~np.isnan(r)
                    self.dropped_unrated += int((ok & ~rated).sum())
                    ok &= rated
                yield {"user": ui[ok].astype(np.int32), "item": ii[ok].astype(np.int32), "rating": r[ok]}

    def batches(self, epoch: int | None = None):
        """A generator of numpy dict batches for ``epoch`` (default: the current epoch, then +1)."""
        if epoch is None:
            epoch = self._epoch
            self._epoch += 1
        self.dropped_unknown = self.dropped_unrated = 0
        r = np.random.default_rng([self.seed, int(epoch)])
        shuffle = self.shuffle_buffer > 1
        order = r.permutation(len(self.files)) if shuffle else np.arange(len(self.files))
        b = self.batch_size
        pool: dict[str, np.ndarray] | None = None
        for chunk in self._chunks(order):
            pool = chunk if pool is None else {k: np.concatenate([pool[k], chunk[k]]) for k in pool}
            n = len(pool["user"])
            if shuffle and n < self.shuffle_buffer:
                continue
            # emit random rows from the full buffer until it is down to (buffer - chunk) rows
            keep = max(self.shuffle_buffer - self.read_rows, 0) if shuffle else 0
            n_out = ((n - keep) // b) * b
            if n_out <= 0:
                continue
            if shuffle:
                pick = r.permutation(n)
                out, rest = pick[:n_out], pick[n_out:]
                batch_cols = {k: v[out] for k, v in pool.items()}
                pool = {k: v[rest] for k, v in pool.items()}
            else:
                batch_cols = {k: v[:n_out] for k, v in pool.items()}
                pool = {k: v[n_out:] for k, v in pool.items()}
            for s in range(0, n_out, b):
                yield {k: v[s:s + b] for k, v in batch_cols.items()}
        if pool is not None and len(pool["user"]):
            if shuffle:
                pick = r.permutation(len(pool["user"]))
                pool = {k: v[pick] for k, v in pool.items()}
            for s in range(0, len(pool["user"]), b):
                yield {k: v[s:s + b] for k, v in pool.items()}

    def dataset(self, prefetch: int | None = None):
        """The ``tf.data.Dataset`` of dict batches; each iteration is one epoch."""
        import tensorflow as tf

        sig = {"user": tf.TensorSpec([None], tf.int32), "item": tf.TensorSpec([None], tf.int32),
               "rating": tf.TensorSpec([None], tf.float32)}
        ds = tf.data.Dataset.from_generator(lambda: self.batches(), output_signature=sig)
        if prefetch != 0:
            ds = ds.prefetch(tf.data.AUTOTUNE if prefetch is None else prefetch)
        return ds


def from_parquet(path, batch_size: int, users: Vocab | None = None, items: Vocab | None = None,
                 seed: int = 0, shuffle_buffer: int = 1_000_000, **kwargs) -> ParquetStream:
    """A ``ParquetStream`` over the ratings shards written by ``animerec prepare`` (see the class)."""
    return ParquetStream(path, batch_size, users=users, items=items, seed=seed,
                         shuffle_buffer=shuffle_buffer, **kwargs)
