"""Figures (PNG, matplotlib's Agg backend): the leaderboard, Keras loss curves, the K-means elbow,
and the small helpers the data report (``research.eda``) uses.

Every function writes one file and returns its path. Figures are drawn in a fixed order with fixed
colours so the same inputs give the same picture; PNG metadata carry no date.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from research.eval.metrics import metric

PNG_META = {"Software": None}  # no version string: the same inputs give the same bytes


def plt():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, atomically) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", metadata=PNG_META)
    plt().close(fig)
    tmp.replace(path)
    return path


# ---- leaderboard -----------------------------------------------------------------------------

def leaderboard(exp, cells: dict, out: Path, metrics=("ndcg@{k}", "rmse"), mark: str = "†") -> Path | None:
    """Bar chart of mean ± std over seeds per model for each of ``metrics`` (one panel each).

    Args:
        exp: a ``research.report.Experiment``.
        cells: ``research.report.aggregate(exp)[1]``.
        out: the PNG path.
        metrics: metric names (``{k}`` is filled in); panels with no model are left out.
        mark: the table's significance mark (``research.report.MARK``), put after worse models.
    """
    panels = []
    for m in metrics:
        m = m.format(k=exp.k)
        rows = [(n, cells[(n, m)]) for n in exp.models if (n, m) in cells and cells[(n, m)].mean is not None]
        if rows:
            panels.append((m, rows))
    if not panels:
        return None
    p = plt()
    fig, axes = p.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.45 * max(len(r) for _, r in panels) + 1.6),
                           squeeze=False)
    for ax, (m, rows) in zip(axes[0], panels):
        means = np.array([c.mean for _, c in rows], dtype=float)
        stds = np.array([c.std or 0.0 for _, c in rows], dtype=float)
        colors = ["#1f77b4" if c.best else ("#bbbbbb" if c.significant else "#7fa7cf") for _, c in rows]
        y = np.arange(len(rows))[::-1]
        ax.barh(y, means, xerr=stds, color=colors, capsize=3)
        ax.set_yticks(y, [n + (f" {mark}" if c.significant else "") for n, c in rows])
        lower = not metric(m).higher_is_better
        ax.set_xlabel(f"{m} ({'lower' if lower else 'higher'} is better)")
        if lower:
            lo = float(np.min(means - stds))
            ax.set_xlim(max(0.0, lo - 0.1 * abs(lo)), float(np.max(means + stds)) * 1.02)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{exp.name}: mean ± std over {len(exp.runs)} seed(s); dark = best, {mark} = significantly worse")
    return save(fig, out)


# ---- Keras training curves -------------------------------------------------------------------

def _history_from_json(path: Path) -> dict | None:
    try:
        h = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(h, dict) and "history" in h and isinstance(h["history"], dict):
        h = h["history"]
    if not isinstance(h, dict):
        return None
    return {str(k): [float(x) for x in v] for k, v in h.items() if isinstance(v, list) and v}


def _history_from_events(log_dir: Path) -> dict | None:
    """Epoch scalars from TensorBoard event files written by ``tf.keras.callbacks.TensorBoard``:
    ``train/`` and ``validation/`` sub-folders with tags ``epoch_<metric>``."""
    parts = [("train", ""), ("validation", "val_")]
    if not any((log_dir / sub).is_dir() for sub, _ in parts):
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out: dict = {}
    for sub, prefix in parts:
        d = log_dir / sub
        if not d.is_dir():
            continue
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags.get("scalars", []):
            if tag.startswith("epoch_"):
                ev = sorted(acc.Scalars(tag), key=lambda e: e.step)
                out[prefix + tag[len("epoch_"):]] = [float(e.value) for e in ev]
        for tag in tags.get("tensors", []):
            if tag.startswith("epoch_") and prefix + tag[len("epoch_"):] not in out:
                ev = sorted(acc.Tensors(tag), key=lambda e: e.step)
                out[prefix + tag[len("epoch_"):]] = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in ev]
    return out or None


def load_history(run_dir: Path, model: str) -> dict | None:
    """A Keras model's per-epoch history in a run folder, as ``{"loss": [...], "val_loss": [...], ...}``.

    Looked for, in order: ``models/<model>/keras_model.json`` (the Keras models' saved state, its
    ``"history"`` key), ``models/<model>/history.json``, ``logs/<model>/history.json`` (a
    ``History.history`` dict, optionally under a ``"history"`` key), then the TensorBoard event
    files under ``logs/<model>/`` (``train/`` and ``validation/``). None when there is none.
    """
    run_dir = Path(run_dir)
    for p in (run_dir / "models" / model / "keras_model.json", run_dir / "models" / model / "history.json",
              run_dir / "logs" / model / "history.json"):
        if p.is_file():
            h = _history_from_json(p)
            if h:
                return h
    log_dir = run_dir / "logs" / model
    return _history_from_events(log_dir) if log_dir.is_dir() else None


def loss_curves(exp, out: Path) -> Path | None:
    """Training (solid) and validation (dashed) loss per epoch of every model with a history, one
    panel per model and one line per seed; a second row shows MAE / RMSE curves when logged."""
    hist = {}
    for n in exp.models:
        per_seed = [(r.seed, load_history(r.path, n)) for r in exp.runs]
        per_seed = [(s, h) for s, h in per_seed if h and "loss" in h]
        if per_seed:
            hist[n] = per_seed
    if not hist:
        return None
    # second row: each model's own rating-error curve (RecommenderNet logs mae, others rmse)
    extras = {}
    for n, per_seed in hist.items():
        for key in ("mae", "mae_scaled", "rmse", "root_mean_squared_error", "mean_absolute_error"):
            if any(key in h for _, h in per_seed):
                extras[n] = key
                break
    p = plt()
    from matplotlib.ticker import MaxNLocator

    rows = 2 if extras else 1
    fig, axes = p.subplots(rows, len(hist), figsize=(4.5 * len(hist), 3.4 * rows), squeeze=False)
    cmap = p.get_cmap("tab10")
    for j, (n, per_seed) in enumerate(hist.items()):
        for row in range(rows):
            ax = axes[row][j]
            key = "loss" if row == 0 else extras.get(n)
            if key is None:
                ax.set_axis_off()
                continue
            for i, (seed, h) in enumerate(per_seed):
                for k, style, lab in ((key, "-", "train"), (f"val_{key}", "--", "validation")):
                    if k in h:
                        ax.plot(np.arange(1, len(h[k]) + 1), h[k], style, color=cmap(i % 10),
                                label=f"{lab}, seed {seed}")
            ax.set_title(f"{n}: {key}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if row == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{exp.name}: training (solid) and validation (dashed) curves")
    fig.tight_layout()
    return save(fig, out)


# ---- K-means elbow ---------------------------------------------------------------------------

def elbow(ks, wcss, silhouette, out: Path, wcss_std=None, silhouette_std=None, chosen: int | None = None,
          title: str = "K-means elbow") -> Path:
    """WCSS (left axis) and silhouette (right axis) against the number of clusters k."""
    p = plt()
    fig, ax = p.subplots(figsize=(6.5, 4))
    ks = np.asarray(ks)
    ax.errorbar(ks, wcss, yerr=wcss_std, marker="o", color="#1f77b4", capsize=3, label="WCSS")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("within-cluster sum of squares", color="#1f77b4")
    ax2 = ax.twinx()
    ax2.errorbar(ks, silhouette, yerr=silhouette_std, marker="s", color="#d62728", capsize=3,
                 label="silhouette")
    ax2.set_ylabel("mean silhouette", color="#d62728")
    if chosen is not None:
        ax.axvline(chosen, color="grey", linestyle=":", label=f"chosen k = {chosen}")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return save(fig, out)


# ---- simple charts for the data report ---------------------------------------------------------

def bar(labels, values, out: Path, title: str, xlabel: str = "", ylabel: str = "", horizontal: bool = False,
        log: bool = False) -> Path:
    p = plt()
    n = len(labels)
    if horizontal:
        fig, ax = p.subplots(figsize=(7, 0.22 * n + 1.2))
        y = np.arange(n)[::-1]
        ax.barh(y, values, color="#1f77b4")
        ax.set_yticks(y, [str(x) for x in labels], fontsize=7 if n > 25 else 9)
        if log:
            ax.set_xscale("log")
    else:
        fig, ax = p.subplots(figsize=(max(5, 0.5 * n + 2), 3.6))
        ax.bar(np.arange(n), values, color="#1f77b4")
        ax.set_xticks(np.arange(n), [str(x) for x in labels])
        if log:
            ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x" if horizontal else "y", alpha=0.3)
    return save(fig, out)


def long_tail(per_user: np.ndarray, per_item: np.ndarray, out: Path, title: str = "") -> Path:
    """Ratings per user and per anime, sorted descending against rank, log-log."""
    p = plt()
    fig, axes = p.subplots(1, 2, figsize=(10, 3.8))
    for ax, counts, what in ((axes[0], per_user, "user"), (axes[1], per_item, "anime")):
        c = np.sort(np.asarray(counts))[::-1]
        c = c[c > 0]
        if len(c):
            ax.loglog(np.arange(1, len(c) + 1), c, color="#1f77b4")
        ax.set_xlabel(f"{what} rank")
        ax.set_ylabel(f"ratings per {what}")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title or "long tail")
    fig.tight_layout()
    return save(fig, out)


def experiment_figures(exp, cells: dict, out_dir: Path, mark: str = "†") -> list[Path]:
    """The figures of one experiment for ``animerec report``: leaderboard and loss curves.
    ``cells``: ``research.report.aggregate(exp)[1]`` (passed in: figures never import the report)."""
    written = []
    p = leaderboard(exp, cells, Path(out_dir) / f"{exp.name}_leaderboard.png", mark=mark)
    if p:
        written.append(p)
    p = loss_curves(exp, Path(out_dir) / f"{exp.name}_loss_curves.png")
    if p:
        written.append(p)
    return written


__all__ = ["leaderboard", "loss_curves", "load_history", "elbow", "bar", "long_tail", "experiment_figures"]
