#!/bin/sh
# `make demo`: the main job on the embedded default data. Re-running starts from scratch.
set -eu
DEMO=${DEMO:-demo-runs}
BIN=${BIN:-.venv/bin}
rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "== train: shapes / resnet_sdn / ew, 3 epochs"
"$BIN/drmgf" train --dataset shapes --model resnet_sdn --method ew --epochs 3 --seed 0 --out "$DEMO/ew"
echo "== evaluate"
"$BIN/drmgf" evaluate "$DEMO/ew"
