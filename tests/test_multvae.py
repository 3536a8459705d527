"""MultVAE / MultDAE: the loss terms against numpy, β's schedule, the in-graph dense batches, the
validation ndcg against the harness, save / load, determinism, the scoring history, the DAE."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import research  # noqa: F401
from research.data.interactions import build_dataset
from research.data.splits import random_split
from research.eval.harness import evaluate

pytestmark = pytest.mark.keras

SMALL = dict(hidden=[16], latent=8, epochs=4, batch_size=8, learning_rate=3e-3, patience=10)


def _data(seed=0, n_users=40, n_items=50, per_user=14, n_catalogue=55):
    """Clustered tastes (so there is something to learn), ratings 1-10 with ~10% unrated rows,
    external ids that are not 0..n-1, and catalogue anime nobody watched."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = u % 3
        pool = np.arange(n_items)[np.arange(n_items) % 3 == group]
        pick = np.unique(np.concatenate([rng.choice(pool, per_user - 4, replace=False),
                                         rng.choice(n_items, 4, replace=False)]))
        for i in pick:
            rows.append((u * 3 + 11, i * 7 + 1000, float(rng.integers(1, 11))))
    df = pd.DataFrame(rows, columns=["user", "item", "rating"])
    df.loc[rng.random(len(df)) < 0.1, "rating"] = np.nan
    names = pd.DataFrame({"name": [f"Anime {j}" for j in range(n_catalogue)]},
                         index=np.arange(n_catalogue) * 7 + 1000)
    ds = build_dataset(df, item_table=names)
    return ds, random_split(ds.interactions, 0.2, 0.15, seed=0)


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def fitted(data):
    from research.models.keras.multvae import MultVAE

    _, split = data
    return MultVAE(**SMALL, val_users=10_000, seed=5).fit(split.train, split.val)


class _TrainHistory:
    """The fitted model scored from the training history only (what the validation ndcg sees)."""

    ranks = True

    def __init__(self, model):
        self.model = model

    def score(self, users):
        return self.model.scores_from_history(users, "train")


# ---- the loss terms ---------------------------------------------------------------------------
def test_loss_terms_match_numpy_on_two_users_four_anime():
    import tensorflow as tf

    from research.models.keras.multvae import MultVAE, gaussian_kl, multinomial_nll

    logits = np.array([[1.0, -0.5, 2.0, 0.0], [0.3, 0.3, -1.0, 1.5]], np.float32)
    x = np.array([[1, 0, 1, 0], [0, 1, 1, 1]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(multinomial_nll(tf.constant(logits), tf.constant(x)).numpy(),
                               -(x * logp).sum(1), rtol=1e-6)
    mu = np.array([[0.5, -1.0], [0.0, 2.0]], np.float32)
    logvar = np.array([[0.0, -0.7], [0.4, 0.1]], np.float32)
    kl = 0.5 * (-logvar + np.exp(logvar) + mu ** 2 - 1).sum(1)
    np.testing.assert_allclose(gaussian_kl(tf.constant(mu), tf.constant(logvar)).numpy(), kl, rtol=1e-6)
    assert kl[0] == pytest.approx(0.5 * (0.25 + (0.7 + np.exp(-0.7) + 1 - 1)), rel=1e-6)

    # the model's own (nll, kl) on a 2-user x 4-anime data set, against a numpy forward pass
    df = pd.DataFrame({"user": [1, 1, 2, 2, 2], "item": [10, 30, 20, 30, 40], "rating": [8, 6, np.nan, 9, 7]})
    ds = build_dataset(df)
    inter = ds.interactions
    m = MultVAE(hidden=[3], latent=2, epochs=1, batch_size=2, seed=1).fit(inter)
    km = m.model
    w = {f"{name}/{part}": getattr(layer, part).numpy() for name, layer in
         [("encoder_0", km.encoder[0]), ("mu_logvar", km.bottleneck), ("decoder_0", km.decoder[0]),
          ("logits", km.logits_layer)] for part in ("kernel", "bias")}
    xs = inter.to_csr("ones").toarray()
    h = np.tanh(xs / np.linalg.norm(xs, axis=1, keepdims=True) @ w["encoder_0/kernel"] + w["encoder_0/bias"])
    out = h @ w["mu_logvar/kernel"] + w["mu_logvar/bias"]
    mu, logvar = out[:, :2], out[:, 2:]
    d = np.tanh(mu @ w["decoder_0/kernel"] + w["decoder_0/bias"])
    lg = d @ w["logits/kernel"] + w["logits/bias"]
    lp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    nll, klv = m.model.losses_of(tf.constant([0, 1], tf.int32), 0, training=False)
    assert float(nll) == pytest.approx(float(-(xs * lp).sum(1).mean()), rel=1e-5)
    assert float(klv) == pytest.approx(float((0.5 * (-logvar + np.exp(logvar) + mu ** 2 - 1)).sum(1).mean()),
                                       rel=1e-5)
    np.testing.assert_allclose(m.score([0, 1]), lg, rtol=1e-5, atol=1e-6)  # every anime is trained here


def test_beta_schedule_and_its_log(data):
    from research.models.keras.multvae import MultVAE, beta_schedule

    got = [float(beta_schedule(t, 0.2, 100)) for t in (0, 25, 50, 100, 150, 10_000)]
    np.testing.assert_allclose(got, [0.0, 0.05, 0.1, 0.2, 0.2, 0.2], rtol=1e-6)
    assert float(beta_schedule(7, 0.3, 0)) == pytest.approx(0.3)  # no ramp: the cap at once

    _, split = data
    m = MultVAE(**{**SMALL, "epochs": 5}, anneal_epochs=2.0, beta_cap=0.4, early_stopping=False, seed=1)
    m.fit(split.train, split.val)
    spe = m.fit_state["steps_per_epoch"]
    assert spe == int(np.ceil(len(np.unique(split.train.user)) / SMALL["batch_size"]))
    a = m.fit_state["anneal_steps_used"]
    assert a == 2 * spe
    # the logged β is the one of the epoch's last step (step index e * spe - 1, 0-based)
    expect = [0.4 * min(1.0, (e * spe - 1) / a) for e in range(1, 6)]
    np.testing.assert_allclose(m.history["beta"], expect, rtol=1e-5)
    assert len(m.history["kl"]) == len(m.history["nll"]) == 5 and all(k > 0 for k in m.history["kl"])
    assert MultVAE(anneal_steps=37).fit(split.train, epochs=1).fit_state["anneal_steps_used"] == 37


# ---- the input ----------------------------------------------------------------------------------
def test_dense_batch_equals_the_csr_rows(data, fitted):
    from research.models.keras.multvae import MultVAE

    _, split = data
    users = np.arange(split.train.n_users)
    np.testing.assert_array_equal(fitted.dense_history(users, "train"), split.train.to_csr("ones").toarray())
    # the scoring history: train + validation, restricted to the modelled (trained) anime
    full = split.train.concat(split.val).to_csr("ones").toarray()
    full[:, ~fitted.fit_state["trained_items"]] = 0
    np.testing.assert_array_equal(fitted.dense_history(users, "score"), full)
    # rating weighting: rating / mean training rating, unrated rows 1
    m = MultVAE(**{**SMALL, "epochs": 1}, weighting="rating", seed=1).fit(split.train)
    t = split.train
    mean = float(np.nanmean(t.rating))
    want = np.zeros((t.n_users, t.n_items), np.float32)
    want[t.user, t.item] = np.where(np.isnan(t.rating), 1.0, t.rating / mean)
    np.testing.assert_allclose(m.dense_history(users, "train"), want, rtol=1e-6)
    # the whole catalogue: the same bag, and an output for every anime
    a = MultVAE(**{**SMALL, "epochs": 1}, catalogue="all", seed=1).fit(split.train)
    assert a.model.n_out == t.n_items and fitted.model.n_out == int(fitted.fit_state["trained_items"].sum())
    np.testing.assert_array_equal(a.dense_history(users, "train"), t.to_csr("ones").toarray())


# ---- validation and scoring -----------------------------------------------------------------
def test_validation_ndcg_equals_the_harness_on_val(data, fitted):
    _, split = data
    h = fitted.history["val_ndcg_at_10"]
    assert fitted.best_epoch >= 1 and len(h) == fitted.fit_epochs
    harness = evaluate(_TrainHistory(fitted), split, part="val").summary["ndcg@10"]
    # the kept weights are the best epoch's: its in-graph number is the harness's
    assert h[fitted.best_epoch - 1] == pytest.approx(harness, abs=1e-6)
    assert max(h) == pytest.approx(harness, abs=1e-6)
    # the same weights scored *with* the validation anime in the input would count them as
    # recommendable for free: the harness would then not exclude them, a different number
    naive = evaluate(fitted, split, part="val").summary["ndcg@10"]
    assert naive != pytest.approx(harness, abs=1e-6)


def test_without_fold_in_the_harness_on_val_is_the_early_stopping_number(data):
    from research.models.keras.multvae import MultVAE

    _, split = data
    m = MultVAE(**{**SMALL, "epochs": 3}, fold_in=False, val_users=10_000, seed=4).fit(split.train, split.val)
    users = np.arange(split.train.n_users)
    np.testing.assert_array_equal(m.score(users), m.scores_from_history(users, "train"))
    assert evaluate(m, split, part="val").summary["ndcg@10"] == pytest.approx(
        m.history["val_ndcg_at_10"][m.best_epoch - 1], abs=1e-6)


def test_scores_use_train_plus_validation_history(data, fitted):
    from research.models.keras.multvae import MultVAE

    _, split = data
    users = np.unique(split.val.user)
    s = fitted.score(users)
    np.testing.assert_array_equal(s, fitted.scores_from_history(users, "score"))
    assert not np.allclose(s, fitted.scores_from_history(users, "train"))
    assert s.shape == (len(users), split.train.n_items) and np.isfinite(s).all()
    untrained = ~fitted.fit_state["trained_items"]
    assert untrained.any() and (s[:, untrained] < s[:, ~untrained].min(axis=1, keepdims=True)).all()
    # fitted without a validation part: train only
    m = MultVAE(**{**SMALL, "epochs": 1}, seed=1).fit(split.train)
    np.testing.assert_array_equal(m.score(users), m.scores_from_history(users, "train"))
    iv = fitted.item_vectors()
    assert iv.shape == (split.train.n_items, SMALL["hidden"][-1]) and (iv[untrained] == 0).all()
    assert fitted.user_vectors().shape == (split.train.n_users, SMALL["latent"])
    assert evaluate(fitted, split).summary["ndcg@10"] > 0.0


def test_save_load_round_trip(data, fitted, tmp_path):
    from research.models.keras.common import KerasRecommender

    ds, split = data
    fitted.save(tmp_path / "m")
    back = KerasRecommender.load(tmp_path / "m", ds.meta)
    users = np.arange(split.train.n_users)
    np.testing.assert_array_equal(back.score(users), fitted.score(users))
    np.testing.assert_array_equal(back.scores_from_history(users, "train"), fitted.scores_from_history(users, "train"))
    np.testing.assert_array_equal(back.user_vectors(), fitted.user_vectors())
    np.testing.assert_array_equal(back.item_vectors(), fitted.item_vectors())
    assert back.get_config() == fitted.get_config() and back.history == fitted.history


def test_same_seed_same_scores_other_seed_not(data, fitted):
    from research.models.keras.multvae import MultVAE

    _, split = data
    users = np.arange(split.train.n_users)
    again = MultVAE(**SMALL, val_users=10_000, seed=5).fit(split.train, split.val)
    np.testing.assert_allclose(again.score(users), fitted.score(users), rtol=1e-6, atol=1e-6)
    assert again.history == fitted.history
    other = MultVAE(**SMALL, val_users=10_000, seed=6).fit(split.train, split.val)
    assert not np.allclose(other.score(users), fitted.score(users), atol=1e-3)


def test_dae_trains(data):
    from research.models.keras.multvae import MultVAE

    _, split = data
    m = MultVAE(**{**SMALL, "epochs": 8}, variant="dae", early_stopping=False, seed=2).fit(split.train, split.val)
    assert m.effective_weight_decay == pytest.approx(0.01)
    assert all(k == 0 for k in m.history["kl"]) and all(b == 0 for b in m.history["beta"])
    assert m.history["nll"][-1] < m.history["nll"][0]
    # the loss carries the weight decay on top of the likelihood
    assert all(loss > nll for loss, nll in zip(m.history["loss"], m.history["nll"]))
    names = [w.name for w in m.model.weights]
    assert any("bottleneck" in n for n in names) and not any("mu_logvar" in n for n in names)
    res = evaluate(_TrainHistory(m), split, part="val").summary["ndcg@10"]
    assert res == pytest.approx(m.history["val_ndcg_at_10"][-1], abs=1e-6)
    assert np.isfinite(m.score(np.arange(5))).all()


@pytest.mark.parametrize("weighting", ["binary", "rating"])
def test_fold_in_reproduces_the_training_history_scores(data, weighting):
    """score_history of training users' own training rows = the logits fed their training bag;
    a new user's history (no model index) gives finite scores and never its own anime back."""
    from research.models.base import History
    from research.models.keras.multvae import MultVAE

    _, split = data
    m = MultVAE(**SMALL, weighting=weighting, seed=3).fit(split.train, split.val)
    users = np.arange(12)
    h = History.from_interactions(split.train, users)
    np.testing.assert_allclose(m.score_history(h), m.scores_from_history(users, "train"), rtol=1e-5, atol=1e-5)
    new = History.from_lists([np.array([0, 3, 6])], [np.array([9.0, np.nan, 4.0])], n_items=split.train.n_items)
    items, _ = m.recommend_history(new, k=5)
    assert np.isfinite(m.score_history(new)).all() and not np.isin(items[0], [0, 3, 6]).any()


def test_linear_skip_has_zero_diagonal_and_trains(data, tmp_path):
    """linear = true: logits gain x B with diag(B) = 0 (an anime never predicts itself), B is
    penalised by linear_l2, and the model saves and loads with it."""
    import tensorflow as tf

    from research.models.keras.common import KerasRecommender
    from research.models.keras.multvae import MultVAE

    ds, split = data
    m = MultVAE(**SMALL, linear=True, linear_l2=1e-3, seed=4).fit(split.train, split.val)
    mm = m.model
    kernel = mm.linear_kernel.numpy()
    assert kernel.shape == (mm.n_out, mm.n_out) and np.abs(kernel).sum() > 0  # it trained
    x = tf.eye(mm.n_out)  # one anime each: x B picks B's rows with the diagonal zeroed
    np.testing.assert_allclose(mm.skip_logits(x).numpy(), kernel - np.diag(np.diag(kernel)), atol=1e-7)
    assert len(mm.losses) == 1  # the L2 term of the skip
    m.save(tmp_path / "m")
    back = KerasRecommender.load(tmp_path / "m", ds.meta)
    users = np.arange(split.train.n_users)
    np.testing.assert_array_equal(back.score(users), m.score(users))


@pytest.mark.parametrize("weighting", ["binary", "rating"])
def test_wide_ease_part_is_the_ease_solution_folds_in_and_reloads(data, weighting, tmp_path):
    """wide = "ease": a frozen kernel equal to EASE's B (fitted on the training rows) adds
    scale · x B to the logits; fold-in of the training rows gives the training-history scores, and
    the model reloads with the same scores (the kernel is a weight, not saved twice)."""
    from research.models.base import History
    from research.models.ease import EASE
    from research.models.keras.common import KerasRecommender
    from research.models.keras.multvae import MultVAE

    ds, split = data
    m = MultVAE(**SMALL, wide="ease", wide_lam=5.0, wide_weighting=weighting, wide_scale=3.0,
                seed=4).fit(split.train, split.val)
    mm = m.model
    ease = EASE(lam=5.0, weighting=weighting).fit(split.train)
    np.testing.assert_array_equal(mm.wide_kernel.numpy(), ease.B)  # frozen: unchanged by training
    assert not mm.wide_kernel.trainable and mm.wide_log_scale.trainable
    users = np.arange(12)
    # the wide logits of the training rows are scale x EASE's own scores
    wide = mm.wide_logits(mm.wide_rows(tf_constant(users), "train")).numpy()
    scale = float(np.exp(mm.wide_log_scale.numpy()))
    np.testing.assert_allclose(wide, scale * ease.score(users)[:, ease.active], rtol=1e-4, atol=1e-4)
    h = History.from_interactions(split.train, users)
    np.testing.assert_allclose(m.score_history(h), m.scores_from_history(users, "train"), rtol=1e-5, atol=1e-5)
    # the kernel lives in the weights only: no fit-state array is an (n_out x n_out) matrix
    assert all(v.size < mm.n_out ** 2 for v in m.fit_state.values() if isinstance(v, np.ndarray))
    m.save(tmp_path / "m")
    back = KerasRecommender.load(tmp_path / "m", ds.meta)
    all_users = np.arange(split.train.n_users)
    np.testing.assert_array_equal(back.score(all_users), m.score(all_users))
    trainable = MultVAE(**SMALL, wide="ease", wide_lam=5.0, wide_trainable=True, seed=4).fit(split.train, split.val)
    assert not np.array_equal(trainable.model.wide_kernel.numpy(), EASE(lam=5.0, weighting="binary").fit(split.train).B)


def test_composite_prior_against_numpy():
    """RecVAE's prior: log(3/20 N(z; 0, 1) + 3/4 N(z; μ_old, σ²_old) + 1/10 N(z; 0, e^10)), per element."""
    import tensorflow as tf

    from research.models.keras.multvae import composite_log_prior, gaussian_log_pdf

    z = np.array([[0.3, -1.2], [2.0, 0.0]], np.float32)
    mu = np.array([[0.1, -1.0], [0.5, 0.2]], np.float32)
    lv = np.array([[-0.5, 0.3], [0.0, -2.0]], np.float32)

    def pdf(x, m, v):
        return np.exp(-0.5 * (x - m) ** 2 / v) / np.sqrt(2 * np.pi * v)

    want = np.log(3 / 20 * pdf(z, 0, 1) + 3 / 4 * pdf(z, mu, np.exp(lv)) + 1 / 10 * pdf(z, 0, np.exp(10)))
    got = composite_log_prior(tf.constant(z), tf.constant(mu), tf.constant(lv)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(gaussian_log_pdf(tf.constant(z), tf.constant(mu), tf.constant(lv)).numpy(),
                               np.log(pdf(z, mu, np.exp(lv))), rtol=1e-5)


def test_recvae_options_train_refresh_the_old_encoder_and_reload(data, tmp_path):
    """encoder = "dense", decoder = "linear", prior = "composite", kl_gamma: RecVAE's pieces. The
    frozen copy is the encoder after a refresh; the KL weight follows γ · |x_u|; save / load and the
    seed give the same scores."""
    import tensorflow as tf

    from research.models.keras.common import KerasRecommender
    from research.models.keras.multvae import MultVAE

    ds, split = data
    kw = dict(SMALL, hidden=[16, 16, 16], encoder="dense", decoder="linear", prior="composite",
              kl_gamma=0.01, seed=7)
    m = MultVAE(**kw).fit(split.train, split.val)
    mm = m.model
    assert mm.decoder == [] and len(mm.norms) == 3
    assert not any(w.trainable for layer in mm.old_encoder[0] for w in [layer])
    assert all(np.isfinite(v) for v in m.history["loss"]) and m.history["nll"][-1] < m.history["nll"][0]
    users = tf.constant(np.arange(6, dtype=np.int32))
    x = mm.dense_batch(users, "train")
    mu, _ = mm.encode(x)
    old_mu, _ = mm.encode(x, old=True)
    assert not np.allclose(mu.numpy(), old_mu.numpy())  # trained since the last epoch's copy
    mm.refresh_old_encoder()
    np.testing.assert_allclose(mm.encode(x, old=True)[0].numpy(), mu.numpy(), rtol=1e-6)
    # the reported β is γ times the mean bag size
    sizes = np.diff(m.fit_state["train_indptr"])
    assert 0 < m.history["beta"][-1] <= 0.01 * sizes.max()
    m.save(tmp_path / "m")
    back = KerasRecommender.load(tmp_path / "m", ds.meta)
    every = np.arange(split.train.n_users)
    np.testing.assert_array_equal(back.score(every), m.score(every))
    np.testing.assert_allclose(MultVAE(**kw).fit(split.train, split.val).score(every), m.score(every),
                               rtol=1e-6, atol=1e-6)


def tf_constant(users):
    import tensorflow as tf

    return tf.constant(np.asarray(users, np.int32))


def test_bad_arguments():
    from research.errors import ConfigError
    from research.models.keras.multvae import MultVAE

    for bad in ({"variant": "gan"}, {"weighting": "log"}, {"dropout": 1.0}, {"hidden": []}, {"latent": 0},
                {"catalogue": "some"}, {"beta_cap": -1}, {"linear_l2": -1.0}, {"wide": "slim"},
                {"wide_weighting": "log"}, {"wide_lam": 0.0}, {"wide_scale": 0.0}, {"encoder": "cnn"},
                {"decoder": "deep"}, {"prior": "vamp"}, {"encoder": "dense", "hidden": [8, 16]},
                {"prior": "composite", "variant": "dae"}, {"kl_gamma": 0.1, "variant": "dae"},
                {"kl_gamma": -1.0}):
        with pytest.raises(ConfigError):
            MultVAE(**bad)
    assert MultVAE(hidden=300).hidden == [300]


def test_heldout_users_validate_folded_in(data):
    """On held-out users the validation users have no training row: ``fit_split`` gives their
    histories apart (``val_history``), so the early-stopping ndcg is the harness's ``part="val"`` of
    them folded in; given their rows as plain ``val`` it scored empty bags (a different number)."""
    from research.data.splits import heldout_users
    from research.models.keras.multvae import MultVAE

    ds, _ = data
    split = heldout_users(ds.interactions, 0.2, 0.25, 0.6, seed=1)
    assert len(split.val_history) and not set(split.val.user) & set(split.train.user)
    m = MultVAE(**{**SMALL, "epochs": 3}, val_users=10_000, seed=2).fit_split(split)
    h = m.history["val_ndcg_at_10"]
    harness = evaluate(m, split, part="val").summary["ndcg@10"]
    assert h[m.best_epoch - 1] == pytest.approx(harness, abs=1e-6)
    # the validation users were never trained on: the same fit without their histories trains the same
    plain = MultVAE(**{**SMALL, "epochs": 3}, val_users=10_000, seed=2, early_stopping=False).fit(
        split.train, split.fit_val())
    again = MultVAE(**{**SMALL, "epochs": 3}, val_users=10_000, seed=2, early_stopping=False).fit_split(split)
    for wa, wb in zip(plain.model.trainable_weights, again.model.trainable_weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert plain.history["val_ndcg_at_10"] != pytest.approx(again.history["val_ndcg_at_10"], abs=1e-6)
