"""``two_tower``'s fast full softmax (``fast_grad = True``, the default): its loss and gradients
against TF's autodiff of the reference loss (``fast_grad = False``) and against numpy, on a random
batch of a small random data set; with and without the history mask, weights, the 1 / T bound
(temperature 0.2) and the row-maximum (temperature 0.02), the precomputed mask table and the
per-batch scattered mask; the hand-written gradient of the history sums; and a short fit on both
paths. A few seconds each."""
import numpy as np
import pandas as pd
import pytest
from test_two_tower import _table  # the same tiny catalogue

import research  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from research.data.interactions import build_dataset

pytestmark = pytest.mark.keras

SMALL = dict(dim=6, id_dim=4, batch_size=16, learning_rate=1e-2, synopsis_terms=2, seed=1,
             feature_dims={"genres": 2, "studios": 2, "type": 2, "source": 2, "synopsis": 2})


def _data(seed=0, n_users=30, n_items=40, per_user=(2, 15)):
    """Random histories of 2-15 anime; anime 100 + n_items is in the catalogue only (no row)."""
    r = np.random.default_rng(seed)
    rows = [(1000 + u, 100 + int(i), float(r.integers(1, 11))) for u in range(n_users)
            for i in r.choice(n_items, int(r.integers(*per_user)), replace=False)]
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    return build_dataset(frame, _table(n_items + 1), name="tiny").interactions


def _built(data, seed=0, **kw):
    """A TwoTower whose Keras model is built (not trained), weights randomised (the id tables
    start at zero, which would hide errors in their gradients)."""
    import tensorflow as tf

    from research.models.keras.two_tower import TwoTower
    from research.seeding import seed_everything

    seed_everything(seed, tensorflow=True)
    m = TwoTower(**{**SMALL, **kw})
    m.meta, m.fit_state = data.meta, m.prepare(data)
    m._compile()
    feats = m.features(data, training=True)
    m.model({k: tf.constant(v[:1]) for k, v in feats.items()})
    for j, v in enumerate(m.model.trainable_variables):
        v.assign(v + tf.random.stateless_normal(v.shape, [7 + seed, j]) * 0.3)
    return m, feats


def _loss_and_grads(model, batch, fast, dense_history=True):
    import tensorflow as tf

    m = model.model
    old = m.fast_grad, m.dense_history_grad
    m.fast_grad, m.dense_history_grad = fast, dense_history
    try:
        with tf.GradientTape() as tape:
            loss = m.compute_loss(batch, training=True)
        grads = tape.gradient(loss, m.trainable_variables)
    finally:
        m.fast_grad, m.dense_history_grad = old
    return float(loss), [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]


def _batch(feats, n=24, seed=3, weight=False):
    import tensorflow as tf

    idx = np.random.default_rng(seed).choice(len(feats["user"]), n, replace=False)
    out = {k: tf.constant(v[idx]) for k, v in feats.items()}
    if weight:
        out["weight"] = tf.constant(np.random.default_rng(seed + 1).uniform(0.1, 2.0, n).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("temperature", [0.2, 0.03])
@pytest.mark.parametrize("weight", [False, True])
def test_fast_loss_and_gradients_match_autodiff(data, mask, temperature, weight):
    model, feats = _built(data, mask_history=mask, temperature=temperature)
    assert (model.model.mask_table is not None) == mask
    batch = _batch(feats, weight=weight)
    ref_loss, ref = _loss_and_grads(model, batch, fast=False)
    loss, got = _loss_and_grads(model, batch, fast=True)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    names = [v.name for v in model.model.trainable_variables]
    for name, a, b in zip(names, got, ref):
        assert (a is None) == (b is None), name
        if a is not None:
            scale = max(np.abs(b).max(), 1e-3)
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale, err_msg=name)
    # the test can fail: the masked and unmasked objectives differ on this batch
    other, _ = _built(data, mask_history=not mask, temperature=temperature)
    assert _loss_and_grads(other, batch, fast=True)[0] != pytest.approx(loss, rel=1e-4)


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("temperature", [0.2, 0.02])
def test_fast_softmax_gradient_matches_float64_numpy(data, mask, temperature):
    """d loss / d (q, c) of the fast softmax against the analytic gradient in float64 numpy. At
    T = 0.02 the reference's masked denominator (the full one minus the history terms) loses
    digits to cancellation; the fast path sums the allowed terms directly, so it is compared with
    numpy here rather than with autodiff."""
    import tensorflow as tf

    model, feats = _built(data, mask_history=mask, temperature=temperature, seed=4)
    m = model.model
    batch = _batch(feats, weight=True)
    users, items, w = (batch[k].numpy() for k in ("user", "item", "weight"))
    q = tf.Variable(m.user_tower(batch["user"], leave_out=batch["item"]))
    c = tf.Variable(m.item_tower(m.cand_ids))
    with tf.GradientTape() as tape:
        loss = m._full_softmax_fast(q, c, batch["user"], batch["item"], batch["weight"])
    dq, dc = (x.numpy() for x in tape.gradient(loss, [q, c]))
    cand = np.flatnonzero(model.fit_state["trained_items"])
    col = {int(a): j for j, a in enumerate(cand)}
    csr = data.to_csr("ones")
    q64, c64 = q.numpy().astype(np.float64), c.numpy().astype(np.float64)
    logits = q64 @ c64.T / temperature
    allowed = np.ones_like(logits, bool)
    if mask:
        for b, u in enumerate(users):
            allowed[b, [col[a] for a in csr[u].indices]] = False
    tgt = np.array([col[int(i)] for i in items])
    allowed[np.arange(len(users)), tgt] = True
    z = np.where(allowed, logits, -np.inf)
    top = z.max(1, keepdims=True)
    p = np.exp(z - top) / np.exp(z - top).sum(1, keepdims=True)
    want_loss = float((w * (np.log(np.exp(z - top).sum(1)) + top[:, 0] - logits[np.arange(len(users)), tgt])).sum())
    g = p.copy()
    g[np.arange(len(users)), tgt] -= 1.0
    g *= w[:, None] / temperature
    assert float(loss) == pytest.approx(want_loss, rel=2e-5)
    np.testing.assert_allclose(dq, g @ c64, rtol=0, atol=1e-4 * np.abs(g @ c64).max())
    np.testing.assert_allclose(dc, g.T @ q64, rtol=0, atol=1e-4 * np.abs(g.T @ q64).max())


def test_fast_loss_matches_numpy(data):
    """Per-pair values of the fast loss against a direct numpy softmax over the candidates."""
    import tensorflow as tf

    model, feats = _built(data, temperature=0.2)
    m = model.model
    batch = _batch(feats, n=8)
    users, items = batch["user"].numpy(), batch["item"].numpy()
    q = m.user_tower(batch["user"], leave_out=batch["item"]).numpy()
    cand = np.flatnonzero(model.fit_state["trained_items"])
    assert len(cand) == data.meta.n_items - 1  # the catalogue-only anime is not a candidate
    c = m.item_tower(tf.constant(cand.astype(np.int32))).numpy()
    csr = data.to_csr("ones")
    got = []
    for j in range(len(users)):  # one pair at a time: each pair's own loss
        got.append(float(m._full_softmax_fast(tf.constant(q[j:j + 1]), tf.constant(c), batch["user"][j:j + 1],
                                              batch["item"][j:j + 1])))
    for j, (u, i) in enumerate(zip(users, items)):
        logits = (q[j] @ c.T).astype(np.float64) / 0.2
        hist = set(csr[u].indices.tolist())
        keep = np.array([a not in hist or a == i for a in cand])
        want = np.log(np.exp(logits[keep]).sum()) - logits[list(cand).index(i)]
        assert got[j] == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_scattered_mask_equals_mask_table(data, monkeypatch):
    from research.models.keras import two_tower

    table, feats = _built(data)
    monkeypatch.setattr(two_tower, "_MASK_TABLE_BYTES", 0)
    scattered, _ = _built(data)
    assert table.model.mask_table is not None and scattered.model.mask_table is None
    scattered.model.set_weights(table.model.get_weights())
    batch = _batch(feats)
    np.testing.assert_array_equal(table.model._history_mask(batch["user"]).numpy(),
                                  scattered.model._history_mask(batch["user"]).numpy())
    la, ga = _loss_and_grads(table, batch, fast=True)
    lb, gb = _loss_and_grads(scattered, batch, fast=True)
    assert la == lb
    for a, b in zip(ga, gb):
        np.testing.assert_array_equal(a, b)


def test_sparse_history_gradient_path_matches(data):
    """The fast softmax with the autodiff (sparse) history gradient, as ``lazy_adam`` gets it."""
    model, feats = _built(data)
    batch = _batch(feats)
    ref_loss, ref = _loss_and_grads(model, batch, fast=False)
    loss, got = _loss_and_grads(model, batch, fast=True, dense_history=False)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(np.abs(b).max(), 1e-3))


def test_lazy_adam_keeps_the_sparse_history_gradient(data):
    assert _built(data)[0].model.dense_history_grad
    assert not _built(data, optimizer="lazy_adam")[0].model.dense_history_grad


def test_fit_same_losses_on_both_paths(data):
    """Three epochs: the epoch losses of the fast and the autodiff path agree to round-off."""
    from research.models.keras.two_tower import TwoTower

    fits = [TwoTower(**{**SMALL, "epochs": 3}, fast_grad=fast).fit(data) for fast in (True, False)]
    np.testing.assert_allclose(fits[0].history["loss"], fits[1].history["loss"], rtol=1e-4)
    np.testing.assert_allclose(fits[0].item_vectors(), fits[1].item_vectors(), atol=1e-3)
