"""``animerec verify``: a run's models checked on users of a later file (the study's verification).

The study trained on the 2020 MyAnimeList database and checked its models on users' lists of
August 2022. Here: load a later ratings file in one of the run's source schemas (mal2020
``animelist.csv`` with ``score`` / ``watching_status``, or ``rating_complete.csv``; score 0 =
watched without a score, kept as a watched interaction), keep the rows whose anime the run's
models know, divide each user's rows at random into a *history* (``fold_in_fraction``, as
``split.kind = "users"`` divides a held-out user's rows) and *targets*, fold every model of the
run in from the histories (``Recommender.score_history``, no refitting) and score the targets with
the harness's held-out-user evaluation (``evaluate_heldout``: candidates = anime with a row in
the run's train + validation, each user's history anime excluded, every target anime relevant or
those rated at or above ``eval.relevance_threshold``; the metrics of ``research.eval.metrics``).

Every later user is a new user to the models, also one whose MAL id was in the training data
(a returning user's later list is scored from that list alone). Rows are counted, never lost
silently: the loader's own manifest (rows read = kept + dropped per reason, per file), then this
stage's, which balances too::

    rows in (the loader's kept rows) = history + targets
        + anime not in the run's catalogue + anime without a training interaction
        + rows of users with fewer than ``min_rows`` usable rows

``verify.json`` (written into the run folder) holds the metrics per model, the models that could
not fold in (and why), the manifest, the seed and the arguments, and the wall seconds per stage
(``timing``: reading the later file, everything before the first model, each model's loading and
its fold-in + scoring, and the total beyond loading models; ``animerec bench verify`` reads them);
the same file with the same seed gives identical numbers.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from research.errors import ConfigError

#: the reasons this stage drops a row, in the manifest's order
DROP_REASONS = ("anime_not_in_run_catalogue", "anime_without_training_interaction", "user_below_min_rows")


def fold_in_parts(user: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean history mask over rows grouped by ``user``, seeded: ``split.kind = "users"``'s rule
    (``research.data.splits.history_rows``)."""
    from research.data.splits import history_rows

    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"verify: fold_in_fraction must be in (0, 1), got {fraction}")
    return history_rows(user, fraction, np.random.default_rng(seed))


def later_users(frame, meta, seen, min_rows: int):
    """The later file's rows as Interactions over a new user vocabulary and the run's item
    vocabulary, and this stage's drop counts (see the module docstring)."""
    from research.data.interactions import Interactions, Meta, Vocab

    item = meta.items.index(frame["item"].to_numpy(), missing="mask")
    trained = np.zeros(meta.n_items, bool)
    trained[np.unique(seen.indices)] = True
    known = item >= 0
    usable = known & trained[np.where(known, item, 0)]
    dropped = {"anime_not_in_run_catalogue": int((~known).sum()),
               "anime_without_training_interaction": int((known & ~usable).sum())}
    users_raw = frame["user"].to_numpy()[usable]
    uniq, inv, counts = np.unique(users_raw, return_inverse=True, return_counts=True)
    keep = counts[inv] >= min_rows
    dropped["user_below_min_rows"] = int((~keep).sum())
    users_below = int((counts < min_rows).sum())
    rating = frame["rating"].to_numpy(dtype=np.float32)[usable][keep]
    vocab = Vocab(users_raw[keep])
    data = Interactions(vocab.index(users_raw[keep]), item[usable][keep], rating,
                        Meta(vocab, meta.items, meta.item_table, name=f"{meta.name} (later users)"))
    return data, dropped, users_below


def verify(run_dir, raw_dir, *, file: str = "", source: str = "", seed: int = 0, min_rows: int = 5,
           fold_in_fraction: float = 0.8, models: list[str] | None = None, allow_pickle: bool = False,
           quiet: bool = False) -> dict:
    """Verify every model of ``run_dir`` on the users of a later file; returns what it writes to
    ``<run_dir>/verify.json`` (see the module docstring). ``file``: the ratings file in
    ``raw_dir`` ("" = the source's default); ``source``: its schema ("" = the run's source)."""
    from research import config as C
    from research import experiment
    from research import results as R
    from research.data import sources
    from research.data.interactions import Interactions
    from research.eval.harness import evaluate_heldout
    from research.models.base import NotSupported
    from research.report import markdown_table

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if min_rows < 2:
        raise ConfigError(f"verify: --min-rows must be >= 2 (a history and a target), got {min_rows}")
    meta, metrics, cfg = experiment.load_run(run_dir)
    seen = experiment.load_seen(run_dir)
    data_cfg = C.DataConfig(**{k: v for k, v in cfg.get("data", {}).items()
                               if k in C.DataConfig.__dataclass_fields__})
    source = source or data_cfg.source
    if source not in C.RAW_SOURCES:
        raise ConfigError(f"verify: --source must be one of {', '.join(C.RAW_SOURCES)}, got {source!r}")
    # the later file is read whole, as watched-with-or-without-score rows: no row filters here
    data_cfg = replace(data_cfg, source=source, path=str(raw_dir), ratings=file, catalogue="", synopsis="",
                       unrated="keep", max_rows=0, min_user_ratings=0, fallback_to_synth=False)
    t_read = time.perf_counter()
    frame, _, load_manifest = sources.load(source, Path(raw_dir), data_cfg)
    read_s = time.perf_counter() - t_read
    data, dropped, users_below = later_users(frame, meta, seen, min_rows)
    history_mask = fold_in_parts(data.user, fold_in_fraction, seed)
    history, target = data.take(history_mask), data.take(~history_mask)
    stage = {"rows_in": int(len(frame)), "history": int(len(history)), "targets": int(len(target)),
             "dropped": dropped, "users": int(data.n_users), "users_below_min_rows": users_below}
    if stage["rows_in"] != stage["history"] + stage["targets"] + sum(dropped.values()):
        raise AssertionError(f"verify manifest does not balance: {stage}")
    if not len(target):
        raise ConfigError(f"verify: no user of {raw_dir} has {min_rows} rows of anime the run knows "
                          f"(dropped: {dropped})")
    # the run's train + validation rows, over the later data's meta: they give the candidates (anime
    # with a row) and novelty's popularity shares (rows per anime / training users), so their user
    # column keeps the run's user indices (only their count matters; never looked up in data.meta)
    coo = seen.tocoo()
    known = Interactions(coo.row, coo.col, np.ones(coo.nnz, np.float32), data.meta)

    eval_cfg = cfg.get("eval", {})
    k = int(eval_cfg.get("k", 10))
    names = models or list(cfg.get("models", {}))
    unknown = [n for n in names if n not in cfg.get("models", {})]
    if unknown:
        raise ConfigError(f"verify: {run_dir} has no model {unknown[0]!r} (models: {', '.join(cfg['models'])})")
    prepared_s = time.perf_counter() - t0
    out_models, skipped, model_seconds = {}, {}, {}
    for name in names:
        if name not in metrics.get("models", {}):
            skipped[name] = "not measured in the run (no saved model)"
            continue
        t_load = time.perf_counter()
        model = experiment.load_model(run_dir, name, meta, allow_pickle=allow_pickle)
        t_score = time.perf_counter()
        if not quiet:
            print(f"[animerec] verify: folding in {data.n_users} users into {name} ...", file=sys.stderr, flush=True)
        try:
            res = evaluate_heldout(model, known, history, target, k=k,
                                   batch_users=int(eval_cfg.get("batch_users", 1024)),
                                   relevance_threshold=float(eval_cfg.get("relevance_threshold", 0.0)))
        except NotSupported as exc:
            skipped[name] = str(exc)
            continue
        finally:
            model_seconds[name] = {"load": t_score - t_load, "fold_in_and_score": time.perf_counter() - t_score}
        out_models[name] = res.summary
    loading = sum(s["load"] for s in model_seconds.values())
    total = time.perf_counter() - t0
    report = {"run": str(run_dir), "raw": str(raw_dir), "file": file or "(source default)", "source": source,
              "seed": int(seed), "min_rows": int(min_rows), "fold_in_fraction": float(fold_in_fraction),
              "manifest": {"load": load_manifest, "verify": stage}, "models": out_models, "skipped": skipped,
              "seconds": total,
              # wall seconds per stage: reading the run (its data vocabularies and seen matrix) and the
              # later file, dividing it, then per model loading it and folding in + scoring every user
              "timing": {"read_later_file": read_s, "before_models": prepared_s, "models": model_seconds,
                         "beyond_model_loading": total - loading}}
    R.write_json(R.inside(run_dir / "verify.json", run_dir), report)
    if not quiet:
        table = markdown_table([out_models], k)
        print(f"\nverify — {run_dir.name} on {data.n_users} later users of {raw_dir} "
              f"(seed {seed}, history {fold_in_fraction:g})\n\n{table}")
        for name, why in skipped.items():
            print(f"not measured: {name}: {why}")
        print(f"rows: {stage['rows_in']} in = {stage['history']} history + {stage['targets']} targets + "
              f"dropped {dropped}\nwrote {run_dir / 'verify.json'}")
    return report
