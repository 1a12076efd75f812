#!/bin/sh
# `make demo`: the whole pipeline on the embedded default data (shapes, 32x32, tasks shape/color/size).
# train -> evaluate -> inspect -> routes -> export -> infer -> bench. Re-running starts from scratch.
set -eu
DEMO=${DEMO:-demo-runs}
BIN=${BIN:-.venv/bin}
EPOCHS=${EPOCHS:-4}
WIDTH=${WIDTH:-32}
RUN="$DEMO/drmgf"
rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "== 1. train DR-MGF: multi-exit ResNet-8 (width $WIDTH) on shapes (label: shape), $EPOCHS epochs"
"$BIN/drmgf" train --dataset shapes --model resnet_sdn --width "$WIDTH" --method drmgf --epochs "$EPOCHS" --seed 0 \
    --out "$RUN"
echo "== 2. evaluate on the test split"
"$BIN/drmgf" evaluate "$RUN"
echo "== 3. what the importance learned"
"$BIN/drmgf" inspect "$RUN"
echo "== 4. routes: keep the top half of each shared layer's filters per exit"
"$BIN/drmgf" routes "$RUN" --rule keep-ratio --keep-ratio 0.5
echo "== 5. export: full.onnx + one pruned graph per exit (fine-tuned 1 epoch), checked in onnxruntime"
"$BIN/drmgf" export "$RUN" --finetune-epochs 1 --triton "$DEMO/triton"
echo "== 6. infer: the first exit on two test images"
"$BIN/python" scripts/sample_inputs.py "$RUN" "$DEMO/samples" 2
"$BIN/drmgf" infer "$RUN/export/exit0.onnx" "$DEMO"/samples/*.npy
echo "== 7. bench: latency and accuracy of full, dense and pruned graphs"
"$BIN/drmgf" bench "$RUN" --batch 1,32 --threads 1
echo "== done: see $RUN (metrics.jsonl, routes.png, export/, bench.md, latency_accuracy.png)"
