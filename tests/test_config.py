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
