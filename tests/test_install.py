"""A non-editable install: the wheel alone must carry everything the CLI needs, presets included."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_wheel_installed_elsewhere_finds_its_presets(tmp_path):
    # Build from a copy, so the checkout gets no build/ folder.
    src = tmp_path / "src-copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    tmp_path / "dist", src], check=True)
    wheel = next((tmp_path / "dist").glob("unbackdoor-*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies come from this environment, without reinstalling them. A plain path line does
    # not run the .pth files there, so the editable install of the checkout stays invisible.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index",
                    wheel], check=True)

    work = tmp_path / "elsewhere"  # no configs/ here
    work.mkdir()

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:/usr/bin:/bin", HF_HUB_OFFLINE="1")

    def run(*args):
        return subprocess.run([venv / "bin" / "unbackdoor", *args], cwd=work, capture_output=True, text=True, env=env)

    where = subprocess.run([py, "-c", "import unbackdoor.config as c; print(c.__file__); "
                                      "print(c.resolve_config_path('paper-sst2'))"],
                           cwd=work, capture_output=True, text=True, check=True, env=env).stdout.split()
    assert all(Path(w).is_relative_to(site) for w in where), where  # the wheel's files, not the checkout's
    res = run("list")
    assert res.returncode == 0, res.stderr
    presets = res.stdout.split("presets:")[1]
    assert "demo" in presets and "paper-sst2" in presets and "authors-code" in presets
    res = run("demo", "--help")
    assert res.returncode == 0 and "ReTrain" in res.stdout, res.stderr
    res = run("run", "no-such-preset")
    assert res.returncode == 2 and "presets: authors-code, cpu-agnews" in res.stderr, res.stderr


def test_local_configs_override_the_packaged_presets(tmp_path, monkeypatch, capsys):
    from unbackdoor.config import configs_dir, presets, resolve_config_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("name: mine\n")
    (tmp_path / "configs" / "mine.yaml").write_text("name: mine\n")
    assert presets()["paper-sst2"] == configs_dir() / "paper-sst2.yaml"
    assert resolve_config_path("mine") == Path("configs/mine.yaml").absolute()
    assert "shadows" not in capsys.readouterr().err
    assert resolve_config_path("demo") == Path("configs/demo.yaml").absolute()
    assert "shadows the packaged preset 'demo'" in capsys.readouterr().err
