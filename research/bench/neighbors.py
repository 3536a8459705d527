"""``neighbors``: item-kNN all-item top-20 neighbours at MyAnimeList scale.

The input is a synthetic sparse rating matrix shaped like the full ``rating_complete.csv``
(310,059 users x 17,562 anime, ~57M ratings): ratings per user log-normal (mean ~184, heavy right
tail), items drawn by a log-normal popularity (a few anime take most ratings, as on MAL), ratings
1-10 around user and item biases. It is generated once per size into ``results/bench/tmp/``
(gitignored) and every measurement runs in a fresh subprocess that loads it, so ``peak_rss_mb``
(``VmHWM``, see ``research.bench.report``) is that step's own peak; ``input_rss_mb`` is the RSS after loading the input.

Measured:

- ``research.models.neighbors.ItemKNN(k=20).fit`` on all rows (baseline, CSR building and the
  block-wise similarity pruned to each item's top 20): seconds and peak RSS.
- The naive reference, on a subset it can finish (the most popular items x random users): a
  pandas ``pivot_table`` then, per item, ``DataFrame.corrwith`` (Pearson over co-raters) and its
  top 20. Its time per item is extrapolated to the full size as ``users x items`` per item (the
  cost of a dense ``corrwith``) times the number of items; the dense pivot's size at full scale is
  computed, not allocated. ItemKNN on the same subset gives a measured (not extrapolated) ratio.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from research.bench.report import in_subprocess, md_table
from research.config import REPO_ROOT

FULL = {"users": 310_059, "items": 17_562, "mean_per_user": 184.0}
QUICK = {"users": 5_000, "items": 1_000, "mean_per_user": 40.0}
NAIVE_FULL = {"users": 2_000, "items": 500}
NAIVE_QUICK = {"users": 200, "items": 20}
K = 20


def tmp_dir() -> Path:
    return REPO_ROOT / "results" / "bench" / "tmp"


def generate(path: str, users: int, items: int, mean_per_user: float, seed: int = 0) -> dict:
    """Write a long-tailed users x items rating matrix (CSR, float32 ratings 1-10) to ``path``.

    Returns:
        {"users", "items", "nnz", "seconds"}.
    """
    t0 = time.perf_counter()
    r = np.random.default_rng(seed)
    sigma = 0.87  # log-normal spread of ratings per user (MAL: CV ~1)
    n_u = np.maximum(1, np.round(r.lognormal(np.log(mean_per_user) - sigma**2 / 2, sigma, users))).astype(np.int64)
    n_u = np.minimum(n_u, items // 2)
    pop = r.lognormal(0.0, 2.0, items)
    p = pop / pop.sum()
    cdf = np.cumsum(p)
    u_bias = r.normal(0, 0.8, users).astype(np.float32)
    i_bias = (r.normal(0, 0.7, items) + 0.3 * np.log(pop / np.median(pop)) / 2.0).astype(np.float32)
    indptr = [np.zeros(1, np.int64)]
    idx_parts, val_parts = [], []
    chunk = 20_000
    offset = 0
    for a in range(0, users, chunk):
        b = min(a + chunk, users)
        want = n_u[a:b]
        # oversample by popularity, keep each user's first distinct draws: sampling without
        # replacement proportionally to popularity, without a Python loop over users
        draws = (want * 1.6 + 10).astype(np.int64)
        rows = np.repeat(np.arange(b - a), draws)
        cols = np.minimum(np.searchsorted(cdf, r.random(rows.size)), items - 1)
        key = rows * items + cols
        _, first = np.unique(key, return_index=True)
        first.sort()
        rows, cols = rows[first], cols[first]
        rank = np.arange(rows.size) - np.searchsorted(rows, rows)  # rows are sorted: rank within user
        keep = rank < want[rows]
        rows, cols = rows[keep], cols[keep]
        order = np.lexsort((cols, rows))
        rows, cols = rows[order], cols[order]
        z = 7.6 + u_bias[a + rows] + i_bias[cols] + r.normal(0, 1.2, rows.size).astype(np.float32)
        idx_parts.append(cols.astype(np.int32))
        val_parts.append(np.clip(np.round(z), 1, 10).astype(np.float32))
        counts = np.bincount(rows, minlength=b - a)
        indptr.append(offset + np.cumsum(counts))
        offset += int(counts.sum())
    m = sp.csr_matrix((np.concatenate(val_parts), np.concatenate(idx_parts), np.concatenate(indptr)),
                      shape=(users, items))
    sp.save_npz(path, m, compressed=False)
    return {"users": users, "items": items, "nnz": int(m.nnz), "seconds": time.perf_counter() - t0}


def _interactions(m: sp.csr_matrix):
    from research.data.interactions import Interactions, Meta, Vocab

    m = m.tocsr()
    user = np.repeat(np.arange(m.shape[0], dtype=np.int32), np.diff(m.indptr))
    meta = Meta(Vocab(np.arange(m.shape[0])), Vocab(np.arange(m.shape[1])))
    return Interactions(user, m.indices, m.data, meta)


def measure_itemknn(path: str, k: int = K, n_jobs: int = 1) -> dict:
    """(Subprocess target) load the matrix, then time ``ItemKNN(k).fit``."""
    from research.bench.report import peak_rss_mb
    from research.models.neighbors import ItemKNN

    m = sp.load_npz(path).tocsr()
    inter = _interactions(m)
    del m
    input_rss = peak_rss_mb()
    t0 = time.perf_counter()
    model = ItemKNN(k=k, n_jobs=n_jobs).fit(inter)
    seconds = time.perf_counter() - t0
    s = model.sim_
    return {"seconds": seconds, "input_rss_mb": input_rss, "nnz_in": len(inter), "k": k, "n_jobs": n_jobs,
            "similarity": model.similarity, "neighbours_stored": int(s.nnz),
            "items_with_k_neighbours": int((np.diff(s.indptr) == k).sum())}


def subset(path: str, out: str, users: int, items: int, seed: int = 0) -> dict:
    """Write the ``items`` most popular items x ``users`` random users (who rated any) of ``path``."""
    m = sp.load_npz(path).tocsc()
    top = np.argsort(-np.diff(m.indptr), kind="stable")[:items]
    sub = m[:, np.sort(top)].tocsr()
    active = np.flatnonzero(np.diff(sub.indptr) > 0)
    pick = np.sort(np.random.default_rng(seed).choice(active, min(users, len(active)), replace=False))
    sub = sub[pick]
    sp.save_npz(out, sub, compressed=False)
    return {"users": int(sub.shape[0]), "items": int(sub.shape[1]), "nnz": int(sub.nnz)}


def measure_naive(path: str, k: int = K) -> dict:
    """(Subprocess target) the naive pandas way: pivot_table, then corrwith per item."""
    import pandas as pd

    from research.bench.report import peak_rss_mb

    m = sp.load_npz(path).tocoo()
    df = pd.DataFrame({"user": m.row, "item": m.col, "rating": m.data.astype(np.float64)})
    input_rss = peak_rss_mb()
    t0 = time.perf_counter()
    pivot = df.pivot_table(index="user", columns="item", values="rating")
    t_pivot = time.perf_counter() - t0
    t1 = time.perf_counter()
    n_neigh = 0
    for item in pivot.columns:
        corr = pivot.corrwith(pivot[item]).drop(item)
        n_neigh += len(corr.nlargest(k))
    t_loop = time.perf_counter() - t1
    return {"pivot_seconds": t_pivot, "corrwith_seconds": t_loop, "seconds": t_pivot + t_loop,
            "users": int(pivot.shape[0]), "items": int(pivot.shape[1]), "input_rss_mb": input_rss,
            "seconds_per_item": t_loop / pivot.shape[1], "neighbours_found": n_neigh}


def run(quick: bool = False, users: int | None = None, items: int | None = None,
        mean_per_user: float | None = None) -> dict:
    """Measure (see the module docstring). ``users`` / ``items`` / ``mean_per_user`` override the
    full size (``python -m research.bench.neighbors --users 31006`` for a tenth of MAL)."""
    size = dict(QUICK if quick else FULL)
    for key, v in (("users", users), ("items", items), ("mean_per_user", mean_per_user)):
        if v is not None:
            size[key] = v
    naive = NAIVE_QUICK if quick else NAIVE_FULL
    d = tmp_dir()
    d.mkdir(parents=True, exist_ok=True)
    tag = f"u{size['users']}_i{size['items']}_m{int(size['mean_per_user'])}"
    full_path, sub_path = d / f"neighbors_{tag}.npz", d / f"neighbors_{tag}_sub{naive['users']}x{naive['items']}.npz"
    notes = []
    if not quick and size != FULL:
        notes.append(f"size overridden: {size['users']:,} users x {size['items']:,} items (full MAL size: "
                     f"{FULL['users']:,} x {FULL['items']:,}, ~57M ratings)")
    gen = None
    if not full_path.exists():
        if quick:
            gen = {"result": generate(str(full_path), **size), "peak_rss_mb": None}
        else:  # ~2 GB of temporaries at full size: keep them out of this process
            gen = in_subprocess("research.bench.neighbors:generate", path=str(full_path), **size)
    m = sp.load_npz(full_path)
    data = {"users": m.shape[0], "items": m.shape[1], "nnz": int(m.nnz),
            "ratings_per_user": _dist(np.diff(m.tocsr().indptr)),
            "ratings_per_item": _dist(np.diff(m.tocsc().indptr)),
            "top_1pct_items_share": _top_share(np.diff(m.tocsc().indptr), 0.01),
            "generate": gen and {"seconds": gen["result"]["seconds"], "peak_rss_mb": gen["peak_rss_mb"]},
            "input_file_mb": full_path.stat().st_size / 2**20}
    del m
    sub_info = subset(str(full_path), str(sub_path), users=naive["users"], items=naive["items"])

    def measured(target, **kw):
        out = in_subprocess(target, **kw)
        return {**out["result"], "peak_rss_mb": out["peak_rss_mb"], "rss_after_imports_mb": out["rss_after_imports_mb"],
                "cpu_seconds": out["cpu_seconds"], "wall_seconds": out["wall_seconds"],
                "process_seconds": out["process_seconds"]}

    # the similarity blocks run in a thread pool (scipy's sparse product releases the GIL): one
    # thread per core is the measured figure, one thread beside it shows what the threads bring
    jobs = os.cpu_count() or 1
    itemknn_full = measured("research.bench.neighbors:measure_itemknn", path=str(full_path), k=K, n_jobs=jobs)
    itemknn_one = (measured("research.bench.neighbors:measure_itemknn", path=str(full_path), k=K, n_jobs=1)
                   if jobs > 1 else None)
    itemknn_sub = measured("research.bench.neighbors:measure_itemknn", path=str(sub_path), k=K, n_jobs=jobs)
    naive_sub = measured("research.bench.neighbors:measure_naive", path=str(sub_path), k=K)
    # Extrapolation of the naive loop: corrwith of one item against a dense (users x items) pivot
    # costs ~users x items, and there is one per item.
    scale = (data["users"] / naive_sub["users"]) * (data["items"] / naive_sub["items"])
    naive_full_seconds = naive_sub["seconds_per_item"] * scale * data["items"]
    pivot_gb = data["users"] * data["items"] * 8 / 2**30
    notes.append(f"naive full-size time is extrapolated from {naive_sub['users']} users x "
                 f"{naive_sub['items']} items (cost per item ~ users x items; pandas' fixed per-call "
                 f"overhead is part of the subset's time per item, so this is rough); its dense float64 "
                 f"pivot alone would take {pivot_gb:.1f} GiB")
    return derive({"k": K, "data": data, "subset": sub_info,
                   "itemknn": itemknn_full, "itemknn_one_thread": itemknn_one,
                   "itemknn_on_subset": itemknn_sub, "naive_on_subset": naive_sub,
                   "ratio_naive_over_itemknn_on_subset": naive_sub["seconds"] / itemknn_sub["seconds"],
                   "naive_full_extrapolated": {"seconds": naive_full_seconds, "dense_pivot_gib": pivot_gb},
                   "ratio_naive_extrapolated_over_itemknn_full": naive_full_seconds / itemknn_full["seconds"],
                   "notes": notes})


def derive(res: dict) -> dict:
    """Ratios on CPU seconds beside the wall-time ones. On a loaded machine wall time counts the
    wait for a core, which differs between runs; ``cpu_seconds`` is the whole subprocess call
    (loading the input included) for both sides, so these ratios are conservative."""
    nv, sub, full = res["naive_on_subset"], res["itemknn_on_subset"], res["itemknn"]
    if "cpu_seconds" in nv and "cpu_seconds" in sub:
        res["cpu_ratio_naive_over_itemknn_on_subset"] = nv["cpu_seconds"] / sub["cpu_seconds"]
        scale = (res["data"]["users"] / nv["users"]) * (res["data"]["items"] / nv["items"])
        naive_cpu_full = nv["cpu_seconds"] / nv["items"] * scale * res["data"]["items"]
        res["naive_full_extrapolated"]["cpu_seconds"] = naive_cpu_full
        res["cpu_ratio_naive_extrapolated_over_itemknn_full"] = naive_cpu_full / full["cpu_seconds"]
    return res


def _dist(counts: np.ndarray) -> dict:
    c = np.asarray(counts, dtype=np.float64)
    return {"mean": float(c.mean()), "median": float(np.median(c)), "p99": float(np.percentile(c, 99)),
            "max": int(c.max()), "zero": int((c == 0).sum())}


def _top_share(counts: np.ndarray, frac: float) -> float:
    c = np.sort(np.asarray(counts))[::-1]
    n = max(1, int(round(frac * len(c))))
    return float(c[:n].sum() / max(c.sum(), 1))


def markdown(res: dict) -> str:
    d, full, sub, nv = res["data"], res["itemknn"], res["itemknn_on_subset"], res["naive_on_subset"]
    ext = res["naive_full_extrapolated"]
    def cpu(x):
        return f"{x['cpu_seconds']:,.1f}" if x.get("cpu_seconds") is not None else None
    size = f"{d['users']:,} x {d['items']:,}, {d['nnz']:,} ratings"
    rows = [[f"ItemKNN(k=20).fit, all items, {full.get('n_jobs', 1)} thread(s)", size,
             f"{full['seconds']:.1f}", cpu(full), f"{full['peak_rss_mb']:.0f}", f"{full['input_rss_mb']:.0f}"]]
    one = res.get("itemknn_one_thread")
    if one:
        rows.append(["ItemKNN(k=20).fit, all items, 1 thread", size, f"{one['seconds']:.1f}", cpu(one),
                     f"{one['peak_rss_mb']:.0f}", f"{one['input_rss_mb']:.0f}"])
    rows += [["ItemKNN(k=20).fit, subset", f"{nv['users']:,} x {nv['items']:,}, {res['subset']['nnz']:,} ratings",
             f"{sub['seconds']:.2f}", cpu(sub), f"{sub['peak_rss_mb']:.0f}", f"{sub['input_rss_mb']:.0f}"],
            ["pandas pivot_table + corrwith, subset", f"{nv['users']:,} x {nv['items']:,}",
             f"{nv['seconds']:.2f}", cpu(nv), f"{nv['peak_rss_mb']:.0f}", f"{nv['input_rss_mb']:.0f}"],
            ["pandas, full (*extrapolated*)", f"{d['users']:,} x {d['items']:,}", f"{ext['seconds']:,.0f}",
             cpu(ext), f"{ext['dense_pivot_gib'] * 1024:,.0f} (pivot alone)", None]]
    return "\n".join([
        f"Synthetic long-tailed matrix: ratings per user mean {d['ratings_per_user']['mean']:.0f}, median "
        f"{d['ratings_per_user']['median']:.0f}, max {d['ratings_per_user']['max']:,}; the top 1% of items "
        f"hold {100 * d['top_1pct_items_share']:.0f}% of ratings. Top-{res['k']} neighbours for every item.", "",
        md_table(["what", "size", "wall s (step)", "CPU s (whole call)", "peak RSS MB", "RSS after loading input MB"],
                 rows), "",
        f"Naive / ItemKNN on the subset (measured): **{res['ratio_naive_over_itemknn_on_subset']:.0f}x** wall, "
        f"**{res.get('cpu_ratio_naive_over_itemknn_on_subset', float('nan')):.0f}x** CPU; at full size (naive "
        f"extrapolated): **{res['ratio_naive_extrapolated_over_itemknn_full']:,.0f}x** wall, "
        f"**{res.get('cpu_ratio_naive_extrapolated_over_itemknn_full', float('nan')):,.0f}x** CPU. Wall times "
        f"include waiting for a core (machine load above); CPU seconds do not."])


if __name__ == "__main__":
    # A size other than the full one, written as results/bench/neighbors.json (the sizes are in it):
    # python -m research.bench.neighbors --users 31006
    import argparse

    from research.bench import renderers
    from research.bench import report as R

    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int)
    ap.add_argument("--items", type=int)
    ap.add_argument("--mean-per-user", type=float)
    a = ap.parse_args()
    machine = R.machine()
    t0 = time.perf_counter()
    res = run(False, a.users, a.items, a.mean_per_user)
    res = {"status": "ok", **res, "machine": machine, "wall_seconds": time.perf_counter() - t0,
           "time_utc": machine.get("time_utc")}
    print(R.write_result("neighbors", res, quick=False))
    print(R.write_summary(R.bench_dir(False), renderers()))
