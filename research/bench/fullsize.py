"""``fullsize``: ``prepare`` and one training epoch of ``embedding_dot`` as rows grow to MAL's size.

For each size (full: 1M, 10M, 57M — ``animerec bench fullsize``, about an hour on 2 cores;
quick: 100k, 300k; any others with ``run(sizes=[...])``) a synthetic ``rating_complete.csv``-shaped
file is written (``user_id,anime_id,rating``, CRLF, users grouped as in the real file, ~184 ratings
per user, long-tailed anime popularity; into ``results/bench/tmp/``, gitignored), then, each in a
fresh subprocess with its own peak RSS:

1. ``research.data.prepare.prepare("mal2020", raw, out, chunk_rows=1M)``: CSV -> parquet shards;
2. one epoch of ``embedding_dot`` streamed from those shards (``research.data.tfdata.ParquetStream``,
   a bounded shuffle buffer): vocabularies and the mean rating come from one streaming pass, then
   the Keras model trains one epoch; nothing holds all rows in memory.

What should stay bounded: prepare's peak (a chunk + a bucket) and the epoch's peak (the buffer +
the embedding tables, which grow with users and items, not rows). Peak RSS per row is reported so
the trend across sizes is visible.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from research.bench.report import in_subprocess, md_table
from research.config import REPO_ROOT

FULL_SIZES = [1_000_000, 10_000_000, 57_000_000]  # 57M ~ rating_complete.csv
QUICK_SIZES = [100_000, 300_000]
ITEMS = 17_562
PER_USER = 184


def write_ratings_csv(path: str, rows: int, items: int = ITEMS, per_user: int = PER_USER, seed: int = 0,
                      chunk_users: int = 20_000) -> dict:
    """Write ``rows`` lines of ``user_id,anime_id,rating`` (CRLF, header, no duplicate pairs)."""
    import pandas as pd

    t0 = time.perf_counter()
    r = np.random.default_rng(seed)
    pop = r.lognormal(0.0, 2.0, items)
    cdf = np.cumsum(pop / pop.sum())
    anime_ids = np.sort(r.choice(np.arange(1, 50_000), items, replace=False))  # sparse MAL-like ids
    written, user = 0, 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # CRLF line endings as the real file (which also lacks a final newline; a final CRLF here)
    with open(path, "w", newline="") as fh:
        fh.write("user_id,anime_id,rating\r\n")
        while written < rows:
            n_u = np.maximum(1, np.round(r.lognormal(np.log(per_user) - 0.38, 0.87, chunk_users))).astype(np.int64)
            n_u = np.minimum(n_u, items // 2)
            draws = (n_u * 1.6 + 10).astype(np.int64)
            rws = np.repeat(np.arange(chunk_users), draws)
            cols = np.minimum(np.searchsorted(cdf, r.random(rws.size)), items - 1)
            _, first = np.unique(rws * items + cols, return_index=True)
            first.sort()
            rws, cols = rws[first], cols[first]
            keep = (np.arange(rws.size) - np.searchsorted(rws, rws)) < n_u[rws]
            rws, cols = rws[keep], cols[keep]
            rws, cols = rws[: rows - written], cols[: rows - written]
            rating = np.clip(np.round(7.6 + r.normal(0, 1.6, rws.size)), 1, 10).astype(np.int64)
            pd.DataFrame({"u": rws + user, "a": anime_ids[cols], "r": rating}).to_csv(
                fh, header=False, index=False, lineterminator="\r\n")
            written += rws.size
            user += chunk_users
    return {"rows": written, "seconds": time.perf_counter() - t0, "bytes": Path(path).stat().st_size}


def run_prepare(raw: str, out: str, chunk_rows: int = 1_000_000) -> dict:
    """(Subprocess target) ``prepare`` the mal2020-shaped folder ``raw``."""
    from research.config import DataConfig
    from research.data.prepare import prepare

    m = prepare("mal2020", Path(raw), Path(out), DataConfig(source="mal2020", ratings="rating_complete.csv"),
                chunk_rows=chunk_rows)
    f = next(iter(m.get("files", {}).values()), {})
    return {"rows_read": f.get("rows_read"), "rows_kept": f.get("rows_kept")}


def run_epoch(processed: str, batch_size: int = 8192, shuffle_buffer: int = 1_000_000, seed: int = 0) -> dict:
    """(Subprocess target) one epoch of embedding_dot streamed from the parquet shards."""
    import pyarrow.parquet as pq

    from research.bench.report import peak_rss_mb
    from research.data import tfdata
    from research.data.interactions import Meta, Vocab
    from research.models import registry

    t0 = time.perf_counter()
    shards = tfdata.find_shards(Path(processed) / "ratings")
    users, items = set(), set()
    for f in shards:  # pass 1: the vocabularies
        t = pq.read_table(f, columns=["user", "item"])
        users.update(np.unique(t["user"].to_numpy()).tolist())
        items.update(np.unique(t["item"].to_numpy()).tolist())
    meta = Meta(Vocab(np.fromiter(users, np.int64)), Vocab(np.fromiter(items, np.int64)))
    # pass 2: what EmbeddingDot.prepare computes from in-memory Interactions (mean, range, rated
    # rows per user and per item), streamed shard by shard
    n_u = np.zeros(len(meta.users), np.float32)
    n_i = np.zeros(len(meta.items), np.float32)
    total, n, lo, hi = 0.0, 0, np.inf, -np.inf
    for f in shards:
        t = pq.read_table(f, columns=["user", "item", "rating"])
        r = t["rating"].to_numpy(zero_copy_only=False)
        ok = ~np.isnan(r)
        u = meta.users.index(t["user"].to_numpy()[ok])
        i = meta.items.index(t["item"].to_numpy()[ok])
        n_u += np.bincount(u, minlength=len(n_u)).astype(np.float32)
        n_i += np.bincount(i, minlength=len(n_i)).astype(np.float32)
        total += float(r[ok].sum())
        n += int(ok.sum())
        if ok.any():
            lo, hi = min(lo, float(r[ok].min())), max(hi, float(r[ok].max()))
    scan_s = time.perf_counter() - t0
    model = registry.build("embedding_dot", {"batch_size": batch_size, "epochs": 1}, seed=seed)
    model.meta = meta
    model.fit_state = {"mu": total / max(n, 1), "lo": lo, "hi": hi, "trained_items": n_i > 0,
                       "user_count": n_u, "item_count": n_i}
    keras_model = model.build_model()
    keras_model.compile(optimizer=model.make_optimizer())
    stream = tfdata.from_parquet(Path(processed) / "ratings", batch_size, users=meta.users, items=meta.items,
                                 seed=seed, shuffle_buffer=shuffle_buffer)
    rss_before = peak_rss_mb()
    t1 = time.perf_counter()
    keras_model.fit(stream.dataset(), epochs=1, callbacks=[stream.callback()], verbose=0)
    epoch_s = time.perf_counter() - t1
    return {"rows": n, "users": len(meta.users), "items": len(meta.items), "scan_seconds": scan_s,
            "epoch_seconds": epoch_s, "examples_per_second": n / epoch_s, "peak_rss_before_epoch_mb": rss_before,
            "batch_size": batch_size, "shuffle_buffer": shuffle_buffer}


def run(quick: bool = False, sizes=None) -> dict:
    sizes = sizes or (QUICK_SIZES if quick else FULL_SIZES)
    tmp = REPO_ROOT / "results" / "bench" / "tmp" / "fullsize"
    steps, notes = [], []
    for rows in sizes:
        raw, out = tmp / f"raw_{rows}", tmp / f"processed_{rows}"
        csv = raw / "rating_complete.csv"
        step = {"rows": rows}
        if not csv.exists():
            step["write_csv"] = in_subprocess("research.bench.fullsize:write_ratings_csv", path=str(csv),
                                              rows=rows)["result"]
        step["csv_mb"] = csv.stat().st_size / 2**20
        for name, target, kw in (("prepare", "research.bench.fullsize:run_prepare", {"raw": str(raw), "out": str(out)}),
                                 ("epoch", "research.bench.fullsize:run_epoch", {"processed": str(out)})):
            try:
                o = in_subprocess(target, **kw)
                step[name] = {**o["result"], "seconds": o["wall_seconds"], "cpu_seconds": o["cpu_seconds"],
                              "peak_rss_mb": o["peak_rss_mb"],
                              "rss_after_imports_mb": o["rss_after_imports_mb"],
                              "peak_bytes_per_row": (o["peak_rss_mb"] - o["rss_after_imports_mb"]) * 2**20 / rows}
            except Exception as exc:
                notes.append(f"{name} at {rows:,} rows failed: {str(exc)[-300:]}")
                break
        steps.append(step)
    return {"status": "ok" if any("epoch" in s for s in steps) else "partial", "steps": steps, "notes": notes}


def markdown(res: dict) -> str:
    if not res.get("steps"):
        return ""
    rows = []
    for s in res["steps"]:
        p, e = s.get("prepare", {}), s.get("epoch", {})
        rows.append([f"{s['rows']:,}", f"{s['csv_mb']:.0f}",
                     f"{p['seconds']:.1f}" if p else None, f"{p['peak_rss_mb']:.0f}" if p else None,
                     f"{e['seconds']:.1f}" if e else None, f"{e['peak_rss_mb']:.0f}" if e else None,
                     f"{e['examples_per_second']:,.0f}" if e else None])
    return md_table(["rows", "CSV MB", "prepare s", "prepare peak MB", "epoch s (incl. scan)", "epoch peak MB",
                     "examples/s"], rows)
