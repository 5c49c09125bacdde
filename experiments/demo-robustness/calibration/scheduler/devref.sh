#!/bin/bash
. /work/main/.venv/bin/activate
for seed in "$@"; do
  R=/root/demo-robustness/seed$seed-threads2/sst2/badnets/seed$seed
  for m in retrain rga ga; do
    O=/root/trial/ref-$m-$seed.json
    [ -f $O ] || OMP_NUM_THREADS=2 unbackdoor evaluate --model $R/$m --poisoned-set $R/poisoned --split dev --max-length 64 --out $O > /root/trial/ref-$m-$seed.log 2>&1
  done
done
