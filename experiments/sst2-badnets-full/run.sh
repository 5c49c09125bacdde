#!/usr/bin/env bash
# Issue "Unlearning": SST-2 BadNets, full training set (6,920 rows), default MiniLM, seed 42,
# paper settings: victim 3 epochs (batch 32, lr 2e-5, max length 128), unlearning 30 epochs over D_p
# at lr 2e-5 with evaluation every 5 epochs. Resumable: a stage whose metrics.json exists is skipped,
# an interrupted stage resumes from its last epoch checkpoint. Outputs go to $OUT (default runs/...).
set -euo pipefail
OUT=${OUT:-runs/sst2-badnets-full}
mkdir -p "$OUT"
stage() { local name=$1; shift; if [ -f "$OUT/$name/metrics.json" ]; then echo "skip $name (done)"; return; fi
  local t0=$(date +%s); "$@"; echo "$name: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/wall_times.txt"; }
[ -f "$OUT/poisoned/meta.json" ] || unbackdoor poison --dataset sst2 --attack badnets --seed 42 --out "$OUT/poisoned"
stage victim  unbackdoor train --poisoned-set "$OUT/poisoned" --out "$OUT/victim" --config paper-bert
stage retrain unbackdoor train --poisoned-set "$OUT/poisoned" --out "$OUT/retrain" --config paper-bert --clean-only
for m in ${METHODS:-ga rga npo}; do
  stage "$m" unbackdoor unlearn --model "$OUT/victim" --poisoned-set "$OUT/poisoned" --out "$OUT/$m" \
      --config paper-bert --method "$m" --eval-every 5
done
