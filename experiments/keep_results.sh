#!/usr/bin/env bash
# Copy the small files of a results folder into the work tree, so a report can be rebuilt (and seeds added to
# it) after the machine that ran the grid is gone: each stage's metrics.json (its numbers, curve and clocks),
# probes.json (relearning, trigger variants) and loss_log.jsonl (the figures' curves); never models or data.
#   bash experiments/keep_results.sh /root/t2/agnews experiments/agnews-all-attacks/runs
# `unbackdoor report DEST [DEST2 ...]` then works on the copy as on the original.
set -euo pipefail
SRC=${1:?results folder}; DEST=${2:?destination}
mkdir -p "$DEST"
(cd "$SRC" && find . -path './*/*/seed*/*/*' \( -name metrics.json -o -name probes.json -o -name loss_log.jsonl \) \
   -not -path '*/checkpoint/*' -not -path '*/selected/*' | tar -cf - -T -) | tar -xf - -C "$DEST"
echo "kept $(find "$DEST" -name metrics.json | wc -l) stages in $DEST"
