"""README's "Python API" section runs as written: its TOML block is written to a temporary
folder (with ``results_dir`` pointed there, so the test never writes into the repository) and
its Python block is executed verbatim there, on the synthetic generator (no ANIMEREC_DATA)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _blocks() -> tuple[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (toml,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    (python,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return toml, python


def test_readme_python_api_runs_verbatim(tmp_path, monkeypatch, capsys):
    toml, python = _blocks()
    assert 'results_dir = "results"' in toml and "fallback_to_synth = true" in toml
    assert len(python.strip().splitlines()) <= 20
    results = tmp_path / "results"
    (tmp_path / "my_experiment.toml").write_text(
        toml.replace('results_dir = "results"', f'results_dir = "{results.as_posix()}"'), encoding="utf-8")
    monkeypatch.delenv("ANIMEREC_DATA", raising=False)  # the synthetic generator, as on a fresh clone
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__readme__"}
    exec(compile(python, "README.md:python-api", "exec"), scope)
    out = capsys.readouterr().out.splitlines()
    run = scope["run"]
    assert run.path.parent == results / "runs" / "my_experiment"  # nothing written into the repository
    assert set(eval(out[0])) == {"popularity", "item_knn", "ease"}
    assert out[1].startswith("score: a similarity-weighted sum")
    from_list, list_items = scope["items"], scope["mine"]  # the last recommend: the list's
    assert len(eval(out[2])) == 5 and len(eval(out[3])) == 5
    # the list's own anime never come back; the user's seen anime neither
    assert not set(from_list[0].tolist()) & set(list_items.tolist())
    seen = run.seen[run.user_index(run.meta.users.values[0])[0]].indices
    first = scope["model"].recommend(run.user_index(run.meta.users.values[0]), k=5, exclude=run.seen)[0][0]
    assert not set(first.tolist()) & set(seen.tolist())
