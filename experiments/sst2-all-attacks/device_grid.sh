#!/bin/bash
# The script that produced this experiment, as run on the lent GPU machine (from the repository root:
# `DEADLINE=555 bash .dev/gpu_grid.sh`, then `WAVES="addsent:2022 hiddenkiller:2022 stylebkd:2022 badnets:2022"`).
# That machine has no network and takes at most 64 MiB of files, so .dev/ (git-ignored) carried:
#   .dev/data/      sst2/, paraphrases/{syntactic,bible}/sst2/, rga_reference/ copied from ../shared/datasets
#   .dev/minilm16/  the embedded MiniLM's config and tokenizer files, weights cast to fp16 (model16.safetensors)
#   .dev/whl/       pydantic 2.14.3, pydantic_core 2.50.4 (cp312), annotated-types, typing-inspection, typing_extensions
# On a machine with the package installed, `unbackdoor run paper-sst2 ...` (README) is the same grid.
# Device script: the paper-sst2 grid, one `unbackdoor run` process per (attack, seed), all at once on one GPU.
# Results (no weights) are packed into $OUT/results.tgz every 20 s, so finished cells come back even on a timeout.
set -u
PY=${PY:-python3}
# Waves run one after the other (",": next wave); the cells of a wave run at once.
WAVES=${WAVES:-"addsent:2021 hiddenkiller:2021 stylebkd:2021 badnets:2021,addsent:2022 hiddenkiller:2022 stylebkd:2022 badnets:2022 addsent:2023 hiddenkiller:2023 stylebkd:2023 badnets:2023"}
DEADLINE=${DEADLINE:-570}   # seconds from the script's start: pack and stop
T0=$(date +%s)
EXTRA=${EXTRA:-}
WORK=${WORK:-/tmp/ub}
REPO=$PWD
mkdir -p "$WORK/runs" "$WORK/logs"
if [ -z "${SKIP_PIP:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$REPO/src
else
  export PYTHONPATH=${PYTHONPATH:-}:$REPO/src
fi
export PYTHONUNBUFFERED=1 UNBACKDOOR_DATA=$REPO/.dev/data UNBACKDOOR_CACHE=$WORK/cache OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
# The weights travel as fp16 (the 64 MiB limit); upcast to an fp32 model folder before anything loads them.
$PY - "$REPO/.dev/minilm16" "$WORK/minilm" <<'EOF' || exit 4
import shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2]); dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.name != "model16.safetensors":
        shutil.copy(f, dst / f.name)
sd = load_file(src / "model16.safetensors")
save_file({k: v.float() if v.dtype == torch.float16 else v for k, v in sd.items()}, dst / "model.safetensors", metadata={"format": "pt"})
import transformers, accelerate
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "transformers", transformers.__version__, "accelerate", accelerate.__version__)
EOF
$PY -c "import unbackdoor.cli" || exit 5
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; date -u) > "$WORK/logs/machine.txt" 2>&1

pack() {
  tar czf "$OUT/results.tgz.part" --exclude='*.safetensors' --exclude='optimizer.bin' --exclude='tokenizer.json' \
      --exclude='checkpoint' --exclude='dev_*.jsonl' --exclude='*.pdf' --exclude='checkpoint.tmp' --exclude='*.pkl' --exclude='scheduler.bin' --exclude='random_states*' \
      -C "$WORK" runs logs 2>/dev/null && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
}
IFS=',' read -ra waves <<< "$WAVES"
last=0; i=0
while [ $i -lt ${#waves[@]} ]; do
  wave=${waves[$i]}; i=$((i + 1))
  # Cells of a wave advance together: start a wave only if it can finish (time ~ cells x the last wave's time per cell, at worst).
  n=$(echo $wave | wc -w); left=$(( DEADLINE - ($(date +%s) - T0) ))
  if [ "$last" -gt 0 ]; then
    need=$(( last * n / 4 * 11 / 10 ))
    if [ "$need" -gt "$left" ]; then
      rest=$(echo $wave | cut -d' ' -f5-); [ -n "$rest" ] && waves+=("$rest")
      wave=$(echo $wave | cut -d' ' -f1-4); need=$(( last * 11 / 10 ))
      [ "$need" -gt "$left" ] && { echo "no time for another wave ($left s left, last took $last s)"; break; }
    fi
  fi
  ws=$(date +%s)
  pids=()
  for job in $wave; do
    a=${job%%:*}; s=${job##*:}
    ( /usr/bin/time -v $PY -m unbackdoor.cli run paper-sst2 "attacks=[$a]" "seeds=[$s]" \
        "output_dir=$WORK/runs/$a-$s" "train.model=$WORK/minilm" train.checkpoint_every=0 unlearn.checkpoint_every=0 $EXTRA ; echo "exit $?" ) > "$WORK/logs/$a-$s.log" 2>&1 &
    pids+=($!)
  done
  echo "wave [$wave] started at t=$(( $(date +%s) - T0 ))s"
  while kill -0 "${pids[@]}" 2>/dev/null; do
    sleep 15; pack
    now=$(( $(date +%s) - T0 ))
    echo "t=${now}s running: $(for p in "${pids[@]}"; do kill -0 $p 2>/dev/null && echo -n .; done) gpu $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
    if [ "$now" -ge "$DEADLINE" ]; then echo "deadline: stopping"; pkill -INT -f "unbackdoor.cli run"; sleep 5; pack; grep -h "^exit" "$WORK"/logs/*.log | sort | uniq -c; exit 0; fi
  done
  wait
  pack
  last=$(( $(date +%s) - ws ))
  echo "wave done at t=$(( $(date +%s) - T0 ))s"
done
grep -h "^exit" "$WORK"/logs/*.log | sort | uniq -c
