#!/usr/bin/env bash
# The GPU numbers of the README ("Scaling out" > GPU), measured in one call on a CUDA machine:
#
#   TREELSTM_DATA=<folder with sst/ and glove/> OUT=<results folder> bash benchmarks/gpu_check.sh
#
# Runs from a checkout with the machine's own python3 (torch with CUDA, numpy, tqdm,
# matplotlib; nltk is not needed). Writes to $OUT (default runs/gpu):
#   env.txt                  GPU, driver, torch
#   batching.json/.png       strategies agree (--check), then trees/s by batch size
#   batching_slow.json       per-node recursion and per-tree, small batches only
#   sst/ + sst_epoch.log     one SST epoch at batch 256 (metrics.json: train_time_s)
# Not yet run on a GPU. DEVICE=cpu runs the same steps on the CPU as a check of the script
# itself: 3 min 45 s on the 2-core development machine.
set -euo pipefail
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
DATA=${TREELSTM_DATA:?set TREELSTM_DATA to a folder holding sst/ and glove/}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/env.txt"

$PY -m benchmarks.batching --device "$DEVICE" --data-dir "$DATA" --check \
    --batch-sizes 1,25,256,1024 --strategies level_autograd,level,oracle \
    --json "$OUT/batching.json" --plot "$OUT/batching.png"

$PY -m benchmarks.batching --device "$DEVICE" --data-dir "$DATA" --reps 3 \
    --batch-sizes 1,25,256 --strategies recursive,tree,level --json "$OUT/batching_slow.json"

$PY -m treelstm.train sst --data-dir "$DATA" --device "$DEVICE" --epochs 1 --batch-size 256 \
    --workers 4 --no-progress --overwrite --out "$OUT/sst" 2>    --workers 4 --no-progress --out "$OUT/sst" 2>&11 | tee "$OUT/sst_epoch.log"
