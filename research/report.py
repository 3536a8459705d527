"""Tables and figures from run folders.

Size: one module because gathering runs, the paired tests and the table writers are one
pipeline over one ``Experiment``; the figures are already ``research.figures``.

``markdown_table`` is the runner's per-run table (one row per model, mean ± std over the seeds
given, absent metrics shown as —). ``build`` is ``animerec report``: for each experiment under
``results/runs/`` it takes the runs of the experiment's latest config (the config hash of the most
recently finished run), one per seed, and writes

- ``results/tables/<experiment>.md``: mean ± sample std over seeds per model and metric, the best
  model per quality metric in bold, and a dagger (†) on a model whose difference from the best is
  significant (paired two-sided Wilcoxon signed-rank test, Holm-corrected over the models of that
  column, family-wise α = 0.05);
- ``results/tables/<experiment>.csv``: the same numbers in long form (one row per model and
  metric, with n, mean, std, the p-value against the best and the mark);
- figures (``research.figures``): a leaderboard bar chart, and training / validation loss curves
  of the Keras models when their histories are in the runs;
- ``results/tables/<experiment>_verify.md`` when those runs hold a ``verify.json`` (``animerec
  verify``: the run's models folded in for a later file's users): what was verified on, the
  per-model table (mean ± std over the runs verified), the models that could not fold in and why,
  and the row balance of each verification — written from the files, never pasted;
- ``results/tables/<experiment>_trials.md`` for an experiment with searches (``tune-*/tuning.json``,
  the newest per seed): every trial's hyperparameters, validation objective, epochs and seconds —
  also for a search without a final refit, which has no harness table.

Which pairs the tests use:

- ranking metrics (precision, recall, ndcg, map, hit rate at k): per-user values from each run's
  ``per_user.csv``, paired by (seed, user) over the users both models were evaluated on;
- rating metrics (rmse, mae): per-rating errors from ``per_rating.csv`` (or ``.parquet``) when the
  runner wrote one
  (columns ``model, user, item, rating, prediction``), paired by (seed, user, item) on squared
  (rmse) or absolute (mae) errors; otherwise per-seed values paired by seed, which needs at least
  6 seeds before a two-sided Wilcoxon can reach p < 0.05 — with fewer the column is not tested and
  the table says so.

Output is deterministic: the same run folders give byte-identical files (values are rounded to
the printed precision, models keep their config order, nothing time-dependent is written).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from research.eval.metrics import METRICS

# Column order of every table (METRICS' order; n_clusters, a count reported beside K-means' wcss
# and silhouette, is not a metric); a column appears when at least one model has it.
COLUMNS = tuple(m.name + ("@{k}" if m.at_k else "") for m in METRICS.values() if m.name != "fit_seconds") \
    + ("n_clusters", "fit_seconds")
#: Metrics over rated target rows (tested on per-rating errors).
PER_RATING = {m.name for m in METRICS.values() if m.unit == "rating"}
LOWER_IS_BETTER = {m.name for m in METRICS.values() if not m.higher_is_better}
#: Quality metrics: the best model is bolded and the others tested against it.
QUALITY = tuple(m.name + ("@{k}" if m.at_k else "") for m in METRICS.values() if m.quality)
#: Summary metric -> its per-user column in per_user.csv.
PER_USER = {m.name + "@{k}": m.per_user_column + "@{k}" for m in METRICS.values()
            if m.quality and m.per_user_column}
ALPHA = 0.05
MARK = "†"
MIN_SEEDS_PER_SEED_TEST = 6  # two-sided exact Wilcoxon: smallest p is 2/2^n, < 0.05 from n = 6


def columns_for(models: dict, k: int = 10) -> list[str]:
    cols = [c.format(k=k) for c in COLUMNS]
    return [c for c in cols if any(c in m for m in models.values())]


def _digits(col: str) -> int:
    if col == "n_clusters":
        return 0
    if col == "wcss":
        return 1
    return 2 if col == "fit_seconds" else 4


def _finite(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _fmt(values: list, col: str) -> str:
    vals = _finite(values)
    if not vals:
        return "—"
    digits = _digits(col)
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


# ---- gathering runs ------------------------------------------------------------------------

_RUN_ID = re.compile(r"^(?:tune-)?(?P<hash>[0-9A-Za-z_]+)-seed(?P<seed>-?\d+)$")


@dataclass
class Run:
    """One finished run folder of an experiment (one seed)."""

    path: Path
    config_hash: str
    seed: int
    metrics: dict
    per_user: "object | None" = None  # pandas DataFrame or None
    per_rating: "object | None" = None


@dataclass
class Experiment:
    """The runs of one experiment's latest config, one per seed (sorted by seed)."""

    name: str
    config_hash: str
    runs: list = field(default_factory=list)
    k: int = 10

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def models(self) -> list[str]:
        names: list[str] = []
        for r in self.runs:
            for n in r.metrics.get("models", {}):
                if n not in names:
                    names.append(n)
        return names


def _read_csv(path: Path):
    """A run's table: ``path`` (CSV) or the same name with ``.parquet``; None when neither exists."""
    import pandas as pd

    if path.is_file():
        return pd.read_csv(path)
    pq = path.with_suffix(".parquet")
    return pd.read_parquet(pq) if pq.is_file() else None


def gather(results_dir: Path, experiment: str | None = None) -> list[Experiment]:
    """The experiments under ``results_dir/runs`` (or the one named), each with the runs of its
    latest config hash: the hash of the most recently finished run; per seed, that hash's folder.

    Args:
        results_dir: the results folder (holding ``runs/``).
        experiment: one experiment name, or None for all.

    Returns:
        Experiments sorted by name.
    """
    from research.results import find_runs, read_json

    by_exp: dict[str, list[Path]] = {}
    for d in find_runs(results_dir, experiment):  # oldest first
        if _RUN_ID.match(d.name):
            by_exp.setdefault(d.parent.name, []).append(d)
    out = []
    for name in sorted(by_exp):
        dirs = by_exp[name]
        latest = _RUN_ID.match(dirs[-1].name).group("hash")
        per_seed: dict[int, Path] = {}
        for d in dirs:
            m = _RUN_ID.match(d.name)
            if m.group("hash") == latest:
                per_seed[int(m.group("seed"))] = d  # later (newer) wins
        exp = Experiment(name=name, config_hash=latest)
        for seed in sorted(per_seed):
            d = per_seed[seed]
            metrics = read_json(d / "metrics.json")
            exp.runs.append(Run(d, latest, seed, metrics, _read_csv(d / "per_user.csv"),
                                _read_csv(d / "per_rating.csv")))
        cfg = d / "config.json"
        if cfg.is_file():
            exp.k = int(read_json(cfg).get("eval", {}).get("k", 10))
        out.append(exp)
    return out


# ---- aggregation and tests -----------------------------------------------------------------

def _round(x: float | None, digits: int) -> float | None:
    if x is None or not np.isfinite(x):
        return None
    r = round(float(x), digits)
    return 0.0 if r == 0 else r  # no "-0.0"


def wilcoxon_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples ``x`` and ``y``.

    Zero differences are dropped (Wilcoxon's convention); when every difference is zero the two
    are identical and p = 1. Fewer than one non-zero pair also gives p = 1.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    d = d[np.isfinite(d)]
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: dict) -> dict:
    """Holm-Bonferroni adjusted p-values (step-down), same keys; ties resolved by key order."""
    items = sorted(pvalues.items(), key=lambda kv: (kv[1], str(kv[0])))
    m = len(items)
    out, running = {}, 0.0
    for i, (key, p) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[key] = running
    return out


def _paired_per_user(exp: Experiment, col: str, a: str, b: str):
    """Per-user values of models a and b paired by (seed, user)."""
    import pandas as pd

    xs, ys = [], []
    for r in exp.runs:
        pu = r.per_user
        if pu is None or col not in pu or "model" not in pu:
            return None
        ua = pu[pu["model"] == a][["user", col]]
        ub = pu[pu["model"] == b][["user", col]]
        if ua.empty or ub.empty:
            return None
        j = pd.merge(ua, ub, on="user", suffixes=("_a", "_b")).sort_values("user")
        xs.append(j[f"{col}_a"].to_numpy(np.float64))
        ys.append(j[f"{col}_b"].to_numpy(np.float64))
    if not xs:
        return None
    return np.concatenate(xs), np.concatenate(ys)


def _paired_per_rating(exp: Experiment, metric: str, a: str, b: str):
    """Per-rating squared (rmse) or absolute (mae) errors of a and b paired by (seed, user, item)."""
    import pandas as pd

    xs, ys = [], []
    for r in exp.runs:
        pr = r.per_rating
        if pr is None or not {"model", "user", "item", "rating", "prediction"} <= set(pr.columns):
            return None
        err = pr["prediction"] - pr["rating"]
        pr = pr.assign(e=err ** 2 if metric == "rmse" else err.abs())
        ea = pr[pr["model"] == a][["user", "item", "e"]]
        eb = pr[pr["model"] == b][["user", "item", "e"]]
        if ea.empty or eb.empty:
            return None
        j = pd.merge(ea, eb, on=["user", "item"], suffixes=("_a", "_b")).sort_values(["user", "item"])
        xs.append(j["e_a"].to_numpy(np.float64))
        ys.append(j["e_b"].to_numpy(np.float64))
    return np.concatenate(xs), np.concatenate(ys)


def _paired_per_seed(exp: Experiment, metric: str, a: str, b: str):
    xs, ys = [], []
    for r in exp.runs:
        ma, mb = r.metrics["models"].get(a, {}), r.metrics["models"].get(b, {})
        if ma.get(metric) is not None and mb.get(metric) is not None:
            xs.append(float(ma[metric]))
            ys.append(float(mb[metric]))
    return np.array(xs), np.array(ys)


@dataclass
class Cell:
    n: int
    mean: float | None
    std: float | None
    best: bool = False
    p_value: float | None = None  # Holm-adjusted, against the best model
    significant: bool = False


def aggregate(exp: Experiment) -> tuple[list[str], dict, dict]:
    """Mean ± std over seeds, the best model per quality metric and the paired tests.

    Returns:
        (columns, cells, notes): ``cells[(model, column)]`` is a ``Cell`` (absent metrics are not
        in it); ``notes[column]`` says how the column was tested.
    """
    k = exp.k
    names = exp.models
    values: dict = {n: {} for n in names}
    for r in exp.runs:
        for n, m in r.metrics.get("models", {}).items():
            for key, v in m.items():
                values[n].setdefault(key, []).append(v)
    cols = columns_for(values, k)
    cells = {}
    for n in names:
        for c in cols:
            vals = _finite(values[n].get(c, []))
            if not vals:
                continue
            d = _digits(c)
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            cells[(n, c)] = Cell(len(vals), _round(float(np.mean(vals)), d), _round(std, d))
    notes = {}
    quality = [q.format(k=k) for q in QUALITY]
    per_user = {m.format(k=k): c.format(k=k) for m, c in PER_USER.items()}
    for c in cols:
        if c not in quality:
            continue
        have = [n for n in names if (n, c) in cells]
        if not have:
            continue
        # the best by the unrounded mean; ties broken by config order
        raw = {n: float(np.mean(_finite(values[n][c]))) for n in have}
        sign = 1.0 if c.split("@")[0] in LOWER_IS_BETTER else -1.0
        best = min(have, key=lambda n: (sign * raw[n], names.index(n)))
        cells[(best, c)].best = True
        others = [n for n in have if n != best]
        if not others:
            continue
        pvals, how = {}, None
        for n in others:
            pair = None
            if c in per_user:
                pair = _paired_per_user(exp, per_user[c], best, n)
                how = "per-user values paired by (seed, user)"
            elif c in PER_RATING:
                pair = _paired_per_rating(exp, c, best, n)
                how = "per-rating errors paired by (seed, user, item)"
                if pair is None:
                    if len(exp.runs) >= MIN_SEEDS_PER_SEED_TEST:
                        pair = _paired_per_seed(exp, c, best, n)
                        how = "per-seed values paired by seed (no per-rating errors saved)"
                    else:
                        how = None
            if pair is not None and len(pair[0]):
                pvals[n] = wilcoxon_p(*pair)
        if how is None or not pvals:
            notes[c] = ("not tested: per-rating errors not saved and fewer than "
                        f"{MIN_SEEDS_PER_SEED_TEST} seeds" if c in PER_RATING else "not tested")
            continue
        notes[c] = how
        for n, p in holm(pvals).items():
            cells[(n, c)].p_value = float(f"{p:.3g}")
            cells[(n, c)].significant = p < ALPHA
    return cols, cells, notes


# ---- writing -------------------------------------------------------------------------------

def _cell_text(cell: Cell | None, col: str) -> str:
    if cell is None or cell.mean is None:
        return "—"
    d = _digits(col)
    s = f"{cell.mean:.{d}f}" if cell.std is None else f"{cell.mean:.{d}f} ± {cell.std:.{d}f}"
    if cell.best:
        s = f"**{s}**"
    if cell.significant:
        s += f" {MARK}"
    return s


def experiment_markdown(exp: Experiment) -> str:
    """The Markdown table of one experiment (see the module docstring)."""
    cols, cells, notes = aggregate(exp)
    first = exp.runs[0].metrics
    lines = [f"# {exp.name}", "",
             f"Data set: {first.get('dataset', '?')}; split: {_split_kind(first.get('split', '?'))}; "
             f"seeds: {', '.join(map(str, exp.seeds))} ({len(exp.seeds)} run(s)); config hash: "
             f"{exp.config_hash}.", ""]
    lines.append("| model | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for n in exp.models:
        lines.append(f"| {n} | " + " | ".join(_cell_text(cells.get((n, c)), c) for c in cols) + " |")
    lines.append("")
    n = len(exp.runs)
    lines.append(f"Mean over {n} seed(s)" + (" ± sample standard deviation" if n > 1 else "") +
                 "; — = the metric does not apply to the model. **Bold**: best model of the column. "
                 f"{MARK}: differs from the best by a two-sided Wilcoxon signed-rank test, "
                 f"Holm-corrected over the column's models, p < {ALPHA}.")
    if notes:
        lines.append("")
        lines.append("Tests: " + "; ".join(f"{c}: {how}" for c, how in notes.items()) + ".")
    users = [r.metrics["models"][m].get("users_evaluated") for r in exp.runs for m in r.metrics["models"]]
    users = [u for u in users if u is not None]
    if users:
        lines.append("")
        lines.append(f"Users evaluated per run: {min(users)}–{max(users)}.")
    return "\n".join(lines) + "\n"


def _split_kind(split: str) -> str:
    # "random(test=0.2,val=0.1,seed=0)" -> drop the seed, the seeds are listed separately
    return re.sub(r",?seed=-?\d+", "", str(split)).replace("()", "")


def experiment_csv(exp: Experiment) -> str:
    """The long-form CSV of one experiment: one row per (model, metric)."""
    cols, cells, _ = aggregate(exp)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "model", "metric", "n_seeds", "mean", "std", "best", "p_value_vs_best",
                "significant"])
    for n in exp.models:
        for c in cols:
            cell = cells.get((n, c))
            if cell is None:
                continue
            w.writerow([exp.name, n, c, cell.n, _num(cell.mean), _num(cell.std), int(cell.best),
                        _num(cell.p_value), int(cell.significant) if cell.p_value is not None else ""])
    return buf.getvalue()


def verify_markdown(exp: Experiment) -> str | None:
    """The verification table of ``exp`` from its runs' ``verify.json`` (see the module docstring),
    or None when none of its runs was verified."""
    from research.results import read_json

    reports = [(r.seed, read_json(r.path / "verify.json")) for r in exp.runs if (r.path / "verify.json").is_file()]
    if not reports:
        return None
    lines = [f"# {exp.name} — verification", "",
             f"`animerec verify`: every model of the `{exp.name}` run (seed(s) "
             f"{', '.join(str(s) for s, _ in reports)}) folded in, without refitting, for the users of a "
             "later file; each user's usable rows divided at random into a history (folded in) and "
             "targets (scored); candidates: anime with a row in the run's train + validation; the "
             "history's anime excluded.", ""]
    for seed, rep in reports:
        st = rep["manifest"]["verify"]
        dropped = " + ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in sorted(st["dropped"].items()))
        lines.append(f"- run seed {seed}: `{rep['file']}` ({rep['source']}) in `{Path(rep['raw']).name}/`, "
                     f"division seed {rep['seed']}, history {rep['fold_in_fraction']:g}, "
                     f"min rows {rep['min_rows']}: {st['users']:,} users folded in "
                     f"({st['users_below_min_rows']:,} below min rows left out); rows: {st['rows_in']:,} read = "
                     f"{st['history']:,} history + {st['targets']:,} targets" + (f" + {dropped}" if dropped else "")
                     + ".")
    lines += ["", markdown_table([rep["models"] for _, rep in reports], exp.k).rstrip(), "",
              f"Mean over {len(reports)} verification(s)" + (" ± sample standard deviation" if len(reports) > 1
                                                             else "") + "; — = the metric does not apply."]
    skipped = {}
    for _, rep in reports:
        skipped.update(rep.get("skipped") or {})
    if skipped:
        lines += ["", "Not measured (cannot fold a user in): " + "; ".join(f"{n}: {why}" for n, why in skipped.items())
                  + "."]
    return "\n".join(lines) + "\n"


def _num(x) -> str:
    return "" if x is None else repr(float(x))


# ---- searches: every trial of a tuning.json ---------------------------------------------------

def searches(results_dir: Path, experiment: str | None = None) -> dict[str, list[dict]]:
    """The ``tuning.json`` of every search under ``results_dir/runs`` (or the one experiment's), the
    newest per seed, by experiment name; a file that does not parse is left out (read, never run).
    A search whose tuning folder is gone is read from its committed archive under
    ``results_dir/searches`` (``research.tuning.archive``), so a fresh machine rebuilds the trials tables."""
    from research.results import read_json, runs_root

    root = runs_root(results_dir)
    pattern = f"{experiment or '*'}/tune-*/tuning.json"
    files = sorted(root.glob(pattern)) if root.is_dir() else []
    live = {f.parent.relative_to(root) for f in files}
    kept = Path(results_dir) / "searches"
    archived = sorted(kept.glob(pattern)) if kept.is_dir() else []
    files += [f for f in archived if f.parent.relative_to(kept) not in live]
    found: dict[str, dict[int, tuple[float, dict]]] = {}
    for f in files:
        try:
            meta = read_json(f)
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("trials"), list):
            continue
        seed = int(meta.get("seed", 0) or 0)
        per_seed = found.setdefault(f.parent.parent.name, {})
        when = meta.get("updated")  # written into tuning.json; an archive's mtime is its checkout's
        when = float(when) if isinstance(when, (int, float)) else f.stat().st_mtime
        if seed not in per_seed or when > per_seed[seed][0]:
            per_seed[seed] = (when, meta)
    return {name: [per_seed[s][1] for s in sorted(per_seed)] for name, per_seed in sorted(found.items())}


def _trial_value(v) -> str:
    return "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def trials_markdown(name: str, metas: list[dict]) -> str:
    """One table per search (seed): every trial in the order it ran, its hyperparameters, the
    validation objective, epochs and seconds; the best trial in bold, the defaults' trial marked.
    Written for every search, also one without a final refit (no ``metrics.json``, no harness table)."""
    lines = [f"# {name}: the search's trials", ""]
    for meta in metas:
        space = list((meta.get("space") or {}).keys())
        best = (meta.get("best") or {}).get("trial_id")
        objective = meta.get("objective", "objective")
        lines += [f"Seed {meta.get('seed', 0)}: {meta.get('model', '?')} ({meta.get('type', '?')}), "
                  f"oracle {meta.get('oracle', '?')}, {meta.get('n_completed', 0)} of "
                  f"{meta.get('max_trials', '?')} trials completed ({meta.get('status', '?')}); objective "
                  f"{objective} on {meta.get('scored_on', 'validation')} ({meta.get('direction', '?')}); "
                  f"data {meta.get('dataset', '?')}, split {meta.get('split', '?')}; fixed "
                  f"{json.dumps(meta.get('fixed_params') or {}, sort_keys=True)}.", ""]
        lines.append("| trial | status | " + " | ".join(space) + f" | {objective} | best epoch / epochs | seconds |")
        lines.append("|---|---|" + "---:|" * (len(space) + 3))
        for t in meta["trials"]:
            hp = t.get("hyperparameters") or {}
            m = t.get("metrics") or {}
            epochs = (f"{m['best_epoch']} / {m['fit_epochs']}" if "best_epoch" in m and "fit_epochs" in m
                      else _trial_value(m.get("fit_epochs")))
            value = _trial_value(t.get("objective"))
            tid = str(t.get("trial_id", "?")) + (" (defaults)" if t.get("is_default") else "")
            if t.get("trial_id") == best:
                value, tid = f"**{value}**", f"**{tid}**"
            lines.append(f"| {tid} | {t.get('status', '?')} | "
                         + " | ".join(_trial_value(hp.get(k)) for k in space)
                         + f" | {value} | {epochs} | {_trial_value(t.get('seconds'))} |")
        lines += ["", f"Search time {_trial_value(meta.get('search_seconds'))} s, peak RSS "
                      f"{_trial_value(meta.get('max_rss_mb'))} MB. Values are the validation part's: the "
                      f"test part is never seen by a search.", ""]
    return "\n".join(lines)


def build(experiment: str | None = None, results_dir: Path | None = None,
          figures: bool = True) -> list[Path]:
    """Rebuild ``results/tables/<experiment>.{md,csv}`` and the figures from the run folders.

    Args:
        experiment: one experiment name, or None for every experiment with finished runs.
        results_dir: the results folder (default: ``results/`` in the repository).
        figures: also draw the figures (``research.figures``).

    Returns:
        The files written.
    """
    from research.config import REPO_ROOT
    from research.errors import ConfigError
    from research.results import atomic_write_text

    results_dir = Path(results_dir) if results_dir is not None else REPO_ROOT / "results"
    exps = gather(results_dir, experiment)
    found = searches(results_dir, experiment)
    if experiment and not exps and not found:
        raise ConfigError(f"no finished runs or searches of experiment {experiment!r} under {results_dir / 'runs'}")
    written = []
    for name, metas in found.items():
        tm = results_dir / "tables" / f"{name}_trials.md"
        atomic_write_text(tm, trials_markdown(name, metas))
        written.append(tm)
    for exp in exps:
        md = results_dir / "tables" / f"{exp.name}.md"
        atomic_write_text(md, experiment_markdown(exp))
        cs = results_dir / "tables" / f"{exp.name}.csv"
        atomic_write_text(cs, experiment_csv(exp))
        written += [md, cs]
        ver = verify_markdown(exp)
        if ver is not None:
            vm = results_dir / "tables" / f"{exp.name}_verify.md"
            atomic_write_text(vm, ver)
            written.append(vm)
        if figures:
            from research import figures as F

            written += F.experiment_figures(exp, aggregate(exp)[1], results_dir / "figures", mark=MARK)
    return written


__all__ = ["markdown_table", "build", "gather", "searches", "trials_markdown", "aggregate", "experiment_markdown",
           "experiment_csv", "wilcoxon_p", "holm"]
