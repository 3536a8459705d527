"""K-means on user taste vectors: WCSS (the clusters' sum of squares) and silhouette against k.

    python experiments/kmeans_elbow.py CONFIG [--ks 2,3,4,5,6,8,10,12,15,20,25,30] [--set KEY=VALUE ...]

For each seed of CONFIG: the same split the runner makes (``make_split(data, cfg.split, seed)``),
then ``research.models.clustering.elbow(split.train, ks, seed=..., **params)`` with the parameters
of the config's ``[models.kmeans]`` table (``n_clusters`` aside: it is what varies). Writes
``results/tables/<experiment>_curve.{md,csv}`` (mean ± std over seeds per k) and
``results/figures/<experiment>_curve.png``. The chosen k's recommendation quality is the config's
own run: ``animerec run CONFIG && animerec report <experiment>``.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from research import config as C  # noqa: E402


def _rows(res) -> list[dict]:
    """elbow()'s result as [{"k", "wcss", "silhouette"}, ...] (DataFrame, list of dicts or dict of lists)."""
    if hasattr(res, "to_dict"):
        return [dict(r) for r in res.to_dict("records")]
    if isinstance(res, dict):
        keys = list(res)
        return [dict(zip(keys, vals)) for vals in zip(*res.values())]
    return [dict(r) for r in res]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--ks", default="2,3,4,5,6,8,10,12,15,20,25,30")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from research import figures as F
    from research.data.load import load_dataset
    from research.data.splits import make_split
    from research.models import clustering
    from research.results import atomic_write_text
    from research.seeding import child_seed

    cfg = C.load(args.config, args.set)
    ks = [int(x) for x in args.ks.split(",") if x.strip()]
    spec = cfg.model("kmeans")
    params = {key: v for key, v in spec.params.items() if key != "n_clusters"}
    chosen = spec.params.get("n_clusters")
    data = load_dataset(cfg, quiet=True)
    per_k: dict[int, dict[str, list]] = {k: {"wcss": [], "silhouette": []} for k in ks}
    for seed in cfg.seeds:
        split = make_split(data.interactions, cfg.split, int(seed))
        for row in _rows(clustering.elbow(split.train, ks, seed=child_seed(int(seed), spec.name), **params)):
            k = int(row["k"])
            for m in ("wcss", "silhouette"):
                if row.get(m) is not None:
                    per_k[k][m].append(float(row[m]))

    def stat(v):
        v = [x for x in v if np.isfinite(x)]
        if not v:
            return None, None
        return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)

    tab = [(k, *stat(per_k[k]["wcss"]), *stat(per_k[k]["silhouette"])) for k in ks]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["k", "n_seeds", "wcss_mean", "wcss_std", "silhouette_mean", "silhouette_std"])
    for k, wm, ws, sm, ss in tab:
        w.writerow([k, len(cfg.seeds)] + ["" if x is None else repr(round(x, 6)) for x in (wm, ws, sm, ss)])
    out_tables = cfg.results_path / "tables"
    atomic_write_text(out_tables / f"{cfg.experiment}_curve.csv", buf.getvalue())

    def fmt(m, s, d):
        return "—" if m is None else (f"{m:.{d}f}" if s is None else f"{m:.{d}f} ± {s:.{d}f}")

    best_sil = max((r for r in tab if r[3] is not None), key=lambda r: r[3], default=None)
    lines = [f"# K-means elbow ({cfg.experiment})", "",
             f"WCSS and mean silhouette of K-means over user taste vectors of the training split, per k; mean "
             f"± std over seeds {', '.join(map(str, cfg.seeds))}. Model parameters: "
             f"{params or 'the defaults'}. The config's run uses k = "
             f"{chosen if chosen is not None else 'the default'}.",
             "", "| k | WCSS | silhouette |", "|---:|---:|---:|"]
    lines += [f"| {k} | {fmt(wm, ws, 1)} | {fmt(sm, ss, 4)} |" for k, wm, ws, sm, ss in tab]
    if best_sil:
        lines += ["", f"Highest mean silhouette at k = {best_sil[0]}."]
    atomic_write_text(out_tables / f"{cfg.experiment}_curve.md", "\n".join(lines) + "\n")
    fig = F.elbow(ks, [r[1] for r in tab], [r[3] for r in tab],
                  cfg.results_path / "figures" / f"{cfg.experiment}_curve.png",
                  wcss_std=[r[2] or 0.0 for r in tab], silhouette_std=[r[4] or 0.0 for r in tab],
                  chosen=chosen, title=f"K-means over user taste vectors ({len(cfg.seeds)} seed(s))")
    for path in (out_tables / f"{cfg.experiment}_curve.md", out_tables / f"{cfg.experiment}_curve.csv", fig):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
