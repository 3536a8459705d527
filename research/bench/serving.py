"""``serving``: top-10 latency per user from the exported index (``research.models.keras.export``).

For each case an index is exported twice (``index="brute_force"``: scores and ``tf.math.top_k``
inside the SavedModel; ``index="faiss"``: exact inner-product faiss index beside it), reloaded with
``load_topk``, and asked for one user at a time (``n_queries`` random known users, after
``warmup`` calls); p50 / p99 / mean of the per-call wall time. A plain in-process numpy brute
force (``q @ V.T`` + ``argpartition``) over the same vectors is the floor. Batch throughput
(all queried users in one call) is reported beside it.

Cases: ``embedding_dot`` fitted on the real sample (its trained candidates), and (full mode) a
MAL-sized table of random vectors (310,059 users x 17,562 anime, dim 32) — latency depends on the
sizes, not the values. Each case runs in its own subprocess (TensorFlow stays out of the runner).
"""
from __future__ import annotations

import tempfile
import time

import numpy as np

from research.bench.report import in_subprocess, md_table


def _latencies(fn, queries, warmup: int) -> dict:
    for q in queries[:warmup]:
        fn(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": int(len(ms))}


def measure(case: str, n_queries: int = 500, warmup: int = 20, k: int = 10, epochs: int = 5, seed: int = 0,
            dim: int = 32, users: int = 310_059, items: int = 17_562) -> dict:
    """(Subprocess target) build the vectors for ``case``, export both indexes, time them."""
    import research  # noqa: F401
    from research.models.keras import export as X

    r = np.random.default_rng(seed)
    t0 = time.perf_counter()
    if case == "sample":
        from research.bench.peers import _config, load_data
        from research.data.splits import make_split
        from research.models import registry

        cfg, _ = _config(quick=True)
        ds, _ = load_data(cfg)
        split = make_split(ds.interactions, cfg.split, seed)
        model = registry.build("embedding_dot", {"epochs": epochs}, seed=seed).fit(split.train, split.val)
        cand = np.flatnonzero(model.fit_state["trained_items"])
        V = np.concatenate([model.item_vectors()[cand], model.item_bias()[cand, None]], axis=1).astype(np.float32)
        U = np.concatenate([model.user_vectors(), np.ones((model.meta.n_users, 1))], axis=1).astype(np.float32)
        user_ids = model.meta.users.values

        def do_export(path, index):
            return X.export_recommender(model, path, k=k, index=index)
        label = f"embedding_dot on the real sample ({epochs} epochs)"
    else:
        U = r.normal(size=(users, dim)).astype(np.float32)
        V = r.normal(size=(items, dim)).astype(np.float32)
        user_ids = np.arange(users, dtype=np.int64) * 7 + 3  # sparse external ids, like MAL's
        item_ids = np.arange(items, dtype=np.int64)

        def do_export(path, index):
            return X.export_topk(path, V, item_ids, k=k, user_vectors=U, user_ids=user_ids, index=index)
        label = f"random vectors, {users:,} users x {items:,} items, dim {dim}"
    build_seconds = time.perf_counter() - t0
    pick = r.choice(len(user_ids), size=min(n_queries, len(user_ids)), replace=False)
    queries = [np.asarray([user_ids[i]]) for i in pick]
    out = {"case": label, "n_users": int(len(user_ids)), "n_candidates": int(len(V)), "dim": int(V.shape[1]),
           "k": k, "build_seconds": build_seconds, "latency": {}, "batch": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for index in ("brute_force", "faiss"):
            t = time.perf_counter()
            path = do_export(f"{tmp}/{index}", index)
            export_s = time.perf_counter() - t
            rec = X.load_topk(path)
            out["latency"][index] = {**_latencies(rec, queries, warmup), "export_seconds": export_s}
            batch = np.asarray([user_ids[i] for i in pick])
            rec(batch)  # warm-up at this batch shape
            t = time.perf_counter()
            rec(batch)
            out["batch"][index] = {"users": int(len(batch)), "seconds": time.perf_counter() - t}
    pos = {u: i for i, u in enumerate(user_ids)}

    def numpy_topk(q):
        s = U[pos[int(q[0])]] @ V.T
        part = np.argpartition(-s, k - 1)[:k]
        return part[np.argsort(-s[part])]
    out["latency"]["numpy_in_process"] = _latencies(numpy_topk, queries, warmup)
    return out


def run(quick: bool = False) -> dict:
    cases, notes = [], []
    plan = [("sample", {"epochs": 2 if quick else 10, "n_queries": 100 if quick else 500})]
    if not quick:
        plan.append(("mal_size_random", {"n_queries": 500}))
    for case, kw in plan:
        try:
            out = in_subprocess("research.bench.serving:measure", case=case, **kw)
            cases.append({**out["result"], "peak_rss_mb": out["peak_rss_mb"]})
        except Exception as exc:
            notes.append(f"{case} failed: {str(exc)[-400:]}")
    return {"status": "ok" if cases else "failed", "cases": cases, "notes": notes,
            "method": "one user per call after warm-up; wall time per call; seen items not excluded "
                      "(the export leaves that to the caller)"}


def markdown(res: dict) -> str:
    if not res.get("cases"):
        return ""
    rows = []
    for c in res["cases"]:
        for index, lat in c["latency"].items():
            batch = c["batch"].get(index)
            rows.append([c["case"], f"{c['n_candidates']:,}", index, f"{lat['p50_ms']:.2f}", f"{lat['p99_ms']:.2f}",
                         f"{lat['mean_ms']:.2f}",
                         f"{batch['users'] / batch['seconds']:,.0f}" if batch else None])
    return md_table(["case", "candidates", "index", "p50 ms", "p99 ms", "mean ms", "batch users/s"], rows)
