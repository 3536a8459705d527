"""experiments/run_all.sh names only configs that exist (a renamed or missing config would stop the
from-scratch rerun hours in)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "experiments" / "configs"


def _arrays(text: str) -> dict[str, list[str]]:
    found = {}
    for name, body in re.findall(r"^([A-Z_0-9]+)=\(([^)]*)\)", text, flags=re.M):
        found[name] = body.split()
    return found


def test_every_config_run_all_names_exists():
    arrays = _arrays((ROOT / "experiments" / "run_all.sh").read_text())
    names = list(arrays["RUNS"]) + list(arrays["TUNES"])
    names += [f"tune_{m}" for key in ("RANKERS", "RATERS") for m in arrays[key]]
    names += [f"tune_{m}_5k" for key in ("RANKERS_5K", "RATERS_5K") for m in arrays[key]]
    assert len(names) > 20
    missing = sorted(n for n in names if not (CFG / f"{n}.toml").is_file())
    assert not missing, f"run_all.sh names configs that do not exist: {missing}"
