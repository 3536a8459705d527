"""Benchmarks against the peer libraries.

``peers``: every model of ``experiments/configs/bench_peers.toml`` (quick:
``bench_peers_quick.toml``; ``ANIMEREC_BENCH_PEERS_CONFIG`` overrides the file) fitted and measured
through ``research.eval.harness.evaluate`` on the same split per seed. Each project model's RMSE is
reported as a ratio to the best Surprise model's RMSE on the same seed (the peer with the lowest
mean RMSE), and its ndcg@10 as a ratio to implicit ALS's on the same seed; mean ± std over seeds.
Goals: best project model RMSE <= 0.97 x best peer; ndcg@10 >= 1.10 x implicit ALS.

``time_to_accuracy``: wall time for ``embedding_dot`` to reach Surprise SVD's test RMSE on the
same split (both fitted on the training part only), as a ratio to SVD's own fit time. Test RMSE
is measured after each epoch from the model's weights; evaluation time is subtracted. Cases: the
real sample and ~10M synthetic ratings at both models' defaults, and the 10M set again with each
model at the configuration its search chose on validation at that size
(``tune_embedding_dot_synth10m.toml``, ``tune_surprise_svd_synth10m.toml``: same data, split and
trial budget); a search not run yet is a note, not a row. The 10M data are those searches' data
section (one definition).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from research.bench.report import bench_dir, fmt_ms, md_table, mean_std
from research.config import REPO_ROOT

CONFIGS = REPO_ROOT / "experiments" / "configs"
PEER_PREFIXES = ("surprise_", "implicit_")
RMSE_GOAL, NDCG_GOAL = 0.97, 1.10
NDCG_PEER = "implicit_als"


def is_peer(model_type: str) -> bool:
    return model_type.startswith(PEER_PREFIXES)


def load_data(cfg):
    """The data set of ``cfg`` through ``research.data.load.load_dataset`` (the runner's loader:
    validation, de-duplication and the ``data`` filters exactly as ``animerec run`` applies them).

    Returns:
        (Dataset, loader description).
    """
    from research.data.load import load_dataset

    return load_dataset(cfg, quiet=True), "research.data.load.load_dataset"


def _config(quick: bool, name: str = "peers"):
    from research import config

    env = os.environ.get("ANIMEREC_BENCH_PEERS_CONFIG")
    path = Path(env) if env else CONFIGS / (f"bench_{name}_quick.toml" if quick else f"bench_{name}.toml")
    return config.load(path), path


# ---------------------------------------------------------------------------------------------
def run_peers(quick: bool = False) -> dict:
    """See the module docstring. Returns the JSON-able result."""
    from research.data.splits import make_split
    from research.errors import ConfigError
    from research.eval.harness import evaluate
    from research.models import registry
    from research.results import write_json
    from research.seeding import child_seed, seed_everything

    cfg, cfg_path = _config(quick)
    partial = bench_dir(quick) / "peers.json.partial"
    t0 = time.perf_counter()
    dataset, loader = load_data(cfg)
    load_seconds = time.perf_counter() - t0
    notes = [f"data: {dataset.interactions} via {loader}"]
    per_seed: dict[str, dict] = {}
    skipped_models: dict[str, str] = {}
    for seed in cfg.seeds:
        seed = int(seed)
        split = make_split(dataset.interactions, cfg.split, seed)
        for spec in cfg.models:
            if spec.name in skipped_models:
                continue
            try:
                model = registry.build(spec.type, spec.params, child_seed(seed, spec.name))
            except ConfigError as exc:
                skipped_models[spec.name] = str(exc)
                notes.append(f"{spec.name} skipped: {exc}")
                continue
            seed_everything(seed)
            print(f"[bench] peers: seed {seed} {spec.name} ...", file=sys.stderr, flush=True)
            t, c = time.perf_counter(), time.process_time()
            try:
                model.fit(split.train, split.val)
            except Exception as exc:  # a model mid-development must not sink the whole table
                skipped_models[spec.name] = f"fit failed: {type(exc).__name__}: {exc}"
                notes.append(f"{spec.name} skipped: fit failed: {type(exc).__name__}: {exc}")
                continue
            fit_seconds, fit_cpu = time.perf_counter() - t, time.process_time() - c
            res = evaluate(model, split, k=cfg.eval.k, batch_users=cfg.eval.batch_users,
                           relevance_threshold=cfg.eval.relevance_threshold).summary
            # wall time, and CPU time of this process (all threads): on a shared machine the wall
            # time includes waiting for a core
            per_seed.setdefault(spec.name, {})[str(seed)] = {**res, **model.extra_metrics(),
                                                             "fit_seconds": fit_seconds,
                                                             "fit_cpu_seconds": fit_cpu}
            # what is measured so far survives an interrupted run (a full run takes long on a
            # shared machine); removed once the final JSON is written
            write_json(partial, {"status": "running", "per_seed": per_seed, "skipped_models": skipped_models})
    out = summarize(per_seed, {s.name: s for s in cfg.models}, cfg.eval.k)
    partial.unlink(missing_ok=True)
    out.update({"config": str(cfg_path.relative_to(REPO_ROOT)) if cfg_path.is_relative_to(REPO_ROOT) else str(cfg_path),
                "dataset": {"name": dataset.name, "rows": len(dataset.interactions),
                            "users": dataset.interactions.n_users, "items": dataset.interactions.n_items,
                            "loader": loader, "load_seconds": load_seconds},
                "split": cfg.to_dict()["split"], "seeds": [int(s) for s in cfg.seeds],
                "skipped_models": skipped_models, "notes": notes + out.pop("notes", [])})
    return out


def summarize(per_seed: dict, specs: dict, k: int = 10) -> dict:
    """Means ± std, ratios to the reference peers per seed, and where the goals land."""
    ndcg = f"ndcg@{k}"
    notes = []
    models = {}
    for name, seeds in per_seed.items():
        spec = specs[name]
        keys = sorted({key for m in seeds.values() for key in m})
        models[name] = {"type": spec.type, "kind": "peer" if is_peer(spec.type) else "project",
                        "params": spec.params, "per_seed": seeds,
                        "mean": {key: mean_std([m.get(key) for m in seeds.values()]) for key in keys
                                 if all(isinstance(m.get(key), (int, float)) for m in seeds.values())}}
    rmse_peers = [n for n, m in models.items()
                  if m["kind"] == "peer" and m["mean"].get("rmse", {}).get("mean") is not None]
    best_peer = min(rmse_peers, key=lambda n: models[n]["mean"]["rmse"]["mean"]) if rmse_peers else None
    ndcg_peer = next((n for n, m in models.items() if m["type"] == NDCG_PEER), None)
    for name, m in models.items():
        if best_peer and "rmse" in m["mean"]:
            r = {s: v["rmse"] / models[best_peer]["per_seed"][s]["rmse"] for s, v in m["per_seed"].items()
                 if s in models[best_peer]["per_seed"]}
            m["rmse_ratio_vs_best_peer"] = {**mean_std(r.values()), "per_seed": r}
        if ndcg_peer and ndcg in m["mean"]:
            r = {s: v[ndcg] / models[ndcg_peer]["per_seed"][s][ndcg] for s, v in m["per_seed"].items()
                 if s in models[ndcg_peer]["per_seed"] and models[ndcg_peer]["per_seed"][s].get(ndcg)}
            m[f"{ndcg}_ratio_vs_{NDCG_PEER}"] = {**mean_std(r.values()), "per_seed": r}
    goals = {}
    project = [n for n, m in models.items() if m["kind"] == "project"]
    cand = [n for n in project if "rmse_ratio_vs_best_peer" in models[n]]
    if cand:
        b = min(cand, key=lambda n: models[n]["rmse_ratio_vs_best_peer"]["mean"])
        ratio = models[b]["rmse_ratio_vs_best_peer"]["mean"]
        goals["rmse"] = {"goal": f"<= {RMSE_GOAL} x {best_peer} rmse", "best_project_model": b,
                         "ratio": ratio, "met": bool(ratio <= RMSE_GOAL)}
    else:
        notes.append("rmse goal not measurable (no project rating model or no rating peer)")
    key = f"{ndcg}_ratio_vs_{NDCG_PEER}"
    cand = [n for n in project if key in models[n]]
    if cand:
        b = max(cand, key=lambda n: models[n][key]["mean"])
        ratio = models[b][key]["mean"]
        goals[ndcg] = {"goal": f">= {NDCG_GOAL} x {NDCG_PEER} {ndcg}", "best_project_model": b,
                       "ratio": ratio, "met": bool(ratio >= NDCG_GOAL)}
    else:
        notes.append(f"{ndcg} goal not measurable ({NDCG_PEER} or project ranking models missing)")
    return {"models": models, "reference": {"best_rmse_peer": best_peer, "ndcg_peer": ndcg_peer},
            "goals": goals, "notes": notes}


def markdown_peers(res: dict) -> str:
    models = res.get("models", {})
    k_ndcg = next((k for m in models.values() for k in m.get("mean", {}) if k.startswith("ndcg@")), "ndcg@10")
    ratio_key = f"{k_ndcg}_ratio_vs_{NDCG_PEER}"
    rows = []
    order = sorted(models, key=lambda n: (models[n]["kind"] != "peer", n))
    for n in order:
        m = models[n]
        mean = m["mean"]
        rows.append([n, m["kind"], fmt_ms(mean.get("rmse")), fmt_ms(m.get("rmse_ratio_vs_best_peer"), 3),
                     fmt_ms(mean.get(k_ndcg)), fmt_ms(m.get(ratio_key), 3), fmt_ms(mean.get("precision@10")),
                     fmt_ms(mean.get("fit_seconds"), 1), fmt_ms(mean.get("fit_cpu_seconds"), 1),
                     fmt_ms(mean.get("eval_seconds"), 1)])
    ds = res.get("dataset", {})
    ref = res.get("reference", {})
    lines = [f"Data: {ds.get('name')} ({ds.get('rows'):,} rows, {ds.get('users'):,} users, {ds.get('items'):,} items; "
             f"{ds.get('loader')}); split {res.get('split', {}).get('kind')}; seeds {res.get('seeds')}; "
             f"config `{res.get('config')}`. Ratios are per seed, then mean ± std; RMSE ratio vs "
             f"**{ref.get('best_rmse_peer')}** (best peer RMSE), {k_ndcg} ratio vs **{ref.get('ndcg_peer')}**.", "",
             md_table(["model", "kind", "rmse", "rmse / best peer", k_ndcg, f"{k_ndcg} / ALS", "precision@10",
                       "fit s", "fit CPU s", "eval s"], rows), ""]
    for key, g in res.get("goals", {}).items():
        lines.append(f"- Goal {key} {g['goal']}: best project model **{g['best_project_model']}** at "
                     f"{g['ratio']:.3f} — {'met' if g['met'] else 'not met'}.")
    for n, why in res.get("skipped_models", {}).items():
        lines.append(f"- {n}: {why}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
def run_time_to_accuracy(quick: bool = False) -> dict:
    """See the module docstring: the real sample (seed 0), then (full mode) 10M synthetic ratings."""
    from research import config as C

    cases, notes = [], []
    cfg, _ = _config(quick=True)  # the quick config's data section: the real sample
    cfg = C.from_dict({"data": cfg.to_dict()["data"], "split": cfg.to_dict()["split"], "seeds": [0]})
    try:
        ds, loader = load_data(cfg)
        cases.append(_tta_case("mal2020 sample", ds, cfg, max_epochs=60))
    except Exception as exc:
        notes.append(f"real sample failed: {type(exc).__name__}: {exc}")
    if not quick:
        try:
            scfg = C.load(TTA_SEARCHES["embedding_dot"])  # its data, split and seed: the searches'
            ds, loader = load_data(scfg)
            label = f"synthetic {len(ds.interactions):,} ratings"
            cases.append(_tta_case(f"{label}, defaults", ds, scfg, max_epochs=30))
            tuned, missing = searched_at_size()
            if tuned:
                cases.append(_tta_case(f"{label}, both searched at this size", ds, scfg, max_epochs=30,
                                       emb_params=tuned["embedding_dot"], svd_params=tuned["surprise_svd"]))
            notes += missing
        except Exception as exc:
            notes.append(f"10M synthetic failed: {type(exc).__name__}: {exc}")
    return {"status": "ok" if cases else "failed", "cases": cases, "notes": notes}


#: the searches at the 10M size whose choices the tuned time-to-accuracy case uses
TTA_SEARCHES = {"embedding_dot": CONFIGS / "tune_embedding_dot_synth10m.toml",
                "surprise_svd": CONFIGS / "tune_surprise_svd_synth10m.toml"}


def searched_at_size() -> tuple[dict | None, list[str]]:
    """({"embedding_dot": params, "surprise_svd": params} chosen by the two 10M searches on
    validation (their ``tuning.json``'s best: they neither refit nor look at test), or None) and
    notes naming each search that has not finished. ``_tta_case`` sets embedding_dot's epochs
    itself (it trains until it reaches SVD's rmse or its epoch cap)."""
    from research import config as C
    from research.results import read_json
    from research.tuning import tuning_dir

    params, missing = {}, []
    for model, path in TTA_SEARCHES.items():
        cfg = C.load(path)
        summary = tuning_dir(cfg, int(cfg.seeds[0])) / "tuning.json"
        done = read_json(summary) if summary.is_file() else {}
        if done.get("status") != "finished" or not done.get("best"):
            missing.append(f"{model} not searched at this size yet (animerec tune {path.relative_to(REPO_ROOT)}): "
                           "no tuned row")
            continue
        params[model] = dict(done["best"]["hyperparameters"])
    return (params if len(params) == len(TTA_SEARCHES) else None), missing


def _tta_case(label: str, dataset, cfg, max_epochs: int, emb_params: dict | None = None,
              svd_params: dict | None = None) -> dict:
    import research.models.keras.embedding_dot as E  # noqa: F401  (TensorFlow import before timing)
    from research.data.splits import make_split
    from research.eval.metrics import rmse
    from research.models import registry

    split = make_split(dataset.interactions, cfg.split, 0)
    test = split.test.only_rated()
    # the reference: Surprise SVD (library defaults, or a search's choice) on the same training rows
    svd = registry.build("surprise_svd", dict(svd_params or {}), seed=0)
    t, c = time.perf_counter(), time.process_time()
    svd.fit(split.train)
    svd_fit, svd_cpu = time.perf_counter() - t, time.process_time() - c
    target = rmse(test.rating, svd.predict(test.user, test.item))

    params = {**(emb_params or {}), "epochs": max_epochs, "early_stopping": False}
    emb = registry.build("embedding_dot", params, seed=0)
    import tensorflow as tf

    curve = []
    state = {"eval": 0.0, "eval_cpu": 0.0, "reached": None}

    class _Probe(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            te, ce = time.perf_counter(), time.process_time()
            elapsed = te - state["t0"] - state["eval"]  # training time only: evaluations excluded
            cpu = ce - state["c0"] - state["eval_cpu"]
            emb.after_fit()  # numpy copies of the current weights
            r = rmse(test.rating, emb.predict(test.user, test.item))
            state["eval"] += time.perf_counter() - te
            state["eval_cpu"] += time.process_time() - ce
            curve.append({"epoch": epoch + 1, "test_rmse": r, "train_seconds": elapsed, "train_cpu_seconds": cpu})
            if r <= target and state["reached"] is None:
                state["reached"] = {"epoch": epoch + 1, "seconds": elapsed, "cpu_seconds": cpu, "test_rmse": r}
                self.model.stop_training = True

    state["t0"], state["c0"] = time.perf_counter(), time.process_time()
    emb.fit(split.train, None, callbacks=[_Probe()])  # no Keras validation pass in the timing
    out = {"data": label, "rows": len(dataset.interactions), "train_rows": len(split.train),
           "searched": {"embedding_dot": dict(emb_params or {}), "surprise_svd": dict(svd_params or {})},
           "svd": {"params": svd.params, "fit_seconds": svd_fit, "fit_cpu_seconds": svd_cpu, "test_rmse": target},
           "embedding_dot": {"params": {**emb.get_config()}, "curve": curve,
                             "best_test_rmse": min((c["test_rmse"] for c in curve), default=None)}}
    if state["reached"]:
        out["embedding_dot"]["reached"] = state["reached"]
        out["time_ratio_vs_svd_fit"] = state["reached"]["seconds"] / svd_fit
        out["cpu_time_ratio_vs_svd_fit"] = state["reached"]["cpu_seconds"] / svd_cpu
    else:
        out["embedding_dot"]["reached"] = None  # never reached SVD's RMSE within max_epochs
    return out


def markdown_time_to_accuracy(res: dict) -> str:
    if not res.get("cases"):
        return ""
    rows = []
    for c in res.get("cases", []):
        e = c["embedding_dot"]
        reached = e.get("reached")
        rows.append([c["data"], f"{c['train_rows']:,}", f"{c['svd']['test_rmse']:.4f}",
                     f"{c['svd']['fit_seconds']:.1f}",
                     f"{reached['seconds']:.1f} (epoch {reached['epoch']})" if reached else
                     f"not reached in {len(e['curve'])} epochs (best {e['best_test_rmse']:.4f})",
                     f"{c['time_ratio_vs_svd_fit']:.2f}" if reached else None,
                     f"{c['svd'].get('fit_cpu_seconds', float('nan')):.1f}",
                     f"{reached['cpu_seconds']:.1f}" if reached and "cpu_seconds" in reached else None,
                     f"{c['cpu_time_ratio_vs_svd_fit']:.2f}" if reached and "cpu_time_ratio_vs_svd_fit" in c else None])
    chosen = [f"- {c['data']}: " + "; ".join(f"{m} {_params(p)}" for m, p in c["searched"].items() if p)
              for c in res["cases"] if any((c.get("searched") or {}).values())]
    return md_table(["data", "train rows", "SVD test rmse", "SVD fit s", "embedding_dot s to reach it",
                     "ratio (wall)", "SVD fit CPU s", "embedding_dot CPU s", "ratio (CPU)"], rows) + (
        "\n\nWall times include time spent waiting for a core on a shared machine; CPU seconds count "
        "all threads of the process (TensorFlow uses several), so the CPU ratio charges TF for its parallelism."
    ) + ("\n\nChosen on validation at that size (the rest at defaults):\n\n" + "\n".join(chosen) if chosen else "")


def _params(p: dict) -> str:
    from research.tuning.context import short  # how the searches print their trials

    return ", ".join(f"{k}={short(v)}" for k, v in sorted(p.items()))
