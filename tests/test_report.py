"""research.report: tables from fabricated run folders (means, stds, absent metrics, Wilcoxon marks,
determinism) and one tiny real experiment run twice (same seed -> same table)."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from research import report


def _write_run(root: Path, exp: str, h: str, seed: int, models: dict, per_user: pd.DataFrame | None = None,
               per_rating: pd.DataFrame | None = None, finished: bool = True) -> Path:
    d = root / "runs" / exp / f"{h}-seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"experiment": exp, "dataset": "toy", "split":
                                                f"random(test=0.2,val=0.1,seed={seed})", "seed": seed,
                                                "models": models}))
    (d / "config.json").write_text(json.dumps({"eval": {"k": 10}, "seed": seed}))
    (d / "status.json").write_text(json.dumps({"status": "finished" if finished else "running"}))
    if per_user is not None:
        per_user.to_csv(d / "per_user.csv", index=False)
    if per_rating is not None:
        per_rating.to_csv(d / "per_rating.csv", index=False)
    return d


def _per_user(seed: int, users: int, ndcg_a: np.ndarray, ndcg_b: np.ndarray) -> pd.DataFrame:
    rows = []
    for name, vals in (("a", ndcg_a), ("b", ndcg_b)):
        rows.append(pd.DataFrame({"user": np.arange(users), "n_relevant": 3, "precision@10": vals / 2,
                                  "recall@10": vals, "ndcg@10": vals, "ap@10": vals, "hit@10": (vals > 0) * 1.0,
                                  "novelty@10": 5.0, "model": name}))
    return pd.concat(rows, ignore_index=True)


def test_means_stds_and_absent(tmp_path):
    _write_run(tmp_path, "e", "abc", 0, {"a": {"rmse": 1.0, "ndcg@10": 0.30, "fit_seconds": 1.0},
                                         "b": {"ndcg@10": 0.10, "fit_seconds": 3.0}, "c": {"rmse": 1.5}})
    _write_run(tmp_path, "e", "abc", 1, {"a": {"rmse": 1.2, "ndcg@10": 0.34, "fit_seconds": 2.0},
                                         "b": {"ndcg@10": 0.14, "fit_seconds": 5.0}, "c": {"rmse": 1.6}})
    # a finished run of an older config hash and an unfinished run are both ignored
    old = _write_run(tmp_path, "e", "old", 0, {"a": {"rmse": 9.0}})
    import os
    os.utime(old / "metrics.json", (1, 1))
    _write_run(tmp_path, "e", "abc", 2, {"a": {"rmse": 99.0}}, finished=False)

    paths = report.build("e", results_dir=tmp_path, figures=False)
    md = (tmp_path / "tables" / "e.md").read_text()
    assert set(paths) == {tmp_path / "tables" / "e.md", tmp_path / "tables" / "e.csv"}
    row_a = next(line for line in md.splitlines() if line.startswith("| a |"))
    row_b = next(line for line in md.splitlines() if line.startswith("| b |"))
    # rmse: mean 1.1, sample std sqrt(0.02) = 0.1414; a is best (only model) -> bold
    assert "**1.1000 ± 0.1414**" in row_a
    assert "**0.3200 ± 0.0283**" in row_a  # ndcg mean 0.32, std 0.02*sqrt2
    assert "1.50 ± 0.71" in row_a  # fit_seconds: not a quality metric, never bold
    cells_b = [c.strip() for c in row_b.strip("|").split("|")]
    assert cells_b[1] == "—"  # b has no rmse: absent, not 0
    assert cells_b[2] == "0.1200 ± 0.0283"  # no per_user.csv -> untested, no mark
    assert "seeds: 0, 1 (2 run(s))" in md
    csv = pd.read_csv(tmp_path / "tables" / "e.csv")
    r = csv[(csv.model == "a") & (csv.metric == "rmse")].iloc[0]
    assert r["n_seeds"] == 2 and r["mean"] == pytest.approx(1.1) and r["std"] == 0.1414  # rounded to the printed precision
    assert not ((csv.model == "b") & (csv.metric == "rmse")).any()
    # two seeds and no per-rating errors: rmse is not tested, and says so
    assert "rmse: not tested: per-rating errors not saved" in md and "ndcg@10: not tested" in md
    assert "| c | 1.5500 ± 0.0707 |" in md


def test_wilcoxon_marks_dominating_but_not_identical(tmp_path):
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        base = rng.uniform(0.0, 0.5, 40)
        # "a" beats "b" by a clear margin for every user; "c" equals "a" exactly
        pu = _per_user(seed, 40, base + 0.3, base)
        pu = pd.concat([pu, pu[pu.model == "a"].assign(model="c")], ignore_index=True)
        models = {m: {"ndcg@10": float(pu[pu.model == m]["ndcg@10"].mean())} for m in ("a", "b", "c")}
        _write_run(tmp_path, "w", "h1", seed, models, pu)
    exp = report.gather(tmp_path, "w")[0]
    cols, cells, notes = report.aggregate(exp)
    assert cells[("a", "ndcg@10")].best
    assert cells[("b", "ndcg@10")].significant and cells[("b", "ndcg@10")].p_value < 1e-6
    assert not cells[("c", "ndcg@10")].significant and cells[("c", "ndcg@10")].p_value == 1.0
    md = report.experiment_markdown(exp)
    row_b = next(line for line in md.splitlines() if line.startswith("| b |"))
    row_c = next(line for line in md.splitlines() if line.startswith("| c |"))
    assert report.MARK in row_b and report.MARK not in row_c
    assert "per-user values paired by (seed, user)" in md


def test_wilcoxon_matches_scipy_and_holm():
    from scipy.stats import wilcoxon

    x = np.array([0.5, 0.2, 0.9, 0.4, 0.7, 0.1, 0.3])
    y = np.array([0.1, 0.25, 0.3, 0.35, 0.2, 0.05, 0.15])
    assert report.wilcoxon_p(x, y) == pytest.approx(wilcoxon(x, y).pvalue)
    assert report.wilcoxon_p(x, x) == 1.0
    # Holm: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) -> 0.03, 0.04, 0.04 (monotone)
    assert report.holm({"a": 0.04, "b": 0.01, "c": 0.02}) == pytest.approx({"b": 0.03, "c": 0.04, "a": 0.04})


def test_rmse_tested_from_per_rating_errors(tmp_path):
    rng = np.random.default_rng(1)
    for seed in (0, 1):
        n = 60
        rating = rng.integers(1, 11, n).astype(float)
        good = rating + rng.normal(0, 0.3, n)
        bad = rating + rng.normal(0, 2.0, n)
        pr = pd.concat([pd.DataFrame({"model": m, "user": np.arange(n) % 7, "item": np.arange(n),
                                      "rating": rating, "prediction": p}) for m, p in (("a", good), ("b", bad))])
        models = {m: {"rmse": float(np.sqrt(((p - rating) ** 2).mean()))} for m, p in (("a", good), ("b", bad))}
        _write_run(tmp_path, "r", "h", seed, models, per_rating=pr)
    exp = report.gather(tmp_path, "r")[0]
    _, cells, notes = report.aggregate(exp)
    assert cells[("a", "rmse")].best and cells[("b", "rmse")].significant
    assert notes["rmse"].startswith("per-rating errors")


def test_byte_identical_twice_and_figures(tmp_path):
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        base = rng.uniform(0, 1, 20)
        pu = _per_user(seed, 20, base, base * 0.5)
        hist = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.85]}
        d = _write_run(tmp_path, "d", "h", seed, {"a": {"rmse": 1.0 + seed / 3, "ndcg@10": float(base.mean())},
                                                  "b": {"ndcg@10": float(base.mean() / 2)}}, pu)
        (d / "models" / "a").mkdir(parents=True)
        (d / "models" / "a" / "history.json").write_text(json.dumps(hist))
    first = report.build(None, results_dir=tmp_path)
    blobs = {p: p.read_bytes() for p in first}
    second = report.build(None, results_dir=tmp_path)
    assert first == second
    assert all(p.read_bytes() == blobs[p] for p in second)
    names = sorted(p.name for p in first)
    assert names == ["d.csv", "d.md", "d_leaderboard.png", "d_loss_curves.png"]


def test_unknown_experiment_is_a_config_error(tmp_path):
    from research.errors import ConfigError

    with pytest.raises(ConfigError, match="no finished runs"):
        report.build("nope", results_dir=tmp_path)


def test_markdown_table_used_by_runner():
    t = report.markdown_table([{"m": {"rmse": 1.0}}, {"m": {"rmse": 2.0}}])
    assert "| m | 1.5000 ± 0.7071 |" in t


def _without_fit_seconds(md: str) -> str:
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    col = [c.strip() for c in lines[header].strip("|").split("|")].index("fit_seconds")
    out = []
    for i, line in enumerate(lines):
        if i >= header and line.startswith("|"):
            cells = line.strip("|").split("|")
            line = "|".join(c for j, c in enumerate(cells) if j != col)
        out.append(line)
    return "\n".join(out)


def test_same_seed_same_table(tmp_path):
    """A tiny synthetic experiment run twice with the same seed writes the same table.md, and the
    report over it is the same too — except fit_seconds, a wall-clock time, which is dropped."""
    from research import config
    from research.experiment import run

    tables, reports = [], []
    for sub in ("a", "b"):
        cfg = config.from_dict({"experiment": "tiny", "seeds": [3], "results_dir": str(tmp_path / sub),
                                "data": {"source": "synth"},
                                "synth": {"users": 60, "items": 80, "ratings_per_user": 15, "seed": 1},
                                "models": {"global_mean": {}, "bias": {}, "popularity": {}}})
        (d,) = run(cfg, quiet=True)
        tables.append(_without_fit_seconds((d / "table.md").read_text()))
        report.build("tiny", results_dir=tmp_path / sub, figures=False)
        # the config hash covers results_dir, which differs between the two folders
        text = (tmp_path / sub / "tables" / "tiny.md").read_text()
        reports.append(re.sub(r"config hash: \w+", "config hash: H", _without_fit_seconds(text)))
    assert tables[0] == tables[1]
    assert reports[0] == reports[1]
    assert " bias |" in tables[0] and "ndcg@10" in tables[0]


def test_a_search_without_a_refit_gets_its_trials_table(tmp_path):
    """A search with ``retrain_on_full = false`` writes no metrics.json: ``report`` still writes its
    trials (hyperparameters, objective, epochs, the best in bold, the defaults marked), newest per
    seed, and passes over a tuning.json that does not parse."""
    def write(folder: str, trials: list, best: str, seed: int = 0) -> Path:
        d = tmp_path / "runs" / "tune_x" / folder
        d.mkdir(parents=True)
        (d / "tuning.json").write_text(json.dumps({
            "seed": seed, "model": "m", "type": "embedding_dot", "oracle": "bayesian", "objective": "rmse",
            "direction": "min", "scored_on": "validation", "max_trials": 3, "n_completed": len(trials),
            "status": "finished", "space": {"dim": {}, "l2": {}}, "fixed_params": {"epochs": 5},
            "trials": trials, "best": {"trial_id": best}, "search_seconds": 12.0, "max_rss_mb": 100.0}))
        return d
    def trial(tid: str, dim: int, value: float, **kw) -> dict:
        return {"trial_id": tid, "status": "COMPLETED", "hyperparameters": {"dim": dim, "l2": 0.5},
                "objective": value, "metrics": {"fit_epochs": 5, "best_epoch": 3}, "seconds": 2.0, **kw}
    write("tune-old-seed0", [trial("0", 8, 0.99)], "0")
    import os
    import time
    os.utime(tmp_path / "runs" / "tune_x" / "tune-old-seed0" / "tuning.json", (time.time() - 100,) * 2)
    write("tune-new-seed0", [trial("0", 16, 0.91, is_default=True), trial("1", 32, 0.87),
                             {"trial_id": "2", "status": "FAILED", "hyperparameters": {"dim": 64}}], "1")
    (tmp_path / "runs" / "tune_x" / "tune-bad-seed1").mkdir()
    (tmp_path / "runs" / "tune_x" / "tune-bad-seed1" / "tuning.json").write_text("{not json")
    written = report.build("tune_x", results_dir=tmp_path, figures=False)
    assert [p.name for p in written] == ["tune_x_trials.md"]
    text = written[0].read_text()
    assert "| 0 (defaults) | COMPLETED | 16 | 0.5 | 0.91 | 3 / 5 | 2 |" in text
    assert "| **1** | COMPLETED | 32 | 0.5 | **0.87** | 3 / 5 | 2 |" in text
    assert "| 2 | FAILED | 64 | — | — | — | — |" in text
    assert "0.99" not in text and "Seed 1" not in text  # the older search of seed 0; the unreadable one
    with pytest.raises(Exception, match="no finished runs or searches"):
        report.build("tune_y", results_dir=tmp_path, figures=False)
    # a fresh machine: no results/runs, the committed archive (results/searches) gives the same table
    import shutil

    kept = tmp_path / "searches" / "tune_x" / "tune-new-seed0"
    kept.mkdir(parents=True)
    shutil.copy(tmp_path / "runs" / "tune_x" / "tune-new-seed0" / "tuning.json", kept / "tuning.json")
    shutil.rmtree(tmp_path / "runs")
    again = report.build("tune_x", results_dir=tmp_path, figures=False)
    assert [p.name for p in again] == ["tune_x_trials.md"] and again[0].read_text() == text
