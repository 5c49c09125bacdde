#!/usr/bin/env bash
# Table 2's HSOL and AG News blocks at CPU size (issue 15): the presets cpu-hsol and cpu-agnews, all four attacks,
# seeds 42 and 43, one `unbackdoor run` per (dataset, seed), seed 42 of both datasets first so that every cell
# has one seed before any has two. Resumable: `unbackdoor run` skips finished stages, so re-running this script
# after an interruption goes on where it stopped. ROOT (outside the work tree, default /root/t2) holds the runs;
# each step's wall and CPU time go to $ROOT/<dataset>-seed<S>.time.
# After each run its small files (metrics, probes, loss logs) are kept in experiments/<dataset>-all-attacks/runs,
# so the report survives the machine: unbackdoor report experiments/hsol-all-attacks/runs --out ... (agnews alike).
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
    bash experiments/keep_results.sh "$ROOT/$D" "experiments/$D-all-attacks/runs"
  done
done
