#!/bin/bash
# usage: [EPOCHS=7] [DECAY=0.25] run.sh METHOD SCHED LR SEED...
E=${EPOCHS:-7}; D=${DECAY:-0.25}
. /work/main/.venv/bin/activate
cd /work/main
M=$1; S=$2; LR=$3; shift 3
for seed in "$@"; do
  R=/root/demo-robustness/seed$seed-threads2/sst2/badnets/seed$seed
  O=/root/trial/$M-$S-$LR-$seed; [ "$S" = constant_then_linear ] && O=/root/trial/$M-cl$D-e$E-$LR-$seed
  [ -f $O/dev.json ] && continue
  OMP_NUM_THREADS=2 unbackdoor unlearn --model $R/victim --poisoned-set $R/poisoned --out $O --method $M \
    --epochs $E --batch-size 16 --max-length 64 --lr $LR --scheduler $S --decay-ratio $D --seed $seed --eval-every 0 \
    --checkpoint-every 0 --select-action off --report-to none > $O.log 2>&1 || { echo fail $O; continue; }
  OMP_NUM_THREADS=2 unbackdoor evaluate --model $O --poisoned-set $R/poisoned --retrain $R/retrain --split dev --max-length 64 --out $O/dev.json >> $O.log 2>&1
done
