#!/usr/bin/env bash
# Dual encoders for the BEIR table (issues 23, 24): all-MiniLM-L6-v2 fine-tuned on scifact train with InfoNCE and with
# MW, the same mined negatives, steps, batch, seed and learning rate (the settings of bench/train_scifact.py, fixed
# before any run). Held-out datasets are never read. Rerun to resume (finished models are kept).
#
#   bash bench/encoders.sh        # ~25 min on 2 CPU cores
set -euo pipefail
model=sentence-transformers/all-MiniLM-L6-v2
mkdir -p runs/enc
[ -d runs/enc/scifact-index ] || densekit index build --data scifact --model "$model" --out runs/enc/scifact-index
[ -f runs/enc/scifact-train-negatives.jsonl ] || densekit mine --data scifact --split train --index runs/enc/scifact-index \
    --rank-from 0 --rank-to 30 --max-negatives 20 --max-ratio 0.95 --out runs/enc/scifact-train-negatives.jsonl
for loss in infonce mw; do
  out=runs/enc/$loss-scifact
  [ -f "$out/model/densekit.json" ] && { echo "done: $out"; continue; }
  resume=(); [ -d "$out" ] && resume=(--resume)
  densekit train retriever --data scifact --split train --model "$model" --train-file runs/enc/scifact-train-negatives.jsonl \
      --loss "$loss" --n-negatives 1 --epochs 2 --batch-size 16 --lr 2e-5 --temperature 0.05 --seed 42 \
      --checkpoint-every 25 --out "$out" "${resume[@]}"
done
