"""two_tower's grouped training (``user_folds``): each (user, fold) group's loss against the per-pair
full softmax of the same user vector, the folds partitioning every history anew each epoch, and a
fit through the harness (contract, validation ndcg, determinism) on the tiny hand-made set."""
import numpy as np
import pytest

import research  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tests.test_keras_models import TT, _check_contract, split  # noqa: F401  (split: a fixture)

pytestmark = pytest.mark.keras

FOLDS = dict(TT, user_folds=3, batch_size=16)


@pytest.fixture(scope="module")
def grouped(split):  # noqa: F811
    from research.models.keras.two_tower import TwoTower

    return TwoTower(**FOLDS).fit(split.train, split.val)


def _targets(model, users, folds):
    """{group row: (the user's anime, is-target mask)} from the model's fold hash."""
    import tensorflow as tf

    m = model.model
    rows = tf.gather(m.hist, tf.constant(users))
    fold, rowids = m.fold_of(tf.constant(users), rows)
    fold, rowids, flat = fold.numpy(), rowids.numpy(), rows.flat_values.numpy()
    return {g: (flat[rowids == g], fold[rowids == g] == folds[g]) for g in range(len(users))}


def test_folds_partition_each_history_and_change_by_epoch(grouped, split):  # noqa: F811
    m = grouped.model
    users = np.unique(split.train.user).astype(np.int32)
    k = FOLDS["user_folds"]
    g_users, g_folds = np.repeat(users, k), np.tile(np.arange(k, dtype=np.int32), len(users))
    before = _targets(grouped, g_users, g_folds)
    for j, u in enumerate(users):
        parts = [before[j * k + f] for f in range(k)]
        hist = parts[0][0]
        assert np.array_equal(np.sort(hist), np.sort(split.train.to_csr("ones")[u].indices))
        hits = np.sum([mask for _, mask in parts], axis=0)
        assert (hits == 1).all()  # every anime is the target of exactly one fold
    m.optimizer.iterations.assign_add(m.steps_per_epoch)  # the next epoch
    after = _targets(grouped, g_users, g_folds)
    m.optimizer.iterations.assign_sub(m.steps_per_epoch)
    moved = sum(not np.array_equal(before[g][1], after[g][1]) for g in before)
    assert moved > len(before) // 2  # a new partition, not the same one


@pytest.mark.parametrize("mask", [True, False])
def test_group_loss_is_the_per_pair_softmax_of_its_targets(grouped, split, mask):  # noqa: F811
    """The grouped loss equals full_softmax_loss (the per-pair reference) summed over the group's
    targets, each pair given the group's user vector: the mean history embedding of the user's
    anime outside the fold, through the tower's head."""
    import tensorflow as tf

    from research.models.keras import full_softmax

    m = grouped.model
    m.mask_history = mask
    try:
        users = np.array([0, 0, 3, 7, 7, 7], np.int32)
        folds = np.array([0, 2, 1, 0, 1, 2], np.int32)
        got = float(m.fold_loss(tf.constant(users), tf.constant(folds)))
        table = m.hist_emb.embeddings.numpy()
        c = m.item_tower(m.cand_ids)
        expected = 0.0
        for g, (anime, is_t) in _targets(grouped, users, folds).items():
            if not is_t.any():
                continue
            mean = table[anime[~is_t]].mean(axis=0) if (~is_t).any() else np.zeros(table.shape[1], np.float32)
            idp = m.user_id(tf.constant([users[g]]))
            q = m._user_head(idp, tf.constant(mean[None], tf.float32))
            n_t = int(is_t.sum())
            cols = m.cand_col.numpy()
            hist = tf.RaggedTensor.from_row_lengths(np.tile(cols[anime], n_t), [len(anime)] * n_t) if mask else None
            expected += float(full_softmax.full_softmax_loss(
                tf.repeat(q, n_t, axis=0), c, tf.constant(cols[anime[is_t]]), m.temperature, hist))
        assert got == pytest.approx(expected, rel=1e-5)
    finally:
        m.mask_history = True


def test_grouped_fit_contract_validation_and_determinism(grouped, split):  # noqa: F811
    from research.eval.harness import evaluate
    from research.models.keras.two_tower import TwoTower

    _check_contract(grouped, split, rating_model=False)
    best = grouped.history["val_ndcg_at_10"][grouped.best_epoch - 1]
    assert best == pytest.approx(evaluate(grouped, split, k=10, part="val").summary["ndcg@10"], abs=1e-5)
    again = TwoTower(**FOLDS).fit(split.train, split.val)
    for a, b in zip(grouped.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    per_pair = TwoTower(**dict(FOLDS, user_folds=0)).fit(split.train, split.val)
    assert not np.allclose(per_pair.item_vectors(), grouped.item_vectors())  # a different objective


@pytest.mark.parametrize("bad", [dict(user_folds=1), dict(user_folds=-2), dict(user_folds=3, loss="in_batch"),
                                 dict(user_folds=3, rating_weight=0.5)])
def test_grouped_options_are_checked(bad):
    from research.errors import ConfigError
    from research.models.keras.two_tower import TwoTower

    with pytest.raises(ConfigError, match="user_folds"):
        TwoTower(**dict(TT, **bad))


def test_grouped_training_is_refused_under_a_strategy():
    from research import distributed
    from research.errors import ConfigError
    from research.models.keras.two_tower import TwoTower

    distributed.check_supported(TwoTower(**TT))  # per-pair: checked
    with pytest.raises(ConfigError, match="user_folds"):
        distributed.check_supported(TwoTower(**FOLDS))
