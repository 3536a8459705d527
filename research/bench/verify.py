"""``verify``: how long ``animerec verify`` takes beyond loading the models (issue 12's goal: a
300k-row later file in under a minute on top of model loading).

Full mode: the run of ``experiments/configs/verify_models.toml`` (every fold-in model of the real
mal2020 sample at its defaults, two_tower with its history-only tower and implicit ALS included)
is fitted into a temporary results folder, then verified on the 2017 CooperUnion sample
(``cooperunion2017/rating_sample5000u.csv``: 520,609 rows of 5,000 users, a later file larger than
the goal's) exactly as ``animerec verify --run RUN --raw DIR --source cooperunion2017 --file
rating_sample5000u.csv`` does, and on the goal's size: the file's first whole users up to
300,000 rows (``_user_prefix``), a second entry of ``runs``. ``--quick``: a 300-user synthetic
world and its later snapshot (``animerec synth --later``), five models (global_mean among them: a
rating-only model, whose ndcg is absent). Everything runs in one fresh subprocess: the fit, then
``research.verify.verify``, whose ``timing`` (wall seconds of reading the later file, of everything
before the first model, and per model of loading it and of folding in + scoring every user) is
what the table shows; ``beyond_model_loading`` is the goal's number. The fit's seconds are beside
it for scale, not part of the goal. Wall times on a shared 2-core machine: the load average at the
start and end of the verification is recorded.
"""
from __future__ import annotations

import sys
import tempfile
import time

from research.bench.autoencoders import _load as _load_avg
from research.bench.report import in_subprocess, md_table
from research.config import REPO_ROOT

QUICK_MODELS = ('[models.global_mean]\n[models.popularity]\n[models.item_knn]\n[models.ease]\n'
                '[models.embedding_dot]\nepochs = 2\nearly_stopping = false\n')


def _quick_world(tmp: str) -> tuple:
    """(config file, later dir, later file, source) of a small synthetic world and its later snapshot."""
    from pathlib import Path

    from research.data import synth

    raw, later = Path(tmp) / "raw", Path(tmp) / "later"
    synth.generate(raw, users=300, items=250, ratings_per_user=40, seed=3, later=later)
    cfg = Path(tmp) / "bench_verify.toml"
    cfg.write_text(f'experiment = "bench_verify"\nseeds = [0]\n[data]\nsource = "mal2020"\npath = "{raw}"\n'
                   'ratings = "animelist.csv"\nunrated = "keep"\nfallback_to_synth = false\n' + QUICK_MODELS)
    return cfg, later, "animelist.csv", "mal2020"


def measure(quick: bool = False) -> dict:
    """(Subprocess target) fit the run, verify it on the later file, return verify's timing."""
    from pathlib import Path

    from research import config as C
    from research import experiment
    from research.data.load import find_raw
    from research.verify import verify

    with tempfile.TemporaryDirectory() as tmp:
        if quick:
            cfg_file, later, file, source = _quick_world(tmp)
        else:
            cfg_file = REPO_ROOT / "experiments" / "configs" / "verify_models.toml"
            later, file, source = find_raw("cooperunion2017"), "rating_sample5000u.csv", "cooperunion2017"
            if later is None or not (Path(later) / file).is_file():
                raise FileNotFoundError("the 2017 CooperUnion sample is not under ANIMEREC_DATA "
                                        "(cooperunion2017/rating_sample5000u.csv)")
        cfg = C.load(cfg_file, [f'results_dir="{Path(tmp) / "results"}"'])
        t0 = time.perf_counter()
        run_dir = experiment.run(cfg, quiet=True)[0]
        fit_s = time.perf_counter() - t0
        later_files = [(later, f"{source}/{file}" if not quick else "synthetic later snapshot (animelist.csv)")]
        if not quick:  # the goal's size too: the file's first whole users up to GOAL_ROWS rows (made below)
            later_files.append((None, f"{source}/{file}, first whole users up to {GOAL_ROWS:,} rows"))
        out = []
        for where, label in later_files:  # each later file on its own: one failure keeps the other's numbers
            load0 = _load_avg()
            try:
                if where is None:
                    where = Path(tmp) / "later_goal_size"
                    n = _user_prefix(Path(later) / file, where / file, GOAL_ROWS)
                    label = f"{source}/{file}, first {n:,} rows (whole users)"
                rep = verify(run_dir, where, file=file, source=source, seed=0, quiet=True)
            except Exception as exc:  # noqa: BLE001 - reported in the table, not raised
                out.append({"later_file": label, "error": f"{type(exc).__name__}: {str(exc)[-500:]}"})
                continue
            stage = rep["manifest"]["verify"]
            out.append({"config": cfg_file.name if quick else str(cfg_file.relative_to(REPO_ROOT)),
                        "later_file": label,
                        "rows_in": stage["rows_in"], "users": stage["users"], "history": stage["history"],
                        "targets": stage["targets"], "dropped": stage["dropped"], "run_fit_seconds": fit_s,
                        "verify_seconds": rep["seconds"], "timing": rep["timing"],
                        "skipped": rep["skipped"],
                        "ndcg@10": {m: s.get("ndcg@10") for m, s in rep["models"].items()},
                        "load_average_1min": load0, "load_average_1min_end": _load_avg()})
        return out


#: issue 12's goal: a later file of this many rows verified in under a minute beyond model loading
GOAL_ROWS = 300_000


def _user_prefix(src, dst, max_rows: int) -> int:
    """Copy the header and the first whole users of ``src`` (a CSV whose first column is the user
    id, each user's rows contiguous) while the rows stay within ``max_rows``; returns the rows.
    Raises ``ValueError`` when a user's rows are not contiguous in the part read (the prefix would
    cut a user in two) or when not even the first user fits (an empty later file measures nothing)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    n, user, block, seen = 0, None, [], set()
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        out.write(f.readline())
        for lineno, line in enumerate(f, start=2):
            u = line.split(",", 1)[0]
            if u != user:
                if n + len(block) > max_rows:
                    block = []
                    break
                if u in seen:
                    raise ValueError(f"{src}, line {lineno}: user {u}'s rows are not contiguous; "
                                     "a prefix of whole users needs each user's rows together")
                seen.add(u)
                out.writelines(block)
                n += len(block)
                user, block = u, []
            block.append(line)
        if block and n + len(block) <= max_rows:  # the last user, when the whole file fits
            out.writelines(block)
            n += len(block)
    if n == 0:
        raise ValueError(f"{src}: no whole user fits in {max_rows:,} rows")
    return n


def run(quick: bool = False) -> dict:
    """Measure (see the module docstring). Returns the JSON-able result."""
    print(f"[bench] verify: fitting {'a synthetic run' if quick else 'verify_models.toml'} and verifying it ...",
          file=sys.stderr, flush=True)
    try:
        out = in_subprocess("research.bench.verify:measure", quick=quick)
    except Exception as exc:
        return {"status": "failed", "runs": [], "notes": [f"verify failed: {str(exc)[-500:]}"]}
    runs = [{**r, "process_peak_rss_mb": out["peak_rss_mb"]} for r in out["result"] if "error" not in r]
    notes = [f"verify on {r['later_file']} failed: {r['error']}" for r in out["result"] if "error" in r]
    return {"status": "ok" if runs and not notes else ("partial" if runs else "failed"), "runs": runs,
            "notes": notes}


def _s(v) -> str:
    return "—" if v is None else f"{v:,.2f}"


def markdown(res: dict) -> str:
    runs = res.get("runs") or []
    if not runs:
        return "".join(f"- {n}\n" for n in res.get("notes", []))
    parts = []
    for r in runs:
        t = r["timing"]
        rows = [[m, _s(s["load"]), _s(s["fold_in_and_score"]),
                 "—" if r["ndcg@10"].get(m) is None else f"{r['ndcg@10'][m]:.4f}"] for m, s in t["models"].items()]
        skipped = "; ".join(f"{m}: {why}" for m, why in r["skipped"].items()) or "none"
        parts.append("\n".join([
            f"`animerec verify` of a run of `{r['config']}` (fitted in {r['run_fit_seconds']:,.0f} s, not counted) "
            f"on {r['later_file']}: {r['rows_in']:,} rows read, {r['users']:,} users kept "
            f"({r['history']:,} history rows folded in, {r['targets']:,} targets scored; dropped {r['dropped']}).",
            "",
            f"**Beyond model loading: {t['beyond_model_loading']:,.1f} s** (reading the later file "
            f"{t['read_later_file']:,.1f} s, everything before the first model {t['before_models']:,.1f} s; "
            f"the whole verification {r['verify_seconds']:,.1f} s). Load average {_s(r['load_average_1min'])} → "
            f"{_s(r['load_average_1min_end'])}; peak RSS {r['process_peak_rss_mb']:,.0f} MB (the one "
            "subprocess's: the fit and every verification, so the same for each later file).",
            "",
            md_table(["model", "load s", "fold-in + score s", "ndcg@10 (sanity)"], rows),
            "",
            f"Not folded in (listed, not scored): {skipped}."]))
    return "\n\n".join(parts) + "".join(f"\n- {n}" for n in res.get("notes", [])) + "\n"
