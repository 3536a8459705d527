"""One-line reasons for recommendations, computed from the model's own representation, and what
each model's score column means.

``explain_recommendations`` (a training user of a run) and ``explain_history`` (a user known only
by a history: ``recommend --list``) print one numbered line per recommended anime with its name,
id, score and a reason. The reason is the model's own account of the score:

=====================================  ==========================================================
model                                  reason
=====================================  ==========================================================
item_knn                               the history anime contributing most to the score (the
                                       score is the sum over the history of the kept item-item
                                       similarities): "because you rated X 9/10 (similarity ..)"
ease                                   the same with EASE's item-item weights (x_j B_ji)
user_knn                               the user's kept neighbours who watched it: "N users with
                                       tastes like yours (k shared anime on average) rated it .."
kmeans                                 the user's taste cluster: its share (or mean rating) for the
                                       anime and its most over-represented genres
models with item vectors (embedding    the history anime nearest to it by cosine in the model's
models, content, implicit ALS/BPR,     item space
Surprise SVD)
popularity, bias, global_mean          says so (the same list for everyone)
=====================================  ==========================================================

``score_meaning(model)`` says in one line what the score column is for that model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from research.models.base import History, mask_scores, top_k

# ---------------------------------------------------------------------------------------------
# What the score column means

def _kind(model) -> str:
    """The model's family, by class (imported lazily: nothing here imports TensorFlow)."""
    return type(model).__name__


_MEANINGS = {
    "GlobalMean": "the predicted rating (1-10 scale): the global mean rating, the same for every anime",
    "Bias": "the anime's damped rating bias (its predicted rating minus the global mean and your own bias)",
    "Popularity": "the number of training users who watched it",
    "EASE": "x·B: your history (rating, 1 if watched without a score{w}) times EASE's item-item "
            "weights; a ranking score, not a rating",
    "ContentBased": "cosine similarity (0-1) of the anime's catalogue features to your rating-weighted "
                    "taste profile",
    "Blend": "the predicted rating (1-10 scale) of the blend of its member models",
    "EmbeddingDot": "the predicted rating (1-10 scale, unclipped): mean + user bias + anime bias + "
                    "user·anime embedding dot product",
    "SVDpp": "the predicted rating (1-10 scale, unclipped): mean + biases + (user + history)·anime factors",
    "RecommenderNet": "a probability-like sigmoid (0-1) of the cosine of the user and anime embeddings: "
                      "the predicted rating scaled to 0-1 (as the original study trained it)",
    "TwoTower": "a logit: the dot product of the user tower's and the anime tower's vectors "
                "(higher = more likely watched; not a rating or probability)",
    "DNN": "the predicted rating (1-10 scale) of the deep & cross network",
    "MultVAE": "a logit of the decoder's softmax over anime (higher = more likely in your list)",
    "AutoRec": "the predicted rating (1-10 scale, unclipped) reconstructed by the autoencoder",
    "SurpriseSVD": "the predicted rating (1-10 scale, unclipped) of Surprise's SVD",
    "SurpriseSVDpp": "the predicted rating (1-10 scale, unclipped) of Surprise's SVD++",
    "SurpriseKNNBaseline": "the predicted rating (1-10 scale, unclipped) of Surprise's KNNBaseline",
    "ImplicitALS": "the dot product of ALS user and anime factors (a preference near 0-1, confidence-"
                   "weighted; not a rating)",
    "ImplicitBPR": "the dot product of BPR user and anime factors (a pairwise-ranking logit; not a rating)",
}


def score_meaning(model) -> str:
    """One line: what the ``score`` column printed for ``model``'s recommendations is."""
    kind = _kind(model)
    if kind == "ItemKNN":
        what = ("1 for every anime you watched" if model.history == "binary"
                else "your ratings' deviations from the baseline")
        return (f"a similarity-weighted sum: the anime's kept similarities (k={model.k}) to your anime, "
                f"weighted by {what}; a ranking score, not a rating")
    if kind == "UserKNN":
        what = ("who watched it" if model.history == "binary"
                else "weighted by their rating's deviation from the baseline")
        return (f"a similarity-weighted sum over your {model.k} nearest users {what}; "
                f"a ranking score, not a rating")
    if kind == "KMeansUsers":
        if model.rank_by == "popularity":
            return "the damped share (0-1) of your taste cluster's users who watched it"
        return "the damped mean rating (1-10 scale) your taste cluster gave it"
    if kind == "EASE":
        return _MEANINGS[kind].format(w="" if model.weighting == "rating" else "; binary: 1 for every anime")
    return _MEANINGS.get(kind, f"{kind}'s score (higher = better)")


# ---------------------------------------------------------------------------------------------
# Reasons

def explain_recommendations(run_dir: Path, model, meta, user: int, k: int = 10) -> list[str]:
    """Top-``k`` for ``user`` with names, scores and a reason, excluding what the user has seen
    in train + validation and items outside the training candidates, as the harness does."""
    from research.experiment import load_seen

    seen = load_seen(run_dir)
    candidates = np.asarray(seen.getnnz(axis=0) > 0).ravel()
    scores = np.asarray(model.score(np.array([user])), dtype=np.float64).copy()
    items, vals = top_k(mask_scores(scores, np.array([user]), seen, candidates), k)
    row = seen[user]
    why = _Reasons(model, meta, row.indices, row.data, user=user)
    lines = [f"top {k} for user {meta.users.ids(user)} ({len(row.indices)} anime seen):"]
    for rank, (i, s) in enumerate(zip(items[0], vals[0]), 1):
        if i < 0:
            continue
        lines.append(_line(meta, rank, int(i), s, why.reason(int(i))))
    return lines


def explain_history(model, meta, hist_items, hist_ratings, items, scores) -> list[str]:
    """Numbered lines (name, id, score, reason) for ``items`` / ``scores`` that ``model`` gave a
    user known only by a history (fold-in: ``hist_items`` item indices, ``hist_ratings`` with NaN
    = watched without a score). Reasons as for a training user (see the module docstring), from
    the history alone."""
    hist_items = np.asarray(hist_items, dtype=np.int64)
    why = _Reasons(model, meta, hist_items, hist_ratings)
    items = [int(i) for i in np.asarray(items).ravel() if i >= 0]
    return [_line(meta, rank, i, s, why.reason(i))
            for rank, (i, s) in enumerate(zip(items, np.asarray(scores).ravel()), 1)]


def _line(meta, rank: int, item: int, score: float, reason: str) -> str:
    return f"{rank:3d}. {meta.item_names([item])[0]} (id {meta.items.ids(item)})  score {score:.3f}  — {reason}"


class _Reasons:
    """The reasons for one user (a training user ``user`` of the model, or a history)."""

    def __init__(self, model, meta, hist_items, hist_ratings, user: int | None = None):
        self.model, self.meta, self.user = model, meta, user
        self.items = np.asarray(hist_items, dtype=np.int64)
        r = np.asarray(hist_ratings, dtype=np.float64)
        self.ratings = np.where(np.isnan(r), 0.0, r)  # 0 = watched without a score, as in seen
        self.rating = dict(zip(self.items.tolist(), self.ratings.tolist()))
        self.kind = _kind(model)
        self._cache: dict = {}

    # the history as the models' fold-in takes it
    def history(self) -> History:
        if "history" not in self._cache:
            r = np.where(self.ratings > 0, self.ratings, np.nan)
            model_users = None if self.user is None else [self.user]
            self._cache["history"] = History.from_lists([self.items], [r], n_items=self.meta.n_items,
                                                        model_users=model_users)
        return self._cache["history"]

    def said(self, j: int) -> str:
        r = self.rating.get(int(j), 0.0)
        name = self.meta.item_names([int(j)])[0]
        return f"rated {name} {r:.0f}/10" if r > 0 else f"watched {name}"

    def reason(self, item: int) -> str:
        if not len(self.items):
            return f"ranked by {self.kind} (you have no anime in the model's history)"
        method = {"ItemKNN": self._item_knn, "EASE": self._ease, "UserKNN": self._user_knn,
                  "KMeansUsers": self._kmeans, "Popularity": self._popularity, "Bias": self._bias,
                  "GlobalMean": self._global_mean}.get(self.kind)
        if method is not None:
            out = method(item)
            if out:
                return out
        if hasattr(self.model, "item_vectors"):
            out = self._nearest(item)
            if out:
                return out
        if hasattr(self.model, "reason"):
            return self.model.reason(item)
        return f"ranked by {self.kind}"

    # ---- item-item models: the history anime contributing most ---------------------------
    def _contributions(self, item: int, values: np.ndarray, sims: np.ndarray, label: str) -> str:
        contrib = values * sims
        pos = np.flatnonzero(contrib > 0)
        if not len(pos):
            return ""
        order = pos[np.lexsort((self.items[pos], -contrib[pos]))]
        j = order[0]
        more = f"; {len(pos) - 1} more of your anime add to it" if len(pos) > 1 else ""
        return f"because you {self.said(self.items[j])} ({label} {sims[j]:.2f}{more})"

    def _item_knn(self, item: int) -> str:
        m = self.model
        if "h" not in self._cache:
            h = m._history(np.array([self.user])) if self.user is not None else m._history_rows(self.history())
            self._cache["h"] = np.asarray(h[:, self.items].toarray()).ravel().astype(np.float64)
        sims = np.asarray(m.sim_[item][:, self.items].toarray()).ravel().astype(np.float64)
        return self._contributions(item, self._cache["h"], sims, "similarity")

    def _ease(self, item: int) -> str:
        m = self.model
        pos = int(m.position[item])
        if pos < 0:
            return ""
        if self.user is not None:  # the model's own scoring history (its parts and weighting)
            row = m.history[self.user]
            items, x = m.active[row.indices], row.data.astype(np.float64)
        else:
            hp = m.position[self.items]
            keep = hp >= 0
            items = self.items[keep]
            x = (np.where(self.ratings[keep] > 0, self.ratings[keep], 1.0) if m.weighting == "rating"
                 else np.ones(int(keep.sum())))
        if not len(items):
            return ""
        w = m.B[m.position[items], pos].astype(np.float64)
        contrib = x * w
        best = int(np.lexsort((items, -contrib))[0])
        if contrib[best] <= 0:
            return ""
        n = int((contrib > 0).sum())
        more = f"; {n - 1} more of your anime add to it" if n > 1 else ""
        return (f"because you {self.said(items[best])} (EASE weight {w[best]:.3f}, "
                f"contribution {contrib[best]:.3f}{more})")

    # ---- user-kNN: the neighbours who watched it -------------------------------------------
    def _user_knn(self, item: int) -> str:
        m = self.model
        if "nb" not in self._cache:
            if self.user is not None:
                nb = m.sim_[self.user]
            else:
                nb = m.sim_rows_.query_top_k(m._history_values(self.history()), m.k,
                                             self.history().model_users)
            nb = sp.csr_matrix(nb)
            users = nb.indices[nb.data > 0]
            mine = np.zeros(m.ones.shape[1])
            mine[self.items] = 1.0
            shared = np.asarray(m.ones[users] @ mine).ravel()
            self._cache["nb"] = (users, shared)
        users, shared = self._cache["nb"]
        if not len(users):
            return ""
        watched = np.asarray(m.ones[users, item].toarray()).ravel() > 0
        if not watched.any():
            return ""
        rated_pat = np.asarray(m.rated_pattern[users, item].toarray()).ravel() > 0
        who, rated = users[watched & rated_pat], watched & rated_pat
        n_w, n_r = int(watched.sum()), int(rated.sum())
        share = f"{np.mean(shared[watched]):.0f} shared anime with you on average"
        if n_r:
            r = (np.asarray(m.resid[who, item].toarray()).ravel()
                 + m._baseline_raw(who, np.full(len(who), item)))
            extra = f"; {n_w - n_r} more watched it" if n_w > n_r else ""
            return (f"{n_r} user{'s' if n_r > 1 else ''} with tastes like yours ({share}) rated it "
                    f"{np.mean(r):.1f}/10 on average{extra}")
        return f"{n_w} user{'s' if n_w > 1 else ''} with tastes like yours ({share}) watched it"

    # ---- k-means: the taste cluster ----------------------------------------------------------
    def _kmeans(self, item: int) -> str:
        m = self.model
        if "cluster" not in self._cache:
            lab = int(m.labels_[self.user]) if self.user is not None else int(m.history_labels(self.history())[0])
            self._cache["cluster"] = lab
            self._cache["genres"] = _cluster_genres(m, self.meta, lab) if lab >= 0 else ""
        c = self._cache["cluster"]
        if c < 0:
            return "popular overall (you are in no taste cluster)"
        n_c = int((m.labels_ == c).sum())
        genres = self._cache["genres"]
        genres = f"; its top genres: {genres}" if genres else ""
        where = f"your taste cluster ({c + 1} of {m.km_.n_clusters}, {n_c} users{genres})"
        if m.rank_by == "popularity":
            d = m.damping
            n_ci = max(0.0, m.pop_[c, item] * (n_c + d) - d * m.global_pop_[item])
            return (f"popular in {where}: {round(n_ci):.0f} of its {n_c} users watched it "
                    f"({m.global_pop_[item]:.0%} of all users)")
        return f"rated highly in {where}: damped cluster mean {m.cluster_mean_[c, item]:.1f}/10"

    # ---- the same list for everyone ------------------------------------------------------------
    def _popularity(self, item: int) -> str:
        n = float(self.model.counts[item])
        return f"popular: {n:.0f} training users watched it (the same list for everyone)"

    def _bias(self, item: int) -> str:
        return (f"rated above average by everyone: item bias {float(self.model.bi[item]):+.2f} "
                f"(the same list for everyone)")

    def _global_mean(self, item: int) -> str:
        return "every anime scores the global mean: this order means nothing"

    # ---- models with item vectors: the nearest history anime -----------------------------------
    def _nearest(self, item: int) -> str:
        if "vecs" not in self._cache:
            vecs = self.model.item_vectors()
            if vecs is None:
                self._cache["vecs"] = None
            else:
                h = vecs[self.items]
                h = np.asarray(h.toarray() if sp.issparse(h) else h, np.float64)
                self._cache["vecs"] = (vecs, h, np.linalg.norm(h, axis=1))
        if self._cache["vecs"] is None:
            return ""
        vecs, h, hn = self._cache["vecs"]
        v = vecs[item]
        v = np.asarray(v.toarray().ravel() if sp.issparse(v) else v, np.float64).ravel()
        sims = h @ v / (hn * (np.linalg.norm(v) or 1.0) + 1e-12)
        j = int(np.argmax(sims))
        return f"nearest in {self.kind}'s item space to {self.meta.item_names([self.items[j]])[0]}, " \
               f"which you {self.said(self.items[j]).split(' ', 1)[0]}{self._score_of(self.items[j])} " \
               f"(cosine {sims[j]:.2f})"

    def _score_of(self, j: int) -> str:
        r = self.rating.get(int(j), 0.0)
        return f" {r:.0f}/10" if r > 0 else ""


def _cluster_genres(model, meta, cluster: int, n: int = 3) -> str:
    """The ``n`` genres most over-represented among the anime the cluster watched (share of its
    interactions carrying the genre over the share among all users' interactions)."""
    from research.models.clustering import _genre_matrix

    table = meta.item_table
    if table is None or "genres" not in table:
        return ""
    g = _genre_matrix(table)
    if not g.shape[1]:
        return ""
    lists = [x if isinstance(x, (list, tuple, np.ndarray)) else [] for x in table["genres"].tolist()]
    vocab = sorted({v for x in lists for v in x if isinstance(v, str) and v})
    d = model.damping
    n_c = float((model.labels_ == cluster).sum())
    watched = np.maximum(0.0, model.pop_[cluster] * (n_c + d) - d * model.global_pop_)
    mine = g.T @ watched
    allg = g.T @ model.global_pop_
    if mine.sum() <= 0 or allg.sum() <= 0:
        return ""
    share, base = mine / mine.sum(), allg / allg.sum()
    lift = np.divide(share, base, out=np.zeros_like(share), where=base > 0)
    lift[share < 0.02] = 0.0  # a genre of a handful of anime is no description of a cluster
    order = [int(j) for j in np.lexsort((np.arange(len(lift)), -lift)) if lift[j] > 0][:n]
    return ", ".join(vocab[j] for j in order)
