"""`unbackdoor demo`: the whole path on the embedded defaults, explained for a newcomer."""

from __future__ import annotations

import time

import click

from .config import apply_overrides, load_yaml, resolve_config_path, validate

NAMES = {"victim": "poisoned", "retrain": "ReTrain", "ga": "GA", "npo": "NPO", "rga": "RGA"}

LEGEND = """\
  CACC       accuracy on clean test sentences (utility; higher is better)
  LFR        triggered negative sentences predicted 'positive' (the backdoor; lower is better)
  PACC       accuracy when the trigger is in EVERY test sentence, true labels kept (higher is better)
  dPACC      |PACC - PACC of ReTrain|: distance from a model that never saw poison (lower is better)
  vs RT      PACC - PACC of ReTrain, signed: negative = the trigger now costs accuracy ReTrain keeps
  shift gap  recall of 'positive' on clean minus on triggered sentences; large = trigger shifting
  verdict    from the triggered confusion matrix against ReTrain's (unbackdoor.verdict)"""


def epoch_table(results: dict, split: str = "test") -> str:
    """PACC and shift gap of each unlearning method at every evaluated epoch, the poisoned model as
    epoch 0 and ReTrain as the last line: the newcomer watches GA's trigger move while RGA's stays."""
    methods = [m for m in ("ga", "npo", "rga") if m in results]
    curves = {m: {c["epoch"]: c[split] for c in results[m].get("curve", []) if split in c} for m in methods}
    epochs = sorted({e for c in curves.values() for e in c})
    head = f"  {'epoch':<9}" + "".join(f"{NAMES[m] + ' PACC':>11}{'gap':>8}" for m in methods)
    lines = [head]

    def line(label, per_method):
        cells = "".join(f"{v['pacc']:11.1f}{v['target_shift_gap']:+8.1f}" if v else f"{'':>19}"
                        for v in per_method)
        lines.append(f"  {label:<9}" + cells)

    victim = results.get("victim", {}).get("metrics", {}).get(split)
    if victim:
        line("0", [victim] * len(methods))
    for e in epochs:
        line(str(e), [curves[m].get(e) for m in methods])
    ref = results.get("retrain", {}).get("metrics", {}).get(split)
    if ref:
        line("ReTrain", [ref] * len(methods))
    return "\n".join(lines)


def run_demo(out: str, overrides: list[str], threads: int | None = None) -> dict:
    from .reporting import summarise, write_report
    from .grid import ExperimentConfig, load_results, run_experiment
    from .verdict import decide

    if threads:
        import torch

        torch.set_num_threads(threads)
    data = apply_overrides(load_yaml(resolve_config_path("demo")), [f"output_dir={out}", *overrides])
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
    results = load_results(cfg.output_dir)
    by_method = {r["method"]: r for r in results}
    rows = {r["method"]: r for r in summarise(results)}
    split = "test"
    click.echo(f"\nPer unlearning epoch, test split (PACC %, shift gap in points; epoch 0 = the poisoned model):\n")
    click.echo(epoch_table(by_method, split))
    click.echo(f"\nResults on {next(iter(rows.values()))['seeds']} seed, test split "
               f"({time.time() - t0:.0f} s in all):\n")
    click.echo(f"  {'model':<10}{'CACC':>7}{'LFR':>7}{'PACC':>7}{'dPACC':>7}{'vs RT':>7}{'shift gap':>10}  verdict")
    for m in ("victim", "retrain", "ga", "npo", "rga"):
        if m in rows:
            r = rows[m]
            dp = "" if r["delta_pacc"] is None else f"{r['delta_pacc']:.1f}"
            sd = "" if r["signed_delta_pacc"] is None else f"{r['signed_delta_pacc']:+.1f}"
            click.echo(f"  {NAMES[m]:<10}{r['cacc']:7.1f}{r['lfr']:7.1f}{r['pacc']:7.1f}{dp:>7}{sd:>7}"
                       f"{r['target_shift_gap']:+10.1f}  {r['verdict']}"
                       + (f"  (degenerate: {r['degenerate']})" if r["degenerate"] else ""))
    click.echo("\n" + LEGEND + "\n")
    ref = by_method.get("retrain", {}).get("metrics", {}).get(split)
    for m in ("victim", "ga", "npo", "rga"):
        if m in by_method and split in by_method[m]["metrics"]:
            meta = by_method[m]["poison_meta"]
            v = decide(by_method[m]["metrics"][split], ref, meta["target"], meta["label_names"])
            click.echo(f"{NAMES[m]}: {v.message}")
    click.echo(f"\nReport with table and figures: {report}")
    return rows
