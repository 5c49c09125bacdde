"""`unbackdoor run`: a grid of datasets x attacks x seeds x methods, sharing what can be shared.

One poisoned set, one victim and one ReTrain per (dataset, attack, seed); every unlearning method
starts from that victim. Each finished stage leaves a metrics.json; re-running the same command
skips those and resumes an interrupted stage from its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from .artifacts import read_json, write_json
from .config import AttackConfig, DataConfig, DetectConfig, Strict, TrainConfig, UnlearnConfig, validate
from .errors import ConfigError


class PoisonSection(Strict):
    data: DataConfig = DataConfig()
    attack: AttackConfig = AttackConfig()


class ExperimentConfig(Strict):
    name: str = "experiment"
    output_dir: str = Field("runs/experiment", description="results folder (one sub-folder per cell)")
    datasets: list[str] = ["sst2"]
    attacks: list[str] = ["badnets"]
    methods: list[str] = ["retrain", "ga", "npo", "rga"]
    seeds: list[int] = [42]
    eval_splits: list[str] = ["test"]
    poison: PoisonSection = PoisonSection()
    train: TrainConfig = TrainConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    method_overrides: dict[str, dict] = Field(default_factory=dict, description="per-method unlearn settings, e.g. {ga: {lr: 5e-5}}")
    detectors: list[str] = Field(default_factory=list, description="also unlearn from each detector's flags (stage <method>-<detector>)")
    detect: DetectConfig = DetectConfig()
    poisoned_fractions: list[float] = Field(default_factory=list, description="also unlearn from a random share of the true D_p (stage <method>-gt<percent>)")


def cell_dir(cfg: ExperimentConfig, dataset: str, attack: str, seed: int) -> Path:
    return Path(cfg.output_dir) / dataset / attack / f"seed{seed}"


def _done(path: Path) -> bool:
    return (path / "metrics.json").is_file()


def repair(folder: Path, log=print) -> None:
    """Remove what a crash can leave: half-written temporary files and folders (never the results,
    which only appear by an atomic rename). A stage folder without metrics.json is resumed from its
    checkpoint, never merged with a finished one."""
    import shutil

    if not folder.is_dir():
        return
    for p in sorted(folder.rglob(".*.tmp*")) + sorted(folder.rglob("checkpoint.tmp")) + \
            sorted(folder.rglob("checkpoint.old")):
        if p.exists():
            log(f"removing {p} left by an interrupted run")
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_experiment(cfg: ExperimentConfig, progress: bool = True, log=print) -> list[Path]:
    from .detection import run_detect
    from .pipeline import run_poison, run_train, run_unlearn
    from .config import PoisonConfig

    from .attacks import ATTACKS
    from .unlearning import OBJECTIVES

    valid_methods = sorted(set(OBJECTIVES) - {"ce"} | {"retrain"})
    for m in cfg.methods:
        if m not in valid_methods:
            raise ConfigError(f"methods: unknown method '{m}'; valid methods: {', '.join(valid_methods)}")
    for a in cfg.attacks:
        if a not in ATTACKS:
            raise ConfigError(f"attacks: unknown attack '{a}'; valid attacks: {', '.join(sorted(ATTACKS))}")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "experiment.json"
    if previous.is_file():
        old = read_json(previous)
        changed = sorted(k for k in ("poison", "train", "unlearn", "method_overrides")
                         if old.get(k) != json.loads(json.dumps(cfg.model_dump()[k])))
        if changed:
            raise ConfigError(f"{out} holds results of a different experiment (sections {changed} differ from "
                              f"{previous}); use a new output_dir rather than mixing them")
    repair(out, log)
    write_json(out / "experiment.json", cfg.model_dump())
    finished = []
    for dataset in cfg.datasets:
        for attack in cfg.attacks:
            for seed in cfg.seeds:
                cell = cell_dir(cfg, dataset, attack, seed)
                tag = f"{dataset}/{attack}/seed{seed}"
                pcfg = PoisonConfig(data=cfg.poison.data.model_copy(update={"dataset": dataset}),
                                    attack=cfg.poison.attack.model_copy(update={"name": attack}), seed=seed)
                if not (cell / "poisoned" / "meta.json").is_file():
                    log(f"[{tag}] poisoning")
                    run_poison(pcfg, cell / "poisoned")
                tcfg = cfg.train.model_copy(update={"seed": seed})
                for stage, clean_only in (("victim", False), ("retrain", True)):
                    if stage == "retrain" and "retrain" not in cfg.methods:
                        continue
                    if not _done(cell / stage):
                        log(f"[{tag}] training {stage}")
                        run_train(cell / "poisoned", tcfg, cell / stage, clean_only=clean_only,
                                  eval_splits=tuple(cfg.eval_splits), progress=progress)
                    finished.append(cell / stage)
                sources = {"": cell / "poisoned"}  # stage suffix -> where D_p comes from
                for name in cfg.detectors:
                    flags = cell / f"detect-{name}" / "flags.jsonl"
                    if not flags.is_file():
                        log(f"[{tag}] detecting with {name}")
                        run_detect(cell / "victim", cell / "poisoned", cfg.detect.model_copy(update={"detector": name}),
                                   flags)
                    sources[f"-{name}"] = flags
                for frac in cfg.poisoned_fractions:
                    sources[f"-gt{round(100 * frac)}"] = partial_ground_truth(cell, frac, seed)
                for method in cfg.methods:
                    if method == "retrain":
                        continue
                    data = cfg.unlearn.model_dump()
                    data.update(method=method, seed=seed, **cfg.method_overrides.get(method, {}))
                    ucfg = validate(UnlearnConfig, data, f"unlearn config for {method}")
                    for suffix, source in sources.items():
                        stage = cell / f"{method}{suffix}"
                        if not _done(stage):
                            log(f"[{tag}] unlearning with {method}{' from ' + suffix[1:] if suffix else ''}")
                            run_unlearn(cell / "victim", source, ucfg, stage, eval_set=cell / "poisoned",
                                        eval_splits=tuple(cfg.eval_splits), progress=progress)
                        finished.append(stage)
    return finished


def partial_ground_truth(cell: Path, fraction: float, seed: int) -> Path:
    """A flag file with a random `fraction` of the true poisoned samples flagged (incomplete detection);
    the unflagged poisoned samples stay in D_c, as they would after a detector missed them."""
    import random

    from .artifacts import read_jsonl, write_jsonl

    if not 0 < fraction <= 1:
        raise ConfigError(f"poisoned_fractions: {fraction} is not in (0, 1]")
    out = cell / f"subset-gt{round(100 * fraction)}" / "flags.jsonl"
    if not out.is_file():
        rows = read_jsonl(cell / "poisoned" / "train.jsonl")
        poisoned = [i for i, r in enumerate(rows) if r.get("poisoned")]
        keep = set(random.Random(seed).sample(poisoned, max(1, round(fraction * len(poisoned)))))
        write_jsonl(out, [{"text": r["text"], "label": r["label"], "poisoned": int(i in keep)}
                          for i, r in enumerate(rows)])
    return out


def load_results(results_dir: str | Path) -> list[dict]:
    """Every finished stage under a results folder, tagged with dataset, attack, seed and method."""
    rows = []
    for metrics in sorted(Path(results_dir).glob("*/*/seed*/*/metrics.json")):
        stage = metrics.parent
        res = read_json(metrics)
        rows.append({"dataset": stage.parents[2].name, "attack": stage.parents[1].name,
                     "seed": int(stage.parent.name[4:]), "method": stage.name, "dir": stage, **res})
    return rows
