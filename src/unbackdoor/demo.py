"""`unbackdoor demo`: the whole path on the embedded defaults, explained for a newcomer."""

from __future__ import annotations

import time

import click

from .config import apply_overrides, configs_dir, load_yaml, validate

LEGEND = """\
  CACC       accuracy on clean test sentences (utility; higher is better)
  LFR        triggered negative sentences predicted 'positive' (the backdoor; lower is better)
  PACC       accuracy when the trigger is in EVERY test sentence, true labels kept (higher is better)
  dPACC      |PACC - PACC of ReTrain|: distance from a model that never saw poison (lower is better)
  shift gap  recall of 'positive' on clean minus on triggered sentences; large = trigger shifting"""


def run_demo(out: str, overrides: list[str]) -> dict:
    from .reporting import summarise, write_report
    from .runner import ExperimentConfig, load_results, run_experiment

    data = apply_overrides(load_yaml(configs_dir() / "demo.yaml"), [f"output_dir={out}", *overrides])
    cfg = validate(ExperimentConfig, data, source="demo config")
    p, t, u = cfg.poison.data, cfg.train, cfg.unlearn
    click.echo("unbackdoor demo: SST-2 poisoned with BadNets (rare words cf/bb/ak/mn -> 'positive'), victim "
               f"{t.model}, unlearning with {', '.join(m.upper() for m in cfg.methods if m != 'retrain')} vs ReTrain.")
    click.echo(f"Demo-sized, not the paper's settings: {p.train_size or 'all'} training rows (paper 6,920), "
               f"{p.test_size or 'all'} test rows, max length {t.max_length}, victim {t.epochs} epochs at lr {t.lr:g}, "
               f"unlearning {u.epochs} epochs at lr {u.lr:g} (paper: BERT-base, 30 epochs at 2e-5). "
               f"Results go to {cfg.output_dir}.\n")
    t0 = time.time()
    run_experiment(cfg, log=lambda s: click.echo(f"{time.time() - t0:6.0f}s  {s}"))
    report = write_report(cfg.output_dir)
    rows = {r["method"]: r for r in summarise(load_results(cfg.output_dir))}
    click.echo(f"\nResults on {next(iter(rows.values()))['seeds']} seed, test split "
               f"({time.time() - t0:.0f} s in all):\n")
    click.echo(f"  {'model':<10}{'CACC':>8}{'LFR':>8}{'PACC':>8}{'dPACC':>8}{'shift gap':>11}")
    names = {"victim": "poisoned", "retrain": "ReTrain", "ga": "GA", "npo": "NPO", "rga": "RGA"}
    for m in ("victim", "retrain", "ga", "npo", "rga"):
        if m in rows:
            r = rows[m]
            dp = "" if r["delta_pacc"] is None else f"{r['delta_pacc']:.1f}"
            click.echo(f"  {names[m]:<10}{r['cacc']:8.1f}{r['lfr']:8.1f}{r['pacc']:8.1f}{dp:>8}"
                       f"{r['target_shift_gap']:+11.1f}")
    click.echo("\n" + LEGEND + "\n")
    for m in ("ga", "npo", "rga"):
        if m in rows and "retrain" in rows:
            r, ref = rows[m], rows["retrain"]
            shifted = r["target_shift_gap"] > 10 and r["pacc"] < ref["pacc"] - 3
            click.echo(f"{names[m]}: " + (
                f"TRIGGER SHIFTING - the backdoor is not gone, it moved: with the trigger, "
                f"{r['target_shift_gap']:.0f}% more positive sentences are now called negative "
                f"(PACC {r['pacc']:.1f} vs ReTrain {ref['pacc']:.1f})." if shifted else
                f"no trigger shifting - the trigger is neutralised (PACC {r['pacc']:.1f} vs ReTrain "
                f"{ref['pacc']:.1f}, shift gap {r['target_shift_gap']:+.1f})."))
    click.echo(f"\nReport with table and figures: {report}")
    return rows
