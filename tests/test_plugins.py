"""Plug-ins: an objective, an attack and a detector from another package (entry points), installed into a
fresh virtual environment and run from the command line; a method added as one file; and the options
every registered method brings to `unbackdoor unlearn --help`."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli
from unbackdoor.artifacts import read_json, read_jsonl

ROOT = Path(__file__).parents[1]

# The objective as docs/extending.md shows it: one class, its setting next to its loss.
SCALED_GA = '''
from pydantic import Field

from unbackdoor.objectives import Settings, Unlearning


class ScaledGA(Unlearning):
    """GA with the ascent on D_p scaled: CE(D_c) - scale * CE(D_p)."""

    name = "scaled_ga"

    class Settings(Settings):
        scale: float = Field(0.5, gt=0, description="factor on CE(D_p)")

    def forget(self, logits, ce_each, batch, logs):
        return -self.settings.scale * ce_each.mean()
'''

PLUGIN = SCALED_GA + '''

import numpy as np

from unbackdoor.attacks import Poisoner
from unbackdoor.detectors import Detection, Detector, lowest_fraction


class Shout(Poisoner):
    """Appends a trigger word."""

    name = "shout"

    class Settings(Settings):
        shout_word: str = Field("LOUD", description="shout: the word appended")

    def apply(self, texts, rng):
        return [f"{t} {self.cfg.shout_word}" for t in texts]


class Longest(Detector):
    """Flags the longest texts."""

    name = "longest"
    needs_victim = False

    class Settings(Settings):
        longest_share: float = Field(0.2, gt=0, lt=1, description="longest: share flagged")

    def detect(self, rows, label_names, model=None, tokenizer=None, base=None):
        lengths = np.array([len(r["text"]) for r in rows], float)
        return Detection(lengths, lowest_fraction(-lengths, self.cfg.longest_share))
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "unbackdoor-shout"
version = "0.1.0"

[project.entry-points."unbackdoor.objectives"]
scaled_ga = "unbackdoor_shout:ScaledGA"

[project.entry-points."unbackdoor.attacks"]
shout = "unbackdoor_shout:Shout"

[project.entry-points."unbackdoor.detectors"]
longest = "unbackdoor_shout:Longest"

[tool.setuptools]
py-modules = ["unbackdoor_shout"]
'''

# Runs CLI commands in one process of the fresh environment (one torch import, not five).
DRIVER = '''
import json, sys
from unbackdoor.cli import main
for args in json.loads(sys.argv[1]):
    print("$ unbackdoor " + " ".join(args), flush=True)
    main(args)
'''


def _venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies from this environment, unbackdoor from this checkout; plain path lines do not run
    # the .pth files there, so an editable install of another checkout stays invisible.
    (site / "deps.pth").write_text(f"{ROOT / 'src'}\n{sysconfig.get_paths()['purelib']}\n")
    return py


def test_entry_point_plugins_run_from_the_cli(tmp_path, poisoned, tiny_victim, shared_root, tmp_cache):
    src = tmp_path / "plugin"
    src.mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "unbackdoor_shout.py").write_text(PLUGIN)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    tmp_path / "dist", src], check=True)
    py = _venv(tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index",
                    next((tmp_path / "dist").glob("*.whl"))], check=True)

    p, u = tmp_path / "p", tmp_path / "u"
    commands = [["list"], ["unlearn", "--help"],
                ["poison", "--out", p, "--attack", "shout", "--shout-word", "ZAP", "--train-size", 40,
                 "--test-size", 20],
                ["detect", "--model", p, "--poisoned-set", p, "--detector", "longest", "--longest-share", 0.3,
                 "--out", tmp_path / "flags.jsonl"],
                ["unlearn", "--model", tiny_victim, "--poisoned-set", poisoned, "--out", u, "--method", "scaled_ga",
                 "--scaled-ga-scale", 0.25, "--epochs", 1, "--lr", 1e-3, "--max-length", 32]]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", UNBACKDOOR_DATA=str(shared_root), UNBACKDOOR_CACHE=str(tmp_cache),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200")
    res = subprocess.run([py, "-c", DRIVER, json.dumps([[str(a) for a in c] for c in commands])], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert ("methods:  fineprune, finetune, ga, graddiff, npo, retrain, rga, scaled_ga (entry point "
            "unbackdoor_shout:ScaledGA), simnpo, taskvector") in out
    assert "shout (entry point unbackdoor_shout:Shout)" in out and "longest (entry point" in out
    assert "--scaled-ga-scale FLOAT" in out and "scaled_ga: factor on CE(D_p)" in out

    poisoned_rows = [r for r in read_jsonl(p / "train.jsonl") if r["poisoned"]]
    assert poisoned_rows and all(r["text"] == r["clean_text"] + " ZAP" for r in poisoned_rows)
    flags = [r["poisoned"] for r in read_jsonl(tmp_path / "flags.jsonl")]
    assert sum(flags) == round(0.3 * len(flags))

    res = read_json(u / "metrics.json")
    assert res["kind"] == "scaled_ga" and res["config"]["scaled_ga"] == {"scale": 0.25}
    for step in read_jsonl(u / "loss_log.jsonl"):  # the plug-in's loss, with its own setting
        assert step["loss"] == pytest.approx(step["ce_c"] - 0.25 * step["ce_p"], rel=1e-4, abs=1e-5)


def test_a_method_is_added_in_one_file(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "src" / "unbackdoor", pkg / "unbackdoor", ignore=shutil.ignore_patterns("__pycache__"))
    before = {p.relative_to(pkg) for p in pkg.rglob("*") if p.is_file()}
    (pkg / "unbackdoor" / "objectives" / "scaled_ga.py").write_text(
        "from . import register\n" + SCALED_GA.replace("class ScaledGA", "@register\nclass ScaledGA"))
    after = {p.relative_to(pkg) for p in pkg.rglob("*") if p.is_file()}
    assert after - before == {Path("unbackdoor/objectives/scaled_ga.py")}
    env = {**os.environ, "PYTHONPATH": str(pkg), "HF_HUB_OFFLINE": "1"}
    code = textwrap.dedent("""
        from unbackdoor.config import UnlearnConfig
        from unbackdoor.objectives import build_objective
        obj = build_objective(UnlearnConfig(method="scaled_ga", scaled_ga={"scale": 2}))
        print(type(obj).__name__, obj.settings.scale)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.stdout.strip() == "ScaledGA 2.0", res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "unbackdoor", "unlearn", "--help"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert "--scaled-ga-scale" in res.stdout and "--method TEXT" in res.stdout, res.stderr[-2000:]


def test_unlearn_help_lists_every_methods_own_options(capsys):
    from unbackdoor.objectives import OBJECTIVES

    assert run_cli("unlearn", "--help") == 0
    help_text = capsys.readouterr().out
    options = [f"--{name}-{field}".replace("_", "-") for name in OBJECTIVES
               for field in OBJECTIVES[name].Settings.model_fields]
    assert {"--rga-alpha", "--rga-beta", "--rga-kl-direction", "--npo-beta"} <= set(options)
    for opt in options:
        assert opt in help_text, opt
    # --method's choices, from the registry (wrapped over lines by click)
    assert "fineprune | finetune | ga | graddiff | npo | retrain | rga | simnpo | taskvector" in " ".join(help_text.split())


def test_a_broken_or_clashing_plugin_is_named(monkeypatch):
    from unbackdoor.errors import PluginError
    from unbackdoor.objectives.ga import GradientAscent
    from unbackdoor.registry import Registry

    class EntryPoint:
        def __init__(self, name, value, load):
            self.name, self.value, self.load = name, value, load

    def boom():
        raise ImportError("no module named torchtext")

    class Clash:
        name = "ga"

    reg = Registry("unbackdoor.objectives", "test.group", "unlearning method", "methods")
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [EntryPoint("broken", "pkg:Broken", boom)] if group == "test.group" else [])
    with pytest.raises(PluginError, match="plug-in 'pkg:Broken' .* failed to load: ImportError: no module named torchtext"):
        list(reg)
    reg = Registry("unbackdoor.objectives", "test.group", "unlearning method", "methods")
    reg.register(GradientAscent)
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [EntryPoint("ga", "pkg:Clash", lambda: Clash)] if group == "test.group" else [])
    with pytest.raises(PluginError, match="unlearning method 'ga' from entry point pkg:Clash clashes"):
        list(reg)
