"""Reasons for every model (research/explain.py) and what each score column means, on small
synthetic data with the classical models; one Keras test (embedding_dot's nearest history anime)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from research import explain as E
from research.data.interactions import Interactions, Meta, Vocab
from research.models.baselines import Bias, Popularity
from research.models.clustering import KMeansUsers
from research.models.content import ContentBased
from research.models.ease import EASE
from research.models.neighbors import ItemKNN, UserKNN
from research.models.registry import MODELS

GENRES = ["Action", "Comedy", "Romance", "Drama", "Sci-Fi", "Slice of Life"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n_u, n_i = 60, 40
    taste = rng.integers(0, 3, n_u)  # three planted segments
    item_seg = np.arange(n_i) % 3
    users, items, ratings = [], [], []
    for u in range(n_u):
        pool = np.flatnonzero(item_seg == taste[u])
        pick = np.unique(np.concatenate([rng.choice(pool, 8, replace=False), rng.choice(n_i, 3, replace=False)]))
        for i in pick:
            users.append(u)
            items.append(i)
            r = rng.integers(7, 11) if item_seg[i] == taste[u] else rng.integers(2, 6)
            ratings.append(np.nan if rng.random() < 0.1 else float(r))
    table = pd.DataFrame({"name": [f"Anime {j}" for j in range(n_i)],
                          "genres": [[GENRES[2 * (j % 3)], GENRES[2 * (j % 3) + 1]] for j in range(n_i)]})
    meta = Meta(Vocab(np.arange(n_u) + 100), Vocab(np.arange(n_i) + 1000), table)
    return Interactions(np.array(users), np.array(items), np.array(ratings, np.float32), meta)


@pytest.fixture(scope="module")
def history(data):
    """A new user: four anime of segment 0 rated high, one watched without a score."""
    return np.array([0, 3, 6, 9, 12]), np.array([10.0, 9.0, 8.0, 9.0, np.nan])


def _reasons(model, data, history, k=5):
    items, ratings = history
    h = E._Reasons(model, data.meta, items, ratings).history()
    top, vals = model.recommend_history(h, k)
    return E.explain_history(model, data.meta, items, ratings, top[0], vals[0]), top[0]


def _named(line: str) -> str:
    m = re.search(r"you (?:rated|watched) (Anime \d+)", line)
    return m.group(1) if m else ""


def test_item_knn_names_the_top_contributor(data, history):
    m = ItemKNN(k=10, shrinkage=5).fit(data)
    lines, top = _reasons(m, data, history)
    items, ratings = history
    sim = m.sim_.toarray()
    for line, i in zip(lines, top):
        assert "because you " in line and "similarity" in line, line
        best = items[np.lexsort((items, -sim[i, items]))[0]]  # binary history: contribution = similarity
        assert _named(line) == f"Anime {best}"
        assert f"similarity {sim[i, best]:.2f}" in line
    assert re.search(r"because you rated Anime \d+ \d+/10", "\n".join(lines))


def test_ease_names_the_top_contributor_for_a_history_and_a_training_user(data, history):
    m = EASE(lam=5.0).fit(data)
    lines, top = _reasons(m, data, history)
    items, ratings = history
    x = np.where(np.isnan(ratings), 1.0, ratings)
    for line, i in zip(lines, top):
        w = m.B[m.position[items], m.position[i]] * x
        assert _named(line) == f"Anime {items[np.argmax(w)]}" and "EASE weight" in line, line
    # a training user: the model's own explain() terms
    u = 0
    row = data.to_csr()[u]
    why = E._Reasons(m, data.meta, row.indices, row.data, user=u)
    i = int(np.argmax(np.where(np.isin(np.arange(40), row.indices), -np.inf, m.score([u])[0])))
    (j, c), *_ = m.explain(u, i)
    assert _named(why.reason(i)) == f"Anime {j}" and f"contribution {c:.3f}" in why.reason(i)


def test_user_knn_counts_neighbours_who_rated_it(data, history):
    m = UserKNN(k=15, shrinkage=2).fit(data)
    u = 5
    row = data.to_csr()[u]
    why = E._Reasons(m, data.meta, row.indices, row.data, user=u)
    nb = m.sim_[u]
    nb_users = nb.indices[nb.data > 0]
    rated = data.to_csr("rating")
    scores = m.score([u])[0]
    scores[row.indices] = -np.inf
    i = int(np.argmax(scores))
    n_rated = int((rated[nb_users, i].toarray().ravel() != 0).sum() if rated.nnz else 0)
    got = why.reason(i)
    r = rated[nb_users, i].toarray().ravel()
    mean = r[r > 0].mean()
    assert got.startswith(f"{n_rated} user{'s' if n_rated > 1 else ''} with tastes like yours ("), got
    assert f"rated it {mean:.1f}/10 on average" in got and "shared anime with you on average" in got
    lines, _ = _reasons(m, data, history)
    assert all(re.search(r"\d+ users? with tastes like yours \(\d+ shared anime", ln) for ln in lines), lines


def test_kmeans_names_the_cluster_and_its_genres(data, history):
    m = KMeansUsers(n_clusters=3, features=("genre",), n_init=2).fit(data)
    lines, top = _reasons(m, data, history)
    for line in lines:
        assert "popular in your taste cluster (" in line and "its top genres: " in line, line
        assert re.search(r"\d+ of its \d+ users watched it", line)
    # the history is segment 0 (Action / Comedy): those are the cluster's over-represented genres
    genres = re.search(r"its top genres: ([^;)]+)", lines[0]).group(1)
    assert set(genres.split(", ")[:2]) == {"Action", "Comedy"}, genres


def test_popularity_bias_and_content_say_what_they_are(data, history):
    lines, _ = _reasons(Popularity().fit(data), data, history)
    assert all("training users watched it (the same list for everyone)" in ln for ln in lines)
    lines, _ = _reasons(Bias().fit(data), data, history)
    assert all("item bias" in ln and "the same list for everyone" in ln for ln in lines)
    lines, _ = _reasons(ContentBased().fit(data), data, history)
    assert all("nearest in ContentBased's item space to Anime " in ln and "cosine" in ln for ln in lines)


def test_score_meaning_for_every_registered_model(data):
    assert "similarity-weighted sum" in E.score_meaning(ItemKNN(k=5).fit(data))
    assert "not a rating" in E.score_meaning(EASE(lam=5.0).fit(data))
    assert "share (0-1)" in E.score_meaning(KMeansUsers(n_clusters=2, features=("genre",)).fit(data))
    assert "number of training users" in E.score_meaning(Popularity().fit(data))
    # every registered class has its own sentence (stand-ins by class name: no TensorFlow here)
    for name, where in MODELS.items():
        cls_name = where.split(":")[1]
        stub = type(cls_name, (), {"history": "binary", "k": 10, "rank_by": "popularity",
                                   "weighting": "rating"})()
        text = E.score_meaning(stub)
        assert text and not text.endswith("(higher = better)"), (name, text)


@pytest.mark.keras
def test_embedding_dot_names_the_nearest_history_anime(data, history):
    from research.models.keras.embedding_dot import EmbeddingDot

    m = EmbeddingDot(dim=4, epochs=2, batch_size=128, learning_rate=0.05, l2=1.0, seed=0).fit(data)
    lines, top = _reasons(m, data, history)
    items, _ = history
    q = m.item_vectors()
    for line, i in zip(lines, top):
        cos = q[items] @ q[i] / (np.linalg.norm(q[items], axis=1) * np.linalg.norm(q[i]) + 1e-12)
        assert f"nearest in EmbeddingDot's item space to Anime {items[np.argmax(cos)]}, which you" in line, line
    assert "predicted rating" in E.score_meaning(m)
