"""Configs: inheritance, typed overrides, and one-line errors naming the key and file."""
import pytest

from research import config
from research.errors import ConfigError
from research.experiment import build_models


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_base_inheritance_and_override(tmp_path):
    _write(tmp_path, "base.toml", 'experiment = "b"\nseeds = [0]\n[split]\ntest_fraction = 0.3\n[models.bias]\n')
    child = _write(tmp_path, "c.toml", 'base = "base.toml"\nexperiment = "c"\n[split]\nkind = "user_holdout"\n')
    cfg = config.load(child, ["seeds=[1,2]", "split.val_fraction=0.2", "models.bias.user_damping=7"])
    assert cfg.experiment == "c" and cfg.seeds == (1, 2)
    assert cfg.split.kind == "user_holdout" and cfg.split.test_fraction == 0.3 and cfg.split.val_fraction == 0.2
    assert cfg.model("bias").params == {"user_damping": 7}


def test_unknown_key_names_key_file_and_nearest(tmp_path):
    p = _write(tmp_path, "bad.toml", "[split]\ntest_fracton = 0.3\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert "split.test_fracton" in msg and "bad.toml" in msg and "split.test_fraction" in msg


def test_unknown_top_level_key(tmp_path):
    p = _write(tmp_path, "bad.toml", "sedes = [0]\n")
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        config.load(p)


def test_wrong_type(tmp_path):
    p = _write(tmp_path, "bad.toml", '[eval]\nk = "ten"\n')
    with pytest.raises(ConfigError, match="eval.k.*expected int"):
        config.load(p)


def test_unknown_model_and_parameter(tmp_path):
    p = _write(tmp_path, "m.toml", "[models.item_knnn]\n")
    with pytest.raises(ConfigError, match="did you mean 'item_knn'"):
        build_models(config.load(p), 0)
    p = _write(tmp_path, "m2.toml", "[models.bias]\nuser_dampng = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'user_damping'"):
        build_models(config.load(p), 0)


SHIPPED = sorted((config.REPO_ROOT / "experiments" / "configs").glob("*.toml"))


def test_shipped_configs_load():
    """Every shipped config loads, is named after its file (two configs with one experiment name
    would share results/runs/<experiment>/) and names registered models only."""
    from research.models import registry

    assert len(SHIPPED) > 10
    for p in SHIPPED:
        cfg = config.load(p)
        assert cfg.experiment == p.stem, p
        for spec in cfg.models:
            assert spec.type in registry.MODELS, (p.name, spec.name, spec.type)


@pytest.mark.keras
def test_shipped_configs_models_build():
    """Every model table of every shipped config has valid constructor arguments (a renamed
    parameter would otherwise surface only when that experiment is next run)."""
    import importlib.util

    from research.models import registry

    peers = all(importlib.util.find_spec(m) for m in ("surprise", "implicit"))
    for p in SHIPPED:
        cfg = config.load(p)
        for spec in cfg.models:
            if spec.type in registry.PEER_MODELS and not peers:
                continue  # needs the peers extra
            registry.build(spec.type, spec.params, seed=0, where=f" (models.{spec.name} in {p.name})")


@pytest.mark.parametrize("key,value", [("experiment", "../../x"), ("experiment", "/tmp/x"), ("experiment", ".."),
                                       ("experiment", "a/b"), ("model", "../../../../x"), ("model", ".")])
def test_names_that_would_escape_results_are_refused(tmp_path, key, value):
    text = (f'experiment = "{value}"\n' if key == "experiment" else 'experiment = "ok"\n'
            f'[models."{value}"]\ntype = "popularity"\n')
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="not a plain name"):
        config.load(p)


def test_run_folder_refuses_paths_outside_results(tmp_path):
    from research.results import RunFolder

    with pytest.raises(ConfigError, match="outside the results folder"):
        RunFolder(tmp_path / "results" / "runs" / ".." / ".." / "elsewhere", tmp_path / "results")
    RunFolder(tmp_path / "results" / "runs" / "exp" / "run", tmp_path / "results")  # inside: fine


@pytest.mark.parametrize("key,value,hint", [("data.unrated", '"kep"', "did you mean 'keep'"),
                                            ("split.kind", '"randm"', "did you mean 'random'"),
                                            ("data.source", '"mal2021"', "did you mean 'mal2020'"),
                                            ("split.fit_on", '"val"', "not one of")])
def test_choices_are_checked_when_the_config_loads(tmp_path, key, value, hint):
    """A typo in a choice fails at load, before any data is read, naming the key."""
    p = _write(tmp_path, "c.toml", 'experiment = "x"\n')
    with pytest.raises(ConfigError, match=f"{key}.*{hint}"):
        config.load(p, [f"{key}={value}"])
