"""The ``animerec`` command (also ``python -m research``). Thin: parse, call one function, print
where the results went. Errors a user can fix print one line and exit with code 2.

Size: one module because it is the argparse table of every subcommand beside its thin handler;
split, the table would be scattered over files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from research.errors import AnimeRecError, ConfigError


def _config(args):
    from research import config

    return config.load(args.config, getattr(args, "set", None) or [])


def cmd_run(args) -> int:
    import os

    from research import distributed
    from research.experiment import run

    if args.workers:
        if os.environ.get("TF_CONFIG"):
            raise ConfigError("--workers starts its own local cluster: unset TF_CONFIG, or drop --workers")
        _config(args)  # a wrong config fails here, once, not in every worker
        return distributed.launch(distributed.run_argv(args), args.workers)
    cfg = _config(args)
    if distributed.enabled():  # a worker of a tf.distribute cluster (docs/DISTRIBUTED.md)
        cfg = distributed.as_worker(cfg)
    quiet = args.quiet or not distributed.is_chief()
    run(cfg, quiet=quiet, keep_finished=args.keep_finished)
    return 0


def cmd_prepare(args) -> int:
    import dataclasses

    from research.config import DataConfig
    from research.data import prepare

    data_cfg = _config(args).data if args.config else DataConfig(source=args.source)
    changes = {k: v for k, v in (("ratings", args.ratings), ("unrated", args.unrated),
                                 ("min_user_ratings", args.min_user_ratings)) if v is not None}
    data_cfg = dataclasses.replace(data_cfg, **changes)
    out = Path(args.out) if args.out else Path("data/processed") / args.source
    from research import progress

    with progress.Status(f"prepare {args.source}", enabled=progress.enabled(args.quiet), unit="B",
                         poll=progress.file_reader(args.raw)):
        manifest = prepare.prepare(args.source, Path(args.raw), out, data_cfg=data_cfg, chunk_rows=args.chunk_rows)
    for name, f in manifest.get("files", {}).items():
        dropped = ", ".join(f"{k}={v}" for k, v in f.get("rows_dropped", {}).items()) or "none"
        flagged = ", ".join(f"{k}={v}" for k, v in f.get("rows_flagged", {}).items())
        print(f"{name}: read {f['rows_read']}, kept {f['rows_kept']}, dropped {dropped}"
              + (f" (kept but flagged: {flagged})" if flagged else ""))
    print(f"wrote {out}/manifest.json")
    return 0


def cmd_synth(args) -> int:
    import dataclasses

    from research.data import synth

    knobs = {k: v for k, v in (("new_users", args.later_users), ("new_items", args.later_items),
                               ("returning", args.later_returning), ("taste_drift_sd", args.later_taste_drift))
             if v is not None}
    if knobs and not args.later:
        raise ConfigError("--later-* options need --later DIR")
    info = synth.generate(Path(args.out), users=args.users, items=args.items,
                          ratings_per_user=args.ratings_per_user, segments=args.segments,
                          factors=args.factors, unrated_fraction=args.unrated_fraction, seed=args.seed,
                          later=Path(args.later) if args.later else None,
                          later_params=dataclasses.replace(synth.LATER, **knobs))
    later = info.pop("later", None)
    print(f"wrote synthetic mal2020 files to {args.out}: {info}")
    if later:
        print(f"wrote the later snapshot to {args.later}: {later['users']} users ({later['new_users']} new, "
              f"{later['returning_users']} returning), {later['items']} anime ({later['new_items']} new), "
              f"rows {later['rows']}")
    return 0


def cmd_eda(args) -> int:
    from research import eda

    out = eda.run(_config(args))
    print(f"wrote {out}")
    return 0


def cmd_tune(args) -> int:
    import time

    from research import progress, tuning
    from research.experiment import data_roots

    cfg = _config(args)
    name = tuning.tuned_spec(cfg).name
    budget = f"/{cfg.tune.max_trials}" if cfg.tune.oracle != "hyperband" else ""
    reader = progress.file_reader(*data_roots(cfg))
    started: list = []

    def trial(tid, params):  # tune's hook at the start of every trial: the trial on the status line
        started.append(tid)
        shown = int(tid) + 1 if str(tid).isdigit() else tid
        status.t0 = time.monotonic()
        status.update(total=0, label=f"tune {name}: trial {shown}{budget} ({len(started)} this session)",
                      note=", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in params.items() if k in cfg.model(name).space))

    with progress.Status(f"tune {name}: loading the data (and TensorFlow)", enabled=progress.enabled(args.quiet),
                         unit="B", poll=lambda: None if started else reader()) as status:
        out = tuning.tune(cfg, quiet=args.quiet, trial_hook=trial if status.active else None)
    print(f"wrote {out}")
    return 0


def cmd_report(args) -> int:
    from research import report

    for path in report.build(args.experiment):
        print(f"wrote {path}")
    return 0


def cmd_bench(args) -> int:
    from research import bench

    for path in bench.main(args.name, quick=args.quick):
        print(f"wrote {path}")
    return 0


def cmd_tensorboard(args) -> int:
    from research import tb

    return tb.serve(args.target, port=args.port)


def _resolve_run(run: str) -> Path:
    from research.config import REPO_ROOT
    from research.results import find_runs

    p = Path(run)
    for cand in (p, REPO_ROOT / p, REPO_ROOT / "results" / "runs" / p):
        if (cand / "metrics.json").is_file():
            return cand
        if cand.is_dir():  # an experiment folder: its newest finished run
            runs = [d for d in find_runs(cand.parent.parent, cand.name) if d.parent == cand]
            if runs:
                return runs[-1]
    raise ConfigError(f"no run folder at {run!r} (give results/runs/<experiment>/<run-id> or an experiment name)")


def _pick_model(run_dir: Path, metrics: dict, name: str | None, need: str) -> str:
    models = metrics["models"]
    if name:
        if name not in models:
            import difflib

            near = difflib.get_close_matches(name, list(models), n=1)
            raise ConfigError(f"run has no model {name!r}" + (f" (did you mean {near[0]!r}?)" if near else
                                                              f" (models: {', '.join(models)})"))
        return name
    from research.results import read_json

    k = read_json(run_dir / "config.json").get("eval", {}).get("k", 10)
    key = f"ndcg@{k}"
    ranked = sorted((m for m in models if key in models[m]), key=lambda m: -models[m][key])
    if need == "rank" and ranked:
        return ranked[0]
    preferred = {"items": ("item_knn", "embedding_dot", "two_tower", "content"),
                 "users": ("user_knn", "embedding_dot", "kmeans", "two_tower")}.get(need, ())
    for m in preferred:
        if m in models:
            return m
    return ranked[0] if ranked else next(iter(models))


def _user_index(meta, user: str) -> int:
    try:
        return int(meta.users.index(int(user)))
    except (KeyError, ValueError, OverflowError):
        raise ConfigError(f"unknown user {user!r} (user ids are MyAnimeList user_id values, "
                          f"e.g. {meta.users.values[0]})") from None


def _item_index(meta, anime: str) -> int:
    """``--anime``: an id of the run, else the first name match (``userlist.resolve_anime``, the
    resolver a list's names use too)."""
    from research.data.userlist import resolve_anime

    if not anime.strip():
        raise ConfigError("--anime is empty: give a MyAnimeList anime id or (part of) a name")
    found = resolve_anime(meta, anime)
    if found:
        return int(found[0])
    raise ConfigError(f"no anime with id or name {anime!r} in this run's catalogue")


def cmd_recommend(args) -> int:
    from research.experiment import load_model, load_run
    from research.explain import explain_recommendations, score_meaning

    if args.list is not None:
        return _recommend_list(args)
    run_dir = _resolve_run(args.run)
    meta, metrics, _ = load_run(run_dir)
    name = _pick_model(run_dir, metrics, args.model, "rank")
    model = load_model(run_dir, name, meta, allow_pickle=args.allow_pickle)
    u = _user_index(meta, args.user)
    for line in explain_recommendations(run_dir, model, meta, u, args.k):
        print(line)
    print(f"(model: {name}; score: {score_meaning(model)}; run: {run_dir})")
    return 0


def _recommend_list(args, show_unknown: int = 5) -> int:
    """``recommend --list FILE``: fold a user's own list into a model of the run (no refit).

    The list is read by ``research.data.userlist`` (CSV or MyAnimeList XML), mapped to the run's
    anime (unknown ones printed: count and the first ``show_unknown``), and scored by
    ``--model`` or, by default, the run's best model by ndcg@k that can fold in (models raising
    ``NotSupported`` are skipped with a note). Candidates are the run's training anime, as for
    ``--user``; the list's own anime (plan-to-watch included) are never recommended back."""
    import numpy as np

    from research.data import userlist
    from research.errors import DataError
    from research.experiment import load_model, load_run, load_seen
    from research.explain import explain_history, score_meaning
    from research.models.base import NotSupported, PickleRefused
    from research.results import read_json

    run_dir = _resolve_run(args.run)
    meta, metrics, _ = load_run(run_dir)
    ul = userlist.read_list(Path(args.list))
    mapped = userlist.map_list(ul, meta)
    print(f"{ul.path} ({ul.format}): {mapped.summary()}")
    if mapped.unknown:
        shown = "; ".join(str(u) for u in mapped.unknown[:show_unknown])
        more = f"; and {len(mapped.unknown) - show_unknown} more" if len(mapped.unknown) > show_unknown else ""
        print(f"unknown anime, not used: {len(mapped.unknown)} ({shown}{more})")
    if not len(mapped.items):
        raise DataError(ul.path, f"nothing to fold in: none of the {len(ul)} rows is an anime of this run "
                                 f"that was watched or scored ({mapped.summary()})")
    seen = load_seen(run_dir)
    candidates = np.asarray(seen.getnnz(axis=0) > 0).ravel()
    untrained = int((~candidates[mapped.items]).sum())
    if untrained:
        print(f"note: {untrained} anime of the list have no training rows in this run (most models know "
              f"nothing of them)")
    history = mapped.history(meta.n_items)
    exclude = mapped.exclude_matrix(meta.n_items)
    if args.model:
        order = [_pick_model(run_dir, metrics, args.model, "rank")]
    else:
        k = read_json(run_dir / "config.json").get("eval", {}).get("k", 10)
        models = metrics["models"]
        order = sorted((m for m in models if f"ndcg@{k}" in models[m]), key=lambda m: -models[m][f"ndcg@{k}"])
    skipped = []
    for name in order:
        try:
            model = load_model(run_dir, name, meta, allow_pickle=args.allow_pickle)
            items, vals = model.recommend_history(history, args.k, exclude=exclude, candidates=candidates)
        except NotSupported as exc:
            if args.model:
                raise ConfigError(f"model {name!r} cannot fold in a list: {exc} (pick another with --model)") from None
            skipped.append(f"{name} (no fold-in)")
            continue
        except PickleRefused:
            if args.model:
                raise
            skipped.append(f"{name} (a pickle: needs --allow-pickle)")
            continue
        break
    else:
        raise ConfigError(f"no model of this run can fold in a list (skipped: {', '.join(skipped) or 'none ranks'})")
    if skipped:
        print(f"note: skipped {', '.join(skipped)}")
    print(f"top {args.k} for this list ({len(mapped.items)} anime folded in), by {name}:")
    for line in explain_history(model, meta, mapped.items, mapped.ratings, items[0], vals[0]):
        print(line)
    print(f"(model: {name}; score: {score_meaning(model)}; run: {run_dir})")
    return 0


def cmd_verify(args) -> int:
    from research.verify import verify

    verify(_resolve_run(args.run), Path(args.raw), file=args.file, source=args.source, seed=args.seed,
           min_rows=args.min_rows, fold_in_fraction=args.fold_in_fraction, models=args.model or None,
           allow_pickle=args.allow_pickle)
    return 0


def cmd_similar(args, what: str) -> int:
    from research.experiment import load_model, load_run
    from research.models.base import NotSupported

    run_dir = _resolve_run(args.run)
    meta, metrics, _ = load_run(run_dir)
    name = _pick_model(run_dir, metrics, args.model, what)
    model = load_model(run_dir, name, meta, allow_pickle=args.allow_pickle)
    try:
        if what == "items":
            q = _item_index(meta, args.anime)
            idx, sims = model.similar_items([q], args.k)
            print(f"anime like {meta.item_names([q])[0]} (id {meta.items.ids(q)}), by {name}:")
            for rank, (i, s) in enumerate(zip(idx[0], sims[0]), 1):
                if i >= 0:
                    print(f"{rank:3d}. {meta.item_names([i])[0]} (id {meta.items.ids(i)})  similarity {s:.3f}")
        else:
            from research.experiment import load_seen

            q = _user_index(meta, args.user)
            idx, sims = model.similar_users([q], args.k)
            seen = load_seen(run_dir)  # train + validation anime of every user
            mine = set(seen[q].indices.tolist())
            print(f"users like user {args.user} ({len(mine)} anime), by {name}:")
            for rank, (i, s) in enumerate(zip(idx[0], sims[0]), 1):
                if i >= 0:
                    shared = len(mine.intersection(seen[i].indices.tolist()))
                    print(f"{rank:3d}. user {meta.users.ids(i)}  similarity {s:.3f}  ({shared} shared anime "
                          f"of their {seen[i].nnz})")
    except NotSupported as exc:
        raise ConfigError(f"model {name!r} cannot answer this: {exc} (pick another with --model)") from None
    print(f"(run: {run_dir})")
    return 0


def parser() -> argparse.ArgumentParser:
    from research.config import RAW_SOURCES

    p = argparse.ArgumentParser(prog="animerec", description="Anime recommendation research: data, models, "
                                "one evaluation harness, tuning, reports and benchmarks.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("config", help="experiment TOML (experiments/configs/*.toml)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config key, e.g. --set seeds=[0,1,2] --set models.bias.user_damping=10")
        return sp

    sp = with_config(sub.add_parser("run", help="fit and evaluate every model in a config"))
    sp.add_argument("--keep-finished", action="store_true",
                    help="keep the seeds whose run of this exact config already finished (default: run every "
                         "seed again; an interrupted one resumes)")
    sp.add_argument("-q", "--quiet", action="store_true",
                    help="no progress: neither the per-model lines and table nor the status line (shown on a "
                         "terminal: data read, model k of n, Keras epochs and batches, elapsed time)")
    sp.add_argument("--workers", type=_positive_int, metavar="N",
                    help="train the Keras models with N local worker processes on 127.0.0.1 "
                         "(tf.distribute.MultiWorkerMirroredStrategy; worker 0 writes the run folder; "
                         "see docs/DISTRIBUTED.md); on a cluster, run without it and set TF_CONFIG per host")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("prepare", help="validate and convert raw files to parquet + manifest.json")
    sp.add_argument("--source", required=True, choices=RAW_SOURCES)
    sp.add_argument("--raw", required=True, help="folder with the raw files")
    sp.add_argument("--out", help="output folder (default data/processed/<source>)")
    sp.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per streamed chunk")
    sp.add_argument("--config", help="take the [data] filters (ratings file, unrated, min_user_ratings) from a config")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of --config")
    sp.add_argument("--ratings", help="ratings file in DIR (default: the source's, e.g. rating_complete.csv; "
                    "an animelist file works too)")
    sp.add_argument("--unrated", choices=["drop", "keep", "zero"],
                    help="score-0 rows: drop (counted), keep as watched without a rating, or zero (read as "
                         "0/10, the study's choice)")
    sp.add_argument("--min-user-ratings", type=int, help="drop users with fewer rated rows (counted)")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress line (on a terminal it shows how "
                    "much of the ratings file has been read)")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("synth", help="write a synthetic data set in the mal2020 raw schema")
    sp.add_argument("--users", type=int, required=True)
    sp.add_argument("--items", type=int, required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--ratings-per-user", type=int, default=60)
    sp.add_argument("--segments", type=int, default=5)
    sp.add_argument("--factors", type=int, default=8)
    sp.add_argument("--unrated-fraction", type=float, default=0.1)
    sp.add_argument("--later", metavar="DIR", help="also write a later snapshot of the same world to DIR: new "
                    "users, some returning ones, new anime, taste drift (research.data.synth.LaterParams)")
    sp.add_argument("--later-users", type=int, help="new users in the later snapshot (default: half of --users)")
    sp.add_argument("--later-items", type=int, help="new anime in the later snapshot (default: a fifth of --items)")
    sp.add_argument("--later-returning", type=float, help="share of the users who return (default 0.1)")
    sp.add_argument("--later-taste-drift", type=float, help="sd of the segments' per-genre taste drift (default 0.3)")
    sp.set_defaults(func=cmd_synth)

    sp = with_config(sub.add_parser("eda", help="the data report (Markdown + figures)"))
    sp.set_defaults(func=cmd_eda)
    sp = with_config(sub.add_parser("tune", help="keras-tuner search through the harness"))
    sp.add_argument("-q", "--quiet", action="store_true",
                    help="no progress: neither the per-trial lines and final table nor the status line")
    sp.set_defaults(func=cmd_tune)

    sp = sub.add_parser("report", help="rebuild results/tables and results/figures from the runs")
    sp.add_argument("experiment", nargs="?",
                    help="an experiment with finished runs under results/runs/ (default: every one)")
    sp.set_defaults(func=cmd_report)

    from research.bench import BENCHMARKS, DEFAULT

    sp = sub.add_parser("bench", help="benchmarks; JSON to results/bench/")
    sp.add_argument("name", nargs="?", help=f"one of: {', '.join(BENCHMARKS)} (default: {', '.join(DEFAULT)})")
    sp.add_argument("--quick", action="store_true", help="small sizes (CI)")
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("tensorboard", help="TensorBoard on a run's logs, bound to 127.0.0.1",
                        description="Serve a run's (or an experiment's) TensorBoard logs on 127.0.0.1: "
                                    "Keras models' epoch scalars, one HParams session per (model, seed) with "
                                    "its test metrics, the item-embedding projector with anime names. Warns "
                                    "when the target has no logs yet (and serves: TensorBoard reloads); exits "
                                    "2 with TensorBoard's message when it cannot start (e.g. port in use); "
                                    "Ctrl-C or SIGTERM stops it (exit 0).")
    sp.add_argument("target", help="a run folder or an experiment name")
    sp.add_argument("--port", type=int, default=6006, help="port on 127.0.0.1 (default 6006)")
    sp.set_defaults(func=cmd_tensorboard)

    sp = sub.add_parser("verify", help="fold a later file's users into a run's models and score them "
                                       "(the study's verification on later data)")
    sp.add_argument("--run", required=True, help="run folder or experiment name")
    sp.add_argument("--raw", required=True, help="folder with the later file (the run's source schema)")
    sp.add_argument("--file", default="", help="ratings file in --raw (default: the source's, e.g. "
                                               "rating_complete.csv; animelist.csv keeps score-0 rows as watched)")
    sp.add_argument("--source", default="", choices=["", *RAW_SOURCES],
                    help="the file's schema (default: the run's source)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the history / target division")
    sp.add_argument("--min-rows", type=int, default=5, help="users with fewer usable rows are counted and left out")
    sp.add_argument("--fold-in-fraction", type=float, default=0.8, help="share of each user's rows folded in")
    sp.add_argument("--model", action="append", help="only this model of the run (repeatable; default: all)")
    sp.add_argument("--allow-pickle", action="store_true",
                    help="let a Surprise peer model load from its pickle (only for run folders you trust)")
    sp.set_defaults(func=cmd_verify)

    for name, help_, what in (("recommend", "top-k for one user", "rank"),
                              ("similar-anime", "nearest anime", "items"),
                              ("similar-users", "nearest users", "users")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--run", required=True, help="run folder or experiment name")
        if what == "items":
            sp.add_argument("--anime", required=True, help="MAL anime id or (part of) its name")
        elif what == "rank":
            who = sp.add_mutually_exclusive_group(required=True)
            who.add_argument("--user", help="MAL user id of the run")
            who.add_argument("--list", metavar="FILE",
                             help="a user's own list instead: CSV (anime_id or name[, score, watching_status]) "
                                  "or a MyAnimeList XML export, folded in without refitting")
        else:
            sp.add_argument("--user", required=True, help="MAL user id")
        sp.add_argument("-k", type=_positive_int, default=10)
        sp.add_argument("--model", help="which model of the run (default: the best one that can answer)")
        sp.add_argument("--allow-pickle", action="store_true",
                        help="let a Surprise peer model load from its pickle (unpickling runs code: "
                             "only for run folders you made or trust); nothing else is ever unpickled")
        sp.set_defaults(func=cmd_recommend if what == "rank" else
                        (lambda a, w=what: cmd_similar(a, w)))
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AnimeRecError as exc:
        print(f"animerec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable input, unwritable or full output folder: the user's to fix
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"animerec: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("animerec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
