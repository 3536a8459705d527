"""Score models on a config's *validation* part (never test) through the harness: for quick,
honest checks of a model option before a search or a table.

    python experiments/val_probe.py experiments/configs/mal2020_sample.toml \\
        '{"model": "ease"}' '{"model": "multvae", "fold_in": false, "wide": "ease"}'

Each argument after the config is a JSON object: ``model`` (a registry name, default "multvae")
and the model's parameters. The model is fitted on the split's training part with the validation
part for early stopping (seed ``--seed``, the split's and the model's), then scored by
``research.eval.harness.evaluate(part="val")``: candidates are anime with a training row, the
user's training anime are excluded, validation anime are the targets. A model that scores from
train + validation history (multvae's default ``fold_in``) would see its targets here: pass
``"fold_in": false``. One JSON line per model: its parameters, val ndcg@k, epochs, seconds.
"""
from __future__ import annotations

import argparse
import json
import time

from research import config
from research.data.load import load_dataset
from research.data.splits import make_split
from research.eval.harness import evaluate
from research.models import registry


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("models", nargs="+", help='JSON objects, e.g. \'{"model": "ease", "lam": 300}\'')
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = config.load(args.config)
    ds = load_dataset(cfg, quiet=True)
    split = make_split(ds.interactions, cfg.split, args.seed)
    k = cfg.eval.k
    for text in args.models:
        params = json.loads(text)
        name = params.pop("model", "multvae")
        t = time.perf_counter()
        m = registry.build(name, params, seed=args.seed)
        m.fit(split.train, split.val)
        summary = evaluate(m, split, k=k, part="val").summary
        extra = m.extra_metrics() if hasattr(m, "extra_metrics") else {}
        print(json.dumps({"model": name, **params, f"val_ndcg@{k}": round(summary[f"ndcg@{k}"], 4),
                          "epochs": extra.get("fit_epochs"), "seconds": round(time.perf_counter() - t)}),
              flush=True)


if __name__ == "__main__":
    main()
