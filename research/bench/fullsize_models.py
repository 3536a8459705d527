"""``fullsize_models``: the classical models fitted on a rating_complete-shaped synthetic set at
MAL's size, next to implicit ALS and Surprise SVD fitted on the same rows in the same run
(issue 16.1).

Data: ``research.data.synth.generate`` (what ``animerec synth`` writes: the mal2020 raw schema,
``rating_complete.csv`` and its companions) with ``rows / 184`` users (MAL's ~184 ratings per
user) and 17,562 anime; full: ``FULL_ROWS`` (57M, the real file's size), quick: 1M rows over
``QUICK_ITEMS`` anime (so that EASE's dense n x n inverse stays seconds, for CI); any size with
``python -m research.bench.fullsize_models --rows N``. It is written once into
``results/bench/tmp/`` (gitignored), then ``research.data.prepare.prepare`` converts it to parquet
**once**; every model then runs in its own fresh subprocess that loads the prepared rows (all of
them, no split: this measures fitting, not accuracy) and fits, so ``peak_rss_mb`` is that model's
own high-water mark, loading included.

Measured per model: fit wall seconds, CPU seconds (every thread), training examples per second
(rows / fit wall seconds), peak RSS, the 1-minute load average at the start and end of the fit,
and the ratio of the fit time to each peer's (ours / peer, wall and CPU). The models run at their
registry defaults, with every core where they take a thread count (``n_jobs``; implicit and
OpenBLAS use all cores by default).

A model that cannot run at the size says why instead of being skipped silently: before fitting,
the child estimates what it would need (``estimate``) and refuses when that exceeds the limits
below, reporting the estimate. user_knn's cost is all pairs of users (``Σ_items C(n_i, 2)``
products); Surprise keeps every rating twice in Python dicts of tuples (``SURPRISE_BYTES_PER_RATING``,
measured on this benchmark's quick size).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from research.bench.report import in_subprocess, md_table
from research.config import REPO_ROOT

FULL_ROWS = 57_000_000
QUICK_ROWS = 1_000_000
ITEMS = 17_562
QUICK_ITEMS = 3_000
PER_USER = 184
#: (name, registry params beyond the defaults, kind); kind "peer" = the reference libraries
PLAN = [("popularity", {}, "ours"), ("item_knn", {"n_jobs": -1}, "ours"), ("ease", {}, "ours"),
        ("user_knn", {"n_jobs": -1}, "ours"), ("implicit_als", {}, "peer"), ("surprise_svd", {}, "peer")]
PEERS = ("implicit_als", "surprise_svd")
#: user_knn: refuse when its all-pairs products would take longer than this (estimated)
MAX_SECONDS = 1800.0
#: products per CPU second for user_knn's estimate (the scipy path: users x users does not fit
#: the triangle's budget at this size): measured by this benchmark at 10M rows, 54k users:
#: 8.7e10 products (both triangles, values and co-counts) in 524 CPU s
PRODUCTS_PER_SECOND = 1.6e8
#: Surprise's Trainset: ~2 dict entries of (id, rating) tuples per rating, plus the frame it is
#: built from (measured at the quick size: see the JSON's ``bytes_per_rating``)
SURPRISE_BYTES_PER_RATING = 330
#: share of the machine's available memory a model may be estimated to need
MEMORY_SHARE = 0.8


def tmp_dir() -> Path:
    return REPO_ROOT / "results" / "bench" / "tmp" / "fullsize_models"


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_synth(out: str, rows: int, items: int, seed: int = 0) -> dict:
    """(Subprocess target) ``synth.generate`` with ``rows / PER_USER`` users."""
    from research.data import synth

    t0 = time.perf_counter()
    info = synth.generate(Path(out), users=max(1, rows // PER_USER), items=items, ratings_per_user=PER_USER,
                          seed=seed)
    return {"seconds": time.perf_counter() - t0, "users": info["users"], "items": info["items"],
            "rows": info["rows"]}


def run_prepare(raw: str, out: str, chunk_rows: int = 1_000_000) -> dict:
    """(Subprocess target) ``prepare`` the synthetic mal2020 folder ``raw`` into ``out``."""
    from research.config import DataConfig
    from research.data.prepare import prepare

    m = prepare("mal2020", Path(raw), Path(out), DataConfig(source="mal2020", ratings="rating_complete.csv"),
                chunk_rows=chunk_rows)
    f = next(iter(m.get("files", {}).values()), {})
    return {"rows_read": f.get("rows_read"), "rows_kept": f.get("rows_kept")}


def load_prepared(processed: str):
    """The prepared rows as ``Interactions`` (as the runner loads a processed folder)."""
    from research import config as C
    from research.data.load import load_dataset

    cfg = C.load(REPO_ROOT / "experiments" / "configs" / "base.toml",
                 ['data.source="processed"', f'data.path="{processed}"'])
    return load_dataset(cfg, quiet=True).interactions


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def estimate(name: str, data, params: dict) -> dict:
    """What fitting ``name`` on ``data`` would need, and whether it is refused (``refuse``: why)."""
    from research.data.sources import available_memory

    avail = available_memory()
    out: dict = {"available_memory_mb": avail / 2**20}
    if name == "user_knn":
        n_i = np.bincount(data.item[data.rated], minlength=data.n_items).astype(np.float64)
        # scipy's path: both triangles, and the co-count product beside the values' with shrinkage
        products = float((n_i * (n_i - 1) / 2).sum()) * 2 * (2 if params.get("shrinkage", 25.0) > 0 else 1)
        n_users = int(len(np.unique(data.user[data.rated])))
        seconds = products / PRODUCTS_PER_SECOND / _cores()
        out.update({"user_pairs": n_users * (n_users - 1) / 2, "products": products,
                    "seconds_estimated": seconds})
        if seconds > MAX_SECONDS:
            out["refuse"] = (f"all pairs of {n_users:,} users: {products:.3g} sparse products, about "
                             f"{seconds / 3600:.1f} h on {_cores()} cores at {PRODUCTS_PER_SECOND:.1e}/s per core "
                             f"(limit {MAX_SECONDS / 60:.0f} min)")
    elif name == "surprise_svd":
        need = SURPRISE_BYTES_PER_RATING * float(data.rated.sum())
        out["bytes_estimated"] = need
        if need > MEMORY_SHARE * avail:
            out["refuse"] = (f"Surprise's Trainset for {int(data.rated.sum()):,} ratings: about "
                             f"{need / 2**30:.1f} GiB ({SURPRISE_BYTES_PER_RATING} B per rating), more than "
                             f"{MEMORY_SHARE:.0%} of the {avail / 2**30:.1f} GiB available")
    elif name == "ease":
        from research.models.ease import EASE

        n_active = int(len(np.unique(data.item)))
        need = EASE().peak_bytes(n_active, len(data))
        out.update({"active_items": n_active, "bytes_estimated": need})
        if need > MEMORY_SHARE * avail:
            out["refuse"] = (f"{n_active:,} active anime: about {need / 2**30:.1f} GiB, more than "
                             f"{MEMORY_SHARE:.0%} of the {avail / 2**30:.1f} GiB available")
    return out


def measure(name: str, processed: str, params: dict) -> dict:
    """(Subprocess target) load the prepared rows, estimate, then fit ``name`` and time it."""
    from research.bench.report import peak_rss_mb
    from research.models import registry

    t0 = time.perf_counter()
    data = load_prepared(processed)
    load_s = time.perf_counter() - t0
    info = {"rows": len(data), "rated_rows": int(data.rated.sum()), "users": data.n_users, "items": data.n_items,
            "load_seconds": load_s, "input_rss_mb": peak_rss_mb()}
    params = {k: (_cores() if v == -1 else v) for k, v in params.items()}
    est = estimate(name, data, params)
    if "refuse" in est:
        return {"model": name, "status": "refused", "reason": est.pop("refuse"), "estimate": est, "data": info,
                "params": params}
    model = registry.build(name, params, seed=0)
    l0, t0, c0 = _load(), time.perf_counter(), _cpu()
    model.fit(data)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    rows = info["rated_rows"] if name == "surprise_svd" else info["rows"]
    return {"model": name, "status": "ok", "params": params, "data": info, "estimate": est,
            "fit": {"seconds": wall, "cpu_seconds": cpu, "examples": rows,
                    "examples_per_s": rows / wall if wall > 0 else None,
                    "load_average_1min": l0, "load_average_1min_end": _load()},
            "peak_rss_mb": peak_rss_mb()}


def run(quick: bool = False, rows: int | None = None, items: int | None = None,
        models: list[str] | None = None) -> dict:
    """Write the synthetic set (once), prepare it (once), then fit each model of ``PLAN`` (or
    ``models``) in its own subprocess. ``rows`` / ``items`` override the size."""
    rows = int(rows or (QUICK_ROWS if quick else FULL_ROWS))
    items = int(items or (QUICK_ITEMS if quick else ITEMS))
    d = tmp_dir() / f"r{rows}_i{items}"
    raw, processed = d / "raw", d / "processed"
    notes: list[str] = []
    res: dict = {"rows_requested": rows, "items": items, "per_user": PER_USER, "notes": notes}
    if not (raw / "DONE").exists():
        o = in_subprocess("research.bench.fullsize_models:write_synth", out=str(raw), rows=rows, items=items)
        res["synth"] = {**o["result"], "peak_rss_mb": o["peak_rss_mb"], "cpu_seconds": o["cpu_seconds"]}
        (raw / "DONE").write_text("ok\n")
    csv = raw / "rating_complete.csv"
    res["csv_mb"] = csv.stat().st_size / 2**20
    if not (processed / "DONE").exists():
        o = in_subprocess("research.bench.fullsize_models:run_prepare", raw=str(raw), out=str(processed))
        res["prepare"] = {**o["result"], "seconds": o["wall_seconds"], "cpu_seconds": o["cpu_seconds"],
                          "peak_rss_mb": o["peak_rss_mb"]}
        (processed / "DONE").write_text("ok\n")
    else:
        notes.append("prepared once in an earlier run (its timing is not in this result)")
    plan = [p for p in PLAN if models is None or p[0] in models]
    runs = []
    for name, params, kind in plan:
        try:
            o = in_subprocess("research.bench.fullsize_models:measure", name=name, processed=str(processed),
                              params=params)
            r = {**o["result"], "kind": kind, "process_peak_rss_mb": o["peak_rss_mb"],
                 "process_cpu_seconds": o["cpu_seconds"]}
        except Exception as exc:  # one failure is a note: the others are still measured
            r = {"model": name, "kind": kind, "status": "failed", "reason": str(exc)[-400:]}
            notes.append(f"{name} failed: {str(exc)[-200:]}")
        runs.append(r)
        print(f"[fullsize_models] {name}: {r.get('status')} "
              f"{(r.get('fit') or {}).get('seconds', '')}", file=sys.stderr, flush=True)
    peers = {r["model"]: r["fit"] for r in runs if r.get("status") == "ok" and r["model"] in PEERS}
    for r in runs:
        if r.get("status") == "ok":
            mine = r["fit"]
            r["ratio"] = {p: {"wall": mine["seconds"] / f["seconds"], "cpu": mine["cpu_seconds"] / f["cpu_seconds"]}
                          for p, f in peers.items() if f["seconds"] > 0 and f["cpu_seconds"] > 0}
    res["runs"] = runs
    ok = [r for r in runs if r.get("status") in ("ok", "refused")]
    res["status"] = "ok" if len(ok) == len(runs) else ("partial" if ok else "failed")
    if rows != FULL_ROWS and not quick:
        notes.append(f"size overridden: {rows:,} rows (the full rating_complete.csv: ~57M)")
    return res


def markdown(res: dict) -> str:
    if not res.get("runs"):
        return res.get("reason", "")
    first = next((r["data"] for r in res["runs"] if "data" in r), {})
    size = (f"{first.get('users', 0):,} users x {first.get('items', 0):,} anime, {first.get('rows', 0):,} rows "
            f"({first.get('rated_rows', 0):,} rated)") if first else f"{res['rows_requested']:,} rows"
    lines = [f"Synthetic rating_complete-shaped set (`animerec synth`): {size}; CSV {res.get('csv_mb', 0):,.0f} MB. "
             "Prepared once; each model fitted on all rows in its own subprocess (peak RSS includes loading). "
             "Ratios: our fit time / the peer's, wall and CPU.", ""]
    p = res.get("prepare")
    if p:
        lines += [f"prepare: {p['seconds']:.1f} s, {p['cpu_seconds']:.1f} CPU s, peak {p['peak_rss_mb']:,.0f} MB.", ""]
    rows = []
    for r in res["runs"]:
        if r.get("status") == "ok":
            f = r["fit"]
            ratio = r.get("ratio", {})

            def rt(peer, f=f, ratio=ratio):
                x = ratio.get(peer)
                return f"{x['wall']:.2f} / {x['cpu']:.2f}" if x else None

            rows.append([r["model"], r["kind"], f"{f['seconds']:.1f}", f"{f['cpu_seconds']:.1f}",
                         f"{f['examples_per_s']:,.0f}", f"{r['peak_rss_mb']:,.0f}", rt("implicit_als"),
                         rt("surprise_svd"),
                         f"{f['load_average_1min']:.1f}–{f['load_average_1min_end']:.1f}"])
        else:
            rows.append([r["model"], r.get("kind"), f"{r.get('status')}: {r.get('reason', '')}", None, None, None,
                         None, None, None])
    lines.append(md_table(["model", "kind", "fit s", "fit CPU s", "examples/s", "peak RSS MB", "/ ALS (wall / CPU)",
                           "/ SVD (wall / CPU)", "load"], rows))
    return "\n".join(lines)  # the summary lists the result's notes itself


def main(argv=None) -> int:
    """``python -m research.bench.fullsize_models [--rows N] [--items N] [--models a,b]``: run at a
    chosen size and write ``results/bench/fullsize_models.json`` and the summary."""
    from research.bench import renderers, report

    ap = argparse.ArgumentParser(prog="python -m research.bench.fullsize_models")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--models", default=None, help="comma-separated subset of " + ", ".join(p[0] for p in PLAN))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    machine = report.machine()
    t0 = time.perf_counter()
    res = run(quick=a.quick, rows=a.rows, items=a.items, models=a.models.split(",") if a.models else None)
    res = {"status": "ok", **res, "machine": machine, "wall_seconds": time.perf_counter() - t0,
           "time_utc": machine.get("time_utc")}  # as research.bench.main writes a result
    path = report.write_result("fullsize_models", res, a.quick)
    report.write_summary(path.parent, renderers())
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
