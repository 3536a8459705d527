"""The study's three "find / predict" claims, every model side by side, as Markdown tables.

    python experiments/showcase.py similar-anime CONFIG --anime 1 5114 9253 [-k 10]
    python experiments/showcase.py similar-users CONFIG (--user ID | --pick-seed S) [-k 10]
    python experiments/showcase.py recommend     CONFIG (--user ID | --pick-seed S) [-k 10]

Each uses the finished run of CONFIG for its first seed (running it first when there is none for
the config's current hash), reloads every model of the run and writes
``results/tables/<experiment>_lists.md``. Models that have no answer (e.g. ``popularity`` has no
item representation) are listed as such, not hidden. A user drawn with ``--pick-seed`` is drawn
uniformly among the run's users with at least ``--min-seen`` training anime, from the sorted user
ids, so the same seed gives the same user for every model and every machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from research import config as C  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from research import results as R  # noqa: E402


def ensure_run(cfg) -> Path:
    """The finished run folder of ``cfg`` for its first seed.

    A finished run of the same config under another experiment name (the same data, split, seed
    and models: e.g. the leaderboard's seed-0 run for ``recommend_random_user.toml``, whose only
    difference is its name) is reused rather than refitted; with none, the config is run.
    """
    import dataclasses

    from research.data.load import load_dataset
    from research.experiment import finished, run_seed
    from research.run_ids import data_id

    seed = int(cfg.seeds[0])
    root = R.runs_root(cfg.results_path)
    data = data_id(cfg)  # the run id covers the data: hashed, not loaded
    own = finished(cfg, seed, data)
    if own:
        return own
    if root.is_dir():
        for exp_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            d = finished(dataclasses.replace(cfg, experiment=exp_dir.name), seed, data)
            if d:
                print(f"reusing {d} (the same config under experiment {exp_dir.name!r})", file=sys.stderr)
                return d
    return run_seed(cfg, load_dataset(cfg), seed, quiet=True)


def _models(run_dir: Path, meta):
    from research.experiment import load_model

    metrics = R.read_json(run_dir / "metrics.json")
    out = []
    for name in metrics["models"]:
        try:
            out.append((name, load_model(run_dir, name, meta)))
        except Exception as exc:  # a model saved by an older version of its class: say so, go on
            FAILED[name] = f"{type(exc).__name__}: {exc}"
            print(f"showcase: cannot reload {name}: {FAILED[name]}", file=sys.stderr)
    return out


TITLE = ""  # the claim's experiment name (the run may be another experiment's, see ensure_run)
FAILED: dict[str, str] = {}  # model -> why it could not be reloaded from the run


def _failed_note() -> list[str]:
    return ["", "Could not be reloaded from the run (rerun it with the current code): " +
            "; ".join(f"{n} ({why})" for n, why in FAILED.items()) + "."] if FAILED else []


def _side_by_side(cols: list, k: int) -> list[str]:
    """A Markdown table with one column per model: ``cols`` is [(model, [cell per rank])]."""
    if not cols:
        return []
    lines = ["| rank | " + " | ".join(n for n, _ in cols) + " |", "|---:|" + "---|" * len(cols)]
    for r in range(k):
        lines.append(f"| {r + 1} | " + " | ".join(c[r] if r < len(c) else "—" for _, c in cols) + " |")
    return lines


def pick_user(seen, meta, seed: int, min_seen: int = 20) -> int:
    """A user index drawn with ``seed`` among users with >= ``min_seen`` train + validation anime."""
    counts = np.diff(seen.indptr)
    eligible = np.flatnonzero(counts >= min_seen)  # dense indices are in sorted-id order
    if not len(eligible):
        from research.errors import ConfigError

        raise ConfigError(f"no user with at least {min_seen} anime seen")
    return int(np.random.default_rng(seed).choice(eligible))


def _cell_name(meta, i: int) -> str:
    return f"{meta.item_names([i])[0]} ({meta.items.ids(i)})".replace("|", "/")


def similar_anime(run_dir: Path, anime: list[str], k: int) -> str:
    from research.cli import _item_index
    from research.experiment import load_run
    from research.models.base import NotSupported

    meta, metrics, cfg = load_run(run_dir)
    models = _models(run_dir, meta)
    lines = [f"# Similar anime ({TITLE or cfg['experiment']})", "",
             f"Run `{run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir}`; nearest "
             f"{k} anime by each model's own similarity (cosine of its item representation, or its item-item "
             "similarity); the query itself excluded. Cells: name (MAL id) and similarity.", ""]
    for q in anime:
        qi = _item_index(meta, q)
        lines += [f"## {meta.item_names([qi])[0]} (MAL id {meta.items.ids(qi)})", ""]
        cols, missing = [], []
        for name, model in models:
            try:
                idx, sims = model.similar_items(np.array([qi]), k)
            except NotSupported:
                missing.append(name)
                continue
            cols.append((name, [f"{_cell_name(meta, i)} {s:.2f}" if i >= 0 else "—" for i, s in zip(idx[0], sims[0])]))
        lines += _side_by_side(cols, k)
        if missing:
            lines += ["", f"No item representation: {', '.join(missing)}."]
        lines.append("")
    return "\n".join(lines + _failed_note()) + "\n"


def _user_choice(args, seen, meta) -> tuple[int, str]:
    from research.cli import _user_index

    if args.user is not None:
        return _user_index(meta, args.user), f"user {args.user} (given)"
    u = pick_user(seen, meta, args.pick_seed, args.min_seen)
    return u, (f"user {meta.users.ids(u)}, drawn with seed {args.pick_seed} among users with at least "
               f"{args.min_seen} anime in train + validation")


def similar_users(run_dir: Path, args) -> str:
    from research.experiment import load_run, load_seen
    from research.models.base import NotSupported

    meta, metrics, cfg = load_run(run_dir)
    seen = load_seen(run_dir)
    u, how = _user_choice(args, seen, meta)
    k = args.k
    mine = set(seen[u].indices.tolist())
    lines = [f"# Similar users ({TITLE or cfg['experiment']})", "", f"Query: {how}; {len(mine)} anime seen.",
             f"Run `{run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir}`. Cells: user id, "
             "similarity, and how many anime the two users share in train + validation.", ""]
    cols, missing = [], []
    for name, model in _models(run_dir, meta):
        try:
            idx, sims = model.similar_users(np.array([u]), k)
        except NotSupported:
            missing.append(name)
            continue
        cells = []
        for i, s in zip(idx[0], sims[0]):
            if i < 0:
                cells.append("—")
                continue
            common = len(mine & set(seen[i].indices.tolist()))
            cells.append(f"{meta.users.ids(i)} ({s:.2f}, {common} shared)")
        cols.append((name, cells))
    lines += _side_by_side(cols, k)
    if missing:
        lines += ["", f"No user representation: {', '.join(missing)}."]
    return "\n".join(lines + _failed_note()) + "\n"


def recommend(run_dir: Path, args) -> str:
    """Every ranking model's top-k for one user; ✓ marks anime the user rated in the held-out test."""
    from research.data.load import load_dataset
    from research.data.splits import make_split
    from research.experiment import load_run, load_seen
    from research.models.base import mask_scores, top_k

    meta, metrics, cfg_d = load_run(run_dir)
    seen = load_seen(run_dir)
    u, how = _user_choice(args, seen, meta)
    k = args.k
    # the held-out test items of this user, from the same split (same data, config and seed)
    cfg = C.from_dict({key: v for key, v in cfg_d.items() if key not in ("seed", "source_file")})
    ds = load_dataset(cfg, quiet=True)
    split = make_split(ds.interactions, cfg.split, int(cfg_d["seed"]))
    if not np.array_equal(ds.meta.users.values, meta.users.values):
        raise RuntimeError("the data set changed since the run; rerun it")
    test_items = set(split.test.item[split.test.user == u].tolist())
    candidates = np.asarray(seen.getnnz(axis=0) > 0).ravel()
    row = seen[u]
    order = np.lexsort((row.indices, -row.data))[:10]
    lines = [f"# Recommendations for one user ({TITLE or cfg_d['experiment']})", "",
             f"User: {how}; {row.nnz} anime in train + validation, {len(test_items)} held out for test.",
             f"Run `{run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir}`. Seen anime and "
             "anime outside the training candidates are excluded for every model, as in the harness; "
             "✓ = the user rated it in the held-out test part.", "",
             "Their highest-rated anime (train + validation): " +
             "; ".join(f"{_cell_name(meta, row.indices[j])} {row.data[j]:.0f}/10" if row.data[j] > 0 else
                       f"{_cell_name(meta, row.indices[j])} (no score)" for j in order) + ".", ""]
    cols, skipped = [], []
    for name, model in _models(run_dir, meta):
        if not getattr(model, "ranks", True):
            skipped.append(name)
            continue
        scores = np.asarray(model.score(np.array([u])), dtype=np.float64).copy()
        items, _ = top_k(mask_scores(scores, np.array([u]), seen, candidates), k)
        cells = [("✓ " if i in test_items else "") + _cell_name(meta, i) if i >= 0 else "—" for i in items[0]]
        hits = sum(i in test_items for i in items[0])
        cols.append((f"{name} ({hits} ✓)", cells))
    lines += _side_by_side(cols, k)
    if skipped:
        lines += ["", f"No per-user ranking: {', '.join(skipped)}."]
    return "\n".join(lines + _failed_note()) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("similar-anime", "similar-users", "recommend"):
        sp = sub.add_parser(name)
        sp.add_argument("config")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        sp.add_argument("-k", type=int, default=10)
        if name == "similar-anime":
            sp.add_argument("--anime", nargs="+", required=True, help="MAL ids or (parts of) names")
        else:
            sp.add_argument("--user", help="a MAL user id (default: drawn with --pick-seed)")
            sp.add_argument("--pick-seed", type=int, default=0)
            sp.add_argument("--min-seen", type=int, default=20)
    args = p.parse_args(argv)
    from research.errors import AnimeRecError

    try:
        cfg = C.load(args.config, args.set)
        global TITLE
        TITLE = cfg.experiment
        run_dir = ensure_run(cfg)
        if args.what == "similar-anime":
            text = similar_anime(run_dir, args.anime, args.k)
        elif args.what == "similar-users":
            text = similar_users(run_dir, args)
        else:
            text = recommend(run_dir, args)
    except AnimeRecError as exc:
        print(f"showcase: error: {exc}", file=sys.stderr)
        return 2
    out = cfg.results_path / "tables" / f"{cfg.experiment}_lists.md"
    R.atomic_write_text(out, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
