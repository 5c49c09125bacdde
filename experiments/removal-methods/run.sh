#!/usr/bin/env bash
# Issue #18's grid (removal.yaml), one attack and seed at a time so that every finished cell is usable on its
# own; BadNets and AddSent first (they also have trigger variants). Resumable: `unbackdoor run` skips finished
# stages and probes. ROOT (outside the work tree) holds the runs; each cell's wall and CPU time go to
# $ROOT/<attack>-seed<S>.time, and after each cell its small files are kept in experiments/removal-methods/runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-/root/removal}
SEEDS=${SEEDS:-"42 43"}
ATTACKS=${ATTACKS:-"badnets addsent hiddenkiller stylebkd"}
mkdir -p "$ROOT"
for S in $SEEDS; do
  for A in $ATTACKS; do
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 /usr/bin/time -v -o "$ROOT/$A-seed$S.time" \
      unbackdoor run experiments/removal-methods/removal.yaml "output_dir=$ROOT" "seeds=[$S]" "attacks=[$A]" \
      --no-report >> "$ROOT/$A-seed$S.log" 2>> "$ROOT/$A-seed$S.err"
    bash experiments/keep_results.sh "$ROOT" experiments/removal-methods/runs
  done
done
