"""``blend``: a stacked ensemble for rating prediction (ridge regression over base models' ratings).

Two stages, on disjoint rows:

1. **Bases.** Each model named in ``bases`` (registry names, e.g. ``bias``, ``item_knn``,
   ``user_knn``, ``embedding_dot``; every one must predict ratings) is built with its table of
   ``base_params`` and a seed derived from the blend's (``child_seed(seed, "<position>.<name>")``)
   and fitted on the *base rows*, always with ``val=None``: a base never sees the ridge's rows, not
   even for early stopping (a Keras base therefore trains exactly its ``epochs``; give it the epoch
   count its own validation chose, as ``experiments/configs/blend_check.toml`` does).
2. **Ridge.** On the *ridge rows*, the features are the bases' predicted ratings and, with
   ``activity=True``, ``log(1 + n_u)``, ``log(1 + n_i)`` (rated base rows of the user / anime) and
   the products of each with each base's prediction, so the weights of the bases may shift with
   how much a base knows about the user and the anime. Columns are standardised over the ridge rows
   and ``(1/n) ‖y − b − Zw‖² + alpha ‖w‖²`` is minimised in closed form, the intercept ``b``
   unpenalised; the reported coefficients are on the raw feature scale.

Which rows each stage saw:

- ``fit(train, val)`` (``split.fit_on = "train"``, the default): bases on every row of ``train``
  (rated and unrated); ridge on the rated rows of ``val``. Nothing else sees ``val``; nothing
  sees test.
- ``fit(train, None)`` (``split.fit_on = "train+val"``, where the runner passes train + validation
  as ``train``): a seeded holdout is carved from ``train``: per user with at least two rated rows,
  ``floor(holdout_fraction * n + 0.5)`` of their rated rows at random (at most ``n - 1``; the
  rank comes from ``child_seed(seed, "holdout")``), as ``research.data.splits.user_holdout`` draws
  its validation. Bases on the other rows (all unrated rows included), ridge on the held rows.
  The bases are not refitted on the held rows: the ridge's weights are for the bases it saw.

Predictions (``predict``) are clipped to the rating range of ``train``'s rated rows. ``score``
ranks by the unclipped blended rating of every anime that has a row in ``train`` (the harness's
candidates; others score ``lo - 1``, below every rating), as ``embedding_dot`` ranks by its
unclipped rating (clipping would tie the top of the list). It asks every base for the ratings of
a block of users x candidates: the kNN bases answer by ``predict_grid`` (two sparse products; equal
to their pair-by-pair ``predict`` up to float32 summation order, ~1e-6), the others by ``predict``
on the pairs. On the 5k CooperUnion set the default blend scores 100 users x 7,080 anime in 0.2 s
by blocks against 4.0 s pair by pair (the harness's test evaluation of 4,620 users: seconds
instead of minutes).

``extra_metrics()`` reports what the blend relies on: ``blend.intercept``, ``blend.coef.<feature>``
(raw scale; features ``<base>``, ``log1p_n_user``, ``log1p_n_item``, ``<base>*log1p_n_user``,
``<base>*log1p_n_item``), ``blend.std_coef.<feature>`` (per standard deviation of the feature: how
much each one moves the prediction), ``blend.mean_weight.<base>`` (the base's total weight on the
rating, ``coef[base] + coef[base*log1p_n_user] * mean log1p_n_user + coef[base*log1p_n_item] *
mean log1p_n_item`` over the ridge rows: with activity features the raw coefficient of a base
alone is not its weight), the row counts of each stage and the rmse of each base and of the blend
on the ridge rows (in-sample for the blend).

Persistence is the project's (``research.models.base``): a base whose state is data (bias, the
kNNs, ...) is nested in the blend's ``model.json`` as a ``Stateful`` object; a Keras base
cannot be (its state holds a ``tf.keras.Model`` and a ``TrainConfig``, which the encoder refuses),
so it is written by its own ``save`` (weights + arguments, no pickle) to ``bases/<position>-<name>/``
beside the blend's files, its slot in ``model.json`` left null, and read back by the registered
class's ``load``. With only data-state bases the folder is the usual two files.

Defaults (``alpha``, ``activity``, ``bases``), chosen on the seed-0 validation part of
``mal2020_sample.toml`` (never on test): see the class docstring.

Measured (``experiments/configs/blend_check.toml``, the reference protocol, seed 0; validation =
the 8,000 rated validation rows, in-sample for the blends' ridges; test = 20,000 rated rows):

=================  ===============  ===============
model              validation rmse  test rmse / mae
=================  ===============  ===============
bias               1.2659           1.2707 / 0.9534
item_knn           1.2313           1.2321 / 0.9077
user_knn           1.2483           1.2575 / 0.9416
embedding_dot      1.2387 (ES)      1.2424 / 0.9299
blend              1.1964           1.2019 / 0.8972
blend_mf (+ MF)    1.1938           1.1969 / 0.8933
=================  ===============  ===============

(ES: embedding_dot early-stops on that validation rmse, best epoch 18 of 21.) The default blend's
mean weights: bias -0.586, item_knn 0.724, user_knn 0.880 (it subtracts the
shared baseline and adds both neighbourhood deviations); ranking by the blended rating gives
ndcg@10 0.082 (item_knn's own ranking: 0.336): use it for ratings, not for top-k lists.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from research.data.interactions import Interactions
from research.errors import ConfigError
from research.models import registry
from research.models.base import Recommender
from research.seeding import child_seed

#: base models of the default blend: the classical rating models, so that the default needs no
#: TensorFlow (the contract and persistence suites build every registered model at its defaults)
DEFAULT_BASES = ("bias", "item_knn", "user_knn")
#: rated rows per block of the all-items scoring (each base predicts one block at a time)
_SCORE_PAIRS = 1 << 20


def ridge_fit(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Ridge regression with an unpenalised intercept on standardised columns.

    Minimises ``(1/n) ‖y − b − Z w‖² + alpha ‖w‖²`` with ``Z = (X − mean) / std`` (a constant
    column keeps std 1 and gets weight 0), in closed form.

    Returns:
        ``(intercept, coef, std_coef)``: ``y ≈ intercept + X @ coef``; ``std_coef = coef * std``.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    if n == 0:
        raise ConfigError("blend: no rows to fit the ridge on")
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    Z = (X - mean) / std
    Z[:, np.ptp(X, axis=0) == 0] = 0.0  # constant columns carry nothing
    ybar = float(y.mean())
    w = np.linalg.solve(Z.T @ Z / n + alpha * np.eye(d), Z.T @ (y - ybar) / n)
    coef = w / std
    return ybar - float(mean @ coef), coef, w


class Blend(Recommender):
    """Stacked ensemble: ridge regression over base models' predicted ratings (module docstring).

    Args:
        bases: registry names of the base rating models, each at most once (a list in TOML).
        base_params: ``{name: {argument: value}}`` for the bases (TOML:
            ``[models.blend.base_params.item_knn]``); names must be in ``bases``, arguments are
            checked against each base's constructor (``registry.build``) when the blend is built.
        alpha: ridge penalty on the standardised coefficients, relative to the mean squared error.
        activity: add ``log(1 + n_u)``, ``log(1 + n_i)`` and their products with each base's
            prediction to the features.
        holdout_fraction: share of each user's rated training rows held out for the ridge when
            ``fit`` gets no validation part (``split.fit_on = "train+val"``).
        seed: the bases' seeds and the holdout derive from it.

    Defaults, chosen on validation only: the bases fitted on the seed-0 train part of
    ``mal2020_sample.toml`` (71,999 rows), the ridge scored by 5-fold cross-validation over the
    8,000 rated validation rows (rows assigned to folds at random, seed 0; rmse of the clipped
    blend on the held-out fold; test never read):

    - ``activity=True``: 1.1990 against 1.2116 without (bias + item_knn + user_knn, best alpha).
    - ``alpha=1e-4``: 1.1990 (alpha 0: 1.1990, 1e-3: 1.1999, 1e-2: 1.2034, 0.1: 1.2100, 1: 1.2421).
    - ``bases``: bias + item_knn + user_knn, 1.1990. Adding ``kmeans``: 1.1989 (and 7 s of fit);
      adding ``embedding_dot`` (18 epochs, no early stopping): 1.1970, a 0.002 gain that costs
      TensorFlow, so it is an option (``blend_mf`` in ``experiments/configs/blend_check.toml``),
      not the default. bias + item_knn: 1.2028; item_knn + user_knn: 1.2013. On the same
      validation rows the bases alone: bias 1.2659, item_knn 1.2313, user_knn 1.2483,
      embedding_dot (18 epochs) 1.2395.
    """

    predicts_ratings = True

    def __init__(self, bases=DEFAULT_BASES, base_params: dict | None = None, alpha: float = 1e-4,
                 activity: bool = True, holdout_fraction: float = 0.1, seed: int = 0):
        super().__init__(seed)
        if isinstance(bases, str) or not isinstance(bases, (list, tuple)) or not bases:
            raise ConfigError(f"blend: bases must be a non-empty list of model names, got {bases!r}")
        bases = [str(b) for b in bases]
        if len(set(bases)) != len(bases):
            raise ConfigError(f"blend: each base at most once, got {bases}")
        base_params = {} if base_params is None else base_params
        if not isinstance(base_params, dict) or not all(isinstance(v, dict) for v in base_params.values()):
            raise ConfigError("blend: base_params must be a table of tables, {base name: {argument: value}}")
        extra = sorted(set(base_params) - set(bases))
        if extra:
            raise ConfigError(f"blend: base_params for {extra}, which are not among the bases {bases}")
        if "blend" in bases:
            raise ConfigError("blend: a blend is not offered as a base of a blend")
        for name in bases:  # unknown names and arguments fail now, before any data is read
            if not getattr(registry.model_class(name), "predicts_ratings", False):
                raise ConfigError(f"blend: base {name!r} does not predict ratings")
            registry.build(name, dict(base_params.get(name, {})), seed=0, where=" (a base of blend)")
        if not float(alpha) >= 0:
            raise ConfigError(f"blend: alpha must be >= 0, got {alpha}")
        if not 0.0 < float(holdout_fraction) < 0.5:
            raise ConfigError(f"blend: holdout_fraction must be in (0, 0.5), got {holdout_fraction}")
        self.bases = bases
        self.base_params = {k: dict(v) for k, v in base_params.items()}
        self.alpha = float(alpha)
        self.activity = bool(activity)
        self.holdout_fraction = float(holdout_fraction)

    # ---- fitting ------------------------------------------------------------------------
    def holdout(self, train: Interactions) -> np.ndarray:
        """Boolean mask of the ``train`` rows held out for the ridge when there is no validation
        part: per user with n >= 2 rated rows, ``min(floor(f n + 0.5), n - 1)`` random rated rows."""
        from research.data.splits import _rank_within_user  # the splits' own per-user ranking

        rated = np.flatnonzero(train.rated)
        rank, count = _rank_within_user(train.user[rated], np.random.default_rng(child_seed(self.seed, "holdout")))
        n_hold = np.where(count >= 2, np.minimum(np.floor(self.holdout_fraction * count + 0.5), count - 1), 0)
        mask = np.zeros(len(train), dtype=bool)
        mask[rated[rank < n_hold]] = True
        return mask

    def fit(self, train: Interactions, val: Interactions | None = None) -> "Blend":
        self.meta = train.meta
        if val is None:
            held = self.holdout(train)
            base_rows, ridge_rows = train.take(~held), train.take(held)
            self.ridge_source_ = "holdout"
        else:
            base_rows, ridge_rows = train, val.only_rated()
            self.ridge_source_ = "val"
        if len(ridge_rows) == 0:
            raise ConfigError(f"blend: no rated rows to fit the ridge on ({self.ridge_source_} is empty)")
        r = train.rating[train.rated]
        if r.size == 0:
            raise ConfigError("blend needs rated training rows")
        self.lo, self.hi = float(r.min()), float(r.max())
        self.trained_items_ = np.bincount(train.item, minlength=train.n_items) > 0

        self.bases_ = []
        for j, name in enumerate(self.bases):
            base = registry.build(name, dict(self.base_params.get(name, {})), child_seed(self.seed, f"{j}.{name}"),
                                  where=" (a base of blend)")
            base.log_dir = str(Path(self.log_dir) / name) if self.log_dir else None
            self.bases_.append(base.fit(base_rows, None))
        rated = base_rows.only_rated()
        self.n_user_ = np.bincount(rated.user, minlength=train.n_users).astype(np.int64)
        self.n_item_ = np.bincount(rated.item, minlength=train.n_items).astype(np.int64)

        X = self.features(ridge_rows.user, ridge_rows.item)
        y = ridge_rows.rating.astype(np.float64)
        self.intercept_, self.coef_, self.std_coef_ = ridge_fit(X, y, self.alpha)
        self.feature_names_ = self.feature_names()
        k = len(self.bases)
        # each base's weight on the rating at the ridge rows' mean activity (linear in the features)
        self.mean_weight_ = {name: float(self.coef_[j] + (self.coef_[k + 2 + j] * X[:, k].mean()
                                                          + self.coef_[2 * k + 2 + j] * X[:, k + 1].mean()
                                                          if self.activity else 0.0))
                             for j, name in enumerate(self.bases)}
        self.rows_ = {"base": int(len(base_rows)), "base_rated": int(len(rated)), "ridge": int(len(ridge_rows))}
        fitted = np.clip(self.intercept_ + X @ self.coef_, self.lo, self.hi)
        self.ridge_rmse_ = {"blend": _rmse(y, fitted),
                            **{name: _rmse(y, X[:, j]) for j, name in enumerate(self.bases)}}
        return self

    # ---- features -----------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        names = list(self.bases)
        if self.activity:
            names += ["log1p_n_user", "log1p_n_item"]
            names += [f"{b}*log1p_n_user" for b in self.bases] + [f"{b}*log1p_n_item" for b in self.bases]
        return names

    def features(self, users, items) -> np.ndarray:
        """The ridge's feature matrix of (user, item) pairs (columns as ``feature_names``)."""
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        P = np.column_stack([np.asarray(b.predict(users, items), dtype=np.float64) for b in self.bases_])
        if not self.activity:
            return P
        lu, li = np.log1p(self.n_user_[users]), np.log1p(self.n_item_[items])
        return np.column_stack([P, lu, li, P * lu[:, None], P * li[:, None]])

    def _blend(self, users: np.ndarray, items: np.ndarray, grid=None) -> np.ndarray:
        """intercept + features @ coef, accumulated base by base (no feature matrix). With ``grid
        = (u, it)`` the pairs are ``u x it`` in row-major order, and a base with ``predict_grid``
        (the kNNs) predicts the block at once instead of pair by pair."""
        k = len(self.bases_)
        out = np.full(len(users), self.intercept_, dtype=np.float64)
        if self.activity:
            lu, li = np.log1p(self.n_user_[users]), np.log1p(self.n_item_[items])
            out += self.coef_[k] * lu + self.coef_[k + 1] * li
        for j, b in enumerate(self.bases_):
            by_grid = getattr(b, "predict_grid", None) if grid is not None else None
            p = np.asarray(by_grid(*grid).ravel() if by_grid else b.predict(users, items), dtype=np.float64)
            w = self.coef_[j]
            if self.activity:
                w = w + self.coef_[k + 2 + j] * lu + self.coef_[2 * k + 2 + j] * li
            out += w * p
        return out

    # ---- inference ----------------------------------------------------------------------
    def predict(self, users, items) -> np.ndarray:
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        return np.clip(self._blend(users, items), self.lo, self.hi)

    def score(self, users) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.flatnonzero(self.trained_items_)
        out = np.full((len(users), self.meta.n_items), self.lo - 1.0)
        step = max(1, _SCORE_PAIRS // max(len(items), 1))
        for s in range(0, len(users), step):
            u = users[s:s + step]
            pred = self._blend(np.repeat(u, len(items)), np.tile(items, len(u)), grid=(u, items))
            out[s:s + step, items] = pred.reshape(len(u), len(items))
        return out

    def extra_metrics(self) -> dict:
        out = {"blend.intercept": float(self.intercept_)}
        out.update({f"blend.coef.{n}": float(c) for n, c in zip(self.feature_names_, self.coef_)})
        out.update({f"blend.std_coef.{n}": float(c) for n, c in zip(self.feature_names_, self.std_coef_)})
        out.update({f"blend.mean_weight.{k}": v for k, v in self.mean_weight_.items()})
        out.update({f"blend.rows.{k}": v for k, v in self.rows_.items()})
        out.update({f"blend.ridge_rmse.{k}": v for k, v in self.ridge_rmse_.items()})
        for name, b in zip(self.bases, self.bases_):
            out.update({f"blend.base.{name}.{k}": v for k, v in b.extra_metrics().items()})
        return out

    # ---- persistence --------------------------------------------------------------------
    @staticmethod
    def _nestable(base) -> bool:
        """Saved inside the blend's model.json (data-state models), or by its own ``save``."""
        return type(base).save is Recommender.save and type(base).load.__func__ is Recommender.load.__func__

    def _folder(self, j: int) -> str:
        return f"bases/{j}-{self.bases[j]}"

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("external_bases_", None)
        if "bases_" in state:
            state["bases_"] = [b if self._nestable(b) else None for b in self.bases_]
            state["external_bases_"] = [None if self._nestable(b) else self._folder(j)
                                        for j, b in enumerate(self.bases_)]
        return state

    def save(self, path) -> None:
        """The blend's ``model.json`` + ``arrays.npz`` (data-state bases nested in them) and, for
        each base with its own format (Keras), ``bases/<position>-<name>/``, written first."""
        path = Path(path)
        for j, b in enumerate(getattr(self, "bases_", [])):
            if not self._nestable(b):
                b.save(path / self._folder(j))
        super().save(path)

    @classmethod
    def load(cls, path, meta, *, allow_pickle: bool = False) -> "Blend":
        obj = super().load(path, meta, allow_pickle=allow_pickle)
        for j, folder in enumerate(getattr(obj, "external_bases_", None) or []):
            if folder is None:
                continue
            if folder != obj._folder(j):  # only the folder the blend itself writes
                from research.models.base import ModelFileError

                raise ModelFileError(f"{path}: base {j} names folder {folder!r}, expected {obj._folder(j)!r}")
            obj.bases_[j] = registry.model_class(obj.bases[j]).load(Path(path) / folder, meta,
                                                                    allow_pickle=allow_pickle)
        return obj


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y) - np.asarray(p)) ** 2)))
