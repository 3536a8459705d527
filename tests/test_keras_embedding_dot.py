"""EmbeddingDot and the KerasRecommender base: contract, determinism, save/load, resume, logs."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import research  # noqa: F401
from research.data.interactions import build_dataset
from research.data.splits import random_split

pytestmark = pytest.mark.keras

REPO = Path(__file__).resolve().parent.parent
FAST = dict(dim=4, epochs=3, batch_size=128, learning_rate=0.05, l2=1.0)


def _data(seed=0, n=2500):
    """Planted low-rank ratings on 1-10 with external ids that are not 0..n-1."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 40, n)
    i = rng.integers(0, 60, n)
    pu, qi = rng.normal(size=(40, 2)), rng.normal(size=(60, 2))
    r = np.clip(np.round(6 + 1.5 * (pu[u] * qi[i]).sum(1) + rng.normal(0, 0.5, n)), 1, 10)
    df = pd.DataFrame({"user": u * 3 + 11, "item": i * 7 + 1000, "rating": r})
    df = df.drop_duplicates(["user", "item"])
    names = pd.DataFrame({"name": [f"Anime\t{j}" for j in range(60)]}, index=np.arange(60) * 7 + 1000)
    ds = build_dataset(df, item_table=names)
    return ds, random_split(ds.interactions, 0.2, 0.1, seed=0)


@pytest.fixture(scope="module")
def fitted():
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data()
    return ds, split, EmbeddingDot(**FAST, seed=1).fit(split.train, split.val)


def test_contract_shapes_ranges_and_recommend(fitted):
    ds, split, m = fitted
    users = np.arange(ds.meta.n_users)
    s = m.score(users)
    assert s.shape == (ds.meta.n_users, ds.meta.n_items) and np.isfinite(s).all()
    p = m.predict(split.test.user, split.test.item)
    lo, hi = split.train.rating.min(), split.train.rating.max()
    assert p.shape == (len(split.test),) and (p >= lo).all() and (p <= hi).all()
    # predict agrees with the Keras model's own forward pass (before clipping) and with score
    raw = m.predict_features({"user": split.test.user, "item": split.test.item})
    np.testing.assert_allclose(np.clip(raw, lo, hi), p, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s[split.test.user, split.test.item], raw, rtol=1e-5, atol=1e-5)
    seen = split.train.to_csr()
    items, scores = m.recommend(users, k=10, exclude=seen)
    assert items.shape == (len(users), 10)
    for row_items, row_scores, u in zip(items, scores, users):
        assert len(set(row_items.tolist())) == 10
        assert (row_scores[:-1] >= row_scores[1:]).all()
        assert not set(row_items.tolist()) & set(seen[u].indices.tolist())
    assert m.item_vectors().shape == (ds.meta.n_items, 4) and m.user_vectors().shape == (ds.meta.n_users, 4)
    assert m.extra_metrics()["fit_epochs"] == len(m.history["loss"]) == len(m.history["val_rmse"])


def test_learns_better_than_global_mean_and_history_is_per_epoch(fitted):
    from research.eval.harness import evaluate
    from research.models.baselines import GlobalMean
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split, _ = fitted
    m = EmbeddingDot(dim=4, epochs=15, batch_size=128, learning_rate=0.05, l2=1.0, seed=0).fit(split.train, split.val)
    rmse = evaluate(m, split).summary["rmse"]
    base = evaluate(GlobalMean().fit(split.train), split).summary["rmse"]
    assert rmse < 0.9 * base, (rmse, base)
    h = m.history
    assert h["epoch"] == list(range(1, len(h["epoch"]) + 1))
    assert h["loss"][-1] < h["loss"][0]  # epoch means, so they fall on this easy problem
    assert 1 <= m.best_epoch <= m.fit_epochs
    assert min(h["val_rmse"]) == pytest.approx(h["val_rmse"][m.best_epoch - 1])


def test_same_seed_identical_predictions(fitted):
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split, m = fitted
    again = EmbeddingDot(**FAST, seed=1).fit(split.train, split.val)
    assert np.array_equal(again.score(np.arange(5)), m.score(np.arange(5)))
    other = EmbeddingDot(**FAST, seed=2).fit(split.train, split.val)
    assert not np.array_equal(other.score(np.arange(5)), m.score(np.arange(5)))


def test_save_load_round_trip_in_fresh_process(fitted, tmp_path):
    from research.models.keras.common import KerasRecommender

    ds, split, m = fitted
    m.save(tmp_path / "model")
    back = KerasRecommender.load(tmp_path / "model", ds.meta)
    assert type(back) is type(m) and back.get_config() == m.get_config()
    assert np.array_equal(back.score(np.arange(ds.meta.n_users)), m.score(np.arange(ds.meta.n_users)))
    assert back.history == m.history
    np.save(tmp_path / "want.npy", m.predict(split.test.user, split.test.item))
    code = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_keras_embedding_dot import _data
        from research.models.keras.embedding_dot import EmbeddingDot
        ds, split = _data()
        m = EmbeddingDot.load({str(tmp_path / 'model')!r}, ds.meta)
        got = m.predict(split.test.user, split.test.item)
        assert np.array_equal(got, np.load({str(tmp_path / 'want.npy')!r})), "predictions differ"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


class _Crash(Exception):
    pass


def _crash_after_epoch(last: int):
    """A Keras callback class that raises ``_Crash`` at the end of epoch ``last`` (0-based)."""
    import tensorflow as tf

    class CrashAfter(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == last:
                raise _Crash()

    return CrashAfter


def test_resume_after_interruption_matches_uninterrupted(tmp_path):

    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data(seed=3)
    cfg = dict(FAST, epochs=5, patience=2, seed=4)
    whole = EmbeddingDot(**cfg).fit(split.train, split.val)

    CrashAfter = _crash_after_epoch(1)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):
        EmbeddingDot(**cfg, checkpoint_dir=str(ckpt)).fit(split.train, split.val, callbacks=[CrashAfter()])
    assert (ckpt / "backup").exists()
    resumed = EmbeddingDot(**cfg, checkpoint_dir=str(ckpt)).fit(split.train, split.val)
    assert resumed.history == whole.history  # epochs 1-2 restored from disk, 3-5 trained again
    assert np.array_equal(resumed.score(np.arange(6)), whole.score(np.arange(6)))
    assert resumed.best_epoch == whole.best_epoch
    assert not ckpt.exists()  # a completed fit leaves nothing to resume


def test_stale_checkpoint_of_other_config_is_ignored(tmp_path):
    import tensorflow as tf

    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data(seed=3)

    class CrashAfter(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise _Crash()

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):
        EmbeddingDot(**dict(FAST, dim=3), checkpoint_dir=str(ckpt)).fit(split.train, split.val,
                                                                           callbacks=[CrashAfter()])
    m = EmbeddingDot(**FAST, checkpoint_dir=str(ckpt)).fit(split.train, split.val)  # dim 4: must not restore
    assert m.fit_epochs == FAST["epochs"] and m.history["epoch"][0] == 1


def test_checkpoint_of_other_validation_rows_is_ignored(tmp_path):
    """Early stopping's state in a checkpoint was measured on one validation part: a fit with the
    same model and training rows but other validation rows must start over, not restore it."""
    import tensorflow as tf

    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data(seed=3)

    CrashAfter = _crash_after_epoch(1)

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):
        EmbeddingDot(**dict(FAST, early_stopping=False), checkpoint_dir=str(ckpt)).fit(
            split.train, split.val, callbacks=[CrashAfter()])
    assert (ckpt / "backup").exists()

    class Epochs(tf.keras.callbacks.Callback):
        ran = []

        def on_epoch_begin(self, epoch, logs=None):
            self.ran.append(epoch)

    other_val = split.val.take(np.arange(len(split.val) - 1))
    EmbeddingDot(**dict(FAST, early_stopping=False), checkpoint_dir=str(ckpt)).fit(
        split.train, other_val, callbacks=[Epochs()])
    assert Epochs.ran == list(range(FAST["epochs"]))  # trained from its first epoch: nothing restored


def test_tensorboard_logs_and_projector(tmp_path):
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data()
    m = EmbeddingDot(**dict(FAST, epochs=2))
    m.log_dir = str(tmp_path / "tb" / "embedding_dot")
    m.fit(split.train, split.val)
    log = Path(m.log_dir)
    assert list((log / "train").glob("events.out.tfevents.*")) and list((log / "validation").glob("events.*"))
    lines = (log / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    trained = np.unique(split.train.item)
    assert lines[0] == "name\tanime_id" and len(lines) == 1 + len(trained)
    # the tab inside the name is replaced (it would shift the TSV columns)
    assert lines[1] == ds.meta.item_names(trained[:1])[0].replace("\t", " ") + f"\t{ds.meta.items.ids(trained[0])}"
    assert (log / "projector_config.pbtxt").exists() and list(log.glob("embedding.ckpt-1*"))
    assert not (tmp_path / "tb" / "ckpt").exists()  # checkpoints derived from log_dir, removed at the end


def test_lazy_adam_updates_only_batch_rows_and_matches_adam_first_step():
    import tensorflow as tf

    from research.models.keras.common import LazyAdam

    init = np.arange(12, dtype=np.float32).reshape(6, 2) / 10
    idx = tf.constant([1, 3, 1])  # a duplicate index: its gradients must be summed
    out = {}
    for name, opt in (("adam", tf.keras.optimizers.Adam(0.1)), ("lazy", LazyAdam(0.1))):
        var = tf.Variable(init)
        for _ in range(2):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.gather(var, idx) ** 2)
            opt.apply_gradients([(tape.gradient(loss, var), var)])
            out.setdefault(name, []).append(var.numpy().copy())
    np.testing.assert_allclose(out["lazy"][0], out["adam"][0], atol=1e-5)  # moments start at 0: same step (epsilon differs)
    untouched = [0, 2, 4, 5]
    assert np.array_equal(out["lazy"][1][untouched], init[untouched])
    assert not np.allclose(out["lazy"][1][[1, 3]], init[[1, 3]])
    np.testing.assert_allclose(out["lazy"][1][[1, 3]], out["adam"][1][[1, 3]], atol=1e-5)


# ---- user_history (SVD++ with the unscored rows as implicit feedback) -----------------------
HIST = dict(FAST, user_history=True, history_l2=1.0)


def _data_unscored(seed=0, n=2500, unscored=0.15):
    """``_data`` with a share of the rows turned into "watched, not scored" (NaN) rows."""
    ds, _ = _data(seed, n)
    frame = ds.interactions.to_frame()
    rng = np.random.default_rng(seed + 100)
    rating = frame["rating"].to_numpy().copy()
    rating[rng.random(len(rating)) < unscored] = np.nan
    inter = ds.interactions
    from research.data.interactions import Interactions

    data = Interactions(inter.user, inter.item, rating, inter.meta)
    return ds, random_split(data, 0.2, 0.1, seed=0)


def test_history_term_matches_hand_computation_including_an_unscored_row():
    from research.models.keras.embedding_dot import EmbeddingDot

    # user 1: anime 10, 11 rated and 12 watched without a score; user 2: anime 10, 13 rated
    df = pd.DataFrame({"user": [1, 1, 1, 2, 2], "item": [10, 11, 12, 10, 13],
                       "rating": [8.0, 6.0, np.nan, 9.0, 3.0]})
    ds = build_dataset(df)
    train = ds.interactions
    m = EmbeddingDot(dim=3, epochs=2, batch_size=2, learning_rate=0.05, l2=1.0, user_history=True,
                     init_std=0.3, seed=0).fit(train)
    P = m.model.user_embedding.embeddings.numpy()
    Y = m.model.history_embedding.embeddings.numpy()
    u1, u2 = ds.meta.users.index([1, 2])
    n1, n2 = ds.meta.items.index([10, 11, 12]), ds.meta.items.index([10, 13])
    want = {u1: P[u1] + Y[n1].sum(0) / np.sqrt(3), u2: P[u2] + Y[n2].sum(0) / np.sqrt(2)}
    for u, vec in want.items():
        np.testing.assert_allclose(m.user_vectors()[u], vec, rtol=1e-5, atol=1e-6)
    # without the unscored anime the vector would differ: it is part of N(u)
    assert not np.allclose(m.user_vectors()[u1], P[u1] + Y[n1[:2]].sum(0) / np.sqrt(2), atol=1e-4)
    # the graph's forward pass (the one trained) computes the same r̂
    users, items = np.array([u1, u1, u2]), ds.meta.items.index([12, 13, 11])
    Q, bu, bi = m._Q, m._bu, m._bi
    hand = m.fit_state["mu"] + bu[users] + bi[items] + np.array([want[u] @ Q[i] for u, i in zip(users, items)])
    np.testing.assert_allclose(m.predict_features({"user": users, "item": items}), hand, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.score(users)[np.arange(3), items], hand, rtol=1e-5, atol=1e-5)


def test_history_gradient_touches_only_the_batch_users_history_rows():
    import tensorflow as tf

    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data_unscored()
    m = EmbeddingDot(**dict(HIST, epochs=1)).fit(split.train)
    feats = m.features(split.train, training=True)
    batch = {k: tf.constant(v[:16]) for k, v in feats.items()}
    y = m.model.history_embedding.embeddings
    with tf.GradientTape() as tape:
        loss = m.model.compute_loss(batch, training=True)
    grad = tape.gradient(loss, y)
    assert isinstance(grad, tf.IndexedSlices)  # a sparse update: LazyAdam touches these rows only
    hist = m.training_histories()
    want = np.unique(hist[np.unique(feats["user"][:16])].indices)
    assert np.array_equal(np.unique(grad.indices.numpy()), want)
    assert len(want) < ds.meta.n_items


def test_unscored_rows_never_enter_the_loss():
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data_unscored()
    train = split.train
    assert (~train.rated).sum() > 50
    for hist in (False, True):
        m = EmbeddingDot(**dict(FAST, user_history=hist, history_l2=1.0), seed=3)
        m.meta, m.fit_state = train.meta, m.prepare(train)
        feats = m.features(train, training=True)
        assert len(feats["rating"]) == train.rated.sum() and np.isfinite(feats["rating"]).all()
    # without the history term the unscored rows change nothing at all
    a = EmbeddingDot(**FAST, seed=3).fit(train, split.val)
    b = EmbeddingDot(**FAST, seed=3).fit(train.only_rated(), split.val)
    assert np.array_equal(a.score(np.arange(10)), b.score(np.arange(10)))
    # with it they enter N(u) only: the loss stays finite, and the histories hold every row
    h = EmbeddingDot(**HIST, seed=3).fit(train, split.val)
    assert np.isfinite(h.history["loss"]).all() and np.isfinite(h.history["val_rmse"]).all()
    assert h.training_histories().nnz == train.to_csr().nnz > train.only_rated().to_csr().nnz


def test_history_save_load_round_trip(tmp_path):
    from research.models.keras.common import KerasRecommender
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data_unscored()
    m = EmbeddingDot(**HIST, seed=2).fit(split.train, split.val)
    m.save(tmp_path / "model")
    with np.load(tmp_path / "model" / "arrays.npz", allow_pickle=False) as z:  # data only
        assert {"hist_indptr", "hist_items", "history_count"} <= set(z.files)
    back = KerasRecommender.load(tmp_path / "model", ds.meta)
    assert type(back) is EmbeddingDot and back.get_config() == m.get_config() and back.user_history
    users = np.arange(ds.meta.n_users)
    assert np.array_equal(back.score(users), m.score(users))
    assert np.array_equal(back.predict(split.test.user, split.test.item), m.predict(split.test.user, split.test.item))
    np.testing.assert_allclose(back.predict_features({"user": split.test.user, "item": split.test.item}),
                               m.predict_features({"user": split.test.user, "item": split.test.item}), atol=1e-6)
    again = EmbeddingDot(**HIST, seed=2).fit(split.train, split.val)  # same seed, same numbers
    assert np.array_equal(again.score(users), m.score(users))


def test_history_model_beats_bias_on_synthetic_data():
    from research.eval.harness import evaluate
    from research.models.baselines import Bias
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split = _data_unscored()
    m = EmbeddingDot(**dict(HIST, epochs=15), seed=0).fit(split.train, split.val)
    rmse = evaluate(m, split).summary["rmse"]
    base = evaluate(Bias().fit(split.train), split).summary["rmse"]
    assert rmse < 0.95 * base, (rmse, base)


def _user_objective(m, history, row, P, bu):
    """The fit's objective restricted to one user (ridge form), for given (h_u + p, b_u)."""
    st = m.fit_state
    a, b = history.rated.indptr[row], history.rated.indptr[row + 1]
    items, r = history.rated.indices[a:b], history.rated.data[a:b].astype(np.float64)
    h = m.history_term(history.seen[row])[0] if m.user_history else np.zeros(m.dim)
    pred = st["mu"] + bu + m._bi[items] + m._Q[items].astype(np.float64) @ P
    return float(((r - pred) ** 2).sum() + m.l2 * ((P - h) ** 2).sum() + m.bias_l2 * bu ** 2)


@pytest.mark.parametrize("history_on", [False, True])
def test_fold_in_solves_the_users_own_objective(fitted, history_on):
    """Fold-in = the exact minimiser of the fit's per-user objective with the item side fixed: for
    every training user it is at least as low as the fitted (early-stopped) vector's value, and
    perturbing it only raises it; its scores agree with score's ranking closely, and
    predict_history gives its ratings in the training range."""
    from research.models.base import History
    from research.models.keras.embedding_dot import EmbeddingDot

    ds, split, m = fitted
    if history_on:
        m = EmbeddingDot(**FAST, user_history=True, seed=1).fit(split.train, split.val)
    users = np.arange(split.train.n_users)
    h = History.from_interactions(split.train, users)
    P, bu = m.fold_in(h)
    rng = np.random.default_rng(0)
    for u in users[:15]:
        ours = _user_objective(m, h, u, P[u].astype(np.float64), float(bu[u]))
        fitted_value = _user_objective(m, h, u, m._P[u].astype(np.float64), float(m._bu[u]))
        assert ours <= fitted_value + 1e-6
        nudged = _user_objective(m, h, u, P[u] + rng.normal(0, 1e-2, m.dim), float(bu[u]) + 1e-2)
        assert nudged > ours
    s_fold, s_fit = m.score_history(h), m.score(users)
    corr = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(s_fold, s_fit)])
    assert corr > 0.8, corr  # same item side: the scores largely agree (measured 0.945, 0.901 with history)
    p = m.predict_history(h, np.zeros(5, int), np.arange(5))
    assert p.min() >= m.fit_state["lo"] and p.max() <= m.fit_state["hi"]
