#!/usr/bin/env bash
# Table 2's HSOL and AG News blocks at CPU size (issue 15): the presets cpu-hsol and cpu-agnews, all four attacks,
# seeds 42 and 43, one `unbackdoor run` per (dataset, seed), seed 42 of both datasets first so that every cell
# has one seed before any has two. Resumable: `unbackdoor run` skips finished stages, so re-running this script
# after an interruption goes on where it stopped. ROOT (outside the work tree, default /root/t2) holds the runs;
# each step's wall and CPU time go to $ROOT/<dataset>-seed<S>.time.
# Afterwards: unbackdoor report $ROOT/hsol --out experiments/hsol-all-attacks/report (and agnews alike).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-/root/t2}
SEEDS=${SEEDS:-"42 43"}
DATASETS=${DATASETS:-"hsol agnews"}
mkdir -p "$ROOT"
for S in $SEEDS; do
  for D in $DATASETS; do
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 /usr/bin/time -v -o "$ROOT/$D-seed$S.time" \
      unbackdoor run "cpu-$D" "output_dir=$ROOT/$D" "seeds=[$S]" --no-report \
      >> "$ROOT/$D-seed$S.log" 2>> "$ROOT/$D-seed$S.err"
  done
done
