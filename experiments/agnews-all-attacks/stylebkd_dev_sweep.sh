#!/usr/bin/env bash
# AG News StyleBkd (issue 15): does a larger training set or a higher lr make the victim learn the Bible style to
# LFR >= 90? Victims only ("methods=[]"), evaluated on the dev split only ("eval_splits=[dev]": the authors' 1,000
# dev rows and their Bible paraphrases), seeds 44 and 45, not the reporting seeds 42 and 43. Resumable.
# ROOT (outside the work tree) holds the runs; stylebkd-dev-sweep.csv is collected from them at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-/root/agdev}
run() {  # output folder, then overrides
  local out=$1; shift
  unbackdoor run cpu-agnews "attacks=[stylebkd]" "seeds=[44,45]" "methods=[]" "eval_splits=[dev]" \
    "output_dir=$ROOT/$out" "$@" --no-report
}
run n1200 poison.data.train_size=1200
run n2400 poison.data.train_size=2400
run n4000 poison.data.train_size=4000
run lr1e-4-n1200 poison.data.train_size=1200 train.lr=1e-4
run lr1e-4-n2400 poison.data.train_size=2400 train.lr=1e-4
python - "$ROOT" > experiments/agnews-all-attacks/stylebkd-dev-sweep.csv <<'PY'
import json, sys
from pathlib import Path
print("train_rows,lr,seed,dev_cacc,dev_lfr,dev_pacc,train_seconds")
for f in sorted(Path(sys.argv[1]).glob("*/agnews/stylebkd/seed*/victim/metrics.json")):
    m = json.loads(f.read_text())
    d, c = m["metrics"]["dev"], m["config"]
    print(f"{m['n_train']},{c['lr']:g},{c['seed']},{d['cacc']:.1f},{d['lfr']:.1f},{d['pacc']:.1f},{m['train_seconds']:.0f}")
PY
