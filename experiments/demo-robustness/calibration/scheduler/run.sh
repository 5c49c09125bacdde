#!/bin/bash
# usage: run.sh METHOD SCHED LR SEED...
. /work/main/.venv/bin/activate
cd /work/main
M=$1; S=$2; LR=$3; shift 3
for seed in "$@"; do
  R=/root/demo-robustness/seed$seed-threads2/sst2/badnets/seed$seed
  O=/root/trial/$M-$S-$LR-$seed
  [ -f $O/dev.json ] && continue
  OMP_NUM_THREADS=2 unbackdoor unlearn --model $R/victim --poisoned-set $R/poisoned --out $O --method $M \
    --epochs 7 --batch-size 16 --max-length 64 --lr $LR --scheduler $S --seed $seed --eval-every 0 \
    --checkpoint-every 0 --select-action off --report-to none > $O.log 2>&1 || { echo fail $O; continue; }
  OMP_NUM_THREADS=2 unbackdoor evaluate --model $O --poisoned-set $R/poisoned --retrain $R/retrain --split dev --max-length 64 --out $O/dev.json >> $O.log 2>&1
done
