"""The README's demo output is the committed run's output, and that run's numbers are the ones in
experiments/demo-robustness/results.csv: nobody types the README's numbers by hand."""

import csv
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "experiments" / "demo-robustness"
OUTPUT = RUN / "demo-seed42-threads2.txt"  # the stdout of `unbackdoor demo --threads 2`, seed 42


def readme_demo_block() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- demo-output: (\S+) -->\n```\n(.*?)\n```", text, re.S)
    assert m, "README.md has no '<!-- demo-output: FILE -->' block"
    assert (ROOT / m.group(1)).resolve() == OUTPUT.resolve()
    return m.group(2).splitlines()


def committed_result_lines() -> list[str]:
    lines = OUTPUT.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Per unlearning epoch"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("Report with table"))
    return [ln for ln in lines[start:end] if ln.strip()]


def test_readme_demo_block_is_the_committed_output():
    block = [ln for ln in readme_demo_block() if ln.strip()]
    assert block == committed_result_lines()


def test_committed_output_matches_results_csv():
    rows = {r["method"]: r for r in csv.DictReader(open(RUN / "results.csv"))
            if r["seed"] == "42" and r["threads"] == "2"}
    names = {"retrain": "ReTrain", "ga": "GA", "rga": "RGA"}
    printed = {}
    for ln in committed_result_lines():
        parts = ln.split()
        if parts and parts[0] in names.values() and len(parts) >= 8 and re.match(r"^-?\d", parts[1]):
            printed[parts[0]] = parts
    assert set(printed) == set(names.values())
    for method, name in names.items():
        p, r = printed[name], rows[method]
        assert [float(x) for x in p[1:4]] == [round(float(r[k]), 1) for k in ("cacc", "lfr", "pacc")]
        assert float(p[6]) == round(float(r["shift_gap"]), 1)
        assert " ".join(p[7:]).startswith(r["verdict"])
