#!/usr/bin/env bash
# The shipped `unbackdoor demo`, unchanged, for 5 seeds x {2, 1} torch threads; then results.csv.
# Each run is timed by /usr/bin/time. Runs are resumable: a finished run folder is skipped.
# ROOT holds the run folders (default outside the work tree, so a session's end does not lose them).
# The 2-thread runs go one at a time; the 1-thread runs two at a time, one per core (their results do not
# depend on it, only their wall times, which are then not the demo's: that is measured alone, with 2 threads).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-/root/demo-robustness}
SEEDS=${SEEDS:-"42 43 44 45 46"}
mkdir -p "$ROOT"
one() {  # seed threads
  local out="$ROOT/seed$1-threads$2"
  [ -f "$out/report/report.md" ] && return 0
  OMP_NUM_THREADS=$2 MKL_NUM_THREADS=$2 /usr/bin/time -v -o "$out.time" \
    unbackdoor demo --out "$out" --threads "$2" -s "seeds=[$1]" > "$out.log" 2> "$out.err"
}
for S in $SEEDS; do one "$S" 2; done
set -- $SEEDS
while [ $# -gt 0 ]; do
  one "$1" 1 & a=$!
  if [ $# -gt 1 ]; then one "$2" 1 & b=$!; wait $b; shift; fi
  wait $a; shift
done
python experiments/demo-robustness/collect.py "$ROOT" experiments/demo-robustness
cp "$ROOT/seed42-threads2.log" experiments/demo-robustness/demo-seed42-threads2.txt
