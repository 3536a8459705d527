"""Tables from run folders: one row per model, mean ± std over seeds, absent metrics shown as —."""
from __future__ import annotations

import math

import numpy as np

# Column order of every table; a column appears when at least one model has it.
COLUMNS = ("rmse", "mae", "precision@{k}", "recall@{k}", "ndcg@{k}", "map@{k}", "hit_rate@{k}",
           "coverage@{k}", "novelty@{k}", "wcss", "silhouette", "n_clusters", "fit_seconds")
LOWER_IS_BETTER = {"rmse", "mae", "wcss", "fit_seconds"}


def columns_for(models: dict, k: int = 10) -> list[str]:
    cols = [c.format(k=k) for c in COLUMNS]
    return [c for c in cols if any(c in m for m in models.values())]


def _fmt(values: list, col: str) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "—"
    digits = 2 if col in ("fit_seconds", "wcss", "n_clusters") else 4
    if col == "wcss":
        digits = 1
    mean = float(np.mean(vals))
    if len(vals) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(vals, ddof=1)):.{digits}f}"


def markdown_table(per_seed: list[dict], k: int = 10) -> str:
    """A Markdown table from one or more ``metrics.json["models"]`` dicts (one per seed).

    Cells are the mean over seeds, with ± the sample standard deviation when there are several;
    a metric that does not apply to a model is shown as — (it is absent from its metrics).
    """
    names: list[str] = []
    for models in per_seed:
        for n in models:
            if n not in names:
                names.append(n)
    merged = {n: {} for n in names}
    for models in per_seed:
        for n, m in models.items():
            for key, v in m.items():
                merged[n].setdefault(key, []).append(v)
    cols = columns_for(merged, k)
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_fmt(merged[n].get(c, []), c) for c in cols) + " |")
    return "\n".join(lines) + "\n"
