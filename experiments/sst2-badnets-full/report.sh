#!/usr/bin/env bash
# Build the report of the full-data run (run.sh) into experiments/sst2-badnets-full/report/.
# run.sh writes one flat folder; `unbackdoor report` reads the grid layout <dataset>/<attack>/seed<k>/<stage>.
set -euo pipefail
OUT=${OUT:-runs/sst2-badnets-full}
GRID=$(mktemp -d)
mkdir -p "$GRID/sst2/badnets"
ln -s "$(cd "$OUT" && pwd)" "$GRID/sst2/badnets/seed42"
unbackdoor report "$GRID" --out experiments/sst2-badnets-full/report \
  --title "SST-2 BadNets, full training set, MiniLM, paper settings (seed 42)"
rm -rf "$GRID"
