"""multvae's fast path (``sparse_input``, ``fused_adam``; research/models/keras/multvae_sparse.py)
against the dense path it replaces: the same weights and the same (users, step) give the same nll,
KL and gradients of every weight (dropout and ε on, so the sparse path's dropout mask must be the
dense one's), the same inference logits, and Adam's fused update gives Keras' Adam's variables;
a whole fit gives the same losses and scores to float32 round-off."""
from __future__ import annotations

import numpy as np
import pytest

import research  # noqa: F401
from research.data.interactions import build_dataset

pytestmark = pytest.mark.keras

#: float32 tolerances: relative to each array's scale (max |value|)
RTOL = 2e-5

CASES = {
    "vae": {},
    "vae_rating_all_catalogue": {"weighting": "rating", "catalogue": "all"},
    "dae": {"variant": "dae", "hidden": [12, 10]},
    "linear_skip": {"linear": True, "linear_l2": 1e-3},
    "recvae": {"encoder": "dense", "hidden": [12, 12], "decoder": "linear", "prior": "composite",
               "kl_gamma": 0.01},
    "wide": {"wide": "ease", "wide_trainable": True, "wide_lam": 5.0},
}


def _data(seed=0, n_users=30, n_items=40):
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        k = int(rng.integers(1, 15))  # long-tailed-ish bag sizes, one user with a single anime
        for i in rng.choice(n_items, k, replace=False):
            rows.append((u, int(i), float(rng.integers(1, 11))))
    df = pd.DataFrame(rows, columns=["user", "item", "rating"])
    df.loc[rng.random(len(df)) < 0.1, "rating"] = np.nan
    return build_dataset(df).interactions


def _pair(train, seed, **kw):
    """(dense model, sparse model) of the same settings with the same weights, built, not fitted."""
    from research.models.keras.common import tf
    from research.models.keras.multvae import MultVAE

    out = []
    kw = {"hidden": [16], **kw}
    for sparse in (False, True):
        m = MultVAE(latent=6, dropout=0.4, batch_size=8, anneal_steps=3, seed=seed, sparse_input=sparse, **kw)
        m.meta = train.meta
        m.fit_state = m.prepare(train)
        m._compile()
        m.model({"user": tf.constant(np.arange(2, dtype=np.int32))})  # builds the variables
        out.append(m)
    dense, sparse = out
    rng = np.random.default_rng(seed)
    assert len(dense.model.weights) == len(sparse.model.weights)
    for a, b in zip(dense.model.weights, sparse.model.weights):
        assert a.name.split("/", 1)[-1] == b.name.split("/", 1)[-1] and a.shape == b.shape
        value = rng.normal(0, 0.3, a.shape).astype(np.float32)  # not the init: every weight matters
        a.assign(value)
        b.assign(value)
    return dense.model, sparse.model


def _loss_and_grads(model, users, step):
    from research.models.keras.common import tf

    users = tf.constant(users, tf.int32)
    step = tf.constant(step, tf.int64)
    with tf.GradientTape() as tape:
        nll, kl, kl_part, _, reg = model.objective_terms(users, step)  # the train step's own terms
        total = nll + kl_part + reg
    grads = model._dense_grads(tape.gradient(total, model.trainable_variables))
    return [float(nll), float(kl), float(total)], [None if g is None else tf.convert_to_tensor(g).numpy()
                                                    for g in grads]


def _close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(a))), 1e-6)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= RTOL * scale, f"{what}: max |dense - sparse| {err:.3g} > {RTOL} x scale {scale:.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_losses_gradients_and_logits_match_the_dense_path(case):
    train = _data(seed=1)
    dense, sparse = _pair(train, seed=3, **CASES[case])
    users = np.array([0, 4, 5, 7, 9, 12, 20, 29], np.int32)
    for step in (0, 2, 7):  # β ramps over 3 steps; every step has its own dropout mask and ε
        la, ga = _loss_and_grads(dense, users, step)
        lb, gb = _loss_and_grads(sparse, users, step)
        _close(la, lb, f"{case} step {step} (nll, kl, total)")
        for v, a, b in zip(dense.trainable_variables, ga, gb):
            assert (a is None) == (b is None), v.name
            if a is not None:
                assert np.any(a != 0), f"{case}: {v.name} got no gradient"
                _close(a, b, f"{case} step {step} gradient of {v.name}")
    from research.models.keras.common import tf

    u = tf.constant(np.arange(train.n_users, dtype=np.int32))
    _close(dense.logits_of(u, "score").numpy(), sparse.logits_of(u, "score").numpy(), f"{case} logits")
    _close(dense.encode_users(u)[0].numpy(), sparse.encode_users(u)[0].numpy(), f"{case} mu")


def test_dropout_is_on_and_the_mask_is_the_dense_one():
    """The sparse path drops the same entries as the dense one, and another mask (another step)
    moves the gradients far beyond the tolerance, so the comparison above sees the mask."""
    from research.models.keras.common import tf

    train = _data(seed=2)
    dense, sparse = _pair(train, seed=4)
    users = np.arange(8, dtype=np.int32)
    g1 = _loss_and_grads(sparse, users, 1)[1][0]
    g2 = _loss_and_grads(sparse, users, 2)[1][0]  # encoder_0's kernel: where the mask enters
    assert np.max(np.abs(g1 - g2)) > 100 * RTOL * np.max(np.abs(g1))
    users = tf.constant(users)
    step = tf.constant(1, tf.int64)
    bag = sparse.sparse_batch(users)
    keep = sparse._keep(bag, sparse._keys(step)[0]).numpy()
    dense_keep = dense._keep(dense.dense_batch(users), dense._keys(step)[0]).numpy()
    idx = bag.indices.numpy()
    assert np.array_equal(keep, dense_keep[idx[:, 0], idx[:, 1]]) and 0 < keep.mean() < 1


def test_fused_adam_is_kerass_adam():
    from research.models.keras.common import tf
    from research.models.keras.multvae_sparse import FusedAdam

    rng = np.random.default_rng(0)
    shapes = [(30, 7), (7,)]
    init = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [[tf.constant(rng.normal(size=s).astype(np.float32)) for s in shapes] for _ in range(4)]
    out = []
    for cls in (tf.keras.optimizers.Adam, FusedAdam):
        vs = [tf.Variable(x) for x in init]
        opt = cls(learning_rate=0.05)
        step = tf.function(lambda g, opt=opt, vs=vs: opt.apply_gradients(zip(g, vs)))
        for g in grads:
            step(g)
        out.append([v.numpy() for v in vs] + [s.numpy() for s in opt.variables[1:]])
        assert int(opt.iterations) == 4
    assert not np.allclose(out[0][0], init[0])
    for a, b in zip(*out):
        _close(a, b, "Adam variables after 4 steps")


def test_fit_with_the_fast_path_matches_the_dense_fit():
    """Two epochs of 4 steps (dropout, ε, β's ramp, Adam): the fast path's losses and scores are
    the dense path's to float32 round-off (fused_adam: Adam's formula in TF's kernel)."""
    from research.models.keras.multvae import MultVAE

    train = _data(seed=5)
    fits = [MultVAE(hidden=[16], latent=6, epochs=2, batch_size=8, seed=11, sparse_input=s, fused_adam=s)
            .fit(train, None, early_stopping=False) for s in (False, True)]
    a, b = fits
    assert a.model.optimizer.__class__.__name__ == "Adam" and b.model.optimizer.__class__.__name__ == "FusedAdam"
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)
    users = np.arange(train.n_users)
    sa, sb = a.score(users), b.score(users)
    np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-4 * np.abs(sa).max())


def test_fused_adam_needs_adam():
    from research.errors import ConfigError
    from research.models.keras.multvae import MultVAE

    with pytest.raises(ConfigError, match="fused_adam"):
        MultVAE(fused_adam=True, optimizer="sgd")


def test_bfloat16_matmuls_round_the_factors_and_keep_float32_around_them():
    """``matmul_dtype = "bfloat16"``: the product equals float32's of the factors rounded to
    bfloat16 (the dense and the sparse path alike), a fit trains to about the float32 fit's losses
    and scores (a different model numerically, not a copy), and an unknown dtype is refused."""
    from research.errors import ConfigError
    from research.models.keras.common import tf
    from research.models.keras.multvae import MultVAE
    from research.models.keras.multvae_sparse import matmul

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)
    rounded = [tf.cast(tf.cast(v, tf.bfloat16), tf.float32).numpy() for v in (a, b)]
    got = matmul(tf.constant(a), tf.constant(b), "bfloat16")
    assert got.dtype == tf.float32 and not np.allclose(got.numpy(), a @ b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), rounded[0] @ rounded[1], rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(matmul(tf.constant(a), tf.constant(b)).numpy(), tf.matmul(a, b).numpy())

    train = _data(seed=5)
    kw = dict(hidden=[16], latent=6, epochs=2, batch_size=8, seed=11)
    f32 = MultVAE(**kw).fit(train, None, early_stopping=False)
    users = np.arange(train.n_users)
    for sparse in (False, True):
        bf = MultVAE(**kw, matmul_dtype="bfloat16", sparse_input=sparse).fit(train, None, early_stopping=False)
        assert all(w.dtype == tf.float32 for w in bf.model.weights)
        np.testing.assert_allclose(bf.history["loss"], f32.history["loss"], rtol=2e-2)
        s, ref = bf.score(users), f32.score(users)
        assert not np.array_equal(s, ref)
        np.testing.assert_allclose(s, ref, rtol=0, atol=5e-2 * np.abs(ref).max())
    with pytest.raises(ConfigError, match="matmul_dtype"):
        MultVAE(matmul_dtype="float16")
