"""Write a run config of tuned models from finished tuning searches, for tuned-against-tuned tables.

Each ``tune_<model>.toml`` search ends with the best configuration and the untuned default refitted
on train + validation (``metrics.json`` of its tuning folder: ``tuned.refit_params`` and
``tuned.default_refit_params``, Keras models with the epoch that early stopping kept). This script
reads those two parameter sets from every search named on the command line and writes one config
that runs all of them, tuned and default, over several seeds with the same protocol as the
refit (``split.fit_on = "train+val"``, scored on test), beside the trivial baselines of base.toml.
Numbers are never copied by hand: rerun the searches and this script, and the config follows.

A search's ``metrics.json`` is read from its tuning folder or, when that is gone (a fresh machine
keeps no ``results/runs``), from its committed archive (``results/searches``,
``research.tuning.archive``). With ``--reuse OLD.toml`` (a config this script wrote earlier), a
search with neither (searched before archives existed) is taken from OLD.toml instead: the two model
tables this script wrote for it there (the ones whose comment names its ``tune_*.toml``), verbatim,
comments included, so a config can gain one re-run search without re-running the others (a
transfer's table, ``<model>_tuned_from_<source>``, likewise). A search that has a finished folder is
always read from it; one whose folder is there but unfinished is refused (finish it: reusing would
hide that it is under way); and OLD.toml's ``[data]`` must be the new config's.

With ``--blend``, two more models: ``blend_tuned`` (and ``blend`` at its defaults beside it),
the stacked ensemble (``research.models.blend``) over the blend's default classical bases (bias,
item_knn, user_knn at their defaults) plus every searched *project* rating model named on the
command line at its tuned configuration (the peers' searches are not bases: the blend is ours).
The rule is fixed in advance, so no choice of bases looks at test; each base gets its search's
refit parameters, the epochs included (inside the blend a base trains without a validation part).

    python experiments/tuned_config.py --out experiments/configs/ranking_peak.toml \
        --experiment ranking_peak --seeds 0 1 2 experiments/configs/tune_{ease,multvae,...}.toml
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tomllib
from pathlib import Path

from research import config
from research.results import read_json
from research.tuning import tuned_spec, tuning_dir
from research.tuning.folder import search_archive


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def _table(name: str, typ: str, params: dict, note: str) -> str:
    lines = [f"# {note}", f"[models.{name}]", f"type = {_toml_value(typ)}"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(params.items())]
    return "\n".join(lines) + "\n"


def _data(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg.data).items() if v != getattr(config.DataConfig(), k)}


def _plain(d: dict) -> dict:
    """``d`` as TOML / JSON would give it back (tuples as lists), for comparing a written config's
    ``[data]`` with ``_data``."""
    return json.loads(json.dumps(d))


def _finished_archive(kept: Path) -> bool:
    """Whether the archive holds a finished search with its refit: tuning.json "finished" and
    metrics.json's tuned trial its best (a search extended since, or restarted on other data, has
    an older refit's metrics.json beside a newer tuning.json until its own refit)."""
    try:
        summary, metrics = read_json(kept / "tuning.json"), read_json(kept / "metrics.json")
    except (OSError, ValueError):
        return False
    best = (summary.get("best") or {}).get("trial_id")
    return summary.get("status") == "finished" and best is not None and \
        (metrics.get("tuned") or {}).get("trial_id") == best


def _search_folders(cfg, seed: int) -> bool:
    """Whether the experiment has any ``tune-*-seed<seed>`` folder (``_earlier`` loads the data to
    look inside them: not worth it when there is none, as on a fresh machine)."""
    from research import results as R

    return any((R.runs_root(cfg.results_path) / cfg.experiment).glob(f"tune-*-seed{seed}"))


def _earlier(cfg, seed: int):
    """The same finished search in a folder named by an earlier run-id scheme
    (``research.tuning.folder.earlier_search``: same model, space, oracle, objective and the same
    split, which needs the data loaded and split once)."""
    from research.data.load import load_dataset
    from research.data.splits import make_split
    from research.seeding import seed_everything
    from research.tuning.folder import earlier_search

    ds = load_dataset(cfg, quiet=True)
    seed_everything(seed)
    return earlier_search(cfg, seed, make_split(ds.interactions, cfg.split, seed))


def _blend_table(tuned: dict) -> str:
    """``[models.blend_tuned]`` over the default bases plus ``tuned`` (registry type -> refit params)."""
    from research.models.blend import DEFAULT_BASES

    bases = list(DEFAULT_BASES) + [t for t in tuned if t not in DEFAULT_BASES]
    lines = ["# the blend at its defaults (bias, item_knn, user_knn), for comparison", "[models.blend]", "",
             "# the stacked ensemble of the blend's default bases and every tuned project rating model above",
             "[models.blend_tuned]", 'type = "blend"', f"bases = {_toml_value(bases)}"]
    for typ, params in tuned.items():
        lines += ["", f"[models.blend_tuned.base_params.{typ}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in sorted(params.items())]
    return "\n".join(lines) + "\n"


def _reused_blocks(path: str) -> dict[str, list[tuple[str, str]]]:
    """search file name -> [(model table name, its text with the comment line)] of a config this
    script wrote (``--reuse``): every ``# tuned: <file>, ...`` / ``# its default, ... (<file>)``
    comment directly above a ``[models.NAME]`` table, up to the next blank line."""
    lines = Path(path).read_text().splitlines()
    out: dict[str, list[tuple[str, str]]] = {}
    for j in range(len(lines) - 1):
        head = re.fullmatch(r"\[models\.([A-Za-z0-9_]+)\]", lines[j + 1])
        m = re.match(r"# (?:tuned: |searched on other data and transferred here: )(\S+?\.toml),", lines[j]) or \
            re.match(r"# its default, .*\((\S+?\.toml)\)$", lines[j])
        if not (head and m):
            continue
        end = j + 2
        while end < len(lines) and lines[end].strip():
            end += 1
        out.setdefault(m.group(1), []).append((head.group(1), "\n".join(lines[j:end]) + "\n"))
    return out


def build(tune_configs: list[str], experiment: str, seeds: list[int], defaults: bool = True,
          data_from: str | None = None, skip_defaults: tuple = (), blend: bool = False,
          reuse: str | None = None) -> str:
    """The text of the config (see the module docstring). With ``data_from``, the run uses that
    config's data, and a search on other data is taken as a transfer: its models are named
    ``<model>_tuned_from_<source of the search>`` and labelled so."""
    from research.models.registry import PEER_MODELS

    data = _data(config.load(data_from)) if data_from else None
    tables = []
    blend_bases = {}  # registry type -> tuned refit params of our rating models
    reused = _reused_blocks(reuse) if reuse else {}
    old = tomllib.loads(Path(reuse).read_text()) if reuse else {}
    reused_any = False
    for path in tune_configs:
        cfg = config.load(path)
        spec = tuned_spec(cfg)
        seed = int(cfg.seeds[0]) if cfg.seeds else 0
        folder = tuning_dir(cfg, seed)
        if not (folder / "metrics.json").is_file() and _search_folders(cfg, seed):
            folder = _earlier(cfg, seed) or folder  # named by an earlier run-id scheme
        metrics_path = folder / "metrics.json"
        kept = search_archive(cfg, seed)  # the committed copy (research.tuning.archive)
        if not folder.exists() and _finished_archive(kept):
            metrics_path = kept / "metrics.json"
        d = _data(cfg)
        suffix = ""
        if data is None:
            data = d
        elif d != data:
            if not data_from:
                raise SystemExit(f"{path}: its data ({d}) differ from the first search's ({data})")
            suffix = f"_from_{cfg.data.source}"  # searched on other data: a transfer, and named so
        name = f"{spec.name}_tuned{suffix}"
        with_default = defaults and not suffix and spec.name not in skip_defaults  # a transfer's: the local row
        if not metrics_path.is_file():
            if folder.exists() or kept.exists():  # --reuse stands in for a search that is gone, not one under way
                raise SystemExit(f"{path}: the search at {folder if folder.exists() else kept} has not finished "
                                 f"(run: animerec tune {path})")
            if not (reuse and Path(path).name in reused):
                raise SystemExit(f"{path}: no finished search at {folder} (run: animerec tune {path})")
            blocks = [(n, t) for n, t in reused[Path(path).name] if n == name or (with_default and n == spec.name)]
            if not any(n == name for n, _ in blocks):
                raise SystemExit(f"{reuse}: no [models.{name}] written from {Path(path).name}")
            tables += [t for _, t in blocks]
            reused_any = True
            objective = re.search(r"\(val (\S+) ", next(t for n, t in blocks if n == name))
            if blend and spec.type not in PEER_MODELS and objective and objective.group(1) in ("rmse", "mae"):
                if spec.type in blend_bases:
                    raise SystemExit(f"{path}: a second search of {spec.type}: a blend takes each base once")
                blend_bases[spec.type] = {k: v for k, v in old["models"][name].items() if k != "type"}
            continue
        tuned = read_json(metrics_path)["tuned"]
        where = f"{Path(path).name}, trial {tuned['trial_id']} (val {tuned['objective']} " \
                f"{tuned['val_value']:.4f}; default {tuned['default_val_value']:.4f})"
        what = "searched on other data and transferred here" if suffix else "tuned"
        tables.append(_table(name, spec.type, tuned["refit_params"], f"{what}: {where}"))
        if blend and spec.type not in PEER_MODELS and tuned["objective"] in ("rmse", "mae"):
            if spec.type in blend_bases:
                raise SystemExit(f"{path}: a second search of {spec.type}: a blend takes each base once")
            blend_bases[spec.type] = tuned["refit_params"]
        if with_default:
            tables.append(_table(spec.name, spec.type, tuned["default_refit_params"],
                                 f"its default, with the refit's epochs if it stops early ({Path(path).name})"))
    if reused_any and _plain(old.get("data", {})) != _plain(data):
        raise SystemExit(f"{reuse}: its data ({old.get('data', {})}) differ from this config's ({data}): "
                         "its tuned models were searched for other data")
    head = [f"# Generated by experiments/tuned_config.py from {', '.join(Path(p).name for p in tune_configs)}:",
            "# every model at the configuration its search chose on seed 0's validation part, and at its",
            "# default, fitted on train + validation (the searches' refit protocol) and scored on test.",
            "# Do not edit by hand: rerun the searches and the script.",
            'base = "base.toml"', f"experiment = {_toml_value(experiment)}",
            f"seeds = {_toml_value(list(seeds))}", "", "[data]"]
    head += [f"{k} = {_toml_value(v)}" for k, v in sorted(data.items())]
    head += ["", "[split]", 'fit_on = "train+val"', ""]
    if blend:
        if not blend_bases:
            raise SystemExit("--blend: none of the searches is of a project rating model (objective rmse or mae)")
        tables.append(_blend_table(blend_bases))
    return "\n".join(head) + "\n" + "\n".join(tables)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tune_configs", nargs="+", help="tune_<model>.toml files whose searches have finished")
    p.add_argument("--out", required=True, help="the config to write")
    p.add_argument("--experiment", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--no-defaults", action="store_true", help="only the tuned configurations")
    p.add_argument("--skip-default", action="append", default=[], metavar="MODEL",
                   help="no default row for these (e.g. a model whose constructor defaults are now its "
                        "search's best, so that the search's recorded default no longer describes it)")
    p.add_argument("--data-from", help="take the data from this config; searches on other data are transfers")
    p.add_argument("--blend", action="store_true",
                   help="add blend_tuned: the blend's default bases plus every tuned project rating model")
    p.add_argument("--reuse", metavar="OLD.toml",
                   help="a config this script wrote: searches without a tuning folder are taken from it")
    args = p.parse_args(argv)
    text = build(args.tune_configs, args.experiment, args.seeds, defaults=not args.no_defaults,
                 data_from=args.data_from, skip_defaults=tuple(args.skip_default), blend=args.blend,
                 reuse=args.reuse)
    config.from_dict(tomllib.loads(text))  # the written config must load
    Path(args.out).write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
