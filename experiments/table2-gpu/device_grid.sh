#!/bin/bash
# Paper Table 2 on full data, on one GPU: paper-hsol and paper-agnews with seeds 2021-2023, and SST-2 seed 2023.
# One `unbackdoor run PRESET attacks=[A] seeds=[S]` process per cell, up to $JOBS at once, in the order of $CELLS
# (most wanted first; a freed slot takes the next cell, since AG 50%-replace cells take ~4x an AG HiddenKiller
# cell and fixed waves would leave the GPU idle). At $DEADLINE every cell is interrupted (SIGINT: it saves a
# checkpoint and exits 130) and the results are packed; running the script again on the same machine resumes
# them. Results without weights are packed into $OUT/results.tgz every 20 s, so finished stages come back even
# after a timeout. From the repository root; see README.md beside this file (.dev/ is built by prepare.sh).
set -u
PY=${PY:-python3}
JOBS=${JOBS:-8}
DEADLINE=${DEADLINE:-540}   # seconds from this script's start; leaves ~60 s of a 600-s command to stop and pack
MIN_LEFT=${MIN_LEFT:-60}    # start no new cell with less time left: it would only load and be interrupted
WORK=${WORK:-/tmp/ub}
OUT=${OUT:-$WORK/out}
EXTRA=${EXTRA:-}            # more overrides for every cell, e.g. the dry run's tiny sizes
# RGA and its ReTrain first: if time runs out, the cut stages are the least needed ones.
METHODS=${METHODS:-"[retrain,rga,ga,npo,npo-b1]"}
NPO_B1=${NPO_B1:-"method_overrides={npo-b1: {method: npo, npo: {beta: 1.0}}}"}
CELLS=${CELLS:-"paper-agnews:badnets:2021 paper-agnews:addsent:2021 paper-agnews:stylebkd:2021
  paper-hsol:badnets:2021 paper-hsol:addsent:2021 paper-hsol:hiddenkiller:2021 paper-hsol:stylebkd:2021
  paper-agnews:hiddenkiller:2021
  paper-sst2:badnets:2023 paper-sst2:addsent:2023 paper-sst2:hiddenkiller:2023 paper-sst2:stylebkd:2023
  paper-agnews:badnets:2022 paper-agnews:addsent:2022 paper-agnews:stylebkd:2022
  paper-hsol:badnets:2022 paper-hsol:addsent:2022 paper-hsol:hiddenkiller:2022 paper-hsol:stylebkd:2022
  paper-agnews:hiddenkiller:2022
  paper-agnews:badnets:2023 paper-agnews:addsent:2023 paper-agnews:stylebkd:2023
  paper-hsol:badnets:2023 paper-hsol:addsent:2023 paper-hsol:hiddenkiller:2023 paper-hsol:stylebkd:2023
  paper-agnews:hiddenkiller:2023"}

if [ "${1:-}" = "--cell" ]; then
  # One cell, started by the loop below in a process group of its own, so the deadline interrupts it alone.
  IFS=: read -r preset attack seed <<< "$2"
  TIMER=(); [ -x /usr/bin/time ] && TIMER=(/usr/bin/time -v)   # peak memory per cell, where GNU time exists
  # shellcheck disable=SC2086  # EXTRA is a list of key=value words
  "${TIMER[@]}" $PY -m unbackdoor.cli run --no-report "$preset" "attacks=[$attack]" "seeds=[$seed]" \
    "output_dir=$WORK/runs/$preset-$attack-$seed" "train.model=$MODEL" "methods=$METHODS" "$NPO_B1" \
    train.checkpoint_every=0 unlearn.checkpoint_every=0 $EXTRA
  echo "exit $?"
  exit 0
fi

T0=$(date +%s)
REPO=$PWD
mkdir -p "$WORK/runs" "$WORK/logs" "$OUT"
if [ -z "${SKIP_PIP:-}" ]; then  # the device's Python lacks pydantic
  [ -d /tmp/site/pydantic ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .dev/whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$REPO/src
else
  export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${DATA:-}" ]; then
  DATA=$WORK/data
  [ -d "$DATA/hsol" ] || { mkdir -p "$DATA" && tar xJf .dev/data.tar.xz -C "$DATA"; } || exit 4
fi
if [ -z "${MODEL:-}" ]; then
  # The weights travel as fp16 (the 64 MiB limit); upcast to an fp32 model folder before anything loads them.
  MODEL=$WORK/minilm
  [ -f "$MODEL/model.safetensors" ] || $PY - .dev/minilm16 "$MODEL" <<'EOF' || exit 5
import shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2]); dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.name != "model16.safetensors":
        shutil.copy(f, dst / f.name)
sd = load_file(src / "model16.safetensors")
save_file({k: v.float() if v.dtype == torch.float16 else v for k, v in sd.items()}, dst / "model.safetensors", metadata={"format": "pt"})
EOF
fi
export MODEL PY WORK EXTRA METHODS NPO_B1 PYTHONUNBUFFERED=1 UNBACKDOOR_DATA=$DATA UNBACKDOOR_CACHE=$WORK/cache \
  OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
$PY -c "import unbackdoor.cli" || exit 6
{ $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'transformers', transformers.__version__)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; nproc; date -u; } > "$WORK/logs/machine.txt" 2>&1

timings() {  # one line per finished stage: cell, stage, seconds of training/unlearning (evaluations included)
  $PY - "$WORK/runs" > "$WORK/logs/timings.tsv" <<'EOF'
import json, sys
from pathlib import Path
print("cell\tstage\tseconds")
for m in sorted(Path(sys.argv[1]).glob("*/*/*/seed*/*/metrics.json")):
    r = json.loads(m.read_text())
    print(f"{m.parents[4].name}\t{m.parent.name}\t{r.get('train_seconds', r.get('unlearn_seconds'))}")
EOF
}
pack() {
  timings
  tar czf "$OUT/results.tgz.part" --exclude='checkpoint' --exclude='checkpoint.*' --exclude='*.safetensors' \
    --exclude='tokenizer*.json' --exclude='vocab.txt' --exclude='special_tokens_map.json' --exclude='*.bin' \
    --exclude='random_states*' --exclude='*.pkl' --exclude='*/poisoned/*.jsonl' --exclude='*.pdf' \
    -C "$WORK" runs logs 2>/dev/null && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
}
elapsed() { echo $(( $(date +%s) - T0 )); }

declare -A pid=()
queue=()
for c in $CELLS; do
  # A cell finished by an earlier run of this script on this machine is not started again.
  grep -qx "exit 0" "$WORK/logs/${c//:/-}.log" 2>/dev/null && continue
  queue+=("$c")
done
echo "cells to run: ${#queue[@]}, $JOBS at once, deadline ${DEADLINE}s"
last_pack=0
while :; do
  for c in "${!pid[@]}"; do
    kill -0 "${pid[$c]}" 2>/dev/null && continue
    echo "t=$(elapsed)s done $c: $(tail -n 1 "$WORK/logs/${c//:/-}.log")"
    unset "pid[$c]"
  done
  if [ "$(elapsed)" -ge "$DEADLINE" ]; then
    echo "t=$(elapsed)s deadline: interrupting ${!pid[*]}"
    for c in "${!pid[@]}"; do kill -INT -- "-${pid[$c]}" 2>/dev/null; done
    for _ in $(seq 60); do  # saving a checkpoint takes seconds
      alive=0; for c in "${!pid[@]}"; do kill -0 "${pid[$c]}" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break; sleep 1
    done
    for c in "${!pid[@]}"; do kill -KILL -- "-${pid[$c]}" 2>/dev/null; done
    break
  fi
  while [ ${#pid[@]} -lt "$JOBS" ] && [ ${#queue[@]} -gt 0 ] && [ $(( DEADLINE - $(elapsed) )) -ge "$MIN_LEFT" ]; do
    c=${queue[0]}; queue=("${queue[@]:1}")
    setsid bash "$0" --cell "$c" >> "$WORK/logs/${c//:/-}.log" 2>&1 &
    pid[$c]=$!
    echo "t=$(elapsed)s started $c"
  done
  [ ${#pid[@]} -eq 0 ] && break
  sleep 5
  if [ $(( $(elapsed) - last_pack )) -ge 20 ]; then
    pack; last_pack=$(elapsed)
    echo "t=$(elapsed)s running ${#pid[@]}, queued ${#queue[@]}; gpu $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
  fi
done
pack
echo "not started: ${queue[*]:-none}"
grep -h "^exit" "$WORK"/logs/*.log | sort | uniq -c
cat "$WORK/logs/timings.tsv"
