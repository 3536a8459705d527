"""The command line end to end, in subprocesses as a user runs it: exit codes, one-line errors
with no traceback, and the run / recommend / similar-* contract on the real sample."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def animerec(*args, cwd=REPO, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "research", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=e, timeout=600)


def _assert_clean_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("animerec: error:")
    for n in needles:
        assert n in line, line


def test_missing_config_file():
    _assert_clean_error(animerec("run", "no/such.toml"), "no/such.toml")


def test_unknown_config_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[models.bias]\nuser_dampng = 1\n")
    _assert_clean_error(animerec("run", p), "user_dampng", "user_damping")


def test_missing_data_path(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\nsource = "mal2020"\npath = "/no/such/folder"\n[models.bias]\n')
    _assert_clean_error(animerec("run", p), "/no/such/folder")


def test_prepare_malformed_file_names_file_line_column(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "rating_complete.csv").write_text("user_id,anime_id,rating\n1,5,7\n2,6,seven\n")
    _assert_clean_error(animerec("prepare", "--source", "mal2020", "--raw", raw, "--out", tmp_path / "out"),
                        "rating_complete.csv", ":3", "rating")


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """One run on the real sample with fast models, reused by the command tests below."""
    if not os.environ.get("ANIMEREC_DATA"):
        pytest.skip("real MAL data not available (set ANIMEREC_DATA)")
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "c.toml"
    cfg.write_text(f'experiment = "cli"\nresults_dir = "{tmp / "results"}"\n'
                   '[data]\nsource = "mal2020"\nratings = "rating_complete_head100k.csv"\nfallback_to_synth = false\n'
                   "[models.global_mean]\n[models.bias]\n[models.popularity]\n[models.item_knn]\n"
                   "[models.user_knn]\n[models.kmeans]\n")
    p = animerec("run", cfg, "-q")
    assert p.returncode == 0, p.stderr
    runs = list((tmp / "results" / "runs" / "cli").iterdir())
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
def test_run_writes_metrics_schema(sample_run):
    m = json.loads((sample_run / "metrics.json").read_text())
    assert m["dataset"] == "mal2020" and m["seed"] == 0
    for name in ("global_mean", "bias", "popularity", "item_knn", "user_knn", "kmeans"):
        assert name in m["models"], name
    assert m["models"]["bias"]["rmse"] < m["models"]["global_mean"]["rmse"]
    assert m["models"]["item_knn"]["ndcg@10"] > m["models"]["popularity"]["ndcg@10"]
    assert "wcss" in m["models"]["kmeans"] and "wcss" not in m["models"]["item_knn"]


@pytest.mark.slow
def test_recommend_similar_commands(sample_run):
    p = animerec("recommend", "--run", sample_run, "--user", "0", "-k", "5", "--model", "item_knn")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln[:4].strip().rstrip(".").isdigit()]
    assert len(lines) == 5 and all("score" in ln and "—" in ln for ln in lines)
    p = animerec("similar-anime", "--run", sample_run, "--anime", "Cowboy Bebop", "-k", "5", "--model", "item_knn")
    assert p.returncode == 0, p.stderr
    assert "Cowboy Bebop" in p.stdout.splitlines()[0]
    assert sum("similarity" in ln for ln in p.stdout.splitlines()) == 5
    p = animerec("similar-users", "--run", sample_run, "--user", "0", "-k", "3", "--model", "user_knn")
    assert p.returncode == 0, p.stderr
    assert sum("similarity" in ln for ln in p.stdout.splitlines()) == 3
    assert sum("shared anime of their" in ln for ln in p.stdout.splitlines()) == 3
    _assert_clean_error(animerec("recommend", "--run", sample_run, "--user", "99999999"), "99999999")
    _assert_clean_error(animerec("similar-anime", "--run", sample_run, "--anime", "1", "--model", "item_knm"),
                        "item_knn")


@pytest.mark.parametrize("text,needle", [
    ('seeds = [0, "x"]', "seeds"), ("seeds = [-1]", "seeds"), ("seeds = []", "seeds"),
    ("seeds = [0.5]", "seeds"), ("[eval]\nk = 0", "eval.k"), ("[eval]\nbatch_users = 0", "eval.k"),
    ("base = 5", "base"), ("models = 1", "models"),
])
def test_bad_config_values_exit_2_before_any_work(tmp_path, text, needle):
    """Issue 13.4: each of these once printed a traceback, ran nothing, or ran seed 0."""
    p = tmp_path / "c.toml"
    p.write_text(f'experiment = "x"\nresults_dir = "{tmp_path}"\n{text}\n[models.popularity]\n'
                 if "models =" not in text else f'experiment = "x"\n{text}\n')
    _assert_clean_error(animerec("run", p), needle)


def test_unwritable_results_dir_is_a_clean_error(tmp_path):
    """An OSError (here: results_dir is a file, so no folder can be made under it) is one line."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = tmp_path / "c.toml"
    p.write_text(f'experiment = "x"\nresults_dir = "{blocker}"\n[data]\nsource = "synth"\n'
                 f'[synth]\nusers = 30\nitems = 20\n[models.popularity]\n')
    _assert_clean_error(animerec("run", p))


@pytest.mark.parametrize("args,needle", [(["-k", "-5"], "must be >= 1"), (["-k", "x"], "whole number")])
def test_bad_k_is_refused(args, needle):
    p = animerec("recommend", "--run", "nowhere", "--user", "1", *args)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


def test_animerec_data_pointing_at_nothing_is_an_error_not_a_fallback(tmp_path):
    """ANIMEREC_DATA given but empty: exit 2 naming the folders looked in, never synthetic numbers;
    a ratings file missing from a real folder is named with its full path."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'experiment = "x"\nresults_dir = "{tmp_path / "results"}"\n'
                   '[data]\nsource = "mal2020"\nfallback_to_synth = true\n[models.popularity]\n')
    env = {**os.environ, "ANIMEREC_DATA": str(empty)}
    p = animerec("run", cfg, "-q", env=env)
    _assert_clean_error(p, str(empty.resolve() / "mal2020"))
    assert not (tmp_path / "results").exists()
    (empty / "mal2020").mkdir()
    (empty / "mal2020" / "anime.csv").write_text("MAL_ID,Name\n1,Cowboy Bebop\n")
    cfg.write_text(cfg.read_text().replace('fallback_to_synth', 'ratings = "nope.csv"\nfallback_to_synth'))
    p = animerec("run", cfg, "-q", env=env)
    _assert_clean_error(p, str(empty.resolve() / "mal2020" / "nope.csv"))
