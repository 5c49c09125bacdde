"""`unbackdoor run`: a grid of datasets x attacks x seeds x methods over the stages (stages.py),
sharing what can be shared.

One poisoned set, one victim and one ReTrain per (dataset, attack, seed); every unlearning method
starts from that victim. Each finished stage leaves a metrics.json; re-running the same command
skips those and resumes an interrupted stage from its checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from .artifacts import read_json, write_json
from .config import AttackConfig, DataConfig, DetectConfig, Strict, TrainConfig, UnlearnConfig, merge_sections, validate
from .objectives import OBJECTIVES
from .errors import ConfigError
from .probes import ProbeConfig


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
    method_overrides: dict[str, dict] = Field(default_factory=dict, description="per-method unlearn settings, e.g. {ga: {lr: 5e-5}}; an entry with its own 'method' is a named variant, e.g. {npo-b1: {method: npo, npo: {beta: 1.0}}}, run as its own row")
    attack_overrides: dict[str, dict] = Field(default_factory=dict, description="per-attack poison.attack settings, e.g. {hiddenkiller: {mode: add, rate: 0.1, poisoned_train: rga_reference}} (the authors' AG News setting)")
    data_overrides: dict[str, dict] = Field(default_factory=dict, description="per-attack poison.data settings, e.g. "
                                            "{stylebkd: {train_size: 2400}}: an attack whose victim needs more rows to learn "
                                            "its trigger gets them without resizing the others; the report marks such rows")
    detectors: list[str] = Field(default_factory=list, description="also unlearn from each detector's flags (stage <method>-<detector>)")
    detect: DetectConfig = DetectConfig()
    poisoned_fractions: list[float] = Field(default_factory=list, description="also unlearn from a random share of the true D_p (stage <method>-gt<percent>)")
    probes: ProbeConfig = Field(default_factory=ProbeConfig, description="relearning and trigger variants of every "
                                "finished model of a cell (<stage>/probes.json); relearn_lr defaults to unlearn.lr")


def cell_dir(cfg: ExperimentConfig, dataset: str, attack: str, seed: int) -> Path:
    """`dataset` is the folder name from dataset_dirs(), never a user's file path."""
    return Path(cfg.output_dir) / dataset / attack / f"seed{seed}"


def _dataset_key(dataset: str) -> str:
    from .data import NAMED

    return dataset if dataset in NAMED or dataset.startswith("hf:") else str(Path(dataset).resolve())


def dataset_dirs(datasets: list[str], previous: dict[str, str] | None = None) -> dict[str, str]:
    """Folder name -> dataset (a named one, hf:<name>, or a file's absolute path), for this grid's datasets
    and those an earlier run of the same folder recorded.

    A file gets its stem, so results stay inside output_dir whatever the path; a second file with the
    same stem gets -2, -3, .... A dataset keeps the folder it had in an earlier run, and a different
    file never takes over another's folder, so results of one file are never reused for another."""
    import re

    from .data import NAMED

    dirs = dict(previous or {})
    for d in datasets:
        key = _dataset_key(d)
        if key in dirs.values():
            continue
        if d in NAMED:
            dirs[d] = d
            continue
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", d[3:] if d.startswith("hf:") else Path(d).stem).strip(".-")
        base = base or "dataset"
        # Names of the built-in datasets and the report folder stay free for what they name.
        slug, i = base, 1
        while slug in dirs or slug in NAMED or slug == "report":
            i += 1
            slug = f"{base}-{i}"
        dirs[slug] = key
    return dirs


def _compared(data: dict) -> dict:
    """The settings results depend on, with fields added since `data` was written filled with their
    defaults, so a new option does not make an old results folder look like another experiment."""
    if isinstance(data.get("unlearn"), dict) and "select" not in data["unlearn"]:
        # Written before unlearn.select existed, so unlearned without it: its default (stop) would
        # pass those results off as selected ones.
        data = {**data, "unlearn": {**data["unlearn"], "select": {"action": "off"}}}
    try:
        data = ExperimentConfig.model_validate({k: v for k, v in data.items() if k in ExperimentConfig.model_fields})
        data = json.loads(json.dumps(data.model_dump()))
    except ValueError:
        pass
    return {k: data.get(k) for k in ("poison", "attack_overrides", "data_overrides", "train", "unlearn", "method_overrides")}


def _stale_stages(cfg: ExperimentConfig, cells: list[Path]) -> list[str]:
    """Detector flags and ground-truth subsets on disk that other settings made: reusing them would give
    results under this config's name that it did not produce."""
    stale = []
    for cell in cells:
        for name in cfg.detectors:
            m = cell / f"detect-{name}" / "flags.metrics.json"
            if m.is_file():
                made = read_json(m).get("config", {})
                try:
                    made = DetectConfig.model_validate(made).model_dump()
                except ValueError:
                    pass
                if made != cfg.detect.model_copy(update={"detector": name}).model_dump():
                    stale.append(str(m.parent))
        for frac in cfg.poisoned_fractions:
            m = cell / f"subset-gt{round(100 * frac)}" / "subset.json"
            if m.is_file() and read_json(m)["fraction"] != frac:
                stale.append(str(m.parent))
    return stale


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


def _attack_config(cfg: ExperimentConfig, attack: str) -> AttackConfig:
    # From the fields set, so that an imported poisoned set checks only a rate someone actually gave.
    data = {**cfg.poison.attack.model_dump(exclude_unset=True), **cfg.attack_overrides.get(attack, {}), "name": attack}
    return validate(AttackConfig, data, f"poison.attack with attack_overrides.{attack}")


def _data_config(cfg: ExperimentConfig, attack: str, dataset: str) -> DataConfig:
    over = cfg.data_overrides.get(attack, {})
    if "dataset" in over:
        # The grid's datasets say what is run; a per-attack dataset would file one dataset's results under another's.
        raise ConfigError(f"data_overrides.{attack}.dataset: the dataset comes from 'datasets', not from a per-attack override")
    data = {**cfg.poison.data.model_dump(exclude_unset=True), **over, "dataset": dataset}
    return validate(DataConfig, data, f"poison.data with data_overrides.{attack}")


def run_experiment(cfg: ExperimentConfig, progress: bool = True, log=print) -> list[Path]:
    from .attacks import ATTACKS
    from .config import PoisonConfig
    from .stages import run_detect, run_poison, run_train, run_unlearn

    for m in cfg.methods:
        # A named variant (e.g. npo-b1) is a method_overrides entry that says which objective it runs. A method
        # that trains from scratch (ReTrain) is a stage of the cell, trained with the train settings: no variants.
        base = cfg.method_overrides.get(m, {}).get("method", m)
        if base not in OBJECTIVES or OBJECTIVES[base].from_scratch and m != base:
            raise ConfigError(f"methods: unknown method '{m}'; valid methods: {', '.join(OBJECTIVES)}, or a "
                              "variant named in method_overrides with its method, e.g. {npo-b1: {method: npo, "
                              "npo: {beta: 1.0}}}")
    for a in cfg.attacks:
        if a not in ATTACKS:
            raise ConfigError(f"attacks: unknown attack '{a}'; valid attacks: {', '.join(sorted(ATTACKS))}")
    per_attack = [("attack_overrides", lambda a: _attack_config(cfg, a)),
                  ("data_overrides", lambda a: _data_config(cfg, a, cfg.datasets[0] if cfg.datasets else "sst2"))]
    for field, build in per_attack:
        for a in getattr(cfg, field):
            # Checked against every attack, not this grid's: a preset's override stays valid when a command runs
            # one attack of it (attacks=[badnets]), while a typo would silently run the paper's setting instead.
            if a not in ATTACKS:
                raise ConfigError(f"{field}: unknown attack '{a}'; valid attacks: {', '.join(sorted(ATTACKS))}")
            build(a)  # a bad field fails now, not after the cells before it have run
    for s in cfg.eval_splits:
        if s not in ("test", "dev"):
            import difflib

            close = difflib.get_close_matches(s, ["test", "dev"], n=1)
            raise ConfigError(f"eval_splits: unknown split '{s}'"
                              + (f"; did you mean '{close[0]}'?" if close else "; valid splits: test, dev"))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "experiment.json"
    old = read_json(previous) if previous.is_file() else {}
    if old:
        before, now = _compared(old), _compared(cfg.model_dump())
        # A newly named variant adds a method and leaves the ones that ran alone; a new override of a
        # registered method (which may have run without one) changes them.
        for name in set(now["method_overrides"] or {}) - set(before["method_overrides"] or {}) - set(OBJECTIVES):
            del now["method_overrides"][name]
        changed = sorted(k for k in before if before[k] != now[k])
        if changed:
            raise ConfigError(f"{out} holds results of a different experiment (sections {changed} differ from "
                              f"{previous}); use a new output_dir rather than mixing them")
    dirs = dataset_dirs(cfg.datasets, old.get("dataset_dirs"))
    stale = _stale_stages(cfg, [cell_dir(cfg, slug, a, s) for slug in dirs for a in cfg.attacks for s in cfg.seeds])
    if stale:
        raise ConfigError(f"{out} holds detector flags or subsets made with other settings ({', '.join(stale)}); "
                          f"use a new output_dir, or delete those folders and the stages unlearned from them")
    repair(out, log)
    write_json(out / "experiment.json", {**cfg.model_dump(), "dataset_dirs": dirs})
    folder_of = {key: slug for slug, key in dirs.items()}
    from_scratch = [m for m in cfg.methods if m in OBJECTIVES and OBJECTIVES[m].from_scratch]
    finished = []
    for dataset in cfg.datasets:
        for attack in cfg.attacks:
            for seed in cfg.seeds:
                cell = cell_dir(cfg, folder_of[_dataset_key(dataset)], attack, seed)
                tag = f"{cell.parents[1].name}/{attack}/seed{seed}"
                pcfg = PoisonConfig(data=_data_config(cfg, attack, dataset),
                                    attack=_attack_config(cfg, attack), seed=seed)
                if not (cell / "poisoned" / "meta.json").is_file():
                    log(f"[{tag}] poisoning")
                    run_poison(pcfg, cell / "poisoned")
                tcfg = cfg.train.model_copy(update={"seed": seed})
                for stage, clean_only in [("victim", False)] + [(m, True) for m in from_scratch]:
                    if not _done(cell / stage):
                        log(f"[{tag}] training {stage}")
                        run_train(cell / "poisoned", tcfg, cell / stage, clean_only=clean_only,
                                  eval_splits=tuple(cfg.eval_splits), progress=progress)
                    warn_if_degenerate(cell / stage, tag, log)
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
                    if method in from_scratch:
                        continue
                    data = cfg.unlearn.model_dump()
                    data.update(method=method, seed=seed)
                    data = merge_sections(data, cfg.method_overrides.get(method, {}))  # sections merge, not replace
                    ucfg = validate(UnlearnConfig, data, f"unlearn config for {method}")
                    for suffix, source in sources.items():
                        stage = cell / f"{method}{suffix}"
                        if not _done(stage):
                            log(f"[{tag}] unlearning with {method}{' from ' + suffix[1:] if suffix else ''}")
                            run_unlearn(cell / "victim", source, ucfg, stage, eval_set=cell / "poisoned",
                                        eval_splits=tuple(cfg.eval_splits), progress=progress)
                        warn_if_degenerate(stage, tag, log)
                        finished.append(stage)
                if cfg.probes.enabled:
                    probe_cell(cfg, cell, attack, [s for s in finished if s.parent == cell], tag, log)
    return finished


def probe_cell(cfg: ExperimentConfig, cell: Path, attack: str, stages: list[Path], tag: str, log=print) -> None:
    """Probes of every finished model of a cell, ReTrain's first: the others are compared with it. All are
    relearned at one lr, so that their relearned LFRs differ by what the models kept, not by their settings."""
    from .probes import has_trigger_variants
    from .stages import run_probes

    probes = cfg.probes
    if probes.trigger_variants and not has_trigger_variants(attack):
        probes = probes.model_copy(update={"trigger_variants": False})
        if not probes.enabled:
            return
    reference = next((s for s in stages if OBJECTIVES.get(s.name) and OBJECTIVES[s.name].from_scratch), None)
    metrics = None
    for stage in ([reference] if reference else []) + [s for s in stages if s != reference]:
        res = run_probes(stage, cell / "poisoned", probes, probes.relearn_lr or cfg.unlearn.lr, cfg.unlearn.max_length,
                         cfg.unlearn.eval_batch_size, tuple(cfg.eval_splits), None if stage == reference else metrics,
                         log=lambda msg: log(f"[{tag}] {msg}"))
        if stage == reference:
            metrics = res["metrics"]


def warn_if_degenerate(stage: Path, tag: str, log=print) -> None:
    """Finished stages too, so a resumed grid still says which of its models learned nothing."""
    for split, m in read_json(stage / "metrics.json").get("metrics", {}).items():
        if m.get("degenerate"):
            log(f"[{tag}] WARNING: the {stage.name} model is degenerate on {split}: {m['degenerate']}")


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
        write_json(out.with_name("subset.json"), {"fraction": fraction, "seed": seed})
    return out


def load_results(results_dir: str | Path) -> list[dict]:
    """Every finished stage under a results folder, tagged with dataset, attack, seed and method."""
    rows = []
    for metrics in sorted(Path(results_dir).glob("*/*/seed*/*/metrics.json")):
        stage = metrics.parent
        res = read_json(metrics)
        if (stage / "probes.json").is_file():
            res["probes"] = read_json(stage / "probes.json")["metrics"]
        rows.append({"dataset": stage.parents[2].name, "attack": stage.parents[1].name,
                     "seed": int(stage.parent.name[4:]), "method": stage.name, "dir": stage, **res})
    return rows
