"""``animerec eda CONFIG``: the data report of the data set a config loads.

Written to ``results/eda/<experiment>/``: ``report.md`` (the sections below, with the numbers),
``summary.json`` (the same numbers for machines) and PNG figures beside them. The report reads the
data through ``research.data.load.load_dataset`` exactly as a run would, so it describes what the
models see (after duplicate, unrated and minimum-ratings filters), and the manifest says what was
dropped on the way.

Sections: overview (rows read / kept / dropped per reason, users, anime, density), rating
distribution, score 0 ("watched, not scored") share — measured on the loaded rows when the config
keeps them (``data.unrated = "keep"``), else from the manifest's ``unrated`` drop count —,
duplicate ratings, watching-status mix (animelist files only) and its cross with score 0, genres
(unique genres, anime per genre, users and ratings per genre, mean rating per genre), ratings per
user and per anime (the long tail), and the most-rated anime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

#: MAL watching_status codes (watching_status.csv of the 2020 data set).
STATUS_NAMES = {1: "Currently Watching", 2: "Completed", 3: "On Hold", 4: "Dropped", 6: "Plan to Watch"}


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` (0 = all equal, -> 1 = one holds everything).

    G = Σ_i (2i − n − 1) x_(i) / (n Σ x), with x sorted ascending and i = 1..n. NaN when empty or
    all zero.
    """
    x = np.sort(np.asarray(counts, np.float64))
    n, total = len(x), x.sum() if len(x) else 0.0
    if n == 0 or total == 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def _quantiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    q = np.percentile(x, [0, 25, 50, 75, 90, 99, 100])
    return {"min": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p90": float(q[4]), "p99": float(q[5]), "max": float(q[6]), "mean": float(np.mean(x))}


def _top_share(counts: np.ndarray, frac: float) -> float:
    c = np.sort(np.asarray(counts))[::-1]
    n = max(1, int(np.ceil(frac * len(c))))
    return float(c[:n].sum() / c.sum()) if c.sum() else float("nan")


def _unrated_from_manifest(manifest: dict) -> tuple[int, int] | None:
    """(rows dropped as unrated, rows that reached the unrated filter) of the ratings file."""
    for name, f in manifest.get("files", {}).items():
        dropped = f.get("rows_dropped", {})
        if "unrated" in dropped:
            before = f.get("rows_read", 0) - dropped.get("truncated_last_line", 0) - dropped.get("duplicate", 0)
            return int(dropped["unrated"]), int(before)
    return None


def _ratings_file(manifest: dict) -> tuple[str, dict] | tuple[None, dict]:
    for name, f in manifest.get("files", {}).items():
        if f.get("format", {}).get("layout") or "duplicate" in f.get("rows_dropped", {}) or "rating" in name:
            return name, f
    return None, {}


def summarize(dataset) -> dict:
    """Every number of the data report, as a JSON-able dict (see the module docstring)."""
    inter = dataset.interactions
    meta = dataset.meta
    n = len(inter)
    rated = inter.rated
    out: dict = {"dataset": dataset.name}
    rf_name, rf = _ratings_file(dataset.manifest)
    out["ratings_file"] = rf_name
    out["manifest"] = {k: v for k, v in rf.items() if k in ("rows_read", "rows_kept", "rows_dropped", "rows_flagged")}
    users_present = inter.users_present()
    items_present = inter.items_present()
    out["overview"] = {
        "rows": int(n), "rated_rows": int(rated.sum()), "users": int(len(users_present)),
        "anime_with_rows": int(len(items_present)), "anime_in_vocabulary": int(meta.n_items),
        "catalogue_anime": int(meta.item_table["name"].notna().sum()) if meta.item_table is not None
        and "name" in meta.item_table else None,
        "density": float(n / (len(users_present) * len(items_present))) if n else float("nan"),
    }

    # ---- ratings ------------------------------------------------------------------------------
    r = inter.rating[rated].astype(np.float64)
    vals, counts = np.unique(r, return_counts=True)
    out["rating_distribution"] = {(str(int(v)) if float(v).is_integer() else str(v)): int(c)
                                  for v, c in zip(vals, counts)}
    out["rating_stats"] = {"mean": float(r.mean()), "std": float(r.std(ddof=1)) if len(r) > 1 else float("nan"),
                           "median": float(np.median(r))} if len(r) else {}

    # ---- score 0 ------------------------------------------------------------------------------
    # Score-0 rows are either in the loaded rows (NaN rating, data.unrated = "keep") or were dropped
    # by the loader as "unrated" or "plan_to_watch" (unscored plan-to-watch rows are always
    # dropped); the share is over the loaded rows plus those dropped ones.
    unrated_loaded = int((~rated).sum())
    dropped = rf.get("rows_dropped", {})
    ptw, unr = int(dropped.get("plan_to_watch", 0)), int(dropped.get("unrated", 0))
    total0, of_rows = unrated_loaded + ptw + unr, int(n) + ptw + unr
    where = []
    if unrated_loaded:
        where.append(f"{unrated_loaded:,} kept as unscored rows (data.unrated = keep)")
    if unr:
        where.append(f"{unr:,} dropped as unrated (data.unrated = drop)")
    if ptw:
        where.append(f"{ptw:,} unscored plan-to-watch rows dropped by the loader")
    out["score0"] = {"rows": total0, "of_rows": of_rows, "share": total0 / of_rows if of_rows else float("nan"),
                     "loaded": unrated_loaded, "dropped_unrated": unr, "dropped_plan_to_watch": ptw,
                     "measured_on": "; ".join(where) if where else "the ratings file has no score-0 rows"}
    if total0:
        # what the study's choice does to the target: every score 0 read as a rating of 0/10
        out["score0"]["mean_rating_if_zero_counted"] = float(r.sum() / (len(r) + total0))
    out["score0"]["plan_to_watch_dropped"] = ptw

    # ---- duplicates ---------------------------------------------------------------------------
    key = inter.user.astype(np.int64) * max(meta.n_items, 1) + inter.item
    dup_loaded = int(n - len(np.unique(key)))
    out["duplicates"] = {"dropped_by_loader": int(rf.get("rows_dropped", {}).get("duplicate", 0)),
                         "left_in_loaded_rows": dup_loaded,
                         "rule": "the last row of a (user, anime) pair in file order is kept"}

    # ---- watching status ----------------------------------------------------------------------
    if "status" in inter.extra:
        st = np.asarray(inter.extra["status"]).astype(np.int64)
        codes, c = np.unique(st, return_counts=True)
        mix = {}
        for code, cnt in zip(codes, c):
            m = st == code
            mix[str(int(code))] = {"name": STATUS_NAMES.get(int(code), f"status {int(code)}"), "rows": int(cnt),
                                   "share": float(cnt / n), "score0_rows": int((m & ~rated).sum()),
                                   "mean_rating": float(inter.rating[m & rated].mean()) if (m & rated).any() else None}
        out["watching_status"] = mix

    # ---- per user / per anime (long tail) -----------------------------------------------------
    per_user = np.bincount(inter.user, minlength=meta.n_users)[users_present]
    per_item = np.bincount(inter.item, minlength=meta.n_items)[items_present]
    out["ratings_per_user"] = {**_quantiles(per_user), "gini": gini(per_user)}
    out["ratings_per_anime"] = {**_quantiles(per_item), "gini": gini(per_item),
                                "share_top_1pct_anime": _top_share(per_item, 0.01),
                                "share_top_10pct_anime": _top_share(per_item, 0.10),
                                "share_top_20pct_anime": _top_share(per_item, 0.20),
                                "anime_with_1_row": int((per_item == 1).sum())}

    # ---- genres -------------------------------------------------------------------------------
    table = meta.item_table
    if table is not None and "genres" in table:
        genres = sorted({g for gs in table["genres"] for g in gs})
        gidx = {g: j for j, g in enumerate(genres)}
        rows, cols = [], []
        for i, gs in enumerate(table["genres"]):
            for g in gs:
                rows.append(i)
                cols.append(gidx[g])
        ig = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(meta.n_items, len(genres)))
        ui = sp.csr_matrix((np.ones(n), (inter.user, inter.item)), shape=(meta.n_users, meta.n_items))
        ui.sum_duplicates()
        ug = (ui @ ig).tocsc()  # users x genres: rows of the user in that genre
        rated_sum = np.bincount(inter.item[rated], weights=inter.rating[rated], minlength=meta.n_items)
        rated_cnt = np.bincount(inter.item[rated], minlength=meta.n_items)
        in_cat = np.zeros(meta.n_items, bool)
        if "name" in table:
            in_cat = table["name"].notna().to_numpy()
        per_genre = []
        for g, j in gidx.items():
            col = ig[:, j].toarray().ravel() > 0
            cnt = int(rated_cnt[col].sum())
            per_genre.append({"genre": g, "anime_in_catalogue": int((col & in_cat).sum()),
                              "users": int(ug[:, j].getnnz()), "rows": int(ug[:, j].sum()),
                              "mean_rating": float(rated_sum[col].sum() / cnt) if cnt else None})
        per_genre.sort(key=lambda d: (-d["users"], -d["rows"], d["genre"]))
        no_genre = np.array([len(gs) == 0 for gs in table["genres"]])
        out["genres"] = {"unique": len(genres), "names": genres, "per_genre": per_genre,
                         "rows_on_anime_without_genre": int(no_genre[inter.item].sum()),
                         "genres_per_anime_mean": float(np.mean([len(gs) for gs, c in zip(table["genres"], in_cat)
                                                                 if c])) if in_cat.any() else None}

    # ---- most rated anime ---------------------------------------------------------------------
    cnt_all = np.bincount(inter.item, minlength=meta.n_items)
    order = np.lexsort((np.arange(meta.n_items), -cnt_all))[:10]
    rated_sum = np.bincount(inter.item[rated], weights=inter.rating[rated], minlength=meta.n_items)
    rated_cnt = np.bincount(inter.item[rated], minlength=meta.n_items)
    out["most_rated"] = [{"anime_id": int(meta.items.ids(i)), "name": meta.item_names([i])[0],
                          "rows": int(cnt_all[i]),
                          "mean_rating": float(rated_sum[i] / rated_cnt[i]) if rated_cnt[i] else None}
                         for i in order if cnt_all[i] > 0]
    return out


def _f(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def _pct(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}%"


def write_figures(s: dict, dataset, out: Path) -> dict:
    """The report's PNGs; returns section -> file name."""
    from research import figures as F

    inter = dataset.interactions
    figs = {}
    if s["rating_distribution"]:
        F.bar(list(s["rating_distribution"]), list(s["rating_distribution"].values()), out / "ratings.png",
              title=f"{s['dataset']}: rating distribution", xlabel="rating", ylabel="rows")
        figs["ratings"] = "ratings.png"
    users = inter.users_present()
    items = inter.items_present()
    F.long_tail(np.bincount(inter.user, minlength=inter.n_users)[users],
                np.bincount(inter.item, minlength=inter.n_items)[items], out / "long_tail.png",
                title=f"{s['dataset']}: ratings per user and per anime (log-log, sorted)")
    figs["long_tail"] = "long_tail.png"
    if "genres" in s and s["genres"]["per_genre"]:
        pg = s["genres"]["per_genre"]
        F.bar([d["genre"] for d in pg], [d["users"] for d in pg], out / "users_per_genre.png",
              title=f"{s['dataset']}: users with at least one row per genre", xlabel="users", horizontal=True)
        figs["genres"] = "users_per_genre.png"
    if "watching_status" in s:
        ws = s["watching_status"]
        F.bar([f"{v['name']}" for v in ws.values()], [v["rows"] for v in ws.values()], out / "watching_status.png",
              title=f"{s['dataset']}: watching-status mix", ylabel="rows")
        figs["status"] = "watching_status.png"
    return figs


def markdown(s: dict, figs: dict, experiment: str) -> str:
    """The report text from ``summarize``'s dict."""
    ov = s["overview"]
    L = [f"# Data report: {experiment}", "",
         f"Data set `{s['dataset']}`, ratings file `{s['ratings_file']}`, as loaded by the run (`animerec eda`).", ""]
    L += ["## Overview", "", "| quantity | value |", "|---|---:|"]
    m = s.get("manifest", {})
    if m:
        L.append(f"| rows read from the ratings file | {_f(m.get('rows_read'))} |")
        for reason, v in sorted(m.get("rows_dropped", {}).items()):
            L.append(f"| rows dropped: {reason} | {_f(v)} |")
        for reason, v in sorted(m.get("rows_flagged", {}).items()):
            L.append(f"| rows kept but flagged: {reason} | {_f(v)} |")
    L += [f"| rows loaded | {_f(ov['rows'])} |", f"| rows with a rating | {_f(ov['rated_rows'])} |",
          f"| users | {_f(ov['users'])} |", f"| anime with at least one row | {_f(ov['anime_with_rows'])} |",
          f"| anime in the catalogue | {_f(ov['catalogue_anime'])} |",
          f"| density (rows / users × anime with rows) | {_pct(ov['density'])} |", ""]

    L += ["## Rating distribution", ""]
    if s["rating_distribution"]:
        total = sum(s["rating_distribution"].values())
        L += ["| rating | rows | share |", "|---:|---:|---:|"]
        L += [f"| {k} | {_f(v)} | {_pct(v / total)} |" for k, v in s["rating_distribution"].items()]
        rs = s["rating_stats"]
        L += ["", f"Mean {_f(rs['mean'])}, standard deviation {_f(rs['std'])}, median {_f(rs['median'], 1)}."]
        if "ratings" in figs:
            L += ["", f"![rating distribution]({figs['ratings']})"]
    else:
        L.append("No rated rows.")
    L.append("")

    s0 = s["score0"]
    L += ["## Score 0 (listed, not scored)", "",
          f"{_f(s0['rows'])} of {_f(s0['of_rows'])} rows ({_pct(s0['share'])}) carry score 0: "
          f"{s0['measured_on']}. MyAnimeList stores 0 when a user lists an anime without scoring it (plan-to-watch "
          "entries included, see the watching status where the file has it); treating 0 as a rating of 0/10, as "
          "the original study did, adds a block of lowest ratings nobody gave."]
    if "mean_rating_if_zero_counted" in s0:
        L.append(f"Read as 0/10, they would move the mean rating from {_f(s['rating_stats'].get('mean'))} to "
                 f"{_f(s0['mean_rating_if_zero_counted'])}.")
    L.append("")

    d = s["duplicates"]
    L += ["## Duplicate ratings", "",
          f"Duplicate (user, anime) rows dropped by the loader: {_f(d['dropped_by_loader'])} ({d['rule']}); "
          f"duplicates left in the loaded rows: {_f(d['left_in_loaded_rows'])}.", ""]

    if "watching_status" in s:
        L += ["## Watching status", "", "| status | rows | share | of which score 0 | mean rating (scored rows) |",
              "|---|---:|---:|---:|---:|"]
        for code, v in s["watching_status"].items():
            L.append(f"| {code} {v['name']} | {_f(v['rows'])} | {_pct(v['share'])} | {_f(v['score0_rows'])} | "
                     f"{_f(v['mean_rating'])} |")
        if s["score0"].get("plan_to_watch_dropped"):
            L.append("| 6 Plan to Watch, unscored (dropped by the loader) | "
                     f"{_f(s['score0']['plan_to_watch_dropped'])} | — | all | — |")
        if "status" in figs:
            L += ["", f"![watching status]({figs['status']})"]
        L.append("")

    if "genres" in s:
        g = s["genres"]
        L += ["## Genres", "",
              f"{g['unique']} unique genres; {_f(g['genres_per_anime_mean'])} genres per catalogue anime on average; "
              f"{_f(g['rows_on_anime_without_genre'])} rows are on anime without a genre (or outside the catalogue).",
              "", "Users (with at least one row in the genre), rows and mean rating per genre, most users first:", "",
              "| genre | anime in catalogue | users | share of users | rows | mean rating |",
              "|---|---:|---:|---:|---:|---:|"]
        for pg in g["per_genre"]:
            L.append(f"| {pg['genre']} | {_f(pg['anime_in_catalogue'])} | {_f(pg['users'])} | "
                     f"{_pct(pg['users'] / ov['users'] if ov['users'] else float('nan'))} | {_f(pg['rows'])} | "
                     f"{_f(pg['mean_rating'])} |")
        if "genres" in figs:
            L += ["", f"![users per genre]({figs['genres']})"]
        L.append("")

    pu, pa = s["ratings_per_user"], s["ratings_per_anime"]
    L += ["## Ratings per user and per anime (the long tail)", "",
          "| | min | p25 | median | p75 | p90 | p99 | max | mean | Gini |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, q in (("rows per user", pu), ("rows per anime", pa)):
        if q.get("min") is None:
            continue
        L.append(f"| {label} | " + " | ".join(_f(q[k], 0) for k in ("min", "p25", "median", "p75", "p90", "p99", "max"))
                 + f" | {_f(q['mean'], 1)} | {_f(q['gini'])} |")
    L += ["", f"The most-rated 1% of anime hold {_pct(pa.get('share_top_1pct_anime'))} of the rows, the top 10% "
          f"{_pct(pa.get('share_top_10pct_anime'))}, the top 20% {_pct(pa.get('share_top_20pct_anime'))}; "
          f"{_f(pa.get('anime_with_1_row'))} anime have a single row.", "", f"![long tail]({figs['long_tail']})", ""]

    if s["most_rated"]:
        L += ["## Most-rated anime", "", "| anime id | name | rows | mean rating |", "|---:|---|---:|---:|"]
        L += [f"| {d['anime_id']} | {d['name']} | {_f(d['rows'])} | {_f(d['mean_rating'])} |" for d in s["most_rated"]]
        L.append("")
    return "\n".join(L)


def report(dataset, out_dir: Path, experiment: str = "") -> Path:
    """Write the data report of ``dataset`` to ``out_dir`` (report.md, summary.json, PNGs).

    Args:
        dataset: a ``research.data.interactions.Dataset``.
        out_dir: the folder to write into (created).
        experiment: the title.

    Returns:
        The path of report.md.
    """
    from research.results import atomic_write_text, write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summarize(dataset)
    figs = write_figures(s, dataset, out_dir)
    write_json(out_dir / "summary.json", s)
    path = out_dir / "report.md"
    atomic_write_text(path, markdown(s, figs, experiment or s["dataset"]))
    return path


def run(cfg) -> Path:
    """``animerec eda CONFIG``: load the config's data set and write its report to
    ``<results_dir>/eda/<experiment>/report.md`` (with figures beside it). Returns that path."""
    from research.data.load import load_dataset

    dataset = load_dataset(cfg)
    return report(dataset, Path(cfg.results_path) / "eda" / cfg.experiment, cfg.experiment)


__all__ = ["run", "report", "summarize", "gini"]
