"""experiments/val_probe.py: one JSON line per model, the harness's validation ndcg (not test's)."""
import json
import runpy
import sys

import pytest

from research import config
from research.data.load import load_dataset
from research.data.splits import make_split
from research.eval.harness import evaluate
from research.models import registry


def test_val_probe_prints_the_validation_ndcg(tmp_path, capsys, monkeypatch):
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text('experiment = "c"\n[data]\nsource = "synth"\n[synth]\nusers = 60\nitems = 80\n'
                        'ratings_per_user = 25\n')
    monkeypatch.setattr(sys, "argv", ["val_probe.py", str(cfg_path), '{"model": "popularity"}',
                                      '{"model": "item_knn", "k": 5}'])
    runpy.run_path("experiments/val_probe.py", run_name="__main__")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["model"] for x in lines] == ["popularity", "item_knn"] and lines[1]["k"] == 5
    cfg = config.load(cfg_path)
    split = make_split(load_dataset(cfg, quiet=True).interactions, cfg.split, 0)
    for line, (name, params) in zip(lines, [("popularity", {}), ("item_knn", {"k": 5})]):
        m = registry.build(name, params, seed=0).fit(split.train, split.val)
        val = evaluate(m, split, k=10, part="val").summary["ndcg@10"]
        test = evaluate(m, split, k=10, part="test").summary["ndcg@10"]
        assert line["val_ndcg@10"] == pytest.approx(round(val, 4))
        assert val != test  # it is the validation part that was scored
