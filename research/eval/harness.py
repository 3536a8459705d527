"""The one evaluation harness. Every model, ours or a peer's, is measured here the same way.

Protocol (``evaluate(model, split, cfg, part="test")``):

- **Candidates**: the items that appear in the training part. No model may recommend an item no
  one interacted with in training (the same candidate set for every model).
- **Seen-item exclusion**: each user's training items (and validation items, when scoring test)
  are removed from their list before the top-k is taken, for every model, by the harness.
- **Relevance**: every target-part item of the user is relevant (binary gain), or those rated
  ``>= relevance_threshold`` when it is set. Relevant items outside the candidates stay in the
  denominators (no model can reach them; the same handicap for all) and are counted.
- **Users**: ranking metrics are averaged over users with at least one relevant target item;
  training users without one are counted as ``users_without_target``, never averaged in as zeros.
- **Rating metrics** (``rmse``, ``mae``) only for models with ``predicts_ratings``, over the target
  rows that carry a rating; absent (not 0, not NaN) otherwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from research.data.interactions import Interactions
from research.data.splits import Split
from research.eval import metrics as M
from research.models.base import mask_scores, top_k


@dataclass
class EvalResult:
    """``summary``: metric name -> value (keys carry k, e.g. ``ndcg@10``); ``per_user``: one row per
    evaluated user (external id, n_relevant, and each per-user ranking metric)."""

    summary: dict
    per_user: pd.DataFrame
    per_rating: pd.DataFrame | None = None  # user, item (external ids), rating, prediction


def _keys(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    return user.astype(np.int64) * n_items + item.astype(np.int64)


def _member(query: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted key array, in O(len(query) log n) (no re-sort per batch)."""
    if not len(sorted_keys):
        return np.zeros(query.shape, bool)
    pos = np.clip(np.searchsorted(sorted_keys, query), 0, len(sorted_keys) - 1)
    return sorted_keys[pos] == query


def evaluate(model, split: Split, k: int = 10, part: str = "test", batch_users: int = 1024,
             relevance_threshold: float = 0.0, ranking: bool = True) -> EvalResult:
    """Evaluate a fitted model on ``split.test`` (or ``split.val`` with ``part="val"``).

    Args:
        model: a fitted ``Recommender``.
        split: the split it was fitted on.
        k: ranking cut-off.
        part: "test" (exclude train and validation items) or "val" (exclude train items).
        batch_users: users scored per batch (memory ~ batch_users x n_items x 8 bytes).
        relevance_threshold: if > 0, only target items rated >= this are relevant.
        ranking: False skips the ranking metrics (scoring every user against every item), e.g.
            when tuning on rmse; they are then absent from the summary.
    """
    if part not in ("test", "val"):
        raise ValueError("part must be 'test' or 'val'")
    target: Interactions = split.test if part == "test" else split.val
    seen = split.train if part == "val" else split.train.concat(split.val)
    return evaluate_parts(model, split.train, seen, target, k=k, batch_users=batch_users,
                          relevance_threshold=relevance_threshold, ranking=ranking)


def evaluate_parts(model, train: Interactions, seen: Interactions, target: Interactions, k: int = 10,
                   batch_users: int = 1024, relevance_threshold: float = 0.0,
                   ranking: bool = True) -> EvalResult:
    """The harness on explicit parts: candidates from ``train``, exclusion from ``seen``."""
    t0 = time.perf_counter()
    n_items = train.n_items
    summary: dict = {}

    # ---- rating metrics ------------------------------------------------------------------
    rated = target.only_rated()
    if getattr(model, "predicts_ratings", False):
        preds = np.empty(len(rated), dtype=np.float64)
        step = 1 << 20
        for s in range(0, len(rated), step):
            preds[s:s + step] = model.predict(rated.user[s:s + step], rated.item[s:s + step])
        summary["rmse"] = M.rmse(rated.rating, preds)
        summary["mae"] = M.mae(rated.rating, preds)
        summary["rated_target_rows"] = int(len(rated))
        per_rating = pd.DataFrame({"user": rated.meta.users.ids(rated.user), "item": rated.meta.items.ids(rated.item),
                                   "rating": rated.rating, "prediction": preds.astype(np.float32)})
    else:
        per_rating = None

    # ---- ranking metrics -----------------------------------------------------------------
    if relevance_threshold > 0:
        rel = target.take(target.rated & (target.rating >= relevance_threshold))
    else:
        rel = target
    rel_keys = np.unique(_keys(rel.user, rel.item, n_items))
    rel_users, n_rel = np.unique(rel_keys // n_items, return_counts=True)
    if not ranking or not getattr(model, "ranks", True):  # ranking metrics absent
        rel_users, n_rel = rel_users[:0], n_rel[:0]
    train_users = train.users_present()
    candidates = np.zeros(n_items, dtype=bool)
    candidates[train.items_present()] = True
    exclude = seen.to_csr("ones")
    item_pop = np.bincount(train.item, minlength=n_items).astype(np.float64) / max(len(train_users), 1)
    rel_items = (rel_keys % n_items).astype(np.int64)

    cols = {name: [] for name in ("precision", "recall", "ndcg", "ap", "hit", "novelty")}
    all_top = []
    for s in range(0, len(rel_users), batch_users):
        users = rel_users[s:s + batch_users]
        scores = np.asarray(model.score(users), dtype=np.float64)
        if scores.shape != (len(users), n_items):
            raise ValueError(f"{type(model).__name__}.score returned shape {scores.shape}, "
                             f"expected {(len(users), n_items)}")
        scores = mask_scores(scores.copy(), users, exclude, candidates)
        items, _ = top_k(scores, k)
        if items.shape[1] < k:  # fewer candidates than k: pad so every list has k slots
            items = np.pad(items, ((0, 0), (0, k - items.shape[1])), constant_values=-1)
        hits = _member(_keys(np.repeat(users, k).reshape(-1, k), items, n_items), rel_keys) & (items >= 0)
        nr = n_rel[s:s + batch_users]
        cols["precision"].append(M.precision_at_k(hits, k))
        cols["recall"].append(M.recall_at_k(hits, nr, k))
        cols["ndcg"].append(M.ndcg_at_k(hits, nr, k))
        cols["ap"].append(M.average_precision_at_k(hits, nr, k))
        cols["hit"].append(M.hit_rate_at_k(hits, k))
        cols["novelty"].append(M.novelty(items, item_pop))
        all_top.append(items)
    per = {name: (np.concatenate(v) if v else np.zeros(0)) for name, v in cols.items()}
    top = np.concatenate(all_top) if all_top else np.zeros((0, k), np.int64)

    if len(rel_users):
        summary[f"precision@{k}"] = float(per["precision"].mean())
        summary[f"recall@{k}"] = float(per["recall"].mean())
        summary[f"ndcg@{k}"] = float(per["ndcg"].mean())
        summary[f"map@{k}"] = float(per["ap"].mean())
        summary[f"hit_rate@{k}"] = float(per["hit"].mean())
        summary[f"coverage@{k}"] = M.coverage(top, int(candidates.sum()))
        summary[f"novelty@{k}"] = float(np.nanmean(per["novelty"])) if np.isfinite(per["novelty"]).any() else float("nan")
        summary["users_evaluated"] = int(len(rel_users))
        summary["users_without_target"] = int(len(np.setdiff1d(train_users, rel_users)))
        summary["relevant_not_in_train"] = int((~candidates[rel_items]).sum())
    summary["eval_seconds"] = time.perf_counter() - t0

    per_user = pd.DataFrame({
        "user": train.meta.users.ids(rel_users) if len(rel_users) else np.zeros(0, np.int64),
        "n_relevant": n_rel,
        f"precision@{k}": per["precision"], f"recall@{k}": per["recall"], f"ndcg@{k}": per["ndcg"],
        f"ap@{k}": per["ap"], f"hit@{k}": per["hit"], f"novelty@{k}": per["novelty"],
    })
    return EvalResult(summary, per_user, per_rating)
