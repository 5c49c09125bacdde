#!/usr/bin/env bash
# Choose the demo's settings on the SST-2 validation split (never the test set): the demo grid with
# evaluation on dev every 2 epochs over 10 unlearning epochs, at the unlearning learning rate given as $1.
set -euo pipefail
LR=${1:-5e-5}
unbackdoor run configs/demo.yaml output_dir=runs/demo-calibration/lr$LR eval_splits=[dev] \
  unlearn.epochs=10 unlearn.eval_every=2 unlearn.lr=$LR --no-report
unbackdoor report runs/demo-calibration/lr$LR --split dev
