#!/bin/bash
# Builds .dev/ (git-ignored) for device_grid.sh, here, from the repository root: the device machine has no
# network and takes at most 64 MiB of files with the working tree, so the data travel xz-compressed, the
# embedded MiniLM as fp16 (upcast there before use) and pydantic as wheels (the only missing package).
set -euo pipefail
DATA_SRC=${UNBACKDOOR_DATA:-../shared/datasets}
PY=${PY:-python}
mkdir -p .dev/whl
# Only what the three presets read: clean splits, paraphrase banks, the authors' files.
tar cf - -C "$DATA_SRC" sst2 hsol agnews rga_reference paraphrases | xz -6 -T0 > .dev/data.tar.xz.part
mv .dev/data.tar.xz.part .dev/data.tar.xz
$PY - .dev/minilm16 <<'PYEOF'
import shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from unbackdoor.models import resolve_model
src, dst = Path(resolve_model("minilm")), Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.is_file() and f.name != "model.safetensors" and f.suffix in (".json", ".txt"):
        shutil.copy(f, dst / f.name)
sd = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, dst / "model16.safetensors",
          metadata={"format": "pt"})
PYEOF
# The versions installed here, for the device's Python 3.12 (x86-64).
versions=$($PY -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic_core|pydantic-core|annotated-types|annotated_types|typing-inspection|typing_inspection)==')
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .dev/whl $versions
du -sh .dev/* && echo "carried in all (with the tracked files): $(( ($(du -sb .dev | cut -f1) + $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)) / 1048576 )) MiB of 64"
