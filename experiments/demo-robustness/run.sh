#!/usr/bin/env bash
# The shipped `unbackdoor demo`, unchanged, for 5 seeds x {1, 2} torch threads; then results.csv.
# Each run is timed by /usr/bin/time. Runs are resumable: a finished run folder is skipped.
# ROOT holds the run folders (default outside the work tree, so a session's end does not lose them).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-/root/demo-robustness}
SEEDS=${SEEDS:-"42 43 44 45 46"}
THREADS=${THREADS:-"2 1"}
mkdir -p "$ROOT"
for T in $THREADS; do
  for S in $SEEDS; do
    out="$ROOT/seed$S-threads$T"
    [ -f "$out/report/report.md" ] && continue
    OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T /usr/bin/time -v -o "$out.time" \
      unbackdoor demo --out "$out" --threads "$T" -s "seeds=[$S]" > "$out.log" 2>&1
  done
done
python experiments/demo-robustness/collect.py "$ROOT" experiments/demo-robustness
