"""What every benchmark here shares: variants in fresh processes, interleaved; results as JSON + Markdown."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def interleaved(script: str, variants: list[str], rounds: int, args: list[str]) -> list[dict]:
    """Run `script --child V args` for each variant, each in its own process (its own peak memory),
    alternating the order every round so that drift on a shared machine hits both sides."""
    runs = []
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            out = subprocess.run([sys.executable, script, "--child", v, *args], capture_output=True, text=True,
                                 check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            res = {**json.loads(out.stdout.strip().splitlines()[-1]), "round": r}
            runs.append(res)
            print(res, flush=True)
    return runs


def write_results(out: str, payload: dict, lines: list[str]) -> None:
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out + ".json").write_text(json.dumps({"machine": machine, **payload}, indent=2))
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
