from pathlib import Path

import pytest

from unbackdoor.config import (ConfigError, PoisonConfig, TrainConfig, UnlearnConfig, apply_overrides, configs_dir,
                               load_yaml, validate)
from unbackdoor.grid import ExperimentConfig

CONFIGS = sorted(configs_dir().glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_validates(path):
    data = load_yaml(path)
    if "datasets" in data:
        validate(ExperimentConfig, data, str(path))
    else:
        validate(PoisonConfig, data.get("poison", {}), str(path))
        validate(TrainConfig, data.get("train", {}), str(path))
        validate(UnlearnConfig, data.get("unlearn", {}), str(path))


def test_paper_defaults():
    u = UnlearnConfig()
    assert (u.epochs, u.lr, u.batch_size, u.grad_clip, u.rga.alpha, u.rga.beta, u.npo.beta) == (30, 2e-5, 32, 1.0, 2.0,
                                                                                                  1e-2, 0.1)
    assert (u.rga.kl_direction, u.rga.lambda_mode, u.rga.l2) == ("current_poisoned", "batch", "global")
    t = TrainConfig()
    assert (t.epochs, t.batch_size, t.max_length, t.lr) == (3, 32, 128, 2e-5)
    assert PoisonConfig().attack.rate == 0.5 and PoisonConfig().attack.mode == "replace"


def test_overrides_and_typos():
    data = apply_overrides({}, ["rga.alpha=1", "epochs=5", "early_stop.criterion=lambda"])
    cfg = validate(UnlearnConfig, data)
    assert cfg.rga.alpha == 1.0 and cfg.epochs == 5 and cfg.early_stop.criterion == "lambda"
    with pytest.raises(ConfigError, match=r"unknown key 'rga.alhpa'; did you mean 'alpha'\?"):
        validate(UnlearnConfig, {"rga": {"alhpa": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'epoch'; did you mean 'epochs'\?"):
        validate(UnlearnConfig, {"epoch": 3})
    with pytest.raises(ConfigError, match=r"'rga.kl_direction': Input should be 'current_poisoned' or"):
        validate(UnlearnConfig, {"rga": {"kl_direction": "forward"}})
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["epochs"])


def test_method_settings_by_section_in_files_overrides_and_options(tmp_path):
    from unbackdoor.cli import build_config

    preset = tmp_path / "mine.yaml"
    preset.write_text("unlearn:\n  rga: {beta: 0.05, l2: per_tensor}\n  npo: {beta: 1.0}\n")
    cfg = build_config(UnlearnConfig, "unlearn", str(preset), ["unlearn.rga.alpha=1", "npo.beta=2"],
                       {"cfg__rga__kl_direction": "poisoned_current"})
    assert (cfg.rga.beta, cfg.rga.l2, cfg.rga.alpha, cfg.rga.kl_direction, cfg.npo.beta) == (
        0.05, "per_tensor", 1.0, "poisoned_current", 2.0)
    with pytest.raises(ConfigError, match=r"unknown key 'rga.alhpa'; did you mean 'alpha'\?"):
        build_config(UnlearnConfig, "unlearn", None, ["unlearn.rga.alhpa=1"], {})


# ---------------------------------------------------------------- extends: one base, only the differences

def test_extends_lays_a_file_over_a_preset_and_over_a_nearby_file(tmp_path):
    demo = load_yaml(configs_dir() / "demo.yaml")
    (tmp_path / "mine.yaml").write_text("extends: demo\nseeds: [1, 2]\nunlearn: {lr: 3.0e-5, rga: {alpha: 4.0}}\n")
    mine = load_yaml(tmp_path / "mine.yaml")
    # Sections merge key by key, at every depth; lists and values replace; 'extends' itself is gone.
    assert mine["seeds"] == [1, 2] and "extends" not in mine
    assert mine["unlearn"]["lr"] == 3.0e-5 and mine["unlearn"]["epochs"] == demo["unlearn"]["epochs"] == 8
    assert mine["unlearn"]["rga"] == {"alpha": 4.0, "beta": demo["unlearn"]["rga"]["beta"]}
    assert mine["train"] == demo["train"]
    # A relative file name is read beside the extending file, whatever the working directory.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "more.yaml").write_text("extends: ../mine.yaml\nunlearn: {epochs: 2}\n")
    more = load_yaml(tmp_path / "sub" / "more.yaml")
    assert (more["unlearn"]["epochs"], more["unlearn"]["lr"], more["seeds"]) == (2, 3.0e-5, [1, 2])


def test_cpu_presets_are_the_demo_settings_they_say_they_are():
    demo, hsol = load_yaml(configs_dir() / "demo.yaml"), load_yaml(configs_dir() / "cpu-hsol.yaml")
    assert hsol["train"] == demo["train"] and hsol["poison"] == demo["poison"]
    assert {k: v for k, v in hsol["unlearn"].items() if k not in ("eval_every", "checkpoint_every")} == \
        {k: v for k, v in demo["unlearn"].items() if k not in ("eval_every", "checkpoint_every")}


def test_extends_errors_name_the_file(tmp_path, capsys):
    from conftest import run_cli

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: 'extends: a\.yaml' makes a cycle \(a\.yaml -> b\.yaml -> a\.yaml\)"):
        load_yaml(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: no-such-preset\n")
    assert run_cli("run", tmp_path / "c.yaml") == 2
    assert "no config file or preset named 'no-such-preset'" in capsys.readouterr().err
    (tmp_path / "d.yaml").write_text("extends: [demo, cpu-hsol]\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: 'extends' must name one preset or config file"):
        load_yaml(tmp_path / "d.yaml")
