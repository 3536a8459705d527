"""``animerec bench [NAME] [--quick]``: the benchmarks, each writing JSON (with machine info) to
``results/bench/<name>.json`` (``--quick``: ``results/bench/quick/``) and the Markdown summary
``SUMMARY.md`` beside it.

| name | measures |
| --- | --- |
| ``peers`` | every model vs Surprise / implicit on the real sample, same split, 3 seeds |
| ``time_to_accuracy`` | embedding_dot's wall time to reach Surprise SVD's test RMSE / SVD's fit time |
| ``throughput`` | embedding_dot / dnn training examples per second at 1M / 10M ratings (two_tower: below) |
| ``neighbors`` | item-kNN all-item top-20 at MAL size: seconds, peak RSS; vs a naive pandas loop |
| ``fullsize`` | ``prepare`` + one embedding_dot epoch at 1M / 10M / 57M rows: seconds, peak RSS |
| ``serving`` | top-10 latency per user (p50, p99): brute force and faiss |
| ``autoencoders`` | ease / multvae fit time, training / scoring users/s, peak RSS: sample, 5k, 310k x 17.5k synthetic |
| ``rating_models`` | embedding_dot / svdpp / autorec / blend fit time, train / predict rows/s, peak RSS: sample, 5k |
| ``distributed`` | embedding_dot ex/s: no strategy, 1 and 2 local workers (overhead here), gradient bytes per step |
| ``fullsize_models`` | classical models, implicit ALS, Surprise SVD on a 57M-row synthetic: fit s, peak RSS |
| ``two_tower_speed`` | two_tower full-softmax ex/s, epoch s: autodiff vs hand-written gradient, 5k and 10M synthetic |
| ``verify`` | ``animerec verify`` of the sample's fold-in models on the 520k-row 2017 file: s beyond loading |

Each is ``research.bench.<name>``, but ``time_to_accuracy`` (in ``bench.peers``) and ``throughput``
(``run_throughput`` below, over ``bench.throughput``'s functions).

A measurement that fails is a note in the result (the others are still measured); a benchmark
none of whose measurements ran has ``status: failed``. ``animerec bench`` with no name runs the
cheap ones (all but ``fullsize``, whose 57M-row step takes most of an hour, and ``autoencoders``,
whose EASE fit on the 310k x 17.5k synthetic matrix alone takes minutes, and ``rating_models``,
whose svdpp and autorec fits take minutes each on the real sets, and ``verify``, which fits every
fold-in model of the sample first: run them by name).
"""
from __future__ import annotations

import difflib
import importlib
import sys
import time
from pathlib import Path

from research.errors import ConfigError

#: name -> (module, run function, markdown function); run(quick=bool) -> dict
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "peers": ("research.bench.peers", "run_peers", "markdown_peers"),
    "time_to_accuracy": ("research.bench.peers", "run_time_to_accuracy", "markdown_time_to_accuracy"),
    "throughput": ("research.bench", "run_throughput", "markdown_throughput"),
    "neighbors": ("research.bench.neighbors", "run", "markdown"),
    "fullsize": ("research.bench.fullsize", "run", "markdown"),
    "serving": ("research.bench.serving", "run", "markdown"),
    "autoencoders": ("research.bench.autoencoders", "run", "markdown"),
    "rating_models": ("research.bench.rating_models", "run", "markdown"),
    "distributed": ("research.bench.distributed", "run", "markdown"),
    "fullsize_models": ("research.bench.fullsize_models", "run", "markdown"),
    "two_tower_speed": ("research.bench.two_tower_speed", "run", "markdown"),
    "verify": ("research.bench.verify", "run", "markdown"),
}
DEFAULT = ("peers", "time_to_accuracy", "throughput", "neighbors", "serving")


def _fn(module: str, name: str):
    return getattr(sys.modules[__name__] if module == __name__ else importlib.import_module(module), name)


def renderers() -> dict:
    """Benchmark name -> its Markdown function (every benchmark module imports)."""
    return {name: _fn(module, md) for name, (module, _, md) in BENCHMARKS.items()}


def main(name: str | None = None, quick: bool = False, out_dir=None) -> list[Path]:
    """Run benchmark ``name`` (or the default set), write its JSON and the summary.

    Args:
        name: a key of ``BENCHMARKS``, or None for ``DEFAULT``.
        quick: small sizes, written under ``quick/`` (for CI and smoke tests).
        out_dir: override of ``results/bench`` (also ``ANIMEREC_BENCH_DIR``).

    Returns:
        The JSON files written, then ``SUMMARY.md``.
    """
    from research.bench import report

    if name is not None and name not in BENCHMARKS:
        near = difflib.get_close_matches(name, BENCHMARKS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(BENCHMARKS)})"
        raise ConfigError(f"unknown benchmark {name!r}{hint}")
    names = [name] if name else list(DEFAULT)
    written = []
    for n in names:
        module, run_name, _ = BENCHMARKS[n]
        print(f"[bench] {n}{' (quick)' if quick else ''} ...", file=sys.stderr, flush=True)
        machine = report.machine()
        t0 = time.perf_counter()
        result = _fn(module, run_name)(quick=quick)
        result = {"status": "ok", **result, "machine": machine, "wall_seconds": time.perf_counter() - t0,
                  "time_utc": machine.get("time_utc")}
        path = report.write_result(n, result, quick, out_dir)
        for note in result.get("notes", []):
            print(f"[bench] {n}: {note}", file=sys.stderr)
        written.append(path)
    written.append(report.write_summary(report.bench_dir(quick, out_dir), renderers()))
    return written


# ---- throughput: a thin wrapper over research.bench.throughput ------------------------------
def run_throughput(quick: bool = False) -> dict:
    """Training throughput of the Keras rating models through ``research.bench.throughput``'s
    functions (``embedding_dot_throughput``, ``dnn_throughput``), each size and variant in its own
    subprocess so that one size's memory does not carry into the next.

    ``embedding_dot`` runs at 65,536 ratings a batch (its training default's order of magnitude
    at full size) with Keras Adam and lazy Adam, and at 262,144 with Adam: the step has a fixed
    cost (~80 ms at 65,536 on 2 cores, of which the pipeline is 1/6 to 1/9), so a larger batch is
    the cheapest examples/s; whether it trains as well per second is ``time_to_accuracy``'s
    question, not this one's. ``two_tower`` is measured by ``bench two_tower_speed`` at its
    defaults (the full softmax, the hand-written gradient); the in-batch variant this benchmark
    used to run at 10M took ~1 h of the 2 cores for one number.
    """
    from research.bench import report

    sizes = [100_000] if quick else [1_000_000, 10_000_000]
    epochs = 2 if quick else 3
    # function -> (epochs, variants: each its batch size and options); the first epoch (tracing) is not timed
    plan = {"embedding_dot_throughput": (epochs, [{"batch_size": 65_536, "optimizer": "adam"},
                                                  {"batch_size": 65_536, "optimizer": "lazy_adam"},
                                                  {"batch_size": 262_144, "optimizer": "adam"}]),
            "dnn_throughput": (epochs, [{"batch_size": 65_536}])}
    runs, notes = [], []
    for fn_name, (epochs, variants) in plan.items():
        for n in sizes:
            for kw in variants:
                try:
                    out = report.in_subprocess(f"research.bench.throughput:{fn_name}", n_ratings=n,
                                               epochs=epochs, seed=0, **kw)
                except Exception as exc:  # keep the other sizes' numbers
                    notes.append(f"{fn_name} {kw} at {n:,} ratings failed: {str(exc)[-300:]}")
                    continue
                runs.append({"function": fn_name, **(out["result"] or {}), "peak_rss_mb": out["peak_rss_mb"],
                             "process_seconds": out["process_seconds"]})
    return {"status": "ok" if runs else "failed", "runs": runs, "notes": notes,
            "batch_sizes": {f: sorted({v["batch_size"] for v in p[1]}) for f, p in plan.items()},
            "epochs": {f: p[0] for f, p in plan.items()}}


def markdown_throughput(res: dict) -> str:
    from research.bench.report import md_table

    runs = res.get("runs") or []
    if not runs:
        return ""
    cols = [("model", "model"), ("n_ratings", "ratings"), ("batch_size", "batch"), ("optimizer", "optimizer"),
            ("epochs", "epochs"), ("pipeline_examples_per_s", "pipeline ex/s"),
            ("train_examples_per_s", "train ex/s"), ("train_examples_per_cpu_s", "train ex/CPU-s"),
            ("model_over_pipeline_time", "model / pipeline time"), ("load_average_1min", "load (start)"),
            ("load_average_1min_end", "load (end)"), ("peak_rss_mb", "peak RSS MB")]
    table = md_table([c[1] for c in cols], [[_short(r.get(k)) for k, _ in cols] for r in runs])
    shapes = sorted({f"{r.get('n_users', 0):,} users x {r.get('n_items', 0):,} anime" for r in runs})
    features = sorted({f"{r.get('model')}: {r['item_features']}" for r in runs if r.get("item_features")})
    return "\n".join([
        f"Training examples per second over the epochs after the first (synthetic uniform ratings over "
        f"{' / '.join(shapes)}), and of the input pipeline alone at the same batch size; *model / pipeline "
        "time* = pipeline ex/s / train ex/s. Wall-clock rates on a shared machine: compare the load "
        "average with the core count.", "", table]
        + (["", "Item side features: " + "; ".join(features) + "."] if features else []))


def _short(v):
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return v if not isinstance(v, (dict, list)) else "…"
