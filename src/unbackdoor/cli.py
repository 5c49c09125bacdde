"""`unbackdoor` command line. Every config field is an option (shown with its default in --help),
and `--config FILE` / `-s key=value` take YAML files and dotted overrides, as in Hydra-style tools.
"""

from __future__ import annotations

import sys
import typing
import click
from pydantic import BaseModel

from .config import (DetectConfig, PoisonConfig, TrainConfig, UnlearnConfig, apply_overrides, load_yaml, resolve_config_path,
                     set_dotted, validate)
from .errors import UnbackdoorError

# Sections whose fields become options without a prefix (PoisonConfig.data.dataset -> --dataset).
_FLAT = {"data", "attack"}


def _leaves(cls: type[BaseModel], prefix: tuple = ()):
    for name, info in cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaves(ann, prefix + (name,))
        else:
            yield prefix + (name,), info


def _option_name(path: tuple) -> str:
    parts = [p for p in path[:-1] if p not in _FLAT]
    leaf = path[-1]
    if leaf == "name":  # attack.name -> --attack
        return "--" + path[-2].replace("_", "-")
    return "--" + "-".join(parts + [leaf]).replace("_", "-")


def _click_type(ann):
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _click_type(non_none[0])
        return None
    if origin is typing.Literal:
        return click.Choice([str(a) for a in args])
    return {int: int, float: float, str: str}.get(ann)


def config_options(cls: type[BaseModel]):
    """Decorator adding one option per config field; values land in kwargs['_overrides']."""

    def deco(f):
        keys = {}
        for path, info in reversed(list(_leaves(cls))):
            opt = _option_name(path)
            dest = "cfg__" + "__".join(path)
            keys[dest] = ".".join(path)
            desc = info.description or ""
            if len(path) > 1 and path[0] not in _FLAT and not desc.startswith(path[0]):
                desc = f"{path[0]}: {desc}"  # a section's options say whose they are: "rga: decay rate of lambda"
            default = info.default
            if info.annotation is bool:
                f = click.option(f"{opt}/--no-{opt[2:]}", dest, default=None,
                                 help=f"{desc} [default: {default}]")(f)
                continue
            ctype = _click_type(info.annotation)
            list_like = ctype is None or "list" in str(info.annotation)
            help_ = f"{desc}{' (comma-separated)' if 'list' in str(info.annotation) else ''} [default: {default}]"
            f = click.option(opt, dest, type=str if list_like else ctype, default=None, help=help_.strip())(f)
        f.__config_keys__ = keys
        return f

    return deco


def build_config(cls, section: str | None, config_file, sets, kwargs):
    # Options of list fields take comma-separated values: --triggers cf,mn --lora-target-modules q_proj,k_proj
    lists = {".".join(path) for path, info in _leaves(cls) if "list" in str(info.annotation)}
    data = {}
    if config_file:
        data = load_yaml(resolve_config_path(config_file))
        if section and section in data:
            data = data[section]
    for dest, value in kwargs.items():
        if dest.startswith("cfg__") and value is not None:
            key = dest[5:].replace("__", ".")
            if key in lists and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            set_dotted(data, key, value)
    # -s unlearn.rga.beta=0 as in a grid's overrides, or -s rga.beta=0 within the command's own section.
    prefix = f"{section}."
    apply_overrides(data, [s[len(prefix):] if section and s.startswith(prefix) else s for s in sets])
    return validate(cls, data, source=f"{section or cls.__name__} config")


def _common(f):
    f = click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="override any config field, e.g. -s rga.alpha=1")(f)
    f = click.option("--config", "config_file", default=None, metavar="FILE|PRESET",
                     help="YAML config file or a preset name under configs/")(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="unbackdoor")
def cli():
    """Remove textual backdoors from trained classifiers by Robust Gradient Ascent (RGA)."""


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder to write the poisoned set to")
@_common
@config_options(PoisonConfig)
def poison(out, config_file, sets, **kw):
    """Poison a training set and build the triggered test sets (trigger in every class)."""
    from .stages import run_poison

    cfg = build_config(PoisonConfig, "poison", config_file, sets, kw)
    ps = run_poison(cfg, out)
    c, how = ps.meta["counts"], ps.meta["poisoning"]
    click.echo(f"wrote {out}: {c['train']} training rows ({c['poisoned']} poisoned -> "
               f"'{ps.meta['target_name']}'), {c['test_triggered']} triggered test rows over all classes")
    if how["source"] == "file":
        click.echo(f"  poisoned rows imported from {how['file']}: {how['poisoned_used']} of its {how['poisoned_in_file']}, "
                   f"added to the clean rows ({100 * how['rate']:.1f}% of the non-target rows)")
    for s in ps.meta["triggered_test_sources"]:
        click.echo(f"  triggered {s['class']}: {s['triggered']} rows from {s['source']}"
                   + (f" ({s['skipped_no_paraphrase']} test rows without a paraphrase left out)"
                      if s["skipped_no_paraphrase"] else ""))


@cli.command()
@click.option("--poisoned-set", required=True, help="folder written by `unbackdoor poison`")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder (model/, metrics.json)")
@click.option("--clean-only", is_flag=True, help="train on the clean samples D_c only (ReTrain)")
@_common
@config_options(TrainConfig)
def train(poisoned_set, out, clean_only, config_file, sets, **kw):
    """Fine-tune a victim classifier on a poisoned set (or ReTrain on its clean part)."""
    from .stages import run_train

    cfg = build_config(TrainConfig, "train", config_file, sets, kw)
    res = run_train(poisoned_set, cfg, out, clean_only=clean_only)
    _print_metrics(res["metrics"], f"{res['kind']} trained in {res['train_seconds']:.0f} s")


@cli.command()
@click.option("--model", "model_dir", required=True, help="poisoned model folder (a `unbackdoor train` run or model/)")
@click.option("--poisoned-set", required=True, help="a `unbackdoor poison` folder, or a TSV/CSV/JSONL file of "
              "training texts with a 0/1 'poisoned' column")
@click.option("--eval-set", default=None, help="`unbackdoor poison` folder with the test sets (when --poisoned-set is a file)")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--allow-pickle", is_flag=True, help="allow loading pickle (.bin) weights: only for models you trust")
@click.option("--push-to-hub", "push_to_hub", default=None, metavar="REPO",
              help="upload the purified model with its model card to this Hugging Face Hub repo (online only)")
@_common
@config_options(UnlearnConfig)
def unlearn(model_dir, poisoned_set, eval_set, out, allow_pickle, push_to_hub, config_file, sets, **kw):
    """Unlearn the backdoor with a registered method (`unbackdoor list`: GA, NPO, RGA, or ReTrain),
    evaluating every k epochs. Each method's own settings are the options named after it."""
    from .stages import run_unlearn

    cfg = build_config(UnlearnConfig, "unlearn", config_file, sets, kw)
    if push_to_hub:
        from .hub import require_online

        require_online()  # before hours of training, not after
    res = run_unlearn(model_dir, poisoned_set, cfg, out, eval_set=eval_set, allow_pickle=allow_pickle)
    if res.get("stopped_early"):
        click.echo(f"stopped early: {res['stopped_early']}")
    _print_metrics(res["metrics"], f"{cfg.method} done")
    if push_to_hub:
        from pathlib import Path

        from .hub import push

        click.echo(f"pushed to {push(Path(out) / 'model', push_to_hub)}")


@cli.command()
@click.option("--model", "model_dir", required=True, help="the poisoned model (a `unbackdoor train` run or model/)")
@click.option("--poisoned-set", required=True, help="`unbackdoor poison` folder whose training set is searched")
@click.option("--out", required=True, help="JSONL file of the training set with a 0/1 'poisoned' flag column")
@_common
@config_options(DetectConfig)
def detect(model_dir, poisoned_set, out, config_file, sets, **kw):
    """Flag the poisoned training samples; the output feeds `unbackdoor unlearn --poisoned-set`."""
    from .stages import run_detect

    cfg = build_config(DetectConfig, "detect", config_file, sets, kw)
    res = run_detect(model_dir, poisoned_set, cfg, out)
    m = res["metrics"]
    click.echo(f"wrote {out}" + (f": precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f} "
                                 f"({m['flagged']} flagged, {m['poisoned']} truly poisoned)" if m else ""))


@cli.command(name="evaluate")
@click.option("--model", "model_dir", required=True)
@click.option("--poisoned-set", required=True, help="`unbackdoor poison` folder with the test sets")
@click.option("--retrain", default=None, help="ReTrain run folder, to report dPACC against it")
@click.option("--split", type=click.Choice(["test", "dev"]), default="test")
@click.option("--max-length", type=int, default=128)
@click.option("--batch-size", type=int, default=128)
@click.option("--out", default=None, help="write the metrics JSON here")
@click.option("--allow-pickle", is_flag=True)
@click.option("--relearn", "relearn", multiple=True, metavar="K[,K...]",
              help="removed or suppressed? fine-tune a copy on K poisoned training samples and measure LFR again "
                   "(ReTrain too with --retrain); repeat or comma-separate for several K")
@click.option("--relearn-mix", type=click.Choice(["balanced", "poisoned"]), default=None,
              help="balanced: the K poisoned rows and K clean rows of every other class; poisoned: the K poisoned "
                   "rows alone, which teach 'always the target' in a few steps [default: balanced]")
@click.option("--relearn-steps", type=int, default=None, help="relearning optimiser steps [default: 20]")
@click.option("--relearn-lr", type=float, default=None,
              help="relearning lr [default: the model's unlearning lr, else its training lr]")
@click.option("--relearn-batch-size", type=int, default=None, help="relearning batch, min(relearning rows, this) [default: 16]")
@click.option("--probe-seed", type=int, default=None, help="seed of the relearning samples and the trigger variants "
              "[default: 0]")
@click.option("--trigger-variants", is_flag=True, help="also evaluate the trigger at the start, middle and end, half "
              "an AddSent sentence, and a rare word that was never a trigger (badnets, addsent)")
def evaluate_cmd(model_dir, poisoned_set, retrain, split, max_length, batch_size, out, allow_pickle, relearn,
                 relearn_mix, relearn_steps, relearn_lr, relearn_batch_size, probe_seed, trigger_variants):
    """CACC, LFR, PACC, dPACC and the triggered-set confusion matrix of a saved model; with --relearn and
    --trigger-variants, whether a removed backdoor comes back and how far removal reaches."""
    from .probes import ProbeConfig
    from .stages import run_evaluate

    data = {"relearn": [k.strip() for v in relearn for k in v.split(",") if k.strip()],
            "trigger_variants": trigger_variants, "relearn_mix": relearn_mix, "relearn_steps": relearn_steps,
            "relearn_lr": relearn_lr, "relearn_batch_size": relearn_batch_size, "seed": probe_seed}
    probes = validate(ProbeConfig, {k: v for k, v in data.items() if v is not None}, source="evaluate probe options")
    res = run_evaluate(model_dir, poisoned_set, out, (split,), max_length, batch_size, retrain, allow_pickle, probes)
    _print_metrics(res["metrics"], str(model_dir))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("config_file", metavar="CONFIG")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--no-report", is_flag=True, help="do not write the report when the grid is done")
def run(config_file, overrides, no_report):
    """Run an experiment grid (datasets x attacks x methods x seeds) from a YAML file or preset.

    Finished cells are skipped and an interrupted one resumes, so re-running the same command
    completes a grid that was stopped. Overrides look like unlearn.lr=5e-5 or seeds=[1,2,3].
    """
    from .reporting import write_report
    from .grid import ExperimentConfig, run_experiment

    data = apply_overrides(load_yaml(resolve_config_path(config_file)), list(overrides))
    cfg = validate(ExperimentConfig, data, source=str(config_file))
    run_experiment(cfg, log=click.echo)
    if not no_report:
        click.echo(f"report: {write_report(cfg.output_dir)}")


@cli.command()
@click.argument("results_dirs", nargs=-1, required=True, metavar="RESULTS_DIR...",
                type=click.Path(exists=True, file_okay=False))
@click.option("--out", default=None, help="report folder [default: RESULTS_DIR/report; required with several folders]")
@click.option("--split", type=click.Choice(["test", "dev"]), default="test")
@click.option("--linear", is_flag=True, help="linear instead of log scale for the poisoned-loss figure")
@click.option("--title", default=None, help="report title [default: the results folders]")
@click.option("--no-figures", is_flag=True, help="tables and per-cell text only, no figures (e.g. a report over "
              "folders whose figures another report already has)")
def report(results_dirs, out, split, linear, title, no_figures):
    """Paper-style table (Markdown, CSV, LaTeX), figures and report.md from one results folder, or one
    Table 2 (dataset blocks in the paper's order) over several, e.g. one per dataset."""
    from .reporting import write_report

    if len(results_dirs) > 1 and out is None:
        raise click.UsageError("--out is required with several results folders")
    path = write_report(list(results_dirs), out, split, log_scale=not linear, title=title, figures=not no_figures)
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--out", default="runs/demo", help="results folder")
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a demo setting")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads [default: torch's choice, one per core]")
def demo(out, sets, threads):
    """The main job on the embedded defaults: poison SST-2 with BadNets, train MiniLM, unlearn with GA
    and RGA, compare with ReTrain, and write the report."""
    from .demo import run_demo

    run_demo(out, list(sets), threads=threads)


@cli.command(name="list")
def list_cmd():
    """Registered attacks, unlearning methods and detectors (plug-ins included), datasets and presets."""
    from .attacks import ATTACKS
    from .config import presets
    from .data import NAMED
    from .detectors import DETECTORS
    from .objectives import OBJECTIVES

    def names(registry):
        return ", ".join(name if registry.source(name).startswith(registry.package) else
                         f"{name} ({registry.source(name)})" for name in registry)

    click.echo("attacks:  " + names(ATTACKS))
    click.echo("methods:  " + names(OBJECTIVES))
    click.echo("detectors: " + names(DETECTORS))
    click.echo("datasets: " + ", ".join(f"{k} (target {v.label_names[v.target]})" for k, v in NAMED.items()))
    click.echo("presets:  " + ", ".join(presets()))


def _print_metrics(metrics: dict, title: str) -> None:
    click.echo(title)
    for split, m in metrics.items():
        click.echo(f"  [{split}] CACC {m['cacc']:.2f}  macro-F1 {m.get('macro_f1', m['f1_clean']):.2f}  "
                   f"LFR {m['lfr']:.2f}  PACC {m['pacc']:.2f}  "
                   f"target shift gap {m['target_shift_gap']:+.2f}"
                   + (f"  dPACC {m['delta_pacc']:.2f}" if "delta_pacc" in m else ""))
        click.echo(f"  triggered-set confusion (rows true, cols predicted): {m['confusion_triggered']}")
        if m.get("degenerate"):
            click.echo(f"  WARNING: degenerate model on {split}: {m['degenerate']}; its LFR and PACC mean nothing")
        if m.get("verdict_message"):
            click.echo(f"  verdict against ReTrain: {m['verdict_message']}")
        for k in sorted(int(key[12:]) for key in m if key.startswith("relearn_lfr_") and key[12:].isdigit()):
            ref = (f" (ReTrain {m[f'retrain_relearn_lfr_{k}']:.2f}, excess {m[f'relearn_lfr_excess_{k}']:+.2f})"
                   if f"relearn_lfr_excess_{k}" in m else "")
            click.echo(f"  relearned on {k} poisoned samples: LFR {m[f'relearn_lfr_{k}']:.2f}{ref}, "
                       f"CACC {m[f'relearn_cacc_{k}']:.2f}")
        for name, v in m.get("trigger_variants", {}).items():
            click.echo(f"  trigger variant {name}: LFR {v['lfr']:.2f}  PACC {v['pacc']:.2f}  target shift gap "
                       f"{v['target_shift_gap']:+.2f}" + (f"  {v['verdict']}" if "verdict" in v else "")
                       + f"  e.g. {v['example']!r}")


def main(argv=None):
    from .artifacts import git_revision

    git_revision()
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UnbackdoorError as e:
        from .errors import Interrupted

        click.echo(f"error: {e}", err=True)
        sys.exit(130 if isinstance(e, Interrupted) else 2)


if __name__ == "__main__":
    main()
