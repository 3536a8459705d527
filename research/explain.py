"""One-line reasons for recommendations, computed from the model's own representation."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from research.models.base import mask_scores, top_k


def explain_recommendations(run_dir: Path, model, meta, user: int, k: int = 10) -> list[str]:
    """Top-``k`` for ``user`` with names, scores and a reason, excluding what the user has seen
    in train + validation and items outside the training candidates, as the harness does."""
    from research.experiment import load_seen

    seen = load_seen(run_dir)
    candidates = np.asarray(seen.getnnz(axis=0) > 0).ravel()
    scores = np.asarray(model.score(np.array([user])), dtype=np.float64).copy()
    items, vals = top_k(mask_scores(scores, np.array([user]), seen, candidates), k)
    row = seen[user]
    hist_items, hist_ratings = row.indices, row.data
    vecs = model.item_vectors() if hasattr(model, "item_vectors") else None
    lines = [f"top {k} for user {meta.users.ids(user)} ({len(hist_items)} anime seen):"]
    for rank, (i, s) in enumerate(zip(items[0], vals[0]), 1):
        if i < 0:
            continue
        reason = _reason(model, int(i), hist_items, hist_ratings, vecs, meta, user)
        lines.append(f"{rank:3d}. {meta.item_names([i])[0]} (id {meta.items.ids(i)})  score {s:.3f}  — {reason}")
    return lines


def _reason(model, item, hist_items, hist_ratings, vecs, meta, user=None) -> str:
    if user is not None and hasattr(model, "explain"):  # the model's own score terms (e.g. EASE)
        parts = [(j, c) for j, c in model.explain(user, item) if c > 0]
        if parts:
            rating = dict(zip(np.asarray(hist_items).tolist(), np.asarray(hist_ratings).tolist()))
            said = [f"rated {meta.item_names([j])[0]} {rating[j]:.0f}/10" if rating.get(j, 0) > 0
                    else f"watched {meta.item_names([j])[0]}" for j, _ in parts]
            return "because you " + ", ".join(f"{w} (contribution {c:.3f})" for w, (_, c) in zip(said, parts))
    if vecs is not None and len(hist_items):
        v = np.asarray(vecs[item] if not hasattr(vecs, "toarray") else vecs[item].toarray().ravel(), np.float64)
        h = vecs[hist_items]
        h = np.asarray(h.toarray() if hasattr(h, "toarray") else h, np.float64)
        sims = h @ v / (np.linalg.norm(h, axis=1) * (np.linalg.norm(v) or 1.0) + 1e-12)
        weight = sims * np.where(hist_ratings > 0, hist_ratings, np.nanmean(hist_ratings) or 1.0)
        j = int(np.argmax(weight))
        rated = f"you rated {hist_ratings[j]:.0f}/10" if hist_ratings[j] > 0 else "you watched"
        return f"close to {meta.item_names([hist_items[j]])[0]}, which {rated} (cosine {sims[j]:.2f})"
    if hasattr(model, "reason"):
        return model.reason(item)
    return f"ranked by {type(model).__name__}"


def explain_history(model, meta, hist_items, hist_ratings, items, scores) -> list[str]:
    """Numbered lines (name, id, score, reason) for ``items`` / ``scores`` that ``model`` gave a
    user known only by a history (fold-in: ``hist_items`` item indices, ``hist_ratings`` with NaN
    = watched without a score). The reason comes from the model's item vectors as for a training
    user (``_reason``); a model without them but with ``similar_items`` (item-kNN, EASE) names the
    history anime most similar to the recommendation by the model's own similarity; otherwise
    the model's ``reason`` or its name."""
    hist_items = np.asarray(hist_items, dtype=np.int64)
    ratings = np.nan_to_num(np.asarray(hist_ratings, dtype=np.float64), nan=0.0)  # 0 = watched, as in seen
    items = [int(i) for i in np.asarray(items).ravel() if i >= 0]
    vecs = model.item_vectors() if hasattr(model, "item_vectors") else None
    near = {} if vecs is not None else _history_neighbours(model, items, hist_items)
    rating = dict(zip(hist_items.tolist(), ratings.tolist()))
    lines = []
    for rank, (i, s) in enumerate(zip(items, np.asarray(scores).ravel()), 1):
        if i in near:
            j, sim = near[i]
            said = f"you rated {rating[j]:.0f}/10" if rating[j] > 0 else "you watched"
            reason = f"similar to {meta.item_names([j])[0]}, which {said} (similarity {sim:.2f})"
        else:
            reason = _reason(model, i, hist_items, ratings, vecs, meta)
        lines.append(f"{rank:3d}. {meta.item_names([i])[0]} (id {meta.items.ids(i)})  score {s:.3f}  — {reason}")
    return lines


def _history_neighbours(model, items, hist_items, width: int = 200) -> dict:
    """item -> (history item, similarity): the recommended item's most similar history anime
    among its ``width`` nearest by ``model.similar_items`` (absent when none is, or the model
    has no item similarity)."""
    from research.models.base import NotSupported

    if not items or not len(hist_items) or not hasattr(model, "similar_items"):
        return {}
    try:
        idx, sims = model.similar_items(np.asarray(items), min(width, model.meta.n_items - 1))
    except (NotSupported, NotImplementedError, AttributeError, ValueError):
        return {}
    hist = set(hist_items.tolist())
    out = {}
    for i, row, srow in zip(items, idx, sims):
        for j, s in zip(row, srow):
            if j >= 0 and int(j) in hist and np.isfinite(s) and s > 0:
                out[i] = (int(j), float(s))
                break
    return out
