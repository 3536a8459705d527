"""The models with their own multi-worker treatment (research.distributed.MULTI_WORKER): two_tower
with the full softmax (a summed loss, fast and autodiff gradients), multvae (its own train step,
per-step noise and KL annealing) and autorec (its own step, rows / batch rows scaling) fitted by 2
loopback workers end where a 1-worker fit of the same global batch and seed ends; two_tower with
in-batch negatives is refused with a ConfigError saying why.

One 2-worker launch (``distributed.launch`` of the script below, on 127.0.0.1 ports) fits every
configuration in turn and the chief saves each one's epoch logs and weights; one plain process (no
``TF_CONFIG``) fits the same for reference. Together about 2-4 minutes on 2 busy cores.

The configurations are chosen so that a wrong multi-worker step shows: SGD where the step size
matters (Adam divides out a constant factor on the gradient, so a loss weighted twice too little or
too much would hardly move its weights), odd global batches (the two workers' slices differ in
size, so each share weight differs from 1/2), and a last batch of one row in some (one worker's
slice is empty), dropout (every user must get the one-worker step's mask), β annealing and the
composite prior's refresh (the step counter), validation metrics (the logs must be the global
mean, not the sum of the workers' means).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from research import distributed

pytestmark = [pytest.mark.keras]

REPO = Path(__file__).resolve().parent.parent

# Tolerances, 2 workers against 1. The two fits see the same examples in the same steps (each
# worker its slice of every global batch) and differentiate the same objective with the same random
# draws, so they differ by float32 summation order only: the per-example gradients are summed per
# worker, then across workers, instead of in one sum, and every loss share is rounded on its own.
# Measured on these configurations (seed 3): training losses within 2.2e-7 relative, validation
# ndcg / rmse within 3e-8 / 2.4e-7, weights within 7.6e-7 of their array's scale. The tolerances
# sit 40-130x above that and far below what a wrong step moves (checked by breaking each fix in a
# copy of the tree): the share weight missing, or applied to two_tower's summed loss, moves the
# losses by 7.8e-4 (Adam) to 0.55 relative; each worker drawing its own dropout / eps by 2e-3 to
# 1.7e-2; Keras' epoch logs summed over the workers double them (a relative difference of 1).
LOSS_REL = 1e-5  # relative, per epoch, on every logged training value (loss, nll, kl, mse, beta)
METRIC_ABS = 1e-5  # absolute, per epoch, on the validation metric (ndcg@10, rmse)
WEIGHT_ABS = 1e-4  # max |w1 - w2| of every weight array, relative to max(1, the array's max |w1|)

WORKER = r'''
"""Fit each named configuration on a small synthetic data set; the chief saves logs and weights."""
import json, os, sys
from pathlib import Path

import numpy as np
import pandas as pd

import research  # noqa: F401
from research import distributed

distributed.strategy()  # first, before TensorFlow runs anything (None without TF_CONFIG)

from research.data.interactions import build_dataset  # noqa: E402
from research.data.splits import random_split  # noqa: E402
from research.errors import ConfigError  # noqa: E402


def data(seed, n_users=61, n_items=45, per_user=14):
    """Three taste groups (something to learn), ~10% unrated rows, a catalogue with side features."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        pool = np.arange(n_items)[np.arange(n_items) % 3 == u % 3]
        pick = np.unique(np.concatenate([rng.choice(pool, per_user - 4, replace=False),
                                         rng.choice(n_items, 4, replace=False)]))
        rows += [(u + 1, i + 100, float(rng.integers(1, 11))) for i in pick]
    df = pd.DataFrame(rows, columns=["user", "item", "rating"])
    df.loc[rng.random(len(df)) < 0.1, "rating"] = np.nan
    genres = ["Action", "Comedy", "Drama"]
    n = n_items + 3
    table = pd.DataFrame({"name": [f"Anime {i}" for i in range(n)],
                          "genres": [[genres[i % 3], genres[(i + 1) % 3]] for i in range(n)],
                          "type": ["TV", "Movie"] * (n // 2) + ["TV"] * (n % 2),
                          "studios": [[f"Studio {i % 2}"] for i in range(n)], "source": ["Manga"] * n,
                          "episodes": [12.0] * n, "synopsis": [f"robot school story {i % 3}" for i in range(n)]},
                         index=np.arange(100, 100 + n))
    return random_split(build_dataset(df, item_table=table).interactions, 0.2, 0.15, seed=0)


FD = {"genres": 2, "studios": 2, "type": 2, "source": 2, "synopsis": 2}
TT = dict(dim=6, id_dim=4, synopsis_terms=2, feature_dims=FD, epochs=3, patience=10)
VAE = dict(hidden=[16], latent=8, epochs=3, batch_size=10, dropout=0.5, patience=10)
CONFIGS = {
    # the defaults' path (fast gradients, history mask), Adam, rating weights, an l2 penalty; 41 rows
    # a batch: slices of 20 and 21 rows
    "two_tower": ("two_tower", dict(TT, batch_size=41, learning_rate=1e-2, l2=1e-3, rating_weight=0.5)),
    # SGD (the step size shows a wrong weighting); 179 rows a batch: the last batch has 1 row
    "two_tower_sgd": ("two_tower", dict(TT, batch_size=179, learning_rate=1e-2, rating_weight=0.5,
                                        optimizer="sgd")),
    # TF's autodiff of the same loss (fast_grad = false), SGD
    "two_tower_autodiff": ("two_tower", dict(TT, batch_size=41, learning_rate=1e-2, fast_grad=False,
                                             optimizer="sgd")),
    # Mult-VAE, SGD, β annealed over 10 steps, dropout 0.5; 61 users in batches of 10 (last: 1)
    "multvae": ("multvae", dict(VAE, learning_rate=0.3, anneal_steps=10, optimizer="sgd")),
    # RecVAE's pieces: the composite prior (an old encoder refreshed each epoch), kl_gamma, Adam
    "multvae_recvae": ("multvae", dict(VAE, hidden=[16, 16], learning_rate=3e-3, encoder="dense",
                                       decoder="linear", prior="composite", kl_gamma=0.005)),
    # Mult-DAE with weight decay, the linear skip and a trainable EASE part, SGD
    "multvae_dae": ("multvae", dict(VAE, variant="dae", learning_rate=0.3, linear=True, linear_l2=1e-3,
                                    wide="ease", wide_trainable=True, optimizer="sgd")),
    # AutoRec, SGD, dropout 0.3; 45 rated anime in batches of 11 (last: 1)
    "autorec": ("autorec", dict(hidden=12, epochs=3, batch_size=11, learning_rate=0.01, dropout=0.3,
                                l2=30.0, patience=10, optimizer="sgd")),
    # refused: in-batch negatives
    "two_tower_in_batch": ("two_tower", dict(TT, loss="in_batch", batch_size=41)),
}


def main(out, names, seed):
    from research.models import registry

    out = Path(out)
    split = data(seed)
    for name in names:
        kind, kw = CONFIGS[name]
        model = registry.model_class(kind)(seed=seed, **kw)
        result = {"batch_size": model.batch_size}
        try:
            model.fit(split.train, split.val)
        except ConfigError as exc:
            result["error"] = str(exc)
            weights = []
        else:
            result["train_rows"] = len(next(iter(model.features(split.train, training=True).values())))
            result["history"] = {k: [float(x) for x in v] for k, v in model.history.items()}
            weights = model.model.get_weights()  # every worker: a read may be a collective
        if distributed.is_chief():
            out.mkdir(parents=True, exist_ok=True)
            np.savez(out / f"{name}.npz", *weights)
            (out / f"{name}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]))
'''

NAMES = ["two_tower", "two_tower_sgd", "two_tower_autodiff", "multvae", "multvae_recvae", "multvae_dae",
         "autorec", "two_tower_in_batch"]
SEED = 3


def _env(tmp: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), str(REPO), os.environ.get("PYTHONPATH", "")]),
               TMPDIR=str(tmp / "tmp"), ANIMEREC_PROGRESS="0")
    env.pop("TF_CONFIG", None)
    (tmp / "tmp").mkdir(exist_ok=True)
    return env


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """{name: (1-worker result, 2-worker result)}, each (json dict, list of weight arrays)."""
    tmp = tmp_path_factory.mktemp("dist_models")
    (tmp / "dm_worker.py").write_text(WORKER)
    env = _env(tmp)
    args = [",".join(NAMES), str(SEED)]
    t0 = time.monotonic()
    one = subprocess.run([sys.executable, "-m", "dm_worker", str(tmp / "one"), *args], cwd=tmp, env=env,
                         capture_output=True, text=True, timeout=400)
    assert one.returncode == 0, one.stderr[-3000:]
    t1 = time.monotonic()
    argv = [str(tmp / "two"), *args]
    launcher = f"from research import distributed; distributed.launch({argv!r}, 2, module='dm_worker')"
    two = subprocess.run([sys.executable, "-c", launcher], cwd=tmp, env=env, capture_output=True, text=True,
                         timeout=500)
    assert two.returncode == 0, two.stderr[-3000:]
    print(f"\n1 worker {t1 - t0:.0f} s, 2 workers {time.monotonic() - t1:.0f} s")

    def load(folder, name):
        arrays = np.load(folder / f"{name}.npz")
        return json.loads((folder / f"{name}.json").read_text()), [arrays[k] for k in arrays.files]

    return {name: (load(tmp / "one", name), load(tmp / "two", name)) for name in NAMES}


def _differences(one, two) -> dict:
    """Max differences, 2 workers against 1: per logged key (relative for training values,
    absolute for validation metrics), and over the weights (each array's relative to max(1, its
    max |w|): under SGD the two-tower id embeddings grow to 1e4-1e5, the unit-norm towers do not
    see their scale)."""
    (r1, w1), (r2, w2) = one, two
    h1, h2 = r1["history"], r2["history"]
    assert set(h1) == set(h2) and len(h1["epoch"]) == len(h2["epoch"])
    out = {}
    for key in h1:
        if key == "epoch":
            continue
        a, b = np.array(h1[key]), np.array(h2[key])
        out[key] = float(np.max(np.abs(a - b))) if key.startswith("val_") else \
            float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
    assert len(w1) == len(w2) and all(a.shape == b.shape for a, b in zip(w1, w2))
    out["weights"] = max(float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(a))))
                         for a, b in zip(w1, w2) if a.size)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("name", [n for n in NAMES if n != "two_tower_in_batch"])
def test_two_workers_match_one_worker(fits, name):
    one, two = fits[name]
    info = one[0]
    if name in ("two_tower_sgd", "multvae", "multvae_recvae", "multvae_dae", "autorec"):
        assert info["train_rows"] % info["batch_size"] == 1, info  # one worker's last slice is empty
    diff = _differences(one, two)
    print(f"{name}: " + ", ".join(f"{k} {v:.2g}" for k, v in diff.items()))
    for key, value in diff.items():
        limit = WEIGHT_ABS if key == "weights" else METRIC_ABS if key.startswith("val_") else LOSS_REL
        assert value <= limit, (name, key, value, limit, one[0]["history"].get(key), two[0]["history"].get(key))


@pytest.mark.distributed
def test_in_batch_two_tower_is_refused_on_every_worker(fits):
    """Both workers raise before training (the chief's message is saved), saying why; the same
    configuration in one process (no strategy) trains."""
    (one, _), (two, weights) = fits["two_tower_in_batch"]
    assert one["history"]["loss"] and "error" not in one
    assert "history" not in two and weights == []
    assert "TwoTower cannot train under MultiWorkerMirroredStrategy" in two["error"], two
    assert "in-batch negatives" in two["error"] and 'loss = "full_softmax"' in two["error"]


def test_supported_is_decided_per_instance(monkeypatch):
    """two_tower's support depends on its loss, not its class (no workers: the table only)."""
    from research.models import registry

    monkeypatch.setenv("TF_CONFIG", json.dumps(distributed.cluster_configs(2)[0]))
    tt = registry.model_class("two_tower")
    distributed.check_supported(tt(seed=0))  # the default, loss = "full_softmax"
    distributed.check_supported(tt(loss="full_softmax", fast_grad=False, seed=0))
    with pytest.raises(distributed.ConfigError, match="in-batch negatives"):
        distributed.check_supported(tt(loss="in_batch", seed=0))
    for name in ("multvae", "autorec", "embedding_dot", "svdpp", "dnn"):
        distributed.check_supported(registry.model_class(name)(seed=0))
    with pytest.raises(distributed.ConfigError, match="has not been checked"):
        distributed.check_supported(registry.model_class("recommendernet")(seed=0))
